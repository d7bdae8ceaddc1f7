"""Acoustic physics checked against formulas (not stored outputs)."""
import numpy as np
import pytest

from mmdistill_sim.acoustics import (EngineSynth, SegmentNoise, Source, propagate, segment_box_hits)
from mmdistill_sim.scenario import scenario_from_dict
from mmdistill_sim.simulator import Simulator

FS = 44100
C = 343.0
MICS = scenario_from_dict({}).mic_array.positions()     # 8 mics, r = 0.15 m, z = 1.7 m


def static_mics(t):
    return np.broadcast_to(MICS, (len(t),) + MICS.shape)


def band_source(p0, vel=(0, 0, 0), seed=3, fmax=4000.0):
    """Noise limited to fmax (vehicle sound is mostly below a few kHz; the linear fractional-delay
    interpolator is accurate there), split into the simulator's three absorption bands."""
    f = SegmentNoise.freqs(4096, FS)
    band = np.digitize(f, [1000.0, 4000.0])
    shapes = np.stack([((band == b) & (f > 50) & (f < fmax)).astype(float) for b in range(3)])
    noise = SegmentNoise((seed,), shapes, seg=4096)
    return Source(np.asarray(p0, float), np.asarray(vel, float), lambda s0, s1: noise.render(s0, s1)[:, 0, :])


def tone_source(p0, vel, f):
    def sig(s0, s1):
        t = np.arange(s0, s1) / FS
        out = np.zeros((3, s1 - s0))
        out[0] = np.sin(2 * np.pi * f * t)
        return out
    return Source(np.asarray(p0, float), np.asarray(vel, float), sig)


def run(src, n0, n1, height, **kw):
    kw.setdefault('reflection', 0.0)
    kw.setdefault('absorption', False)
    return propagate(src, static_mics, n0, n1, FS, C, height=height, **kw)


def xcorr_delay(a, b, up=16):
    """Delay of b relative to a (seconds), by upsampled FFT cross-correlation."""
    n = len(a)
    A, B = np.fft.rfft(a, 2 * n), np.fft.rfft(b, 2 * n)
    r = np.fft.irfft(np.conj(A) * B, 2 * n * up)
    lag = int(np.argmax(r))
    if lag > n * up:
        lag -= 2 * n * up
    return lag / (FS * up)


@pytest.mark.parametrize('az_deg', [0.0, 37.0, 100.0])
def test_inter_mic_delay_matches_geometry(az_deg):
    a = np.radians(az_deg)
    p = np.array([25 * np.cos(a), 25 * np.sin(a), 1.7])
    x = run(band_source(p), 0, FS // 2, height=1.7)
    for i, j in [(0, 4), (2, 6), (1, 5), (0, 1)]:
        expected = (np.linalg.norm(p - MICS[j]) - np.linalg.norm(p - MICS[i])) / C
        got = xcorr_delay(x[:, i], x[:, j])
        assert abs(got - expected) < 0.08 / FS, (i, j, got * FS, expected * FS)


def peak_freq(x, fs=FS):
    w = np.hanning(len(x))
    n = 1 << 20
    spec = np.abs(np.fft.rfft(x * w, n))
    k = int(np.argmax(spec))
    y0, y1, y2 = np.log(spec[k - 1:k + 2])
    return (k + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)) * fs / n


def test_doppler_of_passing_vehicle_matches_formula():
    f0, v = 400.0, 25.0
    # passes the array at 6 m lateral distance, crossing x = 0 at t = 4 s
    src = tone_source([-100.0, 6.0, 0.0], [v, 0, 0], f0)
    x = run(src, 0, 8 * FS, height=0.5)[:, 0]
    mic = MICS[0]
    for t0 in (0.5, 6.5):   # approaching, receding: 1 s windows
        seg = x[int(t0 * FS):int((t0 + 1) * FS)]
        got = peak_freq(seg)
        # radial velocity at the emission time of the window centre (retarded time solved by iteration)
        t = t0 + 0.5
        te = t
        for _ in range(20):
            p = np.array([-100 + v * te, 6.0, 0.5])
            te = t - np.linalg.norm(p - mic) / C
        p = np.array([-100 + v * te, 6.0, 0.5])
        v_r = v * (mic - p)[0] / np.linalg.norm(mic - p)   # component towards the mic
        expected = f0 * C / (C - v_r)
        assert abs(got - expected) < 0.3, (t0, got, expected)
        assert abs(got - f0) > 20    # a real shift (about f v / c = 29 Hz)


def test_level_falls_6db_per_distance_doubling():
    levels = []
    for d in (10.0, 20.0, 40.0, 80.0):
        x = run(band_source([d, 0.0, 1.7], seed=5, fmax=2000.0), 0, FS // 2, height=1.7)
        levels.append(10 * np.log10(np.mean(x[:, 0] ** 2)))
    drops = -np.diff(levels)
    # mic 0 sits 0.15 m in front of the array centre: r = d - 0.15
    expected = 20 * np.log10([(2 * d - MICS[0, 0]) / (d - MICS[0, 0]) for d in (10.0, 20.0, 40.0)])
    np.testing.assert_allclose(drops, expected, atol=0.15)
    np.testing.assert_allclose(drops, 6.02, atol=0.2)


def test_air_absorption_attenuates_high_band_more():
    def band_ratio(absorption):
        src = band_source([200.0, 0, 0], seed=9, fmax=15000.0)
        x = run(src, 0, FS // 2, height=1.7, absorption=absorption)[:, 0]
        spec = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / FS)
        return spec[(f > 6000) & (f < 12000)].sum() / spec[(f > 200) & (f < 800)].sum()
    # 200 m: high band loses (0.08 - 0.002) * 200 = 15.6 dB relative to the low band
    rel_db = 10 * np.log10(band_ratio(True) / band_ratio(False))
    assert -17.5 < rel_db < -13.5


def test_ground_reflection_adds_delayed_image():
    src = band_source([30.0, 0.0, 0.5], seed=11)
    direct = run(src, 0, FS // 2, height=0.5)[:, 0]
    both = run(src, 0, FS // 2, height=0.5, reflection=0.8)[:, 0]
    refl = both - direct
    m = MICS[0]
    expected = (np.linalg.norm([30 - m[0], -m[1], -0.5 - m[2]]) - np.linalg.norm([30 - m[0], -m[1], 0.5 - m[2]])) / C
    assert abs(xcorr_delay(direct, refl) - expected) < 0.15 / FS
    ratio = np.sqrt(np.mean(refl ** 2) / np.mean(direct ** 2))
    assert abs(ratio - 0.8 * 30.0 / 30.05) < 0.05


def test_occluder_attenuates():
    src = band_source([30.0, 0.0, 0.5], seed=12)
    wall = [(np.array([15.0, -5.0, 0.0]), np.array([15.3, 5.0, 3.0]))]
    free = run(src, 0, FS // 4, height=0.5)
    hidden = run(src, 0, FS // 4, height=0.5, occluders=wall, occluder_loss_db=12.0)
    loss = 10 * np.log10(np.mean(free ** 2) / np.mean(hidden ** 2))
    assert 6.0 < loss < 18.0     # three bands lose 7.2 / 12 / 18 dB


def test_segment_box_hits():
    box = [(np.array([0.0, 0, 0]), np.array([1.0, 1, 1]))]
    a = np.array([[-1.0, 0.5, 0.5], [-1.0, 2.0, 0.5], [-1, 0.5, 0.5], [0.5, 0.5, 2.0]])
    b = np.array([[2.0, 0.5, 0.5], [2.0, 2.0, 0.5], [-0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    assert segment_box_hits(a, b, box).tolist() == [True, False, False, True]


def test_srp_phat_recovers_static_source_azimuth():
    pra = pytest.importorskip('pyroomacoustics')
    az_true = 40.0
    a = np.radians(az_true)
    src = band_source([20 * np.cos(a), 20 * np.sin(a), 0.5], seed=21)
    x = run(src, 0, FS // 2, height=0.5, reflection=0.8, absorption=True)
    x += 0.02 * np.std(x) * np.random.default_rng(0).standard_normal(x.shape)
    nfft = 512
    X = np.stack([pra.transform.stft.analysis(x[:, m], nfft, nfft // 2).T for m in range(x.shape[1])])
    L = (MICS[:, :2] - MICS[:, :2].mean(0)).T
    doa = pra.doa.algorithms['SRP'](L, FS, nfft, c=C, num_src=1, max_four=4)
    doa.locate_sources(X, freq_range=[300.0, 3000.0])
    got = np.degrees(doa.azimuth_recon[0])
    assert abs((got - az_true + 180) % 360 - 180) < 3.0


def test_engine_synth_fundamental_follows_rpm():
    k = np.zeros(8)
    k[3] = 1.0                           # firing order of a 4-cylinder engine: 2 x crank
    eng = EngineSynth(1800.0, k, (0.0, 0.2, 0.0), 1.0, FS)
    x = eng.render(np.arange(FS) / FS).sum(0)
    assert abs(peak_freq(x) - 4 * 1800 / 120) < 0.05
    assert abs(np.sqrt(np.mean(x ** 2)) - 1.0) < 0.02


def test_segment_noise_is_seekable_and_unit_variance():
    f = SegmentNoise.freqs(2048, FS)
    n = SegmentNoise((1, 2), np.exp(-f / 3000), channels=2, seg=2048)
    whole = n.render(-5000, 20000)
    parts = np.concatenate([n.render(-5000, 333), n.render(333, 7000), n.render(7000, 20000)], axis=-1)
    assert np.array_equal(whole, parts)
    assert abs(whole.std() - 1.0) < 0.05


def test_audio_blocks_are_split_invariant_and_scaled():
    sim = Simulator(scenario_from_dict({'duration_s': 3.0, 'seed': 4, 'traffic': {'vehicles_per_minute': 30}}))
    whole = sim.audio_block(0, 2 * FS)
    parts = np.concatenate([sim.audio_block(0, 12345), sim.audio_block(12345, 50000),
                            sim.audio_block(50000, 2 * FS)])
    assert whole.dtype == np.float32 and whole.shape == (2 * FS, 8)
    assert np.array_equal(whole, parts)
    # normal street scene: far below int16 full scale, far above its quantisation step
    assert 1e-3 < np.abs(whole).max() < 0.5
    assert whole.std() > 3 / 32767


def test_compiled_and_numpy_kernels_give_identical_bits():
    from mmdistill_sim import acoustics
    if acoustics._frac_delay is acoustics._frac_delay_numpy:
        pytest.skip('numba not available: only the numpy kernel exists')
    rng = np.random.default_rng(0)
    s32 = rng.standard_normal(5000).astype(np.float32)
    d32 = np.append(np.diff(s32), np.float32(0))
    G1, M = 100, 8
    dpos = rng.uniform(30.5, 33.5, (G1, 2 * M)).astype(np.float32)
    rem = rng.uniform(0, 1, (G1, 2 * M)).astype(np.float32)
    off = (np.arange(G1)[:, None] * 32 + rng.integers(0, 20, (G1, 2 * M))).astype(np.intp)
    amp = rng.uniform(0.01, 1, (G1, 2 * M)).astype(np.float32)
    a = acoustics._frac_delay(s32, d32, dpos, rem, off, amp, M)
    b = acoustics._frac_delay_numpy(s32, d32, dpos, rem, off, amp, M)
    assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)


def test_compiled_and_numpy_band_mixing_give_identical_bits():
    """_mix_delay: band gains interpolated from the grid (np.interp's arithmetic), envelope, float32
    rounding and the fractional delay; compiled and numpy paths agree bit for bit, also where the span
    reaches past the grid's ends and where a grid point falls exactly on a sample."""
    from mmdistill_sim import acoustics
    if acoustics._mix_delay is acoustics._mix_delay_numpy:
        pytest.skip('numba not available: only the numpy kernel exists')
    rng = np.random.default_rng(1)
    span, s_lo, G1, M = 5000, -37, 100, 8
    bands = rng.standard_normal((3, span)).astype(np.float32)
    e_g = np.sort(rng.uniform(s_lo + 10, s_lo + span - 10, 60))
    e_g[5] = float(s_lo + 100)                  # exactly on a sample
    gains = rng.uniform(0.1, 1.0, (3, 60))
    dpos = rng.uniform(30.5, 33.5, (G1, 2 * M)).astype(np.float32)
    rem = rng.uniform(0, 1, (G1, 2 * M)).astype(np.float32)
    off = (np.arange(G1)[:, None] * 32 + rng.integers(0, 20, (G1, 2 * M))).astype(np.intp)
    amp = rng.uniform(0.01, 1, (G1, 2 * M)).astype(np.float32)
    for env in (np.zeros(0), rng.uniform(0, 1, span)):
        a = acoustics._mix_delay(bands, s_lo, e_g, gains, env, dpos, rem, off, amp, M)
        b = acoustics._mix_delay_numpy(bands, s_lo, e_g, gains, env, dpos, rem, off, amp, M)
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)


def test_compiled_and_numpy_wavetables_give_identical_bits():
    """_wavetable: engine wavetable interpolation plus the two tyre-noise rows (contiguous or strided
    views of the bank), compiled and numpy paths bit for bit, negative cycle counts included."""
    from mmdistill_sim import acoustics
    if acoustics._wavetable is acoustics._wavetable_numpy:
        pytest.skip('numba not available: only the numpy kernel exists')
    rng = np.random.default_rng(2)
    tables = rng.standard_normal((3, 4097)).astype(np.float32)
    diffs = np.zeros_like(tables)
    diffs[:, :-1] = tables[:, 1:] - tables[:, :-1]
    c = np.cumsum(rng.uniform(0, 0.01, 3000)) - 7.3
    bank = rng.standard_normal((3, 5000)).astype(np.float32)
    g0, g1 = np.float32(0.3), np.float32(0.7)
    for r0, r1, tyre in ((acoustics._NO_TYRE, acoustics._NO_TYRE, False),
                         (bank[:, 100:3100], bank[:, 1500:4500], True),
                         (np.ascontiguousarray(bank[:, :3000]), bank[:, 7:3007], True)):
        a = acoustics._wavetable(c, tables, diffs, r0, r1, g0, g1, tyre)
        b = acoustics._wavetable_numpy(c, tables, diffs, r0, r1, g0, g1, tyre)
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
