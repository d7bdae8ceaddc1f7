"""Recover a rosbag2 bag whose writer died before closing it (SIGKILL, power loss, crash).

The equivalent of ``ros2 bag reindex`` for bags written by :class:`~.bagio.BagWriter`: such a
bag has its storage file but no ``metadata.yaml``, and an MCAP file without summary, footer or
the chunk being written when the process died. What is on disk is read record by record
(``mcap.stream_reader.StreamReader`` up to the first incomplete record; sqlite3 after its own
journal rollback), rewritten as a complete bag, and moved into place. Nothing is deleted: the
damaged storage file stays beside the recovered one as ``<name>.damaged``.
"""
from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import yaml

from .bagio import METADATA_FILE, STORAGE_SUFFIXES, BagWriter, storage_files
from .errors import InputError

DAMAGED_SUFFIX = '.damaged'

# (topic, msgtype, transient_local, log time ns, CDR bytes)
RawMessage = Tuple[str, str, bool, int, bytes]


@dataclass
class RecoveryReport:
    """What ``recover_bag`` found and wrote."""
    bag: str
    storage: str
    status: str                                   # 'recovered' or 'complete' (nothing to do)
    messages: Dict[str, int] = field(default_factory=dict)
    discarded_bytes: int = 0                      # tail of the damaged file that held no whole chunk
    damaged_file: Optional[str] = None            # where the original storage file was kept

    @property
    def total(self) -> int:
        return sum(self.messages.values())

    def as_dict(self) -> dict:
        return {'bag': self.bag, 'storage': self.storage, 'status': self.status, 'total': self.total,
                'messages': dict(self.messages), 'discarded_bytes': self.discarded_bytes,
                'damaged_file': self.damaged_file}


def _transient_local(qos_text: str) -> bool:
    """Whether rosbag2's ``offered_qos_profiles`` YAML offers transient-local durability."""
    try:
        profiles = yaml.safe_load(qos_text) or []
    except yaml.YAMLError:
        return False
    return any(isinstance(p, dict) and str(p.get('durability')).lower() in ('transient_local', '1')
               for p in profiles)


def read_mcap_prefix(path: Path, stats: dict) -> Iterator[RawMessage]:
    """Messages of every complete record of an MCAP file, in file order; stops quietly at the first
    truncated or corrupt record. Sets ``stats['valid_bytes']`` (where that record began) and
    ``stats['topics']`` (topic -> (msgtype, transient_local) of every channel seen)."""
    from mcap.records import Channel, Chunk, Message, Schema
    from mcap.stream_reader import StreamReader, breakup_chunk

    schemas: Dict[int, str] = {}
    channels: Dict[int, Tuple[str, str, bool]] = {}
    stats['valid_bytes'] = 0
    stats['topics'] = {}
    with open(path, 'rb') as f:
        reader = StreamReader(f, emit_chunks=True, record_size_limit=path.stat().st_size)
        records = reader.records
        while True:
            try:
                record = next(records)
                inner = breakup_chunk(record) if isinstance(record, Chunk) else [record]
            except StopIteration:
                return
            except Exception:            # noqa: BLE001 - the mcap package raises several types at a torn end
                return
            stats['valid_bytes'] = f.tell()
            for rec in inner:
                if isinstance(rec, Schema):
                    schemas[rec.id] = rec.name
                elif isinstance(rec, Channel):
                    channels[rec.id] = (rec.topic, schemas.get(rec.schema_id, ''),
                                        _transient_local(rec.metadata.get('offered_qos_profiles', '')))
                    stats['topics'][rec.topic] = channels[rec.id][1:]
                elif isinstance(rec, Message) and rec.channel_id in channels:
                    topic, msgtype, latched = channels[rec.channel_id]
                    yield topic, msgtype, latched, rec.log_time, bytes(rec.data)


def read_sqlite_prefix(path: Path, stats: dict) -> Iterator[RawMessage]:
    """Committed messages of a rosbag2 sqlite3 file in insertion order (sqlite rolls back the
    transaction the killed writer left open when the file is opened); ``stats['topics']`` as for
    :func:`read_mcap_prefix`."""
    try:
        con = sqlite3.connect(f'file:{path}', uri=True)
        topics = {tid: (name, msgtype, _transient_local(qos or '')) for tid, name, msgtype, qos in
                  con.execute('SELECT id, name, type, offered_qos_profiles FROM topics')}
        stats['topics'] = {name: (msgtype, latched) for name, msgtype, latched in topics.values()}
        rows = con.execute('SELECT topic_id, timestamp, data FROM messages ORDER BY id')
    except sqlite3.DatabaseError as exc:
        raise InputError(f'{path} is not a readable rosbag2 sqlite3 file: {exc}') from exc
    try:
        for tid, stamp, data in rows:
            if tid in topics:
                name, msgtype, latched = topics[tid]
                yield name, msgtype, latched, int(stamp), bytes(data)
    finally:
        con.close()


def _damaged_storage(bag: Path) -> Path:
    files = storage_files(bag)
    if not files:     # an earlier recovery died after moving the original aside
        files = sorted(f for f in bag.glob('*' + DAMAGED_SUFFIX) if Path(f.stem).suffix in STORAGE_SUFFIXES)
    if len(files) != 1:
        found = ', '.join(f.name for f in files) or 'none'
        raise InputError(f'{bag} should hold one .mcap or .db3 storage file (found: {found})')
    return files[0]


def _complete_report(bag: Path) -> Optional[RecoveryReport]:
    """The report of a bag that opens and reads to its end, or None when it does not."""
    from .bagio import BagReader
    try:
        with BagReader(bag) as reader:
            counts: Dict[str, int] = {}
            for m in reader.messages():
                counts[m.topic] = counts.get(m.topic, 0) + 1
    except InputError:
        return None
    files = storage_files(bag)
    return RecoveryReport(str(bag), STORAGE_SUFFIXES[files[0].suffix] if files else 'unknown', 'complete', counts)


def recover_bag(bag) -> RecoveryReport:
    """Make ``bag`` a complete rosbag2 bag again from what its killed writer left on disk.

    A bag that reads to its end is left alone (status ``complete``); one whose ``metadata.yaml``
    exists but whose storage file is truncated or damaged is rebuilt like a killed one (the old
    metadata kept as ``metadata.yaml.damaged``). Raises
    ``InputError`` (nothing changed) when ``bag`` is no bag directory or holds no readable data."""
    bag = Path(bag)
    if not bag.is_dir():
        raise InputError(f'bag {bag} does not exist or is not a directory')
    if (bag / METADATA_FILE).exists():
        report = _complete_report(bag)
        if report is not None:
            return report
    damaged = _damaged_storage(bag)
    name = damaged.name[:-len(DAMAGED_SUFFIX)] if damaged.name.endswith(DAMAGED_SUFFIX) else damaged.name
    storage = STORAGE_SUFFIXES[Path(name).suffix]
    stats: dict = {}
    messages = read_mcap_prefix(damaged, stats) if storage == 'mcap' else read_sqlite_prefix(damaged, stats)
    work = bag.parent / f'.{bag.name}.recovering'
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    tmp = work / Path(name).stem       # rosbags names the storage file after its directory
    report = RecoveryReport(str(bag), storage, 'recovered')
    try:
        with BagWriter(tmp, storage=storage, fsync=False) as out:
            for topic, msgtype, latched, stamp, data in messages:
                out.add_topic(topic, msgtype, transient_local=latched)
                out.write_cdr(topic, data, stamp)
            for topic, (msgtype, latched) in stats.get('topics', {}).items():    # topics without messages
                out.add_topic(topic, msgtype, transient_local=latched)
            report.messages = dict(out.counts)
    except Exception:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if not report.messages:
        shutil.rmtree(work, ignore_errors=True)
        raise InputError(f'bag {bag}: {damaged.name} holds no complete chunk; nothing to recover')
    if storage == 'mcap':
        report.discarded_bytes = damaged.stat().st_size - stats['valid_bytes']
    kept = bag / (name + DAMAGED_SUFFIX)
    if damaged != kept:
        damaged.rename(kept)
    (tmp / name).rename(bag / name)
    if (bag / METADATA_FILE).exists():
        (bag / METADATA_FILE).rename(bag / (METADATA_FILE + DAMAGED_SUFFIX))
    (tmp / METADATA_FILE).rename(bag / METADATA_FILE)      # last: the bag is complete from here on
    shutil.rmtree(work)
    report.damaged_file = str(kept)
    return report
