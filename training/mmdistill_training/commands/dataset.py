"""``mmdistill dataset build``: labelled bags -> dataset directory (docs/data-formats.md §3)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmdistill_common.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='dataset_command', metavar='SUBCOMMAND', required=True)
    b = sub.add_parser('build', help='build a dataset directory from labelled bags',
                       description='Cut a window (1 s by default) per labelled frame, run the audio front end, store '
                                   'features, pseudo-labels, teacher boxes, attention, ground truth and splits.')
    b.add_argument('--bags', nargs='+', type=Path, required=True, metavar='BAG', help='labelled bags (one per drive)')
    b.add_argument('--out', type=Path, required=True, help='dataset directory to create (must not exist)')
    b.add_argument('--window', choices=('centered', 'causal'), default='centered',
                   help='window centred on the frame stamp (paper) or ending at it (no look-ahead)')
    b.add_argument('--window-s', type=float, default=1.0, metavar='S',
                   help='seconds of audio per window (default 1, the paper\'s; in [0.1, 4])')
    b.add_argument('--features', default='logmel,ild,gcc',
                   help='comma-separated feature groups: logmel,ild,gcc (logmel required) for the spectrogram '
                        'encoder, or srp,das for the acoustic image, srp,das,mvdr with the MVDR map (default logmel,ild,gcc)')
    b.add_argument('--geometry', type=Path, metavar='FILE.json',
                   help='array and camera calibration {"mic_positions_m": [[x, y, z], ...], "camera": {width, '
                        'height, fx, cx, cy, x_m, height_m, pitch_deg}} (ego frame: x forward, y left, z up); '
                        'default: from the named simulator scenarios')
    b.add_argument('--frame-stride', type=int, default=1, metavar='K', help='keep every K-th labelled frame')
    b.add_argument('--split', type=Path, metavar='FILE.json',
                   help='{"train": [...], "val": [...], "test": [...]} drive names instead of the split rule')
    b.add_argument('--batch-size', type=int, default=2,
                   help='windows per front-end call (default 2; on CPU larger batches are slower, see benchmarks)')
    b.add_argument('--mix', type=int, default=0, metavar='N',
                   help='add N mixed copies of every training drive: its audio summed with a training drive of '
                        'another scenario, their labels joined (default 0; mixing.py)')
    b.add_argument('--quiet', action='store_true', help='no progress bars')


def run(args: argparse.Namespace) -> int:
    from mmdistill_training.dataset_build import BuildConfig, build_dataset
    if args.dataset_command != 'build':
        raise ConfigError(f'unknown dataset subcommand {args.dataset_command!r}')
    features = tuple(f.strip() for f in args.features.split(',') if f.strip())
    geometry = None
    if args.geometry is not None:
        from mmdistill_student.calibration import load_geometry
        geometry = load_geometry(args.geometry)
    cfg = BuildConfig(window=args.window, window_s=args.window_s, features=features, frame_stride=args.frame_stride,
                      split_file=args.split, batch_size=args.batch_size, geometry=geometry,
                      mix=args.mix)
    index = build_dataset(args.bags, args.out, cfg, progress=not args.quiet)
    summary = {'out': str(args.out), 'n_frames': index['n_frames'], 'drives': len(index['drives']),
               'skipped': index['skipped'], 'splits': {k: len(v) for k, v in index['splits'].items()},
               'content_hash': index['content_hash']}
    print(json.dumps(summary, indent=2))
    return 0
