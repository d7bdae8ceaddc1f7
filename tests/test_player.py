"""BagPlayer on a real graph: every message delivered in order, stamps honoured at the rate, /clock, latched info."""
import time

import numpy as np
import pytest
from audio_common_msgs.msg import AudioInfo
from rclpy.executors import SingleThreadedExecutor
from rosgraph_msgs.msg import Clock
from vision_msgs.msg import Detection2DArray

from mmdistill_common import topics
from mmdistill_common.bagio import BagWriter
from mmdistill_common.conversions import audio_info, detections_to_msg, stamp_to_ns
from mmdistill_common.errors import ConfigError, InputError
from mmdistill_common.qos import latched_qos, stream_qos
from mmdistill_common.testing import make_collector
from mmdistill_training.replay import BagPlayer

pytestmark = pytest.mark.ros

T0 = 5_000_000_000
STAMPS = [T0 + k * 50_000_000 for k in range(31)]          # 1.5 s of bag time, every 50 ms


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('player') / 'bag'
    with BagWriter(path) as w:
        w.add_topic(topics.AUDIO_INFO, 'audio_common_msgs/msg/AudioInfo', transient_local=True)
        w.write(topics.AUDIO_INFO, audio_info(8, 44100), T0)
        for k, s in enumerate(STAMPS):
            w.write(topics.GROUND_TRUTH, detections_to_msg([[k, 0, k + 10, 10]], [1.0], ids=[k], stamp_ns=s), s)
    return path


class Timed:
    """Collector that also records the wall-clock receive time of each message."""

    def __init__(self, executor, topic, msg_type, qos, name):
        self.node = make_collector(topic, msg_type, qos, name=name)
        self.times = []
        self.node.create_subscription(msg_type, topic, lambda m: self.times.append(time.monotonic()), qos)
        executor.add_node(self.node)


def spin_until(ex, cond, timeout):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        ex.spin_once(timeout_sec=0.01)
    return cond()


def test_player_delivers_all_in_time_with_clock(ros, bag):
    ex = SingleThreadedExecutor()
    gt = Timed(ex, topics.GROUND_TRUTH, Detection2DArray, stream_qos(), 'p_gt')
    clock = Timed(ex, topics.CLOCK, Clock, 10, 'p_clock')
    player = BagPlayer(bag, rate=2.0, start=False, tail_s=0.2)
    ex.add_node(player)
    try:
        # let discovery finish before playing so that nothing is published into the void
        assert spin_until(ex, lambda: player.count_subscribers(topics.GROUND_TRUTH) >= 1
                          and player.count_subscribers(topics.CLOCK) >= 1, 10)
        player.play()
        t_play = time.monotonic()
        assert spin_until(ex, lambda: player.done and len(gt.node.messages) == len(STAMPS), 10)
        t_end = time.monotonic()
        # the last /clock is published just before `done` is set: let it arrive
        spin_until(ex, lambda: clock.node.messages
                   and stamp_to_ns(clock.node.messages[-1].clock) >= STAMPS[-1] + 200_000_000, 2)
        # a subscriber that joins after the end still gets audio_info (transient local)
        late = make_collector(topics.AUDIO_INFO, AudioInfo, latched_qos(), name='p_late_info')
        ex.add_node(late)
        assert spin_until(ex, lambda: late.messages, 10), 'audio_info not latched'
        assert late.messages[0].channels == 8
        ex.remove_node(late)
        late.destroy_node()
    finally:
        for n in (gt.node, clock.node, player):
            ex.remove_node(n)
            n.destroy_node()
        ex.shutdown()
    # all delivered, in order, unchanged
    got = [stamp_to_ns(m.header.stamp) for m in gt.node.messages]
    assert got == STAMPS
    assert [m.detections[0].id for m in gt.node.messages] == [str(k) for k in range(len(STAMPS))]
    assert player.counts == {topics.AUDIO_INFO: 1, topics.GROUND_TRUTH: len(STAMPS)}
    # stamps honoured at 2x: 1.5 s of bag in ~0.75 s; each message no earlier than due, at most a few ticks late
    due = np.array([(s - T0) / 2e9 for s in STAMPS])
    arrived = np.array(gt.times) - t_play
    assert np.all(arrived >= due - 0.01), (arrived - due).min()
    assert np.median(arrived - due) < 0.05, np.median(arrived - due)
    assert 0.7 <= t_end - t_play < 2.0
    # /clock: bag time, monotonic, from the start to the end plus the tail
    clk = [stamp_to_ns(m.clock) for m in clock.node.messages]
    assert len(clk) > 20
    assert all(b >= a for a, b in zip(clk, clk[1:]))
    assert T0 <= clk[0] < T0 + 100_000_000
    assert clk[-1] == STAMPS[-1] + 200_000_000
    # the clock runs at the rate: bag time vs wall time of the clock messages
    wall = np.array(clock.times[:len(clk)]) - clock.times[0]
    mid = [i for i, c in enumerate(clk) if c <= STAMPS[-1]]
    slope = np.polyfit(wall[mid], (np.array(clk)[mid] - clk[0]) / 1e9, 1)[0]
    assert slope == pytest.approx(2.0, rel=0.15)


def test_player_topic_filter_and_errors(ros, bag, tmp_path):
    p = BagPlayer(bag, topics=[topics.GROUND_TRUTH], start=False, node_name='p_filter')
    try:
        assert p.topics == [topics.GROUND_TRUTH] and p.total == len(STAMPS)
    finally:
        p.destroy_node()
    with pytest.raises(InputError, match='no topic /nope'):
        BagPlayer(bag, topics=['/nope'], start=False, node_name='p_bad_topic')
    with pytest.raises(ConfigError, match='rate'):
        BagPlayer(bag, rate=0.0, start=False, node_name='p_bad_rate')
    with pytest.raises(InputError, match='does not exist'):
        BagPlayer(tmp_path / 'missing', start=False, node_name='p_missing')
