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
