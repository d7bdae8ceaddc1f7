"""``recorder_node``: record what offline distillation needs into a rosbag2 bag (MCAP default).

Audio, audio_info, pseudo-labels and each teacher's detections always; camera images and
simulator ground truth when asked. The layout is that of ``mmdistill label``
(docs/data-formats.md §2), so a bag recorded on the car and a bag labelled offline feed
``mmdistill dataset build`` alike.

Messages are taken as serialized CDR (``raw=True``) and written unchanged: nothing is
decoded or re-encoded on the way. The log time is the message's header stamp by default
(``log_time=header``; the same as offline labelling, independent of transport delays) or
the receive time. The bag is closed, and so readable, on shutdown, on SIGINT/SIGTERM and
on any error.
"""
from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from rclpy.node import Node

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
        import time
        path = self.p['output'].replace('{stamp}', time.strftime('%Y%m%d-%H%M%S'))
        self.path = Path(path).expanduser()
        self.bag: Optional[BagWriter] = BagWriter(self.path, storage=self.p['storage'])
        self.counts: Dict[str, int] = {}
        self.topics = recorded_topics(self.p)
        for topic, msgtype, latched in self.topics:
            self.bag.add_topic(topic, msgtype, transient_local=latched)
            if latched:
                qos = latched_qos()
            else:
                qos = stream_qos(self.p['audio_reliability'] if topic == topics.AUDIO else self.p['reliability'],
                                 depth=100)
            _, sub_events = incompatible_qos_warner(self, topic)
            self.create_subscription(message_class(msgtype), topic,
                                     lambda data, t=topic, k=msgtype: self._write(t, k, data),
                                     qos, raw=True, event_callbacks=sub_events)
            self.counts[topic] = 0
        self.get_logger().info(f'recording {len(self.topics)} topics into {self.path}')

    def _write(self, topic: str, msgtype: str, data: bytes) -> None:
        if self.bag is None:
            return
        stamp = None
        if self.p['log_time'] == 'header' and msgtype not in _NO_HEADER:
            stamp = cdr_header_stamp_ns(data)
        if stamp is None:
            stamp = self.get_clock().now().nanoseconds
        self.bag.write_cdr(topic, data, stamp)
        self.counts[topic] += 1

    def close(self) -> None:
        """Finish the bag (idempotent); it is readable afterwards."""
        if self.bag is not None:
            bag, self.bag = self.bag, None
            bag.close()
            self.get_logger().info(f'closed {self.path}: ' +
                                   ', '.join(f'{t} {n}' for t, n in self.counts.items() if n))

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()


def main(args=None) -> int:
    return run_node('recorder_node', RecorderNode, args)


if __name__ == '__main__':
    sys.exit(main())
