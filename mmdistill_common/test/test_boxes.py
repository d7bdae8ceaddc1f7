import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mmdistill_common.boxes import cxcywh_to_xyxy, ioa_matrix, iou_matrix, nms, xyxy_to_cxcywh


def box_strategy():
    return st.tuples(st.floats(0, 300), st.floats(0, 100), st.floats(0.5, 80), st.floats(0.5, 40)).map(
        lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


def test_iou_known_values():
    a = [[0, 0, 10, 10]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 5, 10]]
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0, 0.5]])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 4)


def test_ioa_known_values():
    """Intersection over the first box's area: a small box inside a large one has IoA 1 (IoU small)."""
    a = [[2, 2, 4, 4], [0, 0, 10, 10], [5, 5, 5, 9]]
    b = [[0, 0, 10, 10], [3, 0, 13, 10]]
    np.testing.assert_allclose(ioa_matrix(a, b), [[1.0, 0.5], [1.0, 0.7], [0.0, 0.0]])
    assert iou_matrix(a[:1], b[:1])[0, 0] == pytest.approx(0.04)
    assert ioa_matrix(np.zeros((0, 4)), b).shape == (0, 2) and ioa_matrix(a, np.zeros((0, 4))).shape == (3, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(box_strategy(), min_size=1, max_size=8), st.lists(box_strategy(), min_size=1, max_size=8))
def test_ioa_bounds_iou(a, b):
    """IoU <= IoA <= 1: the detection's area is part of the union."""
    m = ioa_matrix(a, b)
    assert np.all(m <= 1 + 1e-12) and np.all(m >= iou_matrix(a, b) - 1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(box_strategy(), min_size=1, max_size=8), st.lists(box_strategy(), min_size=1, max_size=8))
def test_iou_properties(a, b):
    m = iou_matrix(a, b)
    assert np.all(m >= 0) and np.all(m <= 1 + 1e-12)
    np.testing.assert_allclose(m, iou_matrix(b, a).T)
    np.testing.assert_allclose(np.diag(iou_matrix(a, a)), 1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(box_strategy(), min_size=1, max_size=12), st.floats(0.1, 0.9))
def test_nms_properties(boxes, thr):
    scores = np.random.default_rng(len(boxes)).random(len(boxes))
    keep = nms(boxes, scores, thr)
    kept = np.asarray(boxes)[keep]
    ious = iou_matrix(kept, kept)
    np.fill_diagonal(ious, 0)
    assert np.all(ious <= thr + 1e-12)                       # no two kept boxes overlap above thr
    assert keep[0] == int(np.argmax(scores))                 # the best box always survives
    assert np.all(np.diff(scores[keep]) <= 0)                # ordered by score
    removed = np.setdiff1d(np.arange(len(boxes)), keep)      # every removed box has a better kept neighbour
    for r in removed:
        assert np.any((iou_matrix([boxes[r]], kept)[0] > thr) & (scores[keep] >= scores[r]))


@pytest.mark.parametrize('full_up_to', [0, 10 ** 6])
def test_nms_matches_the_full_matrix_greedy_loop(monkeypatch, full_up_to):
    """nms() (IoU of each kept box with the boxes still in play) keeps exactly what the plain
    greedy loop over the full IoU matrix keeps, score ties included."""
    def reference(b, s, thr):
        ious, keep, suppressed = iou_matrix(b, b), [], np.zeros(len(b), bool)
        for i in np.argsort(-s, kind='stable'):
            if not suppressed[i]:
                keep.append(i)
                suppressed |= ious[i] > thr
        return keep
    import mmdistill_common.boxes as boxes
    monkeypatch.setattr(boxes, '_NMS_FULL_MATRIX_UP_TO', full_up_to)
    rng = np.random.default_rng(5)
    for t in range(100):
        n = int(rng.integers(0, 80))
        xy = rng.uniform(0, 300, (n, 2))
        b = np.concatenate([xy, xy + rng.uniform(0, 40, (n, 2))], axis=1)
        s = np.round(rng.random(n), 1 if t % 2 else 6)
        thr = float(rng.uniform(0.1, 0.9))
        assert nms(b, s, thr).tolist() == reference(b, s, thr)


def test_box_format_round_trip():
    b = np.array([[1.0, 2.0, 5.0, 10.0]])
    np.testing.assert_allclose(xyxy_to_cxcywh(b), [[3, 6, 4, 8]])
    np.testing.assert_allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b)
    with pytest.raises(ValueError):
        iou_matrix([[1, 2, 3]], b)
