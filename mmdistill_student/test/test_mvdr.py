"""MVDR map: inverse, covariance rule, geometry, separation of a quiet source, streaming, ONNX."""
import math

import numpy as np
import pytest
import torch

from mmdistill_common.errors import ConfigError
from mmdistill_student import kernels
from mmdistill_student.acoustic_image import column_directions
from mmdistill_student.frontend import Frontend, FrontendConfig, StreamingFrontend
from mmdistill_student.mvdr import MvdrImage, hermitian_inverse

FS = 44100


def _geometry(radius=0.15, n=8, array_x=0.0, cam_x=0.0, pitch=0.0, width=384, fov_deg=90.0):
    a = 2 * np.pi * np.arange(n) / n
    mics = np.stack([array_x + radius * np.cos(a), radius * np.sin(a), np.full(n, 1.7)], axis=1)
    fx = width / 2 / math.tan(math.radians(fov_deg) / 2)
    return {'mic_positions_m': mics.tolist(),
            'camera': {'width': width, 'height': 128, 'fx': fx, 'fy': fx, 'cx': width / 2, 'cy': 64,
                       'x_m': cam_x, 'height_m': 1.5, 'pitch_deg': pitch},
            'speed_of_sound_mps': 343.0}


def _plane_waves(geometry, sources, seconds=1.0, seed=0):
    """Independent broadband noises from unit directions with linear amplitudes, (M, N) float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    p = np.asarray(geometry['mic_positions_m'])
    out = np.zeros((len(p), n))
    for direction, amp in sources:
        src = rng.standard_normal(n + 4096)
        lead = (p - p.mean(axis=0)) @ direction / 343.0
        f = np.fft.rfftfreq(len(src), 1 / FS)
        spec = np.fft.rfft(src)
        out += amp * np.stack([np.fft.irfft(spec * np.exp(2j * np.pi * f * t), len(src))[2048:2048 + n]
                               for t in lead])
    out += 1e-3 * rng.standard_normal(out.shape)          # sensor noise
    return (0.05 * out / out.std()).astype(np.float32)


def _config(geometry, columns=48, **kw):
    kw.setdefault('hop', 1024)
    return FrontendConfig(kind='acoustic_image', columns=columns, geometry=geometry, mvdr=True, **kw)


def _hermitian(n, m=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, m, dtype=torch.complex64, generator=g)
    return x @ x.conj().transpose(-1, -2) + 0.1 * torch.eye(m)


def test_hermitian_inverse_matches_linalg_on_both_paths(monkeypatch):
    r = _hermitian(40)
    ref = torch.linalg.inv(r)
    got_c = hermitian_inverse(r.real.contiguous(), r.imag.contiguous())          # complex torch
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    got_r = hermitian_inverse(r.real.contiguous(), r.imag.contiguous())          # real parts (export)
    scale = ref.abs().max().item()
    for gr, gi in (got_c, got_r):
        assert (gr - ref.real).abs().max().item() < 1e-5 * scale
        assert (gi - ref.imag).abs().max().item() < 1e-5 * scale


@pytest.mark.skipif(not kernels.AVAILABLE, reason='numba (a librosa dependency) is missing')
@pytest.mark.parametrize('frames,smooth', [(9, 5), (5, 5), (3, 5), (7, 1)])
def test_compiled_pass_equals_the_torch_ops(monkeypatch, frames, smooth):
    m = MvdrImage(_geometry(), 8, FS, 1024, 16, smooth=smooth)
    g = torch.Generator().manual_seed(frames)
    re, im = torch.randn(2, 8, frames, 300, generator=g), torch.randn(2, 8, frames, 300, generator=g)
    got = m.forward_parts(re, im)
    xr, xi = (a.index_select(-1, m.bins).permute(0, 2, 1, 3).numpy() for a in (re, im))   # (B, T, M, K)
    some = np.array([frames - 1, 0, frames // 2])
    picked = m.columns_of_frames(xr, xi, some)
    monkeypatch.setattr(kernels, 'AVAILABLE', False)
    ref = m.forward_parts(re, im)
    assert got.shape == ref.shape == (2, m.n_bands, 16, frames)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(picked, ref[..., some].numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(m.columns_of_frames(xr, xi, some), picked, rtol=1e-4, atol=1e-3)  # torch fallback
    monkeypatch.setattr(kernels, 'AVAILABLE', True)
    pad = [(0, 0)] * 3 + [(0, m.padded_bins - xr.shape[-1])]             # the streaming cache's layout
    assert m.padded_bins % 8 == 0 and m.padded_bins >= xr.shape[-1]
    np.testing.assert_allclose(m.columns_of_frames(np.pad(xr, pad), np.pad(xi, pad), some), picked, rtol=1e-5, atol=1e-4)


def test_covariance_is_the_causal_mean_with_the_first_frames_sharing_one():
    g = _geometry()
    m = MvdrImage(g, 8, FS, 1024, 16, smooth=3, loading=0.1)
    xr, xi = torch.randn(1, 8, 6, 5), torch.randn(1, 8, 6, 5)
    cr, ci = m.covariance(xr, xi)
    x = (xr + 1j * xi)[0].numpy().transpose(1, 2, 0)                           # (T, K, M)
    outer = x[..., :, None] * x[..., None, :].conj()
    for t in range(6):
        r = outer[max(t, 2) - 2:max(t, 2) + 1].mean(axis=0)                  # frames 0, 1 take frame 2's
        r = r + 0.1 * np.trace(r, axis1=-2, axis2=-1).real[:, None, None] / 8 * np.eye(8)
        np.testing.assert_allclose(cr[0, t].numpy(), r.real, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ci[0, t].numpy(), r.imag, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('radius,array_x,cam_x,pitch', [(0.15, 0.0, 0.0, 0.0), (0.08, 0.5, -0.3, 5.0),
                                                        (0.3, -1.0, 0.8, -3.0)])
def test_source_at_column_peaks_there(radius, array_x, cam_x, pitch):
    g = _geometry(radius=radius, array_x=array_x, cam_x=cam_x, pitch=pitch)
    fe = Frontend(_config(g, window_s=0.3, hop=512))
    dirs = column_directions(g, 48)
    nb = fe.cfg.n_bands
    for c in (2, 11, 24, 37, 45):
        y = fe(_plane_waves(g, [(dirs[c], 1.0)], seconds=0.3, seed=c))[0].numpy()
        mv = y[2 * nb:].mean(axis=(0, 2))
        assert abs(int(mv.argmax()) - c) <= 1, (c, mv.argmax())


def test_a_quiet_source_beside_a_loud_one_stands_out_in_mvdr_not_in_the_beam():
    """A source 12 dB below another one 12 columns away (the interference the issue measured).
    The delay-and-sum beam of a 0.3-m array is one broad lobe: at 700-1000 Hz it is within 1 dB
    six columns from the loud source, and at 1.5-2.2 kHz it falls steadily across the quiet one.
    The MVDR map is narrow there and peaks at the quiet source."""
    g = _geometry()
    fe = Frontend(_config(g))
    dirs = column_directions(g, 48)
    y = fe(_plane_waves(g, [(dirs[18], 1.0), (dirs[30], 10 ** (-12 / 20))], seed=1))[0].numpy()
    nb = fe.cfg.n_bands
    band = {f: b for b, f in enumerate(fe.cfg.bands_hz[:-1])}
    das, mv = y[nb:2 * nb].mean(axis=2), y[2 * nb:].mean(axis=2)                # (bands, columns)
    for v in (das, mv):
        assert abs(int(v[band[700]].argmax()) - 18) <= 1
    assert das[band[700], 18] - das[band[700], 24] < 1.0
    assert mv[band[700], 18] - mv[band[700], 24] > 3.0

    def quiet_peak(v):          # the quiet source's local maximum above the dip towards the loud one
        k = 28 + int(np.argmax(v[28:33]))
        return v[k] - v[20:k].min() if v[k] >= v[k - 1] and v[k] >= v[k + 1] else 0.0
    assert quiet_peak(mv[band[1500]]) > 1.0, mv[band[1500]].round(1)
    assert quiet_peak(das[band[1500]]) == 0.0, das[band[1500]].round(1)


def test_streaming_equals_full_with_mvdr_over_steps_back_and_gaps():
    g = _geometry()
    cfg = _config(g, columns=24)
    sf = StreamingFrontend(cfg, capacity_s=1.6)
    fe = sf.frontend
    fe.set_stats(np.linspace(-1, 1, cfg.in_channels), np.linspace(0.5, 2, cfg.in_channels))
    d = column_directions(g, 24)
    pcm = (_plane_waves(g, [(d[5], 1.0), (d[16], 0.4)], seconds=5.0, seed=3).T * 32767).astype(np.int16)
    chunk, t0, checked = 1764, 1_000_000_000, 0
    per_step = []

    def check(stamp):
        nonlocal checked
        before = sf.frames_computed
        out = sf.compute(stamp)
        if out is None:
            return
        per_step.append(sf.frames_computed - before)
        np.testing.assert_allclose(out[0], fe(sf.last_window)[0].numpy(), atol=2e-3, rtol=1e-3)
        checked += 1

    for i in range(0, pcm.shape[0], chunk):
        t = t0 + int(i / FS * 1e9)
        if 2.5 * FS <= i < 2.5 * FS + chunk:
            continue                                        # a gap: a new segment
        sf.push(pcm[i:i + chunk], t)
        if i % (3 * chunk) == 0:
            s = t - 600_000_000
            check(s)
            check(s - 250_000_000)                          # step back
            check(s)
    assert checked > 15
    assert cfg.in_channels == 3 * cfg.n_bands


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    m = MvdrImage(_geometry(), 8, FS, 1024, 24)
    re, im = torch.randn(2, 8, 12, 513), torch.randn(2, 8, 12, 513)

    class Parts(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, a, b):
            return self.m.forward_parts(a, b)
    path = tmp_path / 'mvdr.onnx'
    torch.onnx.export(Parts(m), (re, im), str(path), input_names=['re', 'im'], output_names=['p'],
                      opset_version=17, dynamo=False)
    got = ort.InferenceSession(str(path), providers=['CPUExecutionProvider']).run(
        None, {'re': re.numpy(), 'im': im.numpy()})[0]
    np.testing.assert_allclose(got, m.forward_parts(re, im).numpy(), atol=1e-2, rtol=1e-3)


def test_bad_mvdr_settings_are_refused():
    with pytest.raises(ConfigError, match='acoustic_image'):
        FrontendConfig(mvdr=True)
    for kw, what in (({'mvdr_smooth': 0}, 'mvdr_smooth'), ({'mvdr_bins_per_band': 0}, 'mvdr_bins_per_band'),
                     ({'mvdr_loading': 0.0}, 'mvdr_loading')):
        with pytest.raises(ConfigError, match=what):
            _config(_geometry(), **kw)
    with pytest.raises(ConfigError, match='MVDR'):
        MvdrImage(_geometry(), 8, FS, 1024, 24, smooth=0)


@pytest.mark.skipif(not kernels.AVAILABLE, reason='numba (a librosa dependency) is missing')
def test_warm_up_compiles_every_pass_the_streaming_step_uses():
    """A node warms up before audio arrives: its first windows must not compile anything (numba
    compiles once per argument type and memory layout, 1-4 s, which dropped a replay's first windows)."""
    g = _geometry()
    sf = StreamingFrontend(_config(g, columns=16), capacity_s=1.6)
    sf.frontend.warm_up()
    passes = (kernels.image_columns, kernels.mvdr_columns, kernels.gather_bins)
    compiled = [len(p.signatures) for p in passes]
    assert all(compiled)
    pcm = (_plane_waves(g, [(column_directions(g, 16)[5], 1.0)], seconds=1.6).T * 32767).astype(np.int16)
    got = 0
    for i in range(0, pcm.shape[0], 4410):
        t = 1_000_000_000 + int(i / FS * 1e9)
        sf.push(pcm[i:i + 4410], t)
        got += sf.compute(t - 600_000_000) is not None
    assert got >= 3
    assert [len(p.signatures) for p in passes] == compiled
    z = np.zeros((1, 6, 8, len(sf.frontend.mvdr.bins)), np.float32)
    assert sf.frontend.mvdr.columns_of_frames(z, z, np.array([5, 2])).shape == (1, sf.cfg.n_bands, 16, 2)
