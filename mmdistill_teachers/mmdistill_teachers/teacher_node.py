"""``teacher_node``: one teacher detector (RGB, depth or thermal) on a live camera stream.

A lifecycle node and a thin wrapper over :func:`mmdistill_teachers.labelling.run_teacher`:
every image becomes a ``Detection2DArray`` on ``/teachers/<m>/detections`` and an
``AttentionPyramid`` on ``/teachers/<m>/attention``, both stamped with the image's stamp,
exactly as ``mmdistill label`` produces them offline.

Lifecycle: *configure* reads the weights (refused -> FAILURE, node stays unconfigured) and
creates the publishers; *activate* subscribes to the camera; *deactivate* unsubscribes (the
model stays loaded so re-activation is instant); *cleanup* / *shutdown* release the model.
With ``autostart`` (default) ``main()`` configures and activates the node itself, since pip
mode has no lifecycle manager or ``ros2 lifecycle`` CLI.

Bad images (wrong encoding, wrong size, NaN thermal, ...) are logged (throttled), counted in
``dropped`` and skipped; the node keeps running.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Optional

from mmdistill_msgs.msg import AttentionPyramid
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from mmdistill_common import topics
from mmdistill_common.conversions import msg_to_image, stamp_to_ns
from mmdistill_common.errors import MmdistillError
from mmdistill_common.node_main import autostart, run_node
from mmdistill_common.params import Param, declare_parameters
from mmdistill_common.qos import incompatible_qos_warner, stream_qos

from .labelling import run_teacher

PARAMS = [
    Param('modality', 'rgb', 'Which camera this teacher watches; selects the image topic, the output '
          'topics and the weights file.', choices=('rgb', 'depth', 'thermal'), read_only=True),
    Param('weights', '', 'Teacher weights file (.safetensors written by save_teacher). Empty: '
          '<teachers_dir>/<modality>.safetensors.'),
    Param('teachers_dir', '', 'Teachers directory (the layout of `mmdistill teachers train --out`), used '
          'when weights is empty.'),
    Param('score_threshold', -1.0, 'Detections below this score are not published; negative = the value '
          'stored with the weights. Fusion applies its own per-teacher threshold on top.', min=-1.0, max=1.0),
    Param('nms_iou', -1.0, 'IoU of the teacher\'s own NMS; negative = the value stored with the weights.',
          min=-1.0, max=1.0),
    Param('max_detections', 0, 'At most this many detections per image; 0 = the value stored with the weights.',
          min=0, max=10000),
    Param('device', 'cpu', 'torch device for inference (cpu, cuda, cuda:1, ...).'),
    Param('image_qos_reliability', 'reliable', 'QoS reliability of the camera subscription; must be '
          'compatible with the camera (a best_effort camera needs best_effort here).',
          choices=('reliable', 'best_effort')),
    Param('queue_depth', 2, 'Camera subscription queue; a teacher slower than the camera keeps only the '
          'newest images.', min=1, max=1000),
    Param('frame_id', '', 'frame_id of the outputs; empty = the image\'s frame_id.'),
    Param('autostart', True, 'main() configures and activates the node by itself (no lifecycle manager '
          'needed).', read_only=True),
]


def weights_path(values: dict) -> Path:
    """The weights file the parameters name (``weights``, else ``teachers_dir/<modality>``)."""
    from mmdistill_common.errors import ConfigError

    from .weights import teacher_path
    if values['weights']:
        return Path(values['weights']).expanduser()
    if values['teachers_dir']:
        return teacher_path(Path(values['teachers_dir']).expanduser(), values['modality'])
    raise ConfigError('set the parameter weights (a .safetensors file) or teachers_dir')


class TeacherNode(LifecycleNode):
    """Runs one teacher on its camera; see the module docstring for the lifecycle."""

    def __init__(self, node_name: str = 'teacher_node', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.p = declare_parameters(self, PARAMS)
        self.modality: str = self.p['modality']
        self.model: Optional[object] = None          # TeacherDetector while configured
        self._det_pub: Optional[object] = None       # LifecyclePublisher[Detection2DArray]
        self._att_pub: Optional[object] = None       # LifecyclePublisher[AttentionPyramid]
        self._sub: Optional[object] = None           # camera subscription while active
        self.processed = 0
        self.dropped: Counter = Counter()

    @property
    def state(self) -> str:
        """Label of the current lifecycle state ('unconfigured', 'inactive', 'active', ...)."""
        return self._state_machine.current_state[1]

    # ---------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the weights and create the (lifecycle) publishers.

        SUCCESS: model loaded. FAILURE: the weights are missing, unreadable or not a
        ``modality`` teacher (logged); the node stays unconfigured and can be retried."""
        from .weights import load_teacher
        self.p = {p.name: p.check(self.get_parameter(p.name).value) for p in PARAMS}
        try:
            path = weights_path(self.p)
            self.model = load_teacher(path, modality=self.modality, device=self.p['device'])
        except (MmdistillError, RuntimeError) as exc:
            self.get_logger().error(f'cannot load the {self.modality} teacher: {exc}')
            return TransitionCallbackReturn.FAILURE
        pub_events, _ = incompatible_qos_warner(self, topics.teacher_detections_topic(self.modality))
        self._det_pub = self.create_lifecycle_publisher(
            Detection2DArray, topics.teacher_detections_topic(self.modality), stream_qos(depth=10))
        self._att_pub = self.create_lifecycle_publisher(
            AttentionPyramid, topics.teacher_attention_topic(self.modality), stream_qos(depth=10))
        self.get_logger().info(f'{self.modality} teacher loaded from {path} '
                               f'(input {self.model.input_size[0]}x{self.model.input_size[1]})')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the camera; publishers become active. Always SUCCESS."""
        topic = topics.image_topic(self.modality)
        _, sub_events = incompatible_qos_warner(self, topic)
        self._sub = self.create_subscription(
            Image, topic, self.on_image,
            stream_qos(self.p['image_qos_reliability'], depth=self.p['queue_depth']),
            event_callbacks=sub_events)
        self.get_logger().info(f'listening on {topic}')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop listening; the model stays loaded. Always SUCCESS."""
        self._unsubscribe()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model and publishers. Always SUCCESS."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None

    def _release(self) -> None:
        for pub in (self._det_pub, self._att_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._det_pub = self._att_pub = None
        self.model = None

    # --------------------------------------------------------------------- data
    def on_image(self, msg: Image) -> None:
        """One camera image -> detections + attention (bad images: log, count, drop)."""
        if self.model is None:
            return
        try:
            image = msg_to_image(msg)
            p = self.p
            (det, att), = run_teacher(
                self.model, [image], [stamp_to_ns(msg.header.stamp)], [p['frame_id'] or msg.header.frame_id],
                score_threshold=None if p['score_threshold'] < 0 else p['score_threshold'],
                nms_iou=None if p['nms_iou'] < 0 else p['nms_iou'],
                max_detections=p['max_detections'] or None)
        except MmdistillError as exc:
            reason = type(exc).__name__
            self.dropped[reason] += 1
            self.get_logger().warning(f'dropped {self.modality} image: {exc} '
                                      f'({sum(self.dropped.values())} dropped so far)',
                                      throttle_duration_sec=5.0)
            return
        self._det_pub.publish(det)
        self._att_pub.publish(att)
        self.processed += 1


def main(args=None) -> int:
    return run_node('teacher_node', TeacherNode, args,
                    start=lambda node: autostart(node, f' for the {node.modality} teacher'))


if __name__ == '__main__':
    sys.exit(main())
