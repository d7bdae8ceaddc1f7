"""The ``main()`` every node executable shares: init, build, (lifecycle autostart), spin, and a
clean shutdown; a user error (``MmdistillError``) becomes one ``<node>: error: ...`` line and
exit status 2, Ctrl-C / external shutdown exit 0 after the node was destroyed (a recorder
closes its bag in ``destroy_node``)."""
from __future__ import annotations

import signal
import sys
import time
from typing import Callable, List, Optional, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException

from .errors import ConfigError, MmdistillError

__all__ = ['run_node', 'autostart', 'catch_sigint', 'interrupted_take', 'settle_signal_thread']

#: seconds a Ctrl-C's teardown leaves rclpy's signal thread (see :func:`settle_signal_thread`)
SIGNAL_SETTLE_S = 0.2


def autostart(node, what: str = '') -> None:
    """Configure and activate a lifecycle node whose ``autostart`` parameter is true.

    A failed configure raises :class:`ConfigError` (the node logged why); a refused activation
    leaves the node inactive, saying why in its own log (e.g. a stream that does not fit)."""
    from rclpy.lifecycle import TransitionCallbackReturn
    if not node.get_parameter('autostart').value:
        return
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        raise ConfigError(f'configure failed{what} (see the log line above)')
    node.trigger_activate()


def catch_sigint() -> List[int]:
    """Install a SIGINT handler (before ``rclpy.init``, whose handler chains to it) that records
    each Ctrl-C in the returned list and raises ``KeyboardInterrupt`` as Python's default does."""
    interrupted: List[int] = []

    def on_sigint(signum, frame) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, on_sigint)
    return interrupted


def settle_signal_thread() -> None:
    """Give rclpy's deferred signal thread time to finish before executors are torn down.

    On SIGINT, rclpy's C handler wakes a thread of its own that triggers every executor's signal
    guard condition, while Python's handler raises ``KeyboardInterrupt`` at once in the main
    thread. Destroying those guard conditions (``Executor.shutdown``, ``rclpy.try_shutdown``)
    before the thread reached them races it on freed memory: under load in CI a child hung at
    exit. The thread needs microseconds once scheduled; the wait bounds its scheduling delay."""
    time.sleep(SIGNAL_SETTLE_S)


def interrupted_take(exc: BaseException, interrupted: Sequence[int]) -> bool:
    """Whether ``exc`` is a Ctrl-C in disguise: pybind11 turns a ``KeyboardInterrupt`` raised while
    rclpy converts a taken message into ``RuntimeError("Unable to convert call argument ...")``, and
    numba one raised inside a compiled function (the simulator's renderer) into ``SystemError("...
    returned a result with an exception set")``."""
    return isinstance(exc, (RuntimeError, SystemError)) and bool(interrupted)


def run_node(name: str, factory: Callable[[], object], args: Optional[Sequence[str]] = None,
             start: Optional[Callable[[object], None]] = None) -> int:
    """Run the node ``factory()`` until shutdown; ``start(node)`` runs before spinning."""
    interrupted = catch_sigint()
    rclpy.init(args=args)
    node = None
    try:
        node = factory()
        if start is not None:
            start(node)
        rclpy.spin(node)
    except MmdistillError as exc:
        print(f'{name}: error: {exc}', file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        settle_signal_thread()
    except (RuntimeError, SystemError) as exc:
        if not interrupted_take(exc, interrupted):
            raise
        settle_signal_thread()
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
