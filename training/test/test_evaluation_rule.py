"""One evaluation rule everywhere: the same predictions and ground truth give the same numbers through
``mmdistill evaluate`` (evaluate.evaluate_predictions), ``replay-eval`` (replay.score),
``teachers evaluate`` (teacher_eval.evaluate_methods), the demo summary (demo_report) and
``metrics.evaluate_truth`` itself. Proven by behaviour, not by reading imports."""
import json
import math

import numpy as np
import pytest

from mmdistill_training import demo_report
from mmdistill_training.evaluate import evaluate_predictions
from mmdistill_training.metrics import evaluate_truth
from mmdistill_training.replay import score
from mmdistill_training.teacher_data import TeacherFrame
from mmdistill_training.teacher_eval import evaluate_methods

SIZE = (384, 128)
N = 24
KEYS = ('AP50', 'AP75', 'mAP_avg', 'coco_AP', 'num_gt', 'num_pred')


def make_case(seed=0):
    """Truth frames with every field of the rule (some vehicles silent, unseen, tiny, far) and
    noisy predictions of them plus false positives."""
    rng = np.random.default_rng(seed)
    truths, preds = [], []
    for _ in range(N):
        n = int(rng.integers(0, 5))
        xy = rng.uniform([0, 20], [340, 90], (n, 2))
        wh = rng.uniform([6, 4], [60, 30], (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        truths.append({'boxes': boxes, 'ids': [str(i) for i in rng.integers(0, 1000, n)],
                       'visible': rng.choice([0.0, 0.05, 0.5, 1.0], (n, 3)),
                       'audible': rng.uniform(size=n) < 0.7, 'distance': rng.uniform(3, 80, n)})
        k = int(rng.integers(0, n + 1))
        p = boxes[rng.permutation(n)[:k]] + rng.normal(0, 2, (k, 4))
        fp = np.concatenate([rng.uniform(0, 300, (2, 2))] * 2, 1) + [0, 0, 30, 20]
        pb = np.concatenate([p, fp])
        pb[:, 2:] = np.maximum(pb[:, 2:], pb[:, :2] + 1)
        preds.append({'boxes': pb, 'scores': rng.uniform(0, 1, len(pb))})
    return truths, preds


class FakeDataset:
    """What evaluate_predictions reads of a DistillDataset, over the synthetic frames."""

    def __init__(self, truths):
        self.truths = truths
        self.index = {'image_size': list(SIZE)}
        self.has_ground_truth = True

    def conditions(self, r):
        return {}

    def drive_name(self, r):
        return 'drive-a'

    def labels(self, r):
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)

    def ground_truth(self, r):
        t = self.truths[r]
        return {'boxes': t['boxes'], 'ids': np.arange(len(t['boxes'])), 'occluded': np.zeros(len(t['boxes']), bool),
                'audible': t['audible'], 'visible': t['visible'], 'distance': t['distance']}


def assert_same(a, b, what):
    for k in KEYS:
        x, y = a[k], b[k]
        assert (isinstance(x, float) and math.isnan(x) and (y is None or math.isnan(y))) or x == pytest.approx(y, abs=1e-12), \
            (what, k, x, y)


def test_every_path_gives_the_numbers_of_the_rule():
    truths, preds = make_case()
    ref = evaluate_truth(preds, truths, SIZE, drives=['drive-a'] * N)
    assert ref['ground_truth']['all']['num_gt'] < ref['ground_truth_all_visible']['all']['num_gt']
    assert all(ref['ground_truth']['by_distance'][b]['num_gt'] > 0 for b in ('0-15m', '15-30m', '30-50m', '>50m'))

    # mmdistill evaluate
    ev = evaluate_predictions(FakeDataset(truths), list(range(N)), preds)
    # replay-eval: predictions and truth matched by stamp
    stamps = [int(1e8) * (i + 1) for i in range(N)]
    rp = score([(s, p) for s, p in zip(stamps, preds)], None,
               {'ground_truth': [(s, {**t, 'scores': np.ones(len(t['boxes'])), 'labels': []})
                                 for s, t in zip(stamps, truths)]}, SIZE)
    assert rp['ground_truth']['coverage']['scored_frames'] == N
    # teachers evaluate: the predictions as an RGB teacher's
    frames = [TeacherFrame('drive-a', s, {}, t['boxes'], np.arange(len(t['boxes'])), ['car'] * len(t['boxes']),
                           {m: t['visible'][:, k] for k, m in enumerate(('rgb', 'depth', 'thermal'))},
                           np.zeros(len(t['boxes']), bool), {}, audible=t['audible'], distance=t['distance'],
                           engine_on=np.ones(len(t['boxes']), bool)) for s, t in zip(stamps, truths)]
    te = evaluate_methods({'rgb': preds}, frames, SIZE)['rgb']

    for name in ('ground_truth', 'ground_truth_all_visible', 'ground_truth_shuffled'):
        want = ref[name]['all']
        assert_same(ev[name]['all'], want, f'evaluate {name}')
        assert_same(rp[name]['detection'], want, f'replay {name}')
        assert_same(te[name]['all'], want, f'teachers evaluate {name}')
    for name in ('ground_truth', 'ground_truth_all_visible'):
        for b, want in ref[name]['by_distance'].items():
            assert_same(ev[name]['by_distance'][b], want, f'evaluate {name} {b}')
            assert_same(rp[name]['detection']['by_distance'][b], want, f'replay {name} {b}')
            assert_same(te[name]['by_distance'][b], want, f'teachers evaluate {name} {b}')

    # the demo summary reads these outputs (through JSON, NaN -> null) without recomputing
    ev_json = json.loads(json.dumps({k: v for k, v in ev.items()}, default=float))
    s = demo_report.student_summary(ev_json, 'ckpt')
    t = demo_report.teacher_summary({'methods': {'rgb': json.loads(json.dumps(te, default=float))}}, 'rgb')
    for block in (s, t):
        assert block['gt_ap50'] == pytest.approx(ref['ground_truth']['all']['AP50'], abs=1e-12)
        assert block['gt_ap50_shuffled'] == pytest.approx(ref['ground_truth_shuffled']['all']['AP50'], abs=1e-12)
        for b, want in ref['ground_truth']['by_distance'].items():
            assert block['by_distance'][b] == pytest.approx(want['AP50'], abs=1e-12)
    assert s['gt_map_avg'] == pytest.approx(ref['ground_truth']['all']['mAP_avg'], abs=1e-12)


def test_demo_summary_from_the_stage_outputs_follows_the_schema(tmp_path):
    """summary.json built from each producer's output (written as the commands write them)."""
    truths, preds = make_case(1)
    ev = evaluate_predictions(FakeDataset(truths), list(range(N)), preds)
    ev.update(boxes_per_frame=1.5, gt_boxes_per_frame=1.0)
    stamps = [int(1e8) * (i + 1) for i in range(N)]
    frames = [TeacherFrame('drive-a', s, {}, t['boxes'], np.arange(len(t['boxes'])), ['car'] * len(t['boxes']),
                           {m: t['visible'][:, k] for k, m in enumerate(('rgb', 'depth', 'thermal'))},
                           np.zeros(len(t['boxes']), bool), {'time_of_day': 'day', 'weather': 'clear'},
                           audible=t['audible'], distance=t['distance'], engine_on=np.ones(len(t['boxes']), bool))
              for s, t in zip(stamps, truths)]
    methods = evaluate_methods({m: preds for m in ('rgb', 'depth', 'thermal')}, frames, SIZE)
    rp = score([(s, p) for s, p in zip(stamps, preds)], None,
               {'ground_truth': [(s, {**t, 'scores': np.ones(len(t['boxes'])), 'labels': []})
                                 for s, t in zip(stamps, truths)]}, SIZE)
    row = {'name': 'scene-prior', 'ground_truth': {'AP50': 0.25}, 'ground_truth_shuffled': {'AP50': 0.2},
           'pseudo_labels': {'AP50': float('nan')}}
    for path, doc in (('teachers/evaluation.json', {'frames': N, 'methods': methods}),
                      ('evaluation/metrics.json', ev), ('ablation/results.json', {'rows': [row]}),
                      ('runtime/replay.json', {'references': rp})):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(json.dumps(doc, default=float))

    class Stages:
        def elapsed(self, name):
            return 1.0
    path = demo_report.write_demo_summary(tmp_path, True, {'test': ['drive-a']}, 'drive-a', Stages())
    summary = json.loads(path.read_text())
    demo_report.check_summary(summary)
    assert summary['student']['gt_ap50'] == pytest.approx(ev['ground_truth']['all']['AP50'])
    assert summary['teachers']['fused']['gt_ap50_worst_condition'] is not None
    assert summary['baselines']['scene_prior'] == {'gt_ap50': 0.25, 'gt_ap50_shuffled': 0.2, 'pl_ap50': None}
    assert summary['baselines']['classical']['gt_ap50'] is None            # its producer did not run
    assert summary['runtime']['gt_ap50'] == pytest.approx(rp['ground_truth']['detection']['AP50'])
    summary['teachers']['rgb']['by_distance']['0-15m'] = 1.5
    with pytest.raises(ValueError, match='0-15m'):
        demo_report.check_summary(summary)
