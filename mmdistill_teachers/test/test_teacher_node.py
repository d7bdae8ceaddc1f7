"""teacher_node on a real graph: lifecycle, outputs stamped like the image and equal to the offline
path, bad images dropped and counted while the node keeps running."""
import subprocess
import sys

import numpy as np
import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from mmdistill_common import topics
from mmdistill_common.conversions import image_to_msg, stamp_to_ns
from mmdistill_common.qos import stream_qos
from mmdistill_common.testing import assert_msg_equal, make_collector, wait_for
from mmdistill_msgs.msg import AttentionPyramid
from mmdistill_teachers.labelling import run_teacher
from mmdistill_teachers.teacher_node import PARAMS, TeacherNode
from mmdistill_teachers.testing import save_sharp_teachers
from mmdistill_teachers.weights import load_teacher
from vision_msgs.msg import Detection2DArray

pytestmark = pytest.mark.ros


@pytest.fixture(scope='module')
def teachers_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('teachers')
    save_sharp_teachers(d)
    return d


def rgb(seed):
    return np.random.default_rng(seed).integers(0, 255, (128, 384, 3), dtype=np.uint8)


def make_node(modality, **params):
    over = [Parameter('modality', value=modality)] + [Parameter(k, value=v) for k, v in params.items()]
    return TeacherNode(node_name=f'teacher_{modality}_under_test', parameter_overrides=over)


def test_params_have_descriptions():
    assert {p.name for p in PARAMS} >= {'modality', 'weights', 'teachers_dir', 'score_threshold', 'nms_iou',
                                        'image_qos_reliability', 'frame_id', 'autostart'}
    assert all(p.description for p in PARAMS)


def test_rgb_teacher_lifecycle_outputs_and_bad_images(executor, teachers_dir):
    node = make_node('rgb', teachers_dir=str(teachers_dir), queue_depth=20)
    assert node.state == 'unconfigured' and node.model is None
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.state == 'inactive' and node.model is not None
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    executor.add(node)
    dets = executor.add(make_collector(topics.teacher_detections_topic('rgb'), Detection2DArray, stream_qos()))
    atts = executor.add(make_collector(topics.teacher_attention_topic('rgb'), AttentionPyramid, stream_qos()))
    src = executor.add(Node('camera_under_test'))
    pub = src.create_publisher(Image, topics.image_topic('rgb'), stream_qos())
    assert wait_for(lambda: pub.get_subscription_count() >= 1 and
                    node.count_subscribers(topics.teacher_detections_topic('rgb')) >= 1, timeout=10)
    good1 = image_to_msg(rgb(1), 'rgb8', stamp_ns=1_000_000_000, frame_id='camera')
    mono = image_to_msg(rgb(2)[:, :, 0], 'mono8', stamp_ns=1_100_000_000)          # wrong encoding
    small = image_to_msg(rgb(3)[:64, :192], 'rgb8', stamp_ns=1_200_000_000)        # wrong size
    truncated = image_to_msg(rgb(4), 'rgb8', stamp_ns=1_250_000_000)
    truncated.data = truncated.data[:-7]                                           # inconsistent bytes
    good2 = image_to_msg(rgb(5), 'rgb8', stamp_ns=1_300_000_000, frame_id='camera')
    for msg in (good1, mono, small, truncated, good2):
        pub.publish(msg)
    assert wait_for(lambda: len(dets.messages) >= 2 and len(atts.messages) >= 2, timeout=15)
    assert wait_for(lambda: sum(node.dropped.values()) == 3, timeout=5), node.dropped
    assert [stamp_to_ns(m.header.stamp) for m in dets.messages] == [1_000_000_000, 1_300_000_000]
    assert [stamp_to_ns(m.header.stamp) for m in atts.messages] == [1_000_000_000, 1_300_000_000]
    assert node.processed == 2
    # identical to the offline path (same weights file, same call)
    offline = load_teacher(teachers_dir / 'rgb.safetensors')
    for msg, d, a in zip((good1, good2), dets.messages, atts.messages):
        (d0, a0), = run_teacher(offline, [rgb(1 if msg is good1 else 5)], [stamp_to_ns(msg.header.stamp)],
                                ['camera'])
        assert len(d0.detections) > 0
        assert_msg_equal(d, d0)
        assert_msg_equal(a, a0)
    # deactivate: no more outputs, model kept; cleanup: model released
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.model is not None
    pub.publish(good1)
    wait_for(lambda: False, timeout=0.5)
    assert len(dets.messages) == 2
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert node.model is None and node.state == 'unconfigured'


def test_thermal_nan_dropped_and_configure_failures(executor, teachers_dir):
    node = make_node('thermal', weights=str(teachers_dir / 'thermal.safetensors'), frame_id='thermal_cam')
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    node.trigger_activate()
    executor.add(node)
    dets = executor.add(make_collector(topics.teacher_detections_topic('thermal'), Detection2DArray,
                                       stream_qos()))
    src = executor.add(Node('thermal_camera_under_test'))
    pub = src.create_publisher(Image, topics.image_topic('thermal'), stream_qos())
    assert wait_for(lambda: pub.get_subscription_count() >= 1 and
                    node.count_subscribers(topics.teacher_detections_topic('thermal')) >= 1, timeout=10)
    hot = np.full((128, 384), 295.0, np.float32)
    nan = hot.copy()
    nan[5, 5] = np.nan
    pub.publish(image_to_msg(nan, '32FC1', stamp_ns=10))
    pub.publish(image_to_msg(hot, '32FC1', stamp_ns=20))
    assert wait_for(lambda: len(dets.messages) >= 1, timeout=10)
    assert wait_for(lambda: node.dropped['InputError'] == 1, timeout=5)
    assert stamp_to_ns(dets.messages[0].header.stamp) == 20
    assert dets.messages[0].header.frame_id == 'thermal_cam'
    # weights of another modality, or none at all: configure fails, node stays unconfigured
    wrong = make_node('depth', weights=str(teachers_dir / 'rgb.safetensors'))
    assert wrong.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert wrong.state == 'unconfigured'
    none = make_node('depth')
    assert none.trigger_configure() == TransitionCallbackReturn.FAILURE
    wrong.destroy_node()
    none.destroy_node()


def test_main_refuses_missing_weights(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'mmdistill_teachers.teacher_node', '--ros-args',
                           '-p', 'modality:=depth', '-p', f'weights:={tmp_path / "nope.safetensors"}'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert 'not found' in proc.stderr and 'configure failed' in proc.stderr
