"""Axis-aligned box geometry shared by teachers, student, tracker and metrics.

Convention everywhere in mmdistill: boxes are float arrays of shape (N, 4) in
pixel coordinates of the reference (RGB) camera image, ``x1, y1, x2, y2`` with
x to the right and y down; (x2, y2) is exclusive in the sense that a box's area
is ``(x2 - x1) * (y2 - y1)``.
"""
from __future__ import annotations

import numpy as np

__all__ = ['as_boxes', 'area', 'iou_matrix', 'nms', 'xyxy_to_cxcywh', 'cxcywh_to_xyxy', 'clip']


def as_boxes(boxes) -> np.ndarray:
    """Return ``boxes`` as a float64 (N, 4) array (an empty input gives shape (0, 4))."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f'boxes must have shape (N, 4), got {arr.shape}')
    return arr


def area(boxes) -> np.ndarray:
    b = as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection areas of two (N, 4) xyxy arrays, shape (len(a), len(b))."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    return wh[..., 0] * wh[..., 1]


def iou_matrix(a, b) -> np.ndarray:
    """Pairwise intersection over union, shape (len(a), len(b)); 0 where both areas are 0."""
    a, b = as_boxes(a), as_boxes(b)
    inter = _intersection(a, b)
    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(invalid='ignore', divide='ignore'):
        out = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return out


def ioa_matrix(a, b) -> np.ndarray:
    """Pairwise intersection over the area of ``a``'s box, shape (len(a), len(b)); 0 where that
    area is 0. How much of a detection lies on a region: the overlap KITTI's DontCare and COCO's
    crowd regions are matched by (a small detection inside a large region has IoA 1, IoU small)."""
    a, b = as_boxes(a), as_boxes(b)
    inter = _intersection(a, b)
    aa = area(a)[:, None]
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(aa > 0, inter / np.where(aa > 0, aa, 1), 0.0)


#: boxes up to which :func:`nms` computes the full IoU matrix (cheaper than a loop of slices)
_NMS_FULL_MATRIX_UP_TO = 128


def nms(boxes, scores, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first.

    A box is suppressed when its IoU with an already kept box is strictly above
    ``iou_threshold``. Ties in score keep the earlier index (stable sort).
    """
    b = as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(b):
        raise ValueError(f'{len(b)} boxes but {len(s)} scores')
    order = np.argsort(-s, kind='stable')
    keep = []
    if len(b) <= _NMS_FULL_MATRIX_UP_TO:
        suppressed = np.zeros(len(b), dtype=bool)
        ious = iou_matrix(b, b)
        for i in order:
            if suppressed[i]:
                continue
            keep.append(i)
            suppressed |= ious[i] > iou_threshold
        return np.asarray(keep, dtype=np.int64)
    # many boxes (a decoder's 600 candidates, where the N x N matrix was most of a teacher's
    # inference time): the IoU of each kept box with the boxes still in play only, with the
    # arithmetic of iou_matrix, so the same boxes are kept
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    areas = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    with np.errstate(invalid='ignore', divide='ignore'):
        while len(order):
            i = order[0]
            keep.append(i)
            rest = order[1:]
            if not len(rest):
                break
            iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0)
            ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0)
            inter = iw * ih
            union = areas[i] + areas[rest] - inter
            iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
            order = rest[~(iou > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)


def xyxy_to_cxcywh(boxes) -> np.ndarray:
    b = as_boxes(boxes)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                     b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def cxcywh_to_xyxy(boxes) -> np.ndarray:
    b = as_boxes(boxes)
    half = b[:, 2:] / 2
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)


def clip(boxes, width: float, height: float) -> np.ndarray:
    """Clip boxes to the image ``[0, width] x [0, height]``."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b
