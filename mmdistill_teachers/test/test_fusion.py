import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mmdistill_common.boxes import iou_matrix, nms
from mmdistill_teachers.fusion import FusedDetections, fuse_detections, weighted_boxes_fusion


def det(boxes, scores, labels=None, attention=None):
    d = {'boxes': np.asarray(boxes, float).reshape(-1, 4), 'scores': np.asarray(scores, float)}
    if labels is not None:
        d['labels'] = np.asarray(labels)
    if attention is not None:
        d['attention'] = attention
    return d


CAR = [100, 40, 160, 90]
CAR_SHIFT = [104, 42, 162, 92]        # IoU with CAR ~ 0.83
OTHER = [250, 50, 300, 80]


def test_nms_union_keeps_best_and_records_support():
    att = [np.ones((16, 48), np.float32)]
    f = fuse_detections({'rgb': det([CAR], [0.9], attention=att),
                         'depth': det([CAR_SHIFT, OTHER], [0.7, 0.6]),
                         'thermal': det([CAR_SHIFT], [0.95])}, score_thresholds=0.5)
    assert isinstance(f, FusedDetections) and len(f) == 2
    assert f.modalities == ('rgb', 'depth', 'thermal')
    assert np.allclose(f.boxes[0], CAR_SHIFT) and f.scores[0] == pytest.approx(0.95)
    assert f.support[0].tolist() == [True, True, True]
    assert np.allclose(f.support_scores[0], [0.9, 0.7, 0.95])
    assert np.allclose(f.boxes[1], OTHER) and f.support[1].tolist() == [False, True, False]
    assert f.supporting_modalities(1) == ['depth']
    assert f.present.tolist() == [True, True, True]
    assert f.attention['rgb'] is att and 'depth' not in f.attention
    assert f.boxes.dtype == np.float32 and f.labels.dtype == np.int64


def test_per_teacher_thresholds_and_missing_teacher():
    dets = {'rgb': det([CAR], [0.4]), 'depth': det([OTHER], [0.4]), 'thermal': None}
    f = fuse_detections(dets, score_thresholds={'rgb': 0.3, 'depth': 0.5, 'thermal': 0.5})
    assert len(f) == 1 and np.allclose(f.boxes[0], CAR)
    assert f.present.tolist() == [True, True, False]
    assert f.support.tolist() == [[True, False, False]]
    # threshold is inclusive
    assert len(fuse_detections({'rgb': det([CAR], [0.5])}, score_thresholds=0.5)) == 1
    with pytest.raises(ValueError, match='no score threshold'):
        fuse_detections({'rgb': det([CAR], [0.9])}, score_thresholds={'depth': 0.5})
    empty = fuse_detections({'rgb': None, 'depth': det(np.zeros((0, 4)), [])},
                            modalities=('rgb', 'depth', 'thermal'))
    assert len(empty) == 0 and empty.support.shape == (0, 3) and empty.present.tolist() == [False, True, False]


def test_nms_class_agnostic_vs_class_aware():
    dets = {'rgb': det([CAR], [0.9], labels=[0]), 'thermal': det([CAR_SHIFT], [0.8], labels=[1])}
    agn = fuse_detections(dets)
    assert len(agn) == 1 and agn.labels.tolist() == [0] and agn.support.tolist() == [[True, False, True]]
    aware = fuse_detections(dets, class_agnostic=False)
    assert sorted(aware.labels.tolist()) == [0, 1] and aware.support.sum() == 2


def test_nms_boundary_iou_exactly_half_is_kept():
    a = [0, 0, 30, 10]
    b = [10, 0, 40, 10]    # inter 200, union 400 -> IoU 0.5, not suppressed (strictly above)
    f = fuse_detections({'rgb': det([a], [0.9]), 'depth': det([b], [0.8])})
    assert len(f) == 2


def test_wbf_averages_boxes_and_scores():
    a, b = np.array([100, 40, 160, 90.]), np.array([110, 44, 170, 96.])
    f = fuse_detections({'rgb': det([a], [0.9]), 'depth': det([b], [0.6]), 'thermal': det([OTHER], [0.9])},
                        method='wbf')
    assert len(f) == 2
    i = int(np.argmax(f.support[:, 0]))
    assert np.allclose(f.boxes[i], (0.9 * a + 0.6 * b) / 1.5, atol=1e-4)
    assert f.scores[i] == pytest.approx((0.9 + 0.6) / 2 * 2 / 3, rel=1e-6)
    assert f.support[i].tolist() == [True, True, False]
    j = 1 - i
    assert f.scores[j] == pytest.approx(0.9 / 3) and f.support[j].tolist() == [False, False, True]
    assert np.all(np.diff(f.scores) <= 0)
    # modality weights: thermal counts double
    fw = fuse_detections({'rgb': det([a], [0.9]), 'thermal': det([b], [0.6])}, method='wbf',
                         modality_weights={'rgb': 1.0, 'thermal': 2.0})
    assert np.allclose(fw.boxes[0], (0.9 * a + 1.2 * b) / 2.1, atol=1e-4)
    assert fw.scores[0] == pytest.approx((0.9 + 1.2) / 2 * 2 / 3, rel=1e-6)


def test_wbf_function_members():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60.]])
    fb, fs, members = weighted_boxes_fusion(boxes, np.array([0.8, 0.4, 0.5]), 0.5, num_models=2)
    assert [m.tolist() for m in members] == [[0, 1], [2]]
    assert np.allclose(fb[0], [1 / 3, 0, 31 / 3, 10]) and fs.tolist() == pytest.approx([0.6, 0.25])
    fb, fs, members = weighted_boxes_fusion(np.zeros((0, 4)), np.zeros(0))
    assert fb.shape == (0, 4) and members == []


def test_bad_inputs():
    with pytest.raises(ValueError, match='method'):
        fuse_detections({'rgb': det([CAR], [0.9])}, method='mean')
    with pytest.raises(ValueError, match='scores'):
        fuse_detections({'rgb': det([CAR, OTHER], [0.9])})
    with pytest.raises(ValueError, match='NaN'):
        fuse_detections({'rgb': det([[0, 0, np.nan, 1]], [0.9])})
    with pytest.raises(ValueError, match='not in modalities'):
        fuse_detections({'lidar': det([CAR], [0.9])}, modalities=('rgb',))
    f = fuse_detections({'rgb': (np.array([CAR], float), np.array([0.9]))})   # tuple form
    assert len(f) == 1


# ------------------------------------------------------------------ properties

@st.composite
def teacher_sets(draw):
    out = {}
    # a few shared "vehicles" that several teachers see with jitter, so that clusters form
    bases = draw(st.lists(st.tuples(st.floats(0, 300), st.floats(0, 80), st.floats(10, 60), st.floats(8, 40)),
                          max_size=3))
    for m in ('rgb', 'depth', 'thermal'):
        if draw(st.booleans()) and draw(st.booleans()):
            out[m] = None
            continue
        n = draw(st.integers(0, 6))
        boxes = []
        for bx, by, bw, bh in bases:
            if draw(st.booleans()):
                j = draw(st.lists(st.floats(-4, 4), min_size=4, max_size=4))
                boxes.append([bx + j[0], by + j[1], bx + bw + j[2], by + bh + j[3]])
        for _ in range(n):
            x1 = draw(st.floats(0, 350, allow_nan=False))
            y1 = draw(st.floats(0, 110, allow_nan=False))
            w = draw(st.floats(2, 60, allow_nan=False))
            h = draw(st.floats(2, 40, allow_nan=False))
            boxes.append([x1, y1, x1 + w, y1 + h])
        scores = [draw(st.floats(0, 1, allow_nan=False)) for _ in range(len(boxes))]
        out[m] = det(np.array(boxes).reshape(-1, 4), scores)
    return out


thresholds = st.fixed_dictionaries({m: st.floats(0, 1) for m in ('rgb', 'depth', 'thermal')})


@settings(max_examples=150, deadline=None)
@given(teacher_sets(), thresholds)
def test_nms_fusion_properties(dets, thr):
    f = fuse_detections(dets, score_thresholds=thr)
    union = [(m, b, s) for m, d in dets.items() if d is not None
             for b, s in zip(d['boxes'], d['scores']) if s >= thr[m]]
    # every fused box is one of the thresholded input boxes, with that box's score and modality
    for i, (b, s) in enumerate(zip(f.boxes, f.scores)):
        hits = [m for m, ub, us in union if np.allclose(ub, b, atol=1e-4) and abs(us - s) < 1e-6]
        assert hits
        assert any(f.support[i, f.modalities.index(m)] for m in hits)
    # no two fused boxes overlap above 0.5 and the kept set is what plain NMS keeps
    if len(f) > 1:
        iou = iou_matrix(f.boxes, f.boxes)
        np.fill_diagonal(iou, 0)
        assert iou.max() <= 0.5 + 1e-6
    if union:
        ub = np.array([u[1] for u in union])
        us = np.array([u[2] for u in union])
        assert len(f) == len(nms(ub, us, 0.5))
        # every input box above threshold is covered: it is kept or overlaps a kept box > 0.5
        cover = iou_matrix(ub, f.boxes).max(axis=1)
        assert np.all(cover > 0.5 - 1e-6)
    else:
        assert len(f) == 0
    assert np.all(f.support.any(axis=1))
    assert np.all(f.support <= f.present[None, :])
    assert np.all(np.diff(f.scores) <= 1e-7)


@settings(max_examples=100, deadline=None)
@given(teacher_sets(), st.floats(0, 1))
def test_wbf_fusion_properties(dets, thr):
    f = fuse_detections(dets, score_thresholds=thr, method='wbf')
    union = [(b, s) for d in dets.values() if d is not None for b, s in zip(d['boxes'], d['scores']) if s >= thr]
    assert len(f) <= len(union)
    assert np.all((f.scores >= 0) & (f.scores <= 1))
    if union:
        ub = np.array([u[0] for u in union])
        # fused boxes lie within the hull of the input boxes
        assert np.all(f.boxes[:, 0] >= ub[:, 0].min() - 1e-3) and np.all(f.boxes[:, 2] <= ub[:, 2].max() + 1e-3)
        assert np.all(f.boxes[:, 1] >= ub[:, 1].min() - 1e-3) and np.all(f.boxes[:, 3] <= ub[:, 3].max() + 1e-3)
        assert f.support.sum() >= len(f)
        # supporting-score bookkeeping: the best supporter score bounds the fused score
        assert np.all(f.scores <= f.support_scores.max(axis=1) + 1e-6)


# ------------------------------------------------------------------ fast WBF vs the reference loop

def _wbf_reference(boxes, scores, iou_threshold=0.5, num_models=1.0, groups=None):
    """The original WBF loop (fused boxes recomputed from the member list, IoU by iou_matrix):
    the definition the faster :func:`weighted_boxes_fusion` must reproduce."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    g = np.zeros(len(b), np.int64) if groups is None else np.asarray(groups, np.int64)
    fused, fgroup, members = [], [], []
    for i in np.argsort(-s, kind='stable'):
        best = -1
        if fused:
            ious = np.where(np.asarray(fgroup) == g[i], iou_matrix(b[i:i + 1], np.asarray(fused))[0], -1.0)
            k = int(np.argmax(ious))
            if ious[k] > iou_threshold:
                best = k
        if best < 0:
            fused.append(b[i].copy())
            fgroup.append(int(g[i]))
            members.append([int(i)])
        else:
            members[best].append(int(i))
            m = np.asarray(members[best])
            w = s[m]
            fused[best] = (b[m] * w[:, None]).sum(0) / w.sum() if w.sum() > 1e-9 else b[m].mean(0)
    if not fused:
        return np.zeros((0, 4)), np.zeros(0), []
    fs = np.array([s[m].mean() * min(len(m), num_models) / num_models for m in members])
    return np.asarray(fused), np.clip(fs, 0.0, 1.0), [np.asarray(m, np.int64) for m in members]


def _clustered_boxes(rng, n):
    """Boxes around n // 3 vehicles with pixel jitter (clusters form), scores in [0, 1]."""
    base = np.concatenate([rng.uniform(0, 700, (max(1, n // 3), 2)), np.zeros((max(1, n // 3), 2))], 1)
    base[:, 2:] = base[:, :2] + rng.uniform(4, 80, (len(base), 2))
    b = base[rng.integers(0, len(base), n)] + rng.normal(0, 3, (n, 4))
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
    return b, rng.uniform(0, 1, n)


@pytest.mark.parametrize('vector_from', [0, 12, 10 ** 6])
def test_wbf_matches_reference_loop_on_random_inputs(monkeypatch, vector_from):
    """On floats, on arrays, and switching from one to the other (the default)."""
    import mmdistill_teachers.fusion as fusion
    monkeypatch.setattr(fusion, '_WBF_VECTOR_FROM', vector_from)
    rng = np.random.default_rng(7)
    for t in range(80):
        b, s = _clustered_boxes(rng, int(rng.integers(0, 50)))
        if t % 7 == 0:
            s[:] = 0.0                               # all-zero scores: plain mean
        elif t % 5 == 0:
            s = np.round(s, 1)                       # score ties: stable order
        groups = rng.integers(0, 2, len(b)) if t % 3 == 0 else None
        num_models = float(rng.integers(1, 4))
        fb, fs, members = weighted_boxes_fusion(b, s, 0.5, num_models, groups)
        rb, rs, rmembers = _wbf_reference(b, s, 0.5, num_models, groups)
        assert [m.tolist() for m in members] == [m.tolist() for m in rmembers]
        np.testing.assert_allclose(fb, rb, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(fs, rs, rtol=1e-12, atol=0)


def test_fused_support_and_labels_match_reference_clusters():
    """fuse_detections' vectorised support bookkeeping equals the per-member loop over the
    reference clusters (WBF) and over NMS's suppression owners."""
    rng = np.random.default_rng(3)
    mods = ('rgb', 'depth', 'thermal')
    thr = {'rgb': 0.3, 'depth': 0.4, 'thermal': 0.2}
    for t in range(40):
        dets = {}
        for m in mods:
            b, s = _clustered_boxes(rng, int(rng.integers(0, 20)))
            dets[m] = det(b, s, labels=rng.integers(0, 2, len(s)))
        kept = [(b, s, l, mi) for mi, m in enumerate(mods) for b, s, l in
                zip(dets[m]['boxes'], dets[m]['scores'], dets[m]['labels']) if s >= thr[m]]
        ub = np.array([k[0] for k in kept]).reshape(-1, 4)
        us, ul, src = (np.array([k[j] for k in kept]) for j in (1, 2, 3))
        f = fuse_detections(dets, score_thresholds=thr, method='wbf')
        rb, rs, rmembers = _wbf_reference(ub, us, 0.5, num_models=3.0)
        order = np.argsort(-rs, kind='stable')
        np.testing.assert_allclose(f.boxes, rb[order].astype(np.float32), rtol=1e-6)
        sup = np.zeros((len(rb), 3), bool)
        sup_s = np.zeros((len(rb), 3), np.float32)
        for k, mem in enumerate(rmembers):
            for i in mem:
                sup[k, src[i]] = True
                sup_s[k, src[i]] = max(sup_s[k, src[i]], us[i])
        assert f.support.tolist() == sup[order].tolist()
        np.testing.assert_array_equal(f.support_scores, sup_s[order])
        assert f.labels.tolist() == [int(ul[rmembers[k][np.argmax(us[rmembers[k]])]]) for k in order]
