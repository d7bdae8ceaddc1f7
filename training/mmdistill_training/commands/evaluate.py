"""``mmdistill evaluate``: score a student checkpoint on a dataset split (DESIGN §8)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmdistill_common.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', type=Path, required=True, help='student checkpoint directory')
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument('--dataset', type=Path, help='dataset directory (mmdistill dataset build)')
    src.add_argument('--bags', type=Path, nargs='+',
                     help='labelled bags: a dataset is built from them first (all frames evaluated)')
    parser.add_argument('--split', default='test', help='split to evaluate with --dataset (default test)')
    parser.add_argument('--out', type=Path, required=True, help='metrics JSON file to write')
    parser.add_argument('--report', type=Path, help='also write a Markdown report with plots into this directory')
    parser.add_argument('--score-threshold', type=float, default=0.05,
                        help='lowest score kept for AP (default 0.05)')


def run(args: argparse.Namespace) -> int:
    import tempfile

    from mmdistill_training.dataset import DistillDataset
    from mmdistill_training.evaluate import evaluate_checkpoint, headline, write_report

    if not 0 <= args.score_threshold <= 1:
        raise ConfigError(f'--score-threshold must be in [0, 1], got {args.score_threshold}')
    with tempfile.TemporaryDirectory(prefix='mmdistill-eval-') as tmp:
        dataset, split = args.dataset, args.split
        if args.bags:
            from mmdistill_student.checkpoint import read_checkpoint_metadata
            from mmdistill_training.dataset_build import BuildConfig, _drive_names, build_dataset
            meta = read_checkpoint_metadata(args.checkpoint)
            fe = meta['config']['frontend']
            feats = ['logmel'] + (['ild'] if fe.get('use_ild') else []) + (['gcc'] if fe.get('use_gccphat') else [])
            dataset = Path(tmp) / 'dataset'
            split_file = Path(tmp) / 'split.json'
            split_file.write_text(json.dumps({'test': _drive_names(args.bags)}))
            build_dataset(args.bags, dataset, BuildConfig(window=meta['window_mode'], features=feats,
                                                          split_file=split_file), progress=True)
            split = 'test'
        res = evaluate_checkpoint(args.checkpoint, dataset, split, args.score_threshold)
        if args.report:
            write_report(res, DistillDataset(dataset), args.report, title=f'Evaluation of {args.checkpoint}')
    clean = {k: v for k, v in res.items() if not k.startswith('_')}
    for ref in ('curves',):
        for r in ('pseudo_labels', 'ground_truth'):
            clean.get(r, {}).get('all', {}).pop(ref, None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(clean, indent=1, default=float))
    for ref in ('ground_truth', 'ground_truth_all_visible', 'ground_truth_shuffled', 'pseudo_labels'):
        if ref in res:
            h = headline(res, ref)
            print(f'{ref}: AP@0.5 {h["AP50"]:.3f}  mAP@Avg {h["mAP_avg"]:.3f}  CDx {h["CDx"]:.2f}%  '
                  f'CDy {h["CDy"]:.2f}%')
    return 0
