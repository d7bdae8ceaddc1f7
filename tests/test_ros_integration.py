"""Real nodes in two processes over Fast DDS: every field survives the round trip."""
import os
import subprocess
import sys

import numpy as np
import pytest
from audio_common_msgs.msg import AudioDataStamped
from mmdistill_msgs.msg import PseudoLabel
from rclpy.node import Node
from vision_msgs.msg import Detection2DArray

from mmdistill_common.conversions import attention_to_msg, audio_to_msg, detections_to_msg
from mmdistill_common.testing import assert_msg_equal, make_collector, stop_process, wait_for

pytestmark = pytest.mark.ros
HERE = os.path.dirname(__file__)


def messages():
    rng = np.random.default_rng(7)
    dets = detections_to_msg(rng.random((5, 4)) * [100, 50, 100, 50] + [0, 0, 100, 50], rng.random(5),
                             ['car', 'truck', 'motorbike', 'vehicle', 'car'], ids=range(5),
                             stamp_ns=1_700_000_000_123_456_789, frame_id='camera_rgb')
    dets.detections[2].results[0].pose.pose.position.x = 1.25
    dets.detections[2].results[0].pose.covariance[35] = 0.5
    dets.detections[1].bbox.center.theta = 0.1
    audio = audio_to_msg(rng.integers(-32768, 32768, (882, 8)).astype(np.int16), 1_700_000_000_000_000_001, 'mic_array')
    label = PseudoLabel(detections=dets, modalities=['rgb', 'depth', 'thermal'])
    label.header.stamp.sec, label.header.stamp.nanosec, label.header.frame_id = 17, 5, 'camera_rgb'
    label.attention = [attention_to_msg([rng.random((16, 48)), rng.random((8, 24)), rng.random((4, 12))],
                                        [8, 16, 32], m, 17_000_000_005) for m in label.modalities]
    return {'detections': (Detection2DArray, dets), 'audio': (AudioDataStamped, audio), 'pseudo_label': (PseudoLabel, label)}


@pytest.fixture
def relay_process():
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, 'nodes', 'relay.py')],
                            stderr=subprocess.PIPE, text=True)
    yield proc
    stop_process(proc)


def test_messages_cross_processes_unchanged(executor, relay_process):
    msgs = messages()
    publisher = executor.add(Node('integration_publisher'))
    pubs = {name: publisher.create_publisher(t, f'/relay/in/{name}', 10) for name, (t, _) in msgs.items()}
    collectors = {name: executor.add(make_collector(f'/relay/out/{name}', t)) for name, (t, _) in msgs.items()}
    # wait until the relay has matched both sides (discovery), then publish
    assert wait_for(lambda: all(p.get_subscription_count() == 1 for p in pubs.values())
                    and all(publisher.count_publishers(f'/relay/out/{n}') == 1 for n in msgs), timeout=20), \
        'relay node did not appear on the graph'
    # discovery of the relay's publishers by our collectors may lag: resend until each came back
    def received_all():
        for name, (_, msg) in msgs.items():
            if not collectors[name].messages:
                pubs[name].publish(msg)
        return all(c.messages for c in collectors.values())
    assert wait_for(received_all, timeout=15, period=0.2), \
        f'missing: {[n for n, c in collectors.items() if not c.messages]}'
    for name, (_, msg) in msgs.items():
        assert_msg_equal(msg, collectors[name].messages[0], path=name)
    assert relay_process.poll() is None, 'relay died'
