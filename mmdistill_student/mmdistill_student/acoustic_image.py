"""Acoustic-image front end: per STFT frame, the array's steered response over the directions
of the camera image's columns, per frequency band (DESIGN §7).

Why: the array geometry is the strongest prior there is. A network fed log-mel maps has to
rediscover it from a few thousand windows (and was measured to learn the scene instead); here
the direction of each image column is computed from the calibration, so a source that projects
to column ``c`` lights up column ``c`` of the features and a column-equivariant network keeps it
there.

Two maps per band and frame, for each of ``columns`` directions:

* **SRP-PHAT coherence** ``(|sum_m a_m X_m / |X_m||^2 - M) / (M (M - 1))``, averaged over the
  band's bins: the classic pairwise SRP-PHAT sum ``sum_{i<j} Re(G_ij e^{jw(tau_i - tau_j)})``
  normalised to [-1/(M-1), 1] (identical up to the constant diagonal term). It carries
  direction and tolerates spatial aliasing when bands are summed.
* **Delay-and-sum beam energy** ``10 log10(mean_band |sum_m a_m X_m|^2 / M^2)`` in dB: level
  and spectral shape per direction, which carry distance (level, the ground-reflection notch).

Steering: the direction of column ``c`` is the ray through the centre of the column's pixel
span at the principal row, taken to ``ref_distance_m`` from the camera, dropped to
``source_height_m`` and seen from the array centre (camera/array parallax included), far field
from there. ``a_m(w) = exp(-j w p_m . s / c)`` aligns a plane wave from unit direction ``s``
(it reaches microphone ``m`` at ``p_m`` earlier by ``p_m . s / c``).

Frames are the same centred, zero-padded STFT frames as :class:`~.frontend.LogMel` (so
:class:`~.frontend.StreamingFrontend` can cache them); only bins inside the bands are used.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mmdistill_common.errors import ConfigError

from . import kernels

__all__ = ['DEFAULT_BANDS_HZ', 'column_directions', 'steering_delays', 'AcousticImage',
           'validate_geometry', 'heatmap']

#: band edges (Hz): low bands carry the engine harmonics and the ground notch of near vehicles,
#: high bands the tyre noise and the finest direction (aliasing-tolerant once summed).
DEFAULT_BANDS_HZ: Tuple[float, ...] = (100.0, 200.0, 400.0, 700.0, 1000.0, 1500.0, 2200.0, 3200.0, 4800.0)


def validate_geometry(geometry: Optional[Mapping], channels: int) -> None:
    """Raise :class:`ConfigError` unless ``geometry`` holds ``channels`` microphone positions and
    a camera (``width``, ``height``, ``fx``; optional ``cx``, ``cy``, ``fy``, ``x_m``,
    ``height_m``, ``pitch_deg``)."""
    if not isinstance(geometry, Mapping):
        raise ConfigError('acoustic image: geometry (mic_positions_m + camera) is required')
    mics = geometry.get('mic_positions_m')
    try:
        p = np.asarray(mics, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError('acoustic image: geometry.mic_positions_m must be a list of [x, y, z]') from None
    if p.ndim != 2 or p.shape != (channels, 3) or not np.isfinite(p).all():
        raise ConfigError(f'acoustic image: geometry.mic_positions_m must be {channels} finite [x, y, z] '
                          f'positions, got shape {p.shape}')
    cam = geometry.get('camera')
    if not isinstance(cam, Mapping):
        raise ConfigError('acoustic image: geometry.camera is required')
    for k in ('width', 'height', 'fx'):
        v = cam.get(k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ConfigError(f'acoustic image: geometry.camera.{k} must be a positive number, got {v!r}')


def column_directions(geometry: Mapping, columns: int, ref_distance_m: float = 15.0,
                      source_height_m: float = 0.7) -> np.ndarray:
    """(columns, 3) unit vectors (ego frame: x forward, y left, z up) from the array centre to
    the point that column ``c``'s centre ray reaches at ``ref_distance_m``, at source height."""
    cam = geometry['camera']
    W, H = float(cam['width']), float(cam['height'])
    fx = float(cam['fx'])
    fy = float(cam.get('fy', fx))
    cx = float(cam['cx']) if cam.get('cx') is not None else W / 2
    cy = float(cam['cy']) if cam.get('cy') is not None else H / 2
    th = math.radians(float(cam.get('pitch_deg', 0.0)))
    cam_pos = np.array([float(cam.get('x_m', 0.0)), 0.0, float(cam.get('height_m', 1.5))])
    fwd = np.array([math.cos(th), 0.0, -math.sin(th)])
    right = np.array([0.0, -1.0, 0.0])
    down = np.array([-math.sin(th), 0.0, -math.cos(th)])
    u = (np.arange(columns) + 0.5) * W / columns
    d_cam = np.stack([(u - cx) / fx, np.full(columns, (cy - cy) / fy), np.ones(columns)], axis=1)
    rays = d_cam @ np.stack([right, down, fwd])                 # camera axes -> ego
    rays /= np.linalg.norm(rays[:, :2], axis=1, keepdims=True)  # unit horizontal range
    pts = cam_pos + ref_distance_m * rays
    pts[:, 2] = source_height_m
    centre = np.asarray(geometry['mic_positions_m'], np.float64).mean(axis=0)
    s = pts - centre
    return s / np.linalg.norm(s, axis=1, keepdims=True)


def steering_delays(geometry: Mapping, directions: np.ndarray) -> np.ndarray:
    """(D, M) seconds by which a plane wave from each direction reaches each microphone
    *earlier* than the array centre: ``(p_m - centre) . s / c``."""
    p = np.asarray(geometry['mic_positions_m'], np.float64)
    c = float(geometry.get('speed_of_sound_mps', 343.0))
    return (directions @ (p - p.mean(axis=0)).T) / c


def _band_bins(bands_hz: Sequence[float], n_fft: int, sample_rate: int) -> Tuple[int, int, List[Tuple[int, int]]]:
    """First and last+1 STFT bin used, and per band its ``[lo, hi)`` relative to the first."""
    edges = [int(round(f * n_fft / sample_rate)) for f in bands_hz]
    lo0, hi = edges[0], edges[-1]
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            raise ConfigError(f'acoustic image: band {a * sample_rate / n_fft:.0f}-{b * sample_rate / n_fft:.0f} Hz '
                              f'holds no STFT bin at n_fft {n_fft}; widen the bands')
        out.append((a - lo0, b - lo0))
    return lo0, hi, out


class AcousticImage(torch.nn.Module):
    """Complex STFT frames ``(B, M, T, F)`` -> features ``(B, 2 * n_bands, columns, T)``:
    SRP-PHAT coherence for every band, then beam energy in dB for every band.

    Differentiable and exportable (two real matmuls per band set; no complex tensors in the
    graph: real and imaginary parts are passed separately by :meth:`forward_parts`)."""

    def __init__(self, geometry: Mapping, channels: int, sample_rate: int, n_fft: int, columns: int,
                 bands_hz: Sequence[float] = DEFAULT_BANDS_HZ, ref_distance_m: float = 15.0,
                 source_height_m: float = 0.7, eps: float = 1e-12):
        super().__init__()
        validate_geometry(geometry, channels)
        if columns < 1:
            raise ConfigError(f'acoustic image: columns must be >= 1, got {columns}')
        if len(bands_hz) < 2 or list(bands_hz) != sorted(bands_hz) or bands_hz[0] <= 0 \
                or bands_hz[-1] > sample_rate / 2:
            raise ConfigError(f'acoustic image: bands_hz must be increasing edges in (0, {sample_rate / 2}], '
                              f'got {list(bands_hz)}')
        self.channels, self.columns, self.eps = int(channels), int(columns), float(eps)
        self.lo, self.hi, bands = _band_bins(bands_hz, n_fft, sample_rate)
        self.n_bands = len(bands)
        dirs = column_directions(geometry, columns, ref_distance_m, source_height_m)
        tau = steering_delays(geometry, dirs)                                  # (D, M)
        w = 2 * np.pi * np.arange(self.lo, self.hi) * sample_rate / n_fft      # (K,)
        ph = -w[:, None, None] * tau[None]                                     # (K, D, M): a = e^{j ph}
        # steering as real (K, 2M, 2D) blocks: [re; im] of X -> [re; im] of beam, per bin
        ar, ai = np.cos(ph), np.sin(ph)
        top = np.concatenate([ar, -ai], axis=2)                               # re(Y) from [Xr, Xi]
        bot = np.concatenate([ai, ar], axis=2)                                # im(Y)
        steer = np.concatenate([top, bot], axis=1).transpose(0, 2, 1)          # (K, 2M, 2D)
        self.register_buffer('steer', torch.from_numpy(steer.astype(np.float32)), persistent=False)
        # the same rows interleaved per microphone, [Xr_0, Xi_0, Xr_1, ...]: the order in which
        # stacking the real and imaginary parts on a last axis lays a frame out (no transpose)
        order = np.stack([np.arange(channels), channels + np.arange(channels)], axis=1).ravel()
        self.register_buffer('steer_interleaved', self.steer[:, order].contiguous(), persistent=False)
        band = np.zeros((self.hi - self.lo, self.n_bands), np.float32)        # bin -> band mean
        for b, (a, c) in enumerate(bands):
            band[a:c, b] = 1.0 / (c - a)
        self.register_buffer('band_mean', torch.from_numpy(band), persistent=False)
        self.m = float(channels)
        # the compiled pass's layout: steering (K, M, D), each bin's band and weight
        self._sr = np.ascontiguousarray(ar.transpose(0, 2, 1), np.float32)
        self._si = np.ascontiguousarray(ai.transpose(0, 2, 1), np.float32)
        self._bandk = band.argmax(axis=1).astype(np.int64)
        self._bandw = band.max(axis=1).astype(np.float32)

    @property
    def out_channels(self) -> int:
        return 2 * self.n_bands

    def forward_parts(self, re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        """Real/imaginary STFT frames ``(B, M, T, F)`` -> ``(B, 2 * n_bands, columns, T)``.

        One batched matmul per bin steers the raw and the PHAT-normalised frames together; one
        matmul averages the beam powers over each band's bins. Laid out for few frames (a
        streaming step's ~7): each frame's ``[Xr_m, Xi_m]`` pairs stay adjacent (the PHAT
        magnitude broadcasts over them, the steering rows are interleaved to match), so the only
        copy of the frames is the one that puts the bins first. These ops are the definition (what
        is exported and differentiated); without gradient on the CPU the compiled pass of
        :mod:`.kernels` computes the same, faster."""
        if kernels.usable(re):
            x = torch.complex(re[..., self.lo:self.hi].float(), im[..., self.lo:self.hi].float())
            return torch.from_numpy(self.columns_of_frames(x.transpose(1, 2).numpy(), lo=0))
        B, M, T, _ = re.shape
        D, N = self.columns, B * T
        xr, xi = re[..., self.lo:self.hi], im[..., self.lo:self.hi]                 # (B, M, T, K)
        mag = torch.sqrt(xr * xr + xi * xi) + self.eps
        z = torch.stack([xr / mag, xi / mag, xr, xi], dim=-1).view(B, M, T, -1, 2, 2)  # (.., K, phat/raw, re/im)
        z = z.permute(3, 4, 0, 2, 1, 5).reshape(-1, 2 * N, 2 * M)                      # (K, 2N, 2M)
        y = torch.bmm(z, self.steer_interleaved).square_()                            # (K, 2N, 2D)
        # band means of the squared real and imaginary parts, added after (fewer passes over y)
        band = (self.band_mean.T @ y.view(y.shape[0], -1)).view(-1, 2, N, 2 * D)     # (nb, 2, N, 2D)
        band = band[..., :D] + band[..., D:]                                           # (nb, 2, N, D)
        m = self.m
        srp = (band[:, 0] - m) / (m * (m - 1))
        das = 10.0 * torch.log10(band[:, 1] / (m * m) + 1e-10)
        out = torch.cat([srp, das], dim=0).view(2 * self.n_bands, B, T, D)
        return out.permute(1, 0, 3, 2)

    def columns_of_frames(self, x: np.ndarray, out: Optional[np.ndarray] = None,
                          slots: Optional[np.ndarray] = None, lo: Optional[int] = None) -> np.ndarray:
        """Complex STFT frames ``(B, T, M, F)`` (any strides; the band bins start at ``lo``,
        default :attr:`lo`: full spectra) -> ``(B, 2 * n_bands, columns, T)`` by the compiled pass
        (:mod:`.kernels`). With ``out`` ``(B, C, columns, S)``: written there at frame ``t``'s
        ``slots[t]`` (``(T, R)``, ``-1`` for none), the beam energy *linear* (``10 log10`` of it
        is the dB map; the streaming cache takes the log once per window). Without numba: the
        torch ops."""
        B, T = x.shape[:2]
        lo = self.lo if lo is None else int(lo)
        db = out is None
        if db:
            out = np.empty((B, self.out_channels, self.columns, T), np.float32)
            slots = np.arange(T)[:, None]
        if kernels.AVAILABLE:
            kernels.image_columns(x.astype(np.complex64, copy=False), lo, self._sr, self._si, self._bandk,
                                  self._bandw, self.n_bands, np.float32(self.eps), out, np.asarray(slots, np.int64))
            if db:
                das = out[:, self.n_bands:]
                np.multiply(np.log10(das, out=das), 10.0, out=das)
            return out
        t = torch.from_numpy(np.ascontiguousarray(x[..., lo:lo + self.hi - self.lo].transpose(0, 2, 1, 3)))
        pad = (self.lo, 0)
        img = self.forward_parts(torch.nn.functional.pad(t.real, pad), torch.nn.functional.pad(t.imag, pad)).numpy()
        if not db:
            img[:, self.n_bands:] = 10.0 ** (img[:, self.n_bands:] / 10.0)
        return kernels.scatter(out, img, slots)

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the pass now: the first call takes seconds, which
        a node must spend before audio arrives, not on its first window."""
        if not kernels.AVAILABLE:
            return
        z = np.zeros((1, self.channels, 2, self.hi), np.complex64)     # (B, M, T, F)
        for x in (z.transpose(0, 2, 1, 3), np.ascontiguousarray(z.transpose(0, 2, 1, 3))):
            self.columns_of_frames(x)                                   # numba compiles per memory layout

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex STFT frames ``(B, M, T, F)`` -> ``(B, 2 * n_bands, columns, T)``."""
        return self.forward_parts(spec.real, spec.imag)


def heatmap(features: np.ndarray, n_bands: int, height: Optional[int] = None) -> np.ndarray:
    """Acoustic-image features ``(2 * n_bands, columns, T)`` -> rgb8 ``(T or height, columns, 3)``
    heat map of the band-mean SRP-PHAT coherence: one image column per camera column, time
    running down (newest frame at the bottom), scaled to the window's own range (inferno)."""
    from matplotlib import colormaps
    srp = np.asarray(features, np.float32)[:n_bands].mean(axis=0).T           # (T, columns)
    lo, hi = float(srp.min()), float(srp.max())
    norm = (srp - lo) / (hi - lo) if hi > lo else np.zeros_like(srp)
    if height is not None and height != norm.shape[0]:
        rows = np.linspace(0, norm.shape[0] - 1, height).round().astype(int)
        norm = norm[rows]
    return (colormaps['inferno'](norm)[..., :3] * 255).astype(np.uint8)
