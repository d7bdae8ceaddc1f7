"""Fusion of per-teacher detections into pseudo-labels (ROS-free).

The paper's rule (``method='nms'``): drop each teacher's detections below that
teacher's score threshold, pool the rest, and run greedy class-agnostic NMS at IoU
0.5 over the union. Each kept box keeps its own score and label.

``method='wbf'``: weighted box fusion (Solovyev et al. 2021): boxes are visited in
descending score; each joins the cluster whose current fused box it overlaps most
with IoU > ``iou_threshold`` (or starts a new one); a cluster's fused box is the
score-weighted mean of its members' coordinates and its score
``mean(member scores) * min(n_members, T) / T`` with ``T`` the number of teachers
(sum of modality weights when given), clipped to [0, 1]. Clusters of more boxes
(agreement between teachers) thus score higher than a lone box.

Both record which modalities support each fused box: a modality supports it when one
of its (thresholded) boxes is the kept box or was absorbed by it — for NMS, suppressed
by it, i.e. the highest-scoring kept box overlapping it with IoU > ``iou_threshold``.
Teacher attention maps are not fused: they are carried through per modality (the
training losses form the product target).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from mmdistill_common.boxes import as_boxes, iou_matrix, nms
from mmdistill_common.errors import InputError

__all__ = ['DEFAULT_MODALITIES', 'FusedDetections', 'fuse_detections', 'weighted_boxes_fusion']

DEFAULT_MODALITIES = ('rgb', 'depth', 'thermal')


@dataclass
class FusedDetections:
    """Pseudo-labels of one frame.

    ``boxes`` float32 (N, 4) xyxy, ``scores`` float32 (N,), ``labels`` int64 (N,),
    ``modalities`` the column names of ``support`` (all teachers asked for, present
    or not), ``support`` bool (N, M): modality m supports fused box n,
    ``support_scores`` float32 (N, M): the best score of m's boxes in n's cluster (0
    if none), ``present`` bool (M,): the teacher delivered detections (None = missing),
    ``attention``: per present modality its attention maps, untouched.
    """
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    modalities: Tuple[str, ...]
    support: np.ndarray
    support_scores: np.ndarray
    present: np.ndarray
    attention: Dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.boxes)

    def supporting_modalities(self, i: int) -> List[str]:
        """Names of the modalities supporting fused box ``i``."""
        return [m for m, s in zip(self.modalities, self.support[i]) if s]


def _unpack(det) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[list]]:
    if isinstance(det, Mapping):
        boxes, scores = det['boxes'], det['scores']
        labels = det.get('labels')
        att = det.get('attention')
    elif isinstance(det, (tuple, list)) and len(det) in (2, 3):
        boxes, scores = det[0], det[1]
        labels = det[2] if len(det) == 3 else None
        att = None
    else:
        raise ValueError('each teacher result must be a dict(boxes, scores[, labels, attention]) '
                         'or a (boxes, scores[, labels]) tuple')
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    # bad data (InputError, a ValueError) is dropped by the nodes; anything else would stop them
    if len(s) != len(b):
        raise InputError(f'{len(b)} boxes but {len(s)} scores')
    l = np.zeros(len(b), np.int64) if labels is None else np.asarray(labels, np.int64).reshape(-1)
    if len(l) != len(b):
        raise InputError(f'{len(b)} boxes but {len(l)} labels')
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(s))):
        raise InputError('teacher boxes/scores contain NaN or inf')
    if np.any(b[:, 2] < b[:, 0]) or np.any(b[:, 3] < b[:, 1]):
        raise InputError('teacher boxes with negative width or height')
    return b, s, l, att


def _threshold_for(thresholds, modality: str) -> float:
    if isinstance(thresholds, Mapping):
        if modality not in thresholds:
            raise ValueError(f'no score threshold given for modality {modality!r}')
        return float(thresholds[modality])
    return float(thresholds)


def weighted_boxes_fusion(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.5,
                          num_models: float = 1.0, groups: Optional[np.ndarray] = None
                          ) -> Tuple[np.ndarray, np.ndarray, List[np.ndarray]]:
    """Weighted box fusion of one pooled set of boxes (a single class).

    Returns ``(fused_boxes (K, 4), fused_scores (K,), members)`` where ``members[k]``
    are the indices of the input boxes in cluster k, in visiting order (descending score;
    the first is the cluster's founder, its best box). ``groups`` (optional, (N,)) only
    restricts clustering to boxes of the same group (used for class-aware fusion).
    Score rule: ``mean(scores of members) * min(len(members), num_models) / num_models``.

    The visit is sequential by nature (a box joins the cluster whose *current* fused box it
    overlaps most). Each fused box is kept as running score-weighted sums instead of being
    recomputed from its member list, and its IoU with the visited box is the float arithmetic of
    :func:`mmdistill_common.boxes.iou_matrix`: on plain floats while there are few clusters
    (numpy's per-call overhead dominates there), on arrays over all clusters once there are
    more than ``_WBF_VECTOR_FROM`` (the calibration of the fusion runs this ~100 times a frame).
    """
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(b)
    if n == 0:
        return np.zeros((0, 4)), np.zeros(0), []
    g = np.zeros(n, np.int64) if groups is None else np.asarray(groups, np.int64).reshape(-1)
    gl = g.tolist()
    order = np.argsort(-s, kind='stable').tolist()
    bl, sl = b.tolist(), s.tolist()
    fused = np.zeros((n, 4))          # current fused box of each cluster (first k rows)
    farea = np.zeros(n)
    fgroup = np.zeros(n, np.int64)
    fl: List[List[float]] = []        # the same boxes and areas as floats (scalar phase)
    fal: List[float] = []
    fgl: List[int] = []
    wsum: List[List[float]] = []      # per cluster: sum of score * box, sum of box, sum of score
    bsum: List[List[float]] = []
    wtot: List[float] = []
    members: List[List[int]] = []
    for i in order:
        x1, y1, x2, y2 = bl[i]
        si, gi = sl[i], gl[i]
        area_i = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
        k = len(members)
        best, best_iou = -1, -math.inf
        if k > _WBF_VECTOR_FROM:
            f = fused[:k]
            iw = np.maximum(np.minimum(f[:, 2], x2) - np.maximum(f[:, 0], x1), 0.0)
            ih = np.maximum(np.minimum(f[:, 3], y2) - np.maximum(f[:, 1], y1), 0.0)
            inter = iw * ih
            union = farea[:k] + area_i - inter
            with np.errstate(invalid='ignore', divide='ignore'):
                ious = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
            ious = np.where(fgroup[:k] == gi, ious, -1.0)
            best = int(np.argmax(ious))
            best_iou = float(ious[best])
        else:
            for j in range(k):
                if fgl[j] != gi:
                    iou = -1.0
                else:
                    f = fl[j]
                    iw = max(min(f[2], x2) - max(f[0], x1), 0.0)
                    ih = max(min(f[3], y2) - max(f[1], y1), 0.0)
                    inter = iw * ih
                    union = fal[j] + area_i - inter
                    iou = inter / union if union > 0 else 0.0
                if iou > best_iou:
                    best, best_iou = j, iou
        if best < 0 or not best_iou > iou_threshold:
            best = k
            f = [x1, y1, x2, y2]
            fgroup[k] = gi
            wsum.append([x1 * si, y1 * si, x2 * si, y2 * si])
            bsum.append([x1, y1, x2, y2])
            wtot.append(si)
            members.append([i])
            fl.append(f)
            fal.append(area_i)
            fgl.append(gi)
        else:
            ws, bs = wsum[best], bsum[best]
            for c, v in enumerate((x1, y1, x2, y2)):
                ws[c] += v * si
                bs[c] += v
            wtot[best] += si
            members[best].append(i)
            # all-zero (or denormal) scores: plain mean instead of a 0/0 weighted mean
            w = wtot[best]
            f = [v / w for v in ws] if w > 1e-9 else [v / len(members[best]) for v in bs]
            fl[best] = f
            fal[best] = max(f[2] - f[0], 0.0) * max(f[3] - f[1], 0.0)
        fused[best] = f
        farea[best] = fal[best]
    fs = np.array([s[m].mean() * min(len(m), num_models) / num_models for m in members])
    return np.asarray(fl, np.float64), np.clip(fs, 0.0, 1.0), [np.asarray(m, np.int64) for m in members]


#: clusters above which :func:`weighted_boxes_fusion` computes IoUs on arrays, not floats
_WBF_VECTOR_FROM = 12


def fuse_detections(detections: Mapping[str, object], score_thresholds: Union[float, Mapping[str, float]] = 0.5,
                    iou_threshold: float = 0.5, method: str = 'nms', class_agnostic: bool = True,
                    modalities: Optional[Sequence[str]] = None,
                    modality_weights: Optional[Mapping[str, float]] = None,
                    max_detections: Optional[int] = None) -> FusedDetections:
    """Fuse the detections of several teachers of one frame into pseudo-labels.

    Args:
        detections: modality -> teacher result: ``dict(boxes, scores[, labels, attention])``
            as returned by ``TeacherDetector.predict``, or a ``(boxes, scores[, labels])``
            tuple; ``None`` marks a teacher that delivered nothing (missing / late).
        score_thresholds: one threshold for all, or modality -> threshold; a box is
            kept when ``score >= threshold``.
        iou_threshold: NMS suppression (``IoU > thr``) / WBF clustering threshold (paper 0.5).
        method: ``'nms'`` (paper) or ``'wbf'``.
        class_agnostic: NMS / clustering over all labels together (paper); otherwise per label.
        modalities: order of the ``support`` columns (default: rgb, depth, thermal, then
            any other key of ``detections`` in insertion order); a modality missing from
            ``detections`` counts as not present.
        modality_weights: WBF only: scores of modality m are multiplied by its weight
            and ``T`` becomes the sum of the weights of the present teachers.
        max_detections: keep at most this many fused boxes (highest score first).

    Returns a :class:`FusedDetections`, boxes sorted by descending fused score.
    """
    if method not in ('nms', 'wbf'):
        raise ValueError(f"method must be 'nms' or 'wbf', got {method!r}")
    if modalities is None:
        modalities = list(DEFAULT_MODALITIES) + [m for m in detections if m not in DEFAULT_MODALITIES]
    modalities = tuple(modalities)
    extra = set(detections) - set(modalities)
    if extra:
        raise ValueError(f'detections for {sorted(extra)} not in modalities {modalities}')
    nm = len(modalities)
    present = np.array([detections.get(m) is not None for m in modalities], dtype=bool)

    all_b, all_s, all_l, all_m = [], [], [], []
    attention = {}
    for mi, m in enumerate(modalities):
        det = detections.get(m)
        if det is None:
            continue
        b, s, l, att = _unpack(det)
        if att is not None:
            attention[m] = att
        keep = s >= _threshold_for(score_thresholds, m)
        all_b.append(b[keep])
        all_s.append(s[keep])
        all_l.append(l[keep])
        all_m.append(np.full(int(keep.sum()), mi, np.int64))
    b = np.concatenate(all_b) if all_b else np.zeros((0, 4))
    s = np.concatenate(all_s) if all_s else np.zeros(0)
    l = np.concatenate(all_l) if all_l else np.zeros(0, np.int64)
    src = np.concatenate(all_m) if all_m else np.zeros(0, np.int64)

    if len(b) == 0:
        return FusedDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                               modalities, np.zeros((0, nm), bool), np.zeros((0, nm), np.float32),
                               present, attention)

    groups = np.zeros(len(b), np.int64) if class_agnostic else l
    if method == 'nms':
        if class_agnostic:
            keep = nms(b, s, iou_threshold)
        else:
            span = float(np.abs(b).max()) * 4.0 + 1.0
            keep = nms(b + groups[:, None] * span, s, iou_threshold)
        ious = iou_matrix(b, b[keep])                                    # (n, K)
        same = groups[:, None] == groups[keep][None, :]
        # kept boxes are in descending score order: the first overlapping kept box is
        # the one that suppressed the box in greedy NMS
        over = (ious > iou_threshold) & same
        owner = np.where(over.any(axis=1), over.argmax(axis=1), -1)
        owner[keep] = np.arange(len(keep))
        fb, fs, fl = b[keep], s[keep], l[keep]
    else:
        w = np.ones(nm) if modality_weights is None else \
            np.array([float(modality_weights.get(m, 1.0)) for m in modalities])
        s_w = s * w[src]
        t = float(w[present].sum()) if present.any() else 1.0
        fb, fs, members = weighted_boxes_fusion(b, s_w, iou_threshold, num_models=t, groups=groups)
        # label of a cluster: that of its best member (the first visited, members are in
        # descending score order)
        fl = l[np.array([m[0] for m in members], np.int64)]
        s = s_w
        owner = np.full(len(b), -1, np.int64)
        for k, m in enumerate(members):
            owner[m] = k

    support = np.zeros((len(fb), nm), bool)
    support_scores = np.zeros((len(fb), nm), np.float32)
    has = owner >= 0
    support[owner[has], src[has]] = True
    np.maximum.at(support_scores, (owner[has], src[has]), s[has].astype(np.float32))
    order = np.argsort(-np.asarray(fs), kind='stable')
    if max_detections is not None:
        order = order[:max_detections]
    return FusedDetections(np.asarray(fb, np.float32)[order], np.asarray(fs, np.float32)[order],
                           np.asarray(fl, np.int64)[order], modalities, support[order],
                           support_scores[order], present, attention)
