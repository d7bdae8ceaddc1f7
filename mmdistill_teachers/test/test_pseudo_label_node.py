"""pseudo_label_node on a real graph: approximate-time matching of the six teacher topics, fusion
identical to fuse_messages, and the wait / partial policies for a missing or late teacher."""
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter

from mmdistill_common import topics
from mmdistill_common.conversions import stamp_to_ns
from mmdistill_common.qos import stream_qos
from mmdistill_common.testing import assert_msg_equal, make_collector, wait_for
from mmdistill_msgs.msg import AttentionPyramid, PseudoLabel
from mmdistill_teachers.labelling import FusionConfig, fuse_messages, teacher_messages
from mmdistill_teachers.pseudo_label_node import PARAMS, PseudoLabelNode
from vision_msgs.msg import Detection2DArray

pytestmark = pytest.mark.ros
MODS = ('rgb', 'depth', 'thermal')
MS = 1_000_000


def teacher_output(modality, stamp_ns, shift=0.0, label=0):
    """Synthetic teacher messages: two boxes that overlap across teachers, attention maps."""
    boxes = np.array([[10, 20, 60, 70], [200, 30, 260, 90]], np.float32) + shift
    scores = np.array([0.9, 0.6], np.float32) - 0.1 * MODS.index(modality)
    att = [np.full((16 // s, 48 // s), float(MODS.index(modality) + 1), np.float32) for s in (1, 2, 4)]
    res = {'boxes': boxes, 'scores': scores, 'labels': np.array([label, 0]), 'attention': att}
    return teacher_messages(res, modality, stamp_ns, (8, 16, 32), ('vehicle',), frame_id='camera')


class Teachers:
    def __init__(self, executor):
        self.node = executor.add(Node('fake_teachers'))
        self.pubs = {}
        for m in MODS:
            self.pubs[(m, 'det')] = self.node.create_publisher(Detection2DArray, topics.teacher_detections_topic(m),
                                                               stream_qos())
            self.pubs[(m, 'att')] = self.node.create_publisher(AttentionPyramid, topics.teacher_attention_topic(m),
                                                               stream_qos())

    def wait_matched(self):
        assert wait_for(lambda: all(p.get_subscription_count() >= 1 for p in self.pubs.values()), timeout=10)

    def send(self, modality, det, att):
        self.pubs[(modality, 'det')].publish(det)
        self.pubs[(modality, 'att')].publish(att)


def make_node(**params):
    return PseudoLabelNode(parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_params_documented():
    names = {p.name for p in PARAMS}
    assert {'slop', 'missing_teacher_policy', 'max_wait', 'method', 'iou_threshold', 'score_threshold_rgb',
            'score_threshold_depth', 'score_threshold_thermal'} <= names
    assert all(p.description for p in PARAMS)


def test_wait_policy_fuses_complete_sets_only(executor):
    node = executor.add(make_node(score_threshold_rgb=0.5, score_threshold_depth=0.5, score_threshold_thermal=0.3,
                                  slop=0.05, summary_period=0.0))
    out = executor.add(make_collector(topics.PSEUDO_LABELS, PseudoLabel, stream_qos()))
    teachers = Teachers(executor)
    teachers.wait_matched()
    # frame 1: cameras a few ms apart (within the slop); thermal boxes shifted a little
    frame1 = {m: teacher_output(m, 1000 * MS + 7 * MS * i, shift=3.0 * i) for i, m in enumerate(MODS)}
    for m in ('thermal', 'rgb', 'depth'):
        teachers.send(m, *frame1[m])
    assert wait_for(lambda: len(out.messages) == 1, timeout=10)
    cfg = FusionConfig(score_thresholds={'rgb': 0.5, 'depth': 0.5, 'thermal': 0.3})
    expected, fused = fuse_messages(1000 * MS, {m: v[0] for m, v in frame1.items()},
                                    {m: v[1] for m, v in frame1.items()}, cfg, frame_id='camera')
    assert len(fused) > 0
    assert_msg_equal(out.messages[0], expected)
    # frame 2: thermal never delivers -> nothing under the wait policy
    for m in ('rgb', 'depth'):
        teachers.send(m, *teacher_output(m, 1100 * MS))
    wait_for(lambda: False, timeout=1.0)
    assert len(out.messages) == 1
    # a teacher reporting an unknown class: dropped and counted, node keeps going
    for m in MODS:
        teachers.send(m, *teacher_output(m, 1200 * MS))
    bad = teacher_output('rgb', 1300 * MS)
    bad[0].detections[0].results[0].hypothesis.class_id = 'pedestrian'
    teachers.send('rgb', *bad)
    for m in ('depth', 'thermal'):
        teachers.send(m, *teacher_output(m, 1300 * MS))
    assert wait_for(lambda: node.stats['invalid'] == 1 and len(out.messages) == 2, timeout=10), node.stats
    assert stamp_to_ns(out.messages[1].header.stamp) == 1200 * MS
    assert node.stats['fused'] == 2 and node.stats['received_rgb_det'] == 4
    node.log_summary()


def test_partial_policy_labels_missing_teacher_once(executor):
    node = executor.add(make_node(missing_teacher_policy='partial', max_wait=0.3, slop=0.05,
                                  summary_period=0.0))
    out = executor.add(make_collector(topics.PSEUDO_LABELS, PseudoLabel, stream_qos()))
    teachers = Teachers(executor)
    teachers.wait_matched()
    for m in MODS:
        teachers.send(m, *teacher_output(m, 2000 * MS))
    assert wait_for(lambda: len(out.messages) == 1, timeout=10)
    assert list(out.messages[0].modalities) == list(MODS)
    # thermal is late for frame 2: labelled with rgb + depth after max_wait
    frame2 = {m: teacher_output(m, 2100 * MS) for m in MODS}
    for m in ('rgb', 'depth'):
        teachers.send(m, *frame2[m])
    assert wait_for(lambda: len(out.messages) == 2, timeout=10)
    label = out.messages[1]
    assert stamp_to_ns(label.header.stamp) == 2100 * MS
    assert list(label.modalities) == ['rgb', 'depth'] and [a.modality for a in label.attention] == ['rgb', 'depth']
    assert all(d.id in ('rgb', 'rgb+depth', 'depth') for d in label.detections.detections)
    # ... and when thermal finally comes, the frame is not labelled a second time
    teachers.send('thermal', *frame2['thermal'])
    assert wait_for(lambda: node.stats['late'] == 2, timeout=5), node.stats
    wait_for(lambda: False, timeout=0.8)
    assert len(out.messages) == 2
    assert node.stats['fused'] == 1 and node.stats['fused_partial'] == 1 and node.stats['missing_thermal'] == 1


def test_messages_stamped_far_ahead_do_not_starve_the_synchronizer(executor):
    """Regression (fuzz campaign): the synchronizer evicts the oldest stamps first, so ``queue_size``
    messages that nothing can match, stamped far in the future, used to evict every later message of
    their input on arrival and labelling stopped for good. They are dropped and counted now; a clock
    jump of all teachers costs only the frame in flight."""
    node = executor.add(make_node(slop=0.05, queue_size=30, summary_period=0.0))
    out = executor.add(make_collector(topics.PSEUDO_LABELS, PseudoLabel, stream_qos()))
    teachers = Teachers(executor)
    teachers.wait_matched()

    def frames(stamps_ms, n_before):
        for k, t in enumerate(stamps_ms):
            for m in MODS:
                teachers.send(m, *teacher_output(m, t * MS))
            assert wait_for(lambda: node.stats['received_thermal_att'] == n_before + k + 1, timeout=10), node.stats
    frames([1000, 1100, 1200], 0)
    assert wait_for(lambda: len(out.messages) == 3, timeout=10), node.stats
    lone = teachers.pubs[('depth', 'det')]
    for k in range(40):           # more than queue_size, in steps the subscription's queue holds
        lone.publish(teacher_output('depth', (10**9 + k) * MS)[0])
        if k % 10 == 9:
            assert wait_for(lambda: node.stats['received_depth_det'] == 3 + k + 1, timeout=10), node.stats
    frames([1300, 1400, 1500], 3)
    assert wait_for(lambda: len(out.messages) == 6, timeout=10), node.stats
    assert node.stats['stamp_ahead'] == 40 and node.stats['fused'] == 6, node.stats
    # every teacher's clock jumps by an hour: the first frame after the jump is lost, the rest fused
    frames([3_601_000, 3_601_100, 3_601_200], 6)
    assert wait_for(lambda: len(out.messages) == 8, timeout=10), node.stats
    assert [stamp_to_ns(m.header.stamp) // MS for m in out.messages[6:]] == [3_601_100, 3_601_200]
    assert node.stats['stamp_ahead'] == 40 + 5, node.stats
