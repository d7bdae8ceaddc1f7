"""recorder_node in its own process: records what it is asked to, stamps by header, and leaves a
readable bag when stopped with SIGINT."""

import numpy as np
import pytest
from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from rclpy.node import Node
from rclpy.serialization import serialize_message
from sensor_msgs.msg import Image

from mmdistill_common import topics
from mmdistill_common.bagio import BagReader
from mmdistill_common.conversions import audio_info, audio_to_msg, detections_to_msg, image_to_msg
from mmdistill_common.qos import latched_qos, stream_qos
from mmdistill_common.testing import assert_msg_equal, start_node, stop_process, wait_for
from mmdistill_msgs.msg import PseudoLabel
from mmdistill_teachers.recorder_node import PARAMS, cdr_header_stamp_ns, recorded_topics
from vision_msgs.msg import Detection2DArray

pytestmark = pytest.mark.ros
MS = 1_000_000


def test_cdr_header_stamp_and_topic_selection():
    msg = detections_to_msg(np.zeros((0, 4)), [], stamp_ns=12 * 10**9 + 345)
    assert cdr_header_stamp_ns(serialize_message(msg)) == 12 * 10**9 + 345
    assert cdr_header_stamp_ns(b'\x00\x01') is None
    defaults = {p.name: p.default for p in PARAMS}
    names = [t for t, _, _ in recorded_topics(defaults)]
    assert topics.AUDIO in names and topics.PSEUDO_LABELS in names and topics.image_topic('rgb') not in names
    names = [t for t, _, _ in recorded_topics(dict(defaults, record_images=True, record_ground_truth=True))]
    assert topics.image_topic('thermal') in names and topics.GROUND_TRUTH in names and topics.SIM_TRUTH in names


def test_recorder_sigint_leaves_readable_bag(executor, tmp_path):
    bag = tmp_path / 'rec'
    proc = start_node('mmdistill_teachers.recorder_node', f'output:={bag}', 'record_ground_truth:=true')
    src = executor.add(Node('recorder_source'))
    pubs = {
        topics.AUDIO_INFO: src.create_publisher(AudioInfo, topics.AUDIO_INFO, latched_qos()),
        topics.AUDIO: src.create_publisher(AudioDataStamped, topics.AUDIO, stream_qos()),
        topics.PSEUDO_LABELS: src.create_publisher(PseudoLabel, topics.PSEUDO_LABELS, stream_qos()),
        topics.teacher_detections_topic('depth'): src.create_publisher(
            Detection2DArray, topics.teacher_detections_topic('depth'), stream_qos()),
        topics.GROUND_TRUTH: src.create_publisher(Detection2DArray, topics.GROUND_TRUTH, stream_qos()),
    }
    images = src.create_publisher(Image, topics.image_topic('rgb'), stream_qos())
    info = audio_info(8, 44100)
    pubs[topics.AUDIO_INFO].publish(info)            # before the recorder is up: latched
    try:
        ok = wait_for(lambda: all(p.get_subscription_count() >= 1 for p in pubs.values()), timeout=30)
        assert ok, 'recorder did not subscribe: ' + (proc.stderr.read() if proc.poll() is not None else '')
        sent = {t: [] for t in pubs}
        sent[topics.AUDIO_INFO].append(info)
        rng = np.random.default_rng(0)
        for k in range(10):
            stamp = 5000 * MS + k * 100 * MS
            msgs = {
                topics.AUDIO: audio_to_msg(rng.integers(-999, 999, (441, 8)).astype(np.int16), stamp),
                topics.PSEUDO_LABELS: PseudoLabel(
                    detections=detections_to_msg([[1, 2, 30 + k, 40]], [0.7], ids=['rgb+depth'], stamp_ns=stamp),
                    modalities=[], header=detections_to_msg([], [], stamp_ns=stamp).header),
                topics.teacher_detections_topic('depth'): detections_to_msg([[5, 5, 9, 9]], [0.4], stamp_ns=stamp),
                topics.GROUND_TRUTH: detections_to_msg([[1, 1, 2, 2]], [1.0], ids=['7'], stamp_ns=stamp),
            }
            for t, m in msgs.items():
                pubs[t].publish(m)
                sent[t].append(m)
            images.publish(image_to_msg(np.zeros((4, 4, 3), np.uint8), 'rgb8', stamp))   # not recorded
        wait_for(lambda: False, timeout=1.5)    # let the reliable streams drain
    finally:
        rc = stop_process(proc, timeout=20)
    err = proc.stderr.read()
    assert rc == 0, err
    with BagReader(bag) as reader:
        assert topics.image_topic('rgb') not in reader.topics
        got = reader.read_all()
    for t, msgs in sent.items():
        assert len(got.get(t, [])) == len(msgs), f'{t}: recorded {len(got.get(t, []))} of {len(msgs)}'
        for rec, m in zip(got[t], msgs):
            assert_msg_equal(rec.msg, m)
            if t != topics.AUDIO_INFO:
                assert rec.stamp_ns == m.header.stamp.sec * 10**9 + m.header.stamp.nanosec


def test_recorder_refuses_existing_output(tmp_path):
    (tmp_path / 'exists').mkdir()
    proc = start_node('mmdistill_teachers.recorder_node', f'output:={tmp_path / "exists"}')
    rc = proc.wait(timeout=60)
    assert rc == 2 and 'already exists' in proc.stderr.read()


def test_recorder_splits_by_duration_into_complete_bags(executor, tmp_path):
    """max_bag_duration: consecutive complete bags {output}_0, _1, ..., each with the audio_info,
    together holding every chunk once."""
    from mmdistill_common.conversions import msg_to_audio
    proc = start_node('mmdistill_teachers.recorder_node', f'output:={tmp_path / "rec"}', 'max_bag_duration:=1.0',
                      'record_teacher_detections:=false')
    src = executor.add(Node('split_source'))
    info_pub = src.create_publisher(AudioInfo, topics.AUDIO_INFO, latched_qos())
    audio = src.create_publisher(AudioDataStamped, topics.AUDIO, stream_qos())
    info_pub.publish(audio_info(8, 44100))
    try:
        assert wait_for(lambda: audio.get_subscription_count() >= 1 and info_pub.get_subscription_count() >= 1,
                        timeout=30), proc.stderr.read()
        wait_for(lambda: False, timeout=2.0)      # the latched audio_info reaches the recorder first
        for k in range(80):                       # 3.2 s at 25 Hz
            audio.publish(audio_to_msg(np.full((1764, 8), k, np.int16), 10**9 + k * 40 * MS))
            wait_for(lambda: False, timeout=0.04)
        wait_for(lambda: False, timeout=1.0)
    finally:
        rc = stop_process(proc, timeout=20)
    assert rc == 0, proc.stderr.read()
    bags = sorted(tmp_path.glob('rec_*'), key=lambda p: int(p.name.split('_')[1]))
    assert len(bags) >= 3 and not (tmp_path / 'rec').exists()
    got, infos = [], []
    for bag in bags:
        with BagReader(bag) as reader:
            msgs = reader.read_all()
        infos.append(len(msgs.get(topics.AUDIO_INFO, [])))
        got += [int(msg_to_audio(m.msg, 8)[0, 0]) for m in msgs.get(topics.AUDIO, [])]
    assert got == list(range(80))
    # every split after the one the latched audio_info reached (DDS delivers it on its own schedule)
    # starts with it
    first = next(i for i, n in enumerate(infos) if n)
    assert infos[:first] == [0] * first and first <= 1 and all(n == 1 for n in infos[first:]), infos
