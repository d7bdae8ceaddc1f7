"""``tracking_node``: student detections in, vehicle tracks (+ markers and an annotated image) out.

A thin wrapper over :mod:`mmdistill_tracking.tracker` and :mod:`mmdistill_tracking.visualization`.
It holds no model, so it is a plain node. Tracks are ``Detection2DArray`` messages with
``Detection2D.id`` = the track id, boxes clipped to the image. Bad detections (NaN, negative
size) are logged (throttled) and dropped; messages whose stamp goes backwards are dropped, and
after ``RESYNC_AFTER`` of them in a row (a restarted source or a rewound bag) the tracker starts
again.
"""
from __future__ import annotations

import sys
import time
from typing import Dict, List, Optional

import numpy as np
from geometry_msgs.msg import Point
from rclpy.node import Node
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray
from visualization_msgs.msg import Marker, MarkerArray

from mmdistill_common import topics
from mmdistill_common.boxes import iou_matrix
from mmdistill_common.conversions import (detections_to_msg, image_to_msg, make_header, msg_to_detections,
                                          stamp_to_ns)
from mmdistill_common.errors import ConfigError
from mmdistill_common.node_main import run_node
from mmdistill_common.params import Param, declare_parameters
from mmdistill_common.qos import incompatible_qos_warner, stream_qos

from .tracker import make_tracker
from .visualization import MarkerSpec, clip_boxes, draw_tracks, track_markers

PARAMS = [
    Param('tracker', 'kalman', "Tracker: 'iou' (the paper's: a track ends on its first miss) or 'kalman' "
          '(constant velocity, Hungarian assignment, coasting).', choices=('iou', 'kalman'), read_only=True),
    Param('iou_threshold', -1.0, 'IoU needed to continue a track (iou: iou_threshold; kalman: min_iou); '
          "-1 uses the tracker's default (0.5 iou, 0.3 kalman).", min=-1.0, max=1.0, read_only=True),
    Param('start_score', -1.0, "Score an unmatched detection needs to start a track; -1 uses the tracker's "
          'default (0.8 iou, 0.5 kalman).', min=-1.0, max=1.0, read_only=True),
    Param('min_score', 0.0, 'Detections scoring below this are ignored.', min=0.0, max=1.0, read_only=True),
    Param('max_coast', 3, 'kalman: frames a confirmed track survives without detections (0 = none).',
          min=0, max=1000, read_only=True),
    # these four chosen on the demo's val drives (its student's streaming detections, MOTA against the
    # headline truth): see the README's tracking section
    Param('n_init', 1, 'kalman: detections needed before a track is confirmed and output.', min=1, max=100,
          read_only=True),
    Param('suppress_iou', 0.2, 'kalman: a detection overlapping a higher-scored one of the same message at an '
          'IoU above this is dropped before association (1 = keep every detection).', min=0.01, max=1.0,
          read_only=True),
    Param('score_smoothing', 0.5, "kalman: weight of a track's newest detection in its running score "
          '(1 = the last detection\'s score).', min=0.01, max=1.0, read_only=True),
    Param('min_output_score', 0.45, 'kalman: a confirmed track is published only while its running '
          'score is at least this (0 = every confirmed track).', min=0.0, max=1.0, read_only=True),
    Param('frame_period', 0.1, 'kalman: nominal seconds between detection messages (1 / student rate); '
          'stamp differences are measured in these units.', min=0.001, max=10.0, read_only=True),
    Param('image_width', 768, 'Camera image width in pixels (tracks are clipped to it; annotated image size); '
          'the default is the simulator camera (768x256).',
          min=8, max=8192, read_only=True),
    Param('image_height', 256, 'Camera image height in pixels.', min=8, max=8192, read_only=True),
    Param('publish_image', True, f'Publish the annotated image on {topics.TRACK_IMAGE} (rgb8, dark canvas).',
          read_only=True),
    Param('publish_markers', True, f'Publish RViz markers on {topics.TRACK_MARKERS}.', read_only=True),
    Param('marker_frame', 'image_plane', 'Frame of the markers: pixel (u, v) at (u, -v, 0) * marker_scale m.',
          read_only=True),
    Param('marker_scale', 0.01, 'Metres per pixel in the marker frame.', min=1e-6, max=10.0, read_only=True),
]

LOG_PERIOD_S = 2.0
RESYNC_AFTER = 10

_MARKER_TYPES = {'line_strip': Marker.LINE_STRIP, 'text': Marker.TEXT_VIEW_FACING}


def marker_msg(spec: MarkerSpec, header) -> Marker:
    """:class:`MarkerSpec` -> ``visualization_msgs/Marker``."""
    m = Marker(header=header, ns=spec.ns, id=int(spec.id))
    if spec.kind == 'delete_all':
        m.action = Marker.DELETEALL
        return m
    m.type = _MARKER_TYPES[spec.kind]
    m.action = Marker.ADD
    m.pose.orientation.w = 1.0
    m.color.r, m.color.g, m.color.b, m.color.a = (float(c) for c in spec.color)
    if spec.kind == 'line_strip':
        m.scale.x = float(spec.scale)
        m.points = [Point(x=p[0], y=p[1], z=p[2]) for p in spec.points]
    else:
        m.scale.z = float(spec.scale)
        m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(c) for c in spec.position)
        m.text = spec.text
    return m


class TrackingNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__('tracking_node', **kwargs)
        self.p = declare_parameters(self, PARAMS)
        self._tracker_params = self._params_for_tracker()
        self.tracker = make_tracker(self.p['tracker'], **self._tracker_params)
        self._last_stamp: Optional[int] = None
        self._behind = 0
        self._last_log: Dict[str, float] = {}
        self.dropped: Dict[str, int] = {}
        self.published = 0
        pub_events, _ = incompatible_qos_warner(self, topics.TRACKS)
        self._pub_tracks = self.create_publisher(Detection2DArray, topics.TRACKS, stream_qos(),
                                                 event_callbacks=pub_events)
        self._pub_markers = self.create_publisher(MarkerArray, topics.TRACK_MARKERS, 10) \
            if self.p['publish_markers'] else None
        self._pub_image = self.create_publisher(Image, topics.TRACK_IMAGE, stream_qos(depth=5)) \
            if self.p['publish_image'] else None
        _, sub_events = incompatible_qos_warner(self, topics.STUDENT_DETECTIONS)
        self.create_subscription(Detection2DArray, topics.STUDENT_DETECTIONS, self._on_detections, stream_qos(),
                                 event_callbacks=sub_events)
        self.get_logger().info(f'{self.p["tracker"]} tracker {self._tracker_params} on {topics.STUDENT_DETECTIONS}')

    def _params_for_tracker(self) -> dict:
        p, kind = self.p, self.p['tracker']
        out = {}
        if kind == 'iou':
            if p['iou_threshold'] >= 0:
                out['iou_threshold'] = p['iou_threshold']
            if p['start_score'] >= 0:
                out['start_score'] = p['start_score']
        else:
            if p['iou_threshold'] >= 0:
                out['min_iou'] = p['iou_threshold']
            if p['start_score'] >= 0:
                out['min_start_score'] = p['start_score']
            out.update(max_age=p['max_coast'], n_init=p['n_init'], frame_period_s=p['frame_period'],
                       suppress_iou=p['suppress_iou'], score_smoothing=p['score_smoothing'],
                       min_output_score=p['min_output_score'])
        try:
            make_tracker(kind, **out)
        except ValueError as exc:
            raise ConfigError(f'tracker parameters: {exc}') from None
        return out

    def _drop(self, kind: str, text: str, n: int = 1) -> None:
        self.dropped[kind] = self.dropped.get(kind, 0) + n
        now = time.monotonic()
        if now - self._last_log.get(kind, -1e9) >= LOG_PERIOD_S:
            self._last_log[kind] = now
            self.get_logger().warning(f'{text} (dropped; {self.dropped[kind]} {kind} so far)')

    def _on_detections(self, msg: Detection2DArray) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        if self._last_stamp is not None and stamp < self._last_stamp:
            self._behind += 1
            if self._behind < RESYNC_AFTER:
                self._drop('out_of_order', f'detections stamped {stamp} ns, before the previous {self._last_stamp} ns')
                return
            self.get_logger().warning(f'detection stamps stayed behind for {RESYNC_AFTER} messages: '
                                      'tracker restarted on the new timeline')
            self.tracker.reset()
        self._behind = 0
        self._last_stamp = stamp
        dets = msg_to_detections(msg)
        b, s = dets.boxes, dets.scores
        good = np.all(np.isfinite(b), axis=1) & np.isfinite(s) & (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
        if not np.all(good):
            self._drop('bad_boxes', f'{int(np.sum(~good))} detections with NaN or negative-size boxes')
        keep = good & (s >= self.p['min_score'])
        b, s = b[keep], s[keep]
        labels = [lab for lab, k in zip(dets.labels, keep) if k]
        tracks = self.tracker.update(b, s, stamp_s=stamp * 1e-9)
        self._publish(msg.header, tracks, b, labels)

    def _publish(self, header, tracks, det_boxes: np.ndarray, det_labels: List[str]) -> None:
        W, H = self.p['image_width'], self.p['image_height']
        boxes = clip_boxes(np.array([t.box for t in tracks]).reshape(-1, 4), W, H)
        area_ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        tracks = [t for t, ok in zip(tracks, area_ok) if ok]
        boxes = boxes[area_ok]
        ids = [t.id for t in tracks]
        scores = [t.score for t in tracks]
        # class of a track: that of its best-overlapping detection in this frame
        labels = ['vehicle'] * len(tracks)
        if len(tracks) and len(det_boxes):
            iou = iou_matrix(boxes, det_boxes)
            for k in range(len(tracks)):
                j = int(np.argmax(iou[k]))
                if iou[k, j] > 0 and det_labels[j]:
                    labels[k] = det_labels[j]
        stamp = stamp_to_ns(header.stamp)
        self._pub_tracks.publish(detections_to_msg(boxes, scores, labels, ids, stamp_ns=stamp,
                                                   frame_id=header.frame_id))
        self.published += 1
        if self._pub_markers is not None:
            mh = make_header(stamp, self.p['marker_frame'])
            specs = track_markers(boxes, ids, scale=self.p['marker_scale'])
            self._pub_markers.publish(MarkerArray(markers=[marker_msg(s, mh) for s in specs]))
        if self._pub_image is not None:
            img = draw_tracks(boxes, ids, scores, W, H)
            self._pub_image.publish(image_to_msg(img, 'rgb8', stamp, header.frame_id))


def main(args=None) -> int:
    return run_node('tracking_node', TrackingNode, args)


if __name__ == '__main__':
    sys.exit(main())
