"""Classical (non-learned) audio localisation baseline: SRP-PHAT / MUSIC azimuths -> image boxes.

Why: the distilled student must beat what plain array processing gives for free. This baseline
knows the microphone geometry and the camera model exactly, and learns nothing but a box-size
prior from the training pseudo-labels.

Pipeline for one raw window ``(M, N)`` float (44.1 kHz):

1. STFT per microphone (``nfft`` 512, hop ``nfft / 2``), then ``pyroomacoustics.doa`` SRP-PHAT
   (default) or MUSIC over a 1-degree azimuth grid in the array's x-y plane, using the bins in
   ``freq_range`` (300-3000 Hz: engine harmonics and tyre noise; above ~1.1 kHz the 0.3 m
   circle aliases, SRP-PHAT tolerates it by summing over frequencies).
2. Up to ``max_sources`` peaks of the spatial spectrum (pyroomacoustics' peak finder), each with
   a strength: for SRP-PHAT the normalised steered power, i.e. the mean PHAT coherence over
   microphone pairs, frequencies and frames in the steered direction, recovered from
   pyroomacoustics' value ``v = (2 * sum_pairs coherence + M) / n_pairs`` and clipped to
   [0, 1] (1 = a single plane wave, about 0 = diffuse noise); for MUSIC ``1 - median / peak``
   of the pseudo-spectrum.
   Peaks weaker than ``min_relative`` times the strongest, or below ``min_score``, are dropped.
3. Azimuth (REP 103, as the simulator: angle from the ego +x axis towards +y, **left
   positive**, 0 = straight ahead) -> a point at ``range_m`` (default 20 m) from the array
   centre at ``source_height_m`` above the ground -> pixel column through the pinhole camera
   (intrinsics, mounting position, pitch and yaw). Directions behind the camera or outside the
   image columns are dropped.
4. Box: centred on that column, with the median width / height / vertical centre of the
   boxes given to :meth:`ClassicalBaseline.fit` (training pseudo-labels), clipped to the image.

Score = the peak strength. All boxes get label 0 (``vehicle``).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from mmdistill_common.errors import ConfigError, InputError

__all__ = ['ClassicalBaseline', 'CameraModel', 'camera_dict', 'ALGORITHMS']

ALGORITHMS = ('SRP', 'MUSIC')
_NEAR = 0.1


def camera_dict(cam) -> dict:
    """A simulator :class:`mmdistill_sim.scenario.Camera` (or any object with its fields) -> the
    camera dict :class:`ClassicalBaseline` takes."""
    d = {k: getattr(cam, k) for k in ('fx', 'fy', 'cx', 'cy', 'width', 'height', 'height_m', 'x_m', 'pitch_deg')
         if getattr(cam, k, None) is not None}
    d.setdefault('cx', d['width'] / 2.0)
    d.setdefault('cy', d['height'] / 2.0)
    return d


class CameraModel:
    """Pinhole camera from a dict, in the simulator's frames (``mmdistill_sim.camera``).

    Keys: ``fx``, ``cx``, ``width``, ``height`` (required); ``fy`` (default fx), ``cy`` (default
    height / 2); mounting in the ego frame (x forward, y left, z up): ``x_m`` (0), ``y_m`` (0),
    ``height_m`` (1.5), ``pitch_deg`` (0, downward tilt), ``yaw_deg`` (0, left positive)."""

    _KEYS = {'fx', 'fy', 'cx', 'cy', 'width', 'height', 'x_m', 'y_m', 'height_m', 'pitch_deg', 'yaw_deg'}

    def __init__(self, camera: Mapping):
        if not isinstance(camera, Mapping):
            raise ConfigError(f'camera must be a mapping, got {type(camera).__name__}')
        unknown = set(camera) - self._KEYS
        if unknown:
            raise ConfigError(f'camera: unknown keys {sorted(unknown)} (known: {sorted(self._KEYS)})')
        missing = {'fx', 'cx', 'width', 'height'} - set(camera)
        if missing:
            raise ConfigError(f'camera: missing {sorted(missing)}')
        try:
            self.fx = float(camera['fx'])
            self.fy = float(camera.get('fy', self.fx))
            self.cx = float(camera['cx'])
            self.width, self.height = int(camera['width']), int(camera['height'])
            self.cy = float(camera.get('cy', self.height / 2.0))
            pos = [float(camera.get('x_m', 0.0)), float(camera.get('y_m', 0.0)), float(camera.get('height_m', 1.5))]
            pitch = math.radians(float(camera.get('pitch_deg', 0.0)))
            yaw = math.radians(float(camera.get('yaw_deg', 0.0)))
        except (TypeError, ValueError) as e:
            raise ConfigError(f'camera: {e}') from None
        if self.fx <= 0 or self.fy <= 0 or self.width <= 0 or self.height <= 0:
            raise ConfigError('camera: fx, fy, width and height must be > 0')
        self.position = np.array(pos)
        fwd = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), -math.sin(pitch)])
        right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        down = np.cross(fwd, right)
        self.R = np.stack([right, down, fwd])          # rows: camera axes (x right, y down, z fwd) in ego

    def project(self, p_ego: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Ego-frame points (..., 3) -> pixels (..., 2) and camera depth (...)."""
        pc = (np.asarray(p_ego, float) - self.position) @ self.R.T
        z = pc[..., 2]
        with np.errstate(divide='ignore', invalid='ignore'):
            uv = np.stack([self.fx * pc[..., 0] / z + self.cx, self.fy * pc[..., 1] / z + self.cy], axis=-1)
        return uv, z


class ClassicalBaseline:
    """SRP-PHAT / MUSIC localisation turned into image-plane boxes (see the module docstring).

    ``ClassicalBaseline(mic_positions, camera).fit(boxes_list).predict(window)`` ->
    ``dict(boxes float32 (K, 4) xyxy pixels, scores float32 (K,), labels int64 (K,),
    azimuth_deg float32 (K,))``, strongest first, K <= ``max_sources``."""

    def __init__(self, mic_positions, camera: Mapping, algorithm: str = 'SRP',
                 freq_range: Tuple[float, float] = (300.0, 3000.0), max_sources: int = 3,
                 sample_rate: int = 44100, nfft: int = 512, speed_of_sound: float = 343.0,
                 range_m: float = 20.0, source_height_m: float = 0.8, grid_step_deg: float = 1.0,
                 min_relative: float = 0.5, min_score: float = 0.0):
        mics = np.asarray(mic_positions, dtype=np.float64)
        if mics.ndim != 2 or mics.shape[1] not in (2, 3) or mics.shape[0] < 2 or not np.all(np.isfinite(mics)):
            raise ConfigError(f'mic_positions must be (M >= 2, 3) finite metres, got shape {mics.shape}')
        if mics.shape[1] == 2:
            mics = np.hstack([mics, np.zeros((len(mics), 1))])
        algorithm = str(algorithm).upper()
        if algorithm not in ALGORITHMS:
            raise ConfigError(f'algorithm must be one of {ALGORITHMS}, got {algorithm!r}')
        lo, hi = (float(v) for v in freq_range)
        if not 0 <= lo < hi <= sample_rate / 2:
            raise ConfigError(f'freq_range must satisfy 0 <= lo < hi <= sample_rate/2, got {freq_range}')
        if int(max_sources) < 1:
            raise ConfigError(f'max_sources must be >= 1, got {max_sources}')
        if nfft < 16 or nfft % 2:
            raise ConfigError(f'nfft must be an even number >= 16, got {nfft}')
        if not range_m > 0:
            raise ConfigError(f'range_m must be > 0, got {range_m}')
        self.mic_positions = mics
        self.centre = mics.mean(axis=0)
        self.camera = CameraModel(camera)
        self.algorithm = algorithm
        self.freq_range = (lo, hi)
        self.max_sources = int(max_sources)
        self.sample_rate = int(sample_rate)
        self.nfft = int(nfft)
        self.c = float(speed_of_sound)
        self.range_m = float(range_m)
        self.source_height_m = float(source_height_m)
        self.min_relative = float(min_relative)
        self.min_score = float(min_score)
        self.grid_deg = np.arange(-180.0, 180.0, float(grid_step_deg))
        self.box_size: Optional[Tuple[float, float, float]] = None     # width, height, y-centre
        self._doa = None

    # ------------------------------------------------------------------ geometry
    def azimuth_to_x(self, azimuth_deg) -> np.ndarray:
        """Image column (pixels) of each azimuth (degrees, left positive), NaN where the direction
        is behind the camera or outside the image columns."""
        az = np.radians(np.atleast_1d(np.asarray(azimuth_deg, dtype=np.float64)))
        p = self.centre + self.range_m * np.stack([np.cos(az), np.sin(az), np.zeros_like(az)], axis=1)
        p[:, 2] = self.source_height_m
        uv, z = self.camera.project(p)
        u = uv[:, 0]
        ok = (z > _NEAR) & (u >= 0) & (u <= self.camera.width)
        return np.where(ok, u, np.nan)

    # ------------------------------------------------------------------ box prior
    def fit(self, boxes_list: Sequence) -> 'ClassicalBaseline':
        """Fit the box-size prior: median width, height and vertical centre of all boxes in
        ``boxes_list`` (one (N_i, 4) xyxy pixel array per frame, e.g. training pseudo-labels)."""
        arrays = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes_list]
        allb = np.concatenate(arrays) if arrays else np.zeros((0, 4))
        allb = allb[np.all(np.isfinite(allb), axis=1)]
        w, h = allb[:, 2] - allb[:, 0], allb[:, 3] - allb[:, 1]
        keep = (w > 0) & (h > 0)
        if not keep.any():
            raise ConfigError('fit: no box with positive width and height in boxes_list')
        allb = allb[keep]
        self.box_size = (float(np.median(w[keep])), float(np.median(h[keep])),
                         float(np.median((allb[:, 1] + allb[:, 3]) / 2)))
        return self

    def fit_geometric(self, length_m: float = 4.5, height_m: float = 1.5) -> 'ClassicalBaseline':
        """Box prior without any labels: a car (``length_m`` long, seen side-on, ``height_m``
        tall) at ``range_m`` straight ahead of the array, projected through the camera."""
        c = self.centre[:2]
        pts = np.array([[c[0] + self.range_m, c[1] + length_m / 2, height_m / 2],
                        [c[0] + self.range_m, c[1] - length_m / 2, height_m / 2],
                        [c[0] + self.range_m, c[1], height_m],
                        [c[0] + self.range_m, c[1], 0.0]])
        uv, z = self.camera.project(pts)
        if np.any(z <= _NEAR):
            raise ConfigError('fit_geometric: a car straight ahead is behind the camera')
        self.box_size = (float(abs(uv[0, 0] - uv[1, 0])), float(abs(uv[3, 1] - uv[2, 1])),
                         float((uv[2, 1] + uv[3, 1]) / 2))
        return self

    # ------------------------------------------------------------------ localisation
    def _locator(self):
        if self._doa is None:
            import pyroomacoustics as pra
            L = (self.mic_positions - self.centre).T           # (3, M); the grid is the x-y plane
            self._doa = pra.doa.algorithms[self.algorithm](
                L, self.sample_rate, self.nfft, c=self.c, num_src=self.max_sources,
                azimuth=np.radians(self.grid_deg), mode='far')
        return self._doa

    def check_window(self, window) -> np.ndarray:
        x = np.asarray(window, dtype=np.float64)
        m = len(self.mic_positions)
        if x.ndim != 2 or x.shape[0] != m or x.shape[1] < 2 * self.nfft:
            raise InputError(f'window must be ({m}, N >= {2 * self.nfft}) float, got shape {x.shape}')
        if not np.all(np.isfinite(x)):
            raise InputError('window contains NaN or infinite samples')
        return x

    def spectrum(self, window) -> Tuple[np.ndarray, np.ndarray]:
        """Spatial spectrum over the azimuth grid: ``(azimuth_deg (G,), strength (G,))`` with the
        strength on the score scale (see the module docstring)."""
        import pyroomacoustics as pra
        x = self.check_window(window)
        hop = self.nfft // 2
        X = np.stack([pra.transform.stft.analysis(ch, self.nfft, hop).T for ch in x])   # (M, F, S)
        doa = self._locator()
        doa.locate_sources(X, num_src=self.max_sources, freq_range=list(self.freq_range))
        values = np.asarray(doa.grid.values, dtype=np.float64)
        return self.grid_deg, self._strength(values)

    def _strength(self, values: np.ndarray) -> np.ndarray:
        if self.algorithm == 'SRP':
            # pyroomacoustics: v = (2 * sum_pairs Re(coh) + M) / n_pairs, averaged over bins and
            # frames -> mean pair coherence = (v * n_pairs - M) / (2 * n_pairs), in [-1, 1]
            m = len(self.mic_positions)
            n_pairs = m * (m - 1) / 2
            return np.clip((values * n_pairs - m) / (2 * n_pairs), 0.0, 1.0)
        med = np.median(values)
        with np.errstate(divide='ignore', invalid='ignore'):
            return np.clip(np.where(values > 0, 1.0 - med / values, 0.0), 0.0, 1.0)

    def locate(self, window) -> Tuple[np.ndarray, np.ndarray]:
        """Source azimuths (degrees, left positive) and strengths, strongest first, at most
        ``max_sources`` (weak secondary peaks dropped, see ``min_relative`` / ``min_score``)."""
        grid, strength = self.spectrum(window)
        idx = np.asarray(self._doa.src_idx, dtype=np.int64)
        idx = idx[np.argsort(-strength[idx], kind='stable')]
        s = strength[idx]
        keep = (s >= self.min_score) & (s > 0)
        if keep.any():
            keep &= s >= self.min_relative * s[keep].max()
        return grid[idx[keep]], s[keep]

    def predict(self, window) -> dict:
        """One raw window (M, N) -> ``dict(boxes, scores, labels, azimuth_deg)`` in camera pixels."""
        if self.box_size is None:
            raise ConfigError('ClassicalBaseline: call fit(boxes_list) before predict')
        az, s = self.locate(window)
        u = self.azimuth_to_x(az)
        ok = np.isfinite(u)
        az, s, u = az[ok], s[ok], u[ok]
        w, h, yc = self.box_size
        W, H = self.camera.width, self.camera.height
        boxes = np.stack([u - w / 2, np.full_like(u, yc - h / 2), u + w / 2, np.full_like(u, yc + h / 2)], axis=1) \
            if len(u) else np.zeros((0, 4))
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, W)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, H)
        return {'boxes': boxes.astype(np.float32), 'scores': s.astype(np.float32),
                'labels': np.zeros(len(s), np.int64), 'azimuth_deg': az.astype(np.float32)}

    @classmethod
    def from_geometry(cls, geometry: Mapping, **kwargs) -> 'ClassicalBaseline':
        """Geometry from a dataset's ``index.json`` ``geometry`` entry: ``mic_positions_m``,
        ``camera`` (this class's camera keys) and optionally ``speed_of_sound_mps``."""
        if not isinstance(geometry, Mapping) or 'mic_positions_m' not in geometry or 'camera' not in geometry:
            raise ConfigError('geometry must be a mapping with mic_positions_m and camera '
                              '(the dataset does not describe its array; pass the geometry explicitly)')
        if geometry.get('speed_of_sound_mps') is not None:
            kwargs.setdefault('speed_of_sound', float(geometry['speed_of_sound_mps']))
        return cls(geometry['mic_positions_m'], dict(geometry['camera']), **kwargs)

    @classmethod
    def from_scenario(cls, scenario, **kwargs) -> 'ClassicalBaseline':
        """Geometry (microphones, camera, rate, speed of sound) from a simulator Scenario."""
        kwargs.setdefault('sample_rate', scenario.audio.sample_rate)
        kwargs.setdefault('speed_of_sound', scenario.speed_of_sound)
        return cls(scenario.mic_array.positions(), camera_dict(scenario.camera), **kwargs)
