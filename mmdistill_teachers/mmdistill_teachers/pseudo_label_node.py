"""``pseudo_label_node``: fuse the three teachers' outputs of each frame into a ``PseudoLabel``.

Subscribes ``/teachers/<m>/detections`` and ``/teachers/<m>/attention`` for rgb, depth and
thermal, matches them with the approximate-time synchronizer (``mmdistill_common.sync``,
``slop``) and publishes ``/pseudo_labels`` through
:func:`mmdistill_teachers.labelling.fuse_messages`, the same call ``mmdistill label`` uses.

``missing_teacher_policy``: ``wait`` labels only frames for which all three teachers
delivered; ``partial`` also labels, ``max_wait`` seconds after its first message arrived, a
frame with what arrived within the slop (``PseudoLabel.modalities`` says which teachers it
holds). Counters (``stats``) are logged every ``summary_period`` seconds.

A teacher message stamped more than ``max_stamp_lead`` seconds after the latest message of
every other teacher input is dropped (``stats['stamp_ahead']``) before it reaches the
synchronizer: nothing could ever match it, and the synchronizer's queues (message_filters'
rule) evict the *oldest* stamps first, so ``queue_size`` such messages on one input used to
evict every valid message of that input on arrival, and the node stopped labelling for good
(found by the fuzz campaign: 10 000 messages with stamps 10^6 s ahead now and then). A clock
jump of all teachers costs the frame in flight (its messages are ahead until the last input
has jumped too).
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Dict

from mmdistill_msgs.msg import AttentionPyramid, PseudoLabel
from rclpy.node import Node
from vision_msgs.msg import Detection2DArray

from mmdistill_common import sync, topics
from mmdistill_common.conversions import stamp_to_ns
from mmdistill_common.errors import MmdistillError
from mmdistill_common.node_main import run_node
from mmdistill_common.params import Param, declare_parameters
from mmdistill_common.qos import incompatible_qos_warner, stream_qos

from .fusion import DEFAULT_MODALITIES
from .labelling import FusionConfig, PartialFrames, fuse_messages

PARAMS = [
    Param('score_threshold_rgb', 0.5, 'Fusion: RGB detections below this score are ignored.', min=0.0, max=1.0),
    Param('score_threshold_depth', 0.5, 'Fusion: depth detections below this score are ignored.', min=0.0, max=1.0),
    Param('score_threshold_thermal', 0.5, 'Fusion: thermal detections below this score are ignored.',
          min=0.0, max=1.0),
    Param('iou_threshold', 0.5, 'Fusion: NMS suppression / WBF clustering IoU (paper: 0.5).', min=0.01, max=1.0),
    Param('method', 'nms', 'Fusion: class-agnostic NMS over the union (paper) or weighted box fusion.',
          choices=('nms', 'wbf')),
    Param('max_detections', 50, 'At most this many pseudo-label boxes per frame.', min=1, max=10000),
    Param('class_names', ['vehicle'], 'Class ids the teachers emit, in model order.'),
    Param('slop', 0.05, 'Seconds by which the stamps of one frame\'s teacher messages may differ.',
          min=0.0, max=10.0),
    Param('queue_size', 30, 'Messages kept per input while waiting for a match.', min=1, max=10000),
    Param('max_stamp_lead', 10.0, 'Seconds a teacher message may be stamped after the latest message of every '
          'other teacher input; later ones are dropped (they could never be matched and would fill the '
          'synchronizer queue). 0 = no check.', min=0.0, max=1e9),
    Param('missing_teacher_policy', 'wait', 'wait: label only frames all three teachers delivered; partial: '
          'after max_wait seconds label a frame with the teachers that delivered.', choices=('wait', 'partial')),
    Param('max_wait', 0.5, 'partial policy: seconds to wait for a frame\'s missing teachers.', min=0.0, max=60.0),
    Param('reliability', 'reliable', 'QoS reliability of the teacher subscriptions and the output.',
          choices=('reliable', 'best_effort')),
    Param('summary_period', 10.0, 'Seconds between log lines with the counters; 0 = never.', min=0.0,
          max=3600.0),
]


class PseudoLabelNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__('pseudo_label_node', **kwargs)
        p = self.p = declare_parameters(self, PARAMS)
        self.modalities = DEFAULT_MODALITIES
        self.config = FusionConfig(
            score_thresholds={m: p[f'score_threshold_{m}'] for m in self.modalities},
            iou_threshold=p['iou_threshold'], method=p['method'], modalities=self.modalities,
            max_detections=p['max_detections'])
        self.class_names = tuple(p['class_names'])
        self.stats: Counter = Counter()
        qos = stream_qos(p['reliability'], depth=max(10, p['queue_size']))
        pub_events, _ = incompatible_qos_warner(self, topics.PSEUDO_LABELS)
        self._pub = self.create_publisher(PseudoLabel, topics.PSEUDO_LABELS, qos, event_callbacks=pub_events)
        inputs = []
        self._lead_ns = int(round(p['max_stamp_lead'] * 1e9))
        self._latest: Dict[tuple, int] = {}     # (modality, kind) -> latest (largest) stamp it delivered
        for m in self.modalities:
            for kind, msg_type, topic in (('det', Detection2DArray, topics.teacher_detections_topic(m)),
                                          ('att', AttentionPyramid, topics.teacher_attention_topic(m))):
                _, sub_events = incompatible_qos_warner(self, topic)
                gate = sync.SimpleFilter()       # what passes _on_message feeds the synchronizer
                self.create_subscription(msg_type, topic, lambda msg, _m=m, _k=kind, _g=gate:
                                         self._on_message(msg, _m, _k, _g), qos, event_callbacks=sub_events)
                inputs.append(gate)
        self._sync = sync.ApproximateTimeSynchronizer(inputs, queue_size=p['queue_size'], slop=p['slop'])
        self._sync.registerCallback(self._on_set)
        self._partial = None
        if p['missing_teacher_policy'] == 'partial':
            self._partial = PartialFrames(self.modalities, int(round(p['slop'] * 1e9)), p['max_wait'],
                                          queue_size=p['queue_size'])
            self.create_timer(max(0.01, min(0.1, p['max_wait'] / 2)), self._sweep)
        if p['summary_period'] > 0:
            self.create_timer(p['summary_period'], self.log_summary)
        self._last_summary: Dict[str, int] = {}
        self.get_logger().info(f'fusing {", ".join(self.modalities)} with {p["method"]} '
                               f'(policy {p["missing_teacher_policy"]}, slop {p["slop"]} s)')

    # ------------------------------------------------------------------ inputs
    def _on_message(self, msg, modality: str, kind: str, gate=None) -> None:
        self.stats[f'received_{modality}_{kind}'] += 1
        stamp = stamp_to_ns(msg.header.stamp)
        if self._ahead(modality, kind, stamp):
            self.stats['stamp_ahead'] += 1
            self.get_logger().warning(f'{modality} {kind} stamped {stamp} ns, more than max_stamp_lead after every '
                                      'other teacher input: dropped', throttle_duration_sec=5.0)
            return
        if self._partial is not None:
            if not self._partial.add(modality, kind, stamp, msg, time.monotonic()):
                self.stats['late'] += 1
        if gate is not None:             # then the synchronizer (the order sync.Subscriber had)
            gate.signalMessage(msg)

    def _ahead(self, modality: str, kind: str, stamp: int) -> bool:
        """Whether ``stamp`` is more than ``max_stamp_lead`` after the latest stamp of every other input
        (all of them must have delivered); the input's latest stamp is updated either way (a message
        stamped in the past lowers nothing)."""
        key = (modality, kind)
        others = [t for k, t in self._latest.items() if k != key]
        self._latest[key] = max(stamp, self._latest.get(key, stamp))
        return bool(self._lead_ns) and len(others) == 2 * len(self.modalities) - 1 and \
            stamp > min(others) + self._lead_ns

    def _on_set(self, *msgs) -> None:
        """A complete set from the synchronizer, in input order (det, att per modality)."""
        dets = {m: msgs[2 * i] for i, m in enumerate(self.modalities)}
        atts = {m: msgs[2 * i + 1] for i, m in enumerate(self.modalities)}
        stamp = stamp_to_ns(dets[self.modalities[0]].header.stamp)
        if self._partial is not None:
            if self._partial.already_fused(stamp):
                return                      # labelled partially before its late teacher came in
            used = {(m, k): stamp_to_ns(x.header.stamp) for m in self.modalities
                    for k, x in (('det', dets[m]), ('att', atts[m]))}
            self._partial.mark_fused(used, stamp)
        self._publish(stamp, dets, atts, partial=False)

    def _sweep(self) -> None:
        for anchor, dets, atts in self._partial.due(time.monotonic()):
            if not dets:
                self.stats['incomplete'] += 1
                continue
            ref = next(iter(dets.values()))
            stamp = stamp_to_ns(ref.header.stamp) if self.modalities[0] not in dets \
                else stamp_to_ns(dets[self.modalities[0]].header.stamp)
            self._publish(stamp, dets, atts, partial=True)

    def _publish(self, stamp: int, dets, atts, partial: bool) -> None:
        frame_id = next(iter(dets.values())).header.frame_id
        try:
            msg, fused = fuse_messages(stamp, dets, atts, self.config, self.class_names, frame_id=frame_id)
        except MmdistillError as exc:
            self.stats['invalid'] += 1
            self.get_logger().warning(f'dropped a frame: {exc}', throttle_duration_sec=5.0)
            return
        for m in self.modalities:
            if m not in dets:
                self.stats[f'missing_{m}'] += 1
        self.stats['fused_partial' if partial else 'fused'] += 1
        self._pub.publish(msg)

    def destroy_node(self) -> None:
        self.log_summary()            # the last counters, also when stopped by Ctrl-C
        super().destroy_node()

    def log_summary(self) -> None:
        current = dict(self.stats)
        if current == self._last_summary:
            return
        self._last_summary = current
        received = min((current.get(f'received_{m}_det', 0) for m in self.modalities), default=0)
        text = ', '.join(f'{k} {v}' for k, v in sorted(current.items()) if not k.startswith('received_'))
        self.get_logger().info(f'pseudo-labels: {text or "none yet"}; '
                               f'{received} frames from the slowest teacher')


def main(args=None) -> int:
    return run_node('pseudo_label_node', PseudoLabelNode, args)


if __name__ == '__main__':
    sys.exit(main())
