"""The live labelling graph on real DDS: a bag replay feeds three teacher_nodes, the
pseudo_label_node and the recorder_node; the recorded bag is read back and its pseudo-labels are
compared with offline ``label_bag`` on the same bag (the same messages, frames lost to timing aside)."""
import dataclasses
import time

import pytest
import torch
from rclpy.node import Node
from rclpy.parameter import Parameter

from mmdistill_common import topics
from mmdistill_common.bagio import BagReader, message_class
from mmdistill_common.qos import latched_qos, stream_qos
from mmdistill_common.testing import assert_msg_equal, wait_for
from mmdistill_teachers.labelling import FusionConfig, parse_pseudo_label
from mmdistill_teachers.pseudo_label_node import PseudoLabelNode
from mmdistill_teachers.recorder_node import RecorderNode
from mmdistill_teachers.teacher_node import TeacherNode
from mmdistill_teachers.testing import save_sharp_teachers
from mmdistill_teachers.weights import load_teachers
from mmdistill_training.commands.sim import write_bag
from mmdistill_training.labelling_offline import label_bag

pytestmark = pytest.mark.ros
THRESHOLDS = {'rgb': 0.3, 'depth': 0.5, 'thermal': 0.1}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from mmdistill_sim.scenario import load_scenario
    d = tmp_path_factory.mktemp('graph')
    torch.set_num_threads(1)
    scenario = dataclasses.replace(load_scenario('day-static'), duration_s=2.0)
    save_sharp_teachers(d / 'teachers', input_size=(scenario.camera.width, scenario.camera.height))
    write_bag(scenario, d / 'sim', progress=False)
    return d


def replay(executor, bag, frame_period=0.15):
    """Publish a bag's messages in log order; ``frame_period`` wall seconds per camera frame."""
    node = executor.add(Node('bag_replay'))
    with BagReader(bag) as reader:
        pubs = {t: node.create_publisher(message_class(k), t,
                                         latched_qos() if t == topics.AUDIO_INFO else stream_qos(depth=100))
                for t, (k, _) in reader.topics.items()}
        needed = [topics.image_topic(m) for m in topics.CAMERAS] + [topics.AUDIO, topics.GROUND_TRUTH]
        assert wait_for(lambda: all(pubs[t].get_subscription_count() >= 1 for t in needed), timeout=15)
        sent = {}
        for item in reader.messages():
            pubs[item.topic].publish(item.msg)
            sent[item.topic] = sent.get(item.topic, 0) + 1
            if item.topic == topics.image_topic('thermal'):
                time.sleep(frame_period)
    return sent


def test_live_graph_records_what_offline_labelling_produces(executor, data, tmp_path):
    teachers = []
    for m in topics.CAMERAS:
        node = TeacherNode(node_name=f'teacher_{m}', parameter_overrides=[
            Parameter('modality', value=m), Parameter('teachers_dir', value=str(data / 'teachers')),
            Parameter('queue_depth', value=50)])
        node.trigger_configure()
        node.trigger_activate()
        teachers.append(executor.add(node))
    fusion = executor.add(PseudoLabelNode(parameter_overrides=[
        Parameter(f'score_threshold_{m}', value=v) for m, v in THRESHOLDS.items()] + [
        Parameter('queue_size', value=50), Parameter('summary_period', value=0.0)]))
    rec_path = tmp_path / 'recorded'
    recorder = executor.add(RecorderNode(parameter_overrides=[
        Parameter('output', value=str(rec_path)), Parameter('record_ground_truth', value=True)]))
    assert wait_for(lambda: all(fusion.count_publishers(topics.teacher_attention_topic(m)) >= 1
                                for m in topics.CAMERAS) and
                    recorder.count_publishers(topics.PSEUDO_LABELS) >= 1, timeout=15)
    sent = replay(executor, data / 'sim')
    n_frames = sent[topics.image_topic('rgb')]
    assert n_frames == 20
    wait_for(lambda: recorder.counts[topics.PSEUDO_LABELS] >= n_frames, timeout=15)
    time.sleep(0.5)                                        # let the last audio chunks arrive
    recorder.close()
    assert all(t.processed >= n_frames - 2 for t in teachers), [t.processed for t in teachers]
    assert fusion.stats['fused'] >= n_frames - 2, fusion.stats

    offline_path = tmp_path / 'offline'
    stats = label_bag(data / 'sim', load_teachers(data / 'teachers'), offline_path,
                      FusionConfig(score_thresholds=dict(THRESHOLDS)), batch_size=1, progress=False)
    assert stats['frames'] == n_frames and stats['boxes'] > 0

    with BagReader(rec_path) as r:
        live = r.read_all()
    with BagReader(offline_path) as r:
        offline = r.read_all()
    # the recorded bag has the layout of the labelled one
    for t in (topics.AUDIO, topics.AUDIO_INFO, topics.GROUND_TRUTH):
        assert len(live[t]) == sent[t], t
    offline_labels = {m.stamp_ns: m.msg for m in offline[topics.PSEUDO_LABELS]}
    live_labels = {m.stamp_ns: m.msg for m in live[topics.PSEUDO_LABELS]}
    assert len(live_labels) >= n_frames - 2 and set(live_labels) <= set(offline_labels)
    boxes = 0
    for stamp, msg in live_labels.items():
        assert_msg_equal(msg, offline_labels[stamp])
        boxes += len(parse_pseudo_label(msg).boxes)
    assert boxes > 0, 'no fused box anywhere: the comparison would be vacuous'
    for m in topics.CAMERAS:
        t = topics.teacher_detections_topic(m)
        offline_dets = {x.stamp_ns: x.msg for x in offline[t]}
        assert len(live[t]) >= n_frames - 2
        for x in live[t]:
            assert_msg_equal(x.msg, offline_dets[x.stamp_ns])
