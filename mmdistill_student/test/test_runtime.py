"""StudentRuntime (ROS-free): output grid, stamps, gaps, out-of-order / duplicated chunks, bursts,
bounded memory, stream changes, and equality with StudentDetector.predict_window.

The checkpoint is a small *untrained* student (threshold 0 so that it always emits boxes): these
tests check the plumbing, not detection quality.
"""
import numpy as np
import pytest
import torch

from mmdistill_common.errors import ConfigError, InputError
from mmdistill_student.checkpoint import load_checkpoint, save_checkpoint
from mmdistill_student.frontend import PushStatus
from mmdistill_student.model import StudentConfig, StudentDetector
from mmdistill_student.runtime import StudentRuntime

SR = 44100
CHUNK = 1764            # 40 ms
HOP_NS = 256 * 10**9 // SR + 1
PERIOD = 100_000_000


def small_student(mode='centered', score_threshold=0.0):
    torch.manual_seed(0)
    cfg = StudentConfig(frontend=dict(mode=mode),
                        encoder=dict(widths=(8, 16), embed_dim=32, out_channels=16, dropout=0.0),
                        head_width=16, head_convs=1, score_threshold=score_threshold, max_detections=5)
    return StudentDetector(cfg)


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('ckpt')
    save_checkpoint(small_student(), d / 'centered')
    save_checkpoint(small_student('causal'), d / 'causal')
    return d


@pytest.fixture(scope='module')
def signal():
    rng = np.random.default_rng(1)
    t = np.arange(SR * 4) / SR
    tone = np.sin(2 * np.pi * 440 * t)[:, None] * np.linspace(0.2, 0.6, 8)[None]
    return np.clip((tone + 0.05 * rng.standard_normal((len(t), 8))) * 32767, -32768, 32767).astype(np.int16)


def runtime(ckpt, mode='centered', **kw):
    model, meta = load_checkpoint(ckpt / mode)
    return StudentRuntime(model, meta, rate_hz=10, **kw)


def feed(rt, x, t0_ns=0, start=0, stop=None, chunk=CHUNK, step=True):
    """Push x[start:stop] in chunks stamped t0 + sample / SR; return all results."""
    out = []
    stop = len(x) if stop is None else stop
    for i in range(start, stop, chunk):
        rt.push(x[i:min(i + chunk, stop)], t0_ns + i * 10**9 // SR)
        if step:
            out += rt.step()
    return out


def check_grid(results, period=PERIOD):
    grid = [d['grid_stamp_ns'] for _, d in results]
    stamps = [s for s, _ in results]
    assert all(g % period == 0 for g in grid)
    assert np.all(np.diff(stamps) > 0)
    assert np.all(np.abs(np.array(stamps) - np.array(grid)) <= HOP_NS)
    return grid, stamps


def test_grid_and_centred_stamps(ckpt, signal):
    rt = runtime(ckpt)
    res = feed(rt, signal[:3 * SR])
    grid, stamps = check_grid(res)
    # first full centred window: 0.5 s of history, last: 0.5 s of look-ahead (+ one hop of
    # margin each, so that chunking never changes which window a grid stamp gets)
    assert grid[0] == 600_000_000 and grid[-1] == 2_400_000_000
    assert np.all(np.diff(grid) == PERIOD)
    d = res[0][1]
    assert d['boxes'].shape == (5, 4) and d['scores'].shape == (5,)
    assert d['class_ids'] == ['vehicle'] * 5
    assert rt.stats['windows'] == len(res) == 19 and rt.stats['skipped'] == 0


def test_causal_windows_end_at_stamp(ckpt, signal):
    rt = runtime(ckpt, 'causal')
    res = feed(rt, signal[:2 * SR])
    grid, stamps = check_grid(res)
    assert grid[0] == 1_100_000_000 and grid[-1] == 1_900_000_000
    # a causal result never refers to a time after the newest pushed sample
    assert stamps[-1] <= 2 * 10**9


def test_equals_predict_window(ckpt, signal):
    rt = runtime(ckpt)
    model = rt.model
    res = feed(rt, signal[:2 * SR])
    assert len(res) >= 5
    n = SR
    for stamp, d in res[:: 3]:
        centre = round(stamp * SR / 1e9)
        window = signal[centre - n // 2: centre - n // 2 + n].T.astype(np.float32) / 32768.0
        ref = model.predict_window(window, score_threshold=0.0)
        np.testing.assert_allclose(d['scores'], ref['scores'], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(d['boxes'], ref['boxes'], rtol=1e-4, atol=1e-2)


def test_score_threshold_override(ckpt, signal):
    rt = runtime(ckpt, score_threshold=1.0)
    res = feed(rt, signal[:SR + SR // 2])
    assert res and all(len(d['scores']) == 0 for _, d in res)
    with pytest.raises(ConfigError):
        runtime(ckpt, score_threshold=1.5)


def test_gap_resets_and_no_window_spans_it(ckpt, signal):
    rt = runtime(ckpt)
    gap_lo, gap_hi = int(1.7 * SR), int(2.0 * SR)
    res = feed(rt, signal, stop=gap_lo) + feed(rt, signal, start=gap_hi, stop=int(3.4 * SR))
    grid, stamps = check_grid(res)
    for s in stamps:           # every window lies wholly before or wholly after the gap
        assert s + 0.5e9 <= gap_lo / SR * 1e9 + 1 or s - 0.5e9 >= gap_hi / SR * 1e9 - 1
    before = [g for g in grid if g < 1.5e9]
    after = [g for g in grid if g > 1.5e9]
    assert before[-1] == 1_100_000_000 and after[0] == 2_600_000_000
    assert rt.stats['skipped'] == 14     # grid stamps 1.2 .. 2.5 s: their windows touch the gap


def test_out_of_order_and_duplicates_change_nothing(ckpt, signal):
    clean = feed(runtime(ckpt), signal[:2 * SR])
    rt = runtime(ckpt)
    out = []
    chunks = list(range(0, 2 * SR, CHUNK))
    for k, i in enumerate(chunks):
        stamp = i * 10**9 // SR
        r = rt.push(signal[i:i + CHUNK], stamp)
        assert r.ok
        dup = rt.push(signal[i:i + CHUNK], stamp)                  # duplicate
        assert dup.status is PushStatus.OVERLAP and dup.accepted == 0
        if k > 2:                                                  # a late chunk from the past
            j = chunks[k - 2]
            late = rt.push(signal[j:j + CHUNK], j * 10**9 // SR)
            assert late.status is PushStatus.OUT_OF_ORDER and late.accepted == 0
        out += rt.step()
    assert [s for s, _ in out] == [s for s, _ in clean]
    for (_, a), (_, b) in zip(out, clean):
        np.testing.assert_array_equal(a['scores'], b['scores'])
    assert rt.stats['resyncs'] == 0


def test_stamps_jumping_back_for_good_resynchronise(ckpt, signal):
    rt = runtime(ckpt)
    first = feed(rt, signal[:int(1.5 * SR)], t0_ns=10 * 10**9)
    assert first
    # the source restarts at t = 0: dropped for up to 1 s, then followed
    second = feed(rt, signal, t0_ns=0, stop=3 * SR)
    assert rt.stats['resyncs'] == 1
    assert second and second[0][0] < first[0][0]
    check_grid(second)


def test_bursts(ckpt, signal):
    stepwise = feed(runtime(ckpt), signal[:int(2.5 * SR)])
    rt = runtime(ckpt)
    feed(rt, signal[:int(2.5 * SR)], step=False)                  # 2.5 s at once, one step
    burst = rt.step()
    assert [s for s, _ in burst] == [s for s, _ in stepwise]
    for (_, a), (_, b) in zip(burst, stepwise):
        np.testing.assert_allclose(a['scores'], b['scores'], rtol=1e-4, atol=1e-6)
    # a burst longer than the buffer: old grid stamps are skipped, the rest still comes out
    rt = runtime(ckpt, capacity_s=1.5)
    feed(rt, signal, step=False)
    late = rt.step()
    grid, _ = check_grid(late)
    assert grid[-1] == 3_400_000_000 and rt.stats['skipped'] > 0
    assert len(late) <= 6
    # a live node caps the work per step
    rt = runtime(ckpt, max_windows_per_step=2)
    feed(rt, signal[:int(2.5 * SR)], step=False)
    capped = rt.step()
    assert [d['grid_stamp_ns'] for _, d in capped] == [1_800_000_000, 1_900_000_000]
    assert rt.step() == []


def test_now_limits_output(ckpt, signal):
    rt = runtime(ckpt)
    feed(rt, signal[:int(2.5 * SR)], step=False)
    assert [d['grid_stamp_ns'] for _, d in rt.step(now_ns=800_000_000)] == [600_000_000, 700_000_000,
                                                                          800_000_000]
    assert rt.step()[0][1]['grid_stamp_ns'] == 900_000_000


def test_bounded_memory(ckpt, signal):
    rt = runtime(ckpt, max_windows_per_step=1)
    buf = rt.frontend.buffer._buf
    cache_sizes = []
    loops = 8
    for k in range(loops):                                         # 32 s of audio
        feed(rt, signal, t0_ns=k * 4 * 10**9, chunk=SR // 2, step=False)   # contiguous
        cache_sizes.append(len(rt.frontend._cache))
        assert rt.step()
    assert rt.frontend.buffer._buf is buf and buf.shape == (rt.frontend.buffer.capacity, 8)
    assert max(cache_sizes) <= rt.cfg.n_frames + 2
    assert rt.stats['resets'] == 0 and rt.stats['skipped'] > 200


def test_bad_chunks_raise_and_runtime_continues(ckpt, signal):
    rt = runtime(ckpt)
    feed(rt, signal[:SR])
    with pytest.raises(InputError):
        rt.push(b'\x00' * 15, SR * 10**9 // SR)                      # odd byte length
    with pytest.raises(InputError):
        rt.push(np.zeros((CHUNK, 2), np.int16), 10**9)               # wrong channel count
    bad = np.zeros((CHUNK, 8), np.float32)
    bad[3, 2] = np.nan
    with pytest.raises(InputError):
        rt.push(bad, 10**9)                                          # NaN on the float path
    res = feed(rt, signal, start=SR, stop=2 * SR)
    assert res and rt.stats['resets'] == 0 and rt.stats['dropped_chunks'] == 3
    # float input is accepted and equals the int16 path
    rt2 = runtime(ckpt)
    f = feed(rt2, signal[:2 * SR].astype(np.float32) / 32768.0)
    a = feed(runtime(ckpt), signal[:2 * SR])
    np.testing.assert_allclose(f[-1][1]['scores'], a[-1][1]['scores'], rtol=1e-5)


def test_stream_changes(ckpt, signal):
    rt = runtime(ckpt)
    assert rt.set_stream(8, SR) is False                              # same stream: nothing happens
    feed(rt, signal[:SR])
    with pytest.raises(ConfigError, match='channels'):
        rt.set_stream(2, SR)
    with pytest.raises(InputError, match='checkpoint expects'):
        rt.push(signal[:CHUNK], 2 * 10**9)
    assert rt.set_stream(8, SR) is True                               # matching again: reset, resumes
    res = feed(rt, signal, t0_ns=5 * 10**9, stop=2 * SR)
    assert res and res[0][1]['grid_stamp_ns'] == 5_600_000_000
    model, meta = load_checkpoint(ckpt / 'centered')
    with pytest.raises(ConfigError, match='causal'):
        StudentRuntime(model, meta, mode='causal')         # trained on centred windows


def test_chunking_does_not_change_results(ckpt, signal):
    """Live (small chunks, a step after each) and replay (any chunking) give the same windows."""
    a = feed(runtime(ckpt), signal[:2 * SR])
    b = feed(runtime(ckpt), signal[:2 * SR], chunk=1000)
    assert [d['grid_stamp_ns'] for _, d in a] == [d['grid_stamp_ns'] for _, d in b]
    # the same samples; stamps agree to the 1 ns rounding of the chunk stamps they are anchored on
    np.testing.assert_allclose([s for s, _ in a], [s for s, _ in b], rtol=0, atol=1)
    for (_, da), (_, db) in zip(a, b):
        np.testing.assert_allclose(da['scores'], db['scores'], rtol=1e-4, atol=1e-6)


def test_acoustic_image_student_streams_like_predict_window(tmp_path, signal):
    """The acoustic-image student (column encoder) through the runtime equals predict_window on
    the same samples, and a calibration file can re-steer the checkpoint."""
    import json
    from mmdistill_sim.scenario import load_scenario
    from mmdistill_student.calibration import load_geometry
    sc = load_scenario('town-day-static')
    c = sc.camera
    geo = {'mic_positions_m': sc.mic_array.positions().tolist(),
           'camera': {'width': c.width, 'height': c.height, 'fx': c.fx, 'fy': c.fy, 'x_m': c.x_m,
                      'height_m': c.height_m, 'pitch_deg': c.pitch_deg}}
    torch.manual_seed(0)
    cfg = StudentConfig(frontend=dict(kind='acoustic_image', hop=1024, columns=c.width // 8, geometry=geo),
                        image_size=(c.width, c.height), strides=(16, 32, 64), head_convs=0,
                        score_threshold=0.0, max_detections=5)
    save_checkpoint(StudentDetector(cfg), tmp_path / 'ai')
    model, meta = load_checkpoint(tmp_path / 'ai')
    rt = StudentRuntime(model, meta, rate_hz=10)
    res = feed(rt, signal[:2 * SR])
    assert len(res) >= 5 and rt.last_features is not None and rt.last_features.shape == (16, c.width // 8, 44)
    for stamp, d in res[::3]:
        centre = round(stamp * SR / 1e9)
        window = signal[centre - SR // 2: centre - SR // 2 + SR].T.astype(np.float32) / 32768.0
        ref = model.predict_window(window, score_threshold=0.0)
        np.testing.assert_allclose(d['scores'], ref['scores'], rtol=1e-3, atol=1e-4)
    moved = dict(geo, mic_positions_m=[[x + 1.0, y, z] for x, y, z in geo['mic_positions_m']])
    (tmp_path / 'car.json').write_text(json.dumps(moved))
    other, _ = load_checkpoint(tmp_path / 'ai', geometry=load_geometry(tmp_path / 'car.json', 8))
    assert other.frontend_config.geometry['mic_positions_m'][0][0] == pytest.approx(geo['mic_positions_m'][0][0] + 1)
