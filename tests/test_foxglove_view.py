"""The Foxglove view on real DDS: graph topics -> view_node -> foxglove-sdk server -> a WebSocket client.

Messages are published by rclpy publishers in this process and reach ``ViewNode`` over Fast DDS;
the client (``mmdistill_bringup.foxglove_client``, on ``websockets``) connects to the real server
on localhost, checks the advertised channels and schemas, subscribes, and decodes the messages
with the schemas it was sent.
"""
import numpy as np
import pytest
from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray
from visualization_msgs.msg import MarkerArray

from mmdistill_bringup.foxglove_client import FoxgloveClient
from mmdistill_bringup.foxglove_view import STUDENT_ACOUSTIC_TOPIC, VIEW_CHANNELS, FoxgloveView
from mmdistill_bringup.view_node import ViewNode
from mmdistill_common import topics as T
from mmdistill_common.conversions import audio_info, audio_to_msg, detections_to_msg, image_to_msg, make_header
from mmdistill_common.qos import latched_qos, stream_qos
from mmdistill_common.testing import wait_for
from mmdistill_msgs.msg import PseudoLabel
from mmdistill_tracking.tracking_node import marker_msg
from mmdistill_tracking.visualization import track_markers

pytestmark = pytest.mark.ros

SR = 44100


def annotation_boxes(msg):
    """ImageAnnotations (decoded protobuf) -> (N, 4) xyxy from each LINE_LOOP's corners."""
    out = []
    for p in msg.points:
        xs, ys = [q.x for q in p.points], [q.y for q in p.points]
        out.append((min(xs), min(ys), max(xs), max(ys)))
    return np.array(out).reshape(-1, 4)


def test_live_graph_topics_reach_a_websocket_client(executor, ros):
    view = FoxgloveView(port=0)
    node = executor.add(ViewNode(view))
    src = executor.add(ros.create_node('view_source'))
    pubs = {t: src.create_publisher(cls, t, stream_qos()) for t, cls in [
        (T.STUDENT_DETECTIONS, Detection2DArray), (T.TRACKS, Detection2DArray), (T.GROUND_TRUTH, Detection2DArray),
        (T.teacher_detections_topic('rgb'), Detection2DArray), (T.teacher_detections_topic('depth'), Detection2DArray),
        (T.teacher_detections_topic('thermal'), Detection2DArray), (T.PSEUDO_LABELS, PseudoLabel),
        (T.image_topic('rgb'), Image), (T.TRACK_MARKERS, MarkerArray), (T.AUDIO, AudioDataStamped),
        (STUDENT_ACOUSTIC_TOPIC, Image)]}
    info_pub = src.create_publisher(AudioInfo, T.AUDIO_INFO, latched_qos())
    info_pub.publish(audio_info(8, SR))
    w, h = view.geometry.width, view.geometry.height
    student = detections_to_msg([[10.5, 20.25, 60.0, 70.0], [300, 5, 340.5, 50]], [0.91, 0.42], stamp_ns=10**9,
                                frame_id='camera')
    tracks = detections_to_msg([[11, 21, 61, 71]], [0.9], ids=['7'], stamp_ns=10**9)
    rng = np.random.default_rng(0)
    camera = image_to_msg(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), 'rgb8', stamp_ns=10**9)
    markers = MarkerArray(markers=[marker_msg(s, make_header(10**9, 'image_plane'))
                                   for s in track_markers([[11, 21, 61, 71]], ['7'])])
    acoustic = image_to_msg(rng.integers(0, 255, (40, 96, 3), dtype=np.uint8), 'rgb8', stamp_ns=10**9)
    pseudo = PseudoLabel(header=make_header(10**9), detections=detections_to_msg([[5, 5, 25, 30]], [0.8]))
    audio = (rng.standard_normal((int(0.6 * SR), 8)) * 3000).astype(np.int16)
    try:
        assert wait_for(lambda: all(p.get_subscription_count() >= 1 for p in pubs.values()), timeout=15)
        assert wait_for(lambda: view._audio_channels == 8, timeout=10)          # latched info arrived
        with FoxgloveClient(view.port) as client:
            assert client.wait(lambda c: set(VIEW_CHANNELS) <= set(c.channels), timeout=10), client.channels
            assert client.server_info['op'] == 'serverInfo'
            for topic, schema in VIEW_CHANNELS.items():
                ch = client.channels[topic]
                assert ch['schemaName'] == schema
                assert ch['encoding'] == ('json' if schema.startswith('mmdistill.') else 'protobuf')
            client.subscribe()

            def publish_round(k):
                t0 = 10**9 + k * 10**8
                for topic in (T.STUDENT_DETECTIONS, T.TRACKS, T.GROUND_TRUTH,
                              *(T.teacher_detections_topic(m) for m in T.CAMERAS)):
                    pubs[topic].publish(tracks if topic == T.TRACKS else student)
                pubs[T.PSEUDO_LABELS].publish(pseudo)
                pubs[T.image_topic('rgb')].publish(camera)
                pubs[T.TRACK_MARKERS].publish(markers)
                pubs[STUDENT_ACOUSTIC_TOPIC].publish(acoustic)
                chunk = int(0.1 * SR)
                start = (k * chunk) % (len(audio) - chunk)
                pubs[T.AUDIO].publish(audio_to_msg(audio[start:start + chunk], t0))

            k = 0

            def all_received(c):
                nonlocal k
                publish_round(k)
                k += 1
                return set(VIEW_CHANNELS) <= set(c.received)
            assert client.wait(all_received, timeout=20), \
                f'missing {set(VIEW_CHANNELS) - set(client.received)}; node got {node.received}'
    finally:
        view.close()
    got = {t: msgs[-1][1] for t, msgs in client.received.items()}
    # the boxes drawn are the boxes published, for every box channel
    for topic in ('/view/student', '/view/ground_truth', '/view/teachers/rgb'):
        ann = got[topic]
        np.testing.assert_allclose(annotation_boxes(ann), [[10.5, 20.25, 60.0, 70.0], [300, 5, 340.5, 50]], atol=1e-4)
        assert ann.timestamp.seconds == 1 and ann.timestamp.nanos == 0
    assert [t.text for t in got['/view/student'].texts] == ['vehicle 0.91', 'vehicle 0.42']
    np.testing.assert_allclose(annotation_boxes(got['/view/tracks']), [[11, 21, 61, 71]])
    assert got['/view/tracks'].texts[0].text == '#7 0.90'
    np.testing.assert_allclose(annotation_boxes(got['/view/pseudo_labels']), [[5, 5, 25, 30]])
    # camera image as JPEG of the published size; heat map of the camera's columns; levels per mic
    import cv2
    img = cv2.imdecode(np.frombuffer(got['/view/camera'].data, np.uint8), cv2.IMREAD_COLOR)
    assert got['/view/camera'].format in ('jpeg', 'png') and img.shape == (h, w, 3)
    heat = got['/view/acoustic']
    assert heat.encoding == 'rgb8' and heat.width == 2 * 96 and len(heat.data) == heat.step * heat.height
    student_heat = got['/view/student_acoustic']
    assert (student_heat.width, student_heat.height) == (96, 40) and student_heat.data == bytes(acoustic.data)
    levels = got['/view/audio_levels']
    assert len(levels['rms_dbfs']) == 8 and all(-25 < v < -15 for v in levels['rms_dbfs'])   # 3000/32768 -> -20.8 dB
    scene = got['/view/scene']
    assert scene.deletions and {e.id for e in scene.entities} == {'tracks/7', 'track_ids/7'}
    assert any(e.lines for e in scene.entities) and any(t.text == '#7' for e in scene.entities for t in e.texts)


@pytest.mark.slow
def test_bringup_car_view_serves_the_graph(executor, ros, tmp_path):
    """``mmdistill-bringup car --view`` in a child process: detections published here go through its
    tracking_node, and its view serves them, the tracks and the markers to a WebSocket client."""
    import socket
    import subprocess

    import torch

    from mmdistill_common.testing import stop_process
    from mmdistill_student.checkpoint import save_checkpoint
    from mmdistill_student.model import StudentConfig, StudentDetector
    torch.manual_seed(0)
    ckpt = save_checkpoint(StudentDetector(StudentConfig(
        encoder=dict(widths=(8, 16), embed_dim=32, out_channels=16, dropout=0.0), head_width=16, head_convs=1)),
        tmp_path / 'ckpt')
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(['mmdistill-bringup', 'car', '--view', '--view-port', str(port), f'checkpoint:={ckpt}',
                             '-p', 'tracking_node.start_score:=0.0'], stderr=subprocess.PIPE, text=True)
    src = executor.add(ros.create_node('bringup_view_source'))
    pub = src.create_publisher(Detection2DArray, T.STUDENT_DETECTIONS, stream_qos())
    try:
        assert wait_for(lambda: proc.poll() is None and _connects(port), timeout=60), 'no view server'
        with FoxgloveClient(port) as client:
            assert client.wait(lambda c: set(VIEW_CHANNELS) <= set(c.channels), timeout=10)
            client.subscribe()
            k = 0

            def served(c):
                nonlocal k
                k += 1
                pub.publish(detections_to_msg([[100, 30, 160, 80]], [0.9], stamp_ns=10**9 + k * 10**8))
                return all(len(c.received.get(t, [])) >= 2 for t in
                           ('/view/student', '/view/tracks', '/view/scene', '/view/camera'))
            assert client.wait(served, timeout=30), {t: len(v) for t, v in client.received.items()}
    finally:
        rc = stop_process(proc)
    assert rc == 0, proc.stderr.read()[-2000:]
    ann = client.received['/view/tracks'][-1][1]
    assert annotation_boxes(ann).shape == (1, 4) and ann.texts[0].text.startswith('#')


def _connects(port: int) -> bool:
    import socket
    with socket.socket() as s:
        return s.connect_ex(('127.0.0.1', port)) == 0
