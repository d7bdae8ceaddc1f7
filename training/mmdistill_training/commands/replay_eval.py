"""``mmdistill replay-eval``: replay a bag through the car graph and score its detections and tracks.

The bag's audio is played (``mmdistill_training.replay.BagPlayer``, with ``/clock``) into
student_node + tracking_node built in this process exactly as ``mmdistill-bringup car`` builds
them; ``/student/detections`` and ``/tracking/tracks`` are matched by stamp to the bag's
reference frames: ``/sim/ground_truth`` (or ``/sim/truth``; ids = vehicle ids, so MOT metrics
too) and ``/pseudo_labels`` where recorded. ``--offline`` runs the same ROS-free runtime and
tracker without the graph (fast, deterministic; what the replay should reproduce).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mmdistill_common.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--bag', type=Path, required=True, help='bag with audio (and ground truth / pseudo-labels)')
    parser.add_argument('--checkpoint', type=Path, required=True, help='student checkpoint directory')
    parser.add_argument('--out', type=Path, required=True, help='metrics JSON to write')
    parser.add_argument('--rate', type=float, default=1.0, help='replay speed, bag seconds per second (default 1)')
    parser.add_argument('--tracker', choices=('iou', 'kalman'), default='kalman', help='tracker (default kalman)')
    parser.add_argument('--output-rate', type=float, default=None, metavar='HZ',
                        help="student detections per second (default: the car graph's)")
    parser.add_argument('--score-threshold', type=float, default=None,
                        help="student score threshold (default: the checkpoint's)")
    parser.add_argument('--offline', action='store_true', help='no ROS graph: StudentRuntime + tracker on the bag')


def run(args: argparse.Namespace) -> int:
    from mmdistill_training.replay import evaluate_offline, evaluate_replay
    if not args.rate > 0:
        raise ConfigError(f'--rate must be > 0, got {args.rate}')
    if not args.bag.exists():
        raise ConfigError(f'bag {args.bag} does not exist')
    if args.offline:
        rate_hz = args.output_rate
        if rate_hz is None:
            from mmdistill_bringup.graphs import default_args
            rate_hz = float(default_args('car')['rate'])
        result = evaluate_offline(args.bag, args.checkpoint, rate_hz=rate_hz, tracker=args.tracker,
                                  score_threshold=args.score_threshold)
    else:
        result = evaluate_replay(args.bag, args.checkpoint, rate=args.rate, tracker=args.tracker,
                                 rate_hz=args.output_rate, score_threshold=args.score_threshold)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + '.tmp')
    tmp.write_text(json.dumps(result, indent=2) + '\n')
    os.replace(tmp, args.out)
    for name, block in result['references'].items():
        det = block['detection']
        line = f'{name}: AP50 {det["AP50"]} mAP_avg {det["mAP_avg"]} over {block["coverage"]["scored_frames"]} frames'
        if 'tracking' in block:
            line += f', MOTA {block["tracking"]["MOTA"]} IDF1 {block["tracking"]["IDF1"]}'
        print(line)
    print(f'wrote {args.out}')
    return 0
