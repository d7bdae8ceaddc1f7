"""The pretrained teachers shipped in ``mmdistill_teachers/pretrained/`` (tools/pretrain_teachers.py):
present, loadable, trained on drives the demo never simulates, and able to see."""
import dataclasses
import json

from mmdistill_sim.scenario import load_scenario
from mmdistill_sim.simulator import Simulator
from mmdistill_teachers.weights import load_teachers, pretrained_directory, read_metadata, teacher_path
from mmdistill_training.commands.teachers import init_directory
from mmdistill_training.metrics import detection_ap
from mmdistill_training.pipeline import PLANS, SEED_BASE
from mmdistill_training.teacher_data import simulator_frames


def test_shipped_and_named_by_init():
    d = pretrained_directory()
    assert init_directory('pretrained') == d
    teachers = load_teachers(d)
    assert {m: t.input_size for m, t in teachers.items()} == {m: (768, 256) for m in ('rgb', 'depth', 'thermal')}
    assert load_scenario('town-day-static').camera.width == 768


def test_trained_on_drives_the_demo_never_simulates():
    d = pretrained_directory()
    manifest = json.loads((d / 'manifest.json').read_text())
    seeds = {r['seed'] for r in manifest['train_drives'] + manifest['val_drives']}
    demo = {SEED_BASE + i for p in PLANS.values() for i in range(len(p.scenarios) * p.drives_per_scenario)}
    assert seeds and not seeds & demo
    names = {r['name'] for r in manifest['train_drives']}
    for m in ('rgb', 'depth', 'thermal'):
        info = read_metadata(teacher_path(d, m))['training']
        steps = manifest['rgb_continued']['steps'] if m == 'rgb' else manifest['steps']
        assert set(info['train_drives']) == names and info['steps'] == steps


def test_the_rgb_teacher_sees_vehicles_on_an_unseen_drive():
    """A daylight town drive with a seed outside both sets: most vehicles a camera shows well
    (>= 16 px tall, >= 70 % visible) are found at IoU 0.5."""
    sc = dataclasses.replace(load_scenario('town-day-static', seed=31337), duration_s=2.0)
    frames = simulator_frames(Simulator(sc), ('rgb',), frame_stride=2)
    teacher = load_teachers(pretrained_directory(), modalities=('rgb',))['rgb']
    preds, truths = [], []
    for f in frames.frames:
        p = teacher.predict(f.images['rgb'], score_threshold=0.05)[0]
        preds.append({'boxes': p['boxes'], 'scores': p['scores']})
        clear = ((f.boxes[:, 3] - f.boxes[:, 1]) >= 16) & (f.visible['rgb'] >= 0.7)
        truths.append({'boxes': f.boxes[clear], 'ignore': f.boxes[~clear]})
    assert sum(len(t['boxes']) for t in truths) >= 3
    assert detection_ap(preds, truths, per_class=False)['AP50'] >= 0.6
