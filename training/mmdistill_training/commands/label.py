"""``mmdistill label``: run the three teachers and the fusion over a bag -> labelled bag (or over
several bags into a directory, loading the teachers once: the demo's workers each label their
share of the drives in one process).

The reusable part is :func:`mmdistill_training.labelling_offline.label_bag`; this module
only parses arguments and prints the statistics as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmdistill_common.errors import ConfigError
from mmdistill_teachers import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--bag', type=Path, nargs='+', required=True,
                        help='input bag(s) with audio and camera images; with several, --out is a directory '
                             'that receives one labelled bag per input, named as the input (the teachers load once)')
    parser.add_argument('--teachers', type=Path, required=True,
                        help='teachers directory (DIR/rgb.safetensors, DIR/depth.safetensors, ...)')
    parser.add_argument('--out', type=Path, required=True,
                        help='labelled bag to create (must not exist); with several --bag, the directory for them')
    parser.add_argument('--thresholds', default=None, metavar='T',
                        help="fusion score thresholds: one number for all teachers or "
                             "'rgb=0.5,depth=0.5,thermal=0.5' (default: the teachers directory's "
                             "calibrated fusion.json, else 0.5 each)")
    parser.add_argument('--method', choices=('nms', 'wbf'), default=None,
                        help='fusion: class-agnostic NMS over the union (paper) or weighted box fusion '
                             "(default: the teachers directory's fusion.json, else nms)")
    parser.add_argument('--iou', type=float, default=0.5, help='fusion IoU threshold (default 0.5)')
    parser.add_argument('--max-detections', type=int, default=50, help='pseudo-label boxes per frame (default 50)')
    parser.add_argument('--images', action='store_true', help='also copy the camera images and camera_info')
    parser.add_argument('--batch-size', type=int, default=8,
                        help='frames per forward pass (default 8; 1 reproduces teacher_node bit for bit)')
    parser.add_argument('--slop', type=float, default=0.05,
                        help='seconds by which the three cameras of one frame may differ (default 0.05)')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='output bag storage')
    parser.add_argument('--device', default='cpu', help='torch device for the teachers (default cpu)')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32',
                        help='teacher arithmetic: fp32, bf16 autocast, or auto = bf16 where the CPU runs it '
                             'natively (default fp32, as teacher_node)')
    parser.add_argument('--frame-stride', type=int, default=1,
                        help='label every k-th camera frame (default 1: all); the teachers dominate the cost')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def run(args: argparse.Namespace) -> int:
    from mmdistill_teachers.labelling import FusionConfig
    from mmdistill_teachers.weights import load_fusion_config, load_teachers, set_precision

    from ..labelling_offline import label_bag, parse_thresholds

    bags = list(args.bag)
    names = [b.name for b in bags]
    if len(set(names)) != len(names):
        raise ConfigError('input bag directory names must be unique (they name the labelled bags)')
    outs = [args.out] if len(bags) == 1 else [args.out / n for n in names]
    for bag, out in zip(bags, outs):
        if out.exists():
            raise ConfigError(f'{out} already exists; choose a new bag path')
        if not bag.exists():
            raise ConfigError(f'input bag {bag} does not exist')
    calibrated = load_fusion_config(args.teachers) if args.teachers.is_dir() else None
    thresholds = parse_thresholds(args.thresholds) if args.thresholds is not None or calibrated is None \
        else dict(calibrated.score_thresholds)
    method = args.method or (calibrated.method if calibrated is not None else 'nms')
    fusion = FusionConfig(score_thresholds=thresholds, iou_threshold=args.iou, method=method,
                          max_detections=args.max_detections)
    teachers = load_teachers(args.teachers, modalities=fusion.modalities, device=args.device)
    set_precision(teachers, args.precision)
    results = []
    for bag, out in zip(bags, outs):      # a failing bag leaves the bags labelled before it complete
        stats = label_bag(bag, teachers, out, fusion, images=args.images, progress=not args.no_progress,
                          batch_size=args.batch_size, slop=args.slop, storage=args.storage,
                          frame_stride=args.frame_stride)
        stats['precision'] = args.precision
        results.append(stats)
    print(json.dumps(results[0] if len(bags) == 1 else {'bags': results}, indent=2))
    return 0
