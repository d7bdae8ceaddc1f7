"""``mmdistill info``: what this installation runs on (useful in bug reports)."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
from importlib import metadata


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--json', action='store_true', help='print a JSON object instead of text')


def _origin(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return f'missing ({exc})'
    return os.path.dirname(getattr(mod, '__file__', '') or '?')


def collect() -> dict:
    info = {'python': platform.python_version(), 'machine': platform.machine()}
    for dist in ('torch', 'numpy', 'rosbags', 'librosa', 'onnxruntime'):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = 'missing'
    info['rmw_implementation'] = os.environ.get('RMW_IMPLEMENTATION', '(default)')
    info['ros_distro'] = os.environ.get('ROS_DISTRO', '(pip mode: ROS 2 Kilted wheels)')
    for pkg in ('rclpy', 'vision_msgs', 'audio_common_msgs', 'mmdistill_msgs'):
        info[pkg] = _origin(pkg)
    return info


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f'{key:<{width}}  {value}')
    return 0
