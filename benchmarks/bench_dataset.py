"""Dataset build throughput in labelled frames per second on one thread (DESIGN section 10).

Simulates ``--seconds`` of a scenario into a labelled bag with oracle teachers
(``mmdistill_training.labelled_bag``; not timed), then times ``build_dataset`` on it
(reading the bag, cutting windows, log-mel + ILD + GCC-PHAT front end, writing the arrays,
content hash) ``--repeats`` times. For reference, in the same process: the front end alone on
the same windows at batch sizes 1, 2, 4 and 16, and the reader's feature rows per second.

    OMP_NUM_THREADS=1 python benchmarks/bench_dataset.py --out benchmarks/results/dataset.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_v, '1')

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sim import machine_info  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--scenario', default='day-static')
    ap.add_argument('--seconds', type=float, default=20.0, help='length of the simulated drive')
    ap.add_argument('--window', choices=('centered', 'causal'), default='centered')
    ap.add_argument('--features', default='logmel,ild,gcc')
    ap.add_argument('--batch-size', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'dataset.json'))
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(1)
    from mmdistill_student.frontend import Frontend
    from mmdistill_training.dataset import DistillDataset
    from mmdistill_training.dataset_build import BuildConfig, build_dataset
    from mmdistill_training.labelled_bag import short_scenario, write_oracle_bag

    cfg = BuildConfig(window=args.window, features=tuple(args.features.split(',')), batch_size=args.batch_size)
    work = Path(tempfile.mkdtemp(prefix='bench_dataset-'))
    try:
        bag = work / 'drive'
        write_oracle_bag(short_scenario(args.scenario, args.seconds), bag)
        warm = short_scenario(args.scenario, 1.2)
        write_oracle_bag(warm, work / 'warm')
        build_dataset([work / 'warm'], work / 'warm-ds', cfg, progress=False)   # imports, librosa filters
        runs = []
        for k in range(args.repeats):
            t = time.perf_counter()
            index = build_dataset([bag], work / f'ds{k}', cfg, progress=False)
            wall = time.perf_counter() - t
            runs.append({'frames': index['n_frames'], 'wall_s': wall, 'fps': index['n_frames'] / wall,
                         'content_hash': index['content_hash']})
        ds = DistillDataset(work / 'ds0')
        windows = np.stack([ds.audio_window(r).T for r in range(len(ds))]).astype(np.float32) / 32768.0
        fe = Frontend(ds.frontend).eval()
        frontend_fps = {}
        with torch.no_grad():
            fe(torch.from_numpy(windows[:1]))
            for bs in (1, 2, 4, 16):
                t = time.perf_counter()
                for b in range(0, len(windows), bs):
                    fe(torch.from_numpy(windows[b:b + bs]))
                frontend_fps[bs] = len(windows) / (time.perf_counter() - t)
        t = time.perf_counter()
        feats = ds.features(np.arange(min(64, len(ds))))
        read_fps = len(feats) / (time.perf_counter() - t)
        result = {
            'benchmark': 'dataset_build_throughput',
            'scenario': args.scenario,
            'config': {'seconds': args.seconds, 'window': args.window, 'features': args.features,
                       'batch_size': args.batch_size, 'repeats': args.repeats, 'sample_rate': ds.frontend.sample_rate,
                       'channels': ds.frontend.channels, 'feature_shape': list(ds.frontend.feature_shape()),
                       'labelled_frames_in_bag': ds.drives[0]['labelled'], 'skipped': ds.index['skipped']},
            'build_fps_median': statistics.median(r['fps'] for r in runs),
            'frontend_fps_by_batch_size': frontend_fps,
            'reader_features_fps': read_fps,
            'deterministic': len({r['content_hash'] for r in runs}) == 1,
            'runs': runs,
            'machine': machine_info(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + '\n')
    fe_txt = ', '.join(f'batch {k}: {v:.1f}/s' for k, v in frontend_fps.items())
    print(f"dataset build: {result['build_fps_median']:.1f} labelled frames/s (front end alone: {fe_txt}) -> {out}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
