"""Real-time factor of the simulator on one thread, new default vs old default in the same run
(DESIGN section 10: measured here, not asserted in tests).

Each case simulates ``--seconds`` of a drive into a real MCAP bag (8 channels of audio at
44.1 kHz, RGB + depth + thermal at 10 Hz, ground truth: what ``mmdistill sim`` writes) and
times it three ways: audio alone, images + ground truth alone, and the whole bag. Cases:

* ``new``: the benchmark world at the default camera (``--scenario``, default
  ``town-day-static``; 768x256);
* ``old``: the previous default, ``day-static`` at 384x128 (fx 192), for the ratio.

Real-time factors are simulated seconds per **CPU second of this process** (``time.process_time``),
so a busy shared machine does not distort them; wall-clock figures are recorded beside them.
The goal is 10x real time for the whole bag at the new default on one core.

    python benchmarks/bench_sim.py --out benchmarks/results/sim.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMBA_NUM_THREADS'):
    os.environ.setdefault(_v, '1')

import numpy as np  # noqa: E402

GOAL_RTF = 10.0
OLD_CAMERA = dict(width=384, height=128, fx=192.0, fy=192.0, cx=192.0, cy=64.0)


def machine_info() -> dict:
    info = {'python': sys.version.split()[0], 'numpy': np.__version__, 'platform': platform.platform(),
            'processor': platform.processor(), 'cpu_count': os.cpu_count(),
            'threads': os.environ.get('OMP_NUM_THREADS')}
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                info['cpu'] = line.split(':', 1)[1].strip()
                break
        info['loadavg'] = os.getloadavg()
    except OSError:
        pass
    return info


def scenario_for(case: str, name: str, seconds: float):
    """The case's scenario, ``seconds`` long (lanes are populated from t = 0 on)."""
    from mmdistill_sim.scenario import load_scenario
    sc = load_scenario(name)
    if case == 'old':
        sc = dataclasses.replace(sc, camera=dataclasses.replace(sc.camera, **OLD_CAMERA))
    return dataclasses.replace(sc, duration_s=seconds)


def _timed(fn) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def run_once(sc) -> dict:
    """Audio alone, images alone and the whole bag, each with a fresh simulator."""
    from mmdistill_common.bagio import BagWriter
    from mmdistill_common.topics import AUDIO_INFO
    from mmdistill_sim.messages import messages
    from mmdistill_sim.simulator import Simulator

    def fresh() -> Simulator:
        sim = Simulator(sc)
        sim.audio_block(0, 256)   # warm-up: numba kernel load and noise pools are not simulation time
        sim.frame(0)
        return sim

    seconds = sc.duration_s
    sim = fresh()
    audio = _timed(lambda: sim.audio())
    sim = fresh()
    video = _timed(lambda: [sim.frame(k) for k in range(sim.n_frames)])
    sim = fresh()

    def write() -> None:
        with tempfile.TemporaryDirectory() as tmp, BagWriter(Path(tmp) / 'bag') as bag:
            bag.add_topic(AUDIO_INFO, 'audio_common_msgs/msg/AudioInfo', transient_local=True)
            for topic, msg, stamp in messages(sim, images=True):
                bag.write(topic, msg, stamp)
    bag = _timed(write)
    return {'sim_seconds': seconds, 'frames': sim.n_frames,
            'audio_cpu_s': audio[0], 'video_cpu_s': video[0], 'bag_cpu_s': bag[0], 'bag_wall_s': bag[1],
            'audio_rtf': seconds / audio[0], 'video_rtf': seconds / video[0], 'bag_rtf': seconds / bag[0],
            'bag_wall_rtf': seconds / bag[1]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--scenario', default='town-day-static', help='the new-default case (default town-day-static)')
    ap.add_argument('--old-scenario', default='day-static', help='the old-default case, at 384x128')
    ap.add_argument('--seconds', type=float, default=5.0, help='simulated seconds per repeat')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'sim.json'))
    args = ap.parse_args(argv)
    cases = {}
    for case, name in (('new', args.scenario), ('old', args.old_scenario)):
        sc = scenario_for(case, name, args.seconds)
        runs = [run_once(sc) for _ in range(args.repeats)]
        cases[case] = {'scenario': name, 'image': f'{sc.camera.width}x{sc.camera.height}', 'runs': runs,
                       **{f'{k}_median': statistics.median(r[k] for r in runs)
                          for k in ('audio_rtf', 'video_rtf', 'bag_rtf', 'bag_wall_rtf')}}
    new, old = cases['new'], cases['old']
    result = {
        'benchmark': 'sim_realtime_factor',
        'config': {'seconds': args.seconds, 'repeats': args.repeats, 'channels': 8,
                   'sample_rate': 44100, 'frame_rate': 10, 'clock': 'process CPU time, one thread'},
        'cases': cases,
        'ratio_new_over_old': {k: new[f'{k}_median'] / old[f'{k}_median'] for k in ('audio_rtf', 'video_rtf', 'bag_rtf')},
        'goal_rtf': GOAL_RTF, 'goal_met': new['bag_rtf_median'] >= GOAL_RTF,
        'machine': machine_info(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n')
    for case, r in cases.items():
        print(f"{case} ({r['scenario']}, {r['image']}): whole bag {r['bag_rtf_median']:.2f}x real time per CPU "
              f"second (audio alone {r['audio_rtf_median']:.2f}x, images alone {r['video_rtf_median']:.2f}x)")
    print(f"new / old: whole bag {result['ratio_new_over_old']['bag_rtf']:.2f}, "
          f"goal {GOAL_RTF:g}x {'met' if result['goal_met'] else 'not met'} -> {out}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
