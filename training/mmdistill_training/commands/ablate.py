"""``mmdistill ablate``: train and evaluate the baselines and ablations, write one table."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmdistill_training.experiments import EXPERIMENTS
    parser.add_argument('--dataset', type=Path, required=True, help='dataset directory')
    parser.add_argument('--out', type=Path, required=True,
                        help='directory for one checkpoint per method, table.md and results.json '
                             '(finished methods are reused)')
    parser.add_argument('--only', nargs='+', metavar='NAME',
                        help='run only these: ' + ', '.join(e.name for e in EXPERIMENTS))
    parser.add_argument('--epochs', type=int, help='override the epochs of every trained method')
    parser.add_argument('--pretext-epochs', type=int, help='override the pretext epochs')
    parser.add_argument('--split', default='test', help='split to evaluate (default test)')
    parser.add_argument('--seeds', type=int, default=1, metavar='N',
                        help='train every row with seeds 0..N-1 and report mean ± std (default 1)')
    parser.add_argument('--spectrogram-dataset', type=Path, metavar='DIR',
                        help='the same labelled bags built with --features logmel,ild,gcc: enables the '
                             'spectrogram-encoder and StereoSoundNet rows')
    parser.add_argument('--min-label-score', type=float, metavar='S',
                        help='fused pseudo-labels scored at least S are targets and the PL reference '
                             '(default: the training configs\' min_label_score)')
    parser.add_argument('--label-support', nargs='*', metavar='TEACHER',
                        help='only fused pseudo-labels these teachers support are targets and the PL reference '
                             '(rgb, depth, thermal; none given: no requirement; default: the training configs\')')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


def run(args: argparse.Namespace) -> int:
    from mmdistill_common.errors import ConfigError
    from mmdistill_training.ablate import run_ablation
    for flag in ('epochs', 'pretext_epochs'):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise ConfigError(f'--{flag.replace("_", "-")} must be >= 1, got {v}')
    if args.min_label_score is not None and not 0 <= args.min_label_score <= 1:
        raise ConfigError(f'--min-label-score must be in [0, 1], got {args.min_label_score}')
    bad = [m for m in args.label_support or [] if m not in ('rgb', 'depth', 'thermal')]
    if bad:
        raise ConfigError(f'--label-support takes rgb, depth, thermal; got {bad[0]!r}')
    if args.seeds < 1:
        raise ConfigError(f'--seeds must be >= 1, got {args.seeds}')
    summary = run_ablation(args.dataset, args.out, args.only, args.epochs, args.pretext_epochs,
                           progress=not args.quiet, split=args.split, seeds=list(range(args.seeds)),
                           spectrogram_dataset=args.spectrogram_dataset, min_label_score=args.min_label_score,
                           label_support=args.label_support)
    print((args.out / 'table.md').read_text())
    return 0
