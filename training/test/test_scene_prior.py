"""Scene-prior baseline: the best fixed set of boxes from the training labels."""
import numpy as np
import pytest

from mmdistill_common.errors import ConfigError
from mmdistill_training.baselines import ScenePrior
from mmdistill_training.metrics import detection_ap

MODES = np.array([[40, 60, 80, 90], [250, 50, 300, 85]], float)


def labels(rng, n, p=(0.9, 0.5)):
    out = []
    for _ in range(n):
        keep = rng.uniform(size=2) < p
        out.append(MODES[keep] + rng.normal(0, 1.5, (int(keep.sum()), 4)))
    return out


def test_finds_the_two_places_and_scores_them_by_frequency():
    rng = np.random.default_rng(0)
    prior = ScenePrior.fit(labels(rng, 200), labels(rng, 100))
    assert len(prior.boxes) == 2                      # more boxes only add false positives
    order = np.argsort(-prior.scores)
    np.testing.assert_allclose(prior.boxes[order], MODES, atol=1.0)
    assert prior.scores[order][0] == pytest.approx(0.9, abs=0.06) and prior.scores[order][1] == pytest.approx(0.5, abs=0.08)
    a, b = prior.predict(), prior.predict(np.zeros(5))
    np.testing.assert_array_equal(a['boxes'], b['boxes'])       # identical for every frame, whatever the input
    test = labels(rng, 100)
    ap = detection_ap([prior.predict() for _ in test], [{'boxes': t} for t in test], per_class=False)['AP50']
    assert ap > 0.8 and prior.selection['2'] >= max(prior.selection.values()) - 1e-12


def test_deterministic_and_refuses_no_labels():
    rng = np.random.default_rng(1)
    tr, va = labels(rng, 50), labels(rng, 20)
    a, b = ScenePrior.fit(tr, va), ScenePrior.fit(tr, va)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    with pytest.raises(ConfigError, match='no box'):
        ScenePrior.fit([np.zeros((0, 4))] * 3)


@pytest.mark.timeout(900)          # builds a small dataset: about 2 min on a loaded 2-core machine
def test_ablate_row_scene_prior(tmp_path):
    """``mmdistill ablate --only scene-prior``: fitted on train/val labels, one box set for every test frame."""
    import json

    from mmdistill_training.ablate import row_dir
    from mmdistill_training.cli import main
    from mmdistill_training.dataset import DistillDataset
    from mmdistill_training.dataset_build import BuildConfig, build_dataset
    from mmdistill_training.evaluate import evaluate_predictions
    from mmdistill_training.labelled_bag import short_scenario, write_oracle_bag
    bags = []
    for k in range(3):
        bag = tmp_path / f'day-static-{k}'
        write_oracle_bag(short_scenario('day-static', 2.0, 16000, seed=30 + k), bag, seed=k)
        bags.append(bag)
    build_dataset(bags, tmp_path / 'ds', BuildConfig(window='centered'), progress=False)
    assert main(['ablate', '--dataset', str(tmp_path / 'ds'), '--out', str(tmp_path / 'abl'),
                 '--only', 'scene-prior']) == 0
    res = json.loads((tmp_path / 'abl' / 'results.json').read_text())
    row = res['rows'][0]
    assert row['name'] == 'scene-prior' and row['group'] == 'baselines'
    for ref in ('ground_truth', 'ground_truth_shuffled', 'pseudo_labels'):
        assert row[ref]['AP50'] is None or 0.0 <= row[ref]['AP50'] <= 1.0
    # the same boxes as a prior fitted by hand on the train and val labels only
    ds = DistillDataset(tmp_path / 'ds')
    prior = ScenePrior.fit([ds.labels(int(r))[0] for r in ds.split_indices('train')],
                           [ds.labels(int(r))[0] for r in ds.split_indices('val')])
    rows = ds.split_indices('test')
    res = evaluate_predictions(ds, rows, [prior.predict() for _ in rows])
    assert row['pseudo_labels']['AP50'] == pytest.approx(res['pseudo_labels']['all']['AP50'], nan_ok=True)
    assert row['ground_truth']['AP50'] == pytest.approx(res['ground_truth']['all']['AP50'], nan_ok=True)
    assert (row_dir(tmp_path / 'abl', 'scene-prior') / 'eval.json').is_file()
    # the MTA targets' focus on ours' levels: the oracle teachers' attention is a blob per box it
    # sees (on these test frames the depth camera sees none: a flat map, focus 1), so the product
    # is the sharpest on the vehicles
    focus = json.loads((tmp_path / 'abl' / 'results.json').read_text())['mta_targets']
    assert set(focus) == {'rgb', 'depth', 'thermal', 'product', 'average'}
    for name, per in focus.items():
        assert set(per) == {'16', '32', '64'}
        for s, f in per.items():
            assert f['frames'] > 0 and f['focus'] > 0.99
            assert focus['product'][s]['focus'] >= max(focus[m][s]['focus'] for m in focus) > 2
    assert 'MTA targets' in (tmp_path / 'abl' / 'table.md').read_text()
