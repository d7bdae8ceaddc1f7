"""Compiled CPU passes of the acoustic image and the MVDR map (numba, which librosa ships).

Why: a streaming step computes about seven STFT frames. In torch ops, the tensor overhead of
those few frames cost more than their arithmetic (the streaming front end took 3.9 ms of the
3-ms step budget). One compiled loop per map, over frames and bins, with the image columns
or (MVDR) the bins as the vectorised inner axis, does the same arithmetic in a fraction of that.
The full-window path (dataset build, evaluation) uses the same passes.

Both write linear powers: ``log10`` in a compiled loop is scalar (numba has no vector math
library here), numpy's is vectorised, so the callers take it over whole arrays.

The torch modules (:class:`~.acoustic_image.AcousticImage`, :class:`~.mvdr.MvdrImage`) remain
the definition: they are what is exported to ONNX and what gradients flow through, and the
tests hold these passes equal to them. ``MMDISTILL_STUDENT_NUMBA=0`` (or numba missing) uses
the torch ops everywhere.
"""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ['AVAILABLE', 'gather_bins', 'image_columns', 'mvdr_columns', 'scatter', 'usable']

try:
    if os.environ.get('MMDISTILL_STUDENT_NUMBA', '1') == '0':
        raise ImportError
    import numba
except ImportError:  # pragma: no cover - numba is a librosa dependency
    numba = None

AVAILABLE = numba is not None


def usable(t) -> bool:
    """Whether tensor ``t`` may take a compiled pass: numba present, on the CPU, no gradient
    wanted and no ONNX export under way (those need the torch ops)."""
    return AVAILABLE and t.device.type == 'cpu' and not t.requires_grad and not torch.onnx.is_in_onnx_export()


def scatter(out: np.ndarray, values: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """The passes' output rule without numba: ``values`` ``(B, C', D, T)`` written to
    ``out[:, :C', :, s]`` for every slot ``s >= 0`` of frame ``t``'s row of ``slots`` ``(T, R)``."""
    for r in range(slots.shape[1]):
        ok = slots[:, r] >= 0
        out[:, :values.shape[1], :, slots[ok, r]] = values[..., ok]
    return out


if AVAILABLE:
    _jit = numba.njit(cache=True, fastmath=True, nogil=True)

    @_jit
    def image_columns(x, lo, sr, si, bandk, bandw, n_bands, eps, out, slots):  # pragma: no cover - compiled
        """Complex STFT frames ``(B, T, M, F)`` (any strides; bins ``lo .. lo + K - 1`` are read)
        -> SRP-PHAT coherence, then beam energy (linear, ``10 log10`` of it is the dB map), per
        band (:class:`AcousticImage`), written to ``out[b, :2 * n_bands, :, s]`` ``(B, C, D, S)``
        for every slot ``s >= 0`` of frame ``t``'s row of ``slots`` ``(T, R)`` (the streaming
        cache keeps each frame twice). ``sr``/``si`` ``(K, M, D)``: real and imaginary parts of
        the steering ``a``, beam ``y_d = sum_m a_kmd x_m``; ``bandk``/``bandw``: each bin's band
        and weight ``1/len(band)``."""
        B, T, m = x.shape[0], x.shape[1], x.shape[2]
        K, D = sr.shape[0], sr.shape[2]
        G = 8                                   # frames per block: the steering is read once a block
        y = np.empty((4, G, D), np.float32)     # beam re, im; PHAT beam re, im
        acc = np.empty((2, G, n_bands, D), np.float32)
        xn = np.empty((G, 4), np.float32)
        mf = np.float32(m)
        srp_scale = np.float32(1.0 / (m * (m - 1)))
        for b in range(B):
            for t0 in range(0, T, G):
                g = min(G, T - t0)
                acc[:] = 0.0
                for k in range(K):
                    y[:] = 0.0
                    for i in range(m):
                        for f in range(g):
                            v = x[b, t0 + f, i, lo + k]
                            xr, xi = v.real, v.imag
                            inv = np.float32(1.0) / (np.sqrt(xr * xr + xi * xi) + eps)
                            xn[f, 0], xn[f, 1], xn[f, 2], xn[f, 3] = xr, xi, xr * inv, xi * inv
                        for f in range(g):
                            xr, xi, nr, ni = xn[f, 0], xn[f, 1], xn[f, 2], xn[f, 3]
                            for d in range(D):
                                c, s = sr[k, i, d], si[k, i, d]
                                y[0, f, d] += c * xr - s * xi
                                y[1, f, d] += s * xr + c * xi
                                y[2, f, d] += c * nr - s * ni
                                y[3, f, d] += s * nr + c * ni
                    n, w = bandk[k], bandw[k]
                    for f in range(g):
                        for d in range(D):
                            acc[0, f, n, d] += w * (y[2, f, d] * y[2, f, d] + y[3, f, d] * y[3, f, d])
                            acc[1, f, n, d] += w * (y[0, f, d] * y[0, f, d] + y[1, f, d] * y[1, f, d])
                for f in range(g):
                    for n in range(n_bands):
                        for d in range(D):
                            acc[0, f, n, d] = (acc[0, f, n, d] - mf) * srp_scale
                            acc[1, f, n, d] = acc[1, f, n, d] / (mf * mf) + np.float32(1e-10)
                    for r in range(slots.shape[1]):
                        u = slots[t0 + f, r]
                        if u >= 0:
                            for n in range(n_bands):
                                for d in range(D):
                                    out[b, n, d, u] = acc[0, f, n, d]
                                    out[b, n_bands + n, d, u] = acc[1, f, n, d]

    @_jit
    def mvdr_columns(xr, xi, frames, smooth, loading, wts, pi, pj, bandk, bandw, n_bands,
                     out, slots):  # pragma: no cover - compiled
        """Frames ``(B, T, M, K)`` (real, imaginary; the MVDR bins innermost, so every step of the
        elimination runs over all bins at once) -> MVDR power (linear, ``10 log10`` of it is the dB
        map) of the listed frames
        (:class:`MvdrImage`), written to ``out[b, :n_bands, :, s]`` ``(B, C, D, S)`` for every slot
        ``s >= 0`` of the frame's row of ``slots`` ``(len(frames), R)``: per frame and bin the
        causally smoothed, loaded covariance, its inverse by Gauss-Jordan elimination in place,
        the quadratic forms ``a^H R^-1 a`` through ``wts`` ``(K, M + 2P, D)``, and the band mean
        of their inverses."""
        B, T, m, K = xr.shape
        P = pi.shape[0]
        D = wts.shape[2]
        F = frames.shape[0]
        s = min(smooth, T)
        inv_s = np.float32(1.0 / s)
        wr = np.empty((m, m, K), np.float32)
        wi = np.empty((m, m, K), np.float32)
        ar = np.empty(K, np.float32)
        ai = np.empty(K, np.float32)
        terms = np.empty((K, m + 2 * P), np.float32)
        q = np.empty(D, np.float32)
        acc = np.empty((n_bands, D), np.float32)
        for b in range(B):
            for f in range(F):
                te = max(frames[f], s - 1)          # the first frames share frame s - 1's covariance
                for i in range(m):
                    for j in range(i, m):
                        ar[:] = 0.0
                        ai[:] = 0.0
                        for u in range(te - s + 1, te + 1):
                            for k in range(K):
                                a_r, a_i = xr[b, u, i, k], xi[b, u, i, k]
                                b_r, b_i = xr[b, u, j, k], xi[b, u, j, k]
                                ar[k] += a_r * b_r + a_i * b_i          # x_i conj(x_j)
                                ai[k] += a_i * b_r - a_r * b_i
                        for k in range(K):
                            wr[i, j, k] = ar[k] * inv_s
                            wi[i, j, k] = ai[k] * inv_s
                            wr[j, i, k] = ar[k] * inv_s
                            wi[j, i, k] = -ai[k] * inv_s
                ar[:] = 0.0
                for i in range(m):
                    for k in range(K):
                        ar[k] += wr[i, i, k]
                for k in range(K):
                    ar[k] = np.float32(loading) * ar[k] / m + np.float32(1e-12)
                for i in range(m):
                    for k in range(K):
                        wr[i, i, k] += ar[k]
                for i in range(m):                  # Gauss-Jordan, in place, no pivoting (R is PD)
                    for k in range(K):
                        ar[k] = np.float32(1.0) / wr[i, i, k]
                    for j in range(m):
                        for k in range(K):
                            wr[i, j, k] *= ar[k]
                            wi[i, j, k] *= ar[k]
                    for k in range(K):
                        wr[i, i, k] = ar[k]
                        wi[i, i, k] = 0.0
                    for r in range(m):
                        if r == i:
                            continue
                        for k in range(K):
                            ar[k], ai[k] = wr[r, i, k], wi[r, i, k]
                            wr[r, i, k] = 0.0
                            wi[r, i, k] = 0.0
                        for j in range(m):
                            for k in range(K):
                                c_r, c_i, p_r, p_i = ar[k], ai[k], wr[i, j, k], wi[i, j, k]
                                wr[r, j, k] -= c_r * p_r - c_i * p_i
                                wi[r, j, k] -= c_r * p_i + c_i * p_r
                acc[:] = 0.0
                for k in range(K):
                    for i in range(m):
                        terms[k, i] = wr[i, i, k]
                    for e in range(P):
                        terms[k, m + e] = wr[pi[e], pj[e], k]
                        terms[k, m + P + e] = wi[pi[e], pj[e], k]
                    q[:] = 0.0
                    for e in range(m + 2 * P):
                        v = terms[k, e]
                        for d in range(D):
                            q[d] += wts[k, e, d] * v
                    n, w = bandk[k], bandw[k]
                    for d in range(D):
                        acc[n, d] += w / max(q[d], np.float32(1e-20))
                for n in range(n_bands):
                    for d in range(D):
                        acc[n, d] += np.float32(1e-10)
                for r in range(slots.shape[1]):
                    u = slots[f, r]
                    if u >= 0:
                        for n in range(n_bands):
                            for d in range(D):
                                out[b, n, d, u] = acc[n, d]
    @_jit
    def gather_bins(x, bins, out_r, out_i, slots):  # pragma: no cover - compiled
        """Complex STFT frames ``(T, M, F)`` -> their ``bins`` as real and imaginary parts,
        written to ``out_r``/``out_i`` ``(S, M, >= len(bins))`` at frame ``t``'s ``slots[t]``
        (``(T, R)``, ``-1`` for none): the MVDR map's streaming cache."""
        T, m = x.shape[0], x.shape[1]
        for t in range(T):
            for r in range(slots.shape[1]):
                u = slots[t, r]
                if u < 0:
                    continue
                for i in range(m):
                    for k in range(bins.shape[0]):
                        v = x[t, i, bins[k]]
                        out_r[u, i, k] = v.real
                        out_i[u, i, k] = v.imag
else:  # pragma: no cover
    image_columns = mvdr_columns = gather_bins = None
