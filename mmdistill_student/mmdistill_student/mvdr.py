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
CPU, numba (which librosa ships) does covariance, in-place inverse and quadratic-form terms in one
compiled pass, tested equal to the torch ops: the torch ops cost a streaming step 18 ms.
"""
from __future__ import annotations

import os
from itertools import combinations
from typing import Mapping, Sequence, Tuple

import numpy as np
import torch

from mmdistill_common.errors import ConfigError

from .acoustic_image import DEFAULT_BANDS_HZ, _band_bins, column_directions, steering_delays, validate_geometry

__all__ = ['MvdrImage', 'hermitian_inverse']


try:  # numba ships with librosa; the torch ops are used where it is missing, disabled, or exporting
    if os.environ.get('MMDISTILL_STUDENT_NUMBA', '1') == '0':
        raise ImportError
    import numba

    @numba.njit(cache=True, fastmath=False, nogil=True)
    def _inverse_terms_numba(x, smooth, loading, first, pi, pj):  # pragma: no cover - compiled
        """:meth:`MvdrImage.inverse_terms` in one pass over complex frames ``(B, T, K, M)``: per
        output frame and bin the smoothed, loaded covariance, inverted in place (Gauss-Jordan),
        and the terms the quadratic forms read."""
        B, T, K, m = x.shape
        P = pi.shape[0]
        s = min(smooth, T)
        inv_s = np.float32(1.0 / s)
        zero = np.complex64(0.0)
        out = np.empty((B, T - first, K, m + 2 * P), np.float32)
        w = np.empty((m, m), np.complex64)
        for b in range(B):
            for t in range(first, T):
                te = max(t, s - 1)                 # the first frames share frame s - 1's covariance
                for k in range(K):
                    for i in range(m):
                        for j in range(i, m):
                            acc = zero
                            for u in range(te - s + 1, te + 1):
                                acc += x[b, u, k, i] * np.conj(x[b, u, k, j])
                            acc *= inv_s
                            w[i, j] = acc
                            w[j, i] = np.conj(acc)
                    lam = np.float32(0.0)
                    for i in range(m):
                        lam += w[i, i].real
                    lam = np.float32(loading) * lam / m + np.float32(1e-12)
                    for i in range(m):
                        w[i, i] += lam
                    for i in range(m):
                        inv_p = np.float32(1.0) / w[i, i].real
                        w[i, i] = np.complex64(1.0)
                        for j in range(m):
                            w[i, j] *= inv_p
                        for r in range(m):
                            if r != i:
                                c = w[r, i]
                                w[r, i] = zero
                                for j in range(m):
                                    w[r, j] -= c * w[i, j]
                    for i in range(m):
                        out[b, t - first, k, i] = w[i, i].real
                    for q in range(P):
                        v = w[pi[q], pj[q]]
                        out[b, t - first, k, m + q] = v.real
                        out[b, t - first, k, m + P + q] = v.imag
        return out
except ImportError:  # pragma: no cover - numba is a librosa dependency
    _inverse_terms_numba = None


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
        return self.forward_selected(re.index_select(-1, self.bins), im.index_select(-1, self.bins))

    def forward_selected(self, xr: torch.Tensor, xi: torch.Tensor, first: int = 0) -> torch.Tensor:
        """:meth:`forward_parts` on frames already reduced to :attr:`bins` ``(B, M, T, K)``; only
        frames ``first..T-1`` are returned (the earlier ones serve as their history)."""
        return self.power(self.inverse_terms(xr, xi, first))

    def inverse_terms(self, xr: torch.Tensor, xi: torch.Tensor, first: int = 0) -> torch.Tensor:
        """Frames ``(B, M, T, K)`` -> per frame ``first..T-1`` and bin the terms of ``R^-1`` that the
        quadratic forms read, ``(B, T - first, K, M + 2P)``: its diagonal, then the real and
        imaginary parts above it. Compiled in one pass where numba is available (the streaming
        step's cost), else torch ops (also what is exported)."""
        if _inverse_terms_numba is not None and not torch.onnx.is_in_onnx_export() and not xr.requires_grad \
                and xr.device.type == 'cpu':
            return self.terms_of_frames(torch.complex(xr.float(), xi.float()).permute(0, 2, 3, 1).numpy(), first)
        cr, ci = self.covariance(xr, xi)
        if first:
            cr, ci = cr[:, first:], ci[:, first:]
        ir, ii = hermitian_inverse(cr, ci)                                         # (B, T, K, M, M)
        return torch.cat([torch.diagonal(ir, dim1=-2, dim2=-1), ir[..., self.pair_i, self.pair_j],
                          ii[..., self.pair_i, self.pair_j]], dim=-1)

    def terms_of_frames(self, x: np.ndarray, first: int = 0) -> torch.Tensor:
        """:meth:`inverse_terms` of complex frames laid out ``(B, T, K, M)`` (the streaming cache's
        layout), compiled where numba is available."""
        if _inverse_terms_numba is None:
            t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
            return self.inverse_terms(t.real, t.imag, first)
        return torch.from_numpy(_inverse_terms_numba(np.ascontiguousarray(x, np.complex64), self.smooth,
                                                     self.loading, int(first), self._pi, self._pj))

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the kernel now: the first call takes seconds,
        which a node must spend before audio arrives, not on its first window."""
        self.terms_of_frames(np.zeros((1, 1, 1, self.channels), np.complex64))

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
