"""``mmdistill teachers train``: a tiny end-to-end run on two short simulator bags, and bad input."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from mmdistill_sim.scenario import load_scenario
from mmdistill_teachers.labelling import FusionConfig
from mmdistill_teachers.weights import load_teachers, read_metadata
from mmdistill_training.cli import main
from mmdistill_training.commands.sim import write_bag
from mmdistill_training.commands.teachers import (TeacherTrainConfig, ap50, calibrate_fusion, evaluate_predictions,
                                                  evaluate_teachers, train_and_predict)
from mmdistill_training.metrics import detection_ap, reference_frame
from mmdistill_training.teacher_data import TeacherFrame


def short(name, seed, duration=1.5):
    return dataclasses.replace(load_scenario(name, seed=seed), duration_s=duration)


@pytest.fixture(scope='module')
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('bags')
    paths = []
    for seed in (21, 22):
        p = root / f'dense-{seed}'
        write_bag(short('dense-traffic', seed), p, progress=False)
        paths.append(p)
    return paths


@pytest.fixture(scope='module')
def trained(bags, tmp_path_factory):
    out = tmp_path_factory.mktemp('run') / 'teachers'
    rc = main(['teachers', 'train', '--bags', *map(str, bags), '--out', str(out), '--epochs', '1',
               '--frame-stride', '1', '--threads', '1', '--no-progress', '--examples', '2'])
    assert rc == 0
    return out


def test_writes_teachers_metrics_report_examples(trained, bags):
    for m in ('rgb', 'depth', 'thermal'):
        assert (trained / f'{m}.safetensors').is_file() and (trained / f'{m}.json').is_file()
        info = read_metadata(trained / f'{m}.safetensors')['training']
        assert info['train_drives'] == ['dense-21'] and info['val_drives'] == ['dense-22']
        assert info['steps'] == 4 and info['frames'] == 15          # 15 frames, batch 4, 1 epoch
        assert set(info['val_AP50']) >= {'all', 'day', 'clear', 'static'}
    teachers = load_teachers(trained)
    assert {m: t.modality for m, t in teachers.items()} == {'rgb': 'rgb', 'depth': 'depth', 'thermal': 'thermal'}
    metrics = json.loads((trained / 'metrics.json').read_text())
    ev = metrics['evaluation']
    assert metrics['split_rule'].startswith('by drive') and metrics['val_frames'] == 15
    assert set(ev['operating_point']) == {'rgb', 'depth', 'thermal', 'fused_nms', 'fused_wbf'}
    assert ev['conditions']['all'] == 15 and 'night' not in ev['conditions']
    assert ev['fusion']['score_thresholds'] == FusionConfig().score_thresholds
    for res in ev['teachers'].values():
        a = res['all']
        assert a['num_gt'] > 0 and (a['AP50'] is None or 0.0 <= a['AP50'] <= 1.0)
    report = (trained / 'report.md').read_text()
    assert '## Single teachers vs ground truth' in report and '## Fused pseudo-labels vs single teachers' in report
    assert '**fused (NMS, paper)**' in report and 'fused (WBF)' in report and 'thermal alone' in report
    pngs = sorted((trained / 'examples').glob('*.png'))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b'\x89PNG'      # one val drive -> one example
    assert f'examples/{pngs[0].name}' in report
    assert not list(trained.glob('*.tmp'))
    # two drives: one train, one test, no val drive to calibrate the fusion on -> defaults, said so
    assert json.loads((trained / 'fusion.json').read_text())['calibration'] == {'default': True}
    assert '## Under the evaluation rule' in report and metrics['evaluation_rule']['fused']['ground_truth']


def test_existing_output_needs_force(trained, bags, capsys):
    rc = main(['teachers', 'train', '--bags', *map(str, bags), '--out', str(trained), '--no-progress'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and '\n' not in err and '--force' in err


@pytest.mark.parametrize('case', ['missing', 'no_images', 'bad_stride'])
def test_bad_input_exits_2_with_one_line(case, bags, tmp_path, capsys):
    args = ['teachers', 'train', '--out', str(tmp_path / 'out'), '--no-progress', '--epochs', '1']
    if case == 'missing':
        args += ['--bags', str(tmp_path / 'nope')]
        expect = 'does not exist'
    elif case == 'no_images':
        p = tmp_path / 'noimg'
        write_bag(short('dense-traffic', 5, 0.3), p, images=False, progress=False)
        args += ['--bags', str(p), '--val-bags', str(bags[1])]
        expect = 'no topic /sensors/camera/rgb/image_raw'
    else:
        args += ['--bags', str(bags[0]), '--frame-stride', '0']
        expect = '--frame-stride'
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith('mmdistill teachers: error:') and expect in err
    assert not (tmp_path / 'out' / 'rgb.safetensors').exists()


def test_evaluation_scores_perfect_and_blind_teachers():
    """The fused-vs-single evaluation: a perfect teacher gets AP 1, a blind one 0, and fusing them
    keeps the perfect one's boxes; an invisible GT box (no camera sees it) is ignored."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(6):
        boxes = np.array([[10 + 40 * i, 40, 60 + 40 * i, 80], [200, 10, 230, 30], [5, 5, 9, 9]], float)
        vis = {'rgb': np.array([1.0, 0.0, 1.0]), 'depth': np.array([1.0, 0.0, 1.0]),
               'thermal': np.array([1.0, 0.0, 1.0])}       # the second box is seen by no camera
        tags = {'time_of_day': 'night' if i % 2 else 'day', 'weather': 'clear', 'ego_motion': 'static',
                'occluded': False}
        frames.append(TeacherFrame('d', i, {}, boxes, np.arange(3), ['car'] * 3, vis, np.zeros(3, bool), tags))
    perfect = [{'boxes': f.boxes[:1].astype(np.float32), 'scores': np.array([0.9], np.float32),
                'labels': np.zeros(1, np.int64)} for f in frames]
    blind = [{'boxes': rng.uniform(100, 120, (1, 4)).astype(np.float32) + [0, 0, 30, 30],
              'scores': np.array([0.8], np.float32), 'labels': np.zeros(1, np.int64)} for _ in frames]
    ev = evaluate_predictions({'thermal': perfect, 'rgb': blind}, frames)
    assert ev['conditions'] == {'all': 6, 'day': 3, 'night': 3, 'clear': 6, 'static': 6}
    assert ev['teachers']['thermal']['all']['AP50'] == pytest.approx(1.0)
    assert ev['teachers']['thermal']['all']['num_gt'] == 6            # tiny + unseen boxes ignored
    assert ev['teachers']['rgb']['night']['AP50'] == 0.0
    fused = ev['operating_point']['fused_nms']['all']
    assert fused['recall'] == pytest.approx(1.0) and fused['precision'] == pytest.approx(0.5)
    assert ev['operating_point']['fused_wbf']['all']['recall'] == pytest.approx(1.0)

    class Fixed:
        modality, class_names = 'thermal', ('vehicle',)

        def predict(self, images, score_threshold=None):
            return [perfect[0]] * len(images)
    one = [dataclasses.replace(frames[0], images={'thermal': np.zeros((1, 1), np.float32)})]
    ev2 = evaluate_teachers({'thermal': Fixed()}, one)
    assert ev2['operating_point']['fused_nms']['all']['AP50'] == pytest.approx(1.0)


def _calibration_frames(n=12, seed=0):
    """Frames with one audible vehicle each; rgb finds it by day with a low score and puts a
    confident false box elsewhere at night; thermal finds it always, with a medium score."""
    rng = np.random.default_rng(seed)
    frames, rgb, thermal = [], [], []
    for i in range(n):
        x = float(rng.uniform(20, 200))
        gt = np.array([[x, 40, x + 50, 80]])
        tags = {'time_of_day': 'night' if i % 2 else 'day', 'weather': 'clear', 'ego_motion': 'static',
                'scenario': 's', 'occluded': False}
        vis = {m: np.ones(1) for m in ('rgb', 'depth', 'thermal')}
        frames.append(TeacherFrame(f'd{i % 3}', i, {}, gt, np.arange(1), ['car'], vis, np.zeros(1, bool), tags,
                                   audible=np.ones(1, bool), distance=np.full(1, 20.0), engine_on=np.ones(1, bool)))
        false = np.array([[300, 10, 340, 40]], np.float32)
        rgb.append({'boxes': (false if i % 2 else gt.astype(np.float32)),
                    'scores': np.array([0.65 if i % 2 else 0.3], np.float32)})
        thermal.append({'boxes': gt.astype(np.float32) + 1, 'scores': np.array([0.45], np.float32)})
    return frames, {'rgb': rgb, 'thermal': thermal}


def test_ap50_matches_detection_ap():
    frames, preds = _calibration_frames()
    from mmdistill_training.teacher_eval import truth_frame
    truths = [reference_frame(truth_frame(f)) for f in frames]
    for p in preds.values():
        assert ap50(p, truths) == pytest.approx(detection_ap(p, truths, per_class=False)['AP50'])


def test_calibrate_fusion_finds_thresholds_that_drop_the_confident_false_boxes():
    frames, preds = _calibration_frames()
    cfg, info = calibrate_fusion(preds, frames)
    # thermal alone at <= 0.45 finds every vehicle; rgb must be cut above its confident false boxes (0.65)
    assert cfg.score_thresholds['thermal'] <= 0.45 and cfg.score_thresholds['rgb'] > 0.65
    assert info['chosen']['AP50']['all'] == pytest.approx(1.0)
    assert info['chosen']['worst'] == pytest.approx(1.0)
    assert cfg.method in ('nms', 'wbf') and set(info['per_method']) == {'nms', 'wbf'}
    assert info['drives'] == ['d0', 'd1', 'd2'] and len(info['search']) > 10


def test_memoised_fusion_scorer_equals_the_plain_objective():
    """The calibration's memoised scorer gives _fusion_objective's numbers for every config
    (random detections: several per teacher, clusters, ignore regions, two condition groups),
    also when a config repeats a frame's kept sets (cache hits)."""
    from mmdistill_training.commands.teachers import _FusionScorer, _fusion_objective
    rng = np.random.default_rng(11)
    truths, preds = [], {'rgb': [], 'thermal': []}
    for i in range(30):
        gt = np.array([[x, 30, x + rng.uniform(10, 60), 30 + rng.uniform(8, 40)] for x in rng.uniform(0, 300, 3)])
        truths.append(reference_frame({'boxes': gt, 'audible': np.array([True, True, i % 3 > 0])}))
        for m in preds:
            b = np.concatenate([gt + rng.normal(0, 4, gt.shape), np.tile(rng.uniform(0, 300, (4, 2)), 2)
                                + [0, 0, 30, 20]]).astype(np.float32)
            preds[m].append({'boxes': b, 'scores': rng.uniform(0, 1, len(b)).astype(np.float32)})
    groups = {'all': list(range(30)), 'a': list(range(0, 30, 2)), 'b': list(range(1, 30, 2))}
    scorer = _FusionScorer(preds, truths, groups)
    for method in ('nms', 'wbf'):
        for thr in ({'rgb': 0.5, 'thermal': 0.5}, {'rgb': 0.2, 'thermal': 0.6}, {'rgb': 0.21, 'thermal': 0.6}):
            cfg = FusionConfig(thr, 0.5, method, ('rgb', 'thermal'))
            fast, slow = scorer(cfg), _fusion_objective(preds, truths, groups, cfg)
            assert fast['AP50'] == pytest.approx(slow['AP50'], abs=1e-12)
            assert fast['objective'] == pytest.approx(slow['objective'], abs=1e-12)


def test_teachers_side_by_side_equal_one_after_another():
    rng = np.random.default_rng(3)
    frames = []
    for i in range(6):
        x = int(rng.integers(0, 40))
        th = np.full((32, 64), 285.0, np.float32)
        th[8:20, x:x + 20] = 330.0
        rgb = np.zeros((32, 64, 3), np.uint8)
        rgb[8:20, x:x + 20] = 200
        frames.append(TeacherFrame('d', i, {'rgb': rgb, 'thermal': th}, np.array([[x, 8, x + 20, 20]], float),
                                   np.arange(1), ['car'], {'rgb': np.ones(1), 'thermal': np.ones(1)},
                                   np.zeros(1, bool), {}))
    cfg = TeacherTrainConfig(epochs=1, batch_size=3, width=4, fpn_channels=8, max_steps=2)
    one, p1 = train_and_predict(frames, frames[:2], ['rgb', 'thermal'], cfg, jobs=1, progress=False)
    two, p2 = train_and_predict(frames, frames[:2], ['rgb', 'thermal'], cfg, jobs=2, progress=False)
    for m in ('rgb', 'thermal'):
        s1, s2 = one[m]['model'].state_dict(), two[m]['model'].state_dict()
        assert all(torch.equal(s1[k], s2[k]) for k in s1) and one[m]['steps'] == two[m]['steps'] == 2
        assert all(np.array_equal(a['boxes'], b['boxes']) for a, b in zip(p1[m], p2[m]))


def test_init_fine_tunes_the_given_teachers(trained, bags, tmp_path):
    """--init DIR starts from DIR's weights (with their architecture, whatever --width says): at a
    vanishing learning rate the fine-tuned teachers are DIR's."""
    out = tmp_path / 'tuned'
    rc = main(['teachers', 'train', '--bags', *map(str, bags), '--out', str(out), '--init', str(trained),
               '--epochs', '1', '--max-steps', '1', '--lr', '1e-12', '--width', '4', '--threads', '1',
               '--no-progress', '--examples', '0', '--precision', 'fp32'])
    assert rc == 0
    before, after = load_teachers(trained), load_teachers(out)
    for m in ('rgb', 'depth', 'thermal'):
        assert after[m].config.width == before[m].config.width != 4
        for (k, a), b in zip(before[m].state_dict().items(), after[m].state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6), k
        info = read_metadata(out / f'{m}.safetensors')['training']
        assert info['config']['init'] == str(trained) and info['steps'] == 1


def test_epochs_0_adopts_the_init_teachers_and_calibrates_the_fusion(trained, bags, tmp_path, capsys):
    """--epochs 0 --init DIR: DIR's weights unchanged, no training frame, the fusion and the student
    label rule calibrated on the val drives; without --init it is one error line."""
    out = tmp_path / 'adopted'
    rc = main(['teachers', 'train', '--bags', str(bags[0]), '--val-bags', *map(str, bags[1:]), '--out', str(out),
               '--init', str(trained), '--epochs', '0', '--threads', '1', '--no-progress', '--examples', '0',
               '--precision', 'fp32'])
    assert rc == 0
    before, after = load_teachers(trained), load_teachers(out)
    for m in ('rgb', 'depth', 'thermal'):
        for (k, a), b in zip(before[m].state_dict().items(), after[m].state_dict().values()):
            assert torch.equal(a, b), k
        assert read_metadata(out / f'{m}.safetensors')['training']['steps'] == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['train_frames'] == 0 and metrics['val_frames'] > 0
    assert 'min_label_score' in metrics['calibration'] and 'label_support' in metrics['calibration']
    assert 'Adopted untrained' in (out / 'report.md').read_text()
    capsys.readouterr()
    rc = main(['teachers', 'train', '--bags', str(bags[0]), '--out', str(tmp_path / 'x'), '--epochs', '0',
               '--no-progress'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and 'init' in err


def test_bad_init_exits_2_before_reading_bags(bags, tmp_path, capsys):
    rc = main(['teachers', 'train', '--bags', *map(str, bags), '--out', str(tmp_path / 'out'),
               '--init', str(tmp_path / 'nope'), '--no-progress'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and '--init' in err
    assert not (tmp_path / 'out').exists()


def _boxes(rng, n: int, lo: float, hi: float, side: float) -> np.ndarray:
    """``n`` square boxes ``side`` px wide with corners uniform in [lo, hi)."""
    corner = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([corner, corner + side], 1)


def test_label_score_threshold_keeps_the_labels_that_stand_for_the_truth():
    """Right labels score >= 0.6, false ones < 0.38: every threshold in between has F1 1 and the
    lowest wins the tie; a label on an ignore region (a silent car) counts neither way."""
    from mmdistill_training.commands.teachers import label_score_threshold
    rng = np.random.default_rng(0)
    fused, truths = [], []
    for _ in range(20):
        gt = _boxes(rng, 3, 0, 300, 30)
        junk = _boxes(rng, 2, 400, 600, 20)
        ig = np.array([[700.0, 10, 740, 40]])
        boxes = np.concatenate([gt, junk, ig])
        scores = np.concatenate([rng.uniform(0.6, 0.9, 3), rng.uniform(0.2, 0.38, 2), [0.3]])
        fused.append({'boxes': boxes, 'scores': scores})
        truths.append({'boxes': gt, 'ignore': ig})
    thr, table = label_score_threshold(fused, truths)
    assert thr == 0.4
    best = next(r for r in table if r['threshold'] == thr)
    assert best['precision'] == best['recall'] == best['f1'] == 1.0 and best['labels_per_frame'] == 3
    low = next(r for r in table if r['threshold'] == 0.2)
    assert low['precision'] == pytest.approx(3 / 5) and low['recall'] == 1.0     # the ignored label is no FP
    assert [r['threshold'] for r in table if r['f1'] == 1.0] == [0.4, 0.45, 0.5, 0.55, 0.6]


def test_label_rule_requires_the_teacher_that_tells_heard_vehicles_from_silent_ones():
    """Labels on silent parked cars score as high as those on running ones, so no threshold
    removes them; only the thermal teacher (a parked car sits at road temperature) does not support
    them. The rule picks thermal support and keeps every right label; without a requirement the
    best F1 is lower."""
    from mmdistill_training.commands.teachers import label_rule
    rng = np.random.default_rng(1)
    fused, truths = [], []
    for _ in range(20):
        gt = _boxes(rng, 2, 0, 300, 30)
        parked = _boxes(rng, 2, 400, 600, 30)
        scores = rng.uniform(0.6, 0.9, 4)
        support = np.array([[1, 1, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
        fused.append({'boxes': np.concatenate([gt, parked]), 'scores': scores, 'support': support,
                      'modalities': ('rgb', 'depth', 'thermal')})
        truths.append({'boxes': gt})
    fused.append({'boxes': np.zeros((0, 4)), 'scores': np.zeros(0), 'support': np.zeros((0, 3), bool),
                  'modalities': ('rgb', 'depth', 'thermal')})          # a frame without labels
    truths.append({'boxes': np.zeros((0, 4))})
    thr, support, table = label_rule(fused, truths)
    assert support == ('thermal',)
    best = max((r for r in table if r['support'] == ['thermal']), key=lambda r: r['f1'])
    assert best['f1'] == 1.0 and best['threshold'] == thr
    assert max(r['f1'] for r in table if r['support'] == []) < 0.7
    assert {tuple(r['support']) for r in table} == {(), ('rgb',), ('depth',), ('thermal',)}


def test_pool_workers_terminate_beside_a_spinning_rclpy_executor():
    """Workers forked while rclpy's SIGTERM handler is installed die on ``Pool.terminate`` (without
    the initializer 2 of 3 such runs of 5 pools hung)."""
    import subprocess
    import sys
    script = '''
import multiprocessing as mp, threading, time
import rclpy
from rclpy.executors import SingleThreadedExecutor
from mmdistill_training.commands.teachers import _default_sigterm
rclpy.init()
ex = SingleThreadedExecutor()
ex.add_node(rclpy.create_node('pool_test'))
threading.Thread(target=ex.spin, daemon=True).start()
time.sleep(0.3)
for _ in range(5):
    with mp.get_context('fork').Pool(2, initializer=_default_sigterm) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
print('closed', flush=True)
'''
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert 'closed' in proc.stdout, proc.stderr[-2000:]
