import contextlib
import io
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mmdistill_training.metrics import (
    COCO_IOUS, VOC_AVG_IOUS, centre_distance, coco_ap, detection_ap, evaluate_by_condition,
    drop_ignored, evaluate_detections, evaluate_truth, frame_mota_bound, match_frame, mot_metrics,
    reference_frame, shuffle_permutation, truth_sets, voc_ap)

W, H = 640.0, 480.0


# ----------------------------------------------------------------------------- helpers

def frame(boxes, scores=None, labels=None):
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    f = {'boxes': b}
    if scores is not None:
        f['scores'] = np.asarray(scores, dtype=float)
    if labels is not None:
        f['labels'] = list(labels)
    return f


def random_case(rng, n_frames=8, n_classes=1):
    preds, gts = [], []
    for _ in range(n_frames):
        m = int(rng.integers(0, 5))
        xy = rng.uniform(0, 500, (m, 2))
        g = np.concatenate([xy, xy + rng.uniform(10, 100, (m, 2))], 1)
        gl = rng.integers(0, n_classes, m)
        k = int(rng.integers(0, 7)) if m else int(rng.integers(0, 2))
        if m:
            src = rng.integers(0, m, k)
            p = g[src] + rng.normal(0, 8, (k, 4))
            pl = np.where(rng.uniform(size=k) < 0.8, gl[src], rng.integers(0, n_classes, k))
        else:
            p = np.concatenate([rng.uniform(0, 500, (k, 2))] * 2, 1) + [0, 0, 40, 40]
            pl = rng.integers(0, n_classes, k)
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 1)
        preds.append(frame(p, rng.uniform(0, 1, k), pl.tolist()))
        gts.append(frame(g, labels=gl.tolist()))
    return preds, gts


def pycocotools_ap(preds, gts, n_classes=1):
    """AP from pycocotools: returns {cat: (AP, AP50, AP75)} (101-point, area all, no det limit).
    A ground-truth frame's ``ignore`` boxes become crowd regions (iscrowd = 1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    images = [{'id': i + 1, 'width': W, 'height': H} for i in range(len(gts))]
    anns, dets = [], []
    for i, (p, g) in enumerate(zip(preds, gts)):
        for b, c in zip(g['boxes'], g['labels']):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': int(c) + 1,
                         'bbox': [b[0], b[1], w, h], 'area': w * h, 'iscrowd': 0})
        for b in g.get('ignore', []):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': 1,
                         'bbox': [b[0], b[1], w, h], 'area': w * h, 'iscrowd': 1})
        for b, s, c in zip(p['boxes'], p['scores'], p['labels']):
            dets.append({'image_id': i + 1, 'category_id': int(c) + 1,
                         'bbox': [b[0], b[1], b[2] - b[0], b[3] - b[1]], 'score': float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {'images': images, 'annotations': anns,
                      'categories': [{'id': c + 1, 'name': str(c)} for c in range(n_classes)]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, 'bbox')
        ev.params.iouThrs = COCO_IOUS
        ev.params.maxDets = [1, 10, 100000]
        ev.evaluate()
        ev.accumulate()
    out = {}
    for k in range(n_classes):
        pr = ev.eval['precision'][:, :, k, 0, -1]   # [T, R] area 'all', last maxDets
        out[str(k)] = (pr.mean(), pr[0].mean(), pr[5].mean()) if np.all(pr > -1) else None
    return out


# ----------------------------------------------------------------------------- pycocotools agreement

def test_coco_ap_matches_pycocotools_class_agnostic():
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(25):
        preds, gts = random_case(rng)
        if not any(len(p['boxes']) for p in preds) or not any(len(g['boxes']) for g in gts):
            continue
        for f in preds + gts:
            f['labels'] = [0] * len(f['boxes'])
        ours = detection_ap(preds, gts)
        ref = pycocotools_ap(preds, gts)['0']
        assert ours['coco_AP'] == pytest.approx(ref[0], abs=1e-9)
        assert ours['coco_AP50'] == pytest.approx(ref[1], abs=1e-9)
        assert ours['coco_AP75'] == pytest.approx(ref[2], abs=1e-9)
        checked += 1
    assert checked >= 15


def test_coco_ap_matches_pycocotools_per_class():
    rng = np.random.default_rng(2)
    for _ in range(6):
        preds, gts = random_case(rng, n_frames=10, n_classes=3)
        ours = detection_ap(preds, gts)['per_class']
        ref = pycocotools_ap(preds, gts, n_classes=3)
        for c, r in ref.items():
            if r is None:   # pycocotools reports -1 where a class has no ground truth; we report NaN
                assert c not in ours or math.isnan(ours[c]['coco_AP'])
                continue
            assert ours[c]['coco_AP'] == pytest.approx(r[0], abs=1e-9)
            assert ours[c]['coco_AP50'] == pytest.approx(r[1], abs=1e-9)


# ----------------------------------------------------------------------------- hand-worked AP

def test_voc_ap_hand_worked():
    # 2 GT; detections by score: TP, FP, TP -> P = 1, 1/2, 2/3 ; R = 1/2, 1/2, 1
    gt = [frame([[0, 0, 10, 10], [100, 100, 110, 110]])]
    pr = [frame([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], [0.9, 0.8, 0.7])]
    r = detection_ap(pr, gt)
    assert r['AP50'] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert r['AP75'] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # COCO: 51 recall points in [0, .5] at precision 1, 50 in (.5, 1] at 2/3
    assert r['coco_AP50'] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert r['num_gt'] == 2 and r['num_pred'] == 3


def test_voc_ap_duplicate_is_false_positive_and_order_matters():
    gt = [frame([[0, 0, 10, 10]])]
    # the duplicate has the higher score: FP first, then TP -> P = 0, 1/2 at R = 0, 1
    pr = [frame([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.9])]
    assert detection_ap(pr, gt)['AP50'] == pytest.approx(1.0)      # first (0.9) matches, 0.5 is FP after R=1
    pr = [frame([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.5])]
    assert detection_ap(pr, gt)['AP50'] == pytest.approx(0.5)       # FP then TP: precision 1/2 at recall 1


def test_map_avg_range_and_coco_range():
    gt = [frame([[0, 0, 100, 100]])]
    pr = [frame([[0, 0, 100, 82]], [0.9])]                          # IoU 0.82
    r = detection_ap(pr, gt)
    np.testing.assert_allclose(VOC_AVG_IOUS, np.arange(0.5, 0.91, 0.05))
    assert r['mAP_avg'] == pytest.approx(7 / 9)                     # 0.50..0.80 of 0.50..0.90
    assert r['coco_AP'] == pytest.approx(7 / 10)                    # 0.50..0.80 of 0.50..0.95
    assert r['AP50'] == pytest.approx(1.0) and r['AP75'] == pytest.approx(1.0)


def test_match_frame_prefers_highest_iou_unmatched_gt():
    gts = [[0, 0, 10, 10], [2, 0, 12, 10]]
    preds = [[1, 0, 11, 10], [2, 0, 12, 10]]
    # pred 0 (score .9) has IoU 0.818 with both; pred 1 (score .8) exact on gt 1
    m = match_frame(preds, [0.9, 0.8], gts, 0.5)
    assert sorted(m.tolist()) == [0, 1]
    m = match_frame([[2, 0, 12, 10]], [0.9], gts, 0.5)
    assert m.tolist() == [1]
    assert match_frame([[0, 0, 10, 10]], [1.0], [[0, 0, 10, 4]], 0.5).tolist() == [-1]


def test_ap_functions_on_curves():
    assert voc_ap([0.5, 1.0], [1.0, 0.5]) == pytest.approx(0.75)
    assert coco_ap([], []) == 0.0


# ----------------------------------------------------------------------------- edge cases

def test_no_ground_truth_gives_nan():
    for preds in ([frame([[0, 0, 5, 5]], [0.9])], [frame([], [])]):
        r = detection_ap(preds, [frame([])])
        for k in ('AP50', 'AP75', 'mAP_avg', 'coco_AP', 'coco_AP50', 'coco_AP75'):
            assert math.isnan(r[k]), k
    r = detection_ap([], [])
    assert math.isnan(r['AP50']) and r['num_gt'] == 0


def test_no_predictions_gives_zero_ap_and_nan_cd():
    gts = [frame([[0, 0, 10, 10]]), frame([])]
    preds = [frame([], []), frame([], [])]
    r = evaluate_detections(preds, gts, (W, H))
    assert r['AP50'] == 0.0 and r['coco_AP'] == 0.0 and r['mAP_avg'] == 0.0
    assert math.isnan(r['CDx']) and r['cd_matched'] == 0
    assert r['num_frames'] == 2


def test_empty_frames_do_not_change_ap():
    rng = np.random.default_rng(3)
    preds, gts = random_case(rng, n_frames=5)
    a = detection_ap(preds, gts)
    b = detection_ap(preds + [frame([], [])] * 3, gts + [frame([])] * 3)
    for k in ('AP50', 'AP75', 'mAP_avg', 'coco_AP'):
        assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k]))


def test_bad_input_raises():
    with pytest.raises(ValueError, match='prediction frames'):
        detection_ap([frame([], [])], [])
    with pytest.raises(ValueError, match='NaN'):
        detection_ap([frame([[0, 0, np.nan, 1]], [0.5])], [frame([])])
    with pytest.raises(ValueError, match='scores'):
        detection_ap([frame([[0, 0, 1, 1]], [0.5, 0.6])], [frame([])])
    with pytest.raises(ValueError, match=r'\(N, 4\)'):
        detection_ap([frame([], [])], [{'boxes': np.zeros((2, 3))}])
    with pytest.raises(ValueError, match='image_size'):
        centre_distance([frame([], [])], [frame([])], (0, 480))


def test_results_are_json_serialisable():
    rng = np.random.default_rng(4)
    preds, gts = random_case(rng, n_classes=2)
    r = evaluate_detections(preds, gts, (W, H), return_curves=True)
    s = json.dumps(r)
    back = json.loads(s)
    assert set(back['curves']) == {'0.50', '0.75'}
    assert len(back['curves']['0.50']['recall']) == r['num_pred']
    assert set(back['per_class']) <= {'0', '1'}


# ----------------------------------------------------------------------------- properties

def box_st():
    return st.tuples(st.floats(0, 500), st.floats(0, 400), st.floats(5, 120), st.floats(5, 80)).map(
        lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


frames_st = st.lists(st.lists(box_st(), max_size=5), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(frames_st)
def test_perfect_predictions(gt_frames):
    gts = [frame(f) for f in gt_frames]
    preds = [frame(f, np.linspace(1.0, 0.5, len(f))) for f in gt_frames]
    r = evaluate_detections(preds, gts, (W, H))
    if r['num_gt'] == 0:
        assert math.isnan(r['AP50'])
        return
    for k in ('AP50', 'AP75', 'mAP_avg', 'coco_AP'):
        assert r[k] == pytest.approx(1.0), k
    assert r['CDx'] == pytest.approx(0.0, abs=1e-9) and r['CDy'] == pytest.approx(0.0, abs=1e-9)
    assert r['cd_matched'] == r['num_gt']


@settings(max_examples=40, deadline=None)
@given(frames_st, frames_st, st.integers(0, 2 ** 31 - 1))
def test_ap_bounded_and_lowest_score_fp_changes_nothing(gt_frames, pred_frames, seed):
    n = min(len(gt_frames), len(pred_frames))
    rng = np.random.default_rng(seed)
    gts = [frame(f) for f in gt_frames[:n]]
    preds = [frame(f, rng.uniform(0.05, 1.0, len(f))) for f in pred_frames[:n]]
    r = detection_ap(preds, gts)
    if r['num_gt'] == 0:
        assert math.isnan(r['coco_AP'])
        return
    keys = ('AP50', 'AP75', 'mAP_avg', 'coco_AP', 'coco_AP50', 'coco_AP75')
    for k in keys:
        assert 0.0 <= r[k] <= 1.0
    # a zero-score detection ranks last: whether it is TP or FP, no interpolated precision can rise
    # above the envelope; a far-away (FP) one must leave every AP unchanged
    preds2 = [dict(p) for p in preds]
    preds2[0] = frame(np.vstack([preds[0]['boxes'], [[5000, 5000, 5010, 5010]]]),
                      np.append(preds[0]['scores'], 0.0))
    r2 = detection_ap(preds2, gts)
    for k in keys:
        assert r2[k] == pytest.approx(r[k], abs=1e-12), k
    # monotone rescaling of scores leaves the ranking, hence AP, unchanged
    preds3 = [frame(p['boxes'], p['scores'] ** 3 * 0.5) for p in preds]
    r3 = detection_ap(preds3, gts)
    for k in keys:
        assert r3[k] == pytest.approx(r[k], abs=1e-12), k


# ----------------------------------------------------------------------------- centre distance

@settings(max_examples=30, deadline=None)
@given(frames_st, st.floats(-6, 6), st.floats(-4, 4))
def test_centre_distance_known_shift(gt_frames, dx, dy):
    # each shifted box must be able to match only its own truth: boxes of a frame that are not
    # more than twice the largest shift apart are dropped (two near-identical truths swap matches)
    def apart(a, b, gap=12.0):
        return a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]
    gt_frames = [[b for i, b in enumerate(f) if all(apart(b, c) for j, c in enumerate(f) if j != i)]
                 for f in gt_frames]
    gts = [frame(f) for f in gt_frames]
    preds = [frame(np.asarray(f).reshape(-1, 4) + [dx, dy, dx, dy], np.ones(len(f))) for f in gt_frames]
    r = centre_distance(preds, gts, (W, H))
    n = sum(len(f) for f in gt_frames)
    if n == 0:
        assert math.isnan(r['CDx'])
        return
    # boxes are >= 5 px; a 6 px shift can drop IoU below 0.5 for tiny boxes -> only check matched pairs
    if r['cd_matched']:
        assert r['CDx'] == pytest.approx(abs(dx) / W * 100, abs=1e-9)
        assert r['CDy'] == pytest.approx(abs(dy) / H * 100, abs=1e-9)
        assert r['cd_paper_x'] == pytest.approx(0.0, abs=1e-9)
        assert r['cd_paper_y'] == pytest.approx(0.0, abs=1e-9)


def test_centre_distance_hand_worked_and_paper_variant():
    gts = [frame([[100, 100, 200, 150]]), frame([[0, 0, 64, 48]])]
    # frame 0: shift by (+8, -4) ; frame 1: same centre, 8 px wider and 4 px taller
    preds = [frame([[108, 96, 208, 146]], [0.9]), frame([[-4, -2, 68, 50]], [0.8])]
    r = centre_distance(preds, gts, (W, H))
    assert r['cd_matched'] == 2
    assert r['CDx'] == pytest.approx((8 / W * 100 + 0) / 2)
    assert r['CDy'] == pytest.approx((4 / H * 100 + 0) / 2)
    assert r['cd_paper_x'] == pytest.approx((0 + 8 / W * 100) / 2)
    assert r['cd_paper_y'] == pytest.approx((0 + 4 / H * 100) / 2)
    # unmatched (IoU < 0.5) pairs are not counted
    far = [frame([[400, 400, 500, 450]], [0.9]), frame([], [])]
    assert centre_distance(far, gts, (W, H))['cd_matched'] == 0


# ----------------------------------------------------------------------------- tracking

BOX_A = [100, 100, 200, 160]


def test_mot_metrics_hand_made_sequence():
    # one object over 6 frames; tracker: id 1 for frames 0-1, lost in frame 2, id 2 from frame 3
    # (an ID switch after a fragmentation), plus a false track (id 3) far away in frame 5
    gt = [{'boxes': [BOX_A], 'ids': ['a']} for _ in range(6)]
    hyp = [{'boxes': [BOX_A], 'ids': [1]}, {'boxes': [np.add(BOX_A, 5)], 'ids': [1]},
           {'boxes': np.zeros((0, 4)), 'ids': []},
           {'boxes': [BOX_A], 'ids': [2]}, {'boxes': [BOX_A], 'ids': [2]},
           {'boxes': [BOX_A, [400, 300, 450, 340]], 'ids': [2, 3]}]
    r = mot_metrics(gt, hyp)
    assert r['ID_switches'] == 1
    assert r['fragmentations'] == 1
    assert r['FN'] == 1 and r['FP'] == 1
    assert r['num_gt'] == 6 and r['num_frames'] == 6
    assert r['MOTA'] == pytest.approx(1 - (1 + 1 + 1) / 6)
    # IDF1: best one-to-one id mapping a<->2 gives IDTP 3, IDFP 3, IDFN 3
    assert r['IDF1'] == pytest.approx(2 * 3 / (2 * 3 + 3 + 3))
    assert r['precision'] == pytest.approx(5 / 6) and r['recall'] == pytest.approx(5 / 6)
    json.dumps(r)


def test_mot_metrics_iou_gate():
    gt = [{'boxes': [[0, 0, 100, 100]], 'ids': [7]}]
    ok = [{'boxes': [[0, 0, 100, 50]], 'ids': [1]}]          # IoU 0.5: matched
    bad = [{'boxes': [[0, 0, 100, 45]], 'ids': [1]}]         # IoU 0.45: FP + FN
    assert mot_metrics(gt, ok)['FP'] == 0
    r = mot_metrics(gt, bad)
    assert r['FP'] == 1 and r['FN'] == 1 and r['MOTA'] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match='duplicate ids'):
        mot_metrics(gt, [{'boxes': [[0, 0, 1, 1], [2, 2, 3, 3]], 'ids': [1, 1]}])
    r = mot_metrics([{'boxes': [], 'ids': []}], [{'boxes': [], 'ids': []}])
    assert math.isnan(r['MOTA'])


# ----------------------------------------------------------------------------- conditions

def test_evaluate_by_condition_splits_frames():
    rng = np.random.default_rng(5)
    preds, gts = random_case(rng, n_frames=8)
    conds = [{'time_of_day': 'night' if i % 2 else 'day', 'occluded': i < 3} for i in range(8)]
    gt_tr = [{'boxes': g['boxes'], 'ids': list(range(len(g['boxes'])))} for g in gts]
    r = evaluate_by_condition(preds, gts, conds, (W, H), gt_tracks=gt_tr, hyp_tracks=gt_tr)
    assert set(r['by_condition']) == {'occluded', 'time_of_day'}
    assert set(r['by_condition']['time_of_day']) == {'day', 'night'}
    assert set(r['by_condition']['occluded']) == {'True', 'False'}
    night = r['by_condition']['time_of_day']['night']
    ref = evaluate_detections(preds[1::2], gts[1::2], (W, H))
    assert night['num_frames'] == 4
    for k in ('AP50', 'coco_AP', 'CDx'):
        assert night[k] == ref[k] or (math.isnan(night[k]) and math.isnan(ref[k]))
    assert r['all']['tracking']['FN'] == 0
    assert r['by_condition']['occluded']['True']['num_frames'] == 3
    json.dumps(r)
    with pytest.raises(ValueError, match='condition tags'):
        evaluate_by_condition(preds, gts, conds[:3], (W, H))


# ----------------------------------------------------------------------------- the evaluation rule

def test_ignore_regions_match_pycocotools_crowd_regions():
    """Unmatched detections on an ignore region are neither TP nor FP, as detections on a COCO crowd
    region: matched by intersection over the detection's area (IoA), so detections much smaller
    than the region, shifted ones and ones that stick out are all scored as pycocotools does."""
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(20):
        preds, gts = random_case(rng)
        for p, g in zip(preds, gts):
            k = int(rng.integers(0, 4))
            xy = rng.uniform(1000, 1400, (k, 2))
            ig = np.concatenate([xy, xy + rng.uniform(20, 60, (k, 2))], 1)
            # detections of 0.2-1.5x the region's size, shifted by up to 0.8 of its width
            size = rng.uniform(0.2, 1.5, (k, 1)) * (ig[:, 2:] - ig[:, :2])
            x0 = ig[:, :2] + rng.uniform(-0.3, 0.8, (k, 1)) * (ig[:, 2:] - ig[:, :2])
            on = np.concatenate([x0, x0 + size], 1)
            g['ignore'] = ig
            p['boxes'] = np.concatenate([p['boxes'], on])
            p['scores'] = np.concatenate([p['scores'], rng.uniform(0, 1, k)])
            p['labels'] = list(p['labels']) + [0] * k
            for f in (p, g):
                f['labels'] = [0] * len(f['boxes'])
        if not any(len(g['boxes']) for g in gts):
            continue
        ours = detection_ap(preds, gts, per_class=False)
        assert ours['coco_AP50'] == pytest.approx(pycocotools_ap(preds, gts)['0'][1], abs=1e-9)
        checked += 1
    assert checked >= 15


def test_truth_sets_headline_all_visible_and_missing_fields():
    t = {'boxes': [[0, 0, 20, 20], [30, 0, 50, 20], [60, 0, 80, 5], [90, 0, 110, 20]],
         'visible': [[0.5, 0, 0], [0.05, 0.05, 0.05], [1, 1, 1], [0, 0, 0.9]], 'audible': [True, True, True, False]}
    s = truth_sets(t)
    # seen + tall + audible; the 2nd is seen by no camera, the 3rd too small, the 4th silent
    assert s['ground_truth'].tolist() == [True, False, False, False]
    assert s['ground_truth_all_visible'].tolist() == [True, False, False, True]
    r = reference_frame(t)
    assert len(r['boxes']) == 1 and len(r['ignore']) == 3
    only_boxes = truth_sets({'boxes': t['boxes']})
    assert only_boxes['ground_truth'].tolist() == only_boxes['ground_truth_all_visible'].tolist() == \
        [True, True, False, True]


def test_silent_car_is_no_miss_and_detecting_it_no_false_positive():
    t = {'boxes': np.array([[0, 0, 20, 20], [50, 0, 70, 20]], float), 'visible': [1.0, 1.0],
         'audible': [True, False], 'distance': [10.0, 40.0]}
    p = {'boxes': np.array([[50, 0, 70, 20], [0, 0, 20, 20], [200, 0, 220, 20]], float),
         'scores': np.array([0.9, 0.8, 0.7])}
    r = evaluate_truth([p], [t], (W, H))
    assert r['truth_fields'] == ['visible', 'audible', 'distance']
    assert r['ground_truth']['all']['AP50'] == pytest.approx(1.0)        # the silent car's box is ignored
    assert r['ground_truth']['all']['num_gt'] == 1
    # all visible: both cars count, the 3rd box is a FP after both are found
    assert r['ground_truth_all_visible']['all']['AP50'] == pytest.approx(1.0)
    assert r['ground_truth_all_visible']['all']['num_gt'] == 2
    by = r['ground_truth_all_visible']['by_distance']
    assert set(by) == {'0-15m', '15-30m', '30-50m', '>50m'}
    # 0-15 m: the car at 40 m is ignored, so its detection (ranked first) is no FP of this bucket
    assert by['0-15m']['AP50'] == pytest.approx(1.0) and by['30-50m']['AP50'] == pytest.approx(1.0)
    assert math.isnan(by['15-30m']['AP50']) and by['0-15m']['num_gt'] == 1
    # without the ignore region the 40 m detection would be a FP ranked first
    assert detection_ap([p], [{'boxes': t['boxes'][:1]}])['AP50'] == pytest.approx(0.5)


def test_frame_mota_bound_hand_worked():
    # frame 0: a hit (0.9) and a miss placed box (0.8); frame 1: a hit (0.7); frame 2: a vehicle
    # nobody finds. Thresholds: 0.9 -> (1 - 0) / 4, 0.8 -> (1 - 1) / 4, 0.7 -> (2 - 1) / 4
    gt = [frame([BOX_A]), frame([BOX_A]), frame([BOX_A, [300, 300, 340, 330]])]
    pr = [frame([BOX_A, [400, 50, 450, 90]], [0.9, 0.8]), frame([BOX_A], [0.7]), frame([], [])]
    r = frame_mota_bound(pr, gt)
    assert r['MOTA_bound'] == pytest.approx(0.25) and r['threshold'] == pytest.approx(0.9)
    assert r['recall'] == pytest.approx(0.25) and r['precision'] == pytest.approx(1.0) and r['num_gt'] == 4
    # the same per-frame detections as tracks with perfect identities: motmetrics agrees
    keep = [np.asarray(p['scores']) >= r['threshold'] for p in pr]
    hyp = [{'boxes': np.asarray(p['boxes']).reshape(-1, 4)[k], 'ids': ['a'] * int(k.sum())} for p, k in zip(pr, keep)]
    mot = mot_metrics([{'boxes': g['boxes'], 'ids': ['a', 'b'][:len(g['boxes'])]} for g in gt], hyp)
    assert mot['MOTA'] == pytest.approx(r['MOTA_bound'])
    # only false boxes: publishing nothing is best; no truth: NaN
    z = frame_mota_bound([frame([[400, 50, 450, 90]], [0.9])], [frame([BOX_A])])
    assert z['MOTA_bound'] == 0.0 and math.isnan(z['threshold'])
    assert math.isnan(frame_mota_bound([frame([BOX_A], [0.9])], [frame([])])['MOTA_bound'])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_frame_mota_bound_is_the_best_single_threshold(seed):
    """Brute force: every distinct score as the threshold, each frame matched on its own
    (match_frame) after drop_ignored, as a tracker's frame would be scored."""
    rng = np.random.default_rng(seed)
    preds, truths = [], []
    for _ in range(rng.integers(1, 6)):
        g = rng.uniform(0, 200, (rng.integers(0, 4), 2))
        gb = np.c_[g, g + rng.uniform(10, 60, (len(g), 2))]
        p = np.r_[gb + rng.normal(0, 8, gb.shape), np.c_[rng.uniform(0, 200, (2, 2)), rng.uniform(210, 300, (2, 2))]]
        p = p[rng.random(len(p)) < 0.8]
        p[:, 2:] = np.maximum(p[:, 2:], p[:, :2] + 1)
        audible = rng.random(len(gb)) < 0.8
        preds.append({'boxes': p, 'scores': np.round(rng.uniform(0, 1, len(p)), 1)})   # ties on purpose
        truths.append({'boxes': gb, 'visible': np.ones(len(gb)), 'audible': audible,
                       'distance': np.full(len(gb), 10.0)})
    refs = [reference_frame(t) for t in truths]
    got = evaluate_truth(preds, truths, (W, H))['ground_truth']['mota_bound']
    num_gt = sum(len(r['boxes']) for r in refs)
    assert got == frame_mota_bound(preds, refs) and got['num_gt'] == num_gt
    best = 0.0
    for t in sorted({float(x) for p in preds for x in p['scores']}):
        tp = fp = 0
        for p, r in zip(preds, refs):
            k = p['scores'] >= t
            f = drop_ignored({'boxes': p['boxes'][k], 'scores': p['scores'][k]}, r)
            m = match_frame(f['boxes'], f['scores'], r['boxes'], 0.5)
            tp += int((m >= 0).sum())
            fp += int((m < 0).sum())
        if num_gt:
            best = max(best, (tp - fp) / num_gt)
    if num_gt:
        assert got['MOTA_bound'] == pytest.approx(best)
    else:
        assert math.isnan(got['MOTA_bound'])


def test_prior_check_pairs_frames_of_other_drives():
    drives = ['a'] * 4 + ['b'] * 4
    perm = shuffle_permutation(8, drives)
    assert sorted(perm.tolist()) == list(range(8))
    assert all(drives[i] != drives[j] for i, j in enumerate(perm))
    assert shuffle_permutation(8, drives).tolist() == perm.tolist()          # deterministic
    solo = shuffle_permutation(6)
    assert all(abs(i - j) == 3 for i, j in enumerate(solo))                 # one drive: half its length away
    # a predictor that copies each frame's truth loses its AP against the shuffled truth
    rng = np.random.default_rng(3)
    truths = []
    for k in range(8):
        xy = rng.uniform(0, 500, (2, 2))
        truths.append({'boxes': np.concatenate([xy, xy + 30], 1)})
    preds = [{'boxes': t['boxes'], 'scores': np.ones(2)} for t in truths]
    r = evaluate_truth(preds, truths, (W, H), drives=drives)
    assert r['ground_truth']['all']['AP50'] == pytest.approx(1.0)
    assert r['ground_truth_shuffled']['all']['AP50'] < 0.2
