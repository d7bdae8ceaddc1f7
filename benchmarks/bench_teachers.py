"""Teacher inference time per frame on one thread, per modality, and fusion time.

Renders ``--frames`` frames of a scenario, runs each teacher (``predict`` on one image: preprocess,
network, decoding, attention maps) frame by frame, and fuses the three results (the paper's
thresholds + NMS, and WBF). Teachers: ``--teachers DIR`` (``mmdistill teachers train`` output,
variant ``trained``), and always the untrained demo recipe (width 8) and ``TeacherConfig`` default
(width 16): inference time does not depend on the weights except through the number of boxes
decoded (reported as ``mean_boxes``). Writes median / p95 in ms and the machine.

    OMP_NUM_THREADS=1 python benchmarks/bench_teachers.py [--teachers DIR] --out benchmarks/results/teachers.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_v, '1')

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sim import machine_info  # noqa: E402


def _stats(ts) -> dict:
    ms = np.asarray(ts) * 1000.0
    return {'median_ms': float(np.median(ms)), 'p95_ms': float(np.percentile(ms, 95)),
            'mean_ms': float(ms.mean()), 'n': int(len(ms))}


def bench(teachers: dict, frames, repeats: int) -> dict:
    from mmdistill_teachers.fusion import fuse_detections
    from mmdistill_teachers.labelling import FusionConfig

    fc = FusionConfig()
    for m, t in teachers.items():                       # warm-up (allocator, oneDNN primitives)
        t.predict(frames[0][m])
    times = {m: [] for m in teachers}
    preds = []
    for _ in range(repeats):
        for f in frames:
            res = {}
            for m, t in teachers.items():
                t0 = time.perf_counter()
                res[m] = t.predict(f[m])[0]
                times[m].append(time.perf_counter() - t0)
            preds.append(res)
    fuse = {'nms': [], 'wbf': []}
    for res in preds:
        for method in fuse:
            t0 = time.perf_counter()
            fuse_detections(res, score_thresholds=fc.score_thresholds, method=method)
            fuse[method].append(time.perf_counter() - t0)
    out = {m: {**_stats(ts), 'params': int(sum(p.numel() for p in teachers[m].parameters())),
               'mean_boxes': float(np.mean([len(r[m]['boxes']) for r in preds]))} for m, ts in times.items()}
    out['all_three_median_ms'] = float(sum(out[m]['median_ms'] for m in teachers))
    out['fusion'] = {k: _stats(v) for k, v in fuse.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--scenario', default='day-driving')
    ap.add_argument('--frames', type=int, default=30)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--teachers', type=Path, default=None, help='teachers directory (default: untrained models)')
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'teachers.json'))
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(1)
    from mmdistill_sim.simulator import Simulator
    from mmdistill_teachers.detector import TeacherDetector
    from mmdistill_teachers.weights import load_teachers
    from mmdistill_training.commands.teachers import TeacherTrainConfig

    sim = Simulator(args.scenario)
    ks = np.linspace(0, sim.n_frames - 1, args.frames).astype(int)
    frames = [{m: getattr(f, m) for m in ('rgb', 'depth', 'thermal')} for f in (sim.frame(int(k)) for k in ks)]
    variants = {}
    if args.teachers:
        variants['trained'] = load_teachers(args.teachers)
    if True:
        d = TeacherTrainConfig()
        torch.manual_seed(0)
        size = (sim.camera.width, sim.camera.height)
        variants[f'demo_recipe_w{d.width}'] = {m: TeacherDetector(m, input_size=size, width=d.width,
                                                                  fpn_channels=d.fpn_channels,
                                                                  head_convs=d.head_convs).eval()
                                               for m in ('rgb', 'depth', 'thermal')}
        variants['default_config_w16'] = {m: TeacherDetector(m, input_size=size).eval()
                                          for m in ('rgb', 'depth', 'thermal')}
    result = {'benchmark': 'teacher_inference', 'scenario': args.scenario,
              'config': {'frames': args.frames, 'repeats': args.repeats, 'image': f'{sim.camera.width}x{sim.camera.height}', 'threads': 1,
                         'teachers': str(args.teachers) if args.teachers else None},
              'variants': {name: bench(t, frames, args.repeats) for name, t in variants.items()},
              'machine': machine_info()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp')
    tmp.write_text(json.dumps(result, indent=2) + '\n')
    os.replace(tmp, out)
    for name, r in result['variants'].items():
        per = ', '.join(f"{m} {r[m]['median_ms']:.1f} (p95 {r[m]['p95_ms']:.1f})" for m in ('rgb', 'depth', 'thermal'))
        print(f"{name}: per frame ms {per}; fusion nms {r['fusion']['nms']['median_ms']:.2f} "
              f"wbf {r['fusion']['wbf']['median_ms']:.2f} -> {out}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
