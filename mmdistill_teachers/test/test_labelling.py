"""labelling.py: teacher outputs and pseudo-labels survive the message path unchanged; fusion via
messages equals fusion on arrays; PartialFrames groups late/missing teachers as documented."""
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message

from mmdistill_common.errors import ConfigError, InputError
from mmdistill_msgs.msg import AttentionPyramid, PseudoLabel
from mmdistill_teachers.fusion import fuse_detections
from mmdistill_teachers.labelling import (FusionConfig, PartialFrames, detections_from_messages, fuse_messages,
                                          parse_pseudo_label, run_teacher, teacher_messages)
from mmdistill_teachers.testing import sharp_teacher
from vision_msgs.msg import Detection2DArray

MODS = ('rgb', 'depth', 'thermal')


def roundtrip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


def image(modality, seed):
    rng = np.random.default_rng(seed)
    if modality == 'rgb':
        return rng.integers(0, 255, (128, 384, 3), dtype=np.uint8)
    if modality == 'depth':
        d = rng.uniform(2, 60, (128, 384)).astype(np.float32)
        d[:10] = np.nan
        return d
    return rng.uniform(270, 320, (128, 384)).astype(np.float32)


@pytest.fixture(scope='module')
def frame():
    """One frame: per modality the predict() result and the messages (after a CDR round trip)."""
    out = {}
    for i, m in enumerate(MODS):
        t = sharp_teacher(m, seed=i)
        img = image(m, i)
        res = t.predict([img])[0]
        (det, att), = run_teacher(t, [img], [1_500_000_000], ['camera'])
        out[m] = (res, roundtrip(det), roundtrip(att))
    return out


def test_teacher_messages_round_trip(frame):
    for m, (res, det, att) in frame.items():
        assert len(res['boxes']) > 0, f'{m} teacher found nothing; the test needs boxes'
        assert det.header.stamp.sec == 1 and det.header.stamp.nanosec == 500_000_000
        assert att.modality == m and [lv.stride for lv in att.levels] == [8, 16, 32]
        back = detections_from_messages(det, att)
        np.testing.assert_allclose(back['boxes'], res['boxes'], atol=1e-4)
        np.testing.assert_allclose(back['scores'], res['scores'], rtol=1e-6)
        np.testing.assert_array_equal(back['labels'], res['labels'])
        for a, b in zip(back['attention'], res['attention']):
            np.testing.assert_array_equal(a, b)


def test_run_teacher_equals_teacher_messages():
    t = sharp_teacher('rgb')
    img = image('rgb', 3)
    res = t.predict([img], score_threshold=0.2)[0]
    det, att = teacher_messages(res, 'rgb', 7, t.config.strides, t.class_names, frame_id='cam')
    (det2, att2), = run_teacher(t, [img], [7], ['cam'], score_threshold=0.2)
    assert det == det2 and att == att2
    (det3, _), = run_teacher(t, [img], [7], ['cam'], score_threshold=0.9)
    assert len(det3.detections) < len(det2.detections)
    with pytest.raises(InputError):
        run_teacher(t, [image('depth', 0)], [7], ['cam'])


@pytest.mark.parametrize('method', ['nms', 'wbf'])
def test_fuse_messages_equals_fuse_detections(frame, method):
    cfg = FusionConfig(score_thresholds={'rgb': 0.3, 'depth': 0.5, 'thermal': 0.1}, method=method)
    dets = {m: frame[m][1] for m in MODS}
    atts = {m: frame[m][2] for m in MODS}
    msg, fused = fuse_messages(1_500_000_000, dets, atts, cfg)
    direct = fuse_detections({m: frame[m][0] for m in MODS}, score_thresholds=cfg.score_thresholds,
                             method=method, iou_threshold=cfg.iou_threshold, max_detections=cfg.max_detections)
    assert len(fused) > 0
    np.testing.assert_allclose(fused.boxes, direct.boxes, atol=1e-3)
    np.testing.assert_allclose(fused.scores, direct.scores, rtol=1e-5)
    np.testing.assert_array_equal(fused.support, direct.support)
    parsed = parse_pseudo_label(roundtrip(msg))
    assert parsed.stamp_ns == 1_500_000_000
    assert parsed.modalities == list(MODS)
    np.testing.assert_allclose(parsed.boxes, fused.boxes, atol=1e-4)
    assert parsed.support == [fused.supporting_modalities(i) for i in range(len(fused))]
    for m in MODS:
        for a, b in zip(parsed.attention[m], frame[m][0]['attention']):
            np.testing.assert_array_equal(a, b)


def test_missing_teacher_and_bad_messages(frame):
    cfg = FusionConfig(score_thresholds={'rgb': 0.3, 'depth': 0.5, 'thermal': 0.1})
    dets = {'rgb': frame['rgb'][1], 'thermal': frame['thermal'][1]}
    atts = {'rgb': frame['rgb'][2], 'thermal': frame['thermal'][2]}
    msg, fused = fuse_messages(5, dets, atts, cfg)
    assert list(msg.modalities) == ['rgb', 'thermal']
    assert [a.modality for a in msg.attention] == ['rgb', 'thermal']
    assert not fused.support[:, 1].any()
    with pytest.raises(InputError, match='no attention'):
        fuse_messages(5, dets, {'rgb': frame['rgb'][2]}, cfg)
    bad = roundtrip(frame['rgb'][1])
    bad.detections[0].results[0].hypothesis.class_id = 'pedestrian'
    with pytest.raises(InputError, match='pedestrian'):
        fuse_messages(5, {'rgb': bad}, {'rgb': frame['rgb'][2]}, cfg)
    broken = PseudoLabel(modalities=['rgb'])
    with pytest.raises(InputError):
        parse_pseudo_label(broken)
    with pytest.raises(ConfigError):
        FusionConfig(method='mean')


def _msg(cls, stamp_ns):
    m = cls()
    m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    return m


def test_partial_frames():
    ms = 10**6
    pf = PartialFrames(MODS, slop_ns=50 * ms, max_wait_s=0.5, queue_size=5)
    # frame at t=100 ms: rgb and depth complete, thermal never comes
    for m in ('rgb', 'depth'):
        assert pf.add(m, 'det', 100 * ms, _msg(Detection2DArray, 100 * ms), now_s=1.0)
        assert pf.add(m, 'att', 100 * ms + ms, _msg(AttentionPyramid, 100 * ms + ms), now_s=1.0)
    # a lone thermal detection without attention
    pf.add('thermal', 'det', 110 * ms, _msg(Detection2DArray, 110 * ms), now_s=1.1)
    assert pf.due(1.4) == []                                 # not waited long enough
    (anchor, dets, atts), = pf.due(1.6)
    assert anchor == 100 * ms and sorted(dets) == ['depth', 'rgb'] and sorted(atts) == ['depth', 'rgb']
    assert all(not q for q in pf.pending.values()), 'the lone thermal half was not consumed'
    # the late thermal attention of the same frame is refused
    assert not pf.add('thermal', 'att', 105 * ms, _msg(AttentionPyramid, 105 * ms), now_s=2.0)
    assert pf.already_fused(120 * ms) and not pf.already_fused(300 * ms)
    # a complete set labelled by the synchronizer is forgotten, so it is not labelled again
    pf.add('rgb', 'det', 300 * ms, _msg(Detection2DArray, 300 * ms), now_s=3.0)
    pf.mark_fused({('rgb', 'det'): 300 * ms}, 300 * ms)
    assert pf.due(10.0) == []
    # a frame with only half of every modality is returned empty (counted as dropped by the node)
    pf.add('depth', 'att', 900 * ms, _msg(AttentionPyramid, 900 * ms), now_s=4.0)
    assert pf.due(5.0) == [(900 * ms, {}, {})]
    # bounded queues
    for k in range(8):
        pf.add('rgb', 'det', (2000 + 100 * k) * ms, _msg(Detection2DArray, (2000 + 100 * k) * ms), now_s=6.0)
    assert len(pf.pending[('rgb', 'det')]) == 5 and pf.evicted == 3
