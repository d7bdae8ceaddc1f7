"""``mmdistill train``: train the audio student (pretext or distillation stage) on a dataset."""
from __future__ import annotations

import argparse
from pathlib import Path

from mmdistill_common.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--config', required=True,
                        help='training config YAML, or the name of a shipped one (student, pretext, '
                             'spectrogram, upper-bound, averaged-teachers, mta-reference, no-distill, single-rgb, '
                             'single-depth, single-thermal, stereosoundnet)')
    parser.add_argument('--dataset', type=Path, required=True, help='dataset directory (mmdistill dataset build)')
    parser.add_argument('--out', type=Path, required=True, help='checkpoint directory to write')
    parser.add_argument('--init', help="initialise the encoder from a pretext checkpoint: 'pretext:DIR'")
    parser.add_argument('--resume', action='store_true', help='continue from the train state in --out')
    parser.add_argument('--epochs', type=int, help='override optim.epochs')
    parser.add_argument('--seed', type=int, help='override seed')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), help='override device')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')


def run(args: argparse.Namespace) -> int:
    from mmdistill_training.train_config import load_train_config
    from mmdistill_training.trainer import train

    overrides = {}
    if args.seed is not None:
        overrides['seed'] = args.seed
    if args.device is not None:
        overrides['device'] = args.device
    if args.epochs is not None:
        if args.epochs < 1:
            raise ConfigError(f'--epochs must be >= 1, got {args.epochs}')
        overrides.setdefault('optim', {})['epochs'] = args.epochs
    cfg = load_train_config(args.config, overrides)
    if args.resume and not (args.out / 'train_state.json').is_file():
        raise ConfigError(f'--resume: no train state in {args.out}')
    if not args.resume and (args.out / 'train_state.json').is_file():
        raise ConfigError(f'{args.out} already holds a training run; pass --resume or choose another --out')
    summary = train(cfg, args.dataset, args.out, init=args.init, resume=args.resume, progress=not args.quiet)
    print(f'{cfg.name}: best {summary["monitor"]} {summary["best"]:.4f} at epoch {summary["best_epoch"]} '
          f'({summary["epochs_run"]} epochs, {summary["time_s"]:.0f} s) -> {args.out}')
    return 0
