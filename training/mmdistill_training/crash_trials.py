"""Kill a bag writer with SIGKILL at a random moment, recover the bag and count what survived.

Two writers, as the reliability campaign (``benchmarks/bench_reliability.py``) and the CI test
(``tests/test_crash_recovery.py``) run them:

* :func:`recorder_trial`: a ``recorder_node`` process records audio that this process publishes
  over DDS; after a random time it is killed. Every published chunk carries its index in the
  samples, so the recovered bag is checked message by message: each one decodes, is one that was
  published, and they are the first ``n`` published (nothing in the middle is lost). Lost =
  published before the kill − recovered.
* :func:`sim_trial`: ``mmdistill sim`` is killed; the simulator is deterministic, so the recovered
  messages must equal the first messages of every topic of a clean run (decoded and compared).
  The command runs through :func:`counted_sim` (``mmdistill``'s own ``main``, with every
  ``BagWriter.write`` call counted in a shared memory-mapped file, which outlives the SIGKILL),
  so lost = messages handed to the writer before the kill − recovered (at most one too many: the
  count is raised before the write).

Both recover with :func:`mmdistill_common.bag_recovery.recover_bag` and read the result twice:
with :class:`~mmdistill_common.bagio.BagReader` and with the independent ``mcap`` reader
(``mcap.reader.make_reader``, summary and footer included) or plain ``sqlite3``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from mmdistill_common.bag_recovery import recover_bag
from mmdistill_common.bagio import BagReader

CHUNK_FRAMES = 1764           # 40 ms at 44.1 kHz
CHANNELS = 8


def independent_count(bag: Path) -> int:
    """Messages in the bag's storage file counted without rosbags: the ``mcap`` package's seeking
    reader (needs a valid summary and footer) or sqlite3."""
    files = sorted(bag.glob('*.mcap')) + sorted(bag.glob('*.db3'))
    if files[0].suffix == '.mcap':
        from mcap.reader import make_reader
        with open(files[0], 'rb') as f:
            reader = make_reader(f)
            summary = reader.get_summary()
            n = sum(1 for _ in reader.iter_messages())
            assert summary is not None and summary.statistics.message_count == n, 'MCAP summary disagrees'
            return n
    con = sqlite3.connect(f'file:{files[0]}?mode=ro', uri=True)
    try:
        return int(con.execute('SELECT count(*) FROM messages').fetchone()[0])
    finally:
        con.close()


def indexed_chunk(k: int) -> np.ndarray:
    """Audio chunk ``k``: every sample holds ``k`` (mod 2**15) so a recovered chunk names itself."""
    return np.full((CHUNK_FRAMES, CHANNELS), k % 32768, np.int16)


def recorder_trial(executor, out: Path, run_s: float, storage: str = 'mcap', rate_hz: float = 25.0,
                   flush_period: float = 1.0, start_timeout: float = 60.0) -> dict:
    """Record published audio with ``recorder_node``, SIGKILL it after ``run_s`` s of publishing,
    recover, and compare. ``executor`` is a spinning :class:`mmdistill_common.testing.BackgroundExecutor`."""
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo
    from rclpy.node import Node

    from mmdistill_common import topics
    from mmdistill_common.conversions import audio_info, audio_to_msg, msg_to_audio
    from mmdistill_common.qos import latched_qos, stream_qos
    from mmdistill_common.testing import start_node, wait_for

    proc = start_node('mmdistill_teachers.recorder_node', f'output:={out}', f'storage:={storage}',
                      f'flush_period:={flush_period}', 'record_teacher_detections:=false')
    node = executor.add(Node(f'crash_source_{os.getpid()}_{out.name}'.replace('-', '_')))
    info_pub = node.create_publisher(AudioInfo, topics.AUDIO_INFO, latched_qos())
    audio_pub = node.create_publisher(AudioDataStamped, topics.AUDIO, stream_qos())
    info_pub.publish(audio_info(CHANNELS, 44100))
    try:
        if not wait_for(lambda: audio_pub.get_subscription_count() >= 1 and proc.poll() is None,
                        timeout=start_timeout):
            raise RuntimeError('recorder_node did not subscribe: ' +
                               (proc.stderr.read() if proc.poll() is not None else 'timeout'))
        time.sleep(0.3)                       # the latched audio_info reaches the recorder
        published = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < run_s:
            audio_pub.publish(audio_to_msg(indexed_chunk(published), 1_000_000_000 + published * 40_000_000))
            published += 1
            time.sleep(max(0.0, t0 + published / rate_hz - time.monotonic()))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        executor.executor.remove_node(node)
        node.destroy_node()
    from mmdistill_common.errors import InputError
    try:
        report = recover_bag(out)
    except InputError as exc:       # killed before anything reached the disk: everything published is lost
        return {'writer': 'recorder_node', 'storage': storage, 'run_s': round(run_s, 3), 'published': published,
                'recovered': 0, 'lost': published, 'prefix_intact': True, 'audio_info_kept': False,
                'independent_reader_count': 0, 'recovered_total': 0, 'note': str(exc)}
    with BagReader(out) as reader:
        got = [msg_to_audio(m.msg, CHANNELS)[0, 0] for m in reader.messages([topics.AUDIO])]
        has_info = len(list(reader.messages([topics.AUDIO_INFO]))) == 1
    ok_prefix = [int(v) for v in got] == list(range(len(got)))
    return {'writer': 'recorder_node', 'storage': storage, 'run_s': round(run_s, 3), 'published': published,
            'recovered': len(got), 'lost': published - len(got), 'prefix_intact': ok_prefix,
            'audio_info_kept': has_info, 'independent_reader_count': independent_count(out),
            'recovered_total': report.total, 'discarded_bytes': report.discarded_bytes}


def _flushed(bag: Path) -> bool:
    """Whether the writer of ``bag`` has put a message on disk yet."""
    from mmdistill_common.bagio import storage_files
    files = storage_files(bag) if bag.is_dir() else []
    if not files:
        return False
    if files[0].suffix == '.mcap':
        return files[0].stat().st_size > 200          # more than the MCAP header: the first chunk
    try:
        con = sqlite3.connect(f'file:{files[0]}?mode=ro', uri=True, timeout=0.1)
        try:
            return con.execute('SELECT count(*) FROM messages').fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return False


def counted_sim(counter: str, argv) -> int:
    """``mmdistill ARGV`` (``mmdistill_training.cli.main``) with the number of messages handed to
    ``BagWriter.write`` kept, before each call, in the 8-byte file ``counter`` (shared mapping:
    what was written is in the page cache when the process is killed)."""
    from mmdistill_common import bagio
    from mmdistill_training.cli import main
    with open(counter, 'r+b') as f:
        shared = mmap.mmap(f.fileno(), 8)
    handed = [0]
    write = bagio.BagWriter.write

    def counted(self, topic, msg, stamp_ns):
        handed[0] += 1
        shared[:8] = handed[0].to_bytes(8, 'little')
        return write(self, topic, msg, stamp_ns)
    bagio.BagWriter.write = counted
    return main(list(argv))


def _feed(h, value) -> None:
    """Hash a message's field values (not its CDR: rclpy leaves the alignment padding uninitialised)."""
    if hasattr(value, 'get_fields_and_field_types'):
        for name in value.get_fields_and_field_types():
            h.update(name.encode())
            _feed(h, getattr(value, name))
    elif isinstance(value, (bytes, bytearray)):
        h.update(bytes(value))
    elif hasattr(value, 'tobytes'):            # array.array, numpy arrays
        h.update(value.tobytes())
    elif isinstance(value, (list, tuple)):
        h.update(f'[{len(value)}'.encode())
        for v in value:
            _feed(h, v)
    else:
        h.update(repr(value).encode())


def _digest(msg, round_trip: bool = False) -> str:
    """SHA-256 of a message's fields; ``round_trip``: of the message as it comes back from CDR (float32
    fields rounded), as a recorded message is read."""
    if round_trip:
        from rclpy.serialization import deserialize_message, serialize_message
        msg = deserialize_message(serialize_message(msg), type(msg))
    h = hashlib.sha256()
    _feed(h, msg)
    return h.hexdigest()


class CleanRun:
    """A clean (unkilled) run of one seeded drive, simulated in this process as far as needed: per topic,
    (stamp, SHA-256 of the CDR) of its messages in order."""

    def __init__(self, scenario: str, seed: int, duration_s: float, images: bool = True) -> None:
        from mmdistill_sim.messages import messages
        from mmdistill_sim.scenario import load_scenario
        from mmdistill_sim.simulator import Simulator
        self.key = (scenario, seed, duration_s, images)
        sc = dataclasses.replace(load_scenario(scenario, seed=seed), duration_s=duration_s)
        self._it = messages(Simulator(sc), images=images)
        self.per_topic: Dict[str, list] = {}

    def ensure(self, want: Dict[str, int]) -> None:
        while any(len(self.per_topic.get(t, [])) < n for t, n in want.items()):
            item = next(self._it, None)
            if item is None:
                return
            topic, msg, stamp = item
            self.per_topic.setdefault(topic, []).append((stamp, _digest(msg, round_trip=True)))


def sim_trial(out: Path, kill_after_s: float, scenario: str = 'day-static', duration_s: float = 20.0,
              storage: str = 'mcap', images: bool = True, seed: int = 0, start_timeout: float = 300.0,
              clean: Optional['CleanRun'] = None) -> Optional[dict]:
    """SIGKILL ``mmdistill sim`` ``kill_after_s`` s after its stream started (a second message handed to the
    writer, the first on disk), recover and compare with a clean run of the same seeded scenario; None when
    the simulation finished before the kill. ``clean``: the clean run of the same drive, kept between
    trials of one seed (it is simulated once and extended as far as a trial needs)."""
    from mmdistill_common.testing import wait_for
    counter = out.with_name(out.name + '.handed')
    counter.write_bytes(bytes(8))
    cmd = [sys.executable, '-m', 'mmdistill_training.crash_trials', str(counter), 'sim', '--scenario', scenario,
           '--out', str(out), '--duration', str(duration_s), '--seed', str(seed), '--storage', storage]
    if not images:
        cmd.append('--no-images')
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def handed_now() -> int:
        return int.from_bytes(counter.read_bytes()[:8], 'little')
    # start-up and the simulation of the drive's audio take seconds and vary with the load (audio_info is
    # written and flushed first, then nothing until the audio exists): time the kill from the first
    # message after it (the stream of chunks and frames has started) once the bag is on disk
    wait_for(lambda: proc.poll() is not None or (handed_now() >= 2 and _flushed(out)), start_timeout, 0.01)
    try:
        proc.wait(timeout=kill_after_s)
        return None
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    handed = handed_now()
    if not out.exists() or not any(out.iterdir()):
        return {'writer': 'mmdistill sim', 'storage': storage, 'kill_after_s': round(kill_after_s, 3),
                'recovered': 0, 'handed_to_writer': handed, 'lost': handed,
                'note': 'killed before the bag was created', 'prefix_intact': True, 'independent_reader_count': 0}
    size = sum(f.stat().st_size for f in out.iterdir())
    try:
        report = recover_bag(out)
    except Exception as exc:       # noqa: BLE001 - reported: a bag killed before its first chunk has nothing
        return {'writer': 'mmdistill sim', 'storage': storage, 'kill_after_s': round(kill_after_s, 3),
                'recovered': 0, 'handed_to_writer': handed, 'lost': handed, 'bytes_on_disk': size,
                'note': str(exc), 'prefix_intact': True, 'independent_reader_count': 0}
    with BagReader(out) as reader:
        got: Dict[str, list] = {}
        for m in reader.messages():
            got.setdefault(m.topic, []).append(m)
    # the same drive again, up to the last recovered message of every topic
    if clean is None or clean.key != (scenario, seed, duration_s, images):
        clean = CleanRun(scenario, seed, duration_s, images)
    clean.ensure({t: len(v) for t, v in got.items()})
    prefix = True
    for topic, recovered in got.items():
        ref = clean.per_topic.get(topic, [])
        # through CDR, as the recorded one went (float32 fields are rounded)
        prefix = prefix and len(ref) >= len(recovered) and all(
            rec.stamp_ns == stamp and _digest(rec.msg) == digest for rec, (stamp, digest) in zip(recovered, ref))
    # lost: handed to the writer before the kill, not in the recovered bag
    return {'writer': 'mmdistill sim', 'storage': storage, 'kill_after_s': round(kill_after_s, 3),
            'recovered': report.total, 'handed_to_writer': handed, 'lost': handed - report.total,
            'bytes_on_disk': size, 'discarded_bytes': report.discarded_bytes,
            'prefix_intact': prefix, 'independent_reader_count': independent_count(out)}


if __name__ == '__main__':       # python -m mmdistill_training.crash_trials COUNTER_FILE <mmdistill args>
    sys.exit(counted_sim(sys.argv[1], sys.argv[2:]))
