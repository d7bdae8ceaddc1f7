"""pytest plugin for tests that use a real ROS graph (loaded by the root conftest.py).

* Isolation: the test process picks a random ``ROS_DOMAIN_ID`` and limits discovery
  to localhost before rclpy starts; subprocesses started by tests inherit both.
* ``ros`` fixture: rclpy initialised once per session.
* ``executor`` fixture: a SingleThreadedExecutor spinning in a background thread
  (the MultiThreadedExecutor of the pip wheels is throttled, ENVIRONMENT.md).
* ``Collector``: a node that records messages of one topic, with ``wait_for``.
* ``assert_msg_equal``: field-by-field comparison of decoded messages.
"""
from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, List, Optional

import pytest

# Set before anything imports rclpy in this process.
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(1, 100)))
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, period: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(period)
    return bool(predicate())


class BackgroundExecutor:
    """A SingleThreadedExecutor spinning in a daemon thread until ``shutdown()``."""

    def __init__(self) -> None:
        from rclpy.executors import SingleThreadedExecutor
        self.executor = SingleThreadedExecutor()
        self._nodes: List[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def add(self, node):
        self._nodes.append(node)
        self.executor.add_node(node)
        return node

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for node in self._nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown()


def start_node(module: str, *params: str, extra_args=()) -> subprocess.Popen:
    """Run ``python -m module --ros-args -p NAME:=VALUE ...`` (a node's ``main``) in a child process
    with stderr captured as text; the child inherits the test's domain and discovery range."""
    args = [sys.executable, '-m', module, *extra_args, '--ros-args']
    for p in params:
        args += ['-p', p]
    return subprocess.Popen(args, stderr=subprocess.PIPE, text=True)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> Optional[int]:
    """SIGINT (what Ctrl-C sends) and wait; returns the exit status, or None after a kill."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def make_collector(topic: str, msg_type: Any, qos: Any = 10, name: Optional[str] = None):
    """A node that stores every message of ``topic`` in ``.messages``."""
    from rclpy.node import Node

    class Collector(Node):
        def __init__(self) -> None:
            super().__init__(name or 'collector_' + topic.strip('/').replace('/', '_'))
            self.messages: List[Any] = []
            self.create_subscription(msg_type, topic, self.messages.append, qos)

        def wait_for(self, count: int = 1, timeout: float = 10.0) -> List[Any]:
            wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    return Collector()


def assert_msg_equal(a: Any, b: Any, path: str = 'msg', rel: float = 0.0) -> None:
    """Recursively compare two decoded ROS messages field by field (NaN equals NaN)."""
    if hasattr(a, 'get_fields_and_field_types'):
        assert type(a) is type(b), f'{path}: {type(a).__name__} != {type(b).__name__}'
        for field in a.get_fields_and_field_types():
            assert_msg_equal(getattr(a, field), getattr(b, field), f'{path}.{field}', rel)
        return
    if isinstance(a, (list, tuple)) or type(a).__name__ in ('array', 'ndarray'):
        a_list, b_list = list(a), list(b)
        assert len(a_list) == len(b_list), f'{path}: length {len(a_list)} != {len(b_list)}'
        for i, (x, y) in enumerate(zip(a_list, b_list)):
            assert_msg_equal(x, y, f'{path}[{i}]', rel)
        return
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return
        assert a == pytest.approx(b, rel=rel, abs=0 if rel == 0 else 1e-12), f'{path}: {a} != {b}'
        return
    assert a == b, f'{path}: {a!r} != {b!r}'


@pytest.fixture(scope='session')
def ros():
    """rclpy initialised for the whole session (domain isolated by this plugin)."""
    import rclpy
    rclpy.init()
    yield rclpy
    rclpy.try_shutdown()


@pytest.fixture
def executor(ros):
    ex = BackgroundExecutor()
    yield ex
    ex.shutdown()
