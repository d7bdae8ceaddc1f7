"""Kill campaign: SIGKILL recording bag writers at random moments and recover every bag.

``--kills`` (default 20) kills of each writer (:mod:`mmdistill_training.crash_trials`):
``recorder_node`` recording 25 Hz audio published over DDS (MCAP and sqlite3 alternately;
loss counted exactly against what was published), and ``mmdistill sim`` writing a drive with
images, killed 0.2-10 s after its stream started (MCAP and sqlite3 alternately; recovered messages
compared with a clean run of the same seed; lost = messages handed to its ``BagWriter`` before the
kill - recovered, see ``crash_trials.counted_sim``). Reported: bags recovered of bags killed, the
most messages lost in one kill, the independent reader's counts.

    nice -n 15 python benchmarks/bench_crash.py --out benchmarks/results/crash.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(101, 200)))
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
from bench_sim import machine_info  # noqa: E402


def summarize(trials: list) -> dict:
    summary = {}
    for writer in sorted({t['writer'] for t in trials}):
        ts = [t for t in trials if t['writer'] == writer]
        empty = [t for t in ts if 'note' in t]        # killed before anything reached the disk
        ok = [t for t in ts if 'note' not in t and t['prefix_intact'] and
              t['independent_reader_count'] == t.get('recovered_total', t['recovered'])]
        summary[writer] = {'killed': len(ts), 'recovered_readable': len(ok), 'nothing_on_disk_yet': len(empty),
                           'with_messages': sum(1 for t in ts if t['recovered'] > 0),
                           'max_lost_in_one_kill': max((t['lost'] for t in ts if 'lost' in t), default=None),
                           'max_discarded_bytes': max((t.get('discarded_bytes', 0) for t in ts), default=0)}
    return summary


def write(args, trials: list) -> dict:
    """Rewrite the JSON (after every trial, so that a long campaign can be read while it runs)."""
    summary = summarize(trials)
    result = {'benchmark': 'crash_recovery', 'config': vars(args) | {'out': str(args.out)}, 'summary': summary,
              'trials': trials, 'machine': machine_info() | {'loadavg_end': os.getloadavg()},
              'written': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + '.tmp')
    tmp.write_text(json.dumps(result, indent=2) + '\n')
    os.replace(tmp, args.out)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--kills', type=int, default=20, help='kills per writer (default 20)')
    ap.add_argument('--writers', nargs='+', default=['recorder_node', 'sim'], choices=['recorder_node', 'sim'])
    ap.add_argument('--flush-period', type=float, default=1.0, help='recorder_node flush_period (default 1 s)')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', type=Path, default=ROOT / 'benchmarks' / 'results' / 'crash.json')
    args = ap.parse_args(argv)

    from mmdistill_common.testing import BackgroundExecutor
    from mmdistill_training.crash_trials import recorder_trial, sim_trial
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix='bench_crash_'))
    trials = []
    if 'recorder_node' in args.writers:
        import rclpy
        rclpy.init()
        ex = BackgroundExecutor()
        try:
            for k in range(args.kills):
                storage = 'mcap' if k % 2 == 0 else 'sqlite3'
                r = recorder_trial(ex, work / f'rec{k}', rng.uniform(0.5, 6.0), storage=storage,
                                   flush_period=args.flush_period)
                trials.append(r)
                print(json.dumps(r), flush=True)
                write(args, trials)
                shutil.rmtree(work / f'rec{k}', ignore_errors=True)
        finally:
            ex.shutdown()
            rclpy.try_shutdown()
    if 'sim' in args.writers:
        from mmdistill_training.crash_trials import CleanRun
        # one seeded drive for every kill (the moments and the storage vary): its clean run is simulated
        # once here and extended as far as a kill needs
        clean = CleanRun('day-static', args.seed, 60.0)
        k = 0
        while sum(1 for t in trials if t['writer'] == 'mmdistill sim') < args.kills:
            storage = 'mcap' if k % 2 == 0 else 'sqlite3'
            r = sim_trial(work / f'sim{k}', rng.uniform(0.2, 10.0), duration_s=60.0, storage=storage,
                          seed=args.seed, clean=clean)
            k += 1
            if r is None:
                continue
            trials.append(r)
            print(json.dumps(r), flush=True)
            write(args, trials)
            shutil.rmtree(work / f'sim{k - 1}', ignore_errors=True)
    write(args, trials)
    print(json.dumps(summarize(trials), indent=2))
    print(f'-> {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
