"""The runtime graph on real DDS: sim_node -> student_node -> tracking_node, and bad input.

The student checkpoint is a small *untrained* StudentDetector saved with ``save_checkpoint``, with
score threshold 0 so that it always emits boxes (and the tracker's start and output scores are 0 so that
they become published tracks): these tests check plumbing, stamps and robustness, not detection quality.
"""
import subprocess
import time

import numpy as np
import pytest
import torch
from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray
from visualization_msgs.msg import Marker, MarkerArray

from mmdistill_common import topics
from mmdistill_common.conversions import (audio_info, audio_to_msg, detections_to_msg, make_header,
                                          msg_to_detections, msg_to_image, stamp_to_ns)
from mmdistill_common.qos import latched_qos, stream_qos
from mmdistill_common.testing import make_collector, start_node, stop_process, wait_for
from mmdistill_student.checkpoint import save_checkpoint
from mmdistill_student.model import StudentConfig, StudentDetector

pytestmark = pytest.mark.ros

SR = 44100
W, H = 384, 128


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = StudentConfig(encoder=dict(widths=(8, 16), embed_dim=32, out_channels=16, dropout=0.0),
                        head_width=16, head_convs=1, score_threshold=0.0, max_detections=3)
    return save_checkpoint(StudentDetector(cfg), tmp_path_factory.mktemp('student') / 'ckpt')


def check_tracks(msgs, period_ns=100_000_000):
    """Every track has a numeric id and a finite box inside the image; stamps on the 10 Hz grid."""
    n = 0
    for m in msgs:
        stamp = stamp_to_ns(m.header.stamp)
        assert abs(stamp - round(stamp / period_ns) * period_ns) <= 6_000_000
        d = msg_to_detections(m)
        assert all(i.isdigit() and int(i) > 0 for i in d.ids)
        assert np.all(np.isfinite(d.boxes))
        assert np.all(d.boxes[:, :2] >= -1e-6) and np.all(d.boxes[:, 2] <= W + 1e-6) \
            and np.all(d.boxes[:, 3] <= H + 1e-6)
        assert np.all(d.boxes[:, 2:] > d.boxes[:, :2])
        n += len(d)
    return n


def test_sim_student_tracking_graph(executor, checkpoint):
    from mmdistill_student.student_node import StudentNode
    from mmdistill_tracking.tracking_node import TrackingNode

    dets = executor.add(make_collector(topics.STUDENT_DETECTIONS, Detection2DArray, stream_qos()))
    tracks = executor.add(make_collector(topics.TRACKS, Detection2DArray, stream_qos()))
    markers = executor.add(make_collector(topics.TRACK_MARKERS, MarkerArray, 10))
    images = executor.add(make_collector(topics.TRACK_IMAGE, Image, stream_qos()))
    sim = start_node('mmdistill_sim.sim_node', 'scenario:=dense-traffic', 'duration:=8.0', 'images:=false',
                'publish_clock:=true')
    try:
        student = StudentNode(parameter_overrides=[Parameter('checkpoint', value=str(checkpoint))])
        assert student.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert student.trigger_activate() == TransitionCallbackReturn.SUCCESS
        executor.add(student)
        tracker = executor.add(TrackingNode(parameter_overrides=[
            Parameter('start_score', value=0.0), Parameter('min_output_score', value=0.0),
            Parameter('image_width', value=W), Parameter('image_height', value=H)]))
        # the drive is long enough to survive slow discovery; it is stopped once tracks arrived
        ok = wait_for(lambda: len(tracks.messages) >= 8, timeout=25)
    finally:
        rc = stop_process(sim)
    log = sim.stderr.read()[-2000:]
    assert ok, f'no tracks: student {student.published} published, dropped {student.dropped}, ' \
        f'stats {student.runtime.stats}; tracker {tracker.published}; sim: {log}'
    assert rc == 0, log
    # nothing malformed, out of order or mismatching (audio before the latched info may be dropped)
    assert set(student.dropped) <= {'before_info'} and tracker.dropped == {}
    # student: one message per grid stamp, in order, stamped with the window centre
    stamps = [stamp_to_ns(m.header.stamp) for m in dets.messages]
    grid = np.round(np.array(stamps) / 1e8).astype(int)
    assert np.all(np.diff(grid) == 1) and grid[0] >= 6
    assert all(m.header.frame_id == 'camera' for m in dets.messages)
    assert check_tracks(tracks.messages) > 0
    ids = {d.id for m in tracks.messages for d in m.detections}
    assert ids and len(ids) < 3 * len(tracks.messages)           # ids persist over frames
    assert markers.messages and markers.messages[-1].markers[0].action == Marker.DELETEALL
    assert any(m.type == Marker.LINE_STRIP for m in markers.messages[-1].markers)
    img = msg_to_image(images.messages[-1])
    assert img.shape == (H, W, 3)


def test_student_node_main_exits_on_missing_checkpoint(tmp_path):
    """The console script's main(): autostart configures; no checkpoint -> one line, exit code 2."""
    proc = subprocess.run(['student_node', '--ros-args', '-p', f'checkpoint:={tmp_path / "none"}'],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert 'student checkpoint not found' in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith('student_node: error: configure failed')


def publish_audio(pub, samples, t0_ns, chunk=1764, pace=0.01):
    for i in range(0, len(samples), chunk):
        pub.publish(audio_to_msg(samples[i:i + chunk], t0_ns + i * 10**9 // SR))
        time.sleep(pace)


def test_bad_input_keeps_nodes_publishing(executor, checkpoint, ros):
    from mmdistill_student.student_node import StudentNode
    from mmdistill_tracking.tracking_node import TrackingNode

    src = executor.add(ros.create_node('bad_source'))
    info_pub = src.create_publisher(AudioInfo, topics.AUDIO_INFO, latched_qos())
    audio_pub = src.create_publisher(AudioDataStamped, topics.AUDIO, stream_qos())
    det_pub = src.create_publisher(Detection2DArray, topics.STUDENT_DETECTIONS, stream_qos())
    info_pub.publish(audio_info(2, SR))                                       # does not fit the checkpoint
    ckpt = Parameter('checkpoint', value=str(checkpoint))

    # refuses to activate: window mode, then the stream of the latched AudioInfo
    node = StudentNode(parameter_overrides=[ckpt, Parameter('window_mode', value='causal')])
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
    node.destroy_node()
    student = executor.add(StudentNode(parameter_overrides=[ckpt]))
    assert student.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert wait_for(lambda: student._info is not None, timeout=10)
    assert student.trigger_activate() == TransitionCallbackReturn.FAILURE
    info_pub.publish(audio_info(8, SR))
    assert wait_for(lambda: student._info is not None and student._info.channels == 8, timeout=10)
    assert student.trigger_activate() == TransitionCallbackReturn.SUCCESS
    tracker = executor.add(TrackingNode(parameter_overrides=[
            Parameter('start_score', value=0.0), Parameter('min_output_score', value=0.0),
            Parameter('image_width', value=W), Parameter('image_height', value=H)]))
    dets = executor.add(make_collector(topics.STUDENT_DETECTIONS, Detection2DArray, stream_qos()))
    tracks = executor.add(make_collector(topics.TRACKS, Detection2DArray, stream_qos()))
    assert wait_for(lambda: audio_pub.get_subscription_count() and det_pub.get_subscription_count() >= 2)

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4 * SR, 8)) * 2000).astype(np.int16)
    t0 = 10**9
    publish_audio(audio_pub, x[:int(1.4 * SR)], t0)
    assert wait_for(lambda: len(dets.messages) >= 3, timeout=10), 'no detections from good audio'
    time.sleep(0.2)                   # grid stamps 0.6 .. 0.8 s after t0: all out

    garbage = AudioDataStamped(header=make_header(t0 + 2 * 10**9))
    garbage.audio = AudioData(data=bytes(range(15)))                          # odd byte length
    audio_pub.publish(garbage)
    audio_pub.publish(audio_to_msg(np.zeros((101, 3), np.int16), t0 + 2 * 10**9))   # 3 channels
    audio_pub.publish(audio_to_msg(x[:1764], t0 - 10**9))                     # stamp jumps back 2.4 s
    bad = detections_to_msg([[10, 10, 50, 50]], [0.9], stamp_ns=t0 + 4 * 10**9)
    bad.detections[0].bbox.center.position.x = float('nan')
    bad2 = detections_to_msg([[10, 10, 50, 50]], [0.9], stamp_ns=t0 + 4 * 10**9)
    bad2.detections[0].bbox.size_x = -20.0                                    # x2 < x1
    det_pub.publish(bad)
    det_pub.publish(bad2)
    assert wait_for(lambda: student.dropped.get('malformed', 0) == 2 and student.dropped.get('out_of_order', 0) == 1
                    and tracker.dropped.get('bad_boxes', 0) == 2, timeout=10), (student.dropped, tracker.dropped)
    info_pub.publish(audio_info(4, 16000))                                    # mismatching stream
    assert wait_for(lambda: student._info_error is not None, timeout=10)
    publish_audio(audio_pub, np.zeros((1600, 4), np.int16), t0 + 2 * 10**9, chunk=640)
    assert wait_for(lambda: student.dropped.get('mismatch', 0) >= 1, timeout=10)
    n_dets, n_tracks = len(dets.messages), len(tracks.messages)

    info_pub.publish(audio_info(8, SR))                                       # matching again
    assert wait_for(lambda: student._info_error is None, timeout=10)
    t1 = t0 + 5 * 10**9
    publish_audio(audio_pub, x[int(1.4 * SR):], t1)
    assert wait_for(lambda: len(dets.messages) > n_dets + 5 and len(tracks.messages) > n_tracks + 5,
                    timeout=15), f'nodes stopped publishing: {student.dropped}, {tracker.dropped}'
    assert tracker.dropped.get('out_of_order', 0) == 0
    after = [stamp_to_ns(m.header.stamp) for m in dets.messages[n_dets:]]
    assert min(after) >= t1 + 500_000_000                                     # a full window after resuming
    assert check_tracks([m for m in tracks.messages if stamp_to_ns(m.header.stamp) >= t1]) > 0
    assert student.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert student.trigger_cleanup() == TransitionCallbackReturn.SUCCESS and student.runtime is None
