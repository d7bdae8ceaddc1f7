"""Free-field acoustics of moving sources seen by a (possibly moving) microphone array.

Units: internally pascal.  :data:`PA_PER_FULL_SCALE` pascal map to 1.0 in the
float32 output of :class:`AcousticRenderer` (so ``int16 = round(x * 32767)``
clips only above ~114 dB SPL peak, far above a normal street scene; a truck
passing at 2 m peaks around 0.3).

Propagation per source and microphone, for the direct path and the ground
image source (z -> -z, pressure reflection coefficient R):

* retarded time solved in closed form for a constant-velocity source
  (``|p(t - tau) - m(t)| = c tau``), so the received frequency is exactly
  ``f c / (c - v_radial)`` (Doppler) and the inter-microphone delays follow the
  geometry;
* ``1 / r`` spreading, r = c tau;
* air absorption and occluder loss as three-band gains (<1 kHz, 1-4 kHz,
  >4 kHz) evaluated along the source-to-array-centre ray and applied on the
  source side;
* fractional delay by linear interpolation of the (band-combined) source
  signal; delays and gains are computed on a grid every ``GRID`` samples and
  interpolated linearly in between (they are smooth), so no per-sample Python.

Noise signals (tyre noise, ambient, wind, rain) come from :class:`SegmentNoise`,
which is random-access and seekable (independent, keyed segments joined by
power-complementary windows), so audio can be generated block by block with
identical results whatever the block size.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ['PA_PER_FULL_SCALE', 'P_REF', 'BAND_EDGES_HZ', 'ABSORPTION_DB_PER_M', 'SegmentNoise',
           'EngineSynth', 'Source', 'propagate', 'segment_box_hits', 'db_to_pa', 'AcousticRenderer',
           'to_int16']

PA_PER_FULL_SCALE = 10.0
P_REF = 20e-6
BAND_EDGES_HZ = (1000.0, 4000.0)
# ISO 9613-1 at ~15 degC, 70 % RH, band centres 500 Hz / 2 kHz / 8 kHz
ABSORPTION_DB_PER_M = np.array([0.002, 0.009, 0.08])
OCCLUDER_BAND_FACTOR = np.array([0.6, 1.0, 1.5])
GRID = 32


def db_to_pa(db: float) -> float:
    """RMS pressure (Pa) of a level in dB SPL."""
    return P_REF * 10 ** (db / 20.0)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Full-scale float audio to int16 with clipping (S16LE when written little-endian)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) % (2**63) for k in key])))


class SegmentNoise:
    """Stationary coloured Gaussian noise with random access in time.

    Segment k (length ``seg``, hop ``seg/2``) is white noise from a generator keyed
    by (key, k), shaped in the frequency domain and windowed by a sine window; the
    squared windows sum to one, so the output has unit variance for any shape
    (shapes are normalised) and is identical however it is sliced.
    """

    def __init__(self, key: Sequence[int], shapes: np.ndarray, channels: int = 1, seg: int = 4096):
        self.key = tuple(int(k) for k in key)
        self.seg, self.hop, self.channels = seg, seg // 2, channels
        shapes = np.atleast_2d(np.asarray(shapes, dtype=np.float64))
        if shapes.shape[1] != seg // 2 + 1:
            raise ValueError('shape must have seg // 2 + 1 bins')
        total = shapes[:, :1] ** 2 + 2 * np.sum(shapes[:, 1:-1] ** 2, axis=1, keepdims=True) + shapes[:, -1:] ** 2
        self.norm = np.sqrt(np.sum(total) / seg)   # normalise the band sum to unit variance
        self.shapes = (shapes / max(self.norm, 1e-30)).astype(np.float32)
        self.window = np.sin(np.pi * (np.arange(seg) + 0.5) / seg).astype(np.float32)
        self._cache: dict = {}     # the last block's segments: consecutive blocks share their edge segments

    def _segment(self, k: int) -> np.ndarray:
        """Windowed segment k, (bands, channels, seg)."""
        seg = self._cache.get(k)
        if seg is None:
            w = _rng(*self.key, k + 2**40).standard_normal((self.channels, self.seg), dtype=np.float32)
            spec = np.fft.rfft(w, axis=-1)
            seg = np.fft.irfft(spec[None, :, :] * self.shapes[:, None, :], n=self.seg, axis=-1)
            seg *= self.window
        return seg

    @staticmethod
    def freqs(seg: int, fs: float) -> np.ndarray:
        return np.fft.rfftfreq(seg, 1.0 / fs)

    def render(self, s0: int, s1: int) -> np.ndarray:
        """Samples [s0, s1) as (bands, channels, n)."""
        n = s1 - s0
        out = np.zeros((self.shapes.shape[0], self.channels, n), np.float32)
        if n <= 0:
            return out
        k0 = s0 // self.hop - 1
        k1 = (s1 - 1) // self.hop
        cache = {}
        for k in range(k0, k1 + 1):
            start = k * self.hop
            seg = cache[k] = self._segment(k)
            a, b = max(start, s0), min(start + self.seg, s1)
            if a < b:
                out[:, :, a - s0:b - s0] += seg[:, :, a - start:b - start]
        self._cache = {k: cache[k] for k in (k1 - 1, k1) if k in cache}
        return out


class EngineSynth:
    """Harmonic engine sound as a phase-driven wavetable (cost independent of the number of harmonics).

    rpm(t) = rpm0 (1 + d sin(2 pi fw t + phi)); the half-order frequency rpm / 120 is
    integrated analytically, so the phase is exact at any time (block independent).
    """

    TABLE = 4096

    def __init__(self, rpm: float, harmonics: np.ndarray, wobble: Sequence[float], rms_pa: float, fs: float):
        self.rpm, self.fs = float(rpm), float(fs)
        self.depth, self.fw, self.phi = (float(x) for x in wobble)
        f_half = self.rpm / 120.0
        k = np.arange(1, len(harmonics) + 1)
        freqs = k * f_half
        band = np.digitize(freqs, BAND_EDGES_HZ)
        amp = np.where(freqs < 0.45 * fs, harmonics, 0.0)
        norm = np.sqrt(np.sum(amp ** 2) / 2) if np.any(amp) else 1.0
        ph = np.linspace(0, 2 * np.pi, self.TABLE + 1)
        phases = _rng(int(rpm * 1000), len(harmonics)).uniform(0, 2 * np.pi, len(harmonics))
        tables = np.zeros((3, self.TABLE + 1))
        for b in range(3):
            sel = band == b
            if np.any(sel):
                tables[b] = (amp[sel, None] * np.sin(k[sel, None] * ph[None, :] + phases[sel, None])).sum(0)
        self.tables = (tables * (rms_pa / norm)).astype(np.float32)
        self.diffs = np.zeros_like(self.tables)
        self.diffs[:, :-1] = self.tables[:, 1:] - self.tables[:, :-1]   # float32, as render would subtract

    def cycles(self, t: np.ndarray) -> np.ndarray:
        """Number of half-order cycles elapsed at times ``t`` (integral of rpm / 120)."""
        w = 2 * np.pi * self.fw
        integ = t - self.depth / w * (np.cos(w * t + self.phi) - np.cos(self.phi)) if self.depth > 0 else t
        return self.rpm / 120.0 * integ

    def render(self, t: np.ndarray) -> np.ndarray:
        """Pressure at 1 m, (3 bands, n), at emission times ``t``."""
        return _wavetable(self.cycles(t), self.tables, self.diffs, _NO_TYRE, _NO_TYRE, _F0, _F0, False)


class Source:
    """A constant-velocity point source with a (3-band) signal at 1 m as a function of source sample index."""

    def __init__(self, p0: np.ndarray, vel: np.ndarray, signal: Callable[[int, int], np.ndarray],
                 t_on: float = -np.inf, t_off: float = np.inf, fade_s: float = 1.0):
        self.p0, self.vel = np.asarray(p0, float), np.asarray(vel, float)
        self.signal, self.t_on, self.t_off, self.fade_s = signal, t_on, t_off, fade_s

    def envelope(self, t: np.ndarray) -> np.ndarray:
        """Smooth on/off ramps at the ends of the existence interval (no clicks at spawn)."""
        e = np.ones_like(t)
        if np.isfinite(self.t_on):
            e *= np.clip((t - self.t_on) / self.fade_s, 0, 1)
        if np.isfinite(self.t_off):
            e *= np.clip((self.t_off - t) / self.fade_s, 0, 1)
        return e


    def flat(self, t0: float, t1: float) -> bool:
        """Whether :meth:`envelope` is exactly 1 at every time in [t0, t1] (the same float expressions,
        which are monotonic in t, evaluated at the ends)."""
        if np.isfinite(self.t_on) and not (t0 - self.t_on) / self.fade_s >= 1.0:
            return False
        return not np.isfinite(self.t_off) or (self.t_off - t1) / self.fade_s >= 1.0


def segment_box_hits(a: np.ndarray, b: np.ndarray, boxes: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Whether each segment a[i] -> b[i] (shape (N, 3)) crosses any axis-aligned box (slab test)."""
    hit = np.zeros(a.shape[0], dtype=bool)
    d = b - a
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = 1.0 / d
        for lo, hi in boxes:
            t1 = (lo - a) * inv
            t2 = (hi - a) * inv
            tmin = np.nanmax(np.minimum(t1, t2), axis=1)
            tmax = np.nanmin(np.maximum(t1, t2), axis=1)
            # a zero component of d with a outside the slab gives inf/-inf in the right direction
            hit |= (tmax >= np.maximum(tmin, 0.0)) & (tmin <= 1.0)
    return hit


def _retarded_delay(b: np.ndarray, u: np.ndarray, c: float) -> np.ndarray:
    """Delay tau with |b - u tau| = c tau (b: source minus mic at reception time), stable root."""
    # explicit sums instead of matmul/einsum: BLAS blocking would make results depend on the array size
    bu = b[..., 0] * u[0] + b[..., 1] * u[1] + b[..., 2] * u[2]
    bb = b[..., 0] * b[..., 0] + b[..., 1] * b[..., 1] + b[..., 2] * b[..., 2]
    A = c * c - float(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
    return bb / (np.sqrt(bu * bu + A * bb) + bu + 1e-300)


class _BlockMics:
    """Microphone positions (G, M, 3) and their centre (G, 3) at reception times t, computed once per
    distinct t for all the sources of a block (every source of a block asks for the same grid times)."""

    def __init__(self, mics_world: Callable[[np.ndarray], np.ndarray]):
        self.mics_world = mics_world
        self._mics: dict = {}
        self._centres: dict = {}

    def __call__(self, t: np.ndarray) -> np.ndarray:
        key = t.tobytes()
        if key not in self._mics:
            self._mics[key] = self.mics_world(t)
        return self._mics[key]

    def centre(self, t: np.ndarray) -> np.ndarray:
        key = t.tobytes()
        if key not in self._centres:
            self._centres[key] = self(t).mean(axis=1)
        return self._centres[key]


def propagate(src: Source, mics_world: Callable[[np.ndarray], np.ndarray], n0: int, n1: int, fs: float,
              c: float, *, reflection: float = 0.8, absorption: bool = True,
              occluders: Sequence[tuple[np.ndarray, np.ndarray]] = (), occluder_loss_db: float = 12.0,
              height: float = 0.5, max_range: Optional[float] = None) -> np.ndarray:
    """Pressure (Pa) of one source at M microphones for output samples [n0, n1), shape (n, M).

    ``mics_world(t)`` gives microphone positions (G, M, 3) at reception times t (G,).
    """
    # the grid is anchored at absolute multiples of GRID so that any block split gives identical samples
    skip = n0 % GRID
    n0 -= skip
    n = n1 - n0
    G = -(-n // GRID) + 1
    tg = (n0 + np.arange(G) * GRID) / fs
    mic = mics_world(tg)                                  # (G, M, 3)
    M = mic.shape[1]
    p = src.p0 + tg[:, None] * src.vel
    p[:, 2] = height
    # centre-ray quantities on a grid extended by EXT points each side, so that the band gains are
    # interpolated (never clamped) at every emission time a microphone needs
    EXT = 2
    gc = np.arange(-EXT, G + EXT)
    tgc = (n0 + gc * GRID) / fs
    centre = mics_world.centre(tgc) if isinstance(mics_world, _BlockMics) else mics_world(tgc).mean(axis=1)
    pc = src.p0 + tgc[:, None] * src.vel
    pc[:, 2] = height
    # source-side band gains along the ray to the array centre (absorption + occlusion)
    tau_c = _retarded_delay(pc - centre, src.vel, c)
    r_c = c * tau_c
    loss_db = np.zeros((len(gc), 3))
    if absorption:
        loss_db += r_c[:, None] * ABSORPTION_DB_PER_M[None, :]
    if occluders:
        pe = pc - tau_c[:, None] * src.vel
        occ = segment_box_hits(pe, centre, occluders)
        loss_db += occ[:, None] * (occluder_loss_db * OCCLUDER_BAND_FACTOR)[None, :]
    gains = 10 ** (-loss_db / 20)                         # (G, 3)
    if max_range is not None:   # smooth cut-off so that skipping far sources is exact (block invariant)
        gains *= np.clip((max_range - r_c) / 20.0, 0.0, 1.0)[:, None]
    paths = [(1.0, 1.0)] + ([(-1.0, reflection)] if reflection > 0 else [])
    # per path and mic: emission sample position and amplitude on the grid
    pos_g, amp_g = [], []
    for zsign, coef in paths:
        ps = p.copy()
        ps[:, 2] *= zsign
        b = ps[:, None, :] - mic                           # (G, M, 3)
        tau = _retarded_delay(b, src.vel, c)               # (G, M)
        pos_g.append(n0 + np.arange(G)[:, None] * GRID - tau * fs)
        amp_g.append(coef / np.maximum(c * tau, 0.1))
    pos_g = np.stack(pos_g)                                # (P, G, M)
    amp_g = np.stack(amp_g)
    s_lo = int(np.floor(pos_g.min())) - 2
    s_hi = int(np.ceil(pos_g.max())) + 3
    # source signal over the needed emission span, combined over bands with the time-varying gains
    bands = src.signal(s_lo, s_hi)                         # (3, span)
    e_g = n0 + gc * GRID - tau_c * fs             # emission sample of each grid point (increasing)
    ts = np.arange(s_lo, s_hi) / fs
    env = _NO_ENVELOPE if src.flat(ts[0], ts[-1]) else src.envelope(ts)   # exactly 1 away from the ramps
    # piecewise-linear upsampling of the emission positions to samples, in float32 relative to the span
    # start (span < 2**16 samples per block keeps ~1/256-sample resolution); the 1/r amplitude is applied
    # per grid cell (it changes by far less than 0.1 % over GRID samples)
    # all paths side by side: (G, P * M)
    pg_all = np.concatenate(list(pos_g), axis=1)
    amp_all = np.concatenate(list(amp_g), axis=1)
    # split each cell's start position into an absolute integer base and a small float32 remainder:
    # the result then depends only on absolute sample indices, never on where a block starts
    p_start = pg_all[:-1]
    base = np.floor(p_start)
    dpos = (pg_all[1:] - p_start).astype(np.float32)
    rem = (p_start - base).astype(np.float32)
    off = (base - s_lo).astype(np.intp)
    amp = (0.5 * (amp_all[:-1] + amp_all[1:])).astype(np.float32)
    out = _mix_delay(bands, s_lo, e_g, np.ascontiguousarray(gains.T), env, dpos, rem, off, amp, M)
    out = out.reshape(-1, M)
    return out[skip:n]


_NO_ENVELOPE = np.zeros(0)
_NO_TYRE = np.zeros((3, 0), np.float32)
_F0 = np.float32(0.0)


def _wavetable_numpy(c, tables, diffs, r0, r1, g0, g1, tyre):
    """Engine wavetable (3 bands) at cycle counts ``c``, linear interpolation in float32; with ``tyre``,
    plus the two tyre-noise rows r0, r1 (3, n) times their gains: the band signals (3, n) float32."""
    x = (c - np.floor(c)) * (tables.shape[1] - 1)
    i = x.astype(np.intp)
    f = (x - i).astype(np.float32)
    out = np.take(tables, i, axis=1) + np.take(diffs, i, axis=1) * f
    if tyre:
        out = out + r0 * g0 + r1 * g1
    return out




def _mix_delay_numpy(bands, s_lo, e_g, gains, env, dpos, rem, off, amp, M):
    """Band signals (3, span) x gains interpolated from the grid (emission samples ``e_g``, gains (3, Gc)),
    times the envelope (empty: 1), to float32, then the fractional delay of all cells and columns."""
    idx = np.arange(s_lo, s_lo + bands.shape[1], dtype=np.float64)
    s_eff = bands[0] * np.interp(idx, e_g, gains[0])
    s_eff += bands[1] * np.interp(idx, e_g, gains[1])
    s_eff += bands[2] * np.interp(idx, e_g, gains[2])
    if len(env):
        s_eff *= env
    s32 = s_eff.astype(np.float32)
    d32 = np.empty_like(s32)
    d32[:-1] = s32[1:] - s32[:-1]
    d32[-1] = 0.0
    return _frac_delay(s32, d32, dpos, rem, off, amp, M)


_FRAC = (np.arange(GRID, dtype=np.float32) / GRID)


def _frac_delay_numpy(s32, d32, dpos, rem, off, amp, M):
    """Linear-interpolation fractional delay, all cells and columns at once (columns = paths x mics).

    Returns (cells, GRID, M): the paths are summed.  Exactly the float32 operations of the compiled
    kernel below, in the same order, so both give identical bits.
    """
    frac = _FRAC[None, :, None]
    pos = dpos[:, None, :] * frac
    pos += rem[:, None, :]
    ip = pos.astype(np.intp)          # intp: np.take would convert any other index type
    pos -= ip.astype(np.float32)
    ip += off[:, None, :]
    x = np.take(d32, ip)
    x *= pos
    x += np.take(s32, ip)
    x *= amp[:, None, :]
    out = x[..., :M]
    for k in range(1, x.shape[-1] // M):
        out = out + x[..., k * M:(k + 1) * M]
    return out


try:  # numba ships with librosa; the numpy path is used where it is missing or disabled
    if os.environ.get('MMDISTILL_SIM_NUMBA', '1') == '0':
        raise ImportError
    import numba

    @numba.njit(cache=True, fastmath=False, nogil=True)
    def _frac_delay_numba(s32, d32, dpos, rem, off, amp, M):  # pragma: no cover - compiled
        G1, C = dpos.shape
        out = np.zeros((G1, _FRAC.shape[0], M), np.float32)
        for g in range(G1):
            for c in range(C):
                d = dpos[g, c]
                r = rem[g, c]
                o = off[g, c]
                a = amp[g, c]
                m = c % M
                for j in range(_FRAC.shape[0]):
                    p = np.float32(d * _FRAC[j])
                    p = np.float32(p + r)
                    i = np.intp(p)
                    f = np.float32(p - np.float32(i))
                    idx = i + o
                    x = np.float32(d32[idx] * f)
                    x = np.float32(x + s32[idx])
                    x = np.float32(x * a)
                    if c < M:
                        out[g, j, m] = x
                    else:
                        out[g, j, m] = np.float32(out[g, j, m] + x)
        return out

    _frac_delay = _frac_delay_numba

    @numba.njit(cache=True, fastmath=False, nogil=True)
    def _mix_delay_numba(bands, s_lo, e_g, gains, env, dpos, rem, off, amp, M):  # pragma: no cover - compiled
        # np.interp's arithmetic (numpy/_core/src/multiarray/compiled_base.c, arr_interp) for increasing
        # x, one walking index for the three bands; then the numpy path's float64 sums in the same order
        span = bands.shape[1]
        nx = e_g.shape[0]
        slopes = np.empty((3, max(nx - 1, 0)))
        for b in range(3):
            for k in range(nx - 1):
                slopes[b, k] = (gains[b, k + 1] - gains[b, k]) / (e_g[k + 1] - e_g[k])
        has_env = env.shape[0] > 0
        s32 = np.empty(span, np.float32)
        j = -1
        for i in range(span):
            x = np.float64(s_lo + i)
            while j + 1 < nx and e_g[j + 1] <= x:
                j += 1
            if j == -1:
                g0, g1, g2 = gains[0, 0], gains[1, 0], gains[2, 0]
            elif j == nx - 1 or e_g[j] == x:
                g0, g1, g2 = gains[0, j], gains[1, j], gains[2, j]
            else:
                dx = x - e_g[j]
                g0 = slopes[0, j] * dx + gains[0, j]
                g1 = slopes[1, j] * dx + gains[1, j]
                g2 = slopes[2, j] * dx + gains[2, j]
                if np.isnan(g0) or np.isnan(g1) or np.isnan(g2):   # np.interp's fallback (never for finite gains)
                    dx1 = x - e_g[j + 1]
                    if np.isnan(g0):
                        g0 = slopes[0, j] * dx1 + gains[0, j + 1]
                        if np.isnan(g0) and gains[0, j] == gains[0, j + 1]:
                            g0 = gains[0, j]
                    if np.isnan(g1):
                        g1 = slopes[1, j] * dx1 + gains[1, j + 1]
                        if np.isnan(g1) and gains[1, j] == gains[1, j + 1]:
                            g1 = gains[1, j]
                    if np.isnan(g2):
                        g2 = slopes[2, j] * dx1 + gains[2, j + 1]
                        if np.isnan(g2) and gains[2, j] == gains[2, j + 1]:
                            g2 = gains[2, j]
            s = np.float64(bands[0, i]) * g0 + np.float64(bands[1, i]) * g1
            s = s + np.float64(bands[2, i]) * g2
            if has_env:
                s = s * env[i]
            s32[i] = np.float32(s)
        d32 = np.empty_like(s32)
        for i in range(span - 1):
            d32[i] = s32[i + 1] - s32[i]
        d32[span - 1] = 0.0
        return _frac_delay_numba(s32, d32, dpos, rem, off, amp, M)

    _mix_delay = _mix_delay_numba

    @numba.njit(cache=True, fastmath=False, nogil=True)
    def _wavetable_numba(c, tables, diffs, r0, r1, g0, g1, tyre):  # pragma: no cover - compiled
        n = c.shape[0]
        T = tables.shape[1] - 1
        out = np.empty((3, n), np.float32)
        for k in range(n):
            x = (c[k] - np.floor(c[k])) * T
            i = np.intp(x)
            f = np.float32(x - np.float64(i))
            for b in range(3):
                v = np.float32(tables[b, i] + np.float32(diffs[b, i] * f))
                if tyre:
                    v = np.float32(v + np.float32(r0[b, k] * g0))
                    v = np.float32(v + np.float32(r1[b, k] * g1))
                out[b, k] = v
        return out

    _wavetable = _wavetable_numba
except ImportError:  # pragma: no cover
    _frac_delay = _frac_delay_numpy
    _mix_delay = _mix_delay_numpy
    _wavetable = _wavetable_numpy


class AcousticRenderer:
    """All sound of a scenario (vehicles, ego, ambient, wind, rain) at the array, block by block."""

    def __init__(self, world, mic_ego: np.ndarray):
        self.world = world
        sc = world.sc
        self.sc = sc
        self.fs = sc.audio.sample_rate
        self.c = sc.speed_of_sound
        self.mic_ego = np.asarray(mic_ego, float)
        self.M = self.mic_ego.shape[0]
        seed = sc.seed
        seg = 8192
        f = SegmentNoise.freqs(seg, self.fs)
        fsafe = np.maximum(f, 1.0)
        self.sources: list[tuple[object, Source, float]] = []
        self._bank: Optional[np.ndarray] = None
        for v in world.vehicles:
            if not v.engine_on:
                continue
            self.sources.append((v, self._vehicle_source(v, f, fsafe, seg), v.src_height))
        # ambient: diffuse, uncorrelated, pink-ish between 20 Hz and 10 kHz
        amb_shape = np.where(f > 20, 1 / np.sqrt(fsafe), 0) * np.exp(-(f / 10000.0) ** 2)
        self.ambient = SegmentNoise((seed, 11), amb_shape, channels=self.M, seg=seg)
        self.ambient_pa = db_to_pa(sc.environment.ambient_noise_db)
        # wind: low-frequency, mostly common to all mics (correlated) plus a local turbulent part
        wind_shape = np.where(f > 5, 1.0 / (1 + (fsafe / 30.0) ** 2), 0)
        # two independent wind signals mixed per microphone: partial coherence across the array
        self.wind = SegmentNoise((seed, 12), wind_shape, channels=2, seg=seg)
        wg = _rng(seed, 13)
        mix = np.stack([np.full(self.M, 0.85), 0.5 * wg.standard_normal(self.M)])
        self.wind_mix = (mix / np.sqrt((mix ** 2).sum(0))).astype(np.float32)       # (2, M), unit power
        w_eff = np.hypot(sc.environment.wind_mps, 0.5 * world.ego_velocity[0])
        self.wind_pa = 0.02 * (w_eff / 5.0) ** 2
        g = _rng(seed, 14)
        self.gust = np.stack([g.uniform(0.03, 0.3, 3), g.uniform(0, 2 * np.pi, 3)])
        # rain: broadband hiss, uncorrelated
        rain_shape = np.where(f > 200, 1.0, 0) * np.exp(-(f / 12000.0) ** 2)
        self.rain = SegmentNoise((seed, 15), rain_shape, channels=self.M, seg=seg)
        self.rain_pa = db_to_pa(55.0) if sc.weather == 'rain' else 0.0
        # ego vehicle: engine harmonics + tyre noise from below the array, nearly the same at all mics
        self.ego_pa = db_to_pa(sc.ego.noise_db) if sc.ego.mode == 'driving' else 0.0
        if self.ego_pa > 0:
            eg = _rng(seed, 16)
            k = np.arange(1, 41)
            amp = eg.lognormal(0, 0.5, 40) / k
            amp[k % 4 == 0] *= 4
            self.ego_engine = EngineSynth(sc.ego.engine_rpm, amp, (0.01, 0.2, 0.0), self.ego_pa / np.sqrt(2), self.fs)
            tyre = np.exp(-0.5 * (np.log(fsafe / 800.0) / 0.6) ** 2)
            self.ego_tyre = SegmentNoise((seed, 17), tyre, channels=1, seg=seg)
            self.ego_gain = 1.0 + 0.1 * eg.standard_normal(self.M)
        self.noise_db = self._noise_level_db()

    def _noise_level_db(self) -> float:
        """Broadband level of everything that is not a road vehicle (for the audible flag)."""
        p = self.ambient_pa ** 2 + self.rain_pa ** 2 + self.ego_pa ** 2
        return float(10 * np.log10(max(p, 1e-20) / P_REF ** 2))

    TYRE_PEAKS_HZ = (700.0, 1000.0, 1300.0)
    TYRE_BANK_LEN = 1 << 19          # 11.9 s at 44.1 kHz

    def _tyre_bank(self, f: np.ndarray, fsafe: np.ndarray, seg: int) -> np.ndarray:
        """Circular bank of band-split tyre/road noise, one row per reference timbre: (K, 3, L) float32.

        Drawing fresh shaped noise per vehicle costs four FFTs per segment; vehicles instead read this
        bank at their own offsets and mix two neighbouring timbres, which keeps them mutually
        uncorrelated (offsets seconds apart) and individually coloured at a fraction of the cost.
        The bank is made circular by a power-complementary crossfade of its tail into its head.
        """
        L = self.TYRE_BANK_LEN
        band = np.digitize(f, BAND_EDGES_HZ)
        rows = []
        for i, peak in enumerate(self.TYRE_PEAKS_HZ):
            shape = np.exp(-0.5 * (np.log(fsafe / peak) / 0.7) ** 2) + 0.05 / np.sqrt(fsafe / 100.0)
            shape = np.where(f > 30, shape, 0.0)
            shapes = np.stack([np.where(band == b, shape, 0.0) for b in range(3)])
            x = SegmentNoise((self.sc.seed, 1, i), shapes, channels=1, seg=seg).render(0, L + seg)[:, 0, :]
            w = np.sin(0.5 * np.pi * (np.arange(seg) + 0.5) / seg).astype(np.float32)
            x[:, :seg] = x[:, :seg] * w + x[:, L:L + seg] * np.sqrt(1 - w * w)
            rows.append(x[:, :L])
        return np.stack(rows)

    def _vehicle_source(self, v, f: np.ndarray, fsafe: np.ndarray, seg: int) -> Source:
        fs = self.fs
        engine = EngineSynth(v.rpm, v.harmonics, v.wobble, db_to_pa(v.engine_db), fs)
        tyre_pa = db_to_pa(v.tyre_db) if v.moving else 0.0
        if tyre_pa > 0 and self._bank is None:
            self._bank = self._tyre_bank(f, fsafe, seg)
        bank, L = self._bank, self.TYRE_BANK_LEN
        peaks = self.TYRE_PEAKS_HZ
        k = int(np.clip(np.searchsorted(peaks, v.tyre_peak_hz) - 1, 0, len(peaks) - 2))
        w = float(np.clip((v.tyre_peak_hz - peaks[k]) / (peaks[k + 1] - peaks[k]), 0, 1))
        gains = (np.float32(tyre_pa * np.sqrt(1 - w)), np.float32(tyre_pa * np.sqrt(w)))
        g = _rng(self.sc.seed, 2, v.seed_key)
        offs = (int(g.integers(0, L)), int(g.integers(0, L)))

        def read(row: int, off: int, s0: int, s1: int) -> np.ndarray:
            a = (s0 + off) % L
            if a + (s1 - s0) <= L:
                return bank[row][:, a:a + s1 - s0]
            idx = (np.arange(s0, s1) + off) % L
            return np.take(bank[row], idx, axis=1)

        def signal(s0: int, s1: int) -> np.ndarray:
            c = engine.cycles(np.arange(s0, s1) / fs)
            if tyre_pa > 0:
                return _wavetable(c, engine.tables, engine.diffs, read(k, offs[0], s0, s1),
                                  read(k + 1, offs[1], s0, s1), gains[0], gains[1], True)
            return _wavetable(c, engine.tables, engine.diffs, _NO_TYRE, _NO_TYRE, _F0, _F0, False)

        return Source(v.p0, v.vel, signal, v.t_on, v.t_off)

    def mics_world(self, t: np.ndarray) -> np.ndarray:
        return self.world.ego_position(t)[:, None, :] + self.mic_ego[None, :, :]

    def received_level_db(self, v, t: float) -> float:
        """Analytic broadband level of vehicle ``v`` at the array centre at time t (for the audible flag)."""
        if not v.engine_on or not v.exists(t):
            return -np.inf
        centre = self.world.ego_position(t) + self.mic_ego.mean(axis=0)
        p = v.position(t)
        p[2] = v.src_height
        r = max(float(np.linalg.norm(p - centre)), 0.5)
        loss = 20 * np.log10(r)
        if self.sc.audio.air_absorption:
            loss += ABSORPTION_DB_PER_M[1] * r
        if self.world.occluders and segment_box_hits(p[None], centre[None], self.world.occluders)[0]:
            loss += self.sc.audio.occluder_loss_db
        return v.level_db() - loss

    def render(self, n0: int, n1: int, *, vehicles: bool = True, noise: bool = True) -> np.ndarray:
        """Output samples [n0, n1) as float64 pascal, shape (n, M)."""
        n = n1 - n0
        out = np.zeros((n, self.M))
        if n <= 0:
            return out
        a = self.sc.audio
        if vehicles:
            t0, t1 = n0 / self.fs, n1 / self.fs
            mics = _BlockMics(self.mics_world)
            for v, src, h in self.sources:
                # skip only sources that are silent for the whole block: not yet emitting, or gone, or
                # farther than max_range (+ what they can travel during the propagation delay) throughout
                if t1 < v.t_on or t0 - a.max_range_m / self.c - 1.0 > v.t_off:
                    continue
                q = (v.p0 - self.mic_ego.mean(axis=0))[:2]
                dv = (v.vel - self.world.ego_velocity)[:2]
                ts = np.clip(-(q @ dv) / (dv @ dv), t0, t1) if dv @ dv > 0 else t0
                closest = float(np.linalg.norm(q + ts * dv))
                if closest > a.max_range_m + 50.0:
                    continue
                out += propagate(src, mics, n0, n1, self.fs, self.c,
                                 reflection=a.ground_reflection, absorption=a.air_absorption,
                                 occluders=self.world.occluders, occluder_loss_db=a.occluder_loss_db, height=h,
                                 max_range=a.max_range_m)
        if noise:
            if self.ambient_pa > 0:
                out += self.ambient.render(n0, n1)[0].T * self.ambient_pa
            if self.wind_pa > 0:
                t = np.arange(n0, n1) / self.fs
                ph = 2 * np.pi * self.gust[0][:, None] * t[None, :] + self.gust[1][:, None]
                gust = 1.0 + 0.5 * np.sin(ph).mean(0)     # slow gusts (0.03-0.3 Hz)
                w = self.wind.render(n0, n1)[0].T @ self.wind_mix
                out += w * (gust * self.wind_pa)[:, None]
            if self.rain_pa > 0:
                out += self.rain.render(n0, n1)[0].T * self.rain_pa
            if self.ego_pa > 0:
                e = self.ego_engine.render(np.arange(n0, n1) / self.fs).sum(0)
                e += self.ego_tyre.render(n0, n1)[0, 0] * (self.ego_pa / np.sqrt(2))
                out += e[:, None] * self.ego_gain[None, :]
        return out
