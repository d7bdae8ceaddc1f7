"""``mmdistill label`` on a short simulated bag: the labelled bag's layout and content, and one-line
errors (exit 2, nothing written) for bad input."""
import dataclasses
import shutil

import pytest
import torch

from mmdistill_common import topics
from mmdistill_common.bagio import BagReader, BagWriter
from mmdistill_teachers.labelling import parse_pseudo_label
from mmdistill_teachers.testing import save_sharp_teachers
from mmdistill_training.cli import main
from mmdistill_training.commands.sim import write_bag
from mmdistill_training.labelling_offline import parse_thresholds

THRESHOLDS = 'rgb=0.3,depth=0.5,thermal=0.1'


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """A 1.5-s day-static bag with images and small, sharpened untrained teachers."""
    from mmdistill_sim.scenario import load_scenario
    d = tmp_path_factory.mktemp('label')
    torch.set_num_threads(1)
    scenario = dataclasses.replace(load_scenario('day-static'), duration_s=1.5)
    save_sharp_teachers(d / 'teachers', input_size=(scenario.camera.width, scenario.camera.height))
    write_bag(scenario, d / 'sim', progress=False)
    return d


def rewrite(src, dst, change):
    """Copy bag ``src`` to ``dst`` passing each (topic, msg) through ``change`` (None drops it)."""
    with BagReader(src) as r, BagWriter(dst) as w:
        types = r.topics
        for topic, (msgtype, _) in types.items():
            w.add_topic(topic, msgtype, transient_local=topic == topics.AUDIO_INFO)
        for item in r.messages():
            msg = change(item.topic, item.msg)
            if msg is not None:
                w.write(item.topic, msg, item.stamp_ns)


def label(data, out, *extra, bag=None):
    return main(['label', '--bag', str(bag or data / 'sim'), '--teachers', str(data / 'teachers'),
                 '--out', str(out), '--thresholds', THRESHOLDS, '--no-progress', *extra])


def test_label_writes_the_documented_layout(data, tmp_path, capsys):
    out = tmp_path / 'labelled'
    assert label(data, out) == 0
    assert '"frames": 15' in capsys.readouterr().out
    with BagReader(data / 'sim') as r:
        src = r.read_all()
    with BagReader(out) as r:
        have = r.topics
        got = r.read_all()
    for t in (topics.AUDIO, topics.AUDIO_INFO, topics.GROUND_TRUTH, topics.SIM_TRUTH):
        assert have[t][1] == len(src[t]), t
    assert not any(t.startswith('/sensors/camera') for t in have), 'images copied without --images'
    labels = got[topics.PSEUDO_LABELS]
    frames = [m.stamp_ns for m in src[topics.image_topic('rgb')]]
    assert [m.stamp_ns for m in labels] == frames
    parsed = [parse_pseudo_label(m.msg) for m in labels]
    assert all(p.modalities == list(topics.CAMERAS) for p in parsed)
    assert sum(len(p.boxes) for p in parsed) > 0, 'thresholds leave no pseudo-label: test is vacuous'
    assert all(set(sum(p.support, [])) <= set(topics.CAMERAS) for p in parsed)
    for m in topics.CAMERAS:
        dets = got[topics.teacher_detections_topic(m)]
        assert [x.stamp_ns for x in dets] == frames
    # the audio is copied byte for byte
    assert all(bytes(a.msg.audio.data) == bytes(b.msg.audio.data)
               for a, b in zip(got[topics.AUDIO], src[topics.AUDIO]))
    assert not list(tmp_path.glob('.labelled.partial-*'))


def test_label_with_images_and_wbf_batch1(data, tmp_path):
    out = tmp_path / 'with_images'
    assert label(data, out, '--images', '--method', 'wbf', '--batch-size', '1') == 0
    with BagReader(out) as r:
        have = r.topics
    assert have[topics.image_topic('thermal')][1] == 15 and have[topics.PSEUDO_LABELS][1] == 15


def expect_error(capsys, rc, *words):
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith('mmdistill label: error:'), err
    for w in words:
        assert w in err, err


def test_bad_input_exits_2_and_writes_nothing(data, tmp_path, capsys):
    out = tmp_path / 'never'
    # no images in the bag
    no_images = tmp_path / 'no_images'
    rewrite(data / 'sim', no_images, lambda t, m: None if t.startswith('/sensors/camera') else m)
    expect_error(capsys, label(data, out, bag=no_images), topics.image_topic('rgb'))
    # wrong image encoding
    bgr = tmp_path / 'bgr'

    def to_bgr(topic, msg):
        if topic == topics.image_topic('rgb'):
            msg.encoding = 'bgr8'
        return msg
    rewrite(data / 'sim', bgr, to_bgr)
    expect_error(capsys, label(data, out, bag=bgr), "'bgr8'", 'rgb8')
    # audio that is not whole frames of the announced channel count
    odd = tmp_path / 'odd_audio'

    def cut(topic, msg):
        if topic == topics.AUDIO:
            msg.audio.data = bytes(msg.audio.data)[:-2]
        return msg
    rewrite(data / 'sim', odd, cut)
    expect_error(capsys, label(data, out, bag=odd), 'AudioInfo', '8 channels')
    # a truncated bag
    broken = tmp_path / 'broken'
    shutil.copytree(data / 'sim', broken)
    mcap, = broken.glob('*.mcap')
    raw = mcap.read_bytes()
    mcap.write_bytes(raw[:len(raw) // 2])
    expect_error(capsys, label(data, out, bag=broken))
    # teachers that do not exist; an output that exists
    rc = main(['label', '--bag', str(data / 'sim'), '--teachers', str(tmp_path / 'none'), '--out', str(out)])
    expect_error(capsys, rc, 'teachers directory not found')
    expect_error(capsys, label(data, tmp_path / 'bgr'), 'already exists')
    assert not out.exists() and not list(tmp_path.glob('.never.partial-*'))


def test_parse_thresholds():
    assert parse_thresholds('0.25') == {'rgb': 0.25, 'depth': 0.25, 'thermal': 0.25}
    assert parse_thresholds('thermal=0.1') == {'rgb': 0.5, 'depth': 0.5, 'thermal': 0.1}
    for bad in ('x', 'lidar=0.3', 'rgb=0.1=2'):
        with pytest.raises(Exception, match='thresholds'):
            parse_thresholds(bad)


def test_frame_stride_labels_every_kth_frame(data, tmp_path, capsys):
    out = tmp_path / 'strided'
    assert label(data, out, '--frame-stride', '4') == 0
    with BagReader(data / 'sim') as r:
        frames = [m.stamp_ns for m in r.read_all()[topics.image_topic('rgb')]]
    with BagReader(out) as r:
        got = [m.stamp_ns for m in r.read_all()[topics.PSEUDO_LABELS]]
    assert got == frames[::4]
    assert label(data, tmp_path / 'bad', '--frame-stride', '0') == 2
    assert 'frame_stride' in capsys.readouterr().err


def test_several_bags_label_into_one_directory(data, tmp_path, capsys):
    """Several --bag: one labelled bag per input in --out, each as the single-bag run writes it, the
    statistics of each printed; a clash of names or an existing output is one error line."""
    import json
    second = tmp_path / 'in' / 'again'
    second.parent.mkdir()
    shutil.copytree(data / 'sim', second)
    single = tmp_path / 'single'
    assert label(data, single) == 0
    capsys.readouterr()
    out = tmp_path / 'labelled'
    assert main(['label', '--bag', str(data / 'sim'), str(second), '--teachers', str(data / 'teachers'),
                 '--out', str(out), '--thresholds', THRESHOLDS, '--no-progress']) == 0
    stats = json.loads(capsys.readouterr().out)['bags']
    assert [s['out_bag'] for s in stats] == [str(out / 'sim'), str(out / 'again')]
    assert [s['frames'] for s in stats] == [15, 15]
    with BagReader(single) as r:
        want = [parse_pseudo_label(m.msg).boxes.tolist() for m in r.read_all()[topics.PSEUDO_LABELS]]
    for name in ('sim', 'again'):
        with BagReader(out / name) as r:
            assert [parse_pseudo_label(m.msg).boxes.tolist() for m in r.read_all()[topics.PSEUDO_LABELS]] == want
    rc = main(['label', '--bag', str(data / 'sim'), str(second), '--teachers', str(data / 'teachers'),
               '--out', str(out), '--no-progress'])
    expect_error(capsys, rc, 'already exists')
    rc = main(['label', '--bag', str(data / 'sim'), str(data / 'sim'), '--teachers', str(data / 'teachers'),
               '--out', str(tmp_path / 'dup'), '--no-progress'])
    expect_error(capsys, rc, 'unique')
    assert not (tmp_path / 'dup').exists()
