"""Real-time factor of the simulator on one thread (DESIGN section 10: measured here, not asserted in tests).

Simulates ``--seconds`` of a scenario (default: the default scenario, day-static:
8 channels at 44.1 kHz plus RGB, depth and thermal 384x128 at 10 Hz), repeats it
``--repeats`` times and writes the median real-time factor (simulated seconds per
wall second) with the machine description as JSON.

    OMP_NUM_THREADS=1 python benchmarks/bench_sim.py --out benchmarks/results/sim.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_v, '1')

import numpy as np  # noqa: E402


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


def run_once(scenario: str, seconds: float, offset_s: float) -> dict:
    from mmdistill_sim.simulator import Simulator
    sim = Simulator(scenario)
    fs, fr = sim.sample_rate, sim.scenario.frame_rate
    n0 = int(offset_s * fs)
    n1 = min(n0 + int(seconds * fs), sim.n_samples)
    k0, k1 = int(np.ceil(offset_s * fr)), int(np.ceil(n1 / fs * fr))
    sim.audio_block(0, 256)   # warm-up: numba kernel load/compile and noise pools are not simulation time
    sim.frame(0)
    t = time.perf_counter()
    for b in range(n0, n1, fs):
        sim.audio_block(b, min(b + fs, n1))
    t_audio = time.perf_counter() - t
    t = time.perf_counter()
    for k in range(k0, min(k1, sim.n_frames)):
        sim.frame(k)
    t_video = time.perf_counter() - t
    sim_s = (n1 - n0) / fs
    return {'sim_seconds': sim_s, 'audio_wall_s': t_audio, 'video_wall_s': t_video,
            'frames': k1 - k0, 'rtf': sim_s / (t_audio + t_video),
            'audio_rtf': sim_s / t_audio, 'video_rtf': sim_s / t_video}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--scenario', default='day-static')
    ap.add_argument('--seconds', type=float, default=10.0, help='simulated seconds per repeat')
    ap.add_argument('--offset', type=float, default=20.0, help='start time in the drive (road fully populated)')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'sim.json'))
    args = ap.parse_args(argv)
    runs = [run_once(args.scenario, args.seconds, args.offset) for _ in range(args.repeats)]
    result = {
        'benchmark': 'sim_realtime_factor',
        'scenario': args.scenario,
        'config': {'seconds': args.seconds, 'offset_s': args.offset, 'repeats': args.repeats,
                   'channels': 8, 'sample_rate': 44100, 'image': '384x128 rgb+depth+thermal', 'frame_rate': 10},
        'rtf_median': statistics.median(r['rtf'] for r in runs),
        'audio_rtf_median': statistics.median(r['audio_rtf'] for r in runs),
        'video_rtf_median': statistics.median(r['video_rtf'] for r in runs),
        'goal_rtf': 5.0,
        'runs': runs,
        'machine': machine_info(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n')
    print(f"{args.scenario}: real-time factor {result['rtf_median']:.2f} (audio {result['audio_rtf_median']:.2f}, "
          f"video {result['video_rtf_median']:.2f}) -> {out}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
