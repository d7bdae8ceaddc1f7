"""rosbag2 bags (MCAP or sqlite3) read and written with ``rosbags``.

Messages are rclpy message objects, (de)serialised to CDR with
``rclpy.serialization`` so that what is written is byte-for-byte what a live
publisher sends. ``rosbags`` needs the message definitions to describe each
topic; the project's and the compat interface types are registered from the
``.msg`` files installed in each package's share directory.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from rclpy.serialization import deserialize_message, serialize_message
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

from .errors import InputError

# interface packages not in the rosbags Kilted store, registered from their .msg files
EXTRA_INTERFACE_PACKAGES = ('vision_msgs', 'audio_common_msgs', 'mmdistill_msgs')
STORAGE = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}

_TYPESTORE = None


def typestore():
    """The Kilted typestore plus vision_msgs, audio_common_msgs and mmdistill_msgs (built once)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from ament_index_python.packages import get_package_share_directory
        store = get_typestore(Stores.ROS2_KILTED)
        types = {}
        for pkg in EXTRA_INTERFACE_PACKAGES:
            for path in sorted(Path(get_package_share_directory(pkg), 'msg').glob('*.msg')):
                types.update(get_types_from_msg(path.read_text(), f'{pkg}/msg/{path.stem}'))
        store.register(types)
        _TYPESTORE = store
    return _TYPESTORE


def message_class(msgtype: str):
    """``'sensor_msgs/msg/Image'`` -> the rclpy message class."""
    try:
        pkg, kind, name = msgtype.split('/')
        return getattr(importlib.import_module(f'{pkg}.{kind}'), name)
    except (ValueError, ImportError, AttributeError) as exc:
        raise InputError(f'message type {msgtype!r} is not available in this ROS install') from exc


def type_name(msg_or_class) -> str:
    """rclpy message (class) -> ``'pkg/msg/Name'``."""
    cls = msg_or_class if isinstance(msg_or_class, type) else type(msg_or_class)
    pkg = cls.__module__.split('.')[0]
    return f'{pkg}/msg/{cls.__name__}'


def _qos(transient_local: bool) -> Qos:
    return Qos(QosHistory.KEEP_LAST, 1 if transient_local else 10,
               QosReliability.RELIABLE,
               QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               QosTime(0, 0), QosTime(0, 0), QosLiveliness.AUTOMATIC, QosTime(0, 0), False)


class BagWriter:
    """Write rclpy messages to a new rosbag2 bag; use as a context manager.

    The bag is complete (readable, with metadata) once ``close()`` ran, which the
    context manager guarantees also on exceptions and KeyboardInterrupt.
    """

    def __init__(self, path, storage: str = 'mcap') -> None:
        if storage not in STORAGE:
            raise InputError(f'unknown bag storage {storage!r} (choose from {", ".join(STORAGE)})')
        self.path = Path(path)
        if self.path.exists():
            raise InputError(f'bag {self.path} already exists; choose a new path')
        self._writer = Writer(self.path, version=9, storage_plugin=STORAGE[storage])
        self._writer.open()
        self._connections: Dict[str, object] = {}
        self.counts: Dict[str, int] = {}

    def add_topic(self, topic: str, msgtype: str, transient_local: bool = False) -> None:
        if topic in self._connections:
            return
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=typestore(), offered_qos_profiles=[_qos(transient_local)])
        self.counts[topic] = 0

    def write(self, topic: str, msg, stamp_ns: int) -> None:
        """Serialise ``msg`` (registering the topic on first use) and write it at ``stamp_ns``."""
        if topic not in self._connections:
            self.add_topic(topic, type_name(msg))
        self.write_cdr(topic, serialize_message(msg), stamp_ns)

    def write_cdr(self, topic: str, data: bytes, stamp_ns: int) -> None:
        self._writer.write(self._connections[topic], int(stamp_ns), data)
        self.counts[topic] += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> 'BagWriter':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BagMessage(NamedTuple):
    topic: str
    msgtype: str
    stamp_ns: int       # bag receive/log time
    msg: object         # rclpy message


class BagReader:
    """Read a rosbag2 bag (MCAP or sqlite3) into rclpy messages; use as a context manager."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f'bag {self.path} does not exist')
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # rosbags raises several types for damaged bags
            raise InputError(f'cannot open bag {self.path}: {exc}') from exc

    @property
    def topics(self) -> Dict[str, Tuple[str, int]]:
        """topic -> (message type, message count)."""
        return {name: (info.msgtype, info.msgcount) for name, info in self._reader.topics.items()}

    @property
    def start_ns(self) -> int:
        return self._reader.start_time

    @property
    def end_ns(self) -> int:
        return self._reader.end_time

    def require(self, topics: Sequence[str]) -> None:
        """Raise InputError naming the first of ``topics`` the bag lacks."""
        have = self.topics
        for topic in topics:
            if topic not in have:
                raise InputError(f'bag {self.path} has no topic {topic} (it has: {", ".join(sorted(have)) or "none"})')

    def messages(self, topics: Optional[Sequence[str]] = None) -> Iterator[BagMessage]:
        """Messages in log-time order, deserialised with rclpy."""
        conns = [c for c in self._reader.connections if topics is None or c.topic in topics]
        classes = {c.id: message_class(c.msgtype) for c in conns}
        try:
            for conn, stamp, data in self._reader.messages(connections=conns):
                yield BagMessage(conn.topic, conn.msgtype, stamp, deserialize_message(bytes(data), classes[conn.id]))
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f'bag {self.path} is damaged or truncated: {exc}') from exc

    def read_all(self, topics: Optional[Sequence[str]] = None) -> Dict[str, List[BagMessage]]:
        out: Dict[str, List[BagMessage]] = {}
        for m in self.messages(topics):
            out.setdefault(m.topic, []).append(m)
        return out

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> 'BagReader':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
