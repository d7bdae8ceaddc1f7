"""ROS-free audio front end: ring buffer -> 1-s windows -> log-mel (+ inter-microphone features).

One implementation serves the dataset builder, the trainer and ``student_node``.

Conventions
-----------
* Audio arrives as interleaved signed 16-bit little endian (S16LE), ``channels`` channels
  (8 by default) at ``sample_rate`` (44.1 kHz by default).  In numpy a chunk is
  ``(samples, channels)`` int16, or float32 in [-1, 1).  A chunk's stamp (ns) is the capture
  time of its **first** sample.
* A *window* is ``window_s`` (1.0 s) of all channels, returned as float32 ``(channels, N)``
  with ``N = round(window_s * sample_rate)``.  ``mode='causal'`` ends the window at the stamp
  (the sample captured at the stamp is the first one *after* the window);
  ``mode='centered'`` centres it on the stamp (sample ``N // 2`` of the window is the one
  captured at the stamp).
* Log-mel: ``librosa.feature.melspectrogram(y, sr, n_fft, hop_length, n_mels, power=2,
  center=True, pad_mode='constant')`` followed by
  ``librosa.power_to_db(S, ref=1.0, amin=1e-10, top_db=None)``, i.e.
  ``10 * log10(max(S, 1e-10))`` in dB.  ``top_db`` is deliberately *not* applied: it clips
  relative to the window's maximum, which makes every value depend on the whole window and
  would defeat streaming reuse of STFT frames.  80 mels, n_fft 1024, hop 256 at 44.1 kHz give
  ``80 x 173`` per channel per second (``T = 1 + N // hop``).
* Feature tensor layout ``(C_in, n_mels, T)``; channels, in order: ``channels`` log-mel maps,
  then (``use_ild``) ``channels`` level-difference maps ``L_c - mean_c L_c`` (dB),
  then (``use_gccphat``) one GCC-PHAT map per microphone pair ``(i, j), i < j``
  (28 for 8 microphones), see :func:`gcc_phat`. The acoustic image (``kind='acoustic_image'``):
  ``n_bands`` SRP-PHAT maps, ``n_bands`` beam-energy maps, then (``mvdr``) ``n_bands`` MVDR maps
  (:mod:`.mvdr`), each ``(columns, T)``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from itertools import combinations
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mmdistill_common.errors import ConfigError, InputError

from .acoustic_image import DEFAULT_BANDS_HZ, AcousticImage, validate_geometry
from .mvdr import MvdrImage

SPEED_OF_SOUND = 343.0
FRONTEND_KINDS = ('spectrogram', 'acoustic_image')

__all__ = [
    'FrontendConfig', 'PushResult', 'PushStatus', 'AudioRingBuffer', 'LogMel', 'Frontend',
    'StreamingFrontend', 'gcc_phat', 'mic_pairs', 'chunk_to_array',
]


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class FrontendConfig:
    """Everything that defines the student's input features.  Stored in datasets/checkpoints.

    ``gcc_max_lag`` (samples) defaults to the array's maximum inter-microphone delay,
    ``ceil(array_aperture_m / 343 m/s * sample_rate)``; lags ``-L..L`` are kept and linearly
    resampled onto the ``n_mels`` rows.  ``gcc_subwindows`` consecutive groups of STFT frames
    each give one GCC-PHAT estimate (every ``gcc_frame_stride``-th frame, bins up to
    ``gcc_fmax``; both only to save time), repeated over the group's frames on the time axis.
    """

    sample_rate: int = 44100
    channels: int = 8
    n_mels: int = 80
    n_fft: int = 1024
    hop: int = 256
    fmin: float = 0.0
    fmax: Optional[float] = None
    window_s: float = 1.0
    mode: str = 'centered'
    use_ild: bool = False
    use_gccphat: bool = False
    array_aperture_m: float = 0.4
    gcc_max_lag: Optional[int] = None
    gcc_subwindows: int = 8
    gcc_fmax: Optional[float] = 8000.0
    gcc_frame_stride: int = 2
    amin: float = 1e-10
    kind: str = 'spectrogram'
    columns: int = 48
    bands_hz: Tuple[float, ...] = DEFAULT_BANDS_HZ
    ref_distance_m: float = 15.0
    source_height_m: float = 0.7
    geometry: Optional[dict] = None
    mvdr: bool = False
    mvdr_smooth: int = 5
    mvdr_loading: float = 0.05
    mvdr_bins_per_band: int = 4

    def __post_init__(self):
        self.bands_hz = tuple(float(f) for f in self.bands_hz)
        self.validate()

    def validate(self) -> 'FrontendConfig':
        def bad(msg):
            raise ConfigError(f'FrontendConfig: {msg}')
        for name in ('sample_rate', 'channels', 'n_mels', 'n_fft', 'hop', 'gcc_subwindows',
                     'gcc_frame_stride'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                bad(f'{name} must be a positive integer, got {v!r}')
        if self.n_fft % 2:
            bad(f'n_fft must be even, got {self.n_fft}')
        if self.hop > self.n_fft:
            bad(f'hop ({self.hop}) must not exceed n_fft ({self.n_fft})')
        if self.mode not in ('centered', 'causal'):
            bad(f"mode must be 'centered' or 'causal', got {self.mode!r}")
        if not (isinstance(self.window_s, (int, float)) and math.isfinite(self.window_s)):
            bad(f'window_s must be a number, got {self.window_s!r}')
        if self.window_samples < self.n_fft:
            bad(f'window_s * sample_rate ({self.window_samples}) must be >= n_fft ({self.n_fft})')
        nyq = self.sample_rate / 2
        fmax = nyq if self.fmax is None else self.fmax
        if not (0 <= self.fmin < fmax <= nyq):
            bad(f'need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}')
        if self.use_gccphat and self.channels < 2:
            bad('use_gccphat needs at least 2 channels')
        if self.gcc_max_lag is not None and not (0 <= int(self.gcc_max_lag) < self.n_fft // 2):
            bad(f'gcc_max_lag must be in [0, n_fft/2), got {self.gcc_max_lag}')
        if self.array_aperture_m <= 0:
            bad(f'array_aperture_m must be > 0, got {self.array_aperture_m}')
        if self.gcc_subwindows > self.n_frames:
            bad(f'gcc_subwindows ({self.gcc_subwindows}) exceeds the number of frames ({self.n_frames})')
        if self.gcc_fmax is not None and not (0 < self.gcc_fmax <= nyq):
            bad(f'gcc_fmax must be in (0, sample_rate/2], got {self.gcc_fmax}')
        if self.gcc_subwindows * self.gcc_frame_stride > self.n_frames:
            bad('gcc_subwindows * gcc_frame_stride exceeds the number of frames')
        if not self.amin > 0:
            bad(f'amin must be > 0, got {self.amin}')
        if self.kind not in FRONTEND_KINDS:
            bad(f'kind must be one of {FRONTEND_KINDS}, got {self.kind!r}')
        if self.kind == 'acoustic_image':
            if self.use_ild or self.use_gccphat:
                bad('the acoustic image replaces ILD / GCC-PHAT (use_ild and use_gccphat must be false)')
            if isinstance(self.columns, bool) or not isinstance(self.columns, (int, np.integer)) or self.columns < 1:
                bad(f'columns must be a positive integer, got {self.columns!r}')
            validate_geometry(self.geometry, self.channels)
            for name in ('mvdr_smooth', 'mvdr_bins_per_band'):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                    bad(f'{name} must be a positive integer, got {v!r}')
            if not (isinstance(self.mvdr_loading, (int, float)) and self.mvdr_loading > 0):
                bad(f'mvdr_loading must be > 0, got {self.mvdr_loading!r}')
            if len(self.bands_hz) < 2 or list(self.bands_hz) != sorted(set(self.bands_hz)) \
                    or self.bands_hz[0] <= 0 or self.bands_hz[-1] > nyq:
                bad(f'bands_hz must be increasing edges in (0, {nyq:g}], got {list(self.bands_hz)}')
        elif self.mvdr:
            bad('mvdr needs the acoustic image (kind acoustic_image)')
        return self

    # derived quantities ------------------------------------------------------------------
    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def n_frames(self) -> int:
        return 1 + self.window_samples // self.hop

    @property
    def n_pairs(self) -> int:
        return self.channels * (self.channels - 1) // 2

    @property
    def max_lag(self) -> int:
        if self.gcc_max_lag is not None:
            return int(self.gcc_max_lag)
        lag = int(math.ceil(self.array_aperture_m / SPEED_OF_SOUND * self.sample_rate))
        return min(lag, self.n_fft // 2 - 1)

    @property
    def gcc_max_bin(self) -> int:
        """Number of STFT bins used by GCC-PHAT (those at or below ``gcc_fmax``)."""
        n_bins = self.n_fft // 2 + 1
        if self.gcc_fmax is None:
            return n_bins
        return min(n_bins, int(math.floor(self.gcc_fmax * self.n_fft / self.sample_rate)) + 1)

    @property
    def n_bands(self) -> int:
        return len(self.bands_hz) - 1

    @property
    def rows(self) -> int:
        """Second feature axis: mel bins (spectrogram) or image columns (acoustic image)."""
        return self.columns if self.kind == 'acoustic_image' else self.n_mels

    @property
    def in_channels(self) -> int:
        if self.kind == 'acoustic_image':
            return (3 if self.mvdr else 2) * self.n_bands
        c = self.channels
        if self.use_ild:
            c += self.channels
        if self.use_gccphat:
            c += self.n_pairs
        return c

    def feature_shape(self) -> Tuple[int, int, int]:
        """``(C_in, rows, T)`` of one window's features (``(8, 80, 173)`` by default; acoustic
        image: ``(2 * n_bands, columns, T)``, ``3 * n_bands`` with the MVDR map)."""
        return (self.in_channels, self.rows, self.n_frames)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d['bands_hz'] = list(d['bands_hz'])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'FrontendConfig':
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f'FrontendConfig: unknown keys {sorted(unknown)}')
        return cls(**d)


def mic_pairs(channels: int) -> List[Tuple[int, int]]:
    """Microphone pairs ``(i, j), i < j`` in the order of the GCC-PHAT feature channels."""
    return list(combinations(range(channels), 2))


# --------------------------------------------------------------------------------------------
# ring buffer
# --------------------------------------------------------------------------------------------

class PushStatus(str, enum.Enum):
    FIRST = 'first'              # first chunk (or first after a reset): starts a segment
    OK = 'ok'                    # contiguous within tolerance
    GAP = 'gap'                  # stamp later than expected: continuity reset, old data dropped
    OVERLAP = 'overlap'          # stamp earlier than expected: overlapping samples dropped
    OUT_OF_ORDER = 'out_of_order'  # stamp before the previous chunk's start: chunk dropped


@dataclasses.dataclass
class PushResult:
    status: PushStatus
    accepted: int            # samples appended
    dropped: int             # samples of this chunk discarded
    offset_ns: int           # stamp minus expected stamp (0 for FIRST)
    message: str = ''

    @property
    def ok(self) -> bool:
        return self.status in (PushStatus.OK, PushStatus.FIRST)


def chunk_to_array(data, channels: int) -> np.ndarray:
    """Interleaved S16LE bytes, 1-D interleaved int16, or ``(samples, channels)`` int16/float
    -> float32 ``(samples, channels)`` in [-1, 1).  Raises :class:`InputError` on bad input."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if len(data) % (2 * channels):
            raise InputError(f'audio chunk of {len(data)} bytes is not a whole number of '
                             f'{channels}-channel S16LE frames')
        arr = np.frombuffer(data, dtype='<i2').reshape(-1, channels)
    else:
        arr = np.asarray(data)
        if arr.ndim == 1:
            if arr.dtype != np.int16:
                raise InputError(f'1-D audio must be interleaved int16, got {arr.dtype}')
            if arr.size % channels:
                raise InputError(f'{arr.size} interleaved samples is not a multiple of {channels} channels')
            arr = arr.reshape(-1, channels)
        if arr.ndim != 2 or arr.shape[1] != channels:
            raise InputError(f'audio chunk must be (samples, {channels}), got shape {arr.shape}')
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / 32768.0
    if arr.dtype.kind == 'f':
        out = arr.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise InputError('audio chunk contains NaN or infinite samples')
        return out
    raise InputError(f'unsupported audio sample type {arr.dtype} (expected int16 or float)')


class AudioRingBuffer:
    """Bounded buffer of the most recent ``capacity_s`` of contiguous multichannel audio.

    ``push(chunk, stamp_ns)`` checks the stamp against the one predicted from the previous
    chunk (``prev_stamp + prev_samples / sample_rate``):

    * ``|offset| <= tolerance_ns`` -> ``OK``; the sample timeline is re-anchored on the new
      stamp (so slow clock drift between the sample clock and the stamps does not accumulate).
    * ``offset > tolerance`` -> ``GAP``: samples are missing.  Continuity is *reset*: buffered
      audio is discarded and a new segment starts at this chunk (no silent zero padding, so no
      window ever spans the gap).
    * ``offset < -tolerance`` and ``stamp >= previous chunk's stamp`` -> ``OVERLAP``: the chunk
      repeats already buffered samples; those leading samples are dropped and the rest appended.
    * ``stamp < previous chunk's stamp`` -> ``OUT_OF_ORDER``: the chunk is dropped.

    ``tolerance_ns`` defaults to 1 ms and is never below half a sample period.
    Memory is bounded by ``capacity_s`` (float32 storage).
    """

    def __init__(self, channels: int = 8, sample_rate: int = 44100, capacity_s: float = 5.0,
                 tolerance_ns: Optional[int] = None):
        if channels <= 0 or sample_rate <= 0 or capacity_s <= 0:
            raise ConfigError('AudioRingBuffer: channels, sample_rate, capacity_s must be > 0')
        self.channels = int(channels)
        self.sample_rate = int(sample_rate)
        self.capacity = int(math.ceil(capacity_s * sample_rate))
        half_period = int(math.ceil(0.5e9 / sample_rate))
        tol = 1_000_000 if tolerance_ns is None else int(tolerance_ns)
        self.tolerance_ns = max(tol, half_period)
        self._buf = np.zeros((self.capacity, self.channels), np.float32)
        self.segment_id = -1        # increments on every (re)start of continuity
        self.reset()

    # state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all audio; the next push starts a new segment."""
        self._count = 0             # samples written in the current segment
        self._anchor_idx = 0        # segment index of the sample stamped _anchor_ns
        self._anchor_ns = None
        self._last_stamp = None
        self._expected_ns = None

    @property
    def started(self) -> bool:
        return self._anchor_ns is not None

    @property
    def end_index(self) -> int:
        """Segment index one past the newest sample."""
        return self._count

    @property
    def start_index(self) -> int:
        """Segment index of the oldest buffered sample."""
        return max(0, self._count - self.capacity)

    def index_to_stamp(self, index: int) -> int:
        if self._anchor_ns is None:
            raise InputError('AudioRingBuffer is empty')
        return int(self._anchor_ns + round((index - self._anchor_idx) * 1e9 / self.sample_rate))

    def stamp_to_index(self, stamp_ns: int) -> int:
        """Segment index of the sample captured at ``stamp_ns`` (nearest)."""
        if self._anchor_ns is None:
            raise InputError('AudioRingBuffer is empty')
        return self._anchor_idx + int(round((int(stamp_ns) - self._anchor_ns) * self.sample_rate / 1e9))

    # input -----------------------------------------------------------------------------------
    def push(self, chunk, stamp_ns: int) -> PushResult:
        """Append a chunk (see :func:`chunk_to_array` for accepted forms) whose first sample was
        captured at ``stamp_ns``.  Returns a :class:`PushResult`; raises :class:`InputError`
        for malformed data (wrong channel count, odd byte length, NaN)."""
        x = chunk_to_array(chunk, self.channels)
        stamp_ns = int(stamp_ns)
        n = len(x)
        if self._anchor_ns is None:
            self.segment_id += 1
            self._anchor_idx, self._anchor_ns = 0, stamp_ns
            self._append(x)
            self._after(stamp_ns, n)
            return PushResult(PushStatus.FIRST, n, 0, 0, 'new segment')
        offset = stamp_ns - self._expected_ns
        if abs(offset) <= self.tolerance_ns:
            self._anchor_idx, self._anchor_ns = self._count, stamp_ns
            self._append(x)
            self._after(stamp_ns, n)
            return PushResult(PushStatus.OK, n, 0, offset)
        if offset > 0:
            self.reset()
            self.segment_id += 1
            self._anchor_idx, self._anchor_ns = 0, stamp_ns
            self._append(x)
            self._after(stamp_ns, n)
            return PushResult(PushStatus.GAP, n, 0, offset,
                              f'gap of {offset / 1e6:.3f} ms: continuity reset')
        if stamp_ns < self._last_stamp:
            return PushResult(PushStatus.OUT_OF_ORDER, 0, n, offset,
                              f'stamp {stamp_ns} before previous chunk {self._last_stamp}: dropped')
        overlap = int(round(-offset * self.sample_rate / 1e9))
        keep = x[overlap:]
        if len(keep):
            new_stamp = stamp_ns + int(round(overlap * 1e9 / self.sample_rate))
            self._anchor_idx, self._anchor_ns = self._count, new_stamp
            self._append(keep)
            self._after(new_stamp, len(keep))
            self._last_stamp = stamp_ns          # the chunk's own stamp orders later chunks
        return PushResult(PushStatus.OVERLAP, len(keep), n - len(keep), offset,
                          f'overlap of {-offset / 1e6:.3f} ms: {n - len(keep)} samples dropped')

    def _after(self, stamp_ns: int, n: int) -> None:
        self._last_stamp = stamp_ns
        self._expected_ns = stamp_ns + int(round(n * 1e9 / self.sample_rate))

    def _append(self, x: np.ndarray) -> None:
        n = len(x)
        if n >= self.capacity:
            x = x[-self.capacity:]
            start = self._count + n - self.capacity
        else:
            start = self._count
        pos = start % self.capacity
        k = len(x)
        first = min(k, self.capacity - pos)
        self._buf[pos:pos + first] = x[:first]
        if first < k:
            self._buf[:k - first] = x[first:]
        self._count += n

    # output ----------------------------------------------------------------------------------
    def read(self, start: int, n: int) -> Optional[np.ndarray]:
        """Samples ``[start, start + n)`` of the current segment as float32 ``(channels, n)``,
        or ``None`` if not all of them are buffered."""
        if not self.holds(start, n) or n <= 0:
            return None
        out = np.empty((self.channels, n), np.float32)
        self.copy_into(start, out)
        return out

    def holds(self, start: int, n: int) -> bool:
        """Whether samples ``[start, start + n)`` of the current segment are all buffered."""
        return self.started and start >= self.start_index and start + n <= self._count

    def copy_into(self, start: int, out: np.ndarray) -> None:
        """Copy samples ``[start, start + out.shape[1])`` (buffered: see :meth:`holds`) into
        ``out`` ``(channels, n)``."""
        n = out.shape[1]
        pos = start % self.capacity
        first = min(n, self.capacity - pos)
        out[:, :first] = self._buf[pos:pos + first].T
        if first < n:
            out[:, first:] = self._buf[:n - first].T

    def window_start(self, stamp_ns: int, mode: str, n_samples: int) -> int:
        """Segment index of the first sample of the window for ``stamp_ns``."""
        idx = self.stamp_to_index(stamp_ns)
        if mode == 'causal':
            return idx - n_samples
        if mode == 'centered':
            return idx - n_samples // 2
        raise ConfigError(f"mode must be 'centered' or 'causal', got {mode!r}")

    def window(self, stamp_ns: int, mode: str = 'centered', window_s: float = 1.0) -> Optional[np.ndarray]:
        """The ``window_s`` window for ``stamp_ns`` (end for ``causal``, centre for ``centered``)
        as float32 ``(channels, N)``, or ``None`` if the buffer does not fully cover it."""
        if not self.started:
            return None
        n = int(round(window_s * self.sample_rate))
        return self.read(self.window_start(stamp_ns, mode, n), n)


# --------------------------------------------------------------------------------------------
# log-mel and inter-microphone features
# --------------------------------------------------------------------------------------------

def _mel_basis(cfg: FrontendConfig) -> np.ndarray:
    import librosa
    return librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels,
                               fmin=cfg.fmin, fmax=cfg.fmax).astype(np.float32)


def _lag_resample_matrix(n_lags: int, n_rows: int) -> np.ndarray:
    """(n_rows, n_lags) linear interpolation of a lag axis onto ``n_rows`` rows."""
    pos = np.linspace(0, n_lags - 1, n_rows) if n_lags > 1 else np.zeros(n_rows)
    m = np.zeros((n_rows, n_lags), np.float32)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_lags - 1)
    w = (pos - lo).astype(np.float32)
    m[np.arange(n_rows), lo] += 1 - w
    m[np.arange(n_rows), hi] += w
    return m


def gcc_phat(spec: torch.Tensor, max_lag: int, n_fft: int, subwindows: int = 1,
             pairs: Optional[Sequence[Tuple[int, int]]] = None, max_bin: Optional[int] = None,
             frame_stride: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """GCC-PHAT per microphone pair and sub-window from STFT frames.

    ``spec``: complex ``(C, T, F)`` (``F = n_fft // 2 + 1``).  The T frames are split into
    ``subwindows`` consecutive groups (sizes as ``np.array_split``); within a group every
    ``frame_stride``-th frame (by index in ``spec``) is used.  For each group and pair
    ``(i, j)`` the cross-spectrum ``G(k) = sum_t X_i(t, k) X_j(t, k)^*`` over bins
    ``k < max_bin`` is PHAT-weighted, ``G / |G|``, zero-filled above ``max_bin`` and inverse
    transformed (``n_fft`` points).  Returns float ``(P, subwindows, 2 * max_lag + 1)`` for lags
    ``-max_lag..max_lag``.  Sign convention: if channel ``j`` is channel ``i`` delayed by ``d``
    samples (``x_j[n] = x_i[n - d]``), the peak is at lag ``-d``; i.e. the peak lag is
    ``delay(i) - delay(j)``.
    """
    C, T, F = spec.shape
    if pairs is None:
        pairs = mic_pairs(C)
    kmax = F if max_bin is None else max(1, min(F, int(max_bin)))
    ii = torch.tensor([p[0] for p in pairs])
    jj = torch.tensor([p[1] for p in pairs])
    sel = np.arange(0, T, frame_stride)
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(T), subwindows)])
    sizes = [int(np.sum((sel >= a) & (sel < b))) for a, b in zip(bounds[:-1], bounds[1:])]
    s = spec[:, torch.from_numpy(sel), :kmax]
    re, im = s.real, s.imag
    ar, ai, br, bi = re[ii], im[ii], re[jj], im[jj]             # (P, T', K)
    cr = ar * br + ai * bi                                     # Re(X_i X_j^*)
    ci = ai * br - ar * bi                                     # Im(X_i X_j^*)
    gr = torch.stack([g.sum(dim=1) for g in torch.split(cr, sizes, dim=1)], dim=1)
    gi = torch.stack([g.sum(dim=1) for g in torch.split(ci, sizes, dim=1)], dim=1)
    mag = torch.sqrt(gr * gr + gi * gi) + eps                  # PHAT
    r = torch.fft.irfft(torch.complex(gr / mag, gi / mag), n=n_fft, dim=-1)
    return torch.cat([r[..., n_fft - max_lag:], r[..., :max_lag + 1]], dim=-1)


class LogMel(torch.nn.Module):
    """Log-mel spectrogram in torch, equal (to float32 rounding) to
    ``librosa.power_to_db(librosa.feature.melspectrogram(y, sr, n_fft, hop, n_mels,
    center=True, pad_mode='constant'), ref=1.0, amin=amin, top_db=None)``.

    ``forward(x)``: float ``(..., N)`` -> ``(..., n_mels, 1 + N // hop)`` in dB.
    """

    def __init__(self, cfg: Optional[FrontendConfig] = None):
        super().__init__()
        self.cfg = cfg or FrontendConfig()
        self.register_buffer('window', torch.hann_window(self.cfg.n_fft, periodic=True), persistent=False)
        self.register_buffer('mel_basis', torch.from_numpy(_mel_basis(self.cfg)), persistent=False)

    def spectra(self, frames: torch.Tensor) -> torch.Tensor:
        """Windowed real frames ``(..., n_fft)`` -> complex spectra ``(..., F)``."""
        return torch.fft.rfft(frames * self.window, dim=-1)

    def mel_power(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex spectra ``(..., F)`` -> mel power ``(..., n_mels)``."""
        power = spec.real.square() + spec.imag.square()
        return power @ self.mel_basis.T

    def to_db(self, mel_power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10(torch.clamp(mel_power, min=self.cfg.amin))

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., N)`` -> centred, zero-padded frames ``(..., T, n_fft)``."""
        half = self.cfg.n_fft // 2
        xp = torch.nn.functional.pad(x, (half, half))
        return xp.unfold(-1, self.cfg.n_fft, self.cfg.hop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spectra(self.frames(x))
        return self.to_db(self.mel_power(spec)).transpose(-1, -2)


class Frontend(torch.nn.Module):
    """Window ``(C, N)`` or ``(B, C, N)`` float -> features ``(B, C_in, n_mels, T)``.

    Optional per-feature-channel normalisation ``(x - mean) / std`` with ``set_stats``
    (stats of shape ``(C_in,)``, e.g. computed over the training set)."""

    def __init__(self, cfg: Optional[FrontendConfig] = None):
        super().__init__()
        self.cfg = (cfg or FrontendConfig()).validate()
        self.logmel = LogMel(self.cfg)
        self.pairs = mic_pairs(self.cfg.channels)
        self.register_buffer('lag_to_mel', torch.from_numpy(
            _lag_resample_matrix(2 * self.cfg.max_lag + 1, self.cfg.n_mels)), persistent=False)
        self.register_buffer('mean', torch.zeros(self.cfg.in_channels))
        self.register_buffer('std', torch.ones(self.cfg.in_channels))
        self.normalize = False
        self.acoustic = None
        self.mvdr = None
        if self.cfg.kind == 'acoustic_image':
            c = self.cfg
            self.acoustic = AcousticImage(c.geometry, c.channels, c.sample_rate, c.n_fft, c.columns,
                                          c.bands_hz, c.ref_distance_m, c.source_height_m)
            if c.mvdr:
                self.mvdr = MvdrImage(c.geometry, c.channels, c.sample_rate, c.n_fft, c.columns, c.bands_hz,
                                      c.ref_distance_m, c.source_height_m, smooth=c.mvdr_smooth,
                                      loading=c.mvdr_loading, bins_per_band=c.mvdr_bins_per_band)
        self._gcc_sizes = [len(a) for a in np.array_split(np.arange(self.cfg.n_frames),
                                                          self.cfg.gcc_subwindows)]

    def set_stats(self, mean, std) -> None:
        mean = torch.as_tensor(np.asarray(mean, np.float32)).reshape(-1)
        std = torch.as_tensor(np.asarray(std, np.float32)).reshape(-1)
        if mean.numel() != self.cfg.in_channels or std.numel() != self.cfg.in_channels:
            raise ConfigError(f'normalisation stats must have {self.cfg.in_channels} entries')
        if not torch.all(std > 0):
            raise ConfigError('normalisation std must be > 0')
        self.mean.copy_(mean)
        self.std.copy_(std)
        self.normalize = True

    def check_window(self, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == 2:
            x = x.unsqueeze(0)
        cfg = self.cfg
        if x.ndim != 3 or x.shape[1] != cfg.channels or x.shape[2] != cfg.window_samples:
            raise InputError(f'window must be ({cfg.channels}, {cfg.window_samples}) or '
                             f'(B, {cfg.channels}, {cfg.window_samples}), got {tuple(x.shape)}')
        # numpy's check: torch.isfinite(x).all() cost 2 ms a window (a third of the dataset build)
        finite = np.isfinite(x.detach().numpy()).all() if x.device.type == 'cpu' else torch.isfinite(x).all()
        if not finite:
            raise InputError('window contains NaN or infinite samples')
        return x

    def from_frames(self, mel_power: torch.Tensor, spec: Optional[torch.Tensor]) -> torch.Tensor:
        """Assemble features from per-frame mel power ``(B, C, T, n_mels)`` and, when GCC-PHAT
        is used, complex spectra ``(B, C, T, F)``."""
        cfg = self.cfg
        if self.acoustic is not None:
            img = self.acoustic(spec)
            if self.mvdr is not None:
                img = torch.cat([img, self.mvdr(spec)], dim=1)
            return self._normalized(img)
        logmel = self.logmel.to_db(mel_power).transpose(-1, -2)        # (B, C, M, T)
        parts = [logmel]
        if cfg.use_ild:
            parts.append(logmel - logmel.mean(dim=1, keepdim=True))
        if cfg.use_gccphat:
            maps = []
            for b in range(spec.shape[0]):
                g = gcc_phat(spec[b], cfg.max_lag, cfg.n_fft, cfg.gcc_subwindows, self.pairs,
                             cfg.gcc_max_bin, cfg.gcc_frame_stride)
                g = g @ self.lag_to_mel.T                              # (P, S, M)
                g = torch.repeat_interleave(g, torch.tensor(self._gcc_sizes), dim=1)
                maps.append(g.transpose(-1, -2))                       # (P, M, T)
            parts.append(torch.stack(maps))
        return self._normalized(torch.cat(parts, dim=1) if len(parts) > 1 else logmel)

    def _normalized(self, out: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            out = (out - self.mean[:, None, None]) / self.std[:, None, None]
        return out

    def warm_up(self) -> None:
        """Compile the acoustic image's passes (:mod:`.kernels`) before the first window."""
        for m in (self.acoustic, self.mvdr):
            if m is not None:
                m.warm_up()

    @property
    def needs_spectra(self) -> bool:
        """Whether features need the complex STFT frames (GCC-PHAT, acoustic image)."""
        return self.cfg.use_gccphat or self.acoustic is not None

    def forward(self, x) -> torch.Tensor:
        x = self.check_window(x)
        spec = self.logmel.spectra(self.logmel.frames(x))             # (B, C, T, F)
        if self.acoustic is not None:
            return self.from_frames(None, spec)
        mel = self.logmel.mel_power(spec)
        return self.from_frames(mel, spec if self.cfg.use_gccphat else None)

    @torch.no_grad()
    def compute(self, window: np.ndarray) -> np.ndarray:
        """numpy ``(C, N)`` window -> numpy ``(C_in, n_mels, T)`` features."""
        return self.forward(window)[0].numpy()


# --------------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------------

class StreamingFrontend:
    """Ring buffer + frontend that reuses STFT frames between overlapping windows.

    Windows are placed on the hop grid of the current audio segment: the window start for a
    requested stamp is rounded to the nearest multiple of ``hop`` samples (at most
    ``hop / 2`` = 2.9 ms off; rounded down, at most ``hop`` = 5.8 ms, when rounding up would
    need samples not yet received), so consecutive windows share their interior STFT frames.
    Interior frames (those not touching the window's zero padding) depend only on the samples
    they cover and are cached per segment frame index; the ``2 * ceil(n_fft / 2 / hop)`` edge
    frames are recomputed for every window.  The result equals :class:`Frontend` applied to the
    same samples (returned alongside) up to float rounding.

    Typical use (a 1-s window every 100 ms)::

        sf = StreamingFrontend(cfg)
        sf.push(chunk, stamp_ns)           # PushResult; a gap clears the cache
        out = sf.compute(stamp_ns)         # None or (features (C_in, M, T), window_stamp_ns)
    """

    def __init__(self, cfg: Optional[FrontendConfig] = None, capacity_s: float = 3.0,
                 tolerance_ns: Optional[int] = None, frontend: Optional[Frontend] = None):
        self.cfg = (cfg or FrontendConfig()).validate()
        self.frontend = frontend if frontend is not None else Frontend(self.cfg)
        self.buffer = AudioRingBuffer(self.cfg.channels, self.cfg.sample_rate,
                                      max(capacity_s, self.cfg.window_s + 0.5), tolerance_ns)
        half = self.cfg.n_fft // 2
        self._k_lo = -(-half // self.cfg.hop)                              # first interior frame
        self._k_hi = (self.cfg.window_samples - half) // self.cfg.hop      # last interior frame
        self._cache: Dict[int, Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self._segment = None
        self.frames_computed = 0          # STFT frames computed so far (for tests/benchmarks)
        self._last_window: Optional[np.ndarray] = None
        self._window_at: Optional[Tuple[int, int, int]] = None   # (segment, start, n) not yet read
        # acoustic image: the columns of segment frame j (every group, MVDR included; the beam
        # energy and MVDR power linear, before the log and the normalisation) in slot j % T and again in slot j % T + T, so that every window's T
        # frames are one contiguous slice; _col_frame[j % T] == j when the slot holds interior
        # frame j (edge frames depend on their window: never reused)
        T = self.cfg.n_frames
        self._interior = np.arange(self._k_lo, self._k_hi + 1)
        self._edges = (np.arange(0, self._k_lo), np.arange(self._k_hi + 1, T))
        self._cols: Optional[np.ndarray] = None
        self._col_frame = np.full(T, -1, np.int64)
        # MVDR: the same slots hold each frame's spectra of the MVDR bins (real, imaginary);
        # _mvdr_frame[j % T] == j when frame j's MVDR columns came from a full history of interior
        # frames (window position >= smooth), which no later window changes
        self._xr: Optional[np.ndarray] = None
        self._xi: Optional[np.ndarray] = None
        self._mvdr_frame = np.full(T, -1, np.int64)

    @property
    def last_window(self) -> Optional[np.ndarray]:
        """The samples ``(channels, N)`` of the last window computed (the acoustic image reads
        only the samples of the frames it computes; the window is read from the buffer on first
        access, or before a push would drop it)."""
        if self._window_at is not None:
            seg, start, n = self._window_at
            if seg == self.buffer.segment_id and self.buffer.holds(start, n):
                self._last_window = self.buffer.read(start, n)
            self._window_at = None
        return self._last_window

    def _keep_window(self, chunk, stamp_ns: int) -> None:
        """Read the last window out of the buffer if pushing ``chunk`` may drop its samples
        (a gap restarts the segment; a long run of audio overwrites them)."""
        buf, (_, start, _) = self.buffer, self._window_at
        c = self.cfg.channels
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            n_new = memoryview(chunk).nbytes // (2 * c)
        else:
            n_new = int(np.size(chunk)) // c
        if not buf.started or buf.end_index + n_new - buf.capacity > start \
                or int(stamp_ns) - buf._expected_ns > buf.tolerance_ns:
            self.last_window        # noqa: B018 (reads it)

    def _clear_cache(self) -> None:
        self._cache.clear()
        self._col_frame.fill(-1)
        self._mvdr_frame.fill(-1)

    def push(self, chunk, stamp_ns: int) -> PushResult:
        if self._window_at is not None:
            self._keep_window(chunk, stamp_ns)
        res = self.buffer.push(chunk, stamp_ns)
        if self.buffer.segment_id != self._segment:
            self._clear_cache()
            self._segment = self.buffer.segment_id
        return res

    def reset(self) -> None:
        self.last_window            # noqa: B018 (reads a pending window before it is dropped)
        self.buffer.reset()
        self._clear_cache()

    @torch.no_grad()
    def compute(self, stamp_ns: int, mode: Optional[str] = None
                ) -> Optional[Tuple[np.ndarray, int]]:
        """Features of the window for ``stamp_ns`` (snapped to the hop grid) and the stamp the
        window actually corresponds to (its end for causal, centre for centered), or ``None``
        when the buffer does not cover it."""
        cfg, buf = self.cfg, self.buffer
        mode = mode or cfg.mode
        if not buf.started:
            return None
        n = cfg.window_samples
        start = buf.window_start(stamp_ns, mode, n)
        start = int(round(start / cfg.hop)) * cfg.hop
        if start + n > buf.end_index:       # rounded past the newest sample: snap down instead
            start -= cfg.hop
        if not buf.holds(start, n):
            return None
        if self.frontend.acoustic is not None:
            self._last_window, self._window_at = None, (buf.segment_id, start, n)
            return self._compute_acoustic(start, mode)
        x = buf.read(start, n)
        self._last_window, self._window_at = x, None
        lm = self.frontend.logmel
        want_spec = cfg.use_gccphat
        base = start // cfg.hop
        # interior frames: cached by segment frame index
        missing = [k for k in range(self._k_lo, self._k_hi + 1) if base + k not in self._cache]
        if missing:
            half = cfg.n_fft // 2
            xt = torch.from_numpy(x)
            idx = torch.tensor(missing) * cfg.hop - half
            frames = xt[:, idx[:, None] + torch.arange(cfg.n_fft)]         # (C, m, n_fft)
            spec = lm.spectra(frames)
            mel = lm.mel_power(spec)
            for i, k in enumerate(missing):
                self._cache[base + k] = (mel[:, i], spec[:, i] if want_spec else None)
            self.frames_computed += len(missing)
        # edge frames: depend on the window's zero padding
        edge = list(range(0, self._k_lo)) + list(range(self._k_hi + 1, cfg.n_frames))
        all_frames = lm.frames(torch.from_numpy(x))                        # (C, T, n_fft) view
        e_spec = lm.spectra(all_frames[:, edge])
        e_mel = lm.mel_power(e_spec)
        self.frames_computed += len(edge)
        mels, specs = [None] * cfg.n_frames, [None] * cfg.n_frames
        for i, k in enumerate(edge):
            mels[k] = e_mel[:, i]
            specs[k] = e_spec[:, i]
        for k in range(self._k_lo, self._k_hi + 1):
            mels[k], specs[k] = self._cache[base + k]
        mel = torch.stack(mels, dim=1)[None]                                # (1, C, T, M)
        spec = torch.stack(specs, dim=1)[None] if want_spec else None
        for key in [key for key in self._cache if key < base + self._k_lo]:
            del self._cache[key]
        feats = self.frontend.from_frames(mel, spec)[0].numpy()
        at = start + n if mode == 'causal' else start + n // 2
        return feats, buf.index_to_stamp(at)

    def _compute_acoustic(self, start: int, mode: str) -> Tuple[np.ndarray, int]:
        """Acoustic image of the window at ``start``: interior frames' columns are kept (each
        100-ms step computes only the new frames), edge frames recomputed; the samples of the
        frames computed are the only ones read, and all of them go through one call of each
        compiled pass (:meth:`AcousticImage.columns_of_frames`, :meth:`MvdrImage.columns_of_frames`).

        MVDR: frames at window positions ``< smooth`` (their history is cut by the window start,
        all equal to position ``smooth - 1``'s) and the edge frames are recomputed for every
        window; the others once, when they first appear (from the first position not cached on)."""
        cfg, fe, buf = self.cfg, self.frontend, self.buffer
        lm, ai, mv = fe.logmel, fe.acoustic, fe.mvdr
        hop, n_fft, T, n = cfg.hop, cfg.n_fft, cfg.n_frames, cfg.window_samples
        half, nb2 = n_fft // 2, ai.out_channels
        base = start // hop
        if self._cols is None:
            self._cols = np.zeros((cfg.in_channels, ai.columns, 2 * T), np.float32)
            if mv is not None:    # each frame's MVDR bins, (slot, microphone, bin), zero-padded
                self._xr = np.zeros((2 * T, cfg.channels, mv.padded_bins), np.float32)
                self._xi = np.zeros_like(self._xr)
        ks = self._interior
        have = self._col_frame[(base + ks) % T] == base + ks
        need = np.concatenate([self._edges[0], ks[~have], self._edges[1]])       # increasing
        # each run of consecutive frames: one slice of samples (zero outside the window), framed
        parts = []
        for run in np.split(need, np.flatnonzero(np.diff(need) != 1) + 1):
            a, b = int(run[0]) * hop - half, int(run[-1]) * hop - half + n_fft  # window-relative
            lo, hi = max(a, 0), min(b, n)
            seg = np.empty((cfg.channels, b - a), np.float32)
            seg[:, :lo - a] = 0.0
            seg[:, hi - a:] = 0.0
            buf.copy_into(start + lo, seg[:, lo - a:hi - a])
            parts.append(torch.from_numpy(seg).unfold(-1, n_fft, hop))
        frames = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)      # (C, m, n_fft)
        spec = lm.spectra(frames).transpose(0, 1).numpy()                      # (m, C, F) view
        slots = (base + need) % T
        both = np.stack([slots, slots + T], axis=1)
        ai.columns_of_frames(spec[None], self._cols[None], both)
        interior = (need >= self._k_lo) & (need <= self._k_hi)
        self._col_frame[slots] = np.where(interior, base + need, -1)
        self.frames_computed += len(need)
        p = base % T
        if mv is not None:
            mv.gather_bins(spec, self._xr, self._xi, both)
            S = mv.smooth
            h = min(S, T)
            t = np.arange(T)
            full = (t >= S) & (t <= self._k_hi)
            cached = full & (self._mvdr_frame[(base + t) % T] == base + t)
            f0 = int(np.flatnonzero(~cached & (t >= S))[0]) if S < T else T
            # position h - 1's columns go to positions 0..h-1, each later one to its own (twice)
            head = (base + t[:h]) % T
            tail = (base + t[f0:]) % T
            targets = np.full((1 + T - f0, 2 * h), -1, np.int64)
            targets[0] = np.concatenate([head, head + T])
            targets[1:, :2] = np.stack([tail, tail + T], axis=1)
            mv.columns_of_frames(self._xr[None, p:p + T], self._xi[None, p:p + T],
                                 np.concatenate([[h - 1], t[f0:]]), self._cols[None, nb2:], targets)
            self._mvdr_frame[head] = -1
            self._mvdr_frame[tail] = np.where(full[f0:], base + t[f0:], -1)
        win = self._cols[..., p:p + T]
        feats = np.empty(win.shape, np.float32)
        nb = ai.n_bands                       # SRP-PHAT as cached; beam energy and MVDR cached linear
        feats[:nb] = win[:nb]
        np.multiply(np.log10(win[nb:], out=feats[nb:]), 10.0, out=feats[nb:])
        if fe.normalize:
            feats -= fe.mean.numpy()[:, None, None]
            feats /= fe.std.numpy()[:, None, None]
        at = start + n if mode == 'causal' else start + n // 2
        return feats, buf.index_to_stamp(at)
