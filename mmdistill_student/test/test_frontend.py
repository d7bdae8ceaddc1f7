"""Audio front end: config, ring buffer, log-mel vs librosa, GCC-PHAT, streaming == batch."""

import numpy as np
import pytest
import torch

from mmdistill_common.errors import ConfigError, InputError
from mmdistill_student.frontend import (
    AudioRingBuffer, Frontend, FrontendConfig, LogMel, PushStatus, StreamingFrontend,
    chunk_to_array, gcc_phat, mic_pairs)

torch.set_num_threads(1)
SR = 44100
NS = 1_000_000_000


def stamp(i, t0=1_000 * NS):
    """Stamp of sample index i."""
    return t0 + int(round(i * NS / SR))


def ramp_audio(n, ch=8):
    """int16 audio whose value encodes the sample index (mod 32768) and channel."""
    i = np.arange(n)[:, None]
    return ((i * 7 + np.arange(ch)[None] * 1000) % 30000).astype(np.int16)


def push_all(buf, audio, chunk=882, t0=1_000 * NS):
    out = []
    for s in range(0, len(audio), chunk):
        out.append(buf.push(audio[s:s + chunk], stamp(s, t0)))
    return out


# ---------------------------------------------------------------------------- config

def test_config_defaults_and_shape():
    cfg = FrontendConfig()
    assert cfg.feature_shape() == (8, 80, 173)
    assert cfg.window_samples == 44100
    full = FrontendConfig(use_ild=True, use_gccphat=True)
    assert full.feature_shape() == (8 + 8 + 28, 80, 173)
    assert full.n_pairs == 28 == len(mic_pairs(8))
    assert FrontendConfig.from_dict(full.to_dict()) == full


@pytest.mark.parametrize('kw', [dict(mode='future'), dict(n_fft=1023), dict(hop=0),
                                dict(fmax=30000.0), dict(window_s=0.01), dict(channels=0),
                                dict(gcc_max_lag=600), dict(n_mels=2.5)])
def test_config_validation(kw):
    with pytest.raises(ConfigError):
        FrontendConfig(**kw)


def test_config_unknown_key():
    with pytest.raises(ConfigError, match='unknown'):
        FrontendConfig.from_dict({'n_mel': 64})


# ---------------------------------------------------------------------------- ring buffer

def test_chunk_forms_and_bad_input():
    a = ramp_audio(10)
    np.testing.assert_array_equal(chunk_to_array(a.tobytes(), 8), a / 32768.0)
    np.testing.assert_array_equal(chunk_to_array(a.reshape(-1), 8), a / 32768.0)
    with pytest.raises(InputError):
        chunk_to_array(a.tobytes()[:-1], 8)          # odd byte length
    with pytest.raises(InputError):
        chunk_to_array(a[:, :6], 8)                  # wrong channel count
    with pytest.raises(InputError):
        chunk_to_array(np.full((4, 8), np.nan, np.float32), 8)
    with pytest.raises(InputError):
        chunk_to_array(a.astype(np.int32), 8)


@pytest.mark.parametrize('mode', ['causal', 'centered'])
def test_window_extraction(mode):
    audio = ramp_audio(3 * SR)
    buf = AudioRingBuffer(8, SR, capacity_s=5.0)
    res = push_all(buf, audio)
    assert res[0].status == PushStatus.FIRST and all(r.status == PushStatus.OK for r in res[1:])
    at = 2 * SR                                     # sample captured at the query stamp
    w = buf.window(stamp(at), mode)
    assert w.shape == (8, SR) and w.dtype == np.float32
    start = at - SR if mode == 'causal' else at - SR // 2
    np.testing.assert_array_equal(w, audio[start:start + SR].T / 32768.0)
    # not fully covered: before the first sample / after the last
    late = stamp(3 * SR - SR // 4) if mode == 'centered' else stamp(3 * SR + 10)
    assert buf.window(late, mode) is None
    assert buf.window(stamp(SR // 2 - 1), mode) is None


def test_bounded_memory_and_old_windows_dropped():
    buf = AudioRingBuffer(8, SR, capacity_s=2.0)
    nbytes = buf._buf.nbytes
    push_all(buf, ramp_audio(6 * SR), chunk=4410)
    assert buf._buf.nbytes == nbytes
    assert buf.window(stamp(2 * SR), 'causal') is None          # evicted
    w = buf.window(stamp(6 * SR), 'causal')
    np.testing.assert_array_equal(w, ramp_audio(6 * SR)[5 * SR:].T / 32768.0)


def test_jitter_within_tolerance_is_ok():
    buf = AudioRingBuffer(8, SR, tolerance_ns=1_000_000)
    audio = ramp_audio(SR)
    rng = np.random.default_rng(1)
    for s in range(0, SR, 882):
        r = buf.push(audio[s:s + 882], stamp(s) + int(rng.integers(-400_000, 400_000)))
        assert r.ok
    assert buf.end_index == SR


def test_gap_resets_continuity():
    buf = AudioRingBuffer(8, SR)
    audio = ramp_audio(4 * SR)
    push_all(buf, audio[:2 * SR])
    # 10 chunks (200 ms) go missing
    r = buf.push(audio[2 * SR + 8820:2 * SR + 8820 + 882], stamp(2 * SR + 8820))
    assert r.status == PushStatus.GAP and not r.ok
    assert abs(r.offset_ns - 200_000_000) < 50_000
    assert buf.end_index == 882                              # old audio dropped, new segment
    # a window spanning the gap is never produced (no silent zero padding)
    assert buf.window(stamp(2 * SR + 4000), 'centered') is None
    for s in range(2 * SR + 8820 + 882, 4 * SR, 882):
        assert buf.push(audio[s:s + 882], stamp(s)).status == PushStatus.OK
    w = buf.window(stamp(4 * SR), 'causal')
    np.testing.assert_array_equal(w, audio[3 * SR:].T / 32768.0)


def test_overlap_trims_and_out_of_order_drops():
    buf = AudioRingBuffer(8, SR)
    audio = ramp_audio(2 * SR)
    push_all(buf, audio[:SR])
    # re-send the last 100 samples plus 782 new ones
    r = buf.push(audio[SR - 100:SR + 782], stamp(SR - 100))
    assert r.status == PushStatus.OVERLAP and r.dropped == 100 and r.accepted == 782
    assert buf.end_index == SR + 782
    # a chunk from the past (before the previous chunk's start): dropped, nothing changes
    r = buf.push(audio[:882], stamp(0))
    assert r.status == PushStatus.OUT_OF_ORDER and r.accepted == 0 and r.dropped == 882
    assert buf.end_index == SR + 782
    # a full duplicate of the last chunk is an overlap that drops everything
    r = buf.push(audio[SR - 100:SR + 782], stamp(SR - 100))
    assert r.status == PushStatus.OVERLAP and r.accepted == 0
    for s in range(SR + 782, 2 * SR, 882):
        assert buf.push(audio[s:s + 882], stamp(s)).ok
    np.testing.assert_array_equal(buf.window(stamp(2 * SR), 'causal'), audio[SR:].T / 32768.0)


# ---------------------------------------------------------------------------- log-mel

@pytest.mark.parametrize('amp', [0.3, 1e-3])
def test_logmel_matches_librosa(amp):
    librosa = pytest.importorskip('librosa')
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    x = (amp * (0.5 * rng.standard_normal((2, SR)) + np.sin(2 * np.pi * 440 * t))).astype(np.float32)
    ours = LogMel()(torch.from_numpy(x)).numpy()
    ref = librosa.power_to_db(librosa.feature.melspectrogram(
        y=x, sr=SR, n_fft=1024, hop_length=256, n_mels=80, center=True, pad_mode='constant'),
        ref=1.0, amin=1e-10, top_db=None)
    assert ours.shape == ref.shape == (2, 80, 173)
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=0)


def test_frontend_channels_ild_and_errors():
    cfg = FrontendConfig(use_ild=True, use_gccphat=True)
    fe = Frontend(cfg)
    x = np.random.default_rng(0).standard_normal((8, SR)).astype(np.float32) * 0.1
    f = fe.compute(x)
    assert f.shape == cfg.feature_shape()
    np.testing.assert_allclose(f[8:16].sum(axis=0), 0, atol=1e-3)       # ILD: relative to mean
    np.testing.assert_allclose(f[:8], Frontend(FrontendConfig()).compute(x), atol=1e-4)
    with pytest.raises(InputError):
        fe.compute(x[:, :-1])
    bad = x.copy()
    bad[0, 5] = np.nan
    with pytest.raises(InputError):
        fe.compute(bad)
    fe.set_stats(np.full(cfg.in_channels, 1.0), np.full(cfg.in_channels, 2.0))
    np.testing.assert_allclose(fe.compute(x), (f - 1.0) / 2.0, atol=1e-4)
    with pytest.raises(ConfigError):
        fe.set_stats(np.zeros(3), np.ones(3))


# ---------------------------------------------------------------------------- GCC-PHAT

@pytest.mark.parametrize('delay', [-7, 0, 3, 12, 40])
def test_gcc_phat_recovers_integer_delay(delay):
    rng = np.random.default_rng(5)
    n = SR
    src = rng.standard_normal(n + 200).astype(np.float32)
    x = np.stack([src[100:100 + n], src[100 - delay:100 - delay + n]])  # x1[n] = x0[n - delay]
    x += 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    lm = LogMel()
    spec = lm.spectra(lm.frames(torch.from_numpy(x)))
    max_lag = 52
    for kw in [dict(), dict(max_bin=186, frame_stride=2)]:
        g = gcc_phat(spec, max_lag, 1024, subwindows=4, **kw)
        assert g.shape == (1, 4, 2 * max_lag + 1)
        peaks = g[0].argmax(dim=-1) - max_lag
        assert torch.all(peaks == -delay), (kw, peaks)


def test_gcc_feature_channels_point_at_delay():
    """Through the Frontend: the pair (0, 1) map peaks at the row of lag -delay."""
    rng = np.random.default_rng(2)
    cfg = FrontendConfig(use_gccphat=True, gcc_max_lag=20, n_mels=41)    # 41 rows = 41 lags
    src = rng.standard_normal(SR + 100).astype(np.float32)
    x = np.stack([src[50 + 2 * c:50 + 2 * c + SR] for c in range(8)])     # x_c[n] = s[n + 2c]
    f = Frontend(cfg).compute(x * 0.1)
    # delay(c) = -2c samples, so pair (i, j) peaks at delay(i) - delay(j) = 2 (j - i)
    for p, (i, j) in enumerate(mic_pairs(8)):
        if 2 * (j - i) <= 20:
            assert np.all(f[8 + p].argmax(axis=0) - 20 == 2 * (j - i)), (i, j)


# ---------------------------------------------------------------------------- streaming

@pytest.mark.parametrize('kw', [dict(), dict(use_ild=True, use_gccphat=True, mode='causal')])
def test_streaming_equals_batch(kw):
    cfg = FrontendConfig(**kw)
    rng = np.random.default_rng(3)
    audio = (rng.standard_normal((3 * SR, 8)) * 3000).astype(np.int16)
    sf = StreamingFrontend(cfg)
    batch = Frontend(cfg)
    outputs, frames_per_step = 0, []
    next_t = stamp(0) + NS // 2
    for s in range(0, len(audio), 1323):                 # 30 ms chunks
        assert sf.push(audio[s:s + 1323], stamp(s)).ok
        now = stamp(min(s + 1323, len(audio)))
        while next_t <= now:
            before = sf.frames_computed
            query = next_t - (NS // 2 if cfg.mode == 'centered' else 0)
            out = sf.compute(query)
            if out is not None:
                feats, wstamp = out
                assert abs(wstamp - query) <= NS * 256 / SR + 1
                idx = buf_index = sf.buffer.stamp_to_index(wstamp)
                start = buf_index - SR if cfg.mode == 'causal' else idx - SR // 2
                assert start % cfg.hop == 0
                window = audio[start:start + SR].T.astype(np.float32) / 32768.0
                np.testing.assert_array_equal(sf.last_window, window)
                ref = batch.compute(window)
                np.testing.assert_allclose(feats, ref, atol=2e-3, rtol=1e-5)
                if outputs:
                    frames_per_step.append(sf.frames_computed - before)
                outputs += 1
            next_t += NS // 10
    assert outputs >= 15
    # only the new interior frames (~100 ms / hop = 17-18) and the 4 edge frames are computed
    assert max(frames_per_step) <= 18 + 4, frames_per_step


def test_streaming_gap_clears_cache():
    cfg = FrontendConfig(mode='causal')
    sf = StreamingFrontend(cfg)
    audio = (np.random.default_rng(4).standard_normal((3 * SR, 8)) * 3000).astype(np.int16)
    for s in range(0, int(1.5 * SR), 882):
        sf.push(audio[s:s + 882], stamp(s))
    assert sf.compute(stamp(int(1.5 * SR))) is not None
    r = sf.push(audio[2 * SR:2 * SR + 882], stamp(2 * SR))
    assert r.status == PushStatus.GAP
    assert sf.compute(stamp(2 * SR + 882)) is None
    assert not sf._cache
