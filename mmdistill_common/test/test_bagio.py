import glob
import os

import numpy as np
import pytest
from mcap_ros2.reader import read_ros2_messages
from rclpy.serialization import deserialize_message, serialize_message

from mmdistill_common.bagio import BagReader, BagWriter
from mmdistill_common.conversions import (
    attention_to_msg, audio_info, audio_to_msg, detections_to_msg, image_to_msg, msg_to_audio, msg_to_image)
from mmdistill_common.errors import InputError
from mmdistill_common.testing import assert_msg_equal
from mmdistill_msgs.msg import PseudoLabel


def sample_messages():
    rng = np.random.default_rng(1)
    label = PseudoLabel(modalities=['rgb', 'thermal'])
    label.header.stamp.sec = 3
    label.detections = detections_to_msg([[1, 2, 30, 40]], [0.8], ['vehicle'], ids=['0'], stamp_ns=3_000_000_000)
    label.attention = [attention_to_msg([rng.random((4, 12))], [32], m, 3_000_000_000) for m in label.modalities]
    return [
        ('/sensors/mic_array/audio_info', audio_info(8, 44100), 0),
        ('/sensors/mic_array/audio', audio_to_msg(rng.integers(-999, 999, (441, 8)).astype(np.int16), 10), 10),
        ('/sensors/camera/rgb/image_raw', image_to_msg(rng.integers(0, 255, (128, 384, 3), dtype=np.uint8), 'rgb8', 20), 20),
        ('/sensors/camera/depth/image_raw', image_to_msg(rng.random((128, 384), dtype=np.float32), '32FC1', 20), 20),
        ('/sim/ground_truth', detections_to_msg([[5, 5, 9, 9]], [1.0], ids=[12], stamp_ns=20), 20),
        ('/pseudo_labels', label, 3_000_000_000),
    ]


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_round_trip_all_types(tmp_path, storage):
    msgs = sample_messages()
    with BagWriter(tmp_path / 'bag', storage=storage) as bag:
        bag.add_topic(msgs[0][0], 'audio_common_msgs/msg/AudioInfo', transient_local=True)
        for topic, msg, stamp in msgs:
            bag.write(topic, msg, stamp)
    with BagReader(tmp_path / 'bag') as bag:
        assert bag.topics['/pseudo_labels'] == ('mmdistill_msgs/msg/PseudoLabel', 1)
        got = list(bag.messages())
    assert [(m.topic, m.stamp_ns) for m in got] == [(t, s) for t, _, s in msgs]
    for (_, want, _), m in zip(msgs, got):
        assert_msg_equal(want, m.msg)


def test_cdr_round_trip_through_rclpy():
    for _, msg, _ in sample_messages():
        assert_msg_equal(msg, deserialize_message(serialize_message(msg), type(msg)))


def test_fast_image_cdr_matches_rclpy():
    """BagWriter serialises sensor_msgs/Image itself (one copy of the pixels): the same length and the
    same bytes as rclpy except CDR alignment padding (rclpy leaves it uninitialised, ours is zero),
    and rclpy reads it back as the same message."""
    from mmdistill_common.bagio import image_cdr
    from sensor_msgs.msg import Image
    rng = np.random.default_rng(2)
    cases = [Image(), Image(encoding='mono16', is_bigendian=1, height=2, width=1, step=2, data=b'\x01\x02\x03\x04')]
    for fid in ('', 'c', 'ca', 'cam', 'camera', 'camera_frame_x'):
        for stamp in (0, 1, 999, 1234567890123456789):
            cases.append(image_to_msg(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8), 'rgb8', stamp, fid))
            cases.append(image_to_msg(rng.random((3, 5), dtype=np.float32), '32FC1', stamp, fid))
    for msg in cases:
        ours, ref = image_cdr(msg), serialize_message(msg)
        assert len(ours) == len(ref)
        assert_msg_equal(deserialize_message(ours, Image), msg)
        # every byte that differs is alignment padding (at most 3 + 3 + 3 bytes), zero in ours
        diff = [i for i in range(len(ref)) if ours[i] != ref[i]]
        assert all(ours[i] == 0 for i in diff) and len(diff) <= 9
    assert image_cdr(audio_info(8, 44100)) is None


def test_independent_mcap_reader_decodes_our_bag(tmp_path):
    msgs = sample_messages()
    with BagWriter(tmp_path / 'bag') as bag:
        for topic, msg, stamp in msgs:
            bag.write(topic, msg, stamp)
    decoded = list(read_ros2_messages(glob.glob(str(tmp_path / 'bag' / '*.mcap'))[0]))
    assert [d.channel.topic for d in decoded] == [t for t, _, _ in msgs]
    by_topic = {d.channel.topic: d.ros_msg for d in decoded}
    audio = by_topic['/sensors/mic_array/audio']
    np.testing.assert_array_equal(np.frombuffer(bytes(audio.audio.data), '<i2').reshape(-1, 8), msg_to_audio(msgs[1][1], 8))
    assert audio.header.stamp.nanosec == 10
    rgb = by_topic['/sensors/camera/rgb/image_raw']
    assert (rgb.height, rgb.width, rgb.encoding, rgb.step) == (128, 384, 'rgb8', 384 * 3)
    np.testing.assert_array_equal(np.frombuffer(bytes(rgb.data), np.uint8).reshape(128, 384, 3), msg_to_image(msgs[2][1]))
    label = by_topic['/pseudo_labels']
    assert list(label.modalities) == ['rgb', 'thermal']
    det = label.detections.detections[0]
    assert (det.bbox.center.position.x, det.bbox.size_x, det.results[0].hypothesis.class_id) == (15.5, 29.0, 'vehicle')
    assert label.attention[1].modality == 'thermal' and label.attention[1].levels[0].stride == 32
    np.testing.assert_allclose(label.attention[0].levels[0].data, msgs[5][1].attention[0].levels[0].data)
    gt = by_topic['/sim/ground_truth']
    assert gt.detections[0].id == '12'


def test_writer_refuses_existing_path(tmp_path):
    (tmp_path / 'bag').mkdir()
    with pytest.raises(InputError, match='already exists'):
        BagWriter(tmp_path / 'bag')


def test_missing_and_truncated_bags(tmp_path):
    with pytest.raises(InputError, match='does not exist'):
        BagReader(tmp_path / 'nope')
    with BagWriter(tmp_path / 'bag') as bag:
        for i in range(200):
            bag.write('/sensors/camera/depth/image_raw', image_to_msg(np.zeros((64, 64), np.float32), '32FC1', i), i)
    mcap = glob.glob(str(tmp_path / 'bag' / '*.mcap'))[0]
    size = os.path.getsize(mcap)
    with open(mcap, 'r+b') as f:
        f.truncate(size // 2)
    with pytest.raises(InputError):
        with BagReader(tmp_path / 'bag') as bag:
            list(bag.messages())


def test_require_names_missing_topic(tmp_path):
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write('/a', audio_info(8, 44100), 1)
    with BagReader(tmp_path / 'bag') as bag:
        bag.require(['/a'])
        with pytest.raises(InputError, match='no topic /b'):
            bag.require(['/b'])
