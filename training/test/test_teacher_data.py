"""Teacher training data: simulator bags and Simulator objects -> frames with ground truth."""
import dataclasses

import numpy as np
import pytest

from mmdistill_common.bagio import BagWriter
from mmdistill_common.conversions import image_to_msg
from mmdistill_common.errors import InputError
from mmdistill_common.topics import SIM_TRUTH, image_topic
from mmdistill_sim.messages import frame_messages
from mmdistill_sim.scenario import load_scenario
from mmdistill_sim.simulator import Simulator
from mmdistill_training.commands.sim import write_bag
from mmdistill_training.teacher_data import (CONDITIONS, frame_conditions, read_bag_frames, read_frames,
                                             simulator_frames, split_drives)


def scenario(name='dense-traffic', seed=11, duration=1.0):
    return dataclasses.replace(load_scenario(name, seed=seed), duration_s=duration)


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('td') / 'drive-a'
    write_bag(scenario(), path, progress=False)
    return path


def write_frames(path, sim, edit):
    """A bag of the simulator's frame messages, each passed through ``edit(k, topic, msg)`` (None drops it)."""
    with BagWriter(path) as w:
        for k in range(sim.n_frames):
            for topic, msg, stamp in frame_messages(sim, sim.frame(k)):
                msg = edit(k, topic, msg)
                if msg is not None:
                    w.write(topic, msg, stamp)
    return path


def test_bag_frames_match_simulator(bag):
    fs = read_bag_frames(bag, frame_stride=1)
    ref = simulator_frames(Simulator(scenario()), frame_stride=1)
    assert len(fs) == len(ref) == 10
    assert fs.drives['drive-a']['scenario'] == 'dense-traffic'
    cam = scenario().camera
    assert fs.image_size == (cam.width, cam.height)
    assert sum(len(f.boxes) for f in fs.frames) > 0
    for a, b in zip(fs.frames, ref.frames):
        assert a.stamp_ns == b.stamp_ns
        for m in ('rgb', 'depth', 'thermal'):
            np.testing.assert_array_equal(a.images[m], b.images[m])
            np.testing.assert_allclose(a.visible[m], b.visible[m], atol=1e-6)
        assert a.images['rgb'].dtype == np.uint8 and a.images['depth'].dtype == np.float32
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.occluded, b.occluded)
        assert a.tags == b.tags
        assert a.tags['time_of_day'] == 'day' and a.tags['weather'] == 'clear'


def test_frame_stride_and_modalities(bag):
    fs = read_bag_frames(bag, modalities=['thermal'], frame_stride=3, drive='x')
    assert [f.stamp_ns for f in fs.frames] == [k * 100_000_000 for k in (0, 3, 6, 9)]
    assert set(fs.frames[0].images) == {'thermal'}
    assert set(fs.drives) == {'x'}
    with pytest.raises(InputError, match='frame_stride'):
        read_bag_frames(bag, frame_stride=0)
    with pytest.raises(InputError, match='unknown modalities'):
        read_bag_frames(bag, modalities=['lidar'])
    with pytest.raises(InputError, match='unique'):
        read_frames([bag, bag])


def test_target_boxes_filter_by_visibility():
    sim = Simulator(scenario('night-static', seed=3, duration=3.0))
    fs = simulator_frames(sim, frame_stride=5)
    f = max(fs.frames, key=lambda f: len(f.boxes))
    assert len(f.boxes) > 0
    for m in ('rgb', 'depth', 'thermal'):
        t = f.target_boxes(m, 0.25)
        assert len(t) == int((f.visible[m] >= 0.25).sum())
    assert len(f.target_boxes('rgb', 0.0)) == len(f.boxes)
    assert 'night' in f.conditions and 'day' not in f.conditions


def test_missing_topic_is_input_error(tmp_path):
    path = tmp_path / 'noimg'
    write_bag(scenario(duration=0.3), path, images=False, progress=False)
    with pytest.raises(InputError, match='no topic /sensors/camera/rgb/image_raw'):
        read_bag_frames(path)
    with pytest.raises(InputError, match='does not exist'):
        read_bag_frames(tmp_path / 'nothing')


def test_bad_encoding_is_input_error(tmp_path):
    sim = Simulator(scenario(duration=0.3))

    def mono(k, topic, msg):
        if topic == image_topic('rgb'):
            return image_to_msg(np.zeros((128, 384), np.uint8), 'mono8', k * 100_000_000)
        return msg
    path = write_frames(tmp_path / 'mono', sim, mono)
    with pytest.raises(InputError, match=r"encoding 'mono8'.*rgb8"):
        read_bag_frames(path)
    # the other teachers do not need the RGB image
    assert len(read_bag_frames(path, modalities=['depth', 'thermal'])) == sim.n_frames


def test_incomplete_frames_are_skipped(tmp_path):
    sim = Simulator(scenario(duration=0.5))
    path = write_frames(tmp_path / 'gap', sim,
                        lambda k, topic, msg: None if (k == 2 and topic == image_topic('thermal')) else msg)
    fs = read_bag_frames(path)
    assert len(fs) == sim.n_frames - 1 and fs.skipped == {'incomplete': 1}
    assert 200_000_000 not in [f.stamp_ns for f in fs.frames]
    path2 = write_frames(tmp_path / 'notruth', sim, lambda k, topic, msg: None if topic == SIM_TRUTH else msg)
    with pytest.raises(InputError, match='/sim/truth'):
        read_bag_frames(path2)


def test_split_drives_rule():
    # one drive: train; two: one train + one held out; 7: 1 test + 1 val held out
    tr, va = split_drives({'a1': 'A', 'b1': 'B', 'b2': 'B', **{f'c{i}': 'C' for i in range(7)}})
    assert tr == ['a1', 'b1', 'c0', 'c1', 'c2', 'c3', 'c4'] and va == ['b2', 'c5', 'c6']
    tr, va = split_drives({'x': 'S', 'y': 'S', 'z': 'S'})
    assert tr == ['x'] and va == ['y', 'z']
    # the fusion is calibrated on val only: test drives apart
    assert split_drives({'x': 'S', 'y': 'S', 'z': 'S'}, test_apart=True) == (['x'], ['y'], ['z'])
    assert split_drives({'b1': 'B', 'b2': 'B'}, test_apart=True) == (['b1'], [], ['b2'])


def test_conditions():
    assert frame_conditions({'time_of_day': 'night', 'weather': 'fog', 'ego_motion': 'driving',
                             'occluded': True}) == ['night', 'fog', 'driving', 'occluded']
    assert frame_conditions({'time_of_day': 'day', 'weather': 'clear', 'ego_motion': 'static',
                             'occluded': False}) == ['day', 'clear', 'static']
    assert list(CONDITIONS)[:3] == ['day', 'dusk', 'night']
