"""The Foxglove view of the graph: ROS messages in, Foxglove channels out (server and/or MCAP).

:class:`FoxgloveView` owns a ``foxglove.Context`` with one channel per view topic (below) and
its sinks: a WebSocket server (``ws://HOST:PORT``, what the Foxglove app connects to) and/or an
MCAP file. :meth:`FoxgloveView.handle` takes a ROS message of a graph topic, as a live
subscription (:mod:`.view_node`) or a bag (:mod:`.foxglove_playback`) delivers it, and logs
what it shows; conversions are in :mod:`.foxglove_messages`, the direction energy in
:mod:`.acoustic_map`. rclpy is not needed (only the message packages).

Channels (all advertised from the start, so the shipped layout binds to them):

==========================  ==========================  ============================================
channel                     schema                      from
==========================  ==========================  ============================================
``/view/camera``            ``foxglove.CompressedImage``  RGB camera (JPEG); without a camera a dark
                                                        camera-sized canvas at each student message
``/view/student``           ``foxglove.ImageAnnotations`` ``/student/detections``
``/view/tracks``            ``foxglove.ImageAnnotations`` ``/tracking/tracks`` (``#id score``)
``/view/teachers/<m>``      ``foxglove.ImageAnnotations`` ``/teachers/<m>/detections`` (rgb, depth, thermal)
``/view/pseudo_labels``     ``foxglove.ImageAnnotations`` ``/pseudo_labels``
``/view/ground_truth``      ``foxglove.ImageAnnotations`` ``/sim/ground_truth`` (``#vehicle id class``)
``/view/acoustic``          ``foxglove.RawImage``         SRP-PHAT bearing-time heat map of the audio
``/view/student_acoustic``  ``foxglove.RawImage``         the student's own acoustic image, where it
                                                        publishes one (``/student/acoustic_image``)
``/view/scene``             ``foxglove.SceneUpdate``      ``/tracking/markers``
``/view/audio_levels``      ``mmdistill.AudioLevels``     per-microphone RMS / peak dBFS (JSON)
==========================  ==========================  ============================================
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from mmdistill_common import topics as T

from . import foxglove_messages as F
from .acoustic_map import ArrayGeometry, BearingHistory, SrpPhatMap, column_azimuths

__all__ = ['FoxgloveView', 'VIEW_CHANNELS', 'SOURCE_TOPICS', 'BOX_COLORS']

CAMERA = '/view/camera'
STUDENT = '/view/student'
TRACKS = '/view/tracks'
PSEUDO = '/view/pseudo_labels'
TRUTH = '/view/ground_truth'
ACOUSTIC = '/view/acoustic'
STUDENT_ACOUSTIC = '/view/student_acoustic'
#: rgb8 acoustic image of an acoustic-image student (student_node ``publish_acoustic_image``)
STUDENT_ACOUSTIC_TOPIC = '/student/acoustic_image'
SCENE = '/view/scene'
LEVELS = '/view/audio_levels'


def teacher_channel(modality: str) -> str:
    return f'/view/teachers/{modality}'


#: view channel -> Foxglove schema name, in the order they are advertised
VIEW_CHANNELS: Dict[str, str] = {
    CAMERA: 'foxglove.CompressedImage',
    STUDENT: 'foxglove.ImageAnnotations',
    TRACKS: 'foxglove.ImageAnnotations',
    **{teacher_channel(m): 'foxglove.ImageAnnotations' for m in T.CAMERAS},
    PSEUDO: 'foxglove.ImageAnnotations',
    TRUTH: 'foxglove.ImageAnnotations',
    ACOUSTIC: 'foxglove.RawImage',
    STUDENT_ACOUSTIC: 'foxglove.RawImage',
    SCENE: 'foxglove.SceneUpdate',
    LEVELS: F.AUDIO_LEVELS_SCHEMA_NAME,
}

#: graph topics the view reads (the live node subscribes exactly these)
SOURCE_TOPICS: Tuple[str, ...] = (T.image_topic('rgb'), T.STUDENT_DETECTIONS, T.TRACKS, T.TRACK_MARKERS,
                                  *(T.teacher_detections_topic(m) for m in T.CAMERAS), T.PSEUDO_LABELS,
                                  T.GROUND_TRUTH, T.AUDIO_INFO, T.AUDIO, STUDENT_ACOUSTIC_TOPIC)

#: one colour per box source (RGBA in [0, 1]); tracks are coloured by id instead
BOX_COLORS = {
    STUDENT: (1.0, 0.6, 0.0, 1.0),
    teacher_channel('rgb'): (1.0, 0.25, 0.25, 1.0),
    teacher_channel('depth'): (0.3, 0.6, 1.0, 1.0),
    teacher_channel('thermal'): (1.0, 0.3, 1.0, 1.0),
    PSEUDO: (0.2, 1.0, 0.3, 1.0),
    TRUTH: (1.0, 1.0, 1.0, 0.8),
}

HEATMAP_COLUMNS = 96          # directions across the image width
HEATMAP_ROWS = 30             # steps of history (3 s at 10 Hz)
BLOCK_S = 0.1                 # audio analysed per step (levels and direction energy)
CANVAS = (24, 26, 32)         # the tracking image's background (mmdistill_tracking.visualization)


def _channel(name: str, schema: str, context):
    import foxglove
    from foxglove import channels as fc
    if schema == F.AUDIO_LEVELS_SCHEMA_NAME:
        return foxglove.Channel(name, message_encoding='json', context=context,
                                schema=foxglove.Schema(name=schema, encoding='jsonschema',
                                                       data=F.audio_levels_schema_bytes()))
    cls = {'foxglove.CompressedImage': fc.CompressedImageChannel, 'foxglove.ImageAnnotations': fc.ImageAnnotationsChannel,
           'foxglove.RawImage': fc.RawImageChannel, 'foxglove.SceneUpdate': fc.SceneUpdateChannel}[schema]
    return cls(name, context=context)


def marker_specs(msg) -> List[Any]:
    """``visualization_msgs/MarkerArray`` -> :class:`~mmdistill_tracking.visualization.MarkerSpec`
    list (the inverse of tracking_node's ``marker_msg`` for the kinds it publishes)."""
    from visualization_msgs.msg import Marker

    from mmdistill_tracking.visualization import MarkerSpec
    out = []
    for m in msg.markers:
        color = (m.color.r, m.color.g, m.color.b, m.color.a)
        if m.action == Marker.DELETEALL:
            out.append(MarkerSpec('delete_all'))
        elif m.type == Marker.LINE_STRIP:
            out.append(MarkerSpec('line_strip', m.ns, m.id, [(p.x, p.y, p.z) for p in m.points], color=color,
                                  scale=m.scale.x))
        elif m.type == Marker.TEXT_VIEW_FACING:
            p = m.pose.position
            out.append(MarkerSpec('text', m.ns, m.id, position=(p.x, p.y, p.z), color=color, scale=m.scale.z,
                                  text=m.text))
    return out


class FoxgloveView:
    """Foxglove channels of the graph with a WebSocket server (``port``; None: no server; 0: any
    free port) and/or an MCAP file (``mcap``, must not exist). ``geometry``: the array and camera
    (default: the simulator's default car), for the heat map and the canvas size.
    ``server_options``: extra keyword arguments of ``foxglove.start_server`` (playback control)."""

    def __init__(self, port: Optional[int] = 8765, host: str = '127.0.0.1', mcap: Optional[Path] = None,
                 geometry: Optional[ArrayGeometry] = None, name: str = 'mmdistill',
                 server_options: Optional[Dict[str, Any]] = None) -> None:
        import foxglove
        self.geometry = geometry or ArrayGeometry.from_scenario()
        self.context = foxglove.Context()
        self.channels = {n: _channel(n, s, self.context) for n, s in VIEW_CHANNELS.items()}
        self.server = None
        self.mcap = None
        if mcap is not None:
            if Path(mcap).exists():
                raise FileExistsError(f'{mcap} already exists')
            self.mcap = foxglove.open_mcap(str(mcap), context=self.context)
        if port is not None:
            self.server = foxglove.start_server(name=name, host=host, port=port, context=self.context,
                                                **(server_options or {}))
        self.counts: Dict[str, int] = {n: 0 for n in self.channels}
        self._canvas: Optional[bytes] = None
        self._last_camera_ns: Optional[int] = None
        self._audio_channels: Optional[int] = None
        self._sample_rate: Optional[int] = None
        self._bearing: Optional[BearingHistory] = None
        self._ring = np.zeros((0, 0), np.int16)
        self._ring_end_ns: Optional[int] = None
        self._next_step_ns: Optional[int] = None
        self.warnings: List[str] = []

    # ------------------------------------------------------------------ sinks
    @property
    def port(self) -> Optional[int]:
        return None if self.server is None else self.server.port

    def close(self) -> None:
        """Stop the server and finish the MCAP file."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.mcap is not None:
            self.mcap.close()
            self.mcap = None

    def _log(self, channel: str, msg, log_time_ns: Optional[int]) -> None:
        self.channels[channel].log(msg, log_time=log_time_ns)
        self.counts[channel] += 1

    # ------------------------------------------------------------------ input
    def reset(self) -> None:
        """Forget the audio history (after a seek or a restarted source)."""
        self._ring = np.zeros((0, 0), np.int16)
        self._ring_end_ns = self._next_step_ns = None
        self._last_camera_ns = None
        if self._bearing is not None:
            self._bearing.reset()

    def handle(self, topic: str, msg, log_time_ns: Optional[int] = None) -> None:
        """Show one message of graph topic ``topic``; ``log_time_ns``: its log time (None = now)."""
        from mmdistill_common.conversions import msg_to_detections, msg_to_image, stamp_to_ns
        if topic == T.AUDIO_INFO:
            self._on_audio_info(msg)
        elif topic == T.AUDIO:
            self._on_audio(msg, log_time_ns)
        elif topic == T.image_topic('rgb'):
            stamp = stamp_to_ns(msg.header.stamp)
            self._last_camera_ns = stamp
            self._log(CAMERA, F.compressed_image(msg_to_image(msg), stamp, msg.header.frame_id or 'camera'),
                      log_time_ns)
        elif topic == STUDENT_ACOUSTIC_TOPIC:
            self._log(STUDENT_ACOUSTIC, F.raw_image(msg_to_image(msg), stamp_to_ns(msg.header.stamp), 'acoustic'),
                      log_time_ns)
        elif topic == T.TRACK_MARKERS:
            specs = marker_specs(msg)
            stamp = stamp_to_ns(msg.markers[0].header.stamp) if msg.markers else 0
            frame = next((m.header.frame_id for m in msg.markers if m.header.frame_id), 'image_plane')
            self._log(SCENE, F.scene_update(specs, stamp, frame), log_time_ns)
        else:
            channel = self._box_channel(topic)
            if channel is None:
                return
            arr = msg.detections if topic == T.PSEUDO_LABELS else msg
            stamp = stamp_to_ns(msg.header.stamp)
            self.boxes(channel, msg_to_detections(arr), stamp, log_time_ns)

    @staticmethod
    def _box_channel(topic: str) -> Optional[str]:
        if topic == T.STUDENT_DETECTIONS:
            return STUDENT
        if topic == T.TRACKS:
            return TRACKS
        if topic == T.PSEUDO_LABELS:
            return PSEUDO
        if topic == T.GROUND_TRUTH:
            return TRUTH
        for m in T.CAMERAS:
            if topic == T.teacher_detections_topic(m):
                return teacher_channel(m)
        return None

    def boxes(self, channel: str, dets, stamp_ns: int, log_time_ns: Optional[int] = None) -> None:
        """Log :class:`~mmdistill_common.conversions.Detections` on a box channel; on the student and
        track channels also a dark canvas on ``/view/camera`` when no camera image is near."""
        ids = dets.ids if channel in (TRACKS, TRUTH) else None
        labels = dets.labels if channel != TRACKS else None
        self._log(channel, F.box_annotations(dets.boxes, stamp_ns, ids=ids, scores=dets.scores, labels=labels,
                                             color=BOX_COLORS.get(channel), show_scores=channel != TRUTH),
                  log_time_ns)
        if channel == STUDENT and (self._last_camera_ns is None or abs(stamp_ns - self._last_camera_ns) > 1e9):
            self._log_canvas(stamp_ns, log_time_ns)

    def scene(self, specs, stamp_ns: int, log_time_ns: Optional[int] = None, frame_id: str = 'image_plane') -> None:
        """Log marker specs (as tracking_node publishes them) on ``/view/scene``."""
        self._log(SCENE, F.scene_update(specs, stamp_ns, frame_id), log_time_ns)

    def _log_canvas(self, stamp_ns: int, log_time_ns: Optional[int]) -> None:
        from foxglove.messages import CompressedImage
        if self._canvas is None:
            img = np.empty((self.geometry.height, self.geometry.width, 3), np.uint8)
            img[:] = CANVAS
            self._canvas = F.encode_image(img, 'png')
        self._log(CAMERA, CompressedImage(timestamp=F.timestamp(stamp_ns), frame_id='camera', data=self._canvas,
                                          format='png'), log_time_ns)

    # ------------------------------------------------------------------ audio
    def _on_audio_info(self, msg) -> None:
        if (msg.channels, msg.sample_rate) == (self._audio_channels, self._sample_rate):
            return
        self._audio_channels, self._sample_rate = int(msg.channels), int(msg.sample_rate)
        self.reset()
        g = self.geometry
        if self._audio_channels == len(g.mic_positions):
            az = column_azimuths(g.width, g.fx, g.cx, HEATMAP_COLUMNS)
            self._bearing = BearingHistory(SrpPhatMap(g.mic_positions, self._sample_rate, az,
                                                      speed_of_sound=g.speed_of_sound), HEATMAP_COLUMNS, HEATMAP_ROWS)
        else:
            self._bearing = None
            self.warnings.append(f'audio has {self._audio_channels} channels but the array geometry '
                                 f'{len(g.mic_positions)} microphones: no acoustic heat map')

    def _on_audio(self, msg, log_time_ns: Optional[int]) -> None:
        from mmdistill_common.conversions import msg_to_audio, stamp_to_ns
        from mmdistill_common.errors import InputError
        if self._audio_channels is None:
            return
        try:
            x = msg_to_audio(msg, self._audio_channels)
        except InputError:
            return
        stamp = stamp_to_ns(msg.header.stamp)
        block = int(BLOCK_S * self._sample_rate)
        if self._ring_end_ns is None or abs(stamp - self._ring_end_ns) > 0.2e9:   # a gap, a jump or the start
            self._ring = np.zeros((0, x.shape[1]), np.int16)
            self._next_step_ns = (stamp // int(BLOCK_S * 1e9) + 1) * int(BLOCK_S * 1e9)
        self._ring = np.concatenate([self._ring, x])[-block:]
        self._ring_end_ns = stamp + len(x) * 1_000_000_000 // self._sample_rate
        if self._ring_end_ns < self._next_step_ns or len(self._ring) < block:
            return
        step = self._next_step_ns
        self._next_step_ns = (self._ring_end_ns // int(BLOCK_S * 1e9) + 1) * int(BLOCK_S * 1e9)
        self._log(LEVELS, F.audio_levels(self._ring, step), log_time_ns)
        if self._bearing is not None:
            history = self._bearing.push(self._ring.astype(np.float32))
            vmax = max(0.05, float(np.nanmax(history)))
            self._log(ACOUSTIC, F.heatmap_image(history, step, vmin=0.0, vmax=vmax, scale=(2, 2)), log_time_ns)
