"""Property-based fuzzing of the ROS-free parsers that nodes feed with network data.

Every function either returns a well-formed result or raises ``InputError`` / ``ConfigError``
(which nodes log, count and drop); nothing else may escape. CI runs ``MMDISTILL_FUZZ_EXAMPLES``
(default 50) examples per property; ``benchmarks/bench_fuzz.py`` runs 10 000 and records the
example counts written to ``MMDISTILL_FUZZ_REPORT``.
"""
import json
import math
import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audio_common_msgs.msg import AudioDataStamped
from mmdistill_common.conversions import (IMAGE_ENCODINGS, audio_to_msg, detections_to_msg, image_to_msg,
                                          msg_to_attention, msg_to_audio, msg_to_detections, msg_to_image)
from mmdistill_common.errors import ConfigError, InputError
from mmdistill_msgs.msg import AttentionMap, AttentionPyramid
from mmdistill_student.frontend import AudioRingBuffer, PushStatus
from mmdistill_teachers.fusion import fuse_detections
from mmdistill_tracking.tracker import make_tracker
from sensor_msgs.msg import Image

EXAMPLES = int(os.environ.get('MMDISTILL_FUZZ_EXAMPLES', '50'))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES < 1000,
                suppress_health_check=list(HealthCheck))
RUNS: Counter = Counter()
OK = (InputError, ConfigError)

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@pytest.fixture(scope='module', autouse=True)
def _report():
    yield
    path = os.environ.get('MMDISTILL_FUZZ_REPORT')
    if path:
        with open(path, 'w') as f:
            json.dump({'examples_per_property': dict(RUNS), 'max_examples': EXAMPLES}, f, indent=2)


# ------------------------------------------------------------------------------ conversions
@FUZZ
@given(data=st.binary(max_size=4096), channels=st.integers(1, 16))
def test_msg_to_audio_any_bytes(data, channels):
    RUNS['msg_to_audio'] += 1
    msg = AudioDataStamped()
    msg.audio.data = data
    try:
        out = msg_to_audio(msg, channels)
    except OK:
        assert len(data) % (2 * channels)
        return
    assert out.dtype == np.int16 and out.shape == (len(data) // (2 * channels), channels)
    assert audio_to_msg(out, 0).audio.data.tobytes() == data


@FUZZ
@given(encoding=st.sampled_from(sorted(IMAGE_ENCODINGS) + ['', 'yuv422', 'RGB8', '8UC3', 'rgb8\x00']),
       height=st.integers(0, 40), width=st.integers(0, 40), step=st.integers(0, 200),
       bigendian=st.integers(0, 1), extra=st.integers(-50, 50), seed=st.integers(0, 2**16))
def test_msg_to_image_any_fields(encoding, height, width, step, bigendian, extra, seed):
    RUNS['msg_to_image'] += 1
    n = max(0, height * step + extra)
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=bigendian, step=step)
    msg.data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    try:
        out = msg_to_image(msg)
    except OK:
        return
    dtype, ch = IMAGE_ENCODINGS[encoding]
    assert out.shape[:2] == (height, width) and out.dtype == dtype
    assert (out.ndim == 3 and out.shape[2] == ch) or (ch == 1 and out.ndim == 2)


@FUZZ
@given(encoding=st.sampled_from(sorted(IMAGE_ENCODINGS)), h=st.integers(1, 12), w=st.integers(1, 12),
       seed=st.integers(0, 2**16))
def test_image_round_trip(encoding, h, w, seed):
    RUNS['image_round_trip'] += 1
    dtype, ch = IMAGE_ENCODINGS[encoding]
    shape = (h, w, ch) if ch > 1 else (h, w)
    g = np.random.default_rng(seed)
    arr = (g.random(shape) * 100).astype(dtype) if dtype.kind == 'f' else g.integers(0, 200, shape).astype(dtype)
    np.testing.assert_array_equal(msg_to_image(image_to_msg(arr, encoding, 5)), arr)


@FUZZ
@given(boxes=st.lists(st.tuples(floats, floats, floats, floats, floats), max_size=12))
def test_msg_to_detections_any_floats(boxes):
    RUNS['msg_to_detections'] += 1
    msg = detections_to_msg(np.zeros((len(boxes), 4)), np.zeros(len(boxes)))
    for d, (cx, cy, sx, sy, score) in zip(msg.detections, boxes):
        d.bbox.center.position.x, d.bbox.center.position.y = cx, cy
        d.bbox.size_x, d.bbox.size_y = sx, sy
        d.results[0].hypothesis.score = score
    try:
        out = msg_to_detections(msg)
    except OK:
        return
    assert out.boxes.shape == (len(boxes), 4) and len(out.scores) == len(boxes)


@FUZZ
@given(levels=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(-3, 3),
                                 st.sampled_from([0.0, 1.0, -1.0, math.nan, math.inf])), max_size=4))
def test_msg_to_attention_any_levels(levels):
    RUNS['msg_to_attention'] += 1
    pyr = AttentionPyramid()
    for h, w, extra, special in levels:
        data = np.full(max(0, h * w + extra), 0.5, np.float32)
        if len(data):
            data[0] = special
        pyr.levels.append(AttentionMap(stride=8, height=h, width=w, data=data.tolist()))
    try:
        out = msg_to_attention(pyr)
    except OK:
        return
    for (h, w, _, _), a in zip(levels, out):
        assert a.shape == (h, w) and np.all(np.isfinite(a)) and np.all(a >= 0)


# ------------------------------------------------------------------------- ring buffer
chunks = st.lists(st.tuples(st.integers(0, 3000),                           # frames
                            st.integers(-10**10, 10**10),                   # stamp offset from expected (ns)
                            st.sampled_from(['int16', 'float32', 'nan', 'bytes', 'bad_channels'])),
                  min_size=1, max_size=25)


@FUZZ
@given(chunks=chunks, seed=st.integers(0, 2**16))
def test_ring_buffer_push_any_sequence(chunks, seed):
    RUNS['AudioRingBuffer.push'] += 1
    g = np.random.default_rng(seed)
    buf = AudioRingBuffer(channels=4, sample_rate=16000, capacity_s=0.5)
    expected = 10**12
    for frames, offset, kind in chunks:
        stamp = max(0, expected + (offset if g.random() < 0.5 else 0))
        if kind == 'int16':
            x = g.integers(-2**15, 2**15, (frames, 4)).astype(np.int16)
        elif kind == 'float32':
            x = g.uniform(-1, 1, (frames, 4)).astype(np.float32)
        elif kind == 'nan':
            x = np.full((max(frames, 1), 4), np.nan, np.float32)
        elif kind == 'bytes':
            x = g.integers(0, 256, frames, dtype=np.uint8).tobytes()
        else:
            x = np.zeros((frames, 3), np.int16)
        try:
            res = buf.push(x, stamp)
        except OK:
            continue
        assert isinstance(res.status, PushStatus) and res.accepted >= 0 and res.dropped >= 0
        if res.status is not PushStatus.OUT_OF_ORDER:
            expected = stamp + round(res.accepted * 1e9 / 16000) + round(res.dropped * 1e9 / 16000)
        assert buf.end_index - buf.start_index <= buf.capacity
        if buf.started and buf.end_index > buf.start_index:
            n = min(100, buf.end_index - buf.start_index)
            out = buf.read(buf.end_index - n, n)
            assert out.shape == (4, n) and np.all(np.isfinite(out))


# ------------------------------------------------------------------------------ fusion
teacher = st.one_of(st.none(), st.lists(st.tuples(finite, finite, st.floats(0, 300), st.floats(0, 300),
                                                  st.floats(0, 1)), max_size=15))


@FUZZ
@given(rgb=teacher, depth=teacher, thermal=teacher, method=st.sampled_from(['nms', 'wbf']),
       iou=st.floats(0.01, 1.0), poison=st.sampled_from(['', 'nan', 'inf', 'negative']))
def test_fusion_any_teacher_output(rgb, depth, thermal, method, iou, poison):
    RUNS['fuse_detections'] += 1
    dets = {}
    for m, rows in (('rgb', rgb), ('depth', depth), ('thermal', thermal)):
        if rows is None:
            dets[m] = None
            continue
        b = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in rows]).reshape(-1, 4)
        s = np.array([r[4] for r in rows])
        if poison and len(b) and m == 'depth':
            if poison == 'negative':
                b[0, 2] = b[0, 0] - 1
            else:
                b[0, 1] = math.nan if poison == 'nan' else math.inf
        dets[m] = {'boxes': b, 'scores': s}
    try:
        fused = fuse_detections(dets, score_thresholds=0.3, iou_threshold=iou, method=method, max_detections=20)
    except OK:
        assert poison and dets['depth'] is not None and len(dets['depth']['boxes'])
        return
    assert len(fused.boxes) <= 20 and np.all(np.isfinite(fused.boxes)) and np.all(np.isfinite(fused.scores))
    assert np.all((fused.scores >= 0) & (fused.scores <= 1 + 1e-9))
    assert np.all(fused.boxes[:, 2] >= fused.boxes[:, 0]) and np.all(fused.boxes[:, 3] >= fused.boxes[:, 1])


# ---------------------------------------------------------------------------- trackers
frames_st = st.lists(st.lists(st.tuples(st.floats(0, 380), st.floats(0, 120), st.floats(0.5, 80),
                                        st.floats(0.5, 60), st.floats(0, 1)), max_size=8),
                     min_size=1, max_size=20)


@pytest.mark.parametrize('kind', ['iou', 'kalman'])      # one property per tracker: EXAMPLES each
@FUZZ
@given(frames=frames_st, dt=st.floats(0.01, 2.0))
def test_trackers_any_detections(kind, frames, dt):
    RUNS[f'tracker_{kind}'] += 1
    tracker = make_tracker(kind)
    for k, rows in enumerate(frames):
        b = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in rows]).reshape(-1, 4)
        s = np.array([r[4] for r in rows])
        tracks = tracker.update(b, s, stamp_s=k * dt)
        ids = [t.id for t in tracks]
        assert len(ids) == len(set(ids))
        for t in tracks:
            assert np.all(np.isfinite(t.box)) and math.isfinite(t.score)


# ------------------------------------------------------------------- acoustic image
def _geometry(radius, n, width, fx):
    a = 2 * np.pi * np.arange(n) / n
    mics = np.stack([radius * np.cos(a), radius * np.sin(a), np.full(n, 1.7)], axis=1)
    return {'mic_positions_m': mics.tolist(), 'camera': {'width': width, 'height': 64, 'fx': fx, 'height_m': 1.5},
            'speed_of_sound_mps': 343.0}


@FUZZ
@given(radius=st.floats(0.02, 0.5), columns=st.integers(1, 24), frames=st.integers(1, 4),
       scale=st.sampled_from([0.0, 1e-12, 1.0, 1e6]), seed=st.integers(0, 2**16),
       bad=st.sampled_from(['', 'channels', 'nan_mic', 'no_camera', 'width']))
def test_acoustic_image_any_input(radius, columns, frames, scale, seed, bad):
    import torch
    from mmdistill_student.acoustic_image import AcousticImage
    RUNS['AcousticImage'] += 1
    geo = _geometry(radius, 4, 96, 48.0)
    if bad == 'nan_mic':
        geo['mic_positions_m'][1][0] = math.nan
    elif bad == 'no_camera':
        del geo['camera']
    elif bad == 'width':
        geo['camera']['width'] = -3
    try:
        ai = AcousticImage(geo, 5 if bad == 'channels' else 4, 16000, 256, columns)
    except OK:
        assert bad
        return
    assert not bad
    g = torch.Generator().manual_seed(seed)
    spec = torch.complex(torch.randn(1, 4, frames, 129, generator=g), torch.randn(1, 4, frames, 129, generator=g))
    out = ai(spec * scale)
    assert out.shape == (1, ai.out_channels, columns, frames) and torch.isfinite(out).all()
    assert (out[:, :ai.n_bands] <= 1 + 1e-4).all()          # SRP-PHAT coherence is at most 1
