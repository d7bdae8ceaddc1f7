"""``mmdistill sim``: simulate a drive into a rosbag2 bag (MCAP by default), or list scenarios."""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from mmdistill_common.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--scenario', help='named scenario (see --list) or a scenario YAML file')
    parser.add_argument('--out', type=Path, help='bag directory to create (must not exist)')
    parser.add_argument('--seed', type=int, help='override the scenario seed')
    parser.add_argument('--duration', type=float, help='override the scenario duration (s)')
    parser.add_argument('--frame-rate', type=float, metavar='HZ',
                        help='override the camera frame rate (Hz); the audio is unchanged')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap', help='bag storage (default mcap)')
    parser.add_argument('--no-images', action='store_true', help='leave out camera images and camera_info')
    parser.add_argument('--preview', type=Path, metavar='PNG',
                        help='write a contact sheet (three modalities with boxes + spectrogram) instead of a bag')
    parser.add_argument('--preview-time', type=float, default=None, help='time (s) of the previewed frame')
    parser.add_argument('--list', action='store_true', help='list the named scenarios and exit')


def load(args: argparse.Namespace):
    from mmdistill_sim.scenario import load_scenario
    scenario = load_scenario(args.scenario, seed=args.seed)
    if args.duration is not None:
        if not args.duration > 0:
            raise ConfigError(f'--duration must be > 0, got {args.duration}')
        scenario = dataclasses.replace(scenario, duration_s=float(args.duration))
    frame_rate = getattr(args, 'frame_rate', None)     # callers may build the namespace by hand
    if frame_rate is not None:
        if not 0 < frame_rate <= 120:
            raise ConfigError(f'--frame-rate must be in (0, 120] Hz, got {frame_rate}')
        scenario = dataclasses.replace(scenario, frame_rate=float(frame_rate))
    return scenario


def write_bag(scenario, out: Path, storage: str = 'mcap', images: bool = True, progress: bool = True) -> dict:
    """Simulate ``scenario`` into a new bag at ``out``; returns message counts and timing."""
    from tqdm import tqdm

    from mmdistill_common.bagio import BagWriter
    from mmdistill_common.topics import AUDIO_INFO
    from mmdistill_sim.messages import messages
    from mmdistill_sim.simulator import Simulator

    sim = Simulator(scenario)
    start = time.perf_counter()
    with BagWriter(out, storage=storage) as bag:
        bag.add_topic(AUDIO_INFO, 'audio_common_msgs/msg/AudioInfo', transient_local=True)
        with tqdm(total=sim.n_frames, unit='frame', desc=f'sim {scenario.name}', disable=not progress) as bar:
            for topic, msg, stamp in messages(sim, images=images):
                bag.write(topic, msg, stamp)
                if topic == '/sim/ground_truth':
                    bar.update(1)
        counts = dict(bag.counts)
    elapsed = time.perf_counter() - start
    return {'bag': str(out), 'scenario': scenario.name, 'seed': scenario.seed, 'duration_s': scenario.duration_s,
            'messages': counts, 'wall_s': round(elapsed, 3), 'realtime_factor': round(scenario.duration_s / elapsed, 2)}


def run(args: argparse.Namespace) -> int:
    if args.list:
        from mmdistill_sim.scenario import list_scenarios, load_scenario
        for name in list_scenarios():
            print(f'{name:<20} {load_scenario(name).description}')
        return 0
    if not args.scenario:
        raise ConfigError('--scenario is required (or --list)')
    scenario = load(args)
    if args.preview:
        from mmdistill_sim.preview import contact_sheet
        from mmdistill_sim.simulator import Simulator
        times = None if args.preview_time is None else [args.preview_time]
        path = contact_sheet(Simulator(scenario), args.preview, times_s=times)
        print(f'wrote {path}')
        return 0
    if args.out is None:
        raise ConfigError('--out BAG is required')
    if args.out.exists():
        raise ConfigError(f'{args.out} already exists; choose a new bag path')
    print(json.dumps(write_bag(scenario, args.out, args.storage, images=not args.no_images), indent=2))
    return 0
