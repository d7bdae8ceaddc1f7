"""Detection head family shared by the teacher detectors and the audio student.

ROS-free. The head is anchor-free (FCOS-style): every cell of every pyramid
level (P3-P5, strides 8/16/32 by default) predicts

* ``K`` class logits (sigmoid, focal loss with alpha 0.25 and gamma 2, bias
  initialised to the prior probability ``pi``: ``b = -log((1 - pi) / pi)``);
* four distances ``l, t, r, b`` in **pixels** from the cell centre to the box
  sides, ``d = stride * exp(s_level * raw)`` with a learnable scale per level;
* optionally one centerness logit.

Cell ``(i, j)`` of a level with stride ``s`` has its centre at
``((j + 0.5) * s, (i + 0.5) * s)`` in image pixels. When flattened, cells are
ordered level by level (P3 first) and row-major within a level.

Output of :class:`DetectionHead` (a plain dict, so that it can cross module and
package boundaries)::

    {
      'cls_logits': [ (B, K, H_l, W_l) float tensor per level ],
      'box_ltrb':   [ (B, 4, H_l, W_l) float tensor per level, pixels, > 0 ],
      'centerness': [ (B, 1, H_l, W_l) logits per level ]  or None,
      'strides':    (8, 16, 32),
      'image_size': (W, H)   # pixels of the image the boxes refer to
    }

Targets come from :func:`assign_targets`, the loss from :func:`detection_loss`,
detections from :func:`decode`. :func:`attention_maps` gives the channel-mean
attention maps used by the MTA distillation loss.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdistill_common.boxes import as_boxes, clip as clip_boxes, nms

__all__ = [
    'DEFAULT_STRIDES', 'DEFAULT_SIZE_RANGES', 'DetectionHead', 'Scale',
    'feature_sizes_for', 'cell_centers', 'flatten_outputs', 'assign_targets',
    'QUALITY_TARGETS', 'sigmoid_focal_loss', 'quality_focal_loss', 'paired_iou', 'giou_loss', 'detection_loss', 'decode', 'decode_flat',
    'attention_maps', 'group_norm',
]

DEFAULT_STRIDES: Tuple[int, ...] = (8, 16, 32)
#: FCOS size ranges: a cell at level l may regress a box only when
#: ``lo_l <= max(l, t, r, b) <= hi_l`` (FCOS uses 8 * stride as the boundaries).
DEFAULT_SIZE_RANGES: Tuple[Tuple[float, float], ...] = ((0.0, 64.0), (64.0, 128.0), (128.0, math.inf))

_MAX_EXP = 8.0  # clamp of the exponent of the box branch (stride * e^8 ~ 3000 * stride pixels)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (batch-size independent; fine for batch 1)."""
    groups = 8
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class DetectionHead(nn.Module):
    """FCOS-style head applied with shared weights to every pyramid level.

    Args:
        in_channels: channels of every input feature map (all levels equal).
        num_classes: ``K`` (1 for the class-agnostic 'vehicle').
        width: channels of the conv towers (default ``in_channels``).
        num_convs: depth of each tower (classification and box towers are separate).
        strides: stride of each input level, finest first.
        centerness: add the centerness branch (on the box tower).
        prior_prob: initial foreground probability of the class logits.
    """

    def __init__(self, in_channels: int, num_classes: int = 1, width: Optional[int] = None,
                 num_convs: int = 2, strides: Sequence[int] = DEFAULT_STRIDES,
                 centerness: bool = True, prior_prob: float = 0.01):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        width = int(width or in_channels)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.strides = tuple(int(s) for s in strides)
        self.use_centerness = bool(centerness)

        def tower() -> nn.Sequential:
            layers: List[nn.Module] = []
            c = in_channels
            for _ in range(num_convs):
                layers += [nn.Conv2d(c, width, 3, padding=1), group_norm(width), nn.ReLU(inplace=True)]
                c = width
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.box_tower = tower()
        out_c = width if num_convs > 0 else in_channels
        self.cls_out = nn.Conv2d(out_c, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(out_c, 4, 3, padding=1)
        self.ctr_out = nn.Conv2d(out_c, 1, 3, padding=1) if centerness else None
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1.0 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[torch.Tensor],
                image_size: Optional[Tuple[int, int]] = None) -> Dict[str, object]:
        """Run the head on ``features`` (one (B, C, H_l, W_l) map per stride).

        ``image_size`` = (W, H) of the image the boxes refer to; default: the
        finest level's size times its stride.
        """
        if len(features) != len(self.strides):
            raise ValueError(f'expected {len(self.strides)} feature maps (strides {self.strides}), '
                             f'got {len(features)}')
        cls, box, ctr = [], [], []
        for f, stride, scale in zip(features, self.strides, self.scales):
            if f.dim() != 4 or f.shape[1] != self.in_channels:
                raise ValueError(f'feature map must be (B, {self.in_channels}, H, W), got {tuple(f.shape)}')
            c = self.cls_tower(f)
            b = self.box_tower(f)
            # the output convs run in float32 even under bfloat16 autocast: box sides up to the
            # image width need more than bfloat16's 8 mantissa bits (0.4 %: 3 px at 768 px)
            with torch.autocast(f.device.type, enabled=False):
                c, b = c.float(), b.float()
                cls.append(self.cls_out(c))
                raw = scale(self.box_out(b)).clamp(max=_MAX_EXP)
                box.append(torch.exp(raw) * float(stride))
                if self.ctr_out is not None:
                    ctr.append(self.ctr_out(b))
        if image_size is None:
            f0 = features[0]
            image_size = (int(f0.shape[-1]) * self.strides[0], int(f0.shape[-2]) * self.strides[0])
        return {'cls_logits': cls, 'box_ltrb': box, 'centerness': ctr if self.ctr_out is not None else None,
                'strides': self.strides, 'image_size': (int(image_size[0]), int(image_size[1]))}


# ---------------------------------------------------------------------------------------------
# geometry of the cell grid

def feature_sizes_for(image_size: Tuple[int, int], strides: Sequence[int] = DEFAULT_STRIDES
                      ) -> List[Tuple[int, int]]:
    """(H_l, W_l) per level for an image of ``image_size`` = (W, H): ``ceil(H / s), ceil(W / s)``.

    This equals the size produced by a chain of stride-2 convolutions with padding 1.
    """
    w, h = int(image_size[0]), int(image_size[1])
    return [(int(math.ceil(h / s)), int(math.ceil(w / s))) for s in strides]


def cell_centers(feature_sizes: Sequence[Tuple[int, int]], strides: Sequence[int]
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell centres of all levels, flattened in head order.

    Returns ``(points (N, 2) float64 x/y pixels, point_stride (N,), point_level (N,))``.
    """
    pts, st, lv = [], [], []
    for level, ((h, w), s) in enumerate(zip(feature_sizes, strides)):
        ys, xs = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing='ij')
        pts.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        st.append(np.full(h * w, float(s)))
        lv.append(np.full(h * w, level, dtype=np.int64))
    return np.concatenate(pts), np.concatenate(st), np.concatenate(lv)


def flatten_outputs(outputs: Dict[str, object]) -> Dict[str, torch.Tensor]:
    """Flatten per-level head outputs to ``cls (B, N, K)``, ``ltrb (B, N, 4)``, ``ctr (B, N)`` or None."""
    def flat(maps):
        return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)

    out = {'cls': flat(outputs['cls_logits']), 'ltrb': flat(outputs['box_ltrb']), 'ctr': None}
    if outputs.get('centerness') is not None:
        out['ctr'] = flat(outputs['centerness'])[..., 0]
    out['feature_sizes'] = [tuple(int(v) for v in m.shape[-2:]) for m in outputs['cls_logits']]
    return out


# ---------------------------------------------------------------------------------------------
# target assignment

def assign_targets(boxes_list: Sequence, image_size: Tuple[int, int],
                   strides: Sequence[int] = DEFAULT_STRIDES, labels_list: Optional[Sequence] = None,
                   num_classes: int = 1, size_ranges: Optional[Sequence[Tuple[float, float]]] = None,
                   center_radius: Optional[float] = 1.5,
                   feature_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> Dict[str, torch.Tensor]:
    """FCOS target assignment for a batch.

    A cell at point p of level l (stride s) is positive for GT box g when

    1. p lies inside g and, with centre sampling (``center_radius`` not None),
       inside the square of half-side ``center_radius * s`` around g's centre;
    2. ``lo_l <= max(l, t, r, b) <= hi_l`` (``size_ranges``, FCOS defaults 0/64/128/inf);

    among several candidate boxes the one with the smallest area wins. A GT box
    that gets no positive cell (smaller than a stride, or degenerate placement)
    is given the finest-level cell nearest to its centre, unless that cell is
    already taken by a smaller box — so tiny far vehicles are still learned.

    Args:
        boxes_list: per image an (N_i, 4) xyxy pixel array (may be empty).
        image_size: (W, H) in pixels.
        labels_list: per image (N_i,) class indices in ``[0, num_classes)`` (default all 0).
        feature_sizes: (H_l, W_l) per level when they differ from ``ceil(H/s), ceil(W/s)``.

    Returns a dict of tensors, N = number of cells over all levels:
        ``cls`` (B, N, K) float one-hot (all zero = background), ``pos`` (B, N) bool,
        ``boxes`` (B, N, 4) matched GT box (xyxy pixels, 0 where negative),
        ``ltrb`` (B, N, 4) distances from the cell centre to the matched box sides,
        ``centerness`` (B, N) ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``,
        ``matched`` (B, N) long index of the matched GT box or -1,
        ``points`` (N, 2), ``point_strides`` (N,).
    """
    strides = tuple(int(s) for s in strides)
    if size_ranges is None:
        if len(strides) == len(DEFAULT_SIZE_RANGES):
            size_ranges = DEFAULT_SIZE_RANGES
        else:  # FCOS rule: boundaries at 8 * stride
            edges = [0.0] + [8.0 * s for s in strides[:-1]] + [math.inf]
            size_ranges = list(zip(edges[:-1], edges[1:]))
    if len(size_ranges) != len(strides):
        raise ValueError(f'{len(size_ranges)} size ranges for {len(strides)} strides')
    if feature_sizes is None:
        feature_sizes = feature_sizes_for(image_size, strides)
    points, pstride, plevel = cell_centers(feature_sizes, strides)
    lo = np.array([r[0] for r in size_ranges], dtype=np.float64)[plevel]
    hi = np.array([r[1] for r in size_ranges], dtype=np.float64)[plevel]
    n = len(points)
    bsz = len(boxes_list)
    if labels_list is not None and len(labels_list) != bsz:
        raise ValueError(f'{bsz} box arrays but {len(labels_list)} label arrays')

    cls_t = np.zeros((bsz, n, num_classes), dtype=np.float32)
    pos_t = np.zeros((bsz, n), dtype=bool)
    box_t = np.zeros((bsz, n, 4), dtype=np.float32)
    ltrb_t = np.zeros((bsz, n, 4), dtype=np.float32)
    ctr_t = np.zeros((bsz, n), dtype=np.float32)
    match_t = np.full((bsz, n), -1, dtype=np.int64)
    fine = np.flatnonzero(plevel == 0)

    for bi, boxes in enumerate(boxes_list):
        g = as_boxes(boxes)
        if len(g) == 0:
            continue
        if not np.all(np.isfinite(g)):
            raise ValueError('GT boxes contain NaN or inf')
        if labels_list is None:
            labels = np.zeros(len(g), dtype=np.int64)
        else:
            labels = np.asarray(labels_list[bi], dtype=np.int64).reshape(-1)
            if len(labels) != len(g):
                raise ValueError(f'image {bi}: {len(g)} boxes but {len(labels)} labels')
            if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f'image {bi}: labels must lie in [0, {num_classes}), got {labels}')
        x, y = points[:, 0:1], points[:, 1:2]                       # (N, 1)
        l = x - g[None, :, 0]
        t = y - g[None, :, 1]
        r = g[None, :, 2] - x
        b = g[None, :, 3] - y
        ltrb = np.stack([l, t, r, b], axis=2)                        # (N, G, 4)
        inside = ltrb.min(axis=2) > 0
        if center_radius is not None:
            cx = (g[:, 0] + g[:, 2]) / 2
            cy = (g[:, 1] + g[:, 3]) / 2
            rad = center_radius * pstride[:, None]
            cx1 = np.maximum(cx[None] - rad, g[None, :, 0])
            cy1 = np.maximum(cy[None] - rad, g[None, :, 1])
            cx2 = np.minimum(cx[None] + rad, g[None, :, 2])
            cy2 = np.minimum(cy[None] + rad, g[None, :, 3])
            inside &= (x > cx1) & (x < cx2) & (y > cy1) & (y < cy2)
        max_reg = ltrb.max(axis=2)
        cand = inside & (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
        areas = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
        cost = np.where(cand, areas[None, :], np.inf)
        best = cost.argmin(axis=1)
        best_cost = cost[np.arange(n), best]
        match = np.where(np.isfinite(best_cost), best, -1)
        # fallback for GT boxes without any positive cell
        for gi in np.flatnonzero(~np.isin(np.arange(len(g)), match)):
            if areas[gi] <= 0:
                continue
            c = np.array([(g[gi, 0] + g[gi, 2]) / 2, (g[gi, 1] + g[gi, 3]) / 2])
            k = fine[np.argmin(((points[fine] - c) ** 2).sum(axis=1))]
            if match[k] < 0 or areas[match[k]] > areas[gi]:
                match[k] = gi
        posm = match >= 0
        idx = np.flatnonzero(posm)
        mi = match[idx]
        pos_t[bi, idx] = True
        match_t[bi, idx] = mi
        cls_t[bi, idx, labels[mi]] = 1.0
        box_t[bi, idx] = g[mi]
        lt = ltrb[idx, mi]
        ltrb_t[bi, idx] = lt
        lc = np.clip(lt, 0, None)
        with np.errstate(invalid='ignore', divide='ignore'):
            lr = np.minimum(lc[:, 0], lc[:, 2]) / np.maximum(lc[:, 0], lc[:, 2])
            tb = np.minimum(lc[:, 1], lc[:, 3]) / np.maximum(lc[:, 1], lc[:, 3])
            ctr = np.sqrt(np.nan_to_num(lr) * np.nan_to_num(tb))
        # a fallback cell outside its (tiny) box would get centerness 0: it is the box's
        # only cell, so it is trained as a perfect centre instead
        ctr = np.where(lt.min(axis=1) > 0, ctr, 1.0)
        ctr_t[bi, idx] = ctr

    return {'cls': torch.from_numpy(cls_t), 'pos': torch.from_numpy(pos_t),
            'boxes': torch.from_numpy(box_t), 'ltrb': torch.from_numpy(ltrb_t),
            'centerness': torch.from_numpy(ctr_t), 'matched': torch.from_numpy(match_t),
            'points': torch.from_numpy(points.astype(np.float32)),
            'point_strides': torch.from_numpy(pstride.astype(np.float32))}


class TargetCache:
    """:func:`assign_targets` for single-class batches, memoised per image by the bytes of its
    boxes: a training run sees the same frames (mirrored or not) every epoch, and the assignment
    was a fifth of the student's step. Only the positive cells of each image are kept (a few of
    about a thousand), and the batch is rebuilt by scattering them: equal to ``assign_targets``
    on the whole batch."""

    _ROWS = ('cls', 'boxes', 'ltrb', 'centerness', 'matched')

    def __init__(self, image_size: Tuple[int, int], strides: Sequence[int] = DEFAULT_STRIDES):
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.strides = tuple(int(s) for s in strides)
        self._cells: Dict[bytes, Tuple[torch.Tensor, ...]] = {}
        self._grid: Optional[Dict[str, torch.Tensor]] = None

    def __len__(self) -> int:
        return len(self._cells)

    def _image(self, boxes) -> Tuple[torch.Tensor, ...]:
        g = np.ascontiguousarray(as_boxes(boxes), dtype=np.float64)
        key = g.tobytes()
        hit = self._cells.get(key)
        if hit is None:
            t = assign_targets([g], self.image_size, self.strides)
            if self._grid is None:
                self._grid = {k: t[k] for k in ('points', 'point_strides')}
            idx = torch.nonzero(t['pos'][0]).squeeze(1)
            hit = self._cells[key] = (idx, *(t[k][0, idx] for k in self._ROWS))
        return hit

    def __call__(self, boxes_list: Sequence) -> Dict[str, torch.Tensor]:
        cells = [self._image(b) for b in boxes_list]
        if self._grid is None:                      # no image seen yet: an empty batch
            return assign_targets(boxes_list, self.image_size, self.strides)
        n, bsz = len(self._grid['points']), len(cells)
        out = {'cls': torch.zeros(bsz, n, 1), 'pos': torch.zeros(bsz, n, dtype=torch.bool),
               'boxes': torch.zeros(bsz, n, 4), 'ltrb': torch.zeros(bsz, n, 4),
               'centerness': torch.zeros(bsz, n), 'matched': torch.full((bsz, n), -1, dtype=torch.int64)}
        for bi, (idx, *rows) in enumerate(cells):
            out['pos'][bi, idx] = True
            for k, v in zip(self._ROWS, rows):
                out[k][bi, idx] = v
        return {**out, **self._grid}


# ---------------------------------------------------------------------------------------------
# losses

#: what :func:`detection_loss` ranks a vehicle's boxes by (its ``quality`` argument)
QUALITY_TARGETS = ('centerness', 'iou', 'iou_focal')


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: str = 'sum') -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), elementwise then reduced.

    With ``p = sigmoid(x)``, target ``y`` in {0, 1}::

        p_t     = p * y + (1 - p) * (1 - y)
        alpha_t = alpha * y + (1 - alpha) * (1 - y)        (alpha < 0 disables the weighting)
        FL      = -alpha_t * (1 - p_t) ** gamma * log(p_t)

    ``-log(p_t)`` is computed as ``binary_cross_entropy_with_logits(x, y)`` for stability.
    ``reduction``: 'none', 'sum' or 'mean'.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def quality_focal_loss(logits: torch.Tensor, targets: torch.Tensor, beta: float = 2.0,
                       reduction: str = 'sum') -> torch.Tensor:
    """Quality focal loss (Li et al. 2020, Generalized Focal Loss), elementwise then reduced:
    ``BCE(x, y) * |y - sigmoid(x)| ** beta`` with a soft target ``y`` in [0, 1].

    With ``y`` a positive cell's IoU (0 elsewhere) the class score learns to rank a vehicle's
    boxes by how well they fit it, not only whether a vehicle is there. Written here because
    torchvision has only the binary focal loss (mmdet, which has this one, is not a dependency).
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction='none') \
        * (targets - torch.sigmoid(logits)).abs().pow(beta)
    return _reduce(loss, reduction)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == 'sum':
        return loss.sum()
    if reduction == 'mean':
        return loss.mean()
    if reduction == 'none':
        return loss
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def paired_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of ``a[i]`` with ``b[i]`` (both (N, 4) x1 y1 x2 y2): the diagonal of
    ``torchvision.ops.box_iou`` without its N x N matrix."""
    inter, union = _paired_inter_union(a, b)
    return inter / (union + eps)


def _paired_inter_union(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union areas of ``a[i]`` and ``b[i]`` ((N, 4) x1 y1 x2 y2)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter, area_a + area_b - inter


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Elementwise generalized-IoU loss ``1 - GIoU`` of (M, 4) xyxy boxes.

    ``GIoU = IoU - (|C| - |A u B|) / |C|`` with C the smallest box enclosing A and B.
    """
    inter, union = _paired_inter_union(pred, target)
    iou = inter / (union + eps)
    elt = torch.min(pred[:, :2], target[:, :2])
    erb = torch.max(pred[:, 2:], target[:, 2:])
    ewh = (erb - elt).clamp(min=0)
    enclose = ewh[:, 0] * ewh[:, 1]
    giou = iou - (enclose - union) / (enclose + eps)
    return 1.0 - giou


def detection_loss(outputs: Dict[str, object], targets: Dict[str, torch.Tensor],
                   box_loss: str = 'giou', alpha: float = 0.25, gamma: float = 2.0,
                   focal_weight: float = 1.0, box_weight: float = 1.0,
                   centerness_weight: float = 1.0, quality: str = 'centerness') -> Dict[str, torch.Tensor]:
    """Detection loss of head ``outputs`` against :func:`assign_targets` ``targets``.

    Returns a dict of scalar tensors, with ``P`` the set of positive cells over the
    whole batch and ``n_pos = max(|P|, 1)``:

    * ``focal``  = (1 / n_pos) * sum over all cells and classes of FL(cls_logit, one_hot)
      (see :func:`sigmoid_focal_loss`, alpha 0.25, gamma 2);
    * ``box``    = sum_{i in P} w_i * L_box(i) / sum_{i in P} w_i, with ``w_i`` the
      centerness target when the head has a centerness branch, else 1; L_box is
      ``1 - GIoU(pred_box_i, gt_box_i)`` (``box_loss='giou'``, pred box = cell centre
      -/+ predicted ltrb) or ``sum_k |ltrb_pred - ltrb_gt|_k / stride_i``
      (``box_loss='l1'``, distances in strides); 0 when P is empty;
    * ``centerness`` = mean_{i in P} BCE(ctr_logit_i, centerness_target_i); 0 without the branch;
    * ``total``  = focal_weight * focal + box_weight * box + centerness_weight * centerness;
    * ``num_pos`` = |P| (float tensor, for logging).

    ``quality`` makes the scores follow localisation (``box`` keeps the centerness weights):

    * ``'centerness'``: FCOS, as above;
    * ``'iou'``: the centerness branch learns the IoU of the cell's predicted box with its
      label box (detached, at least 0.01), as IoU-aware RetinaNet does;
    * ``'iou_focal'``: that, and the class target of a positive cell is that IoU too, learnt
      with :func:`quality_focal_loss` (beta = ``gamma``, no alpha) in place of the focal loss
      (Generalized Focal Loss).
    """
    flat = flatten_outputs(outputs)
    cls, ltrb, ctr = flat['cls'], flat['ltrb'], flat['ctr']
    if cls.shape[:2] != targets['cls'].shape[:2] or cls.shape[2] != targets['cls'].shape[2]:
        raise ValueError(f'head outputs {tuple(cls.shape)} (B, cells, classes) do not match targets '
                         f'{tuple(targets["cls"].shape)}: check image_size, strides, feature sizes and '
                         'num_classes')
    if quality not in QUALITY_TARGETS:
        raise ValueError(f'quality must be one of {QUALITY_TARGETS}, got {quality!r}')
    dev = cls.device
    pos = targets['pos'].to(dev)
    num_pos = pos.sum()
    n_pos = num_pos.clamp(min=1).to(cls.dtype)
    cls_target = targets['cls'].to(dev, cls.dtype)

    zero = cls.sum() * 0.0
    box = zero
    ctr_loss = zero
    if bool(num_pos > 0):
        pts = targets['points'].to(dev, ltrb.dtype)
        pts = pts.unsqueeze(0).expand(pos.shape[0], -1, -1)[pos]
        pred_ltrb = ltrb[pos]
        ctr_target = targets['centerness'].to(dev, ltrb.dtype)[pos]
        pred_boxes = torch.cat([pts - pred_ltrb[:, :2], pts + pred_ltrb[:, 2:]], dim=1)
        label_boxes = targets['boxes'].to(dev, ltrb.dtype)[pos]
        if quality != 'centerness':
            with torch.no_grad():
                iou = paired_iou(pred_boxes, label_boxes).clamp(min=0.01)
        if quality == 'iou_focal':
            cls_target = cls_target.clone()
            cls_target[pos] = cls_target[pos] * iou[:, None]
        if box_loss == 'giou':
            per = giou_loss(pred_boxes, label_boxes)
        elif box_loss == 'l1':
            st = targets['point_strides'].to(dev, ltrb.dtype).unsqueeze(0).expand(pos.shape[0], -1)[pos]
            tgt = targets['ltrb'].to(dev, ltrb.dtype)[pos].clamp(min=0)
            per = ((pred_ltrb - tgt).abs() / st[:, None]).sum(dim=1)
        else:
            raise ValueError(f"box_loss must be 'giou' or 'l1', got {box_loss!r}")
        if ctr is not None:
            w = ctr_target
            box = (per * w).sum() / w.sum().clamp(min=1e-6)
            ctr_loss = F.binary_cross_entropy_with_logits(ctr[pos], ctr_target if quality == 'centerness' else iou,
                                                          reduction='mean')
        else:
            box = per.mean()
    if quality == 'iou_focal':
        focal = quality_focal_loss(cls, cls_target, gamma, 'sum') / n_pos
    else:
        focal = sigmoid_focal_loss(cls, cls_target, alpha, gamma, 'sum') / n_pos
    total = focal_weight * focal + box_weight * box + centerness_weight * ctr_loss
    return {'focal': focal, 'box': box, 'centerness': ctr_loss, 'total': total,
            'num_pos': num_pos.to(cls.dtype).detach()}


# ---------------------------------------------------------------------------------------------
# inference

@torch.no_grad()
def decode(outputs: Dict[str, object], score_threshold: float = 0.3, nms_iou: float = 0.5,
           max_detections: int = 100, pre_nms_top_k: int = 200, class_agnostic_nms: bool = False
           ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Turn head outputs into detections, one ``(boxes, scores, labels)`` tuple per image.

    score = sigmoid(cls_logit) (times the centerness probability, then square-rooted,
    ``sqrt(p_cls * p_ctr)``, when the head has the centerness branch); cells with
    score >= ``score_threshold`` are kept (at most ``pre_nms_top_k`` per level), boxes
    ``(x - l, y - t, x + r, y + b)`` are clipped to the image, then greedy NMS at
    ``nms_iou`` per class (or over all classes with ``class_agnostic_nms``) and the
    ``max_detections`` best are returned, highest score first.

    Returns numpy arrays: boxes float32 (N, 4) xyxy pixels, scores float32 (N,),
    labels int64 (N,) class indices.
    """
    f = flatten_outputs(outputs)
    return decode_flat(f['cls'], f['ltrb'], f['ctr'], f['feature_sizes'], outputs['strides'],
                       outputs['image_size'], score_threshold=score_threshold,
                       nms_iou=nms_iou, max_detections=max_detections, pre_nms_top_k=pre_nms_top_k,
                       class_agnostic_nms=class_agnostic_nms)


_CENTERS: Dict[tuple, np.ndarray] = {}


def _points(feature_sizes: Sequence[Tuple[int, int]], strides: Sequence[int]) -> np.ndarray:
    """:func:`cell_centers`' points, kept per grid (read-only)."""
    key = (tuple(tuple(int(v) for v in hw) for hw in feature_sizes), tuple(float(s) for s in strides))
    pts = _CENTERS.get(key)
    if pts is None:
        pts = cell_centers(feature_sizes, strides)[0]
        pts.setflags(write=False)
        if len(_CENTERS) >= 64:
            _CENTERS.clear()
        _CENTERS[key] = pts
    return pts


def decode_flat(cls_logits, box_ltrb, centerness, feature_sizes: Sequence[Tuple[int, int]],
                strides: Sequence[int], image_size: Tuple[int, int], score_threshold: float = 0.3,
                nms_iou: float = 0.5, max_detections: int = 100, pre_nms_top_k: int = 200,
                class_agnostic_nms: bool = False) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`decode` of the flattened head outputs (:func:`flatten_outputs`' layout, the ONNX
    export's): ``cls_logits (B, N, K)``, ``box_ltrb (B, N, 4)``, ``centerness (B, N)`` or None,
    torch tensors or numpy arrays, cells level by level (row-major within a level)."""
    img_w, img_h = image_size
    cls = torch.as_tensor(cls_logits)
    prob = torch.sigmoid(cls.float())                                           # (B, N, K)
    if centerness is not None:
        prob = torch.sqrt(prob * torch.sigmoid(torch.as_tensor(centerness).float())[..., None])
    prob = prob.cpu().numpy()
    ltrb = box_ltrb.float().cpu().numpy() if torch.is_tensor(box_ltrb) else np.asarray(box_ltrb, np.float32)
    points = _points(feature_sizes, strides)
    starts = np.cumsum([0] + [h * w for h, w in feature_sizes])
    results = []
    for bi in range(prob.shape[0]):
        cell, lab = np.nonzero(prob[bi] >= score_threshold)                   # level by level
        if len(cell) == 0:
            results.append((np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)))
            continue
        sc = prob[bi][cell, lab]
        if len(sc) > pre_nms_top_k:
            # at most pre_nms_top_k per level: that level's best (stable), in score order
            bounds = np.searchsorted(cell, starts)
            sel = []
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                if hi - lo > pre_nms_top_k:
                    sel.append(lo + np.argsort(-sc[lo:hi], kind='stable')[:pre_nms_top_k])
                else:
                    sel.append(np.arange(lo, hi))
            sel = np.concatenate(sel)
            cell, lab, sc = cell[sel], lab[sel], sc[sel]
        d = ltrb[bi][cell]
        p = points[cell]
        bx = clip_boxes(np.concatenate([p - d[:, :2], p + d[:, 2:]], axis=1), img_w, img_h)
        sc = sc.astype(np.float64)
        lab = lab.astype(np.int64)
        if class_agnostic_nms:
            keep = nms(bx, sc, nms_iou)
        else:
            # offset trick: boxes of different classes never overlap
            off = lab[:, None].astype(np.float64) * (max(img_w, img_h) * 4.0 + 1.0)
            keep = nms(bx + off, sc, nms_iou)
        keep = keep[:max_detections]
        results.append((bx[keep].astype(np.float32), sc[keep].astype(np.float32), lab[keep]))
    return results


def attention_maps(features: Sequence[torch.Tensor], r: float = 2.0) -> List[torch.Tensor]:
    """Attention map per level: ``q = mean_c |F_c|^r``, shape (B, H_l, W_l).

    This is the quantity MM-DistillNet's MTA loss compares (before normalisation).
    """
    return [f.abs().pow(r).mean(dim=1) for f in features]
