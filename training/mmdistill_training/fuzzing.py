"""Fuzz a node over DDS: thousands of malformed messages interleaved with valid ones.

The node under test runs in its own process through :func:`host` (``python -m
mmdistill_training.fuzzing NODE --ros-args ...``): the node's own class and ``main`` path
(``run_node``, lifecycle autostart), with two additions that do not touch the node's code:
every subscription callback is counted per topic, and the node's counters (``dropped``,
``stats``, ``counts``, ``published``, ``processed``, ``gaps``) are published as JSON on
``/fuzz/stats`` at 20 Hz.

The driver (:func:`fuzz_node`) publishes each node's cases (:data:`CASES`) in small batches
and waits until the node has taken every deliverable message of a batch before the next one
(the node's keep-last queues never overflow, so every count is exact). Random bytes are published
as serialized messages; DDS discards those that do not deserialize, and the node must survive the
rest. Each case states the counter change it must cause (``expect``), so at the end the node's
drop counters are compared with what was sent; its outputs are checked for validity and for
continuing after the last malformed message; the node must still be alive and exit 0 on SIGINT.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

STATS_TOPIC = '/fuzz/stats'
NODES = {
    'student_node': ('mmdistill_student.student_node', 'StudentNode', True),
    'tracking_node': ('mmdistill_tracking.tracking_node', 'TrackingNode', False),
    'teacher_node': ('mmdistill_teachers.teacher_node', 'TeacherNode', True),
    'pseudo_label_node': ('mmdistill_teachers.pseudo_label_node', 'PseudoLabelNode', False),
    'recorder_node': ('mmdistill_teachers.recorder_node', 'RecorderNode', False),
}
COUNTER_ATTRS = ('dropped', 'stats', 'counts', 'published', 'processed', 'gaps')
# nodes with raw (serialized) subscriptions: random bytes reach their callbacks too
RAW_SUBSCRIBERS = {'recorder_node'}


# ------------------------------------------------------------------------------------- host
def _snapshot(node, received: Dict[str, int]) -> dict:
    out = {'received': dict(received)}
    for attr in COUNTER_ATTRS:
        value = getattr(node, attr, None)
        if isinstance(value, dict):
            for k, v in value.items():
                out[f'{attr}.{k}'] = int(v)
        elif isinstance(value, int):
            out[attr] = value
    return out


def host(node_name: str, args: Optional[List[str]] = None) -> int:
    """Run ``node_name`` as its own ``main`` would, plus callback counts and ``/fuzz/stats``."""
    from std_msgs.msg import String

    from mmdistill_common.node_main import autostart, run_node
    module, cls_name, lifecycle = NODES[node_name]
    cls = getattr(importlib.import_module(module), cls_name)
    received: Dict[str, int] = {}

    class Counted(cls):
        def create_subscription(self, msg_type, topic, callback, qos_profile, **kwargs):
            received.setdefault(topic, 0)

            def counted(msg, _topic=topic, _cb=callback):
                received[_topic] += 1
                return _cb(msg)
            return super().create_subscription(msg_type, topic, counted, qos_profile, **kwargs)

    def start(node) -> None:
        if lifecycle:
            autostart(node)
        pub = node.create_publisher(String, STATS_TOPIC, 10)
        node.create_timer(0.05, lambda: pub.publish(String(data=json.dumps(_snapshot(node, received)))))
    return run_node(node_name, Counted, args, start=start)


# ------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """One message to send and the counter changes it must cause in the node."""
    kind: str
    topic: str
    msg: object                     # a message, or bytes (random serialized data)
    expect: Dict[str, int] = field(default_factory=dict)
    valid: bool = False
    sync: bool = False              # flush before and after (a latched topic: depth 1)


def _rand_bytes(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 3, 8, 17, 64, 300, 5000])
    head = rng.choice([b'', b'\x00\x01\x00\x00', b'\x00\x00\x00\x00'])
    return head + rng.randbytes(n)


def student_cases(rng: random.Random, n: int) -> Iterator[Case]:
    """Audio and AudioInfo for ``student_node`` (8 channels, 44.1 kHz checkpoint)."""
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo

    from mmdistill_common import topics
    from mmdistill_common.conversions import audio_info, make_header
    fs, ch = 44100, 8
    t = [5_000_000_000]            # next expected stamp of the valid stream

    def chunk(frames: int, stamp: int, channels: int = ch, nbytes: Optional[int] = None) -> AudioDataStamped:
        data = np.random.default_rng(rng.getrandbits(32)).integers(-3000, 3000, frames * channels, np.int16)
        raw = data.tobytes() if nbytes is None else rng.randbytes(nbytes)
        msg = AudioDataStamped(header=make_header(stamp, 'mic_array'))
        msg.audio.data = raw
        return msg

    last = [None]

    def valid(frames: int) -> Case:
        c = Case('valid', topics.AUDIO, chunk(frames, t[0]), valid=True)
        t[0] += round(frames * 1e9 / fs)
        last[0] = c.msg if frames >= 441 else None
        return c

    yield Case('audio_info', topics.AUDIO_INFO, audio_info(ch, fs), sync=True)
    for _ in range(30):
        yield valid(1764)
    sent = 31
    while sent < n - 60:
        kind = rng.choice(['valid'] * 6 + ['random_bytes', 'wrong_channels', 'odd_bytes', 'empty', 'huge_malformed',
                                           'huge_valid', 'past_stamp', 'future_jump', 'duplicate', 'bad_info'])
        if kind == 'valid':
            yield valid(rng.choice([1764, 1764, 441, 17, 4410]))
        elif kind == 'random_bytes':
            yield Case(kind, topics.AUDIO, _rand_bytes(rng))
        elif kind == 'wrong_channels':      # an odd number of frames of 6 or 2 channels: never whole 8-ch frames
            yield Case(kind, topics.AUDIO, chunk(2 * rng.randrange(200, 1000) + 1, t[0], rng.choice([2, 6])),
                       {'dropped.malformed': 1})
        elif kind == 'odd_bytes':
            yield Case(kind, topics.AUDIO, chunk(0, t[0], nbytes=16 * rng.randrange(1, 500) + rng.randrange(1, 16)),
                       {'dropped.malformed': 1})
        elif kind == 'empty':               # no samples at the expected stamp: accepted, no counter changes
            yield Case(kind, topics.AUDIO, chunk(0, t[0]))
            last[0] = None                  # but it is the previous chunk now: a repeat of the one before is
            #                                 out of order (and one of 1.5 s would resynchronise the stream)
        elif kind == 'huge_malformed':      # 2 MB that is not whole frames
            yield Case(kind, topics.AUDIO, chunk(0, t[0], nbytes=2_000_001), {'dropped.malformed': 1})
        elif kind == 'huge_valid':          # 1.5 s in one chunk (40 times the usual)
            c = valid(3 * fs // 2)
            c.kind = kind
            yield c
        elif kind == 'past_stamp':
            yield Case(kind, topics.AUDIO, chunk(1764, rng.choice([0, 1, t[0] - 3_600_000_000_000 if t[0] > 3.6e12
                                                                  else 1000])), {'dropped.out_of_order': 1})
        elif kind == 'future_jump':         # the source's clock jumped: the valid stream continues from there
            t[0] += rng.choice([10**10, 10**13, 10**16])
            c = valid(1764)
            c.kind, c.expect = kind, {'gaps': 1}
            yield c
        elif kind == 'duplicate':           # the previous valid chunk again (same stamp, same samples)
            if last[0] is None:
                yield valid(1764)
                sent += 1
            yield Case(kind, topics.AUDIO, last[0], {'dropped.duplicate': 1})
        elif kind == 'bad_info':            # a stream the checkpoint does not fit: audio dropped until a good one
            bad = rng.choice([audio_info(4, fs), audio_info(ch, 16000), audio_info(0, fs),
                              AudioInfo(channels=ch, sample_rate=fs, sample_format='F32LE', coding_format='wave'),
                              AudioInfo(channels=ch, sample_rate=fs, sample_format='S16LE', coding_format='mp3')])
            yield Case(kind, topics.AUDIO_INFO, bad, sync=True)
            k = rng.randrange(1, 4)
            for _ in range(k):
                c = valid(1764)
                c.kind, c.valid, c.expect = 'while_bad_info', False, {'dropped.mismatch': 1}
                yield c
            yield Case('audio_info', topics.AUDIO_INFO, audio_info(ch, fs), sync=True)
            yield valid(1764)               # a new segment starts with a chunk of the stream
            sent += k + 2
        sent += 1
    for _ in range(60):                     # a clean end: outputs must continue
        yield valid(1764)


def _dets(rng: random.Random, n: int, stamp: int, W: int = 384, H: int = 128, bad: str = ''):
    from mmdistill_common.conversions import detections_to_msg
    x0 = np.array([rng.uniform(0, W - 20) for _ in range(n)])
    y0 = np.array([rng.uniform(0, H - 20) for _ in range(n)])
    boxes = np.stack([x0, y0, x0 + [rng.uniform(2, 60) for _ in range(n)],
                      y0 + [rng.uniform(2, 40) for _ in range(n)]], 1) if n else np.zeros((0, 4))
    scores = np.array([rng.uniform(0.3, 1.0) for _ in range(n)])
    msg = detections_to_msg(boxes, scores, ['vehicle'] * n, stamp_ns=stamp, frame_id='camera')
    if bad and n:
        d = msg.detections[rng.randrange(n)]
        if bad == 'nan':
            d.bbox.center.position.x = rng.choice([math.nan, math.inf, -math.inf])
        elif bad == 'nan_score':
            d.results[0].hypothesis.score = rng.choice([math.nan, math.inf])
        elif bad == 'negative':
            d.bbox.size_x = -abs(d.bbox.size_x) - 1.0
    return msg


def tracking_cases(rng: random.Random, n: int) -> Iterator[Case]:
    """``Detection2DArray`` on /student/detections for ``tracking_node``."""
    from mmdistill_common import topics
    t = [1_000_000_000]
    topic = topics.STUDENT_DETECTIONS

    def valid(k: int, bad: str = '') -> Case:
        t[0] += 100_000_000
        return Case('valid', topic, _dets(rng, k, t[0], bad=bad), {'published': 1}, valid=True)

    for _ in range(10):
        yield valid(rng.randrange(0, 4))
    sent = 10
    while sent < n - 20:
        kind = rng.choice(['valid'] * 5 + ['random_bytes', 'nan', 'nan_score', 'negative', 'empty', 'huge',
                                           'past_stamp', 'future_jump'])
        if kind == 'valid':
            yield valid(rng.randrange(0, 6))
        elif kind == 'random_bytes':
            yield Case(kind, topic, _rand_bytes(rng))
        elif kind in ('nan', 'nan_score', 'negative'):    # bad boxes are dropped, the rest is tracked
            c = valid(rng.randrange(1, 5), bad=kind)
            c.kind, c.valid, c.expect = kind, False, {'published': 1, 'dropped.bad_boxes': 1}
            yield c
        elif kind == 'empty':
            c = valid(0)
            c.kind = kind
            yield c
        elif kind == 'huge':
            c = valid(rng.choice([200, 500]))
            c.kind = kind
            yield c
        elif kind == 'past_stamp':
            yield Case(kind, topic, _dets(rng, 2, rng.choice([0, t[0] - 10**12 if t[0] > 10**12 else 5])),
                       {'dropped.out_of_order': 1})
        elif kind == 'future_jump':
            t[0] += rng.choice([10**11, 10**15])
            c = valid(2)
            c.kind = kind
            yield c
        sent += 1
    for _ in range(20):
        yield valid(rng.randrange(1, 4))


def teacher_cases(rng: random.Random, n: int, modality: str = 'rgb', size=(384, 128)) -> Iterator[Case]:
    """Camera images for an rgb ``teacher_node`` of input size ``size``."""
    from sensor_msgs.msg import Image

    from mmdistill_common import topics
    from mmdistill_common.conversions import image_to_msg
    W, H = size
    topic = topics.image_topic(modality)
    t = [1_000_000_000]
    g = np.random.default_rng(rng.getrandbits(32))

    def valid() -> Case:
        t[0] += 100_000_000
        return Case('valid', topic, image_to_msg(g.integers(0, 255, (H, W, 3), np.uint8), 'rgb8', t[0], 'camera'),
                    {'processed': 1}, valid=True)

    def bad(kind: str, msg) -> Case:
        return Case(kind, topic, msg, {'dropped.InputError': 1})

    for _ in range(5):
        yield valid()
    sent = 5
    while sent < n - 10:
        kind = rng.choice(['valid'] * 8 + ['random_bytes', 'encoding', 'size', 'short_data', 'step', 'empty',
                                           'float_nan', 'unknown_encoding'] * 2 + ['huge'])
        t[0] += 1_000_000
        if kind == 'valid':
            yield valid()
        elif kind == 'random_bytes':
            yield Case(kind, topic, _rand_bytes(rng))
        elif kind == 'encoding':       # a depth image on the rgb camera
            yield bad(kind, image_to_msg(g.random((H, W), np.float32), '32FC1', t[0]))
        elif kind == 'float_nan':
            a = g.random((H, W), np.float32)
            a[0, 0] = np.nan
            yield bad(kind, image_to_msg(a, '32FC1', t[0]))
        elif kind == 'size':           # another resolution than the teacher's input
            h, w = rng.choice([(H // 2, W), (H, W + 8), (1, 1), (H * 2, W * 2)])
            yield bad(kind, image_to_msg(g.integers(0, 255, (h, w, 3), np.uint8), 'rgb8', t[0]))
        elif kind == 'short_data':
            m = image_to_msg(g.integers(0, 255, (H, W, 3), np.uint8), 'rgb8', t[0])
            m.data = bytes(m.data[:rng.randrange(0, len(m.data) - 1)])
            yield bad(kind, m)
        elif kind == 'step':
            m = image_to_msg(g.integers(0, 255, (H, W, 3), np.uint8), 'rgb8', t[0])
            m.step = rng.choice([0, 1, W * 3 - 1])
            yield bad(kind, m)
        elif kind == 'empty':
            yield bad(kind, Image(header=image_to_msg(np.zeros((1, 1, 3), np.uint8), 'rgb8', t[0]).header,
                                  encoding='rgb8'))
        elif kind == 'huge':           # HD, now and then 4K
            h, w = (2160, 3840) if rng.random() < 0.02 else (720, 1280)
            yield bad(kind, image_to_msg(np.zeros((h, w, 3), np.uint8), 'rgb8', t[0]))
        elif kind == 'unknown_encoding':
            m = image_to_msg(g.integers(0, 255, (H, W, 3), np.uint8), 'rgb8', t[0])
            m.encoding = rng.choice(['yuv422', '', 'RGB8', 'rgb16'])
            yield bad(kind, m)
        sent += 1
    for _ in range(10):
        yield valid()


def pseudo_label_cases(rng: random.Random, n: int) -> Iterator[Case]:
    """Teacher detections and attention (3 modalities) for ``pseudo_label_node``: a frame is six
    messages with one stamp; malformed frames carry NaN boxes or attention of the wrong size."""
    from mmdistill_msgs.msg import AttentionMap, AttentionPyramid

    from mmdistill_common import topics
    from mmdistill_common.conversions import make_header
    mods = ('rgb', 'depth', 'thermal')
    t = [1_000_000_000]

    def att(stamp: int, m: str, bad: str = '') -> AttentionPyramid:
        levels = []
        for stride, (h, w) in ((8, (16, 48)), (16, (8, 24)), (32, (4, 12))):
            data = np.random.default_rng(stamp % 2**32).random(h * w).astype(np.float32)
            if bad == 'att_nan':
                data[0] = np.nan
            if bad == 'att_size':
                data = data[:-1]
            levels.append(AttentionMap(stride=stride, height=h, width=w, data=data.tolist()))
        return AttentionPyramid(header=make_header(stamp, 'camera'), modality=m, levels=levels)

    def frame(kind: str, bad: str = '') -> List[Case]:
        t[0] += 100_000_000
        bad_mod = rng.choice(mods)
        out = []
        for m in mods:
            b = bad if m == bad_mod else ''
            out.append(Case(kind, topics.teacher_detections_topic(m),
                            _dets(rng, rng.randrange(1, 4), t[0], bad=b if b in ('nan', 'negative') else '')))
            out.append(Case(kind, topics.teacher_attention_topic(m), att(t[0], m, b if b.startswith('att') else '')))
        out[-1].expect = {'stats.fused': 1} if not bad else {'stats.invalid': 1}
        out[-1].valid = not bad
        out[-1].sync = True            # a frame is matched by the synchronizer before the next is sent
        return out

    for _ in range(3):                 # every input has delivered: the node can tell a stamp far ahead
        yield from frame('valid')
    sent = 18
    while sent < n - 60:
        kind = rng.choice(['valid'] * 3 + ['random_bytes', 'nan', 'negative', 'att_nan', 'att_size', 'lone_past',
                                           'lone_future'])
        if kind == 'valid':
            cases = frame('valid')
        elif kind == 'random_bytes':
            m = rng.choice(mods)
            cases = [Case(kind, rng.choice([topics.teacher_detections_topic(m), topics.teacher_attention_topic(m)]),
                          _rand_bytes(rng))]
        elif kind in ('lone_past', 'lone_future'):   # one teacher message nothing can match: no output
            stamp = rng.choice([0, 1]) if kind == 'lone_past' else t[0] + 10**15
            cases = [Case(kind, topics.teacher_detections_topic(rng.choice(mods)), _dets(rng, 1, stamp),
                          {'stats.stamp_ahead': 1} if kind == 'lone_future' else {})]
        else:
            cases = frame(kind, bad=kind)
        yield from cases
        sent += len(cases)
    for _ in range(10):
        yield from frame('valid')


def recorder_cases(rng: random.Random, n: int) -> Iterator[Case]:
    """Everything the recorder records, malformed or not: it must store every delivered message."""
    from audio_common_msgs.msg import AudioInfo

    from mmdistill_common import topics
    from mmdistill_common.conversions import audio_info
    audio = list(student_cases(rng, n // 3))
    dets = [Case(c.kind, topics.teacher_detections_topic('depth'), c.msg, valid=c.valid)
            for c in tracking_cases(rng, n // 3)]
    labels = [c for c in pseudo_label_cases(rng, 2 * (n // 3)) if c.topic.endswith('detections')]
    pool = [c for c in audio + dets + labels if c.topic != topics.AUDIO_INFO]
    while len(pool) < n - 1 - n // 500:      # audio_info cases left out above: top up to n in all
        pool += [Case(c.kind, topics.teacher_detections_topic('thermal'), c.msg, valid=c.valid)
                 for c in tracking_cases(rng, max(40, n - 1 - n // 500 - len(pool)))]
    pool = pool[:max(0, n - 1 - n // 500)]
    rng.shuffle(pool)
    yield Case('audio_info', topics.AUDIO_INFO, audio_info(8, 44100), {f'counts.{topics.AUDIO_INFO}': 1}, sync=True)
    for i, c in enumerate(pool):
        if i % 500 == 250:
            yield Case('bad_info', topics.AUDIO_INFO, AudioInfo(channels=0, sample_rate=0, sample_format='x'),
                       {f'counts.{topics.AUDIO_INFO}': 1}, sync=True)
        # raw subscriptions receive random bytes too: the recorder must leave them out
        expect = {'dropped.undecodable': 1} if isinstance(c.msg, bytes) else {f'counts.{c.topic}': 1}
        yield Case(c.kind, c.topic, c.msg, expect, valid=c.valid)


CASES: Dict[str, Callable[[random.Random, int], Iterator[Case]]] = {
    'student_node': student_cases, 'tracking_node': tracking_cases, 'teacher_node': teacher_cases,
    'pseudo_label_node': pseudo_label_cases, 'recorder_node': recorder_cases,
}


# ----------------------------------------------------------------------------------- driver
def _msg_type(topic: str):
    from mmdistill_common import topics
    from mmdistill_common.bagio import message_class
    from mmdistill_teachers.recorder_node import recorded_topics
    table = {t: k for t, k, _ in recorded_topics({'record_teacher_detections': True, 'record_images': True,
                                                  'record_ground_truth': True})}
    table[topics.STUDENT_DETECTIONS] = table[topics.TRACKS] = 'vision_msgs/msg/Detection2DArray'
    for m in topics.CAMERAS:
        table[topics.teacher_attention_topic(m)] = 'mmdistill_msgs/msg/AttentionPyramid'
    return message_class(table[topic])


# trailing valid cases of each generator, sent also when the time budget ends the campaign early
CLEAN_TAIL = {'student_node': 60, 'tracking_node': 20, 'teacher_node': 10, 'pseudo_label_node': 60,
              'recorder_node': 0}


def fuzz_node(node_name: str, n_messages: int, workdir: Path, seed: int = 0, params: Optional[List[str]] = None,
              batch: int = 16, timeout: float = 120.0, stall_s: float = 10.0, budget_s: Optional[float] = None,
              cases: Optional[List[Case]] = None) -> dict:
    """Run one node under :func:`host`, send ``n_messages`` cases (or ``cases``), and report what happened.

    Flow control: after each batch of ``batch`` cases (and around ``sync`` cases) the driver waits
    until the node's own callback counters (``received`` per topic, on ``/fuzz/stats``) show that
    every message sent so far was taken. A wait ends early only when those counters made no
    progress for ``stall_s`` seconds; what had not arrived then is counted as lost in transport
    (per topic) and the campaign goes on at once. ``timeout`` bounds the node's start-up only.

    Random bytes go out through their own raw writer per topic, never through the writer of the
    valid messages, and a raw writer that sent an empty (zero-length) payload is replaced: with
    Fast DDS 3.2 (rmw_fastrtps_cpp) a zero-length serialized sample is never delivered and leaves
    that reliable writer-reader pair stalled for good (every later sample of that writer is held
    back, while other writers still reach the reader). Sent through the valid stream's writer it
    silently cut the node off from its input (the "stall" of ``pseudo_label_node`` after about
    1 560 messages, seed 0). For nodes with raw subscriptions (the recorder) each random-bytes case
    is waited for on its own, so its counter is expected only when it was delivered.

    With ``budget_s``, cases stop after that many seconds and the generator's clean tail is sent;
    the report counts what was actually sent.

    Needs ``rclpy`` initialised in this process (the fuzz publisher and the output collectors
    are nodes here, spun by this function)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    from mmdistill_common import topics
    from mmdistill_common.qos import latched_qos, stream_qos

    rng = random.Random(seed)
    cases = list(CASES[node_name](rng, n_messages)) if cases is None else list(cases)
    cmd = [sys.executable, '-m', 'mmdistill_training.fuzzing', node_name, '--ros-args']
    for p in params or []:
        cmd += ['-p', p]
    log_path = workdir / f'{node_name}.log'
    log = open(log_path, 'w')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    node = rclpy.create_node(f'fuzzer_{node_name}_{os.getpid()}')
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    stats: Dict[str, dict] = {'now': {}}
    node.create_subscription(String, STATS_TOPIC, lambda m: stats.__setitem__('now', json.loads(m.data)), 10)
    outputs: Dict[str, list] = {}
    out_topics = {'student_node': [topics.STUDENT_DETECTIONS], 'tracking_node': [topics.TRACKS],
                  'teacher_node': [topics.teacher_detections_topic('rgb'), topics.teacher_attention_topic('rgb')],
                  'pseudo_label_node': [topics.PSEUDO_LABELS], 'recorder_node': []}.get(node_name, [])
    for t in out_topics:
        outputs[t] = []
        node.create_subscription(_msg_type(t), t, lambda m, _t=t: outputs[_t].append(m), stream_qos(depth=1000))

    def qos_for(topic: str):
        return latched_qos() if topic == topics.AUDIO_INFO else stream_qos()
    pubs, raw_pubs = {}, {}
    for c in cases:
        table = raw_pubs if isinstance(c.msg, bytes) else pubs
        if c.topic not in table:
            table[c.topic] = node.create_publisher(_msg_type(c.topic), c.topic, qos_for(c.topic))

    def spin_until(pred, limit: float) -> bool:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.01)
            if pred():
                return True
        return pred()

    def node_received() -> Dict[str, int]:
        return stats['now'].get('received', {})

    report = {'node': node_name, 'seed': seed, 'stall_s': stall_s, 'batch': batch}
    expected: Counter = Counter()         # per topic: messages the node's callbacks must have taken
    lost: Counter = Counter()             # per topic: sent, not taken when a wait gave up, not taken since
    late: Counter = Counter()             # per topic: not taken when a wait gave up, but taken afterwards
    raw_missing: Counter = Counter()      # per topic: random bytes a raw subscription never got
    unexpected: Counter = Counter()       # per topic: taken beyond what was sent (random bytes that decoded)
    given_up = [0]

    def short() -> Dict[str, int]:
        r = node_received()
        return {t: n - r.get(t, 0) for t, n in expected.items() if n > r.get(t, 0)}

    def drain(stall: float = stall_s) -> Dict[str, int]:
        """Wait until the node took everything sent so far, or its counters stood still for ``stall`` s;
        returns what was lost (and books it), so that the next wait starts from what arrived."""
        last_total, last_change = -1, time.monotonic()
        while short() and proc.poll() is None:
            ex.spin_once(timeout_sec=0.01)
            total, now = sum(node_received().values()), time.monotonic()
            if total != last_total:
                last_total, last_change = total, now
            elif now - last_change > stall:
                break
        gone = short()
        if gone:
            given_up[0] += 1
        for t, k in gone.items():
            lost[t] += k
            expected[t] -= k
        for t, n in node_received().items():
            if n > expected[t]:           # what a wait gave up on came after all; anything beyond: unexpected
                back = min(n - expected[t], lost[t])
                lost[t] -= back
                late[t] += back
                unexpected[t] += n - expected[t] - back
                expected[t] = n
        return gone

    def replace_raw(topic: str) -> None:
        node.destroy_publisher(raw_pubs[topic])
        raw_pubs[topic] = node.create_publisher(_msg_type(topic), topic, qos_for(topic))
        spin_until(lambda: raw_pubs[topic].get_subscription_count() >= 1, timeout)
        spin_until(lambda: False, 0.2)    # and the node's reader matches it

    try:
        ok = spin_until(lambda: proc.poll() is not None or (
            stats['now'] and all(p.get_subscription_count() >= 1
                                 for p in list(pubs.values()) + list(raw_pubs.values()))), timeout)
        if proc.poll() is not None or not ok:
            raise RuntimeError(f'{node_name} did not come up:\n{log_path.read_text()[-3000:]}')
        spin_until(lambda: False, 0.5)
        base = dict(stats['now'])
        expected.update(base.get('received', {}))
        t0 = time.monotonic()
        pending = randoms = raw_delivered = raw_lost = empties = last_bad_index = 0
        kinds: Counter = Counter()
        seconds: Counter = Counter()          # time from a case's publication to the next one's
        expect: Counter = Counter()
        raw_node = node_name in RAW_SUBSCRIBERS
        mark, prev = time.monotonic(), None
        tail_start = len(cases) - CLEAN_TAIL.get(node_name, 0)
        skipped = 0
        for i, c in enumerate(cases):
            if budget_s is not None and i < tail_start and time.monotonic() - t0 > budget_s:
                skipped += 1
                continue
            now = time.monotonic()
            if prev is not None:
                seconds[prev] += now - mark
            mark, prev = now, c.kind
            kinds[c.kind] += 1
            if not c.valid:
                last_bad_index = i
            is_raw = isinstance(c.msg, bytes)
            if c.sync or pending >= batch or (is_raw and raw_node):
                drain()
                pending = 0
            if is_raw:
                randoms += 1
                raw_pubs[c.topic].publish(c.msg)
                if raw_node:              # delivered or not: wait for this one alone
                    expected[c.topic] += 1
                    gone = drain(min(stall_s, 2.0))
                    if gone:
                        raw_lost += 1
                        for t, k in gone.items():
                            lost[t] -= k
                            raw_missing[t] += k
                    else:
                        raw_delivered += 1
                        expect.update(c.expect)
                else:                     # a typed subscription never takes undecodable bytes
                    expect.update(c.expect)
                if not c.msg:
                    empties += 1
                    replace_raw(c.topic)
            else:
                pubs[c.topic].publish(c.msg)
                expected[c.topic] += 1
                expect.update(c.expect)
                pending += 1
                if c.sync:
                    drain()
                    pending = 0
            if proc.poll() is not None:
                break
        drain()
        # the last outputs and counters: until the counters stand still for a second
        settled = [dict(stats['now']), time.monotonic()]

        def still() -> bool:
            if stats['now'] != settled[0]:
                settled[:] = [dict(stats['now']), time.monotonic()]
            return time.monotonic() - settled[1] > 1.0
        spin_until(lambda: proc.poll() is not None or still(), max(5.0, 4 * stall_s))
        elapsed = time.monotonic() - t0
        alive = proc.poll() is None
        final = dict(stats['now'])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        ex.remove_node(node)
        ex.shutdown()
        node.destroy_node()
    delta = {k: final.get(k, 0) - base.get(k, 0) for k in set(final) | set(base) if k != 'received'}
    delivered = sum(final.get('received', {}).values()) - sum(base.get('received', {}).values())
    mismatches = {k: {'expected': expect.get(k, 0), 'got': delta.get(k, 0)}
                  for k in set(expect) | {k for k in delta if k.startswith('dropped.')}
                  if expect.get(k, 0) != delta.get(k, 0)}
    sent = len(cases) - skipped
    report.update({
        'messages': sent, 'generated': len(cases), 'stopped_by_budget': skipped > 0,
        'kinds': dict(kinds), 'seconds_by_kind': {k: round(v, 2) for k, v in seconds.most_common()},
        'random_bytes_sent': randoms, 'empty_payloads_sent': empties,
        'random_bytes_delivered': raw_delivered if raw_node else sum(unexpected.values()),
        'random_bytes_not_delivered': raw_lost if raw_node else randoms - sum(unexpected.values()),
        'delivered': delivered, 'alive_at_end': alive, 'exit_status': proc.returncode,
        'crashes': 0 if alive and proc.returncode == 0 else 1,
        'counters_delta': dict(sorted(delta.items())), 'counters_expected': dict(sorted(expect.items())),
        'counter_mismatches': mismatches,
        # valid or malformed typed messages that never reached the node's callbacks
        'lost_in_transport': sum(lost.values()), 'lost_by_topic': {t: k for t, k in lost.items() if k},
        'late_after_wait_gave_up': {t: k for t, k in late.items() if k},
        'random_bytes_missing_by_topic': dict(raw_missing),
        'unexpected_deliveries': dict(unexpected), 'waits_given_up': given_up[0],
        'wall_s': round(elapsed, 1), 'messages_per_s': round(sent / max(elapsed, 1e-9), 1),
        'log': str(log_path),
    })
    report['outputs'] = check_outputs(node_name, outputs, cases, last_bad_index, final, base, workdir)
    return report


def node_params(node_name: str, workdir: Path) -> List[str]:
    """Parameters that give ``node_name`` something to run with: a random-weight student
    (score threshold 0.05, so that windows have detections), a sharpened untrained rgb teacher
    with a deep queue, a recorder bag in ``workdir``."""
    if node_name == 'student_node':
        import torch
        from mmdistill_student.checkpoint import save_checkpoint
        from mmdistill_student.model import StudentConfig, StudentDetector
        torch.manual_seed(0)
        ckpt = save_checkpoint(StudentDetector(StudentConfig(score_threshold=0.05)), workdir / 'student',
                               info={'note': 'random weights (fuzzing)'})
        return [f'checkpoint:={ckpt}', 'rate:=2.0']     # fewer windows: the node's input paths are the target
    if node_name == 'teacher_node':
        from mmdistill_teachers.testing import save_sharp_teachers
        return [f'teachers_dir:={save_sharp_teachers(workdir / "teachers")}', 'modality:=rgb', 'queue_depth:=50']
    if node_name == 'recorder_node':
        return [f'output:={workdir / "fuzz_bag"}', 'record_teacher_detections:=true']
    return []


def check_recorded_bag(report: dict, workdir: Path) -> dict:
    """After a recorder run: the bag opens, every message decodes, and the counts per topic are
    what the recorder took."""
    from mmdistill_common.bagio import BagReader
    n, per_topic = 0, Counter()
    with BagReader(workdir / 'fuzz_bag') as reader:
        for m in reader.messages():
            n += 1
            per_topic[m.topic] += 1
    counted = {k[len('counts.'):]: v for k, v in report['counters_delta'].items() if k.startswith('counts.')}
    return {'messages': n, 'all_decoded': True, 'matches_recorder_counts': dict(per_topic) == {
        t: v for t, v in counted.items() if v}}


def check_outputs(node_name: str, outputs: Dict[str, list], cases: List[Case], last_bad: int,
                  final: dict, base: dict, workdir: Path) -> dict:
    """Validity of what the node published (finite boxes, scores in [0, 1], stamps of inputs) and
    whether it kept publishing after the last malformed message."""
    from mmdistill_common.conversions import msg_to_detections, stamp_to_ns
    res: dict = {}
    if node_name == 'recorder_node':
        return res            # checked on the bag by the caller (bench / test)
    from vision_msgs.msg import Detection2DArray
    for topic, msgs in outputs.items():
        bad = 0
        stamps = []
        for m in msgs:
            stamps.append(stamp_to_ns(m.header.stamp))
            det = m if isinstance(m, Detection2DArray) else getattr(m, 'detections', None)   # PseudoLabel
            if isinstance(det, Detection2DArray):
                d = msg_to_detections(det)
                ok = np.all(np.isfinite(d.boxes)) and np.all(np.isfinite(d.scores)) and \
                    np.all((d.scores >= 0) & (d.scores <= 1))
            else:                                       # AttentionPyramid
                ok = all(np.all(np.isfinite(np.asarray(level.data))) for level in m.levels)
            bad += not ok
        valid_after = [stamp_to_ns(c.msg.header.stamp) for c in cases[last_bad + 1:]
                       if c.valid and not isinstance(c.msg, bytes)]
        after = sum(1 for s in stamps if valid_after and s >= min(valid_after) - 2_000_000_000)
        res[topic] = {'received': len(msgs), 'invalid': bad, 'after_last_malformed': after}
    return res


if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] not in NODES:
        print(f'usage: python -m mmdistill_training.fuzzing {{{",".join(NODES)}}} [--ros-args ...]', file=sys.stderr)
        sys.exit(2)
    sys.exit(host(sys.argv[1], sys.argv))
