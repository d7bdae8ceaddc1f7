"""``mmdistill export``: a student checkpoint -> ONNX graph + JSON metadata (see ``mmdistill_training.export``)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', type=Path, required=True, help='student checkpoint directory')
    parser.add_argument('--out', type=Path, required=True, metavar='FILE.onnx',
                        help='ONNX file to write; the metadata goes to FILE.json beside it')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset (default 17)')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip the ONNX Runtime vs PyTorch comparison after export')


def run(args: argparse.Namespace) -> int:
    from mmdistill_training.export import export_checkpoint, metadata_path_for
    meta = export_checkpoint(args.checkpoint, args.out, opset=args.opset, verify=not args.no_verify)
    size_mb = Path(args.out).stat().st_size / 1e6
    line = (f'wrote {args.out} ({size_mb:.1f} MB, opset {meta["opset"]}, input {meta["input"]["shape"]}) '
            f'and {metadata_path_for(args.out)}')
    if 'verification' in meta:
        line += f'; ONNX Runtime vs PyTorch max abs diff {meta["verification"]["max_abs_diff"]:.2e}'
    print(line)
    return 0
