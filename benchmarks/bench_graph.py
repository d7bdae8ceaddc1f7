"""End-to-end latency and CPU use of the car graph (student_node -> tracking_node) on real DDS.

The graph runs as ``mmdistill-bringup car`` in a child process (one torch thread, its own
``ROS_DOMAIN_ID``, discovery limited to localhost). This process feeds it simulator audio
(``--scenario``, from ``--offset`` s into the drive: 8 channels, 44.1 kHz, S16LE chunks of 40 ms)
at real-time pace on ``/sensors/mic_array/audio`` (``AudioInfo`` first, transient local) and
listens on ``/student/detections`` and ``/tracking/tracks``.

Latency of an output = wall-clock time it is received here minus the wall-clock time the audio
chunk that completed its window was published. The window's inherent look-ahead (a centred
1-s window needs audio up to its stamp + 0.5 s + one STFT hop; a causal one up to its stamp +
one hop) is therefore excluded: it is the processing + transport delay, not the algorithmic
one. Outputs are matched to their window through the header stamp (the time the window refers
to, within one hop of the 10-Hz grid stamp), and the completing chunk is found with the same
rule as :class:`mmdistill_student.runtime.StudentRuntime` uses to decide that a window is due.

CPU use = user + system time of the graph process (``/proc/<pid>/stat``, all threads) over the
steady-state interval (after ``--warmup`` s of audio) divided by the interval's wall time, in %
of one core; also per output, and with no audio flowing (idle executors). The machine may be
shared with other jobs: the load average is recorded, and wall-clock latencies include waiting
for a core.

Without ``--checkpoint``, random-weight students of the default size are written to a temp dir
(timing does not depend on the weights), a centred and a causal one, with score threshold
``--score-threshold`` (default 0.05, so that every window has detections and the tracker works).

    OMP_NUM_THREADS=1 python benchmarks/bench_graph.py --seconds 30 --out benchmarks/results/graph.json
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_v, '1')
# a domain of our own (tests use 1..100) and no traffic beyond this machine; set before rclpy loads
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(101, 200)))
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sim import machine_info  # noqa: E402

CHUNK_S = 0.04
RATE_HZ = 10.0
CLK_TCK = os.sysconf('SC_CLK_TCK')


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK      # utime, stime (fields 14, 15)


def stats_ms(values) -> dict:
    a = np.asarray(values, dtype=float) * 1e3
    if not len(a):
        return {'n': 0}
    return {'median_ms': round(float(np.median(a)), 2), 'p95_ms': round(float(np.percentile(a, 95)), 2),
            'mean_ms': round(float(np.mean(a)), 2), 'min_ms': round(float(np.min(a)), 2),
            'max_ms': round(float(np.max(a)), 2), 'n': int(len(a))}


def make_checkpoints(tmp: Path, score_threshold: float) -> Dict[str, Path]:
    """Default-size random-weight students, one per window mode."""
    import torch
    from mmdistill_student.checkpoint import save_checkpoint
    from mmdistill_student.model import StudentConfig, StudentDetector
    out = {}
    for mode in ('centered', 'causal'):
        torch.manual_seed(0)
        model = StudentDetector(StudentConfig(frontend={'mode': mode}, score_threshold=score_threshold))
        out[mode] = save_checkpoint(model, tmp / f'student_{mode}', info={'note': 'random weights (bench_graph)'})
    return out


def audio_messages(scenario: str, offset_s: float, seconds: float):
    """Simulator audio as ``AudioDataStamped`` chunks of 40 ms (built before the clock starts) and
    the ``AudioInfo`` -> (info, messages, first sample stamp ns, sample rate, chunk samples)."""
    from mmdistill_common.conversions import audio_info, audio_to_msg, float_to_s16
    from mmdistill_sim.simulator import Simulator
    sim = Simulator(scenario)
    fs = sim.sample_rate
    cs = int(round(CHUNK_S * fs))
    total = sim.n_samples / fs
    offset_s = max(0.0, min(offset_s, total - seconds))
    n0 = int(offset_s * fs)
    n1 = min(n0 + int(seconds * fs), sim.n_samples)
    msgs, channels = [], 0
    for b in range(n0, n1, fs):           # one second at a time
        block = float_to_s16(sim.audio_block(b, min(b + fs, n1)))
        channels = block.shape[1]
        for off in range(0, len(block) - cs + 1, cs):
            msgs.append(audio_to_msg(block[off:off + cs], sim.sample_stamp_ns(b + off), frame_id='mic_array'))
    return audio_info(channels, fs), msgs, sim.sample_stamp_ns(n0), fs, cs


class CompletionRule:
    """Which chunk completes the window of a grid stamp (the runtime's ``_coverable`` rule:
    stamp ``g`` is due once ``index_to_stamp(end - (n - lead) - hop) >= g``)."""

    def __init__(self, meta: dict, t0_ns: int, fs: int, cs: int, n_chunks: int):
        from mmdistill_student.frontend import FrontendConfig
        fe = FrontendConfig.from_dict(meta['config']['frontend'])
        n = fe.window_samples
        lead = n if fe.mode == 'causal' else n // 2
        self.mode = fe.mode
        self.lookahead_s = ((n - lead) + fe.hop) / fs
        after = (n - lead) + fe.hop
        self.due = [t0_ns + round(((k + 1) * cs - after) * 1e9 / fs) for k in range(n_chunks)]
        self.period_ns = int(round(1e9 / RATE_HZ))
        first = t0_ns + round((lead + fe.hop) * 1e9 / fs)
        # grid stamps whose windows lie inside the fed audio: the outputs to expect
        self.expected = max(0, self.due[-1] // self.period_ns - (-(-first // self.period_ns)) + 1)

    def grid(self, stamp_ns: int) -> int:
        return int(round(stamp_ns / self.period_ns)) * self.period_ns

    def chunk(self, stamp_ns: int) -> Optional[int]:
        k = bisect.bisect_left(self.due, self.grid(stamp_ns))
        return k if k < len(self.due) else None


def start_graph(checkpoint: Path, tracker: str, score_threshold: Optional[float], start_score: Optional[float],
                log) -> subprocess.Popen:
    exe = Path(sys.executable).parent / 'mmdistill-bringup'
    cmd = [str(exe) if exe.exists() else 'mmdistill-bringup', 'car', f'checkpoint:={checkpoint}',
           f'rate:={RATE_HZ:g}', f'tracker:={tracker}']
    if score_threshold is not None:
        cmd += ['-p', f'student_node.score_threshold:={score_threshold}']
    if start_score is not None:
        cmd += ['-p', f'tracking_node.start_score:={start_score}']
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1', MKL_NUM_THREADS='1')
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def stop_graph(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_config(name: str, checkpoint: Path, args, audio, log_path: Path) -> dict:
    import rclpy
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo
    from rclpy.executors import SingleThreadedExecutor
    from vision_msgs.msg import Detection2DArray

    from mmdistill_common import topics
    from mmdistill_common.conversions import stamp_to_ns
    from mmdistill_common.qos import latched_qos, stream_qos
    from mmdistill_student.checkpoint import read_checkpoint_metadata

    info, msgs, t0_ns, fs, cs = audio
    meta = read_checkpoint_metadata(checkpoint)
    rule = CompletionRule(meta, t0_ns, fs, cs, len(msgs))
    received: Dict[str, List] = {'student': [], 'tracks': []}
    node = rclpy.create_node(f'bench_graph_feeder_{name}')
    pub = node.create_publisher(AudioDataStamped, topics.AUDIO, stream_qos())
    info_pub = node.create_publisher(AudioInfo, topics.AUDIO_INFO, latched_qos())
    node.create_subscription(Detection2DArray, topics.STUDENT_DETECTIONS,
                             lambda m: received['student'].append((time.perf_counter(), stamp_to_ns(m.header.stamp))),
                             stream_qos())
    node.create_subscription(Detection2DArray, topics.TRACKS,
                             lambda m: received['tracks'].append((time.perf_counter(), stamp_to_ns(m.header.stamp),
                                                                  len(m.detections))), stream_qos())
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    info_pub.publish(info)
    with open(log_path, 'w') as log:
        proc = start_graph(checkpoint, args.tracker, args.graph_score_threshold, args.start_score, log)
    try:
        deadline = time.monotonic() + args.startup_timeout
        while not (pub.get_subscription_count() >= 1 and node.count_publishers(topics.TRACKS) >= 1
                   and node.count_publishers(topics.STUDENT_DETECTIONS) >= 1):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text()[-2000:]
                raise RuntimeError(f'graph did not come up (exit {proc.poll()}):\n{tail}')
            ex.spin_once(timeout_sec=0.1)
        t = time.perf_counter() + 1.0                   # activation follows configure at once
        while time.perf_counter() < t:
            ex.spin_once(timeout_sec=0.05)
        # idle CPU: executors spinning, no audio
        c0, w0 = proc_cpu_s(proc.pid), time.perf_counter()
        while time.perf_counter() < w0 + args.idle:
            ex.spin_once(timeout_sec=0.05)
        idle = {'cpu_s': proc_cpu_s(proc.pid) - c0, 'wall_s': time.perf_counter() - w0}
        idle['percent_of_one_core'] = round(100 * idle['cpu_s'] / idle['wall_s'], 2)

        pub_t = [0.0] * len(msgs)
        warm_k = int(round(args.warmup / CHUNK_S))
        cpu_mark = None
        start = time.perf_counter()
        for k, msg in enumerate(msgs):
            due = start + (k + 1) * CHUNK_S             # when the chunk's last sample exists
            while True:
                rem = due - time.perf_counter()
                if rem <= 0:
                    break
                ex.spin_once(timeout_sec=rem)
            # steady state: from the publication of chunk warm_k to that of the last chunk
            if k == warm_k:
                cpu_mark = (proc_cpu_s(proc.pid), time.perf_counter(), len(received['tracks']))
            elif k == len(msgs) - 1:
                cpu_end = (proc_cpu_s(proc.pid), time.perf_counter(), len(received['tracks']))
            pub_t[k] = time.perf_counter()
            pub.publish(msg)
        end = time.perf_counter() + args.drain
        while time.perf_counter() < end:
            ex.spin_once(timeout_sec=0.05)
        if proc.poll() is not None:
            raise RuntimeError(f'graph exited during the run (exit {proc.returncode}):\n{log_path.read_text()[-2000:]}')
    finally:
        stop_graph(proc)
        ex.remove_node(node)
        ex.shutdown()
        node.destroy_node()

    def latencies(rows, skip_chunks: int):
        lat, unmatched = [], 0
        for row in rows:
            k = rule.chunk(row[1])
            if k is None or not pub_t[k]:
                unmatched += 1
                continue
            if k >= skip_chunks:
                lat.append(row[0] - pub_t[k])
        return lat, unmatched

    lat_s, un_s = latencies(received['student'], warm_k)
    lat_t, un_t = latencies(received['tracks'], warm_k)
    # tracking stage alone: tracks message minus detections message of the same window
    t_student = {row[1]: row[0] for row in received['student']}
    stage = [row[0] - t_student[row[1]] for row in received['tracks']
             if row[1] in t_student and (rule.chunk(row[1]) or 0) >= warm_k]
    cpu_s, wall_s = cpu_end[0] - cpu_mark[0], cpu_end[1] - cpu_mark[1]
    outputs = cpu_end[2] - cpu_mark[2]
    audio_s = len(msgs) * CHUNK_S
    n_tracks = [r[2] for r in received['tracks']]
    return {
        'checkpoint': str(checkpoint) if args.checkpoint else f'random weights ({rule.mode})',
        'window_mode': rule.mode,
        'inherent_lookahead_ms': round(rule.lookahead_s * 1e3, 2),
        'audio_s': round(audio_s, 3),
        'student_outputs': len(received['student']),
        'track_outputs': len(received['tracks']),
        'outputs_expected': rule.expected,
        'unmatched': {'student': un_s, 'tracks': un_t},
        'mean_tracks_per_message': round(float(np.mean(n_tracks)), 2) if n_tracks else 0.0,
        'latency_student': stats_ms(lat_s),
        'latency_end_to_end': stats_ms(lat_t),
        'latency_tracking_stage': stats_ms(stage),
        'cpu': {'percent_of_one_core': round(100 * cpu_s / wall_s, 2), 'cpu_s': round(cpu_s, 3),
                'wall_s': round(wall_s, 3), 'outputs': outputs,
                'cpu_ms_per_output': round(1e3 * cpu_s / outputs, 2) if outputs else None,
                'idle_percent_of_one_core': idle['percent_of_one_core']},
        'graph_log': str(log_path) if args.keep_logs else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=30.0, help='seconds of audio fed per configuration')
    ap.add_argument('--checkpoint', help='student checkpoint directory (default: random-weight centred + causal)')
    ap.add_argument('--score-threshold', type=float, default=0.05,
                    help='score threshold of the generated checkpoints, or student_node.score_threshold with '
                         '--checkpoint when given explicitly (default 0.05 / the checkpoint\'s)')
    ap.add_argument('--tracker', default='kalman', choices=('iou', 'kalman'))
    ap.add_argument('--start-score', type=float,
                    help='tracking_node.start_score (default: --score-threshold for the random-weight students, '
                         "whose scores stay far below the tracker's default, so that tracks start; else the node's)")
    ap.add_argument('--scenario', default='day-static')
    ap.add_argument('--offset', type=float, default=20.0, help='start time in the drive (road populated)')
    ap.add_argument('--warmup', type=float, default=3.0, help='seconds of audio excluded from the statistics')
    ap.add_argument('--idle', type=float, default=2.0, help='seconds of idle-CPU measurement before feeding')
    ap.add_argument('--drain', type=float, default=1.5, help='seconds to wait for outputs after the last chunk')
    ap.add_argument('--startup-timeout', type=float, default=120.0)
    ap.add_argument('--keep-logs', action='store_true', help='keep the graph processes\' logs (in a temp dir)')
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'graph.json'))
    args = ap.parse_args(argv)
    if args.seconds < args.warmup + 3:
        ap.error(f'--seconds must be at least --warmup + 3 ({args.warmup + 3:g})')
    explicit_thr = any(a.startswith('--score-threshold') for a in (argv if argv is not None else sys.argv[1:]))
    args.graph_score_threshold = args.score_threshold if (args.checkpoint and explicit_thr) else None
    if args.start_score is None and not args.checkpoint:
        args.start_score = args.score_threshold

    import rclpy
    import torch
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    if args.checkpoint and not (Path(args.checkpoint) / 'checkpoint.json').is_file():
        print(f'bench_graph: error: {args.checkpoint} is not a student checkpoint directory', file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix='bench_graph_'))
    if args.checkpoint:
        from mmdistill_student.checkpoint import read_checkpoint_metadata
        ckpts = {read_checkpoint_metadata(args.checkpoint)['window_mode']: Path(args.checkpoint)}
    else:
        ckpts = make_checkpoints(tmp, args.score_threshold)
    t = time.perf_counter()
    audio = audio_messages(args.scenario, args.offset, args.seconds)
    print(f'{len(audio[1])} audio chunks of {CHUNK_S * 1e3:g} ms simulated in {time.perf_counter() - t:.1f} s; '
          f'ROS_DOMAIN_ID={os.environ["ROS_DOMAIN_ID"]}', flush=True)
    rclpy.init()
    runs = {}
    try:
        for name, ck in ckpts.items():
            print(f'[{name}] running the car graph on {ck} ...', flush=True)
            runs[name] = run_config(name, ck, args, audio, tmp / f'graph_{name}.log')
            r = runs[name]
            print(f"[{name}] end-to-end {r['latency_end_to_end'].get('median_ms')} ms median / "
                  f"{r['latency_end_to_end'].get('p95_ms')} ms p95, student {r['latency_student'].get('median_ms')} / "
                  f"{r['latency_student'].get('p95_ms')} ms; CPU {r['cpu']['percent_of_one_core']} % of one core "
                  f"({r['cpu']['cpu_ms_per_output']} ms per output, idle {r['cpu']['idle_percent_of_one_core']} %)",
                  flush=True)
    finally:
        rclpy.try_shutdown()
    machine = machine_info()
    machine.update(torch=torch.__version__, torch_threads_graph=1, loadavg_start=load_start,
                   loadavg_end=os.getloadavg())
    result = {
        'benchmark': 'graph_latency_cpu',
        'graph': 'mmdistill-bringup car (student_node -> tracking_node, one process, one executor)',
        'config': {'seconds': args.seconds, 'warmup_s': args.warmup, 'chunk_ms': CHUNK_S * 1e3, 'rate_hz': RATE_HZ,
                   'scenario': args.scenario, 'offset_s': args.offset, 'tracker': args.tracker,
                   'score_threshold': args.score_threshold if (not args.checkpoint or explicit_thr) else 'checkpoint',
                   'tracker_start_score': args.start_score if args.start_score is not None else 'node default',
                   'rmw': os.environ.get('RMW_IMPLEMENTATION'),
                   'latency': 'receive time of the output minus publish time of the audio chunk completing its '
                              'window (inherent look-ahead excluded)',
                   'cpu': 'user+system time of the graph process over the steady-state interval / wall time'},
        'runs': runs,
        'machine': machine,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + '.tmp')
    tmp_out.write_text(json.dumps(result, indent=2) + '\n')
    os.replace(tmp_out, out)
    print(f'-> {out} (load average {load_start[0]:.2f} at start, {machine["loadavg_end"][0]:.2f} at end)')
    if not args.keep_logs:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
