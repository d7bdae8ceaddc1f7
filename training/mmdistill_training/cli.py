"""The ``mmdistill`` command line: one entry point, one subcommand per job.

Subcommands are registered by module path and imported only when run, so that
``mmdistill --help`` stays fast and a missing optional dependency of one job
does not break the others. Each command module provides
``add_arguments(parser)`` and ``run(args) -> int``; user errors are raised as
``mmdistill_common.errors.MmdistillError`` and printed as a single line.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, Optional, Sequence, Tuple

from mmdistill_common.errors import MmdistillError

# name -> (module, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    'info': ('mmdistill_training.commands.info',
             'show versions and where ROS, the messages and torch come from'),
    'demo': ('mmdistill_training.commands.demo',
             'the end-to-end job on the built-in simulator (runs the stages built so far, writes a report)'),
    'sim': ('mmdistill_training.commands.sim',
            'simulate a drive into a rosbag2 bag, write a preview contact sheet, or list scenarios'),
    'teachers': ('mmdistill_training.commands.teachers',
                 'train the RGB / depth / thermal teachers on simulator bags and evaluate them, alone and fused'),
    'replay-eval': ('mmdistill_training.commands.replay_eval',
                    'replay a bag through the car graph (student + tracker) and score detections and tracks'),
    'train': ('mmdistill_training.commands.train',
              'train the audio student: counting pretext or distillation (focal + MTA) on a dataset'),
    'evaluate': ('mmdistill_training.commands.evaluate',
                 'score a student checkpoint against pseudo-labels and ground truth, by condition'),
    'ablate': ('mmdistill_training.commands.ablate',
               'train and evaluate the baselines and ablations; write the comparison table'),
    'dataset': ('mmdistill_training.commands.dataset',
                'build a training dataset directory from labelled bags (mmdistill dataset build)'),
    'label': ('mmdistill_training.commands.label',
              'run the RGB, depth and thermal teachers and the fusion over a bag -> labelled bag'),
    'export': ('mmdistill_training.commands.export',
               'export a student checkpoint to ONNX (+ JSON metadata) for ONNX Runtime'),
    'bag': ('mmdistill_training.commands.bag',
            'recover a bag left incomplete by a killed recorder (mmdistill bag recover BAG)'),
    'view': ('mmdistill_training.commands.view',
             'see the live graph or a bag in Foxglove: WebSocket server (play/pause/seek for bags) or MCAP'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='mmdistill',
        description='Audio-only vehicle detection distilled from RGB, depth and thermal teachers.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(cmd)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except MmdistillError as exc:
        message = ' '.join(str(exc).split())       # one line, also for multi-line YAML errors
        print(f'mmdistill {args.command}: error: {message}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'mmdistill {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
