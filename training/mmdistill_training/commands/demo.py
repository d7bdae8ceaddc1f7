"""``mmdistill demo``: the end-to-end job on the built-in simulator (see ``pipeline.py``)."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mmdistill_common.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', type=Path, default=Path('runs/demo'), help='output folder (default runs/demo)')
    parser.add_argument('--quick', action='store_true',
                        help='the CI variant: 3 scenarios, 6-s drives, 1-2 epochs (a few minutes)')
    parser.add_argument('--force', action='store_true',
                        help='start from scratch (default: reuse the stages an earlier run finished)')
    parser.add_argument('--workers', type=int, default=2, help='parallel simulation / labelling jobs (default 2)')


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from mmdistill_training.pipeline import PLANS, run_demo

    if args.workers < 1:
        raise ConfigError(f'--workers must be >= 1, got {args.workers}')
    plan = dataclasses.replace(PLANS['quick' if args.quick else 'full'], workers=args.workers)
    out: Path = args.out
    if out.exists() and args.force:
        shutil.rmtree(out)
    marker = out / '.done' / 'plan.json'
    import json
    want = json.dumps({k: v for k, v in dataclasses.asdict(plan).items() if k != 'workers'}, sort_keys=True)
    if marker.exists() and marker.read_text() != want:
        raise ConfigError(f'{out} holds a demo run with other settings; pass --force to replace it')
    (out / '.done').mkdir(parents=True, exist_ok=True)
    marker.write_text(want)
    run_demo(out, plan, quick=args.quick)
    return 0
