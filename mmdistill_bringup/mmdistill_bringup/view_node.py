"""``view_node``: the live graph's topics into a :class:`~.foxglove_view.FoxgloveView`.

A plain rclpy node with one subscription per topic of ``foxglove_view.SOURCE_TOPICS``; each
callback hands the message to the view. Streams are subscribed best effort: that matches
reliable and best-effort publishers alike, and a viewer that falls behind loses frames instead
of holding the graph's publishers back. ``audio_info`` is transient local, as published.
"""
from __future__ import annotations

from rclpy.node import Node

from mmdistill_common import topics as T
from mmdistill_common.bagio import message_class
from mmdistill_common.errors import MmdistillError
from mmdistill_common.qos import latched_qos, stream_qos

from .foxglove_view import SOURCE_TOPICS, STUDENT_ACOUSTIC_TOPIC, FoxgloveView

__all__ = ['ViewNode', 'TOPIC_TYPES']

#: message type of each topic the view reads
TOPIC_TYPES = {
    T.image_topic('rgb'): 'sensor_msgs/msg/Image',
    T.STUDENT_DETECTIONS: 'vision_msgs/msg/Detection2DArray',
    T.TRACKS: 'vision_msgs/msg/Detection2DArray',
    T.TRACK_MARKERS: 'visualization_msgs/msg/MarkerArray',
    **{T.teacher_detections_topic(m): 'vision_msgs/msg/Detection2DArray' for m in T.CAMERAS},
    T.PSEUDO_LABELS: 'mmdistill_msgs/msg/PseudoLabel',
    T.GROUND_TRUTH: 'vision_msgs/msg/Detection2DArray',
    T.AUDIO_INFO: 'audio_common_msgs/msg/AudioInfo',
    T.AUDIO: 'audio_common_msgs/msg/AudioDataStamped',
    STUDENT_ACOUSTIC_TOPIC: 'sensor_msgs/msg/Image',
}


class ViewNode(Node):
    """Subscribes the graph's topics and shows them in ``view`` (which it does not own)."""

    def __init__(self, view: FoxgloveView, node_name: str = 'foxglove_view', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.view = view
        self.received = {t: 0 for t in SOURCE_TOPICS}
        for topic in SOURCE_TOPICS:
            qos = latched_qos() if topic == T.AUDIO_INFO else stream_qos('best_effort', depth=10)
            self.create_subscription(message_class(TOPIC_TYPES[topic]), topic,
                                     lambda msg, topic=topic: self._on_message(topic, msg), qos)

    def _on_message(self, topic: str, msg) -> None:
        self.received[topic] += 1
        try:
            self.view.handle(topic, msg)
        except (ValueError, KeyError, MmdistillError) as exc:   # a malformed message must not stop the view
            self.get_logger().warning(f'{topic}: not shown: {exc}', throttle_duration_sec=5.0)
