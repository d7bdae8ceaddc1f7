"""``mmdistill teachers evaluate``: teachers and fused labels scored on bags under the evaluation rule."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from mmdistill_sim.scenario import load_scenario
from mmdistill_teachers.detector import MODALITIES, TeacherDetector
from mmdistill_teachers.weights import save_teacher
from mmdistill_training.cli import main
from mmdistill_training.commands.sim import write_bag
from mmdistill_training.teacher_data import TeacherFrame
from mmdistill_training.teacher_eval import sensor_working_truth


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('teval')
    sc = dataclasses.replace(load_scenario('dense-traffic', seed=5), duration_s=1.0)
    write_bag(sc, root / 'bag', progress=False)
    size = (sc.camera.width, sc.camera.height)
    for i, m in enumerate(MODALITIES):          # untrained, logits stretched: a few confident boxes
        torch.manual_seed(i)
        t = TeacherDetector(modality=m, input_size=size, width=4, fpn_channels=8, head_convs=1,
                            score_threshold=0.1, max_detections=10)
        with torch.no_grad():
            t.head.cls_out.weight.mul_(40)
        save_teacher(t.eval(), root / 'teachers' / m)
    return root


def test_cli_scores_every_teacher_and_the_fusion(setup, tmp_path):
    out = tmp_path / 'eval.json'
    assert main(['teachers', 'evaluate', '--teachers', str(setup / 'teachers'), '--bags', str(setup / 'bag'),
                 '--out', str(out), '--report', str(tmp_path / 'rep'), '--no-progress']) == 0
    res = json.loads(out.read_text())
    assert res['format'] == 'mmdistill-teacher-evaluation' and res['frames'] == 10
    assert set(res['truth_fields']) == {'visible', 'audible', 'distance'} and res['truth'].startswith('simulator')
    assert set(res['methods']) == {'rgb', 'depth', 'thermal', 'fused'}
    for name, r in res['methods'].items():
        for ref in ('ground_truth', 'ground_truth_all_visible', 'ground_truth_shuffled'):
            ap = r[ref]['all']['AP50']
            assert ap is None or 0.0 <= ap <= 1.0
        assert set(r['ground_truth']['by_distance']) == {'0-15m', '15-30m', '30-50m', '>50m'}
        assert r['ground_truth']['all']['num_gt'] <= r['ground_truth_all_visible']['all']['num_gt']
        assert set(r['ground_truth']['by_condition']) >= {'time_of_day', 'weather', 'scenario'}
        assert ('sensor_working' in r) == (name != 'fused') and ('worst_condition' in r) == (name == 'fused')
    assert '| fused |' in (tmp_path / 'rep' / 'report.md').read_text()


def test_cli_with_a_box_truth_topic_says_it_has_no_flags(setup, tmp_path, capsys):
    out = tmp_path / 'eval.json'
    assert main(['teachers', 'evaluate', '--teachers', str(setup / 'teachers'), '--bags', str(setup / 'bag'),
                 '--out', str(out), '--truth-topic', '/sim/ground_truth', '--modalities', 'rgb',
                 '--no-progress']) == 0
    res = json.loads(out.read_text())
    assert res['truth_fields'] == [] and 'boxes only' in res['truth'] and set(res['methods']) == {'rgb', 'fused'}
    assert res['methods']['rgb']['ground_truth']['by_distance'] == {}
    # without flags the two references coincide
    r = res['methods']['rgb']
    assert r['ground_truth']['all']['num_gt'] == r['ground_truth_all_visible']['all']['num_gt']
    capsys.readouterr()
    for argv, msg in ((['--teachers', str(tmp_path)], 'no teacher weights'),
                      (['--teachers', str(setup / 'teachers'), '--truth-topic', '/nope'], '/nope'),
                      (['--teachers', str(setup / 'teachers'), '--frame-stride', '0'], 'frame-stride')):
        rc = main(['teachers', 'evaluate', '--bags', str(setup / 'bag'), '--out', str(tmp_path / 'x.json'),
                   '--no-progress', *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith('mmdistill teachers: error:') and msg in err[0]
    assert not (tmp_path / 'x.json').exists()


def test_sensor_working_envelopes():
    boxes = np.array([[0, 0, 20, 20], [30, 0, 50, 20]], float)
    vis = {m: np.array([1.0, 1.0]) for m in MODALITIES}

    def frame(tod='day', weather='clear'):
        return TeacherFrame('d', 0, {}, boxes, np.arange(2), ['car', 'car'], vis, np.zeros(2, bool),
                            {'time_of_day': tod, 'weather': weather}, audible=np.array([True, True]),
                            distance=np.array([10.0, 60.0]), engine_on=np.array([True, False]))
    assert sensor_working_truth(frame('night'), 'rgb', 40) is None
    assert sensor_working_truth(frame('dusk', 'fog'), 'rgb', 40) is None
    assert sensor_working_truth(frame('dusk'), 'rgb', 40)['visible'].min() == 1.0
    assert sensor_working_truth(frame(weather='fog'), 'depth', 40) is None
    assert sensor_working_truth(frame('night'), 'depth', 40)['visible'].tolist() == [1.0, 0.0]   # 60 m > range
    assert sensor_working_truth(frame('night', 'fog'), 'thermal', 40)['visible'].tolist() == [1.0, 0.0]  # engine off
