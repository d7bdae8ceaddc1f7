"""sim_node on a real graph: audio continuous, images at the frame rate, ground truth, latched audio_info."""
import os
import time

import numpy as np
import pytest
from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from vision_msgs.msg import Detection2DArray

from mmdistill_common import topics
from mmdistill_common.conversions import msg_to_audio, stamp_to_ns
from mmdistill_common.qos import latched_qos, stream_qos
from mmdistill_common.testing import make_collector, start_node, stop_process, wait_for

pytestmark = pytest.mark.ros


def test_sim_node_streams(executor):
    audio = executor.add(make_collector(topics.AUDIO, AudioDataStamped, stream_qos()))
    rgb = executor.add(make_collector(topics.image_topic('rgb'), Image, stream_qos()))
    gt = executor.add(make_collector(topics.GROUND_TRUTH, Detection2DArray, stream_qos()))
    clock = executor.add(make_collector(topics.CLOCK, Clock, 10))
    # 4 s of drive at 2x: 2 s of wall time, so that a subscription matched late on a loaded machine
    # still gets /clock (with a 2-s drive CI once saw images but no /clock at all)
    proc = start_node('mmdistill_sim.sim_node', 'scenario:=dense-traffic', 'duration:=4.0', 'rate:=2.0',
                      'publish_clock:=true')
    try:
        assert wait_for(lambda: rgb.messages and gt.messages and clock.messages, timeout=30), \
            f'sim_node: {len(rgb.messages)} images, {len(gt.messages)} truth, {len(clock.messages)} /clock'
        time.sleep(2.0)
        # a late subscriber still gets the latched audio_info
        info = executor.add(make_collector(topics.AUDIO_INFO, AudioInfo, latched_qos(), name='late_info'))
        assert info.wait_for(1, timeout=10), 'audio_info is not transient local'
        assert (info.messages[0].channels, info.messages[0].sample_rate) == (8, 44100)
        # the whole drive, however slowly a loaded machine plays it (CI once stopped it at 2.4 s)
        assert wait_for(lambda: stamp_to_ns(clock.messages[-1].clock) >= 3_900_000_000, timeout=60), \
            f'/clock stopped at {stamp_to_ns(clock.messages[-1].clock) / 1e9:.2f} s of the 4-s drive'
    finally:
        rc = stop_process(proc)
    assert rc == 0, proc.stderr.read()
    # audio chunks tile the signal (stamp = first sample), with nothing lost on a reliable stream
    # once matched (discovery on a loaded machine may miss the first chunks: the first received
    # stamp gives its sample index, every later stamp must follow from the sample counts)
    stamps = [stamp_to_ns(m.header.stamp) for m in audio.messages]
    counts = [len(msg_to_audio(m, 8)) for m in audio.messages]
    assert len(stamps) > 20
    first = -(-stamps[0] * 44100 // 10**9)          # smallest sample index with that stamp
    assert (first * 10**9) // 44100 == stamps[0]
    expected = [((first + sum(counts[:i])) * 10**9) // 44100 for i in range(len(counts))]
    assert stamps == expected
    img_stamps = np.array([stamp_to_ns(m.header.stamp) for m in rgb.messages])
    # the audio is there from when the images are: a machine loaded enough to match both
    # subscriptions late (one run under load: 1.5 s of wall time, 3 s of drive) loses the start
    # of both, not of the audio alone
    assert stamps[0] <= img_stamps[0] + 500_000_000, (stamps[0], img_stamps[0])
    np.testing.assert_allclose(np.diff(img_stamps), 1e8, atol=1)
    assert any(len(m.detections) for m in gt.messages), 'dense traffic but no vehicle in view'
    assert clock.messages and stamp_to_ns(clock.messages[-1].clock) >= 3_900_000_000
