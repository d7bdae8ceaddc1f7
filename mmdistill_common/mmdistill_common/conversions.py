"""numpy <-> ROS message conversions (no cv_bridge, no hardware, no node).

Audio byte layout (DESIGN §3): interleaved signed 16-bit little endian
(``AudioInfo.sample_format = "S16LE"``, ``coding_format = "wave"``): frame k holds
channel 0..C-1 of sample k, two bytes each, so a chunk of N frames is
``N * C * 2`` bytes and ``header.stamp`` is the capture time of its first frame.

Images: ``rgb8`` (H, W, 3) uint8, ``mono8`` (H, W) uint8, ``16UC1`` (H, W) uint16,
``32FC1`` (H, W) float32 (depth in metres with NaN for no return; thermal in kelvin).
Row padding (``step``) and big-endian data are handled on input.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import numpy as np
from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
from builtin_interfaces.msg import Time
from mmdistill_msgs.msg import AttentionMap, AttentionPyramid
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import BoundingBox2D, Detection2D, Detection2DArray, ObjectHypothesisWithPose

from .boxes import as_boxes
from .errors import InputError

SAMPLE_FORMAT = 'S16LE'
CODING_FORMAT = 'wave'

# encoding -> (dtype, channels)
IMAGE_ENCODINGS = {
    'rgb8': (np.dtype(np.uint8), 3),
    'bgr8': (np.dtype(np.uint8), 3),
    'mono8': (np.dtype(np.uint8), 1),
    '16UC1': (np.dtype(np.uint16), 1),
    '32FC1': (np.dtype(np.float32), 1),
}


# --------------------------------------------------------------------- stamps
def ns_to_stamp(ns: int) -> Time:
    """Nanoseconds since the epoch (or sim start) -> ``builtin_interfaces/Time``."""
    ns = int(ns)
    if ns < 0:
        raise InputError(f'negative stamp {ns} ns')
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def make_header(stamp_ns: int, frame_id: str = '') -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


# --------------------------------------------------------------------- images
def image_to_msg(image: np.ndarray, encoding: str, stamp_ns: int = 0, frame_id: str = '') -> Image:
    """Pack an array as ``sensor_msgs/Image`` (little endian, no row padding)."""
    if encoding not in IMAGE_ENCODINGS:
        raise InputError(f'unsupported image encoding {encoding!r} (supported: {", ".join(IMAGE_ENCODINGS)})')
    dtype, channels = IMAGE_ENCODINGS[encoding]
    arr = np.asarray(image)
    expected_ndim = 3 if channels > 1 else 2
    if arr.ndim != expected_ndim or (channels > 1 and arr.shape[2] != channels):
        raise InputError(f'{encoding} needs shape (H, W{", %d" % channels if channels > 1 else ""}), got {arr.shape}')
    if arr.dtype != dtype:
        raise InputError(f'{encoding} needs dtype {dtype}, got {arr.dtype}')
    arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder('<'))
    msg = Image(header=make_header(stamp_ns, frame_id), height=arr.shape[0], width=arr.shape[1],
                encoding=encoding, is_bigendian=0, step=arr.shape[1] * channels * dtype.itemsize)
    msg.data = arr.tobytes()
    return msg


def msg_to_image(msg: Image) -> np.ndarray:
    """Unpack ``sensor_msgs/Image`` into a new array; raises InputError on inconsistent fields."""
    if msg.encoding not in IMAGE_ENCODINGS:
        raise InputError(f'unsupported image encoding {msg.encoding!r} (supported: {", ".join(IMAGE_ENCODINGS)})')
    dtype, channels = IMAGE_ENCODINGS[msg.encoding]
    dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<')
    row = msg.width * channels * dtype.itemsize
    if msg.step < row:
        raise InputError(f'image step {msg.step} is smaller than a row of {row} bytes')
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != msg.step * msg.height:
        raise InputError(f'image data has {buf.size} bytes, expected step*height = {msg.step * msg.height}')
    rows = buf.reshape(msg.height, msg.step)[:, :row]
    arr = np.ascontiguousarray(rows).view(dtype)
    shape = (msg.height, msg.width, channels) if channels > 1 else (msg.height, msg.width)
    return arr.reshape(shape).astype(dtype.newbyteorder('='), copy=True)


# ---------------------------------------------------------------------- audio
def audio_info(channels: int, sample_rate: int) -> AudioInfo:
    """``AudioInfo`` for the project's wire format (S16LE, wave)."""
    return AudioInfo(channels=channels, sample_rate=sample_rate, sample_format=SAMPLE_FORMAT,
                     bitrate=channels * sample_rate * 16, coding_format=CODING_FORMAT)


def check_audio_info(info: AudioInfo) -> None:
    """Raise InputError unless ``info`` describes a stream this project can decode."""
    if info.sample_format != SAMPLE_FORMAT:
        raise InputError(f'audio sample_format {info.sample_format!r} is not supported (only {SAMPLE_FORMAT})')
    if info.coding_format not in (CODING_FORMAT, ''):
        raise InputError(f'audio coding_format {info.coding_format!r} is not supported (only {CODING_FORMAT!r})')
    if info.channels < 1 or info.sample_rate < 1:
        raise InputError(f'audio info has {info.channels} channels at {info.sample_rate} Hz')


def audio_to_msg(samples: np.ndarray, stamp_ns: int, frame_id: str = '') -> AudioDataStamped:
    """(N, C) int16 frames -> ``AudioDataStamped`` (interleaved S16LE); stamp = first frame."""
    arr = np.asarray(samples)
    if arr.ndim != 2:
        raise InputError(f'audio must have shape (frames, channels), got {arr.shape}')
    if arr.dtype != np.int16:
        raise InputError(f'audio must be int16 (use float_to_s16), got {arr.dtype}')
    msg = AudioDataStamped(header=make_header(stamp_ns, frame_id))
    msg.audio = AudioData()
    msg.audio.data = np.ascontiguousarray(arr, dtype='<i2').tobytes()
    return msg


def msg_to_audio(msg: AudioDataStamped, channels: int) -> np.ndarray:
    """``AudioDataStamped`` -> (N, channels) int16; InputError if bytes are not whole frames."""
    data = msg.audio.data
    raw = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(0, np.uint8)
    frame_bytes = 2 * channels
    if raw.size % frame_bytes:
        raise InputError(f'audio chunk of {raw.size} bytes is not a whole number of {channels}-channel '
                         f'S16LE frames ({frame_bytes} bytes each)')
    return raw.view('<i2').reshape(-1, channels).astype(np.int16)


def float_to_s16(samples: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1) -> int16 with clipping; NaN is an error, not silence."""
    arr = np.asarray(samples, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputError('audio contains NaN or infinite samples')
    return np.clip(np.round(arr * 32768.0), -32768, 32767).astype(np.int16)


def s16_to_float(samples: np.ndarray) -> np.ndarray:
    return np.asarray(samples, dtype=np.float32) / 32768.0


# ----------------------------------------------------------------- detections
@dataclass
class Detections:
    """Detections of one frame as arrays; ``ids`` are track or vehicle ids ('' if none)."""

    boxes: np.ndarray                 # (N, 4) xyxy pixels
    scores: np.ndarray                # (N,)
    labels: List[str]                 # class_id per box
    ids: List[str]

    def __len__(self) -> int:
        return len(self.scores)


def detections_to_msg(boxes, scores, labels: Optional[Sequence[str]] = None, ids: Optional[Iterable] = None,
                      stamp_ns: int = 0, frame_id: str = '') -> Detection2DArray:
    """Box arrays -> ``Detection2DArray`` (one hypothesis per detection)."""
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(b):
        raise InputError(f'{len(b)} boxes but {len(s)} scores')
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(s))):
        raise InputError('detections contain NaN or infinite values')
    labels = list(labels) if labels is not None else ['vehicle'] * len(b)
    ids = [str(i) for i in ids] if ids is not None else [''] * len(b)
    if len(labels) != len(b) or len(ids) != len(b):
        raise InputError(f'{len(b)} boxes but {len(labels)} labels and {len(ids)} ids')
    header = make_header(stamp_ns, frame_id)
    out = Detection2DArray(header=header)
    for (x1, y1, x2, y2), score, label, ident in zip(b, s, labels, ids):
        det = Detection2D(header=header, id=ident)
        det.bbox = BoundingBox2D(size_x=float(x2 - x1), size_y=float(y2 - y1))
        det.bbox.center.position.x = float(x1 + x2) / 2
        det.bbox.center.position.y = float(y1 + y2) / 2
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = str(label)
        hyp.hypothesis.score = float(score)
        det.results = [hyp]
        out.detections.append(det)
    return out


def msg_to_detections(msg: Detection2DArray) -> Detections:
    """``Detection2DArray`` -> arrays; each detection's best-scoring hypothesis gives label and score."""
    n = len(msg.detections)
    boxes = np.zeros((n, 4))
    scores = np.zeros(n)
    labels, ids = [], []
    for k, det in enumerate(msg.detections):
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        hw, hh = det.bbox.size_x / 2, det.bbox.size_y / 2
        boxes[k] = (cx - hw, cy - hh, cx + hw, cy + hh)
        if det.results:
            best = max(det.results, key=lambda r: r.hypothesis.score)
            scores[k] = best.hypothesis.score
            labels.append(best.hypothesis.class_id)
        else:
            scores[k] = 1.0
            labels.append('')
        ids.append(det.id)
    return Detections(boxes, scores, labels, ids)


# ------------------------------------------------------------------ attention
def attention_to_msg(maps: Sequence[np.ndarray], strides: Sequence[int], modality: str,
                     stamp_ns: int = 0, frame_id: str = '') -> AttentionPyramid:
    """Per-level (H, W) attention maps -> ``AttentionPyramid`` (row-major float32)."""
    if len(maps) != len(strides):
        raise InputError(f'{len(maps)} attention maps but {len(strides)} strides')
    msg = AttentionPyramid(header=make_header(stamp_ns, frame_id), modality=modality)
    for level, stride in zip(maps, strides):
        arr = np.asarray(level, dtype=np.float32)
        if arr.ndim != 2:
            raise InputError(f'attention map must be 2-D, got shape {arr.shape}')
        m = AttentionMap(stride=int(stride), height=arr.shape[0], width=arr.shape[1])
        m.data = array.array('f', arr.ravel().tobytes())
        msg.levels.append(m)
    return msg


def msg_to_attention(msg: AttentionPyramid) -> List[np.ndarray]:
    out = []
    for level in msg.levels:
        data = np.asarray(level.data, dtype=np.float32)
        if data.size != level.height * level.width:
            raise InputError(f'attention level of {level.height}x{level.width} carries {data.size} values')
        if not np.all(np.isfinite(data)) or np.any(data < 0):     # mean |F|^r: finite and >= 0
            raise InputError('attention map contains NaN, infinite or negative values')
        out.append(data.reshape(level.height, level.width))
    return out
