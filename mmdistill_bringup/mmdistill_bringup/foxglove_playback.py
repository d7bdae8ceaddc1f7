"""A bag replayed into the Foxglove view, with the app's play, pause, speed and seek controls.

:class:`BagViewPlayer` reads a rosbag2 bag (recorded, labelled or simulated; MCAP or sqlite3)
with ``rosbags`` from any log time, hands each message of the view's topics to a
:class:`~.foxglove_view.FoxgloveView` at its bag time (``log_time`` = bag time, so the app's
timeline is the bag's), and answers the app's playback-control requests: the server advertises
``PlaybackControl`` and ``Time`` with the bag's time range, and the app's play / pause / speed /
seek arrive in :meth:`BagViewPlayer.on_playback_control_request` (foxglove-sdk's
``ServerListener``). Playback starts paused and plays when the first client subscribes.

With a student checkpoint (:class:`StudentOnBag`) the bag's audio also goes through the
ROS-free :class:`~mmdistill_student.runtime.StudentRuntime` and tracker, as in
``mmdistill replay-eval --offline``, so a drive without recorded detections shows the student's
boxes, tracks and markers; after a seek they start again one window later (the runtime needs a
full window of audio). :meth:`BagViewPlayer.export` writes every channel to MCAP as fast as it
can instead (``mmdistill view --bag B --mcap OUT``).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, List, Optional, Tuple

import numpy as np
from foxglove.websocket import ServerListener

from mmdistill_common import topics as T
from mmdistill_common.errors import InputError

from .acoustic_map import ArrayGeometry
from .foxglove_view import SOURCE_TOPICS, STUDENT, TRACKS, FoxgloveView

__all__ = ['BagViewPlayer', 'StudentOnBag']

TIME_PERIOD_NS = 50_000_000       # broadcast the playback time at most at 20 Hz


class StudentOnBag:
    """Student runtime + tracker on a bag's audio, as student_node -> tracking_node would run
    them with their default parameters (``tracker``: iou or kalman)."""

    def __init__(self, checkpoint, rate_hz: float = 10.0, tracker: str = 'kalman') -> None:
        from mmdistill_student.checkpoint import load_checkpoint
        from mmdistill_student.runtime import StudentRuntime
        model, meta = load_checkpoint(checkpoint)
        self.runtime = StudentRuntime(model, meta, rate_hz=rate_hz)
        self.width, self.height = (int(v) for v in meta['config'].get('image_size', (384, 128)))
        self.kind = tracker
        self.channels = int(meta['channels'])
        self.reset()

    def reset(self) -> None:
        from mmdistill_tracking import tracking_node
        from mmdistill_tracking.tracker import make_tracker
        values = {p.name: p.default for p in tracking_node.PARAMS}
        values['tracker'] = self.kind
        self.min_score = float(values['min_score'])
        self.tracker = make_tracker(self.kind, **tracking_node.TrackingNode._params_for_tracker(
            SimpleNamespace(p=values)))
        self.runtime.reset()

    def set_stream(self, channels: int, sample_rate: int) -> None:
        self.runtime.set_stream(channels, sample_rate)
        self.channels = channels

    def push(self, msg) -> List[Tuple[int, object, object]]:
        """An audio message -> ``[(stamp, student Detections, track Detections)]`` for each
        window it completes (bad chunks are dropped, as by student_node)."""
        from mmdistill_common.conversions import Detections, msg_to_audio, stamp_to_ns
        from mmdistill_tracking.visualization import clip_boxes
        try:
            self.runtime.push(msg_to_audio(msg, self.channels), stamp_to_ns(msg.header.stamp))
        except InputError:
            return []
        out = []
        for stamp, d in self.runtime.step():
            n = len(d['scores'])
            dets = Detections(np.asarray(d['boxes']).reshape(-1, 4), np.asarray(d['scores']), ['vehicle'] * n,
                              [''] * n)
            keep = dets.scores >= self.min_score
            tracks = self.tracker.update(dets.boxes[keep], dets.scores[keep], stamp_s=stamp * 1e-9)
            boxes = clip_boxes(np.array([t.box for t in tracks]).reshape(-1, 4), self.width, self.height)
            out.append((stamp, dets, Detections(boxes, np.array([t.score for t in tracks]), ['vehicle'] * len(tracks),
                                                [str(t.id) for t in tracks])))
        return out


class _BagStream:
    """The view's topics of a bag in log-time order from a start time (rclpy messages)."""

    def __init__(self, path) -> None:
        from rosbags.rosbag2 import Reader
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f'bag {self.path} does not exist')
        try:
            self.reader = Reader(self.path)
            self.reader.open()
        except Exception as exc:   # rosbags raises several types for damaged bags
            raise InputError(f'cannot open bag {self.path}: {exc}') from exc
        self.connections = [c for c in self.reader.connections if c.topic in SOURCE_TOPICS]
        if not self.connections:
            raise InputError(f'bag {self.path} has none of the topics the view shows ({", ".join(SOURCE_TOPICS)})')
        self.topics = sorted({c.topic for c in self.connections})
        self.start_ns, self.end_ns = int(self.reader.start_time), int(self.reader.end_time)

    def messages(self, start_ns: Optional[int] = None, topics=None) -> Iterator[Tuple[int, str, object]]:
        from rclpy.serialization import deserialize_message

        from mmdistill_common.bagio import message_class
        conns = [c for c in self.connections if topics is None or c.topic in topics]
        classes = {c.id: message_class(c.msgtype) for c in conns}
        try:
            for conn, stamp, data in self.reader.messages(connections=conns, start=start_ns):
                yield int(stamp), conn.topic, deserialize_message(bytes(data), classes[conn.id])
        except Exception as exc:
            raise InputError(f'bag {self.path} is damaged or truncated: {exc}') from exc

    def close(self) -> None:
        self.reader.close()


class BagViewPlayer(ServerListener):
    """Serve ``bag`` on ``ws://host:port`` with playback control (``port`` None: no server, for
    :meth:`export`). ``student``: a :class:`StudentOnBag` to run on the audio (optional)."""

    def __init__(self, bag, port: Optional[int] = 8765, host: str = '127.0.0.1', mcap: Optional[Path] = None,
                 geometry: Optional[ArrayGeometry] = None, student: Optional[StudentOnBag] = None) -> None:
        from foxglove.websocket import Capability, PlaybackStatus
        self.bag = _BagStream(bag)
        self.student = student
        self._lock = threading.RLock()
        self._status = PlaybackStatus.Paused
        self.speed = 1.0
        self.current_ns = self.bag.start_ns
        self._iter: Optional[Iterator] = None
        self._pending = None
        self._anchor: Tuple[float, int] = (time.monotonic(), self.current_ns)
        self._last_time_sent = 0
        self._started = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        options = None
        if port is not None:
            options = dict(capabilities=[Capability.PlaybackControl, Capability.Time], server_listener=self,
                           playback_time_range=(self.bag.start_ns, self.bag.end_ns))
        try:
            self.view = FoxgloveView(port=port, host=host, mcap=mcap, geometry=geometry, name=str(self.bag.path),
                                     server_options=options)
        except BaseException:
            self.bag.close()
            raise
        for _, topic, msg in self.bag.messages(topics=[T.AUDIO_INFO]):    # the stream description, once
            self._info(msg)
            break
        self._seek(self.bag.start_ns)

    # ------------------------------------------------------------ state (under the lock)
    @property
    def status(self) -> str:
        return self._status.name

    def _info(self, msg) -> None:
        self.view.handle(T.AUDIO_INFO, msg)
        if self.student is not None:
            self.student.set_stream(msg.channels, msg.sample_rate)

    def _seek(self, t_ns: int) -> None:
        t_ns = min(max(int(t_ns), self.bag.start_ns), self.bag.end_ns)
        self.view.reset()
        if self.student is not None:
            self.student.reset()
        topics = [t for t in self.bag.topics if t != T.AUDIO_INFO]
        self._iter = self.bag.messages(t_ns, topics)
        self._pending = None
        self.current_ns = t_ns
        self._anchor = (time.monotonic(), t_ns)

    def _emit(self, stamp: int, topic: str, msg) -> None:
        """Show one bag message (and what the student makes of it) at bag time ``stamp``."""
        self.view.handle(topic, msg, log_time_ns=stamp)
        if topic == T.AUDIO and self.student is not None:
            from mmdistill_tracking.visualization import track_markers
            for det_stamp, dets, tracks in self.student.push(msg):
                self.view.boxes(STUDENT, dets, det_stamp, stamp)
                self.view.boxes(TRACKS, tracks, det_stamp, stamp)
                self.view.scene(track_markers(tracks.boxes, tracks.ids), det_stamp, stamp)

    def _state(self, did_seek: bool = False, request_id: Optional[str] = None):
        from foxglove.websocket import PlaybackState
        return PlaybackState(status=self._status, current_time=int(self.current_ns), playback_speed=float(self.speed),
                             did_seek=did_seek, request_id=request_id)

    # ------------------------------------------------------------ ServerListener
    def on_subscribe(self, client, channel) -> None:
        """The first subscription starts playback (the app subscribes when it opens the layout)."""
        from foxglove.websocket import PlaybackStatus
        with self._lock:
            if not self._started:
                self._started = True
                self._status = PlaybackStatus.Playing
                self._anchor = (time.monotonic(), self.current_ns)

    def on_playback_control_request(self, request):
        """Play / pause / speed / seek from the app; returns the resulting state."""
        from foxglove.websocket import PlaybackCommand, PlaybackStatus
        with self._lock:
            self._started = True
            did_seek = request.seek_time is not None
            if did_seek:
                self._seek(request.seek_time)
                if self._status == PlaybackStatus.Ended:
                    self._status = PlaybackStatus.Paused
            speed = float(request.playback_speed)
            self.speed = min(max(speed if np.isfinite(speed) else 1.0, 0.01), 100.0)
            self._anchor = (time.monotonic(), self.current_ns)
            if request.playback_command == PlaybackCommand.Play and self._status != PlaybackStatus.Ended:
                self._status = PlaybackStatus.Playing
            elif request.playback_command == PlaybackCommand.Pause and self._status != PlaybackStatus.Ended:
                self._status = PlaybackStatus.Paused
            return self._state(did_seek, request.request_id)

    # ------------------------------------------------------------ running
    def step(self) -> Optional[float]:
        """Emit the messages that are due; returns seconds until the next one (None: not playing)."""
        from foxglove.websocket import PlaybackStatus
        with self._lock:
            if self._status != PlaybackStatus.Playing:
                return None
            wall0, bag0 = self._anchor
            now_bag = bag0 + int((time.monotonic() - wall0) * self.speed * 1e9)
            while True:
                item = self._pending if self._pending is not None else next(self._iter, None)
                self._pending = None
                if item is None:
                    self._status = PlaybackStatus.Ended
                    self.current_ns = self.bag.end_ns
                    if self.view.server is not None:
                        self.view.server.broadcast_playback_state(self._state())
                    return None
                if item[0] > now_bag:
                    self._pending = item
                    break
                self._emit(*item)
                self.current_ns = item[0]
            if self.view.server is not None and now_bag - self._last_time_sent >= TIME_PERIOD_NS:
                self.view.server.broadcast_time(int(self.current_ns))
                self._last_time_sent = now_bag
            return (self._pending[0] - now_bag) / 1e9 / self.speed

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = self.step()
            self._stop.wait(0.01 if wait is None else min(max(wait, 0.0), 0.05))

    def start(self) -> 'BagViewPlayer':
        """Run playback in a background thread (until :meth:`close`)."""
        self._thread = threading.Thread(target=self._run, name='bag-view-player', daemon=True)
        self._thread.start()
        return self

    def export(self) -> int:
        """Every message of the bag through the view at once (for an MCAP sink); returns the count."""
        n = 0
        with self._lock:
            self._seek(self.bag.start_ns)
            for item in self._iter:
                self._emit(*item)
                n += 1
        return n

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.view.close()
        self.bag.close()
