"""A bag into the Foxglove view: served with play / pause / seek to a WebSocket client, and exported to MCAP.

The bag is written here (audio, camera, ground truth); the student is a small untrained
checkpoint with score threshold 0 (plumbing, not quality). The client speaks the real protocol
to the real foxglove-sdk server on localhost.
"""
import base64

import numpy as np
import pytest
import torch

from mmdistill_bringup.foxglove_client import FoxgloveClient, decoder
from mmdistill_bringup.foxglove_playback import BagViewPlayer, StudentOnBag
from mmdistill_common import topics as T
from mmdistill_common.bagio import BagWriter
from mmdistill_common.conversions import audio_info, audio_to_msg, detections_to_msg, image_to_msg

SR = 44100
T0 = 5 * 10**9
W, H = 160, 64


def truth_boxes(k):
    return [[10 + 5 * k, 20, 40 + 5 * k, 50], [100, 10, 120.5, 30.25]]


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('view') / 'drive'
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((int(1.6 * SR), 8)) * 2000).astype(np.int16)
    chunk = int(0.04 * SR)
    with BagWriter(path) as w:
        w.add_topic(T.AUDIO_INFO, 'audio_common_msgs/msg/AudioInfo', transient_local=True)
        w.write(T.AUDIO_INFO, audio_info(8, SR), T0)
        for i in range(0, len(audio) - chunk + 1, chunk):
            t = T0 + i * 10**9 // SR
            w.write(T.AUDIO, audio_to_msg(audio[i:i + chunk], t), t)
        for k in range(16):
            t = T0 + k * 10**8
            w.write(T.image_topic('rgb'), image_to_msg(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), 'rgb8', t), t)
            w.write(T.GROUND_TRUTH, detections_to_msg(truth_boxes(k), [1.0, 1.0], labels=['car', 'truck'],
                                                      ids=[3, 8], stamp_ns=t), t)
    return path


@pytest.fixture(scope='module')
def student(tmp_path_factory):
    from mmdistill_student.checkpoint import save_checkpoint
    from mmdistill_student.model import StudentConfig, StudentDetector
    torch.manual_seed(0)
    cfg = StudentConfig(encoder=dict(widths=(8, 16), embed_dim=32, out_channels=16, dropout=0.0),
                        head_width=16, head_convs=1, score_threshold=0.0, max_detections=3)
    return save_checkpoint(StudentDetector(cfg), tmp_path_factory.mktemp('student') / 'ckpt')


def boxes_of(ann):
    return np.array([(min(q.x for q in p.points), min(q.y for q in p.points), max(q.x for q in p.points),
                      max(q.y for q in p.points)) for p in ann.points]).reshape(-1, 4)


def stamp_of(ann):
    return ann.timestamp.seconds * 10**9 + ann.timestamp.nanos


def test_bag_served_with_play_pause_seek(bag, student):
    player = BagViewPlayer(bag, port=0, student=StudentOnBag(student)).start()
    try:
        with FoxgloveClient(player.view.port) as c:
            assert c.wait(lambda c: '/view/ground_truth' in c.channels, timeout=10)
            assert {'playbackControl', 'time'} <= set(c.server_info['capabilities'])
            c.subscribe()                                                 # the first subscription starts playback
            assert c.wait(lambda c: len(c.received.get('/view/ground_truth', [])) >= 2, timeout=10)
            c.playback_control(play=False, request_id='pause-1')
            assert c.wait(lambda c: any(s['request_id'] == 'pause-1' for s in c.playback_states), timeout=5)
            assert [s for s in c.playback_states if s['request_id'] == 'pause-1'][0]['status'] == 'Paused'
            c.poll(0.2)
            n = len(c.received['/view/camera'])
            c.poll(0.4)
            assert len(c.received['/view/camera']) == n                    # paused: nothing new
            seek = T0 + 2 * 10**8
            c.playback_control(play=True, speed=2.0, seek_ns=seek, request_id='seek-1')
            assert c.wait(lambda c: any(s['status'] == 'Ended' for s in c.playback_states), timeout=15), c.playback_states
            c.poll(0.2)
            state = [s for s in c.playback_states if s['request_id'] == 'seek-1'][0]
            assert state['did_seek'] and state['status'] == 'Playing' and state['current_time'] == seek
            assert state['speed'] == pytest.approx(2.0)
            after = c.received['/view/camera'][n:]
            assert after and all(t >= seek for t, _ in after)                 # log time = bag time, from the seek on
            assert c.times and max(c.times) <= player.bag.end_ns
            assert len(c.received['/view/student']) >= 2                     # the student ran on the bag's audio
    finally:
        player.close()
    # the ground-truth boxes shown are the bag's, frame by frame
    for log_time, ann in c.received['/view/ground_truth']:
        k = (stamp_of(ann) - T0) // 10**8
        assert log_time == stamp_of(ann)
        np.testing.assert_allclose(boxes_of(ann), truth_boxes(k), atol=1e-4)
        assert [t.text for t in ann.texts] == ['#3', '#8']
    tracks = [a for _, a in c.received.get('/view/tracks', [])]
    assert tracks and all(len(a.points) == len(a.texts) for a in tracks)


def test_bag_exported_to_mcap(bag, student, tmp_path):
    from mcap.reader import make_reader
    out = tmp_path / 'view.mcap'
    player = BagViewPlayer(bag, port=None, mcap=out, student=StudentOnBag(student))
    try:
        n = player.export()
    finally:
        player.close()
    assert n > 16 * 2
    with open(out, 'rb') as f:
        reader = make_reader(f)
        seen = {}
        for schema, channel, message in reader.iter_messages():
            ch = {'encoding': channel.message_encoding, 'schemaName': schema.name,
                  'schema': base64.b64encode(schema.data).decode()}
            seen.setdefault(channel.topic, []).append((message.log_time, decoder(ch)(message.data)))
    assert {'/view/camera', '/view/ground_truth', '/view/student', '/view/tracks', '/view/scene',
            '/view/acoustic', '/view/audio_levels'} <= set(seen)
    assert len(seen['/view/ground_truth']) == 16 and len(seen['/view/camera']) == 16
    for log_time, ann in seen['/view/ground_truth']:
        np.testing.assert_allclose(boxes_of(ann), truth_boxes((log_time - T0) // 10**8), atol=1e-4)
    # the README still is drawn from such a file
    from mmdistill_bringup.foxglove_preview import main as preview
    assert preview([str(out), str(tmp_path / 'view.png'), '--time', '1.2']) == 0
    assert (tmp_path / 'view.png').stat().st_size > 10_000
