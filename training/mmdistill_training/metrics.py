"""Detection and tracking metrics (DESIGN §8): the one implementation used by
tests, reports and benchmarks.

Inputs are per-frame lists of the same length:

* a prediction frame is a mapping ``{'boxes': (N, 4), 'scores': (N,), 'labels': (N,) optional}``
* a ground-truth frame is a mapping ``{'boxes': (M, 4), 'labels': (M,) optional}``
* a track frame (for :func:`mot_metrics`) is ``{'boxes': (K, 4), 'ids': (K,)}``

Boxes are float pixel ``x1, y1, x2, y2`` (see :mod:`mmdistill_common.boxes`).
Every function returns plain dicts of Python floats / ints / lists (JSON-serialisable).

Conventions
-----------
* Matching for AP: per frame, detections in descending score order (stable, so
  ties keep input order); each detection takes the unmatched ground truth with
  the highest IoU, provided that IoU >= the threshold; each ground truth is
  matched at most once. Detections of all frames are then ranked by score
  (stable over the frame-by-frame concatenation, like pycocotools).
* ``AP50``, ``AP75``, ``mAP_avg``: VOC all-point interpolation (area under the
  monotone precision envelope). ``mAP_avg`` averages IoU 0.50:0.05:0.90, the
  range of the MM-DistillNet reference implementation.
* ``coco_AP``, ``coco_AP50``, ``coco_AP75``: COCO 101-point interpolation,
  ``coco_AP`` over IoU 0.50:0.05:0.95; these agree with ``pycocotools``
  (area 'all', unlimited detections per image).
* No ground truth at all (for the class or the subset): every AP is **NaN**
  (recall is undefined), never 0 or 1. Ground truth but no predictions: AP 0.
* Centre distance ``CDx`` / ``CDy``: mean absolute difference of the box
  centres of matched pairs along x / y, in percent of the image width / height.
  Pairs come from the same greedy matching at IoU >= 0.5 (``iou_threshold`` of
  :func:`centre_distance`).
  ``cd_paper_x`` / ``cd_paper_y`` reproduce what the reference code computes
  under that name (mean absolute difference of box *widths* / *heights* of the
  matched pairs, in percent of image width / height); they exist only for
  comparison with published numbers. NaN when nothing is matched.
* Ignore regions: a ground-truth frame may carry ``'ignore': (K, 4)`` boxes (vehicles that are
  neither to be found nor false: see *the evaluation rule* below). They are not counted as
  ground truth; a detection that matches no counted box at the AP threshold but lies on an
  ignore box, with at least :data:`IGNORE_IOA` of its own area inside it (intersection over the
  detection's area, not IoU), is dropped from the ranking (neither TP nor FP). That is how
  KITTI's DontCare regions (``boxoverlap`` criterion 0) and COCO's crowd regions are matched;
  with IoU, a detection of a 6-px vehicle a few pixels off counted as a false positive.

The evaluation rule (DESIGN §8; one rule for ``evaluate``, ``replay-eval``, ``teachers
evaluate`` and the demo: :func:`evaluate_truth`)
-------------------------------------------------------------------------------------------
A truth frame is ``{'boxes': (N, 4)}`` plus, where the source knows them (the simulator's
``/sim/truth``), per vehicle ``'visible'`` (N,) -- the largest visible fraction over the
cameras --, ``'audible'`` (N,) bool -- the simulator's physical flag: engine on and received
level above the non-vehicle noise at the array -- and ``'distance'`` (N,) metres from the array.

* **Headline ground truth** (``ground_truth``): vehicles seen by at least one camera (visible
  fraction >= :data:`MIN_VISIBLE_FRACTION`), with a box at least :data:`MIN_GT_HEIGHT_PX` tall,
  that are audible. Why: the product is an *audio* detector of vehicles in the camera frame; a
  silent parked car, or one no camera can confirm, is not a miss of it.
* **All visible** (``ground_truth_all_visible``): the same without the audible condition (the
  second reference: what a camera would be asked to find).
* Every other box of the frame becomes an **ignore region** of that reference, so a detection
  of a real but silent (or tiny, or hidden) vehicle is neither rewarded nor a false positive.
* **By distance** (``by_distance``): AP per bucket of :data:`DISTANCE_BUCKETS`; in bucket b the
  reference's boxes outside b are ignore regions too, so a detection of a vehicle at 40 m is
  not a false positive of the 0-15 m bucket.
* **Prior check** (``ground_truth_shuffled``): the same predictions against the headline ground
  truth of other frames (:func:`shuffle_permutation`); a model whose AP barely drops there has
  learned the scene (where cars usually are), not the sound.
* A source without the fields (a camera bag with only a ``Detection2DArray`` truth topic) gives
  every box at least :data:`MIN_GT_HEIGHT_PX` tall as ground truth and no distance buckets;
  ``truth_fields`` in the result says which fields were known.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mmdistill_common.boxes import as_boxes, ioa_matrix, iou_matrix, xyxy_to_cxcywh

__all__ = [
    'VOC_AVG_IOUS', 'COCO_IOUS', 'COCO_RECALL_THRESHOLDS',
    'match_frame', 'voc_ap', 'coco_ap', 'detection_ap', 'centre_distance',
    'evaluate_detections', 'mot_metrics', 'evaluate_by_condition', 'MIN_GT_HEIGHT_PX', 'truth_mask',
    'MIN_VISIBLE_FRACTION', 'IGNORE_IOA', 'DISTANCE_BUCKETS', 'TRUTH_REFERENCES', 'truth_sets', 'reference_frame',
    'shuffle_permutation', 'drop_ignored', 'evaluate_truth', 'truth_fields', 'frame_mota_bound',
]

#: Ground-truth boxes lower than this are left out of every "against ground truth" score (the
#: teachers' reports ignore them the same way): at 384x128 most far vehicles are 3-7 px tall,
#: below what any camera teacher resolves, so no pseudo-label can teach them.
MIN_GT_HEIGHT_PX = 8.0


def truth_mask(boxes, min_height: float = MIN_GT_HEIGHT_PX) -> np.ndarray:
    """bool (N,): ground-truth boxes at least ``min_height`` pixels tall."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (b[:, 3] - b[:, 1]) >= min_height


#: A vehicle counts as seen by a camera when at least this fraction of its box is visible to it
#: (the teachers' reports used the same value: below it a vehicle is fully behind an occluder).
MIN_VISIBLE_FRACTION = 0.1
#: An unmatched detection with at least this fraction of its area on an ignore region is not a
#: false positive (intersection over the detection's area, as KITTI and COCO match such regions).
IGNORE_IOA = 0.5
#: Distance buckets of the ground truth: (name, lower bound inclusive, upper bound exclusive), metres.
DISTANCE_BUCKETS: Tuple[Tuple[str, float, float], ...] = (
    ('0-15m', 0.0, 15.0), ('15-30m', 15.0, 30.0), ('30-50m', 30.0, 50.0), ('>50m', 50.0, math.inf))
#: The names of the two ground-truth references (and of the prior check against the first).
TRUTH_REFERENCES = ('ground_truth', 'ground_truth_all_visible')

#: IoU thresholds of ``mAP_avg``: 0.50:0.05:0.90 (the reference implementation's range).
VOC_AVG_IOUS = np.linspace(0.5, 0.9, 9)
#: IoU thresholds of COCO AP@[.50:.95], exactly as pycocotools builds them.
COCO_IOUS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
#: COCO's 101 recall points.
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)

_NAN = float('nan')


# ----------------------------------------------------------------------------- inputs

def _check_boxes(boxes, what: str) -> np.ndarray:
    try:
        b = as_boxes(boxes)
    except ValueError as exc:
        raise ValueError(f'{what}: {exc}') from None
    if not np.all(np.isfinite(b)):
        raise ValueError(f'{what}: boxes contain NaN or inf')
    return b


def _pred_frame(frame: Mapping, i: int) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    if not isinstance(frame, Mapping):
        raise ValueError(f'prediction frame {i} must be a mapping with boxes/scores, got {type(frame).__name__}')
    b = _check_boxes(frame.get('boxes', ()), f'prediction frame {i}')
    s = np.asarray(frame.get('scores', ()), dtype=np.float64).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f'prediction frame {i}: {len(b)} boxes but {len(s)} scores')
    if not np.all(np.isfinite(s)):
        raise ValueError(f'prediction frame {i}: scores contain NaN or inf')
    labels = frame.get('labels')
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(b):
            raise ValueError(f'prediction frame {i}: {len(b)} boxes but {len(labels)} labels')
    return b, s, labels


def _gt_frame(frame: Mapping, i: int) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    if not isinstance(frame, Mapping):
        raise ValueError(f'ground-truth frame {i} must be a mapping with boxes, got {type(frame).__name__}')
    b = _check_boxes(frame.get('boxes', ()), f'ground-truth frame {i}')
    labels = frame.get('labels')
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(b):
            raise ValueError(f'ground-truth frame {i}: {len(b)} boxes but {len(labels)} labels')
    ignore = _check_boxes(frame.get('ignore', ()), f'ignore regions of ground-truth frame {i}')
    return b, labels, ignore


def _frames(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping]):
    if len(predictions) != len(ground_truths):
        raise ValueError(f'{len(predictions)} prediction frames but {len(ground_truths)} ground-truth frames')
    preds = [_pred_frame(p, i) for i, p in enumerate(predictions)]
    gts = [_gt_frame(g, i) for i, g in enumerate(ground_truths)]
    return preds, gts


# ----------------------------------------------------------------------------- matching / AP

def match_frame(pred_boxes, pred_scores, gt_boxes, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy matching of one frame.

    Returns, for each prediction in **input order**, the index of the matched
    ground truth or -1. Predictions are processed by descending score (stable);
    each takes the unmatched ground truth of highest IoU with IoU >= threshold.
    """
    pb, gb = as_boxes(pred_boxes), as_boxes(gt_boxes)
    s = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    if len(pb) == 0 or len(gb) == 0:
        return np.full(len(pb), -1, dtype=np.int64)
    return _greedy_match(iou_matrix(pb, gb), np.argsort(-s, kind='mergesort'), iou_threshold)


def _greedy_match(ious: np.ndarray, order: np.ndarray, iou_threshold: float) -> np.ndarray:
    """:func:`match_frame` on a frame's (P, G) IoU matrix and its predictions' score order."""
    match = np.full(ious.shape[0], -1, dtype=np.int64)
    if ious.shape[0] == 0 or ious.shape[1] == 0:
        return match
    # a prediction overlapping no ground truth at the threshold matches nothing and changes
    # nothing: skip it (most low-score detections; same result, a fraction of the loop)
    order = order[ious[order].max(axis=1) >= iou_threshold]
    if not len(order):
        return match
    over = ious[order] >= iou_threshold
    if (over.sum(axis=1) == 1).all() and (over.sum(axis=0) <= 1).all():
        # no two predictions want the same ground truth and none wants two: the greedy loop
        # would give each its one candidate
        match[order] = over.argmax(axis=1)
        return match
    taken = np.zeros(ious.shape[1], dtype=bool)
    for d in order:
        row = np.where(taken, -1.0, ious[d])
        g = int(np.argmax(row))
        if row[g] >= iou_threshold:
            match[d] = g
            taken[g] = True
    return match


def _frame_pairs(preds, gts) -> List[tuple]:
    """Per frame what matching needs at any IoU threshold: the predictions' score order, their
    IoU with the ground truth and their highest IoA (:func:`ioa_matrix`) on an ignore region (None: no ignore
    region or no prediction). Computed once when several thresholds are scored."""
    out = []
    for (pb, ps, _), (gb, _, ig) in zip(preds, gts):
        igmax = ioa_matrix(pb, ig).max(axis=1) if len(ig) and len(pb) else None
        out.append((np.argsort(-ps, kind='mergesort'), iou_matrix(pb, gb), igmax))
    return out


def _ranked_tp(preds, gts, iou_threshold: float, pairs: Optional[List[tuple]] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
    """TP flags and scores of all detections, ranked like pycocotools; unmatched detections on an
    ignore region are left out. ``pairs``: :func:`_frame_pairs` of the frames, if already at hand."""
    if pairs is None:
        pairs = _frame_pairs(preds, gts)
    tps, scores = [], []
    for (pb, ps, _), (order, ious, igmax) in zip(preds, pairs):
        m = _greedy_match(ious, order, iou_threshold)
        if igmax is not None:
            keep = (m >= 0) | (igmax < IGNORE_IOA)
            order = order[keep[order]]
        tps.append(m[order] >= 0)
        scores.append(ps[order])
    tp = np.concatenate(tps) if tps else np.zeros(0, dtype=bool)
    sc = np.concatenate(scores) if scores else np.zeros(0)
    rank = np.argsort(-sc, kind='mergesort')
    return tp[rank], sc[rank]


def _pr(tp: np.ndarray, num_gt: int) -> Tuple[np.ndarray, np.ndarray]:
    ctp = np.cumsum(tp, dtype=np.float64)
    cfp = np.cumsum(~tp, dtype=np.float64)
    recall = ctp / num_gt
    precision = ctp / (ctp + cfp + np.spacing(1))
    return recall, precision


def voc_ap(recall, precision) -> float:
    """VOC all-point interpolated AP from a ranked precision/recall curve."""
    mrec = np.concatenate([[0.0], np.asarray(recall, dtype=np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(precision, dtype=np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def coco_ap(recall, precision) -> float:
    """COCO 101-point interpolated AP (as pycocotools' ``accumulate``)."""
    rc = np.asarray(recall, dtype=np.float64)
    pr = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]
    inds = np.searchsorted(rc, COCO_RECALL_THRESHOLDS, side='left')
    q = np.zeros(len(COCO_RECALL_THRESHOLDS))
    ok = inds < len(pr)
    q[ok] = pr[inds[ok]]
    return float(q.mean())


def _ap_block(preds, gts, return_curves: bool) -> Dict[str, Any]:
    num_gt = int(sum(len(g[0]) for g in gts))
    num_pred = int(sum(len(p[0]) for p in preds))
    out: Dict[str, Any] = {'num_gt': num_gt, 'num_pred': num_pred}
    cache: Dict[float, Tuple[float, float, np.ndarray, np.ndarray, np.ndarray]] = {}
    pairs: List[list] = []              # the frames' IoUs, computed once for all thresholds

    def at(t: float):
        t = float(t)
        if t not in cache:
            if num_gt == 0:
                cache[t] = (_NAN, _NAN, np.zeros(0), np.zeros(0), np.zeros(0))
            else:
                if not pairs:
                    pairs.append(_frame_pairs(preds, gts))
                tp, sc = _ranked_tp(preds, gts, t, pairs[0])
                rec, prec = _pr(tp, num_gt)
                cache[t] = (voc_ap(rec, prec), coco_ap(rec, prec), rec, prec, sc)
        return cache[t]

    out.update(_ap_summary(at))
    if return_curves:
        out['curves'] = {
            f'{t:.2f}': {'recall': at(t)[2].tolist(), 'precision': at(t)[3].tolist(),
                         'scores': at(t)[4].tolist()}
            for t in (0.5, 0.75)}
    return out


class _FrameMatches:
    """The per-frame part of :func:`evaluate_detections` (without classes) for one pairing of
    prediction and ground-truth frames, computed once and shared by every subset of the frames
    that :func:`evaluate_by_condition` scores: a subset's AP ranks its frames' matched detections
    together exactly as :func:`detection_ap` on that subset does, and its centre distance pools
    the same pairs, so the numbers are the same."""

    def __init__(self, predictions: Sequence[Mapping], ground_truths: Sequence[Mapping]):
        self.preds, self.gts = _frames(predictions, ground_truths)
        self.pairs: Optional[List[tuple]] = None
        self.ranked: Dict[float, List[Tuple[np.ndarray, np.ndarray]]] = {}
        self.centres: Optional[List[Optional[Tuple[np.ndarray, np.ndarray]]]] = None

    @property
    def unlabelled(self) -> bool:
        """No subset can be scored per class (predictions or ground truth carry no labels)."""
        return all(p[2] is None for p in self.preds) or all(g[1] is None for g in self.gts)

    def _ranked_at(self, t: float) -> List[Tuple[np.ndarray, np.ndarray]]:
        if t not in self.ranked:
            if self.pairs is None:
                self.pairs = _frame_pairs(self.preds, self.gts)
            out = []
            for (pb, ps, _), (order, ious, igmax) in zip(self.preds, self.pairs):
                m = _greedy_match(ious, order, t)
                if igmax is not None:
                    order = order[((m >= 0) | (igmax < IGNORE_IOA))[order]]
                out.append((m[order] >= 0, ps[order]))
            self.ranked[t] = out
        return self.ranked[t]

    def ap_block(self, idx: Sequence[int]) -> Dict[str, Any]:
        """:func:`_ap_block` of the frames ``idx`` (no curves)."""
        num_gt = int(sum(len(self.gts[i][0]) for i in idx))
        out: Dict[str, Any] = {'num_gt': num_gt, 'num_pred': int(sum(len(self.preds[i][0]) for i in idx))}
        cache: Dict[float, Tuple[float, float]] = {}

        def at(t: float):
            t = float(t)
            if t not in cache:
                if num_gt == 0:
                    cache[t] = (_NAN, _NAN)
                else:
                    blocks = self._ranked_at(t)
                    tp = np.concatenate([blocks[i][0] for i in idx]) if len(idx) else np.zeros(0, dtype=bool)
                    sc = np.concatenate([blocks[i][1] for i in idx]) if len(idx) else np.zeros(0)
                    rec, prec = _pr(tp[np.argsort(-sc, kind='mergesort')], num_gt)
                    cache[t] = (voc_ap(rec, prec), coco_ap(rec, prec))
            return cache[t]

        out.update(_ap_summary(at))
        return out

    def centre_distance(self, idx: Sequence[int], image_size: Tuple[float, float]) -> Dict[str, float]:
        """:func:`centre_distance` of the frames ``idx`` (IoU 0.5, no score threshold)."""
        width, height = (float(v) for v in image_size)
        if self.centres is None:
            self.centres = []
            for (pb, ps, _), (gb, _, _) in zip(self.preds, self.gts):
                keep = ps >= 0.0
                pb, ps = pb[keep], ps[keep]
                m = match_frame(pb, ps, gb, 0.5)
                ok = m >= 0
                self.centres.append((xyxy_to_cxcywh(pb[ok]), xyxy_to_cxcywh(gb[m[ok]])) if ok.any() else None)
        pairs = [self.centres[i] for i in idx if self.centres[i] is not None]
        if not pairs:
            return {'CDx': _NAN, 'CDy': _NAN, 'cd_paper_x': _NAN, 'cd_paper_y': _NAN, 'cd_matched': 0}
        diff = np.abs(np.concatenate([p for p, _ in pairs]) - np.concatenate([g for _, g in pairs]))
        mean = diff.mean(axis=0) / np.array([width, height, width, height]) * 100.0
        return {'CDx': float(mean[0]), 'CDy': float(mean[1]),
                'cd_paper_x': float(mean[2]), 'cd_paper_y': float(mean[3]),
                'cd_matched': int(len(diff))}


def detection_ap(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping], *,
                 per_class: bool = True, return_curves: bool = False) -> Dict[str, Any]:
    """Class-agnostic AP (keys ``AP50, AP75, mAP_avg, coco_AP, coco_AP50, coco_AP75,
    num_gt, num_pred``) plus, when ``per_class`` and every frame of both lists has
    labels, ``per_class: {str(label): {same keys}}`` and ``class_mean`` (mean over
    the classes that have ground truth; NaN if none).

    ``return_curves`` adds ``curves: {'0.50'|'0.75': {recall, precision, scores}}``
    (ranked, one point per detection) for plotting.
    """
    preds, gts = _frames(predictions, ground_truths)
    out = _ap_block(preds, gts, return_curves)
    labelled = bool(preds) and all(p[2] is not None for p in preds) and all(g[1] is not None for g in gts)
    if per_class and labelled:
        classes = sorted({str(x) for p in preds for x in p[2]} | {str(x) for g in gts for x in g[1]})
        out['per_class'] = {}
        for c in classes:
            cp = []
            for b, s, lab in preds:
                keep = np.array([str(x) == c for x in lab], dtype=bool)
                cp.append((b[keep], s[keep], None))
            cg = []
            for b, lab, ig in gts:
                keep = np.array([str(x) == c for x in lab], dtype=bool)
                cg.append((b[keep], None, ig))
            out['per_class'][c] = _ap_block(cp, cg, False)
        keys = ('AP50', 'AP75', 'mAP_avg', 'coco_AP', 'coco_AP50', 'coco_AP75')
        with_gt = [v for v in out['per_class'].values() if v['num_gt'] > 0]
        out['class_mean'] = {k: (float(np.mean([v[k] for v in with_gt])) if with_gt else _NAN) for k in keys}
    return out


def frame_mota_bound(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping],
                     iou_threshold: float = 0.5) -> Dict[str, float]:
    """The highest MOTA a tracker could reach from these per-frame detections alone: publish, in
    every frame, the detections scored at least one threshold, with never a wrong identity. Then
    MOTA = 1 - (FN + FP) / num_gt = (TP - FP) / num_gt, maximised over the threshold (0 when
    publishing nothing is best). It says whether the detector or the tracker limits MOTA: a
    tracker only gains on it by filling missed frames or dropping false boxes.

    Matching is :func:`detection_ap`'s (greedy by score at ``iou_threshold``, detections on an
    ignore region left out, as MOT scoring drops them). Returns ``MOTA_bound``, ``threshold``
    (the lowest score published at the maximum; NaN when nothing is), ``recall``, ``precision``
    and ``num_gt`` (MOTA_bound NaN without ground truth).
    """
    preds, gts = _frames(predictions, ground_truths)
    num_gt = int(sum(len(g[0]) for g in gts))
    out = {'MOTA_bound': _NAN, 'threshold': _NAN, 'recall': _NAN, 'precision': _NAN, 'num_gt': num_gt}
    if num_gt == 0:
        return out
    tp, sc = _ranked_tp(preds, gts, iou_threshold)
    out.update(MOTA_bound=0.0, recall=0.0)
    if not len(tp):
        return out
    gain = np.cumsum(np.where(tp, 1.0, -1.0))
    cut = np.flatnonzero(np.r_[sc[1:] != sc[:-1], True])   # a threshold keeps every detection of its score
    k = int(cut[np.argmax(gain[cut])])
    if gain[k] > 0:
        ntp = float(np.count_nonzero(tp[:k + 1]))
        out.update(MOTA_bound=float(gain[k]) / num_gt, threshold=float(sc[k]), recall=ntp / num_gt,
                   precision=ntp / (k + 1))
    return out


# ----------------------------------------------------------------------------- centre distance

def _check_image_size(image_size) -> Tuple[float, float]:
    width, height = (float(v) for v in image_size)
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise ValueError(f'image_size must be positive finite (width, height), got {image_size}')
    return width, height


def centre_distance(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping],
                    image_size: Tuple[float, float], *, iou_threshold: float = 0.5,
                    score_threshold: float = 0.0) -> Dict[str, float]:
    """Centre distance of matched pairs, in percent of the image size.

    ``image_size`` is ``(width, height)`` in pixels. Predictions with score
    below ``score_threshold`` are ignored; the rest are matched with
    :func:`match_frame` at ``iou_threshold`` (default 0.5). Returns ``CDx``,
    ``CDy`` (headline: |centre difference| along x / y), ``cd_paper_x``,
    ``cd_paper_y`` (the reference code's quantity: |width| / |height|
    differences of the same pairs) and ``cd_matched`` (number of pairs).
    Values are NaN when no pair is matched.
    """
    width, height = _check_image_size(image_size)
    preds, gts = _frames(predictions, ground_truths)
    dp, dg = [], []
    for (pb, ps, _), (gb, _, _) in zip(preds, gts):
        keep = ps >= score_threshold
        pb, ps = pb[keep], ps[keep]
        m = match_frame(pb, ps, gb, iou_threshold)
        ok = m >= 0
        if ok.any():
            dp.append(xyxy_to_cxcywh(pb[ok]))
            dg.append(xyxy_to_cxcywh(gb[m[ok]]))
    if not dp:
        return {'CDx': _NAN, 'CDy': _NAN, 'cd_paper_x': _NAN, 'cd_paper_y': _NAN, 'cd_matched': 0}
    diff = np.abs(np.concatenate(dp) - np.concatenate(dg))
    scale = np.array([width, height, width, height])
    mean = diff.mean(axis=0) / scale * 100.0
    return {'CDx': float(mean[0]), 'CDy': float(mean[1]),
            'cd_paper_x': float(mean[2]), 'cd_paper_y': float(mean[3]),
            'cd_matched': int(len(diff))}


def _ap_summary(at) -> Dict[str, float]:
    """AP50/AP75/mAP@Avg (VOC) and COCO AP figures from ``at(iou) -> (voc_ap, coco_ap, ...)``."""
    return {'AP50': at(0.5)[0], 'AP75': at(0.75)[0],
            'mAP_avg': float(np.mean([at(t)[0] for t in VOC_AVG_IOUS])),
            'coco_AP': float(np.mean([at(t)[1] for t in COCO_IOUS])),
            'coco_AP50': at(COCO_IOUS[0])[1], 'coco_AP75': at(COCO_IOUS[5])[1]}


def evaluate_detections(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping],
                        image_size: Tuple[float, float], *, per_class: bool = True,
                        return_curves: bool = False) -> Dict[str, Any]:
    """:func:`detection_ap` and :func:`centre_distance` merged into one dict, plus ``num_frames``."""
    out = detection_ap(predictions, ground_truths, per_class=per_class, return_curves=return_curves)
    out.update(centre_distance(predictions, ground_truths, image_size))
    out['num_frames'] = len(predictions)
    return out


# ----------------------------------------------------------------------------- tracking

_MOT_NAMES = {
    'mota': 'MOTA', 'motp': 'MOTP', 'idf1': 'IDF1', 'idp': 'IDP', 'idr': 'IDR',
    'num_switches': 'ID_switches', 'num_fragmentations': 'fragmentations',
    'num_false_positives': 'FP', 'num_misses': 'FN', 'precision': 'precision',
    'recall': 'recall', 'num_objects': 'num_gt', 'num_unique_objects': 'num_gt_ids',
    'mostly_tracked': 'mostly_tracked', 'partially_tracked': 'partially_tracked',
    'mostly_lost': 'mostly_lost', 'num_frames': 'num_frames',
}


def _track_frame(frame: Mapping, i: int, what: str) -> Tuple[np.ndarray, np.ndarray]:
    if not isinstance(frame, Mapping):
        raise ValueError(f'{what} frame {i} must be a mapping with boxes/ids, got {type(frame).__name__}')
    b = _check_boxes(frame.get('boxes', ()), f'{what} frame {i}')
    ids = np.asarray(frame.get('ids', ()), dtype=object).reshape(-1)
    if len(ids) != len(b):
        raise ValueError(f'{what} frame {i}: {len(b)} boxes but {len(ids)} ids')
    if len(set(ids.tolist())) != len(ids):
        raise ValueError(f'{what} frame {i}: duplicate ids {ids.tolist()}')
    return b, ids


def mot_metrics(gt_tracks: Sequence[Mapping], hyp_tracks: Sequence[Mapping], *,
                iou_threshold: float = 0.5) -> Dict[str, float]:
    """CLEAR-MOT and ID metrics from ``motmetrics`` with IoU distance.

    Frames ``{'boxes', 'ids'}``; a ground truth and a hypothesis may be paired
    when IoU >= ``iou_threshold`` (distance 1 - IoU, NaN otherwise; the
    distance matrix is built here because motmetrics 1.4.0's own
    ``iou_matrix`` uses ``np.asfarray``, gone in NumPy 2).

    Returns ``MOTA, MOTP (mean 1-IoU of matches), IDF1, IDP, IDR, ID_switches,
    fragmentations, FP, FN, precision, recall, num_gt, num_gt_ids,
    mostly_tracked, partially_tracked, mostly_lost, num_frames``. With no
    ground truth at all MOTA / recall are NaN.
    """
    import motmetrics as mm  # imported lazily: pandas is slow to import

    if len(gt_tracks) != len(hyp_tracks):
        raise ValueError(f'{len(gt_tracks)} ground-truth frames but {len(hyp_tracks)} track frames')
    acc = mm.MOTAccumulator(auto_id=True)
    # ids of any hashable type are mapped to ints: motmetrics' frames want one numeric dtype
    gmap: Dict[Hashable, int] = {}
    hmap: Dict[Hashable, int] = {}
    for i, (g, h) in enumerate(zip(gt_tracks, hyp_tracks)):
        gb, gid = _track_frame(g, i, 'ground-truth')
        hb, hid = _track_frame(h, i, 'track')
        dist = 1.0 - iou_matrix(gb, hb)
        dist[dist > 1.0 - iou_threshold + 1e-12] = np.nan   # IoU >= threshold allowed (float slack)
        acc.update([gmap.setdefault(x, len(gmap)) for x in gid.tolist()],
                   [hmap.setdefault(x, len(hmap)) for x in hid.tolist()], dist)
    mh = mm.metrics.create()
    summary = mh.compute(acc, metrics=list(_MOT_NAMES), name='all')
    out: Dict[str, float] = {}
    for key, name in _MOT_NAMES.items():
        v = summary[key].iloc[0]
        out[name] = int(v) if key.startswith('num_') or key.startswith('mostly') or key == 'partially_tracked' \
            else float(v)
    if out['num_gt'] == 0:
        out['MOTA'] = _NAN
        out['recall'] = _NAN
    return out


# ----------------------------------------------------------------------------- conditions

def evaluate_by_condition(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping],
                          conditions: Sequence[Mapping[str, Hashable]], image_size: Tuple[float, float], *,
                          keys: Optional[Sequence[str]] = None,
                          gt_tracks: Optional[Sequence[Mapping]] = None,
                          hyp_tracks: Optional[Sequence[Mapping]] = None) -> Dict[str, Any]:
    """Split frames by condition tags and report metrics per tag value.

    ``conditions[i]`` tags frame ``i``, e.g. ``{'time_of_day': 'night', 'ego':
    'driving', 'occluded': True}``. For every key (all keys seen, or ``keys``)
    and every value of it, the frames carrying that value are evaluated with
    :func:`evaluate_detections` (and :func:`mot_metrics` when track frames are
    given; the selected frames are then treated as one sequence, so a gap
    between them is not a missed frame). Frames lacking a key are left out of
    that key's split. Values are keyed by ``str(value)`` (``True`` -> ``'True'``).

    Returns ``{'all': {...}, 'by_condition': {key: {str(value): {...,
    'num_frames': n}}}}``.
    """
    n = len(predictions)
    if len(conditions) != n or len(ground_truths) != n:
        raise ValueError(f'{n} prediction frames, {len(ground_truths)} ground-truth frames and '
                         f'{len(conditions)} condition tags: all must be equal')
    if (gt_tracks is None) != (hyp_tracks is None):
        raise ValueError('give both gt_tracks and hyp_tracks, or neither')
    if gt_tracks is not None and (len(gt_tracks) != n or len(hyp_tracks) != n):
        raise ValueError(f'track frames ({len(gt_tracks)}, {len(hyp_tracks)}) must number {n}')
    for i, c in enumerate(conditions):
        if not isinstance(c, Mapping):
            raise ValueError(f'condition tags of frame {i} must be a mapping, got {type(c).__name__}')

    # every frame is matched once, not once per condition it carries (the results are the same;
    # with per-class scores, which need labels on both sides, each subset is scored on its own)
    shared = _FrameMatches(predictions, ground_truths)
    if shared.unlabelled:
        _check_image_size(image_size)

    def run(idx: List[int]) -> Dict[str, Any]:
        if shared.unlabelled:
            res = shared.ap_block(idx)
            res.update(shared.centre_distance(idx, image_size))
            res['num_frames'] = len(idx)
        else:
            res = evaluate_detections([predictions[i] for i in idx], [ground_truths[i] for i in idx], image_size)
        if gt_tracks is not None:
            res['tracking'] = mot_metrics([gt_tracks[i] for i in idx], [hyp_tracks[i] for i in idx])
        return res

    if keys is None:
        keys = sorted({k for c in conditions for k in c})
    out: Dict[str, Any] = {'all': run(list(range(n))), 'by_condition': {}}
    for k in keys:
        groups: Dict[str, List[int]] = defaultdict(list)
        for i, c in enumerate(conditions):
            if k in c:
                groups[str(c[k])].append(i)
        out['by_condition'][str(k)] = {v: run(idx) for v, idx in sorted(groups.items())}
    return out


# ----------------------------------------------------------------------------- the evaluation rule

_TRUTH_FIELDS = ('visible', 'audible', 'distance')


def _field(frame: Mapping, name: str, n: int, dtype) -> Optional[np.ndarray]:
    v = frame.get(name)
    if v is None:
        return None
    a = np.asarray(v, dtype=dtype)
    if name == 'visible' and a.ndim == 2:          # (N, cameras): the best camera counts
        a = a.max(axis=1) if a.shape[1] else np.zeros(len(a), dtype)
    a = a.reshape(-1)
    if len(a) != n:
        raise ValueError(f'truth field {name!r} has {len(a)} values for {n} boxes')
    return a


def truth_fields(truths: Sequence[Mapping]) -> List[str]:
    """The fields of the rule (``visible``, ``audible``, ``distance``) that every frame carries."""
    return [k for k in _TRUTH_FIELDS if truths and all(t.get(k) is not None for t in truths)]


def truth_sets(frame: Mapping) -> Dict[str, np.ndarray]:
    """bool masks over the frame's boxes: ``ground_truth`` (headline) and
    ``ground_truth_all_visible`` (see the module docstring). A missing field is taken as
    satisfied (visible, audible)."""
    b = as_boxes(frame.get('boxes', ()))
    n = len(b)
    tall = truth_mask(b)
    vis = _field(frame, 'visible', n, np.float64)
    aud = _field(frame, 'audible', n, bool)
    seen = tall if vis is None else tall & (vis >= MIN_VISIBLE_FRACTION)
    return {'ground_truth': seen if aud is None else seen & aud, 'ground_truth_all_visible': seen}


def reference_frame(frame: Mapping, reference: str = 'ground_truth',
                    bucket: Optional[Tuple[float, float]] = None) -> Dict[str, np.ndarray]:
    """``{'boxes', 'ignore'}`` of one truth frame under the rule: the reference's boxes (within
    ``bucket`` = (lo, hi) metres when given) to be found, every other box an ignore region."""
    if reference not in TRUTH_REFERENCES:
        raise ValueError(f'reference must be one of {TRUTH_REFERENCES}, got {reference!r}')
    b = as_boxes(frame.get('boxes', ()))
    keep = truth_sets(frame)[reference]
    if bucket is not None:
        d = _field(frame, 'distance', len(b), np.float64)
        if d is None:
            raise ValueError('distance buckets need the truth field "distance"')
        keep = keep & (d >= bucket[0]) & (d < bucket[1])
    return {'boxes': b[keep], 'ignore': b[~keep]}


def shuffle_permutation(n: int, drives: Optional[Sequence[Hashable]] = None) -> np.ndarray:
    """Deterministic pairing of each frame with another frame's ground truth (the prior check).

    Frames are put in (drive, input) order and frame k of that order gets the truth of frame
    k + n // 2 (mod n): another drive whenever no drive holds half of the frames, otherwise the
    same drive half its length away in time. Returns ``perm`` with truth ``perm[i]`` for frame i.
    """
    if n <= 1:
        return np.arange(n)
    if drives is None:
        order = np.arange(n)
    else:
        if len(drives) != n:
            raise ValueError(f'{len(drives)} drive names for {n} frames')
        keys = {d: k for k, d in enumerate(sorted(set(map(str, drives))))}
        order = np.argsort(np.array([keys[str(d)] for d in drives]), kind='mergesort')
    perm = np.empty(n, np.int64)
    perm[order] = order[(np.arange(n) + n // 2) % n]
    return perm


def drop_ignored(frame: Mapping, reference: Mapping, iou_threshold: float = 0.5) -> Dict[str, Any]:
    """A prediction/track frame without its boxes that match none of ``reference['boxes']`` at
    ``iou_threshold`` but lie on an ignore region (for metrics that know no ignore regions, MOT)."""
    b = as_boxes(frame.get('boxes', ()))
    ig = as_boxes(reference.get('ignore', ()))
    if not len(b) or not len(ig):
        return dict(frame)
    s = np.asarray(frame.get('scores', np.ones(len(b))), np.float64).reshape(-1)
    matched = match_frame(b, s, reference['boxes'], iou_threshold) >= 0
    keep = matched | (ioa_matrix(b, ig).max(axis=1) < IGNORE_IOA)
    out = dict(frame)
    for k, v in frame.items():
        if k in ('boxes', 'scores', 'ids', 'labels') and v is not None and len(v) == len(b):
            out[k] = np.asarray(v)[keep] if not isinstance(v, list) else [x for x, t in zip(v, keep) if t]
    return out


def evaluate_truth(predictions: Sequence[Mapping], truths: Sequence[Mapping], image_size: Tuple[float, float], *,
                   conditions: Optional[Sequence[Mapping[str, Hashable]]] = None,
                   keys: Optional[Sequence[str]] = None, drives: Optional[Sequence[Hashable]] = None,
                   curves: bool = False) -> Dict[str, Any]:
    """Predictions against simulator (or any) ground truth under the one evaluation rule.

    ``truths[i]``: the truth frame of prediction frame i (``boxes`` and, where known,
    ``visible``, ``audible``, ``distance``). ``conditions`` / ``keys``: as
    :func:`evaluate_by_condition`. ``drives``: drive of each frame, for the prior check's pairing.

    Returns ``{'ground_truth': {'all', 'by_condition', 'by_distance', 'mota_bound'},
    'ground_truth_all_visible': {'all', 'by_condition', 'by_distance'}, 'ground_truth_shuffled':
    {'all'}, 'truth_fields': [...]}`` where every leaf is an :func:`evaluate_detections` dict
    (``curves`` adds PR curves to the headline ``all``), ``by_distance`` is keyed by
    :data:`DISTANCE_BUCKETS` names (empty without distances) and ``mota_bound`` is
    :func:`frame_mota_bound` against the headline truth.
    """
    n = len(predictions)
    if len(truths) != n:
        raise ValueError(f'{n} prediction frames but {len(truths)} truth frames')
    conds = list(conditions) if conditions is not None else [{} for _ in range(n)]
    fields = truth_fields(truths)
    out: Dict[str, Any] = {'truth_fields': fields}
    for ref in TRUTH_REFERENCES:
        frames = [reference_frame(t, ref) for t in truths]
        res = evaluate_by_condition(predictions, frames, conds, image_size, keys=keys)
        if curves and ref == 'ground_truth':
            res['all']['curves'] = detection_ap(predictions, frames, per_class=False, return_curves=True)['curves']
        res['by_distance'] = {}
        if 'distance' in fields:
            for name, lo, hi in DISTANCE_BUCKETS:
                res['by_distance'][name] = evaluate_detections(
                    predictions, [reference_frame(t, ref, (lo, hi)) for t in truths], image_size, per_class=False)
        if ref == 'ground_truth':
            res['mota_bound'] = frame_mota_bound(predictions, frames)
        out[ref] = res
    perm = shuffle_permutation(n, drives)
    shuffled = [reference_frame(truths[int(j)], 'ground_truth') for j in perm]
    out['ground_truth_shuffled'] = {'all': evaluate_detections(predictions, shuffled, image_size, per_class=False)}
    return out
