"""Every named scenario -> a bag that our reader and the independent MCAP reader both decode,
with continuous audio and images at the frame rate."""
import dataclasses
import glob
import subprocess
import sys

import numpy as np
import pytest
from mcap_ros2.reader import read_ros2_messages

from mmdistill_common import topics
from mmdistill_common.bagio import BagReader
from mmdistill_common.conversions import msg_to_audio, msg_to_image, stamp_to_ns
from mmdistill_sim.scenario import list_scenarios, load_scenario
from mmdistill_training.commands.sim import write_bag

DURATION = 1.5


@pytest.mark.parametrize('name', list_scenarios())
def test_named_scenario_bag(tmp_path, name):
    scenario = dataclasses.replace(load_scenario(name), duration_s=DURATION)
    report = write_bag(scenario, tmp_path / 'bag', progress=False)
    fps, fs = scenario.frame_rate, scenario.audio.sample_rate
    n_frames = int(np.floor(DURATION * fps + 1e-9))
    assert report['messages'][topics.image_topic('rgb')] == n_frames

    with BagReader(tmp_path / 'bag') as bag:
        data = bag.read_all()
    info = data[topics.AUDIO_INFO][0].msg
    assert (info.channels, info.sample_rate, info.sample_format) == (8, fs, 'S16LE')
    # audio: contiguous chunks, each stamped at its first sample, covering the whole drive
    n = 0
    for m in data[topics.AUDIO]:
        assert stamp_to_ns(m.msg.header.stamp) == (n * 1_000_000_000) // fs
        n += len(msg_to_audio(m.msg, 8))
    assert n == round(DURATION * fs)
    # images: one per frame period, three modalities with the same stamps
    for modality, dtype in (('rgb', np.uint8), ('depth', np.float32), ('thermal', np.float32)):
        msgs = data[topics.image_topic(modality)]
        stamps = np.array([stamp_to_ns(m.msg.header.stamp) for m in msgs])
        np.testing.assert_allclose(np.diff(stamps), 1e9 / fps, atol=1)
        img = msg_to_image(msgs[0].msg)
        assert img.dtype == dtype and img.shape[:2] == (scenario.camera.height, scenario.camera.width)
    truth = data[topics.SIM_TRUTH]
    assert len(truth) == n_frames and truth[0].msg.time_of_day == scenario.time_of_day
    for gt, st in zip(data[topics.GROUND_TRUTH], truth):
        assert [d.id for d in gt.msg.detections] == [str(v.id) for v in st.msg.vehicles]

    # the independent reader sees the same topics and message counts
    independent = {}
    for m in read_ros2_messages(glob.glob(str(tmp_path / 'bag' / '*.mcap'))[0]):
        independent[m.channel.topic] = independent.get(m.channel.topic, 0) + 1
    assert independent == {t: len(v) for t, v in data.items()}


def test_same_seed_same_bag(tmp_path):
    scenario = dataclasses.replace(load_scenario('occluded-crossing'), duration_s=1.0)
    for k in range(2):
        write_bag(scenario, tmp_path / f'bag{k}', progress=False)
    payloads = []
    for k in range(2):
        with BagReader(tmp_path / f'bag{k}') as bag:
            payloads.append([(m.topic, m.stamp_ns, bytes(getattr(m.msg, 'data', b''))) for m in bag.messages()
                             if m.topic in (topics.AUDIO, topics.image_topic('rgb'))])
    assert payloads[0] == payloads[1]


def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, '-m', 'mmdistill_training.cli', 'sim', *args],
                              capture_output=True, text=True)
    bad = run('--scenario', 'no-such-scenario', '--out', str(tmp_path / 'x'))
    assert bad.returncode == 2 and bad.stderr.strip().count('\n') == 0 and 'unknown scenario' in bad.stderr
    (tmp_path / 'exists').mkdir()
    again = run('--scenario', 'day-static', '--out', str(tmp_path / 'exists'))
    assert again.returncode == 2 and 'already exists' in again.stderr
    yaml = tmp_path / 's.yaml'
    yaml.write_text('duration_s: 2\nbogus_key: 1\n')
    unknown = run('--scenario', str(yaml), '--out', str(tmp_path / 'y'))
    assert unknown.returncode == 2 and 'bogus_key' in unknown.stderr
