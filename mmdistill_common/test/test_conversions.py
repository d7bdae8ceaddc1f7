import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mmdistill_common.conversions import (
    attention_to_msg, audio_info, audio_to_msg, check_audio_info, detections_to_msg, float_to_s16,
    image_to_msg, msg_to_attention, msg_to_audio, msg_to_detections, msg_to_image, ns_to_stamp, stamp_to_ns)
from mmdistill_common.errors import InputError

RNG = np.random.default_rng(0)


@pytest.mark.parametrize('encoding,array', [
    ('rgb8', RNG.integers(0, 256, (128, 384, 3), dtype=np.uint8)),
    ('mono8', RNG.integers(0, 256, (7, 5), dtype=np.uint8)),
    ('16UC1', RNG.integers(0, 65536, (7, 5), dtype=np.uint16)),
    ('32FC1', np.where(RNG.random((7, 5)) < 0.2, np.nan, RNG.random((7, 5)) * 80).astype(np.float32)),
])
def test_image_round_trip(encoding, array):
    msg = image_to_msg(array, encoding, stamp_ns=1_500_000_000, frame_id='cam')
    assert (msg.height, msg.width, msg.encoding, msg.header.frame_id) == (array.shape[0], array.shape[1], encoding, 'cam')
    assert msg.step * msg.height == len(msg.data)
    back = msg_to_image(msg)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_image_with_row_padding_and_big_endian():
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    msg = image_to_msg(arr, '16UC1')
    padded = np.zeros((3, msg.step + 6), np.uint8)
    padded[:, :msg.step] = arr.astype('>u2').view(np.uint8).reshape(3, -1)
    msg.data, msg.step, msg.is_bigendian = padded.tobytes(), msg.step + 6, 1
    np.testing.assert_array_equal(msg_to_image(msg), arr)


def test_image_errors():
    with pytest.raises(InputError, match='unsupported image encoding'):
        image_to_msg(np.zeros((2, 2), np.uint8), 'yuv422')
    with pytest.raises(InputError, match='needs dtype'):
        image_to_msg(np.zeros((2, 2), np.float64), '32FC1')
    msg = image_to_msg(np.zeros((2, 2), np.uint8), 'mono8')
    msg.data = b'\x00' * 3
    with pytest.raises(InputError, match='expected step'):
        msg_to_image(msg)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(0, 300), st.integers(0, 2**40))
def test_audio_round_trip(channels, frames, stamp):
    samples = np.random.default_rng(frames).integers(-32768, 32768, (frames, channels)).astype(np.int16)
    msg = audio_to_msg(samples, stamp)
    assert len(msg.audio.data) == frames * channels * 2
    assert stamp_to_ns(msg.header.stamp) == stamp
    np.testing.assert_array_equal(msg_to_audio(msg, channels), samples)


def test_audio_byte_layout_is_interleaved_little_endian():
    samples = np.array([[1, -2], [258, 3]], dtype=np.int16)
    data = bytes(audio_to_msg(samples, 0).audio.data)
    assert data == b'\x01\x00\xfe\xff\x02\x01\x03\x00'


def test_audio_errors():
    msg = audio_to_msg(np.zeros((10, 8), np.int16), 0)
    msg.audio.data = bytes(msg.audio.data)[:-3]
    with pytest.raises(InputError, match='not a whole number of 8-channel'):
        msg_to_audio(msg, 8)
    with pytest.raises(InputError, match='NaN'):
        float_to_s16(np.array([0.0, np.nan]))
    info = audio_info(8, 44100)
    check_audio_info(info)
    info.sample_format = 'F32LE'
    with pytest.raises(InputError, match='sample_format'):
        check_audio_info(info)


def test_float_to_s16_clips():
    np.testing.assert_array_equal(float_to_s16(np.array([-2.0, -1.0, 0.0, 0.5, 1.0])),
                                  [-32768, -32768, 0, 16384, 32767])


def test_stamp_conversion():
    assert stamp_to_ns(ns_to_stamp(1_234_567_890_123)) == 1_234_567_890_123
    with pytest.raises(InputError):
        ns_to_stamp(-1)


def test_detections_round_trip():
    boxes = np.array([[10.0, 20.0, 50.0, 60.0], [0.5, 1.5, 2.5, 9.0]])
    msg = detections_to_msg(boxes, [0.9, 0.2], ['car', 'truck'], ids=[3, 7], stamp_ns=42, frame_id='rgb')
    assert msg.detections[0].bbox.center.position.x == 30.0 and msg.detections[0].bbox.size_y == 40.0
    det = msg_to_detections(msg)
    np.testing.assert_allclose(det.boxes, boxes)
    np.testing.assert_allclose(det.scores, [0.9, 0.2])
    assert det.labels == ['car', 'truck'] and det.ids == ['3', '7']
    assert len(msg_to_detections(detections_to_msg(np.zeros((0, 4)), []))) == 0
    with pytest.raises(InputError, match='NaN'):
        detections_to_msg([[0, 0, np.nan, 1]], [0.5])


def test_attention_round_trip():
    maps = [RNG.random((16, 48)), RNG.random((8, 24)), RNG.random((4, 12))]
    msg = attention_to_msg(maps, [8, 16, 32], 'thermal', stamp_ns=5)
    assert [lvl.stride for lvl in msg.levels] == [8, 16, 32] and msg.modality == 'thermal'
    for a, b in zip(maps, msg_to_attention(msg)):
        np.testing.assert_allclose(a.astype(np.float32), b)
    msg.levels[0].height = 3
    with pytest.raises(InputError, match='carries'):
        msg_to_attention(msg)
