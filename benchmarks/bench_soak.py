"""Soak: the car graph on simulated audio for N minutes; memory, CPU, output rate, dropped and late
outputs over time.

``mmdistill-bringup car`` runs as a child process (one torch thread, its own ``ROS_DOMAIN_ID``,
localhost discovery), as in ``bench_graph.py``. This process feeds it ``--loop-seconds`` of
simulator audio (8 channels, 44.1 kHz, 40-ms S16LE chunks) over and over at real-time pace with
continuous stamps, so the graph sees one endless drive, and samples every ``--interval`` s:

* RSS of the graph process (``VmRSS``) and its CPU (user + system, % of one core);
* ``/student/detections`` and ``/tracking/tracks`` received in the interval (expected: 10 Hz);
* dropped = expected grid outputs that never came; late = outputs received more than ``--late-ms``
  after the publication of the audio chunk that completed their window (the window's inherent
  look-ahead excluded, the rule of ``bench_graph.CompletionRule``);
* warnings the graph logged (gaps, dropped input) in the interval.

RSS growth = (RSS at the end − RSS after the warm-up) / RSS after the warm-up; the goal is < 5 %.

    nice -n 15 python benchmarks/bench_soak.py --minutes 30 --out benchmarks/results/soak.json
    python benchmarks/bench_soak.py --minutes 1            # the CI variant (tests/test_soak.py: 20 s)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

# bench_graph sets the thread counts, a private ROS domain and localhost discovery on import
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_graph import (CHUNK_S, RATE_HZ, audio_messages, make_checkpoints, proc_cpu_s,  # noqa: E402
                         start_graph, stop_graph)
from bench_sim import machine_info  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024.0
    return float('nan')


class Completion:
    """Index of the audio chunk whose publication completes the window of grid stamp ``g`` (the
    runtime's due rule, for an endless stream of chunks of ``cs`` samples from ``t0``)."""

    def __init__(self, meta: dict, t0_ns: int, fs: int, cs: int) -> None:
        from mmdistill_student.frontend import FrontendConfig
        fe = FrontendConfig.from_dict(meta['config']['frontend'])
        n = fe.window_samples
        lead = n if fe.mode == 'causal' else n // 2
        self.after = (n - lead) + fe.hop
        self.first = t0_ns + round((lead + fe.hop) * 1e9 / fs)     # first grid stamp with a full window
        self.t0, self.fs, self.cs = t0_ns, fs, cs

    def chunk(self, g_ns: int) -> int:
        return max(0, math.ceil(((g_ns - self.t0) * self.fs / 1e9 + self.after) / self.cs) - 1)


def count_warnings(log_path: Path, offset: int):
    """Warning/error lines the graph logged since byte ``offset`` -> (count, new offset)."""
    with open(log_path, 'rb') as f:
        f.seek(offset)
        text = f.read()
    return sum(1 for line in text.splitlines() if b'[WARN]' in line or b'[ERROR]' in line), offset + len(text)


def run(args) -> dict:
    import rclpy
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo
    from rclpy.executors import SingleThreadedExecutor
    from vision_msgs.msg import Detection2DArray

    from mmdistill_common import topics
    from mmdistill_common.conversions import ns_to_stamp, stamp_to_ns
    from mmdistill_common.qos import latched_qos, stream_qos
    from mmdistill_student.checkpoint import read_checkpoint_metadata

    tmp = Path(tempfile.mkdtemp(prefix='bench_soak_'))
    ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoints(tmp, 0.05)['centered']
    info, loop, t0_ns, fs, cs = audio_messages(args.scenario, args.offset, args.loop_seconds)
    rule = Completion(read_checkpoint_metadata(ckpt), t0_ns, fs, cs)
    period_ns = int(round(1e9 / RATE_HZ))
    pub_t = {}                                          # chunk index -> publish time
    rows = {'student': [], 'tracks': []}                # (receive time, stamp)
    rclpy.init()
    node = rclpy.create_node('bench_soak_feeder')
    pub = node.create_publisher(AudioDataStamped, topics.AUDIO, stream_qos())
    info_pub = node.create_publisher(AudioInfo, topics.AUDIO_INFO, latched_qos())
    for key, topic in (('student', topics.STUDENT_DETECTIONS), ('tracks', topics.TRACKS)):
        node.create_subscription(Detection2DArray, topic,
                                 lambda m, k=key: rows[k].append((time.perf_counter(), stamp_to_ns(m.header.stamp))),
                                 stream_qos())
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    info_pub.publish(info)
    log_path = tmp / 'graph.log'
    with open(log_path, 'w') as log:
        proc = start_graph(ckpt, args.tracker, None, 0.05 if not args.checkpoint else None, log)
    samples = []
    try:
        deadline = time.monotonic() + args.startup_timeout
        while not (pub.get_subscription_count() >= 1 and node.count_publishers(topics.TRACKS) >= 1):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'graph did not come up (exit {proc.poll()}):\n{log_path.read_text()[-2000:]}')
            ex.spin_once(timeout_sec=0.1)
        end_wait = time.perf_counter() + 1.0
        while time.perf_counter() < end_wait:
            ex.spin_once(timeout_sec=0.05)
        n_chunks = int(round(args.minutes * 60 / CHUNK_S))
        start = time.perf_counter()
        next_sample = start + args.interval
        last = {'cpu': proc_cpu_s(proc.pid), 't': start, 'student': 0, 'tracks': 0, 'log': 0, 'chunk': 0}
        for k in range(n_chunks):
            due = start + (k + 1) * CHUNK_S
            while True:
                rem = due - time.perf_counter()
                if rem <= 0:
                    break
                ex.spin_once(timeout_sec=rem)
            msg = loop[k % len(loop)]
            msg.header.stamp = ns_to_stamp(t0_ns + k * cs * 1_000_000_000 // fs)
            pub_t[k] = time.perf_counter()
            pub.publish(msg)
            if proc.poll() is not None:
                raise RuntimeError(f'graph exited (status {proc.returncode}):\n{log_path.read_text()[-2000:]}')
            if pub_t[k] >= next_sample or k == n_chunks - 1:
                samples.append(sample(proc, rows, last, k, rule, period_ns, pub_t, args.late_ms, log_path, start))
                next_sample += args.interval
        drain = time.perf_counter() + 1.5
        while time.perf_counter() < drain:
            ex.spin_once(timeout_sec=0.05)
    finally:
        stop_graph(proc)
        ex.remove_node(node)
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return summarize(args, samples, rows, n_chunks, ckpt)


def sample(proc, rows, last, k, rule, period_ns, pub_t, late_ms, log_path, start) -> dict:
    """One row of the time series, for the chunks published since the previous row."""
    now, cpu = time.perf_counter(), proc_cpu_s(proc.pid)
    out = {'t_s': round(now - start, 1), 'rss_mb': round(rss_mb(proc.pid), 1),
           'cpu_percent': round(100 * (cpu - last['cpu']) / (now - last['t']), 1)}
    # grid stamps due more than a second ago and not checked yet (outputs may still be in flight)
    g_lo = last.get('g_next', -(-rule.first // period_ns) * period_ns)
    g_hi = _stamp_of_chunk(rule, k) - 1_000_000_000
    for key in ('student', 'tracks'):
        new = rows[key][last[key]:]
        last[key] = len(rows[key])
        late = sum(1 for t, g in new if rule.chunk(g) in pub_t and t - pub_t[rule.chunk(g)] > late_ms / 1e3)
        out[key] = {'received': len(new), 'rate_hz': round(len(new) / (now - last['t']), 2), 'late': late}
    got = {int(round(g / period_ns)) * period_ns for _, g in rows['student']}
    expected = list(range(g_lo, g_hi + 1, period_ns))
    if expected:
        last['g_next'] = expected[-1] + period_ns
    out['student']['expected'] = len(expected)
    out['student']['dropped'] = sum(1 for g in expected if g not in got)
    out['graph_warnings'], last['log'] = count_warnings(log_path, last['log'])
    last.update(cpu=cpu, t=now, chunk=k + 1)
    print(json.dumps(out), flush=True)
    return out


def _stamp_of_chunk(rule: Completion, k: int) -> int:
    """Largest grid-relevant stamp completed once chunk ``k`` is published."""
    return rule.t0 + int(((k + 1) * rule.cs - rule.after) * 1e9 / rule.fs)


def summarize(args, samples, rows, n_chunks, ckpt) -> dict:
    warm = [s for s in samples if s['t_s'] >= args.warmup]
    base = warm[0]['rss_mb'] if warm else samples[0]['rss_mb']
    final = samples[-1]['rss_mb']
    steady = warm or samples
    total = {key: {f: sum(s[key].get(f, 0) for s in samples) for f in ('received', 'late', 'expected', 'dropped')
                   if any(f in s[key] for s in samples)} for key in ('student', 'tracks')}
    cpu = [s['cpu_percent'] for s in steady]
    return {
        'benchmark': 'soak',
        'graph': 'mmdistill-bringup car (student_node -> tracking_node, one process)',
        'config': {'minutes': args.minutes, 'interval_s': args.interval, 'warmup_s': args.warmup,
                   'late_ms': args.late_ms, 'scenario': args.scenario, 'loop_seconds': args.loop_seconds,
                   'checkpoint': str(ckpt) if args.checkpoint else 'random weights (centred, score threshold 0.05)',
                   'audio_chunks': n_chunks},
        'rss_mb': {'after_warmup': base, 'final': final, 'max': max(s['rss_mb'] for s in samples),
                   'growth_percent_after_warmup': round(100 * (final - base) / base, 2)},
        'cpu_percent_of_one_core': {'mean': round(sum(cpu) / len(cpu), 1), 'max': max(cpu), 'min': min(cpu)},
        'outputs': total,
        'graph_warnings': sum(s['graph_warnings'] for s in samples),
        'series': samples,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--minutes', type=float, default=30.0, help='minutes of audio fed at real time (default 30)')
    ap.add_argument('--interval', type=float, default=30.0, help='seconds between samples (default 30)')
    ap.add_argument('--warmup', type=float, default=120.0,
                    help='seconds after which the RSS baseline is taken (default 120)')
    ap.add_argument('--late-ms', type=float, default=100.0,
                    help='an output later than this after its completing chunk counts as late (default 100)')
    ap.add_argument('--checkpoint', help='student checkpoint (default: random-weight centred student)')
    ap.add_argument('--tracker', default='kalman', choices=('iou', 'kalman'))
    ap.add_argument('--scenario', default='day-static')
    ap.add_argument('--offset', type=float, default=20.0)
    ap.add_argument('--loop-seconds', type=float, default=30.0, help='simulated audio looped with new stamps')
    ap.add_argument('--startup-timeout', type=float, default=120.0)
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'soak.json'))
    args = ap.parse_args(argv)
    if args.minutes * 60 <= args.warmup:
        ap.error('--minutes must last longer than --warmup')
    load_start = os.getloadavg()
    result = run(args)
    result['machine'] = dict(machine_info(), loadavg_start=load_start, loadavg_end=os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp')
    tmp.write_text(json.dumps(result, indent=2) + '\n')
    os.replace(tmp, out)
    print(f"-> {out}: RSS {result['rss_mb']['after_warmup']} -> {result['rss_mb']['final']} MB "
          f"({result['rss_mb']['growth_percent_after_warmup']} %), CPU {result['cpu_percent_of_one_core']['mean']} %")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
