"""A small rosbag2 player for pip mode (there is no ``ros2 bag play`` without the ros2 CLI).

:class:`BagPlayer` is an rclpy node that publishes a bag's messages when their bag
(log) time is reached, running ``rate`` times faster than real time, and publishes
``/clock`` with the bag time so that nodes started with ``use_sim_time`` follow the
bag. Topics are published with the graph's QoS: transient local for ``audio_info``
(late joiners get it, as from a live ``sim_node``), keep-last reliable otherwise.

The player is driven by a timer on whatever executor it is added to, so it can share
one ``SingleThreadedExecutor`` with the graph it feeds (``mmdistill replay-eval``).
When the executor is busy (a slow model), due messages are released in a burst at
the next tick: order and stamps are kept, pacing is best effort, nothing is dropped
by the player. After the last message ``/clock`` keeps advancing for ``tail_s``
seconds of bag time so that timer-driven consumers can finish their last window.

Run standalone: ``python -m mmdistill_training.replay BAG [--rate R] [--topics T ...]``.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from rclpy.node import Node

from mmdistill_common import topics as T
from mmdistill_common.bagio import BagMessage, BagReader
from mmdistill_common.conversions import ns_to_stamp
from mmdistill_common.errors import ConfigError, InputError
from mmdistill_common.qos import latched_qos, stream_qos

__all__ = ['BagPlayer', 'LATCHED_TOPICS', 'main']

#: topics published transient local (stream metadata), as by the live graph
LATCHED_TOPICS = (T.AUDIO_INFO,)


class BagPlayer(Node):
    """Publish the messages of ``bag`` at ``rate`` x real time, with ``/clock``.

    ``topics``: only these topics (default all but ``/clock`` itself). ``clock``:
    publish ``/clock`` (bag time) at every tick. ``start``: begin playing at once;
    otherwise call :meth:`play`. ``done`` is true once every message was published
    and the clock tail has run out; ``counts`` holds messages published per topic.
    """

    def __init__(self, bag, rate: float = 1.0, topics: Optional[Sequence[str]] = None, clock: bool = True,
                 tick_period: float = 0.005, tail_s: float = 1.0, start: bool = True,
                 node_name: str = 'bag_player', **kwargs) -> None:
        if not rate > 0:
            raise ConfigError(f'player rate must be > 0, got {rate}')
        self._reader = BagReader(bag)      # bag errors before any node exists
        have = self._reader.topics
        if topics is not None:
            try:
                self._reader.require(topics)
            except InputError:
                self._reader.close()
                raise
        super().__init__(node_name, **kwargs)
        self.rate = float(rate)
        self.tail_ns = int(tail_s * 1e9)
        if topics is not None:
            wanted = [t for t in topics if t != T.CLOCK]
        else:
            wanted = [t for t in have if t != T.CLOCK]
        self.topics = wanted
        self._pubs: Dict[str, object] = {}
        from mmdistill_common.bagio import message_class
        for topic in wanted:
            qos = latched_qos() if topic in LATCHED_TOPICS else stream_qos('reliable', depth=200)
            self._pubs[topic] = self.create_publisher(message_class(have[topic][0]), topic, qos)
        self._clock_pub = None
        if clock:
            from rosgraph_msgs.msg import Clock
            self._clock_cls = Clock
            self._clock_pub = self.create_publisher(Clock, T.CLOCK, 10)
        self.counts: Dict[str, int] = {t: 0 for t in wanted}
        self.total = sum(have[t][1] for t in wanted)
        self.start_ns = self._reader.start_ns if self.total else 0
        self.last_stamp_ns = self.start_ns   # stamp of the last published message
        self._stream: Iterator[BagMessage] = self._reader.messages(wanted)
        self._pending: Optional[BagMessage] = None
        self._wall0: Optional[float] = None
        self.bag_now_ns: Optional[int] = None
        self.done = False
        self.error: Optional[str] = None
        self._timer = self.create_timer(tick_period, self._tick)
        if start:
            self.play()

    @property
    def published(self) -> int:
        return sum(self.counts.values())

    @property
    def messages_done(self) -> bool:
        """Every message of the bag has been published (the clock tail may still run)."""
        return self._pending is None and self._wall0 is not None and self._stream is None

    def play(self, lead_s: float = 0.0) -> None:
        """Start playing: latched topics at the head of the bag (audio_info) at once, the rest
        ``lead_s`` seconds later (bag start time = then). A lead lets subscribers receive the
        stream description before the stream: DDS does not order messages across topics."""
        if self._wall0 is None:
            self._pending = self._next()
            while self._pending is not None and self._pending.topic in LATCHED_TOPICS:
                self._pubs[self._pending.topic].publish(self._pending.msg)
                self.counts[self._pending.topic] += 1
                self._pending = self._next()
            self._wall0 = time.monotonic() + max(0.0, lead_s)

    def _next(self) -> Optional[BagMessage]:
        if self._stream is None:
            return None
        try:
            item = next(self._stream, None)
        except InputError as exc:   # truncated bag: publish what was readable, say so
            self.error = str(exc)
            self.get_logger().error(str(exc))
            item = None
        if item is None:
            self._stream = None
        return item

    def _tick(self) -> None:
        if self._wall0 is None or self.done:
            return
        now = self.start_ns + max(0, int((time.monotonic() - self._wall0) * self.rate * 1e9))
        while self._pending is not None and self._pending.stamp_ns <= now:
            m = self._pending
            self._pubs[m.topic].publish(m.msg)
            self.counts[m.topic] += 1
            self.last_stamp_ns = m.stamp_ns
            self._pending = self._next()
        if self._pending is None:
            now = min(now, self.last_stamp_ns + self.tail_ns)
        self.bag_now_ns = now
        if self._clock_pub is not None:
            self._clock_pub.publish(self._clock_cls(clock=ns_to_stamp(max(now, 0))))
        if self._pending is None and now >= self.last_stamp_ns + self.tail_ns:
            self.done = True
            self._timer.cancel()
            self.get_logger().info(f'played {self.published} messages')

    def destroy_node(self) -> None:
        self._reader.close()
        super().destroy_node()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m mmdistill_training.replay BAG``: play a bag into the live graph."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    parser = argparse.ArgumentParser(prog='python -m mmdistill_training.replay', description=__doc__.split('\n')[0])
    parser.add_argument('bag', help='rosbag2 bag directory (MCAP or sqlite3)')
    parser.add_argument('--rate', type=float, default=1.0, help='bag seconds per wall-clock second (default 1)')
    parser.add_argument('--topics', nargs='+', help='only these topics (default: all)')
    parser.add_argument('--no-clock', action='store_true', help='do not publish /clock')
    args = parser.parse_args(argv)
    rclpy.init()
    player = None
    try:
        player = BagPlayer(args.bag, rate=args.rate, topics=args.topics, clock=not args.no_clock)
        ex = SingleThreadedExecutor()
        ex.add_node(player)
        while not player.done:
            ex.spin_once(timeout_sec=0.1)
    except (ConfigError, InputError) as exc:
        print(f'replay: error: {exc}', file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if player is not None:
            player.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())


# =============================================================================== evaluation
# Scoring of a bag replayed through the car graph (``mmdistill replay-eval``) or run through
# the same ROS-free code offline (:func:`evaluate_offline`).

Frames = List[Tuple[int, dict]]     # (stamp_ns, {'boxes', 'scores', 'ids'?})


def _dets_frame(msg) -> dict:
    from mmdistill_common.conversions import msg_to_detections
    d = msg_to_detections(msg)
    return {'boxes': d.boxes, 'scores': d.scores, 'ids': list(d.ids), 'labels': list(d.labels)}


def sim_truth_frame(msg) -> dict:
    """A ``/sim/truth`` message as a truth frame of the evaluation rule (boxes, ids as strings,
    per-camera ``visible`` fractions, ``audible``, ``distance``; see
    :func:`mmdistill_training.metrics.evaluate_truth`)."""
    import numpy as np
    from vision_msgs.msg import Detection2D, Detection2DArray
    vs = list(msg.vehicles)
    f = _dets_frame(Detection2DArray(header=msg.header, detections=[Detection2D(bbox=v.bbox, id=str(v.id))
                                                                     for v in vs]))
    f['visible'] = np.array([[v.visible_rgb, v.visible_depth, v.visible_thermal] for v in vs],
                            np.float64).reshape(len(vs), 3)
    f['audible'] = np.array([v.audible for v in vs], bool)
    f['distance'] = np.array([v.distance_m for v in vs], np.float64)
    return f


def load_references(bag) -> Dict[str, Frames]:
    """Reference frames of a bag, by name: ``ground_truth`` (``/sim/truth``, with the fields of the
    evaluation rule; else ``/sim/ground_truth`` boxes only; ids = vehicle ids) and
    ``pseudo_labels`` (``/pseudo_labels``), where present."""
    from mmdistill_common.conversions import stamp_to_ns
    refs: Dict[str, Frames] = {}
    with BagReader(bag) as r:
        have = r.topics
        gt_topic = T.SIM_TRUTH if T.SIM_TRUTH in have else (T.GROUND_TRUTH if T.GROUND_TRUTH in have else None)
        wanted = [t for t in (gt_topic, T.PSEUDO_LABELS) if t]
        for m in r.messages(wanted):
            if m.topic == T.GROUND_TRUTH:
                refs.setdefault('ground_truth', []).append((stamp_to_ns(m.msg.header.stamp), _dets_frame(m.msg)))
            elif m.topic == T.SIM_TRUTH:
                refs.setdefault('ground_truth', []).append((stamp_to_ns(m.msg.header.stamp), sim_truth_frame(m.msg)))
            else:
                refs.setdefault('pseudo_labels', []).append(
                    (stamp_to_ns(m.msg.header.stamp), _dets_frame(m.msg.detections)))
    return refs


def align(predictions: Frames, reference_stamps: Sequence[int], tolerance_ns: Optional[int] = None
          ) -> Tuple[List[int], List[dict], dict]:
    """Pair each reference frame with the prediction nearest in stamp (within ``tolerance_ns``,
    default half the median reference period). Reference frames before the first or after the
    last prediction (± tolerance) are left out (no audio window can cover them yet); inside that
    span a frame without a prediction is scored as an empty prediction (a miss).
    Returns (indices of scored reference frames, their prediction frames, coverage figures)."""
    import numpy as np
    ref = np.asarray(reference_stamps, dtype=np.int64)
    empty = {'boxes': np.zeros((0, 4)), 'scores': np.zeros(0), 'ids': []}
    if tolerance_ns is None:
        tolerance_ns = int(np.median(np.diff(ref)) // 2) if len(ref) > 1 else 50_000_000
    cover = {'reference_frames': int(len(ref)), 'predictions': len(predictions), 'tolerance_ns': int(tolerance_ns)}
    if not len(predictions) or not len(ref):
        cover.update(scored_frames=0, matched_frames=0)
        return [], [], cover
    ps = np.asarray([s for s, _ in predictions], dtype=np.int64)
    order = np.argsort(ps, kind='stable')
    ps = ps[order]
    idx, frames, matched = [], [], 0
    for i, s in enumerate(ref):
        if s < ps[0] - tolerance_ns or s > ps[-1] + tolerance_ns:
            continue
        j = int(np.searchsorted(ps, s))
        best = min((k for k in (j - 1, j) if 0 <= k < len(ps)), key=lambda k: abs(int(ps[k]) - int(s)))
        idx.append(i)
        if abs(int(ps[best]) - int(s)) <= tolerance_ns:
            frames.append(predictions[int(order[best])][1])
            matched += 1
        else:
            frames.append(empty)
    cover.update(scored_frames=len(idx), matched_frames=matched)
    return idx, frames, cover


def _clean(obj):
    """NaN -> None, numpy -> Python, so that the JSON is strict."""
    import math

    import numpy as np
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def score(detections: Frames, tracks: Optional[Frames], references: Dict[str, Frames],
          image_size: Tuple[int, int], tolerance_ns: Optional[int] = None) -> dict:
    """Detection metrics against every reference -- the simulator truth under the evaluation rule
    of :func:`mmdistill_training.metrics.evaluate_truth` (``ground_truth``,
    ``ground_truth_all_visible``, ``ground_truth_shuffled``), the pseudo-labels as they are -- and
    MOT metrics against the headline ground truth (its vehicle ids; tracks lying on an ignore
    region only are left out, as for AP)."""
    import numpy as np

    from .metrics import drop_ignored, evaluate_detections, evaluate_truth, mot_metrics, reference_frame, truth_sets
    out: dict = {}
    for name, ref in references.items():
        stamps = [s for s, _ in ref]
        idx, preds, cover = align(detections, stamps, tolerance_ns)
        preds = [{'boxes': p['boxes'], 'scores': p['scores']} for p in preds]
        if name != 'ground_truth':
            out[name] = {'coverage': cover, 'detection': evaluate_detections(
                preds, [{'boxes': ref[i][1]['boxes']} for i in idx], image_size, per_class=False)}
            continue
        res = evaluate_truth(preds, [ref[i][1] for i in idx], image_size)
        for key in ('ground_truth', 'ground_truth_all_visible', 'ground_truth_shuffled'):
            out[key] = {'coverage': cover, 'truth_fields': res['truth_fields'],
                        'detection': {**res[key]['all'], 'by_distance': res[key].get('by_distance', {})}}
        out['ground_truth']['mota_bound'] = res['ground_truth']['mota_bound']
        # only the simulator's ground truth carries identities (pseudo-label ids name the
        # supporting teachers, see mmdistill_teachers.labelling)
        has_ids = bool(ref) and all(all(x != '' for x in f['ids']) for _, f in ref)
        if tracks is not None and has_ids:
            tidx, tframes, tcover = align(tracks, stamps, tolerance_ns)
            gts, hyps = [], []
            for i, f in zip(tidx, tframes):
                t = ref[i][1]
                keep = truth_sets(t)['ground_truth']
                gts.append({'boxes': np.asarray(t['boxes']).reshape(-1, 4)[keep],
                            'ids': [x for x, k in zip(t['ids'], keep) if k]})
                hyps.append(drop_ignored({'boxes': f['boxes'], 'scores': f.get('scores', np.ones(len(f['boxes']))),
                                          'ids': list(f.get('ids', []))}, reference_frame(t)))
            out['ground_truth']['tracking'] = mot_metrics(gts, [{'boxes': h['boxes'], 'ids': h['ids']} for h in hyps])
            out['ground_truth']['tracking']['coverage'] = tcover
    return out


def _image_size(meta: dict) -> Tuple[int, int]:
    w, h = meta['config'].get('image_size', (384, 128))
    return int(w), int(h)


def tracker_from_config(kind: str, params_file=None):
    """The tracker tracking_node builds from the car YAML (``params_file``, default the bringup
    car.yaml) with ``tracker`` = ``kind``: same parameter mapping, via the node's own method."""
    from types import SimpleNamespace

    import yaml

    from mmdistill_bringup.graphs import config_dir
    from mmdistill_common.params import check_values
    from mmdistill_tracking import tracking_node
    from mmdistill_tracking.tracker import make_tracker
    values = {p.name: p.default for p in tracking_node.PARAMS}
    doc = yaml.safe_load(open(params_file or config_dir() / 'car.yaml')) or {}
    for key in ('/**/tracking_node', 'tracking_node'):
        values.update(check_values(tracking_node.PARAMS, (doc.get(key) or {}).get('ros__parameters', {})))
    values['tracker'] = kind
    params = tracking_node.TrackingNode._params_for_tracker(SimpleNamespace(p=values))
    return make_tracker(kind, **params), values


def run_tracker(detections: Frames, kind: str = 'kalman') -> Frames:
    """The tracker on a detection sequence as tracking_node runs it (car.yaml settings, score
    floor ``min_score``; image clipping is left out)."""
    import numpy as np
    tracker, values = tracker_from_config(kind)
    out: Frames = []
    for stamp, d in detections:
        keep = np.asarray(d['scores']) >= values['min_score']
        tracks = tracker.update(np.asarray(d['boxes'])[keep], np.asarray(d['scores'])[keep], stamp_s=stamp * 1e-9)
        out.append((stamp, {'boxes': np.array([t.box for t in tracks]).reshape(-1, 4),
                            'scores': np.array([t.score for t in tracks]), 'ids': [str(t.id) for t in tracks]}))
    return out


def _predictions(frames: Frames) -> list:
    return [{'stamp_ns': int(s), 'boxes': [[float(v) for v in b] for b in f['boxes']],
             'scores': [float(v) for v in f['scores']]} for s, f in frames]


def evaluate_offline(bag, checkpoint, rate_hz: float = 10.0, tracker: str = 'kalman',
                     score_threshold: Optional[float] = None, tolerance_ns: Optional[int] = None,
                     keep_predictions: bool = False) -> dict:
    """The bag's audio through :class:`~mmdistill_student.runtime.StudentRuntime` and the tracker,
    without ROS transport: what the car graph computes, as a reference for the replay."""
    from mmdistill_common.conversions import msg_to_audio, stamp_to_ns
    from mmdistill_student.checkpoint import load_checkpoint
    from mmdistill_student.runtime import StudentRuntime
    model, meta = load_checkpoint(checkpoint)
    rt = StudentRuntime(model, meta, rate_hz=rate_hz, score_threshold=score_threshold)
    dets: Frames = []
    with BagReader(bag) as r:
        r.require([T.AUDIO])
        channels = int(meta['channels'])
        for m in r.messages([T.AUDIO_INFO, T.AUDIO]):
            if m.topic == T.AUDIO_INFO:
                rt.set_stream(m.msg.channels, m.msg.sample_rate)
                channels = m.msg.channels
                continue
            try:
                rt.push(msg_to_audio(m.msg, channels), stamp_to_ns(m.msg.header.stamp))
            except InputError:
                continue          # as the node: drop the bad chunk, keep going
            dets.extend(rt.step())
    dets = [(s, {'boxes': d['boxes'], 'scores': d['scores'], 'ids': []}) for s, d in dets]
    tracks = run_tracker(dets, tracker)
    result = {'mode': 'offline', 'bag': str(bag), 'checkpoint': str(checkpoint), 'rate_hz': rate_hz,
              'tracker': tracker, 'detections': len(dets),
              'references': score(dets, tracks, load_references(bag), _image_size(meta), tolerance_ns)}
    if keep_predictions:
        result['predictions'] = _predictions(dets)
    return _clean(result)


def evaluate_replay(bag, checkpoint, rate: float = 1.0, tracker: str = 'kalman', rate_hz: Optional[float] = None,
                    score_threshold: Optional[float] = None, tolerance_ns: Optional[int] = None,
                    timeout_s: Optional[float] = None, keep_predictions: bool = False) -> dict:
    """Replay ``bag`` at ``rate`` x real time through the car graph (student_node + tracking_node,
    built by :mod:`mmdistill_bringup.runner`, ``use_sim_time`` on the bag's /clock) in this
    process, collect ``/student/detections`` and ``/tracking/tracks`` and score them."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from vision_msgs.msg import Detection2DArray

    from mmdistill_bringup.runner import build_graph
    from mmdistill_common.conversions import stamp_to_ns
    from mmdistill_student.checkpoint import read_checkpoint_metadata

    meta = read_checkpoint_metadata(checkpoint)
    with BagReader(bag) as r:
        r.require([T.AUDIO])
        play_topics = [t for t in (T.AUDIO_INFO, T.AUDIO) if t in r.topics]
        bag_s = (r.end_ns - r.start_ns) * 1e-9
    owned = not rclpy.ok()
    if owned:
        rclpy.init()
    graph = player = collector = None
    ex = SingleThreadedExecutor()
    try:
        args = {'checkpoint': str(checkpoint), 'tracker': tracker}
        if rate_hz is not None:
            args['rate'] = str(rate_hz)
        student = {'use_sim_time': True}
        if score_threshold is not None:
            student['score_threshold'] = score_threshold
        w, h = _image_size(meta)         # tracks are clipped to the checkpoint's camera
        graph = build_graph('car', args=args, overrides={
            'student_node': student,
            'tracking_node': {'use_sim_time': True, 'image_width': int(w), 'image_height': int(h)}})
        collector = Node('replay_eval_collector')
        got: Dict[str, Frames] = {T.STUDENT_DETECTIONS: [], T.TRACKS: []}
        for topic in got:
            collector.create_subscription(
                Detection2DArray, topic,
                lambda msg, topic=topic: got[topic].append((stamp_to_ns(msg.header.stamp), _dets_frame(msg))),
                stream_qos('reliable', depth=200))
        player = BagPlayer(bag, rate=rate, topics=play_topics, start=False, tail_s=1.5)
        for n in graph.nodes + [collector, player]:
            ex.add_node(n)

        def spin_until(cond, seconds):
            deadline = time.monotonic() + seconds
            while not cond() and time.monotonic() < deadline:
                ex.spin_once(timeout_sec=0.02)
            return cond()

        if not spin_until(lambda: player.count_subscribers(T.AUDIO) >= 1
                          and collector.count_publishers(T.STUDENT_DETECTIONS) >= 1
                          and collector.count_publishers(T.TRACKS) >= 1, 15):
            raise ConfigError('the car graph did not come up (no subscriber to the audio topic)')
        player.play(lead_s=0.5)
        limit = timeout_s if timeout_s is not None else 30 + 3 * bag_s / rate
        spin_until(lambda: player.done, limit)
        if not player.done:
            raise ConfigError(f'replay did not finish within {limit:.0f} s')
        # let the last outputs arrive: stop once nothing new came for a while
        last = (-1, -1)
        while True:
            count = (len(got[T.STUDENT_DETECTIONS]), len(got[T.TRACKS]))
            if count == last:
                break
            last = count
            spin_until(lambda: False, 0.5)
    finally:
        for n in ([player, collector] + (graph.nodes if graph else [])):
            if n is not None:
                ex.remove_node(n)
        if player is not None:
            player.destroy_node()
        if collector is not None:
            collector.destroy_node()
        if graph is not None:
            graph.destroy()
        ex.shutdown()
        if owned:
            rclpy.try_shutdown()
    dets = sorted(got[T.STUDENT_DETECTIONS], key=lambda x: x[0])
    tracks = sorted(got[T.TRACKS], key=lambda x: x[0])
    result = {'mode': 'replay', 'bag': str(bag), 'checkpoint': str(checkpoint), 'rate': rate, 'tracker': tracker,
              'detections': len(dets), 'track_frames': len(tracks), 'player_counts': dict(player.counts),
              'references': score(dets, tracks, load_references(bag), _image_size(meta), tolerance_ns)}
    if keep_predictions:
        result['predictions'] = _predictions(dets)
    return _clean(result)
