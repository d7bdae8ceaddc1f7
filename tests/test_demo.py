"""The main job's CI variant end to end: `mmdistill demo --quick` on a fresh output folder.

Every stage runs for real (simulation, teachers, labelling, dataset, pretext + distillation,
classical baseline, evaluation, the runtime graph on a replayed held-out drive); the quick
settings only make drives short and training brief, so the numbers are not meaningful, but each
must exist, be a number and come from the stage that produced it."""
import json
import math
import re

import pytest

from mmdistill_training.ablate import row_dir
from mmdistill_training.cli import main
from mmdistill_training.demo_report import SUMMARY_KEYS, check_summary


def _get(d, path):
    for k in path.split('.'):
        d = d[k]
    return d


@pytest.mark.timeout(1200)          # about 3.5 min on an idle 2-core machine
def test_quick_demo_runs_every_stage_and_reports_numbers(tmp_path, capsys):
    out = tmp_path / 'demo'
    assert main(['demo', '--quick', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    for k in range(1, 8):
        assert f'stage {k}/7' in printed
    report = (out / 'report.md').read_text()
    assert '(not run)' not in report
    for section in ('Headline', 'Runtime graph', 'Teachers and pseudo-labels', 'Simulation', 'Stages'):
        assert f'## {section}' in report or section in report, section
    # the comparison table has numeric rows for ours and the classical baseline
    rows = {m.group(1): m.group(0) for m in re.finditer(r'^\| [^|]+ \| (ours|classical-srp) \|.*$', report, re.M)}
    assert set(rows) == {'ours', 'classical-srp'}
    results = json.loads((out / 'ablation' / 'results.json').read_text())
    for r in results['rows']:
        assert r['ground_truth']['AP50'] is None or math.isfinite(r['ground_truth']['AP50']) \
            or math.isnan(r['ground_truth']['AP50'])
    assert results['frames'] > 0
    replay = json.loads((out / 'runtime' / 'replay.json').read_text())
    gt = replay['references']['ground_truth']
    assert replay['detections'] > 0 and gt['coverage']['predictions'] > 0   # the graph produced detections
    assert 'tracking' in gt
    for png in ('evaluation/pr_curves.png', 'previews/day-static.png'):
        assert (out / png).stat().st_size > 1000
    summary = json.loads((out / 'summary.json').read_text())      # strict JSON: no NaN
    check_summary(summary)
    # the student's, baselines' and stages' figures are filled (a teacher's condition or distance
    # bucket, MOT on one short drive, may have nothing to score and be null)
    for key in SUMMARY_KEYS:
        if key.split('.')[0] in ('student', 'baselines', 'stage_seconds') and key != 'student.upper_bound_gt_ap50':
            assert _get(summary, key) is not None, key
    assert summary['student']['by_distance'] and summary['teachers']['fused']['by_condition']
    assert summary['stage_seconds']['student'] > 0 and summary['runtime']['gt_ap50'] is not None
    # the summary's student figures are the rule applied to the student's predictions
    from mmdistill_training.dataset import DistillDataset
    from mmdistill_training.evaluate import evaluate_checkpoint, truth_frames
    from mmdistill_training.metrics import evaluate_truth
    import torch
    torch.set_num_threads(2)                        # as the demo's evaluate subprocess: the same floats
    ds = DistillDataset(out / 'dataset')
    # the quick plan mixes too (`dataset build --mix 1`): every train drive once more, summed with another
    mixed = [d['name'] for d in ds.drives if d.get('mixed_with')]
    assert ds.index['mix'] == 1 and len(mixed) == len(ds.index['splits']['train']) // 2 > 0
    assert set(mixed) <= set(ds.index['splits']['train']) and 'mixed training drives' in report
    res = evaluate_checkpoint(row_dir(out / 'ablation', 'ours'), out / 'dataset', curves=False)
    rows = res['_rows']
    direct = evaluate_truth(res['_predictions'], truth_frames(ds, rows), tuple(ds.index['image_size']),
                            drives=[ds.drive_name(int(r)) for r in rows])
    for key, ref in (('gt_ap50', 'ground_truth'), ('gt_ap50_shuffled', 'ground_truth_shuffled')):
        want = direct[ref]['all']['AP50']
        got = summary['student'][key]
        assert (got is None and math.isnan(want)) or got == pytest.approx(want, abs=1e-9), key
    assert summary['student']['frame_mota_bound'] == pytest.approx(direct['ground_truth']['mota_bound']['MOTA_bound'],
                                                                    abs=1e-9)
    # a second run reuses every finished stage
    assert main(['demo', '--quick', '--out', str(out)]) == 0
    assert printed.count('(done before, reused)') == 0
    assert capsys.readouterr().out.count('(done before, reused)') == 6
