"""``mmdistill bag recover``: make a bag whose writer was killed readable again (``ros2 bag reindex``).

The work is :func:`mmdistill_common.bag_recovery.recover_bag`; this module parses arguments and
prints what was recovered as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmdistill_common.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='bag_command', metavar='SUBCOMMAND', required=True)
    r = sub.add_parser('recover', help='rebuild metadata.yaml and the index of a bag left by a killed writer',
                       description='Read every complete chunk (MCAP) or committed transaction (sqlite3) of a bag '
                                   'without metadata.yaml, rewrite it as a complete rosbag2 bag and keep the '
                                   'damaged file beside it as <name>.damaged.')
    r.add_argument('bags', nargs='+', type=Path, metavar='BAG', help='bag directories to recover')


def run(args: argparse.Namespace) -> int:
    from mmdistill_common.bag_recovery import recover_bag
    if args.bag_command != 'recover':
        raise ConfigError(f'unknown bag subcommand {args.bag_command!r}')
    for bag in args.bags:          # check all before changing any
        if not bag.is_dir():
            raise ConfigError(f'bag {bag} does not exist or is not a directory')
    for bag in args.bags:
        print(json.dumps(recover_bag(bag).as_dict(), indent=2))
    return 0
