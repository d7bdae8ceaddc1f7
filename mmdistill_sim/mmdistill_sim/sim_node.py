"""``sim_node``: publishes a simulated drive live (cameras, microphone array, ground truth, /clock).

A thin wrapper over ``mmdistill_sim.messages``: a timer releases every message
whose stamp has been reached in simulated time, running ``rate`` times faster
than real time. With ``publish_clock`` the stamps start at 0 and ``/clock``
carries simulated time (use ``use_sim_time`` downstream); otherwise stamps are
the wall-clock start time plus simulated time.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Dict, Iterator, Optional

from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from mmdistill_msgs.msg import SimTruth
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from vision_msgs.msg import Detection2DArray

from mmdistill_common import topics
from mmdistill_common.conversions import ns_to_stamp
from mmdistill_common.node_main import run_node
from mmdistill_common.params import Param, declare_parameters
from mmdistill_common.qos import incompatible_qos_warner, latched_qos, stream_qos

from .messages import messages
from .scenario import load_scenario
from .simulator import Simulator

PARAMS = [
    Param('scenario', 'day-static', 'Named scenario or path to a scenario YAML file.', read_only=True),
    Param('seed', -1, 'Seed override; -1 keeps the scenario seed.', min=-1, max=2**31 - 1, read_only=True),
    Param('duration', 0.0, 'Drive length override in seconds; 0 keeps the scenario duration.', min=0.0, max=3600.0,
          read_only=True),
    Param('rate', 1.0, 'Simulated seconds per wall-clock second (1.0 = real time).', min=0.01, max=100.0),
    Param('publish_clock', False, 'Publish /clock with simulated time and stamp from 0 (use_sim_time downstream).',
          read_only=True),
    Param('images', True, 'Publish the three camera images and camera_info.', read_only=True),
    Param('loop', False, 'Start the drive again (new stamps, next seed) when it ends.'),
    Param('audio_reliability', 'reliable', 'QoS reliability of the audio stream; best_effort can drop chunks, '
          'which the student sees as gaps.', choices=('reliable', 'best_effort'), read_only=True),
    Param('tick_period', 0.01, 'Timer period in wall-clock seconds at which due messages are released.',
          min=0.001, max=1.0, read_only=True),
]

TYPES = {topics.AUDIO: AudioDataStamped, topics.AUDIO_INFO: AudioInfo, topics.GROUND_TRUTH: Detection2DArray,
         topics.SIM_TRUTH: SimTruth, topics.CLOCK: Clock}
for _m in topics.CAMERAS:
    TYPES[topics.image_topic(_m)] = Image
    TYPES[topics.camera_info_topic(_m)] = CameraInfo


class SimNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__('sim_node', **kwargs)
        self.p = declare_parameters(self, PARAMS)
        scenario = load_scenario(self.p['scenario'], seed=None if self.p['seed'] < 0 else self.p['seed'])
        if self.p['duration'] > 0:
            scenario = dataclasses.replace(scenario, duration_s=self.p['duration'])
        self.scenario = scenario
        self._pubs: Dict[str, object] = {}
        for topic, msg_type in TYPES.items():
            if topic == topics.CLOCK and not self.p['publish_clock']:
                continue
            if not self.p['images'] and msg_type in (Image, CameraInfo):
                continue
            if topic == topics.AUDIO_INFO:
                qos = latched_qos()
            else:
                qos = stream_qos(self.p['audio_reliability'] if topic == topics.AUDIO else 'reliable')
            pub_events, _ = incompatible_qos_warner(self, topic)
            self._pubs[topic] = self.create_publisher(msg_type, topic, qos, event_callbacks=pub_events)
        self.drives = 0
        self._start_drive()
        self.timer = self.create_timer(self.p['tick_period'], self._tick)

    def _start_drive(self) -> None:
        scenario = self.scenario
        if self.drives:
            scenario = dataclasses.replace(scenario, seed=scenario.seed + self.drives)
        t0 = 0 if self.p['publish_clock'] else time.time_ns()
        self.sim = Simulator(scenario, t0_ns=t0)
        self._stream: Optional[Iterator] = messages(self.sim, images=self.p['images'])
        self._pending = next(self._stream, None)
        self._wall0 = time.monotonic()
        self.get_logger().info(f'drive {self.drives}: scenario {scenario.name} seed {scenario.seed}, '
                               f'{scenario.duration_s:.1f} s at {self.p["rate"]}x real time')

    def _tick(self) -> None:
        sim_ns = self.sim.t0_ns + int((time.monotonic() - self._wall0) * self.p['rate'] * 1e9)
        while self._pending is not None and self._pending[2] <= sim_ns:
            topic, msg, _ = self._pending
            if topic in self._pubs:
                self._pubs[topic].publish(msg)
            self._pending = next(self._stream, None)
        if topics.CLOCK in self._pubs:
            self._pubs[topics.CLOCK].publish(Clock(clock=ns_to_stamp(sim_ns)))
        if self._pending is None:
            self.drives += 1
            if self.p['loop']:
                self._start_drive()
            else:
                self.get_logger().info('drive finished')
                self.timer.cancel()


def main(args=None) -> int:
    return run_node('sim_node', SimNode, args)


if __name__ == '__main__':
    sys.exit(main())
