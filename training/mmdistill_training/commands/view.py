"""``mmdistill view``: see the graph or a bag in Foxglove (no ROS install, no RViz needed).

Live (default): subscribes the running graph's topics (``mmdistill_bringup.view_node``) and
serves them on a foxglove-sdk WebSocket server. ``--bag``: replays a bag into the same
channels with play, pause, speed and seek from the app (``mmdistill_bringup.foxglove_playback``);
``--checkpoint`` runs the student and tracker on its audio. ``--mcap OUT``: also write the
channels to MCAP (with ``--bag``: convert the whole bag at once and exit). Channels and layout:
``mmdistill_bringup/config/foxglove_layout.json`` and README "Seeing it".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmdistill_common.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--bag', type=Path, help='replay this bag (recorded or from mmdistill sim) instead of the live graph')
    parser.add_argument('--checkpoint', type=Path, help='with --bag: run this student checkpoint (+ tracker) on the audio')
    parser.add_argument('--tracker', choices=('iou', 'kalman'), default='kalman', help='with --checkpoint (default kalman)')
    parser.add_argument('--port', type=int, default=8765, help='WebSocket port (default 8765; 0 = any free port)')
    parser.add_argument('--host', default='127.0.0.1', help='address to serve on (default 127.0.0.1, this machine only)')
    parser.add_argument('--mcap', type=Path, metavar='OUT.mcap', help='also write the channels to this new MCAP file; '
                        'with --bag: convert the bag and exit (no server)')
    parser.add_argument('--scenario', default='day-static', metavar='NAME',
                        help='simulator scenario whose microphone array and camera the heat map uses (default day-static)')
    parser.add_argument('--duration', type=float, metavar='S', help='stop after S seconds (default: until Ctrl-C)')


def _check(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f'--port must be in 0..65535, got {args.port}')
    if args.bag is not None and not args.bag.exists():
        raise ConfigError(f'bag {args.bag} does not exist')
    if args.checkpoint is not None:
        if args.bag is None:
            raise ConfigError('--checkpoint needs --bag (live, the graph runs the student)')
        if not args.checkpoint.is_dir():
            raise ConfigError(f'checkpoint {args.checkpoint} is not a directory')
    if args.mcap is not None:
        if args.mcap.exists():
            raise ConfigError(f'{args.mcap} already exists; choose a new file')
        if not args.mcap.parent.is_dir():
            raise ConfigError(f'directory {args.mcap.parent} does not exist')
    if args.duration is not None and not args.duration > 0:
        raise ConfigError(f'--duration must be > 0, got {args.duration}')


def _geometry(name: str):
    from mmdistill_bringup.acoustic_map import ArrayGeometry
    from mmdistill_sim.scenario import list_scenarios
    if name not in list_scenarios() and not Path(name).is_file():
        raise ConfigError(f'unknown scenario {name!r} (named: {", ".join(list_scenarios())}, or a YAML file)')
    return ArrayGeometry.from_scenario(name)


def _serving(port: int, host: str, what: str) -> None:
    print(f'mmdistill view: serving {what} on ws://{host}:{port}; in Foxglove: Open connection -> Foxglove '
          f'WebSocket, then import the layout mmdistill_bringup/config/foxglove_layout.json', flush=True)


def _wait(duration) -> None:
    import time
    deadline = None if duration is None else time.monotonic() + duration
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.1)


def run(args: argparse.Namespace) -> int:
    _check(args)
    geometry = _geometry(args.scenario)
    if args.bag is not None:
        return _run_bag(args, geometry)
    return _run_live(args, geometry)


def _server_error(exc: Exception, args) -> ConfigError:
    return ConfigError(f'cannot serve on {args.host}:{args.port}: {exc}')


def _run_bag(args, geometry) -> int:
    from mmdistill_bringup.foxglove_playback import BagViewPlayer, StudentOnBag
    student = StudentOnBag(args.checkpoint, tracker=args.tracker) if args.checkpoint is not None else None
    port = None if args.mcap is not None else args.port
    try:
        player = BagViewPlayer(args.bag, port=port, host=args.host, mcap=args.mcap, geometry=geometry, student=student)
    except RuntimeError as exc:
        raise _server_error(exc, args) from None
    try:
        if args.mcap is not None:
            n = player.export()
            shown = {k: v for k, v in player.view.counts.items() if v}
            print(f'mmdistill view: {n} bag messages -> {args.mcap}: ' + ', '.join(f'{k} {v}' for k, v in shown.items()))
            return 0
        _serving(player.view.port, args.host, f'{args.bag} ({", ".join(player.bag.topics)})')
        player.start()
        _wait(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        player.close()
    return 0


def _run_live(args, geometry) -> int:
    import rclpy

    from mmdistill_bringup.foxglove_view import FoxgloveView
    from mmdistill_bringup.runner import spin
    from mmdistill_bringup.view_node import ViewNode
    try:
        view = FoxgloveView(port=args.port, host=args.host, mcap=args.mcap, geometry=geometry)
    except RuntimeError as exc:
        raise _server_error(exc, args) from None
    rclpy.init(args=['mmdistill-view'])
    node = None
    try:
        node = ViewNode(view)
        _serving(view.port, args.host, 'the live graph')
        spin([node], duration=args.duration)
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        view.close()
    for warning in view.warnings:
        print(f'mmdistill view: {warning}', file=sys.stderr)
    return 0
