"""MVDR (Capon) beam power over the camera columns: the acoustic image's source-separating map.

Why: the delay-and-sum beam of a 0.3-m array is wider than the image below about 1.5 kHz, so a
quiet vehicle beside a loud one vanishes into the loud one's main lobe (the issue's "the target is
typically 12 dB below the other vehicles"). The minimum-variance beamformer
``P(d) = 1 / (a_d^H R^-1 a_d)`` puts nulls on the other sources instead; on the demo's val drives
it lifts the student's GT AP@0.5 from 0.35 to 0.44-0.47 (README, "The MVDR map").

Per STFT frame ``t`` and bin, ``R_t`` is the spatial covariance averaged over the frames
``t - smooth + 1 .. t`` of the window (causal, so a streaming step reuses the columns of frames
whose history lies inside the window; the first ``smooth - 1`` frames, which have no such history,
take frame ``smooth - 1``'s), diagonally loaded with ``loading`` x its mean diagonal (robust to
steering error and to a rank-deficient ``R``). The band's value is ``10 log10`` of the mean of
``P`` over at most ``bins_per_band`` of the band's bins, evenly spaced (the cost is per bin), in
dB like the beam energy. Steering is :func:`~.acoustic_image.column_directions`, the same as the acoustic
image.

Exported to ONNX like :class:`~.acoustic_image.AcousticImage`: real arithmetic only (real and
imaginary parts passed separately, the inverse by Gauss-Jordan elimination unrolled over the
microphones; ``R`` is Hermitian positive definite once loaded, so no pivoting is needed). On the
CPU without gradient, one compiled pass (:func:`~.kernels.mvdr_columns`) does covariance,
in-place inverse, quadratic forms and band means, tested equal to the torch ops (which cost a
streaming step 18 ms).
"""
from __future__ import annotations

from itertools import combinations
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mmdistill_common.errors import ConfigError

from . import kernels
from .acoustic_image import DEFAULT_BANDS_HZ, _band_bins, column_directions, steering_delays, validate_geometry

__all__ = ['MvdrImage', 'hermitian_inverse']


def hermitian_inverse(re: torch.Tensor, im: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of Hermitian positive definite ``(..., M, M)`` matrices given as real and imaginary
    parts, by Gauss-Jordan elimination without pivoting (unrolled over ``M``; exportable).

    Each step subtracts ``(c - e_i) r_i / p`` from the augmented ``[R | I]`` (``c`` the pivot
    column, ``r_i`` the pivot row, ``p`` its real pivot): other rows are eliminated and row
    ``i`` is normalised in one update."""
    m = re.shape[-1]
    eye = torch.eye(m, dtype=re.dtype, device=re.device)
    ar = torch.cat([re, eye.expand(re.shape)], dim=-1)
    ai = torch.cat([im, torch.zeros_like(re)], dim=-1)
    for i in range(m):
        inv_p = 1.0 / ar[..., i:i + 1, i:i + 1]             # real, > 0 (Schur complements of a PD matrix)
        rr, ri = ar[..., i:i + 1, :] * inv_p, ai[..., i:i + 1, :] * inv_p
        cr, ci = ar[..., :, i:i + 1] - eye[:, i:i + 1], ai[..., :, i:i + 1]
        ar = ar - (cr * rr - ci * ri)
        ai = ai - (cr * ri + ci * rr)
    return ar[..., m:], ai[..., m:]


class MvdrImage(torch.nn.Module):
    """Complex STFT frames ``(B, M, T, F)`` (as real and imaginary parts) -> MVDR beam power in dB
    ``(B, n_bands, columns, T)``."""

    def __init__(self, geometry: Mapping, channels: int, sample_rate: int, n_fft: int, columns: int,
                 bands_hz: Sequence[float] = DEFAULT_BANDS_HZ, ref_distance_m: float = 15.0,
                 source_height_m: float = 0.7, smooth: int = 5, loading: float = 0.05, bins_per_band: int = 4):
        super().__init__()
        validate_geometry(geometry, channels)
        if smooth < 1 or bins_per_band < 1 or not loading > 0:
            raise ConfigError(f'MVDR: smooth and bins_per_band must be >= 1 and loading > 0, got {smooth}, '
                              f'{bins_per_band}, {loading}')
        self.channels, self.columns = int(channels), int(columns)
        self.smooth, self.loading = int(smooth), float(loading)
        lo, hi, bands = _band_bins(bands_hz, n_fft, sample_rate)
        self.n_bands = len(bands)
        per_band = [np.unique(np.round(np.linspace(a, c - 1, min(bins_per_band, c - a))).astype(int))
                    for a, c in bands]                                              # relative to lo
        keep = np.concatenate(per_band)
        self.register_buffer('bins', torch.from_numpy(lo + keep), persistent=False)
        self._bins_np = (lo + keep).astype(np.int64)
        tau = steering_delays(geometry, column_directions(geometry, columns, ref_distance_m, source_height_m))
        w = 2 * np.pi * (lo + keep) * sample_rate / n_fft                          # (K,)
        pairs = list(combinations(range(channels), 2))
        i, j = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        # a^H B a = sum_m B_mm + 2 sum_{m<n} Re(conj(a_m) a_n B_mn), a_m = e^{j w tau_m}
        ph = w[:, None, None] * (tau[None, :, j] - tau[None, :, i])               # (K, D, P)
        weights = np.concatenate([np.ones((len(w), columns, channels)), 2 * np.cos(ph), -2 * np.sin(ph)], axis=2)
        self.register_buffer('weights', torch.from_numpy(weights.transpose(0, 2, 1).astype(np.float32)),
                             persistent=False)                                     # (K, M + 2P, D)
        self._pi, self._pj = i, j
        self.register_buffer('pair_i', torch.from_numpy(i), persistent=False)
        self.register_buffer('pair_j', torch.from_numpy(j), persistent=False)
        band = np.zeros((len(keep), self.n_bands), np.float32)
        start = 0
        for b, sel in enumerate(per_band):
            band[start:start + len(sel), b] = 1.0 / len(sel)
            start += len(sel)
        self.register_buffer('band_mean', torch.from_numpy(band), persistent=False)
        # the compiled pass's layout, padded to a multiple of 8 bins (:attr:`padded_bins`): its
        # elimination runs over the bins in vectors of 8; a padding bin has zero weight
        k = len(keep)
        self.padded_bins = -(-k // 8) * 8
        self._weights = np.zeros((self.padded_bins, channels + 2 * len(pairs), columns), np.float32)
        self._weights[:k] = weights.transpose(0, 2, 1)
        self._bandk = np.zeros(self.padded_bins, np.int64)
        self._bandk[:k] = band.argmax(axis=1)
        self._bandw = np.zeros(self.padded_bins, np.float32)
        self._bandw[:k] = band.max(axis=1)

    @property
    def out_channels(self) -> int:
        return self.n_bands

    def covariance(self, xr: torch.Tensor, xi: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frames ``(B, M, T, K)`` -> loaded, causally smoothed covariance ``(B, T, K, M, M)``."""
        xr, xi = xr.permute(0, 2, 3, 1), xi.permute(0, 2, 3, 1)                 # (B, T, K, M)
        # x x^H: re = xr xr^T + xi xi^T, im = xi xr^T - xr xi^T
        cr = xr[..., :, None] * xr[..., None, :] + xi[..., :, None] * xi[..., None, :]
        ci = xi[..., :, None] * xr[..., None, :] - xr[..., :, None] * xi[..., None, :]
        T = cr.shape[1]
        if self.smooth > 1:
            cr, ci = torch.cumsum(cr, dim=1), torch.cumsum(ci, dim=1)
            s = min(self.smooth, T)
            if s < T:
                pad = torch.zeros_like(cr[:, :s])
                cr = cr - torch.cat([pad, cr[:, :T - s]], dim=1)
                ci = ci - torch.cat([torch.zeros_like(pad), ci[:, :T - s]], dim=1)
            cr, ci = cr[:, s - 1:] / s, ci[:, s - 1:] / s
            head = (-1, s - 1, -1, -1, -1)                 # frames without a full history: frame s - 1's
            cr = torch.cat([cr[:, :1].expand(head), cr], dim=1)
            ci = torch.cat([ci[:, :1].expand(head), ci], dim=1)
        m = self.channels
        diag = torch.diagonal(cr, dim1=-2, dim2=-1)                               # (B, T, K, M)
        lam = self.loading * diag.mean(dim=-1) + 1e-12                             # (B, T, K)
        cr = cr + lam[..., None, None] * torch.eye(m, dtype=cr.dtype, device=cr.device)
        return cr, ci

    def forward_parts(self, re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        """Real/imaginary STFT frames ``(B, M, T, F)`` -> ``(B, n_bands, columns, T)`` dB."""
        xr, xi = re.index_select(-1, self.bins), im.index_select(-1, self.bins)
        if kernels.usable(xr):
            return torch.from_numpy(self.columns_of_frames(xr.float().permute(0, 2, 1, 3).numpy(),
                                                           xi.float().permute(0, 2, 1, 3).numpy(),
                                                           np.arange(xr.shape[2])))
        return self.power(self.inverse_terms(xr, xi))

    def inverse_terms(self, xr: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """Frames ``(B, M, T, K)`` of :attr:`bins` -> per frame and bin the terms of ``R^-1`` that
        the quadratic forms read, ``(B, T, K, M + 2P)``: its diagonal, then the real and
        imaginary parts above it (torch ops: what is exported)."""
        cr, ci = self.covariance(xr, xi)
        ir, ii = hermitian_inverse(cr, ci)                                         # (B, T, K, M, M)
        return torch.cat([torch.diagonal(ir, dim1=-2, dim2=-1), ir[..., self.pair_i, self.pair_j],
                          ii[..., self.pair_i, self.pair_j]], dim=-1)

    def columns_of_frames(self, xr: np.ndarray, xi: np.ndarray, frames: np.ndarray,
                          out: Optional[np.ndarray] = None, slots: Optional[np.ndarray] = None) -> np.ndarray:
        """MVDR dB ``(B, n_bands, columns, len(frames))`` of the listed frames of ``(B, T, M, K)``
        real and imaginary frames of :attr:`bins` (``K`` the number of bins, or :attr:`padded_bins`
        with zeros after them: faster; the streaming cache's layout; a frame's covariance reads its ``smooth - 1``
        predecessors), by the compiled pass. With ``out`` ``(B, C, columns, S)``: written there at
        the listed frame ``f``'s ``slots[f]`` (``(len(frames), R)``, ``-1`` for none), *linear*
        (``10 log10`` of it is the dB map; the streaming cache takes the log once per window).
        Without numba: the torch ops on the whole window."""
        frames = np.asarray(frames, np.int64)
        db = out is None
        if db:
            out = np.empty((xr.shape[0], self.n_bands, self.columns, len(frames)), np.float32)
            slots = np.arange(len(frames))[:, None]
        if kernels.AVAILABLE:
            kernels.mvdr_columns(np.ascontiguousarray(xr, np.float32), np.ascontiguousarray(xi, np.float32),
                                 frames, self.smooth, np.float32(self.loading), self._weights, self._pi, self._pj,
                                 self._bandk, self._bandw, self.n_bands, out, np.asarray(slots, np.int64))
            if db:
                np.multiply(np.log10(out, out=out), 10.0, out=out)
            return out
        k = len(self._bins_np)                  # the padded layout's zeros are not bins
        t = [torch.from_numpy(np.ascontiguousarray(a[..., :k].transpose(0, 2, 1, 3))) for a in (xr, xi)]
        got = self.power(self.inverse_terms(*t))[..., frames].numpy()
        if not db:
            got = 10.0 ** (got / 10.0)
        return kernels.scatter(out, got, slots)

    def gather_bins(self, spec: np.ndarray, out_r: np.ndarray, out_i: np.ndarray, slots: np.ndarray) -> None:
        """Complex STFT frames ``(T, M, F)`` -> the real and imaginary parts of their :attr:`bins`,
        written to ``out_r``/``out_i`` ``(S, M, >= K)`` at frame ``t``'s ``slots[t]`` (``(T, R)``,
        ``-1`` for none): the streaming cache's layout."""
        if kernels.AVAILABLE:
            kernels.gather_bins(spec.astype(np.complex64, copy=False), self._bins_np, out_r, out_i,
                                np.asarray(slots, np.int64))
            return
        x = spec[..., self._bins_np]
        for r in range(slots.shape[1]):
            ok = slots[:, r] >= 0
            out_r[slots[ok, r], :, :len(self._bins_np)] = x[ok].real
            out_i[slots[ok, r], :, :len(self._bins_np)] = x[ok].imag

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the passes now: the first call takes seconds,
        which a node must spend before audio arrives, not on its first window."""
        if not kernels.AVAILABLE:
            return
        z = np.zeros((1, 1, self.channels, len(self.bins)), np.float32)
        self.columns_of_frames(z, z, np.zeros(1, np.int64))
        spec = np.zeros((self.channels, 2, int(self.bins.max()) + 1), np.complex64)
        for x in (spec.transpose(1, 0, 2), spec.transpose(1, 0, 2).copy()):   # per memory layout
            self.gather_bins(x, np.zeros((2, self.channels, self.padded_bins), np.float32),
                             np.zeros((2, self.channels, self.padded_bins), np.float32), np.zeros((2, 1), np.int64))

    def power(self, feats: torch.Tensor) -> torch.Tensor:
        """:meth:`inverse_terms` ``(B, T, K, M + 2P)`` -> band MVDR power ``(B, n_bands, columns, T)`` dB."""
        B, T = feats.shape[0], feats.shape[1]
        K = feats.shape[2]
        q = torch.bmm(feats.permute(2, 0, 1, 3).reshape(K, B * T, -1), self.weights)   # (K, BT, D)
        p = 1.0 / torch.clamp(q, min=1e-20)
        band = (self.band_mean.T @ p.reshape(K, -1)).view(self.n_bands, B, T, self.columns)
        return (10.0 * torch.log10(band + 1e-10)).permute(1, 0, 3, 2)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(spec.real, spec.imag)
