"""Acoustic-image front end: geometry, agreement with pyroomacoustics' SRP, streaming, ONNX."""
import math

import numpy as np
import pytest
import torch

from mmdistill_common.errors import ConfigError
from mmdistill_student import kernels
from mmdistill_student.acoustic_image import AcousticImage, column_directions, steering_delays
from mmdistill_student.frontend import Frontend, FrontendConfig, StreamingFrontend

FS = 44100


def _geometry(radius=0.15, n=8, array_x=0.0, array_h=1.7, cam_x=0.0, cam_h=1.5, pitch=0.0,
              width=384, height=128, fov_deg=90.0):
    a = 2 * np.pi * np.arange(n) / n
    mics = np.stack([array_x + radius * np.cos(a), radius * np.sin(a), np.full(n, array_h)], axis=1)
    fx = width / 2 / math.tan(math.radians(fov_deg) / 2)
    return {'mic_positions_m': mics.tolist(),
            'camera': {'width': width, 'height': height, 'fx': fx, 'fy': fx, 'cx': width / 2, 'cy': height / 2,
                       'x_m': cam_x, 'height_m': cam_h, 'pitch_deg': pitch},
            'speed_of_sound_mps': 343.0}


def _plane_wave(geometry, direction, seconds=1.0, seed=0):
    """Broadband noise arriving from unit ``direction``, (M, N) float32 (exact fractional delays)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    src = rng.standard_normal(n + 4096)
    p = np.asarray(geometry['mic_positions_m'])
    lead = (p - p.mean(axis=0)) @ direction / 343.0
    f = np.fft.rfftfreq(len(src), 1 / FS)
    spec = np.fft.rfft(src)
    x = np.stack([np.fft.irfft(spec * np.exp(2j * np.pi * f * t), len(src))[2048:2048 + n] for t in lead])
    return (0.05 * x / x.std()).astype(np.float32)


def _config(geometry, columns=48, **kw):
    return FrontendConfig(kind='acoustic_image', hop=512, columns=columns, geometry=geometry, **kw)


@pytest.mark.parametrize('radius,array_x,cam_x,pitch', [(0.15, 0.0, 0.0, 0.0), (0.08, 0.5, -0.3, 5.0),
                                                        (0.3, -1.0, 0.8, -3.0), (0.05, 0.0, 0.0, 10.0)])
def test_source_at_column_peaks_there(radius, array_x, cam_x, pitch):
    """A source in the direction of column c peaks within one column of c, for any array radius
    and mounting (array and camera offsets, camera pitch)."""
    g = _geometry(radius=radius, array_x=array_x, cam_x=cam_x, pitch=pitch)
    fe = Frontend(_config(g, window_s=0.3))
    dirs = column_directions(g, 48)
    for c in (1, 9, 20, 24, 33, 46):
        y = fe(_plane_wave(g, dirs[c], seconds=0.3, seed=c))[0].numpy()
        srp = y[:fe.cfg.n_bands].mean(axis=(0, 2))
        das = y[fe.cfg.n_bands:].mean(axis=(0, 2))
        assert abs(int(srp.argmax()) - c) <= 1, (c, srp.argmax())
        assert abs(int(das.argmax()) - c) <= 1, (c, das.argmax())


def test_column_directions_follow_the_camera():
    """Column 0 is the image's left edge (positive azimuth, y left), the middle column is straight
    ahead, and the outermost columns sit near +-FOV/2 for a camera at the array."""
    g = _geometry(width=384, fov_deg=90.0)
    d = column_directions(g, 48, ref_distance_m=1000.0, source_height_m=1.7)
    az = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    assert az[0] > 40 and az[-1] < -40
    assert np.all(np.diff(az) < 0)
    assert abs(az[23] + az[24]) < 1e-6
    tau = steering_delays(g, d)
    assert tau.shape == (48, 8)
    assert np.abs(tau).max() <= 0.15 / 343.0 + 1e-12


def test_agrees_with_pyroomacoustics_srp():
    """The peak direction of our SRP-PHAT equals pyroomacoustics' SRP-PHAT azimuth (far field,
    same array), within one column."""
    pra = pytest.importorskip('pyroomacoustics')
    g = _geometry()
    cfg = _config(g, window_s=0.5)
    fe = Frontend(cfg)
    dirs = column_directions(g, 48, ref_distance_m=15.0)
    col_az = np.arctan2(dirs[:, 1], dirs[:, 0])
    L = np.asarray(g['mic_positions_m'])[:, :2].T
    grid = np.radians(np.arange(-60.0, 60.5, 0.5))
    for c in (6, 18, 30, 41):
        x = _plane_wave(g, dirs[c], seconds=0.5, seed=c)
        doa = pra.doa.algorithms['SRP'](L, FS, 1024, c=343.0, num_src=1, azimuth=grid)
        X = np.stack([np.fft.rfft(np.lib.stride_tricks.sliding_window_view(ch, 1024)[::512] * np.hanning(1024), axis=1).T
                      for ch in x])                                       # (M, F, frames)
        doa.locate_sources(X, freq_range=[cfg.bands_hz[0], cfg.bands_hz[-1]])
        ref = float(doa.azimuth_recon[0])
        ref = (ref + np.pi) % (2 * np.pi) - np.pi
        ours = int(fe(x)[0, :cfg.n_bands].mean(dim=(0, 2)).argmax())
        ref_col = int(np.abs(col_az - ref).argmin())
        assert abs(ours - ref_col) <= 1, (c, ours, ref_col, np.degrees(ref))


def test_streaming_equals_full_and_computes_only_new_frames():
    g = _geometry()
    cfg = _config(g)
    sf = StreamingFrontend(cfg)
    fe = sf.frontend
    x = _plane_wave(g, column_directions(g, 48)[12], seconds=3.0)
    pcm = (x.T * 32767).astype(np.int16)
    chunk = 1764                                          # 40 ms
    t0 = 1_000_000_000
    per_step = []
    for i in range(0, pcm.shape[0], chunk):
        sf.push(pcm[i:i + chunk], t0 + int(i / FS * 1e9))
    stamps = [t0 + int(s * 1e9) for s in (1.0, 1.1, 1.2, 1.5)]
    for s in stamps:
        before = sf.frames_computed
        out = sf.compute(s)
        assert out is not None
        feats, _ = out
        per_step.append(sf.frames_computed - before)
        full = fe(sf.last_window)[0].numpy()
        np.testing.assert_allclose(feats, full, atol=2e-3, rtol=1e-3)
    # after the first window, a 100-ms step computes the ~9 new frames plus the 2 edge frames
    assert per_step[0] == cfg.n_frames
    assert max(per_step[1:3]) <= int(math.ceil(0.1 * FS / cfg.hop)) + 3


@pytest.mark.skipif(not kernels.AVAILABLE, reason='numba (a librosa dependency) is missing')
@pytest.mark.parametrize('batch,frames,columns', [(1, 1, 96), (2, 7, 48), (3, 44, 5)])
def test_compiled_pass_equals_the_torch_ops(monkeypatch, batch, frames, columns):
    ai = AcousticImage(_geometry(), 8, FS, 1024, columns)
    g = torch.Generator().manual_seed(frames)
    re, im = torch.randn(batch, 8, frames, 513, generator=g), torch.randn(batch, 8, frames, 513, generator=g)
    re[0, 3, 0, ai.lo:ai.lo + 4] = 0.0                     # silent bins: PHAT must stay finite
    im[0, 3, 0, ai.lo:ai.lo + 4] = 0.0
    got = ai.forward_parts(re, im)
    monkeypatch.setattr(kernels, 'AVAILABLE', False)
    ref = ai.forward_parts(re, im)
    assert got.shape == ref.shape == (batch, 2 * ai.n_bands, columns, frames)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    with torch.enable_grad():                               # a gradient wanted: the torch ops
        monkeypatch.setattr(kernels, 'AVAILABLE', True)
        r = torch.randn(re.shape, generator=g, requires_grad=True)
        ai.forward_parts(r, im + 1.0).sum().backward()
    assert r.grad is not None and torch.isfinite(r.grad).all()


def test_onnx_export_matches_torch(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    g = _geometry()
    ai = AcousticImage(g, 8, FS, 1024, 48)
    re, im = torch.randn(2, 8, 20, 513), torch.randn(2, 8, 20, 513)
    path = tmp_path / 'ai.onnx'

    class Parts(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, a, b):
            return self.m.forward_parts(a, b)
    torch.onnx.export(Parts(ai), (re, im), str(path), input_names=['re', 'im'], output_names=['image'],
                      opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    got = sess.run(None, {'re': re.numpy(), 'im': im.numpy()})[0]
    np.testing.assert_allclose(got, ai.forward_parts(re, im).numpy(), atol=1e-3, rtol=1e-3)


def test_bad_geometry_is_refused():
    with pytest.raises(ConfigError, match='geometry'):
        FrontendConfig(kind='acoustic_image', geometry=None)
    g = _geometry(n=6)
    with pytest.raises(ConfigError, match='mic_positions_m'):
        FrontendConfig(kind='acoustic_image', geometry=g)          # 6 mics for 8 channels
    g = _geometry()
    g['camera']['fx'] = -1
    with pytest.raises(ConfigError, match='fx'):
        FrontendConfig(kind='acoustic_image', geometry=g)
    with pytest.raises(ConfigError, match='ILD'):
        FrontendConfig(kind='acoustic_image', geometry=_geometry(), use_ild=True)
    with pytest.raises(ConfigError, match='bands_hz'):
        FrontendConfig(kind='acoustic_image', geometry=_geometry(), bands_hz=(500.0, 100.0))


def test_streaming_equals_full_over_gaps_steps_back_and_normalisation():
    """The streaming acoustic image reads only the samples of the frames it computes: it must
    still equal the full window after a gap (new segment), when the window steps back in time
    (missing frames not at the end), across the ring buffer's wrap, and with normalisation."""
    g = _geometry()
    cfg = FrontendConfig(kind='acoustic_image', hop=1024, columns=24, geometry=g)
    sf = StreamingFrontend(cfg, capacity_s=1.6)
    fe = sf.frontend
    fe.set_stats(np.linspace(-1, 1, cfg.in_channels), np.linspace(0.5, 2, cfg.in_channels))
    x = _plane_wave(g, column_directions(g, 24)[5], seconds=6.0, seed=3)
    pcm = (x.T * 32767).astype(np.int16)
    chunk, t0 = 1764, 1_000_000_000
    checked = 0

    def check(stamp):
        nonlocal checked
        out = sf.compute(stamp)
        if out is None:
            return
        full = fe(sf.last_window)[0].numpy()
        np.testing.assert_allclose(out[0], full, atol=2e-3, rtol=1e-3)
        checked += 1

    for i in range(0, pcm.shape[0], chunk):
        t = t0 + int(i / FS * 1e9)
        if 2.5 * FS <= i < 2.5 * FS + chunk:
            continue                                        # drop a chunk: a gap
        if checked and i % (4 * chunk) == 0:
            # the last window is read before pushes drop it (gap, overwrite)
            assert sf.last_window.shape == (8, cfg.window_samples)
        sf.push(pcm[i:i + chunk], t)
        if i % (3 * chunk) == 0:
            s = t - 600_000_000
            check(s)
            check(s - 250_000_000)                          # step back: missing frames at the start
            check(s)
    assert checked > 20


def test_last_window_survives_a_gap():
    g = _geometry()
    cfg = FrontendConfig(kind='acoustic_image', hop=1024, columns=24, geometry=g)
    sf = StreamingFrontend(cfg)
    x = _plane_wave(g, column_directions(g, 24)[5], seconds=2.0, seed=4)
    pcm = (x.T * 32767).astype(np.int16)
    t0 = 1_000_000_000
    sf.push(pcm[:int(1.6 * FS)], t0)
    feats, _ = sf.compute(t0 + 800_000_000)
    assert sf.push(pcm[int(1.6 * FS):], t0 + 5_000_000_000).status.value == 'gap'
    w = sf.last_window
    assert w is not None and w.shape == (8, cfg.window_samples)
    np.testing.assert_allclose(sf.frontend(w)[0].numpy(), feats, atol=2e-3, rtol=1e-3)
