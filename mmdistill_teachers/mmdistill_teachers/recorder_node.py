"""``recorder_node``: record what offline distillation needs into a rosbag2 bag (MCAP default).

Audio, audio_info, pseudo-labels and each teacher's detections always; camera images and
simulator ground truth when asked. The layout is that of ``mmdistill label``
(docs/data-formats.md §2), so a bag recorded on the car and a bag labelled offline feed
``mmdistill dataset build`` alike.

Messages are taken as serialized CDR (``raw=True``) and written unchanged: nothing is
re-encoded on the way. A raw subscription also hands over data that is no message at all (a
broken driver's bytes, which a typed subscription never sees); such data is decoded once as a
check, counted in ``dropped['undecodable']`` and left out, since one undecodable message would
make every reader of the bag fail. The log time is the message's header stamp by default
(``log_time=header``; the same as offline labelling, independent of transport delays) or
the receive time. The bag is closed, and so readable, on shutdown, on SIGINT/SIGTERM and
on any error. A SIGKILL or power loss costs at most the last ``flush_period`` s (the bag is flushed
and fsync'ed that often; ``mmdistill bag recover`` restores the rest), and with ``max_bag_duration``
/ ``max_bag_size`` the recording is split into complete bags ``{output}_0``, ``{output}_1``, ...
(like ``ros2 bag record --max-bag-duration/--max-bag-size``), each starting with the last
transient-local messages (``audio_info``) so that every split stands alone.
"""
from __future__ import annotations

import struct
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from rclpy.node import Node
from rclpy.serialization import deserialize_message

from mmdistill_common import topics
from mmdistill_common.bagio import BagWriter, message_class
from mmdistill_common.node_main import run_node
from mmdistill_common.params import Param, declare_parameters
from mmdistill_common.qos import incompatible_qos_warner, latched_qos, stream_qos

PARAMS = [
    Param('output', 'recording', 'Bag directory to create (must not exist); {stamp} is replaced by the '
          'start time (YYYYmmdd-HHMMSS).', read_only=True),
    Param('storage', 'mcap', 'rosbag2 storage plugin of the bag.', choices=('mcap', 'sqlite3'), read_only=True),
    Param('record_images', False, 'Also record the three camera images (large).', read_only=True),
    Param('record_ground_truth', False, 'Also record /sim/ground_truth and /sim/truth (simulator only).',
          read_only=True),
    Param('record_teacher_detections', True, 'Also record each teacher\'s own detections '
          '(/teachers/<m>/detections, for single-teacher baselines).', read_only=True),
    Param('log_time', 'header', 'Bag log time of a message: its header stamp (as offline labelling) or the '
          'time it was received.', choices=('header', 'receive'), read_only=True),
    Param('audio_reliability', 'reliable', 'QoS reliability of the audio subscription; best_effort can lose '
          'chunks, which become gaps in the recording.', choices=('reliable', 'best_effort'), read_only=True),
    Param('reliability', 'reliable', 'QoS reliability of every other stream subscription.',
          choices=('reliable', 'best_effort'), read_only=True),
    Param('flush_period', 1.0, 'Seconds between flushes of the bag to disk (MCAP chunk closed and fsync\'ed, '
          'sqlite3 committed): what a SIGKILL or power loss can cost at most.', min=0.05, max=600.0,
          read_only=True),
    Param('max_bag_duration', 0.0, 'Split the recording into a new bag after this many seconds (0: never); '
          'the bags are {output}_0, {output}_1, ...', min=0.0, max=1e6, read_only=True),
    Param('max_bag_size', 0, 'Split the recording into a new bag after this many bytes of messages '
          '(0: never).', min=0, max=2**62, read_only=True),
]

# messages whose serialized form starts with std_msgs/Header (stamp first) -> header log time
_NO_HEADER = {'audio_common_msgs/msg/AudioInfo'}


def cdr_header_stamp_ns(data: bytes) -> Optional[int]:
    """Stamp of a serialized message that starts with a ``std_msgs/Header``, or None.

    CDR: 4 bytes encapsulation (byte 1: 0/2 big endian, 1/3 little endian), then
    ``builtin_interfaces/Time`` = int32 sec, uint32 nanosec."""
    if len(data) < 12:
        return None
    endian = '<' if data[1] & 1 else '>'
    sec, nanosec = struct.unpack(endian + 'iI', bytes(data[4:12]))
    if sec < 0 or nanosec >= 1_000_000_000:
        return None
    return sec * 1_000_000_000 + nanosec


def recorded_topics(p: dict) -> List[Tuple[str, str, bool]]:
    """``[(topic, type name, transient_local)]`` that the parameters ``p`` ask to record."""
    out = [(topics.AUDIO, 'audio_common_msgs/msg/AudioDataStamped', False),
           (topics.AUDIO_INFO, 'audio_common_msgs/msg/AudioInfo', True),
           (topics.PSEUDO_LABELS, 'mmdistill_msgs/msg/PseudoLabel', False)]
    if p['record_teacher_detections']:
        out += [(topics.teacher_detections_topic(m), 'vision_msgs/msg/Detection2DArray', False)
                for m in topics.CAMERAS]
    if p['record_images']:
        out += [(topics.image_topic(m), 'sensor_msgs/msg/Image', False) for m in topics.CAMERAS]
    if p['record_ground_truth']:
        out += [(topics.GROUND_TRUTH, 'vision_msgs/msg/Detection2DArray', False),
                (topics.SIM_TRUTH, 'mmdistill_msgs/msg/SimTruth', False)]
    return out


class RecorderNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__('recorder_node', **kwargs)
        self.p = declare_parameters(self, PARAMS)
        path = self.p['output'].replace('{stamp}', time.strftime('%Y%m%d-%H%M%S'))
        self.path = Path(path).expanduser()
        self._split = self.p['max_bag_duration'] > 0 or self.p['max_bag_size'] > 0
        self.paths: List[Path] = []          # every bag written, in order
        self.counts: Dict[str, int] = {}
        self.dropped: Dict[str, int] = {}
        self.topics = recorded_topics(self.p)
        self._classes = {t: message_class(k) for t, k, _ in self.topics}
        self._latched_topics = {t for t, _, latched in self.topics if latched}
        self._latched: Dict[str, Tuple[bytes, int]] = {}    # last transient-local message per topic
        self.bag: Optional[BagWriter] = None
        self._open_bag()
        for topic, msgtype, latched in self.topics:
            if latched:
                qos = latched_qos()
            else:
                qos = stream_qos(self.p['audio_reliability'] if topic == topics.AUDIO else self.p['reliability'],
                                 depth=100)
            _, sub_events = incompatible_qos_warner(self, topic)
            self.create_subscription(self._classes[topic], topic,
                                     lambda data, t=topic, k=msgtype: self._write(t, k, data),
                                     qos, raw=True, event_callbacks=sub_events)
            self.counts[topic] = 0
        # a quiet stream is flushed too
        self.create_timer(min(self.p['flush_period'], 0.5), self._on_timer)
        self.get_logger().info(f'recording {len(self.topics)} topics into {self.bag.path}' +
                               (' (split by duration / size)' if self._split else ''))

    def _open_bag(self) -> None:
        """Open the next bag (the only one, or the next split) with the recorded topics and the
        last transient-local messages."""
        path = Path(f'{self.path}_{len(self.paths)}') if self._split else self.path
        self.bag = BagWriter(path, storage=self.p['storage'], flush_period_s=self.p['flush_period'])
        self.paths.append(path)
        self._opened = time.monotonic()
        self._received_in_split = 0          # a split without new messages is never closed
        for topic, msgtype, latched in self.topics:
            self.bag.add_topic(topic, msgtype, transient_local=latched)
        for topic, (data, stamp) in self._latched.items():
            self.bag.write_cdr(topic, data, stamp)

    def _split_due(self) -> bool:
        p = self.p
        return self._split and self._received_in_split > 0 and (
            (p['max_bag_duration'] > 0 and time.monotonic() - self._opened >= p['max_bag_duration']) or
            (p['max_bag_size'] > 0 and self.bag.bytes_written >= p['max_bag_size']))

    def _on_timer(self) -> None:
        if self.bag is None:
            return
        if self._split_due():
            self._next_split()
        else:
            self.bag.flush_if_due()

    def _next_split(self) -> None:
        self.bag.close()
        self.get_logger().info(f'closed {self.bag.path} ({sum(self.bag.counts.values())} messages)')
        self._open_bag()

    def _write(self, topic: str, msgtype: str, data: bytes) -> None:
        if self.bag is None:
            return
        try:
            deserialize_message(data, self._classes[topic])
        except Exception:       # noqa: BLE001 - rclpy raises RMWError (and others) for bytes that are no message
            self.dropped['undecodable'] = self.dropped.get('undecodable', 0) + 1
            self.get_logger().warning(f'{topic}: dropped data that is no {msgtype} '
                                      f'({self.dropped["undecodable"]} so far)', throttle_duration_sec=5.0)
            return
        stamp = None
        if self.p['log_time'] == 'header' and msgtype not in _NO_HEADER:
            stamp = cdr_header_stamp_ns(data)
        if stamp is None:
            stamp = self.get_clock().now().nanoseconds
        if self._split_due():
            self._next_split()
        self.bag.write_cdr(topic, data, stamp)
        self.counts[topic] += 1
        self._received_in_split += 1
        if topic in self._latched_topics:
            self._latched[topic] = (bytes(data), stamp)

    def close(self) -> None:
        """Finish the bag (idempotent); it is readable afterwards."""
        if self.bag is not None:
            bag, self.bag = self.bag, None
            bag.close()
            self.get_logger().info(f'closed {", ".join(map(str, self.paths))}: ' +
                                   ', '.join(f'{t} {n}' for t, n in self.counts.items() if n))

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


def main(args=None) -> int:
    return run_node('recorder_node', RecorderNode, args)


if __name__ == '__main__':
    sys.exit(main())
