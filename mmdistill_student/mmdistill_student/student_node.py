"""``student_node``: microphone-array audio in, vehicle detections in the camera image out.

A lifecycle node and a thin wrapper over :class:`mmdistill_student.runtime.StudentRuntime`:

* configure: loads the checkpoint (``checkpoint`` parameter) and creates the subscriptions and
  the lifecycle publisher; FAILURE (one log line) if the checkpoint is missing or invalid.
* activate: FAILURE (one log line) when the checkpoint's channels / sample rate / window mode
  do not match the last ``AudioInfo`` or the ``window_mode`` parameter. Audio is processed only
  while active.
* deactivate: forgets buffered audio. cleanup / shutdown: releases the model.

Detections are published on a fixed grid of ``rate`` Hz, stamped with the time their 1-s window
refers to (its centre, or its end for causal checkpoints). Bad input (odd byte length, wrong
channel count, stamps jumping backwards, audio of a stream the checkpoint does not fit) is
logged, throttled per kind, and dropped; the node keeps running. An ``AudioInfo`` that arrives
after activation and does not fit blocks audio until a fitting one arrives.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Dict, Optional

from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from mmdistill_common import topics
from mmdistill_common.conversions import (check_audio_info, detections_to_msg, image_to_msg, msg_to_audio,
                                          stamp_to_ns)
from mmdistill_common.errors import ConfigError, InputError, MmdistillError
from mmdistill_common.node_main import autostart, run_node
from mmdistill_common.params import Param, declare_parameters
from mmdistill_common.qos import incompatible_qos_warner, latched_qos, stream_qos

from .acoustic_image import heatmap
from .calibration import load_geometry
from .checkpoint import check_stream, load_checkpoint
from .frontend import PushStatus
from .runtime import StudentRuntime

PARAMS = [
    Param('checkpoint', '', 'Student checkpoint directory (model.safetensors + checkpoint.json), loaded on '
          'configure.', read_only=True),
    Param('rate', 10.0, 'Output rate in Hz: detections for the stamps k / rate (one 1-s window each).',
          min=0.1, max=100.0, read_only=True),
    Param('window_mode', '', "Expected window mode; '' uses the checkpoint's. A different mode than the "
          "checkpoint's refuses activation.", choices=('', 'centered', 'causal'), read_only=True),
    Param('score_threshold', -1.0, "Minimum detection score; -1 uses the checkpoint's threshold.",
          min=-1.0, max=1.0, read_only=True),
    Param('audio_reliability', 'reliable', 'QoS reliability of the audio subscription; best_effort accepts '
          'lossy publishers but a dropped chunk is a gap (the next second has no detections).',
          choices=('reliable', 'best_effort'), read_only=True),
    Param('frame_id', 'camera', 'frame_id of the published detections (the RGB camera whose pixels the '
          'boxes are in).', read_only=True),
    Param('calibration', '', "Array-to-camera calibration JSON (mic positions + camera model) for an "
          "acoustic-image student on another car; '' uses the checkpoint's geometry.", read_only=True),
    Param('publish_acoustic_image', False, 'Also publish the acoustic image of each window as an rgb8 heat '
          'map (SRP-PHAT coherence, camera columns across, time down) on /student/acoustic_image.',
          read_only=True),
    Param('autostart', True, 'Configure and activate at start-up (off: wait for a lifecycle manager).',
          read_only=True),
]

LOG_PERIOD_S = 2.0


class StudentNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__('student_node', **kwargs)
        self.p = declare_parameters(self, PARAMS)
        self.runtime: Optional[StudentRuntime] = None
        self.meta: Optional[dict] = None
        self._pub = None
        self._image_pub = None
        self._subs = []
        self._active = False
        self._info: Optional[AudioInfo] = None
        self._info_error: Optional[str] = None
        self._last_log: Dict[str, float] = {}
        self.dropped: Dict[str, int] = {}     # dropped messages per kind of problem
        self.gaps = 0                          # continuity resets (missing audio)
        self.published = 0
        # transitions may be triggered from another thread than the executor's (a manager
        # calling trigger_* directly, tests): they must not reset the runtime mid-window
        self._lock = threading.RLock()

    # --------------------------------------------------------------------------- helpers
    def _throttled(self, kind: str, text: str) -> None:
        """Log a warning at most once per ``LOG_PERIOD_S`` per kind."""
        now = time.monotonic()
        if now - self._last_log.get(kind, -1e9) >= LOG_PERIOD_S:
            self._last_log[kind] = now
            self.get_logger().warning(text)

    def _drop(self, kind: str, text: str) -> None:
        """Count a dropped message and log it (throttled per kind)."""
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        self._throttled(kind, f'{text} (dropped; {self.dropped[kind]} {kind} so far)')

    def _stream_problem(self, info: AudioInfo) -> Optional[str]:
        """Why ``info`` cannot feed the loaded checkpoint, or None."""
        try:
            check_audio_info(info)
            check_stream(self.meta, info.channels, info.sample_rate, self.p['window_mode'] or None)
        except MmdistillError as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------------------- lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """SUCCESS: model loaded, topics created. FAILURE: no / invalid checkpoint (one log line)."""
        if not self.p['checkpoint']:
            self.get_logger().error('parameter checkpoint is empty: set it to a student checkpoint directory')
            return TransitionCallbackReturn.FAILURE
        try:
            geometry = load_geometry(self.p['calibration']) if self.p['calibration'] else None
            model, meta = load_checkpoint(self.p['checkpoint'], geometry=geometry)
            thr = self.p['score_threshold']
            self.runtime = StudentRuntime(model, meta, rate_hz=self.p['rate'],
                                          score_threshold=None if thr < 0 else thr,
                                          max_windows_per_step=max(1, int(round(self.p['rate']))))
        except ConfigError as exc:
            self.get_logger().error(f'cannot load the student: {exc}')
            self.runtime = None
            return TransitionCallbackReturn.FAILURE
        self.meta = meta
        _, sub_events = incompatible_qos_warner(self, topics.AUDIO)
        pub_events, _ = incompatible_qos_warner(self, topics.STUDENT_DETECTIONS)
        self._pub = self.create_lifecycle_publisher(Detection2DArray, topics.STUDENT_DETECTIONS, stream_qos(),
                                                    event_callbacks=pub_events)
        self._image_pub = None
        if self.p['publish_acoustic_image']:
            if self.runtime.cfg.kind != 'acoustic_image':
                self.get_logger().warning('publish_acoustic_image: this checkpoint has no acoustic-image front end')
            else:
                self._image_pub = self.create_lifecycle_publisher(Image, topics.STUDENT_ACOUSTIC_IMAGE, stream_qos())
        self._subs = [
            self.create_subscription(AudioDataStamped, topics.AUDIO, self._on_audio,
                                     stream_qos(self.p['audio_reliability']), event_callbacks=sub_events),
            self.create_subscription(AudioInfo, topics.AUDIO_INFO, self._on_info, latched_qos()),
        ]
        self._info, self._info_error = None, None
        fe = self.runtime.cfg
        self.get_logger().info(f'loaded {self.p["checkpoint"]}: {fe.channels} channels at {fe.sample_rate} Hz, '
                               f'{fe.mode} {fe.window_s:g}-s windows, detections at {self.p["rate"]:g} Hz')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """SUCCESS: processing audio. FAILURE: the checkpoint does not fit the stream or the
        requested window mode (one log line naming both)."""
        with self._lock:
            return self._activate(state)

    def _activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._info is not None:
            problem = self._stream_problem(self._info)
        else:
            try:
                check_stream(self.meta, self.meta['channels'], self.meta['sample_rate'],
                             self.p['window_mode'] or None)
                problem = None
            except ConfigError as exc:
                problem = str(exc)
        if problem:
            self.get_logger().error(f'refusing to activate: {problem}')
            return TransitionCallbackReturn.FAILURE
        if self._info is None:
            self.get_logger().info(f'waiting for {topics.AUDIO_INFO}; audio is dropped until it arrives')
        self.runtime.reset()
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """SUCCESS always: stops processing and forgets buffered audio."""
        with self._lock:
            self._active = False
            if self.runtime is not None:
                self.runtime.reset()
        return super().on_deactivate(state)

    def _release(self) -> None:
        with self._lock:
            self._release_unlocked()

    def _release_unlocked(self) -> None:
        self._active = False
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        for pub in (self._pub, self._image_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._pub = self._image_pub = None
        self.runtime = None
        self.meta = None
        self._info = None

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """SUCCESS always: releases the model and the topics."""
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------------- callbacks
    def _on_info(self, info: AudioInfo) -> None:
        with self._lock:
            self._on_info_unlocked(info)

    def _on_info_unlocked(self, info: AudioInfo) -> None:
        self._info = info
        if self.runtime is None:
            return
        problem = self._stream_problem(info)
        was_blocked = self._info_error is not None
        self._info_error = problem
        if problem:
            self.get_logger().error(f'audio_info does not fit the checkpoint: {problem}; '
                                    'audio is dropped until a matching audio_info arrives')
            self.runtime.reset()
            return
        changed = self.runtime.set_stream(info.channels, info.sample_rate)     # resets when changed
        if was_blocked and not changed:
            self.runtime.reset()
        if changed or was_blocked:
            self.get_logger().info(f'audio stream: {info.channels} channels at {info.sample_rate} Hz')

    def _on_audio(self, msg: AudioDataStamped) -> None:
        with self._lock:
            self._on_audio_unlocked(msg)

    def _on_audio_unlocked(self, msg: AudioDataStamped) -> None:
        if not self._active or self.runtime is None:
            return
        if self._info is None:
            self._drop('before_info', f'no {topics.AUDIO_INFO} yet')
            return
        if self._info_error is not None:
            self._drop('mismatch', f'audio of a stream the checkpoint does not fit: {self._info_error}')
            return
        stamp = stamp_to_ns(msg.header.stamp)
        resyncs = self.runtime.stats['resyncs']
        try:
            samples = msg_to_audio(msg, self.runtime.cfg.channels)
            res = self.runtime.push(samples, stamp)
        except InputError as exc:
            self._drop('malformed', f'bad audio chunk at {stamp} ns: {exc}')
            return
        if res.status is PushStatus.OUT_OF_ORDER:
            self._drop('out_of_order', f'audio stamp went backwards: {res.message}')
        elif res.status is PushStatus.GAP:
            self.gaps += 1
            self._throttled('gap', f'audio {res.message} ({self.gaps} gaps so far)')
        elif res.status is PushStatus.OVERLAP and res.accepted == 0:
            self._drop('duplicate', f'audio chunk repeats buffered samples: {res.message}')
        elif self.runtime.stats['resyncs'] != resyncs:
            self.get_logger().warning(f'audio {res.message}')
        results = self.runtime.step()
        for window_stamp, d in results:
            self._pub.publish(detections_to_msg(d['boxes'], d['scores'], d['class_ids'], stamp_ns=window_stamp,
                                                frame_id=self.p['frame_id']))
            self.published += 1
        if results and self._image_pub is not None and self.runtime.last_features is not None:
            rgb = heatmap(self.runtime.last_features, self.runtime.cfg.n_bands)
            self._image_pub.publish(image_to_msg(rgb, 'rgb8', stamp_ns=results[-1][0], frame_id=self.p['frame_id']))


def main(args=None) -> int:
    return run_node('student_node', StudentNode, args, start=autostart)


if __name__ == '__main__':
    sys.exit(main())
