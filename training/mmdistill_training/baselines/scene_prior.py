"""Scene-prior baseline: the best fixed set of boxes, predicted identically for every frame.

Why: in a fixed camera set-up vehicles appear in a few places (lanes, parking rows), so a
detector that ignores its input can still score. Any audio model must beat this by a wide
margin; one that does not has learned where cars usually are, not where they are now (DESIGN
§7, issue 11).

Fit (training labels only, never test; the labels are the student's own supervision, the fused
pseudo-labels):

1. For each K in ``ks``: k-means (k-means++ initialisation, seeded, Lloyd iterations) of all
   training boxes in (x1, y1, x2, y2) pixel space gives K candidate boxes.
2. Score of a candidate = the fraction of training frames with a label box at IoU >= 0.5 with it
   (its precision as a constant detector; ranking by it is what maximises AP).
3. K is chosen by AP@0.5 on the validation labels (the training labels when there are none);
   ties go to the smaller K.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

from mmdistill_common.boxes import iou_matrix
from mmdistill_common.errors import ConfigError

__all__ = ['ScenePrior', 'DEFAULT_KS']

DEFAULT_KS = (1, 2, 3, 4, 6, 8, 12, 16, 24)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; ``k`` <= number of distinct points."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        if d.sum() <= 0:
            break
        centres.append(x[rng.choice(len(x), p=d / d.sum())])
    c = np.asarray(centres, np.float64)
    for _ in range(iterations):
        assign = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        new = np.array([x[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(len(c))])
        if np.allclose(new, c):
            break
        c = new
    return c


def _hit_rate(boxes: np.ndarray, labels: Sequence[np.ndarray]) -> np.ndarray:
    """Per candidate box, the fraction of frames holding a label at IoU >= 0.5 with it."""
    hits = np.zeros(len(boxes))
    for lab in labels:
        lab = np.asarray(lab, np.float64).reshape(-1, 4)
        if len(lab):
            hits += iou_matrix(boxes, lab).max(axis=1) >= 0.5
    return hits / max(1, len(labels))


@dataclass
class ScenePrior:
    """A fixed set of boxes with scores; :meth:`predict` returns them for any frame."""
    boxes: np.ndarray
    scores: np.ndarray
    selection: Optional[Dict[str, float]] = None     # K -> AP@0.5 on the selection labels

    @classmethod
    def fit(cls, train_labels: Sequence[np.ndarray], val_labels: Optional[Sequence[np.ndarray]] = None,
            ks: Sequence[int] = DEFAULT_KS, seed: int = 0) -> 'ScenePrior':
        """Fit on per-frame training label boxes; choose K on ``val_labels`` (see the module docstring)."""
        from ..metrics import detection_ap
        pooled = np.concatenate([np.asarray(b, np.float64).reshape(-1, 4) for b in train_labels] or
                                [np.zeros((0, 4))])
        if not len(pooled):
            raise ConfigError('the scene-prior baseline needs training labels; the training split has no box')
        select = list(val_labels) if val_labels is not None and len(val_labels) else list(train_labels)
        gts = [{'boxes': np.asarray(b, np.float64).reshape(-1, 4)} for b in select]
        n_distinct = len(np.unique(pooled, axis=0))
        best, table = None, {}
        for k in sorted({min(int(k), n_distinct) for k in ks if int(k) >= 1}):
            c = _kmeans(pooled, k, np.random.default_rng(seed))
            s = _hit_rate(c, train_labels)
            ap = detection_ap([{'boxes': c, 'scores': s}] * len(gts), gts, per_class=False)['AP50']
            ap = 0.0 if np.isnan(ap) else float(ap)
            table[str(k)] = ap
            if best is None or ap > best[0]:
                best = (ap, c, s)
        return cls(best[1], best[2], table)

    def predict(self, *_args) -> dict:
        """The fixed boxes (a copy), whatever the input."""
        return {'boxes': self.boxes.copy(), 'scores': self.scores.copy(), 'labels': np.zeros(len(self.boxes), np.int64)}
