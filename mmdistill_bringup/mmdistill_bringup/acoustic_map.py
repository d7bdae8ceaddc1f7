"""Per-direction acoustic energy for the viewer: SRP-PHAT over the directions of the image columns.

Until the student's acoustic-image front end exists, ``mmdistill view`` shows where the array
hears sound with the classical steered response power with phase transform (SRP-PHAT): per
direction, the mean pairwise PHAT coherence of the microphones after steering them to that
direction (1 = a single plane wave from there, about 0 = diffuse noise). The directions are
those of the camera's image columns (azimuth = atan((cx - u) / fx), positive = left, REP 103),
so a vehicle's peak lies above its box. Anything with ``__call__(block) -> (n_columns,)`` can
replace :class:`SrpPhatMap` in :class:`BearingHistory`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

__all__ = ['ArrayGeometry', 'column_azimuths', 'SrpPhatMap', 'BearingHistory']

DirectionEnergy = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ArrayGeometry:
    """Microphones (M, 3) in the ego frame (x forward, y left, z up; metres), the pinhole camera
    columns (``width``, ``fx``, ``cx`` px) and the speed of sound (m/s)."""
    mic_positions: np.ndarray
    width: int
    height: int
    fx: float
    cx: float
    speed_of_sound: float = 343.0

    @classmethod
    def from_scenario(cls, name: str = 'day-static') -> 'ArrayGeometry':
        """The array and camera of a simulator scenario (the default is the default car)."""
        from mmdistill_sim.scenario import load_scenario
        sc = load_scenario(name)
        cam = sc.camera
        cx = float(cam.cx) if cam.cx is not None else cam.width / 2.0
        return cls(np.asarray(sc.mic_array.positions(), dtype=np.float64), int(cam.width), int(cam.height),
                   float(cam.fx), cx, float(sc.speed_of_sound))


def column_azimuths(width: int, fx: float, cx: float, n_columns: int) -> np.ndarray:
    """Azimuth (rad, left positive) of the centres of ``n_columns`` equal strips of the image."""
    u = (np.arange(n_columns) + 0.5) * (width / n_columns)
    return np.arctan2(cx - u, fx)


class SrpPhatMap:
    """SRP-PHAT energy of a block of array audio for each of ``azimuths`` (rad, horizontal plane).

    The block is cut into Hann frames of ``n_fft`` with 50 % overlap; per frame and frequency in
    [``f_lo``, ``f_hi``] the spectra are whitened (PHAT), steered and summed; the output is the
    mean over frames and frequencies of the pairwise coherence, in [-1, 1]."""

    def __init__(self, mic_positions: np.ndarray, sample_rate: int, azimuths: np.ndarray, n_fft: int = 1024,
                 f_lo: float = 300.0, f_hi: float = 4000.0, speed_of_sound: float = 343.0) -> None:
        mics = np.asarray(mic_positions, dtype=np.float64)
        if mics.ndim != 2 or mics.shape[1] != 3 or len(mics) < 2:
            raise ValueError(f'need (M >= 2, 3) microphone positions, got {mics.shape}')
        self.channels = len(mics)
        self.n_fft = int(n_fft)
        self.window = np.hanning(self.n_fft)
        freqs = np.fft.rfftfreq(self.n_fft, 1.0 / sample_rate)
        self.band = np.nonzero((freqs >= f_lo) & (freqs <= f_hi))[0]
        az = np.asarray(azimuths, dtype=np.float64)
        toward = np.stack([np.cos(az), np.sin(az), np.zeros_like(az)], axis=1)     # (D, 3) unit vectors
        lead = (mics - mics.mean(axis=0)) @ toward.T / speed_of_sound               # (M, D) s a mic hears earlier
        # a plane wave from d reaches mic m lead[m, d] early: X_m = S e^{+j w lead}; steer it back
        phase = -2j * np.pi * freqs[self.band][:, None, None] * lead[None, :, :]
        self.steer = np.exp(phase).astype(np.complex64)                             # (F, M, D)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        x = np.asarray(block, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise ValueError(f'expected (frames, {self.channels}) samples, got {x.shape}')
        hop = self.n_fft // 2
        if len(x) < self.n_fft:
            return np.zeros(self.steer.shape[2])
        starts = range(0, len(x) - self.n_fft + 1, hop)
        frames = np.stack([x[s:s + self.n_fft] for s in starts])                   # (T, N, M)
        spec = np.fft.rfft(frames * self.window[None, :, None], axis=1)[:, self.band, :]   # (T, F, M)
        spec = (spec / (np.abs(spec) + 1e-12)).astype(np.complex64).transpose(1, 0, 2)    # (F, T, M)
        beams = np.matmul(spec, self.steer)                                         # (F, T, D)
        m = self.channels
        power = (beams.real ** 2 + beams.imag ** 2 - m) / (m * (m - 1))
        return power.mean(axis=(0, 1)).astype(np.float64)


class BearingHistory:
    """A scrolling bearing-time map: one row of direction energies per step, newest on top."""

    def __init__(self, energy: DirectionEnergy, n_columns: int, rows: int = 30) -> None:
        self.energy = energy
        self.rows = deque([np.full(n_columns, np.nan)] * rows, maxlen=rows)

    def push(self, block: np.ndarray) -> np.ndarray:
        """Add the energies of ``block``; returns the (rows, n_columns) map, newest row first."""
        self.rows.appendleft(np.asarray(self.energy(block), dtype=np.float64))
        return np.stack(self.rows)

    def reset(self) -> None:
        n = len(self.rows[0])
        self.rows.extend([np.full(n, np.nan)] * self.rows.maxlen)

    @property
    def latest(self) -> Optional[np.ndarray]:
        return None if np.isnan(self.rows[0]).all() else self.rows[0]
