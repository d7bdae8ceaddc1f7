"""rosbag2 bags (MCAP or sqlite3) read and written with ``rosbags``.

Messages are rclpy message objects, (de)serialised to CDR with
``rclpy.serialization`` so that what is written is byte-for-byte what a live
publisher sends. ``rosbags`` needs the message definitions to describe each
topic; the project's and the compat interface types are registered from the
``.msg`` files installed in each package's share directory.

Crash safety: ``rosbags`` writes ``metadata.yaml`` (and the MCAP summary) only on
``close()``, keeps up to 1 MiB of MCAP messages in memory and commits sqlite3 only on
close, so a killed writer used to leave nothing readable. :class:`BagWriter` therefore
closes the MCAP chunk (or commits the sqlite3 transaction) at least every
``flush_period_s`` and hands it to the disk (``fsync``), so a SIGKILL or a power loss costs
at most the last chunk; ``mmdistill bag recover`` (:mod:`.bag_recovery`) turns what is on
disk into a complete bag again.
"""
from __future__ import annotations

import array
import importlib
import os
import struct
import time
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from rclpy.serialization import deserialize_message, serialize_message
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore, get_types_from_msg

from .errors import InputError

METADATA_FILE = 'metadata.yaml'
STORAGE_SUFFIXES = {'.mcap': 'mcap', '.db3': 'sqlite3'}
FLUSH_PERIOD_S = 1.0
SQLITE_COMMIT_BYTES = 1 << 20     # sqlite3 commits at least every MiB (MCAP: its 1-MiB chunks)
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


def _cdr_string(out: list, pos: int, text: str) -> int:
    """Append a CDR string (uint32 length incl. NUL, bytes, NUL) aligned to 4; returns the new position."""
    raw = text.encode()
    pad = -pos % 4
    out.append(b'\0' * pad + struct.pack('<I', len(raw) + 1) + raw + b'\0')
    return pos + pad + 4 + len(raw) + 1


def image_cdr(msg) -> Optional[bytes]:
    """``sensor_msgs/Image`` as little-endian CDR, byte for byte what ``serialize_message`` gives, with one
    copy of the pixels instead of rclpy's several (images are most of a simulator bag's bytes);
    None for anything else (then the caller serialises with rclpy)."""
    if type(msg).__module__.split('.')[0] != 'sensor_msgs' or not isinstance(msg.data, (array.array, bytes)):
        return None
    out = [b'\0\x01\0\0', struct.pack('<iI', msg.header.stamp.sec, msg.header.stamp.nanosec)]
    pos = 8                                   # offsets count from after the 4-byte encapsulation header
    pos = _cdr_string(out, pos, msg.header.frame_id)
    pad = -pos % 4
    out.append(b'\0' * pad + struct.pack('<II', msg.height, msg.width))
    pos += pad + 8
    pos = _cdr_string(out, pos, msg.encoding)
    out.append(struct.pack('<B', msg.is_bigendian))
    pos += 1
    pad = -pos % 4
    data = memoryview(msg.data).cast('B')
    out.append(b'\0' * pad + struct.pack('<II', msg.step, len(data)))
    out.append(data)
    return b''.join(out)


class BagWriter:
    """Write rclpy messages to a new rosbag2 bag; use as a context manager.

    The bag is complete (readable, with metadata) once ``close()`` ran, which the
    context manager guarantees also on exceptions and KeyboardInterrupt. Before that, what
    was flushed (every ``flush_period_s`` of wall time, and every 1 MiB: an MCAP chunk, a sqlite3 commit) is on
    disk and ``mmdistill bag recover`` restores it; ``fsync=False`` trades power-loss safety
    for speed (a killed process still loses only the unflushed chunk).
    """

    def __init__(self, path, storage: str = 'mcap', flush_period_s: float = FLUSH_PERIOD_S,
                 fsync: bool = True) -> None:
        if storage not in STORAGE:
            raise InputError(f'unknown bag storage {storage!r} (choose from {", ".join(STORAGE)})')
        self.path = Path(path)
        if self.path.exists():
            raise InputError(f'bag {self.path} already exists; choose a new path')
        self.storage = storage
        self.flush_period_s = flush_period_s
        self._fsync = fsync
        self._writer = Writer(self.path, version=9, storage_plugin=STORAGE[storage])
        self._writer.open()
        self._connections: Dict[str, object] = {}
        self.counts: Dict[str, int] = {}
        self.bytes_written = 0          # serialized message bytes (for size-based splitting)
        self.flushes = 0
        self._chunks_closed = 0
        self._flushed_bytes = 0         # bytes_written at the last flush
        self._last_flush = time.monotonic()

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
        data = image_cdr(msg) if type(msg).__name__ == 'Image' else None
        self.write_cdr(topic, serialize_message(msg) if data is None else data, stamp_ns)

    def write_cdr(self, topic: str, data: bytes, stamp_ns: int) -> None:
        self._writer.write(self._connections[topic], int(stamp_ns), data)
        self.counts[topic] += 1
        self.bytes_written += len(data)
        if self.flushes == 0:
            self.flush()            # the first message: from now on a kill leaves a recoverable bag
        else:
            self.flush_if_due()

    def flush_if_due(self) -> None:
        """Flush when rosbags closed a chunk by size or ``flush_period_s`` passed (cheap to call
        often; a recorder also calls it from a timer so that a quiet stream is flushed too)."""
        storage = self._writer.storage if self._writer is not None else None
        if storage is None:
            return
        if self.storage == 'mcap':
            chunk_closed = len(storage.chunks) != self._chunks_closed
        else:                            # sqlite3: a commit per MiB, as MCAP closes its 1-MiB chunks
            chunk_closed = self.bytes_written - self._flushed_bytes >= SQLITE_COMMIT_BYTES
        if chunk_closed or time.monotonic() - self._last_flush >= self.flush_period_s:
            self.flush()

    def flush(self) -> None:
        """Put every message written so far on disk: close the MCAP chunk / commit sqlite3."""
        storage = self._writer.storage if self._writer is not None else None
        if storage is None:
            return
        # rosbags has no public flush; these are its storage writers' own members
        if self.storage == 'mcap':
            if storage.chunk.bio.tell():
                storage.close_chunk()
            self._chunks_closed = len(storage.chunks)
            storage.bio.flush()
            if self._fsync:
                os.fsync(storage.bio.fileno())
        else:
            storage.conn.commit()       # sqlite3 (rollback journal, synchronous=FULL): durable
        self._flushed_bytes = self.bytes_written
        self._last_flush = time.monotonic()
        self.flushes += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> 'BagWriter':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def storage_files(path: Path) -> List[Path]:
    """The storage files (``*.mcap``, ``*.db3``) directly in bag directory ``path``."""
    return sorted(f for f in path.iterdir() if f.suffix in STORAGE_SUFFIXES and f.is_file())


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
        if self.path.is_dir() and not (self.path / METADATA_FILE).exists() and storage_files(self.path):
            raise InputError(f'incomplete bag {self.path} (no {METADATA_FILE}: its writer was killed '
                             f'before closing it): run mmdistill bag recover {self.path}')
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
        if not conns:           # rosbags reads every connection when given none
            return
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
