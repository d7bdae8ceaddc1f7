"""Approximate-time synchronization: ``message_filters`` where installed, else an equivalent.

Pip-mode ROS 2 has no ``message_filters``. The fallback below keeps its interface
(``Subscriber``, ``SimpleFilter.registerCallback(cb, *args)``,
``ApproximateTimeSynchronizer(fs, queue_size, slop, allow_headerless=False)``)
and its matching rule (Jazzy/Kilted Python implementation):

* a new message (stamp s, input i) goes into queue i; while the queue holds more
  than ``queue_size`` messages the one with the smallest stamp is evicted;
* for every other input the candidates are the queued messages with
  |t - s| <= slop (inclusive), nearest first; if an input has none, wait;
* the first combination (in the product of candidate lists, s fixed) whose spread
  max - min < slop (strict) is signalled in input order and removed from the queues.

Only sets that contain the newest message are considered; older unmatched
messages leave only by eviction. Always pass ``slop``/``allow_headerless`` as
keywords: Kilted's message_filters inserts ``queue_offset`` as 4th positional.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Sequence

_log = logging.getLogger(__name__)


def _stamp_ns(stamp: Any) -> int:
    """Nanoseconds of a ``builtin_interfaces/Time`` message or an ``rclpy.time.Time``."""
    if hasattr(stamp, 'nanoseconds'):
        return int(stamp.nanoseconds)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class SimpleFilter:
    """Callback fan-out, as ``message_filters.SimpleFilter``."""

    def __init__(self) -> None:
        self.callbacks: Dict[int, tuple] = {}

    def registerCallback(self, cb: Callable, *args: Any) -> int:  # noqa: N802 (upstream name)
        conn = len(self.callbacks)
        self.callbacks[conn] = (cb, args)
        return conn

    def signalMessage(self, *msg: Any) -> None:  # noqa: N802 (upstream name)
        for cb, args in list(self.callbacks.values()):
            cb(*(msg + args))


class Subscriber(SimpleFilter):
    """A subscription whose messages feed a filter, as ``message_filters.Subscriber``."""

    def __init__(self, node: Any, msg_type: Any, topic: str, **kwargs: Any) -> None:
        super().__init__()
        self.node = node
        self.topic = topic
        qos = kwargs.pop('qos_profile', 10)
        self.sub = node.create_subscription(msg_type, topic, self.callback, qos, **kwargs)

    def callback(self, msg: Any) -> None:
        self.signalMessage(msg)

    def getTopic(self) -> str:  # noqa: N802 (upstream name)
        return self.topic

    def __getattr__(self, key: str) -> Any:
        # as upstream: behave like the underlying subscription for anything else
        return getattr(self.__dict__['sub'], key)


class FallbackApproximateTimeSynchronizer(SimpleFilter):
    """Same constructor, callbacks and matching rule as message_filters' (see module doc)."""

    def __init__(self, fs: Sequence[SimpleFilter], queue_size: int, slop: float,
                 allow_headerless: bool = False) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        if slop < 0:
            raise ValueError(f'slop must be >= 0 seconds, got {slop}')
        self.queue_size = int(queue_size)
        self.slop_ns = int(round(slop * 1e9))
        self.allow_headerless = allow_headerless
        self.lock = threading.Lock()
        self.queues: List[Dict[int, Any]] = [{} for _ in fs]
        self.input_connections = [f.registerCallback(self.add, q, i) for i, (f, q) in enumerate(zip(fs, self.queues))]

    def add(self, msg: Any, my_queue: Dict[int, Any], my_queue_index: int) -> None:
        header = getattr(msg, 'header', None)
        if header is None or not hasattr(header, 'stamp'):
            if not self.allow_headerless:
                _log.warning('Cannot use message filters with non-stamped messages. '
                             'Use the allow_headerless constructor option to auto-assign ROS time to headerless messages.')
                return
            stamp = time.time_ns()
        else:
            stamp = _stamp_ns(header.stamp)
        with self.lock:
            my_queue[stamp] = msg
            while len(my_queue) > self.queue_size:
                del my_queue[min(my_queue)]
            candidates: List[List[int]] = []
            for index, queue in enumerate(self.queues):
                if index == my_queue_index:
                    continue
                near = sorted((t for t in queue if abs(t - stamp) <= self.slop_ns), key=lambda t: abs(t - stamp))
                if not near:
                    return
                candidates.append(near)
            for combo in itertools.product(*candidates):
                stamps = list(combo)
                stamps.insert(my_queue_index, stamp)
                if max(stamps) - min(stamps) < self.slop_ns and all(t in q for q, t in zip(self.queues, stamps)):
                    msgs = [q[t] for q, t in zip(self.queues, stamps)]
                    for q, t in zip(self.queues, stamps):
                        del q[t]
                    break
            else:
                return
        self.signalMessage(*msgs)


try:  # the real library where the ROS install has it
    from message_filters import ApproximateTimeSynchronizer, Subscriber as _MFSubscriber  # type: ignore

    Subscriber = _MFSubscriber  # type: ignore[misc]  # noqa: F811
    IMPLEMENTATION = 'message_filters'
except ImportError:
    ApproximateTimeSynchronizer = FallbackApproximateTimeSynchronizer  # type: ignore[misc]
    IMPLEMENTATION = 'mmdistill fallback'
