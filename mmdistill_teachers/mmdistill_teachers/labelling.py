"""Teacher outputs and pseudo-labels as messages: the one code path shared by the live nodes
(``teacher_node``, ``pseudo_label_node``) and offline labelling (``mmdistill label``).

Both paths go through the same message conversions, so a frame labelled live and the same
frame labelled offline give the same ``PseudoLabel`` (boxes travel as float64 centre/size in
``Detection2D``; the fusion sees exactly what a subscriber would see).

Per-box support is carried in ``Detection2D.id`` of the fused detections as the supporting
modalities joined by ``+`` (for example ``rgb+thermal``); ``PseudoLabel.modalities`` lists the
teachers that delivered this frame, in the order of ``PseudoLabel.attention``.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mmdistill_common.conversions import (attention_to_msg, detections_to_msg, make_header,
                                          msg_to_attention, msg_to_detections, stamp_to_ns)
from mmdistill_common.errors import ConfigError, InputError

from .fusion import DEFAULT_MODALITIES, FusedDetections, fuse_detections

__all__ = ['FusionConfig', 'PseudoLabelData', 'teacher_messages', 'run_teacher', 'detections_from_messages',
           'fuse_messages', 'parse_pseudo_label', 'PartialFrames', 'SUPPORT_SEPARATOR']

SUPPORT_SEPARATOR = '+'


@dataclass
class FusionConfig:
    """How teacher detections become pseudo-labels (DESIGN §7): per-teacher score threshold,
    then class-agnostic NMS at ``iou_threshold`` (paper) or weighted box fusion."""
    score_thresholds: Dict[str, float] = field(
        default_factory=lambda: {'rgb': 0.5, 'depth': 0.5, 'thermal': 0.5})
    iou_threshold: float = 0.5
    method: str = 'nms'
    modalities: Tuple[str, ...] = DEFAULT_MODALITIES
    max_detections: int = 50

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        if self.method not in ('nms', 'wbf'):
            raise ConfigError(f"fusion method must be 'nms' or 'wbf', got {self.method!r}")
        if not 0.0 < float(self.iou_threshold) <= 1.0:
            raise ConfigError(f'fusion iou_threshold must be in (0, 1], got {self.iou_threshold}')
        for m in self.modalities:
            t = self.score_thresholds.get(m)
            if t is None or not 0.0 <= float(t) <= 1.0:
                raise ConfigError(f'score threshold for {m!r} must be in [0, 1], got {t!r}')


@dataclass
class PseudoLabelData:
    """A parsed ``PseudoLabel``: boxes float64 (N, 4) xyxy, scores (N,), labels (class ids),
    ``support`` per box the list of supporting modalities, ``modalities`` the teachers present,
    ``attention`` modality -> [P3, P4, P5] float32 maps."""
    stamp_ns: int
    boxes: np.ndarray
    scores: np.ndarray
    labels: List[str]
    support: List[List[str]]
    modalities: List[str]
    attention: Dict[str, List[np.ndarray]]


def teacher_messages(result: Mapping, modality: str, stamp_ns: int, strides: Sequence[int],
                     class_names: Sequence[str] = ('vehicle',), frame_id: str = 'camera'):
    """One teacher's ``predict`` result for one frame -> ``(Detection2DArray, AttentionPyramid)``."""
    labels = [class_names[int(k)] for k in np.asarray(result['labels']).reshape(-1)]
    det = detections_to_msg(result['boxes'], result['scores'], labels, stamp_ns=stamp_ns,
                            frame_id=frame_id)
    att = attention_to_msg(result['attention'], strides, modality, stamp_ns=stamp_ns,
                           frame_id=frame_id)
    return det, att


def run_teacher(teacher, images: Sequence[np.ndarray], stamps_ns: Sequence[int], frame_ids: Sequence[str],
                score_threshold: Optional[float] = None, nms_iou: Optional[float] = None,
                max_detections: Optional[int] = None) -> List[Tuple[object, object]]:
    """Run one teacher on a batch of images -> per image ``(Detection2DArray, AttentionPyramid)``.

    The live ``teacher_node`` (batches of one) and ``mmdistill label`` (larger batches) both
    call this, so thresholds and conversions cannot drift apart. ``None`` thresholds take the
    values stored with the weights. Raises :class:`InputError` for an unusable image."""
    if not (len(images) == len(stamps_ns) == len(frame_ids)):
        raise ValueError('images, stamps_ns and frame_ids must have the same length')
    kwargs = {}
    if score_threshold is not None:
        kwargs['score_threshold'] = float(score_threshold)
    if nms_iou is not None:
        kwargs['nms_iou'] = float(nms_iou)
    if max_detections is not None:
        kwargs['max_detections'] = int(max_detections)
    results = teacher.predict(list(images), **kwargs)
    strides = getattr(getattr(teacher, 'config', None), 'strides', (8, 16, 32))
    return [teacher_messages(r, teacher.modality, int(t), strides, teacher.class_names, frame_id=f)
            for r, t, f in zip(results, stamps_ns, frame_ids)]


def detections_from_messages(det_msg, att_msg=None, class_names: Sequence[str] = ('vehicle',)) -> dict:
    """``Detection2DArray`` (+ ``AttentionPyramid``) -> the dict ``fuse_detections`` takes.

    Class ids not in ``class_names`` are refused with :class:`InputError`."""
    d = msg_to_detections(det_msg)
    index = {c: i for i, c in enumerate(class_names)}
    try:
        labels = np.array([index[c] for c in d.labels], np.int64)
    except KeyError as e:
        raise InputError(f'teacher detection has class {e.args[0]!r}, expected one of '
                         f'{list(class_names)}') from None
    out = {'boxes': d.boxes, 'scores': d.scores, 'labels': labels}
    if att_msg is not None:
        out['attention'] = msg_to_attention(att_msg)
    return out


def fuse_messages(stamp_ns: int, det_msgs: Mapping[str, object], att_msgs: Mapping[str, object],
                  config: FusionConfig, class_names: Sequence[str] = ('vehicle',),
                  frame_id: str = 'camera') -> Tuple[object, FusedDetections]:
    """Fuse the teachers' messages of one frame into a ``PseudoLabel``.

    ``det_msgs``/``att_msgs``: modality -> message, or None / absent for a teacher that did
    not deliver (missing or late). Returns ``(PseudoLabel, FusedDetections)``."""
    from mmdistill_msgs.msg import PseudoLabel

    dets: Dict[str, Optional[dict]] = {}
    for m in config.modalities:
        dm = det_msgs.get(m)
        dets[m] = None if dm is None else detections_from_messages(dm, att_msgs.get(m), class_names)
    fused = fuse_detections(dets, score_thresholds=config.score_thresholds,
                            iou_threshold=config.iou_threshold, method=config.method,
                            modalities=config.modalities, max_detections=config.max_detections)
    support = [SUPPORT_SEPARATOR.join(fused.supporting_modalities(i)) for i in range(len(fused))]
    msg = PseudoLabel(header=make_header(stamp_ns, frame_id))
    msg.detections = detections_to_msg(fused.boxes, fused.scores,
                                       [class_names[int(k)] for k in fused.labels], ids=support,
                                       stamp_ns=stamp_ns, frame_id=frame_id)
    for m, ok in zip(fused.modalities, fused.present):
        if not ok:
            continue
        msg.modalities.append(m)
        att = att_msgs.get(m)
        if att is None:
            raise InputError(f'teacher {m!r} delivered detections but no attention')
        msg.attention.append(att)
    return msg, fused


def parse_pseudo_label(msg) -> PseudoLabelData:
    """``PseudoLabel`` -> :class:`PseudoLabelData` (checks that modalities and attention agree)."""
    if len(msg.modalities) != len(msg.attention):
        raise InputError(f'PseudoLabel lists {len(msg.modalities)} modalities but carries '
                         f'{len(msg.attention)} attention pyramids')
    d = msg_to_detections(msg.detections)
    att = {}
    for m, pyr in zip(msg.modalities, msg.attention):
        if pyr.modality != m:
            raise InputError(f'PseudoLabel attention for {pyr.modality!r} listed as {m!r}')
        att[m] = msg_to_attention(pyr)
    support = [[s for s in i.split(SUPPORT_SEPARATOR) if s] for i in d.ids]
    return PseudoLabelData(stamp_to_ns(msg.header.stamp), d.boxes, d.scores, list(d.labels),
                           support, list(msg.modalities), att)


class PartialFrames:
    """Teacher messages waiting for their frame's other teachers (``missing_teacher_policy=partial``).

    Why: the approximate-time synchronizer only ever emits complete sets, so a dead or slow
    teacher would silence the pseudo-labels. Every teacher message is also kept here; a
    frame whose oldest message has waited ``max_wait_s`` is fused from what arrived within
    ``slop_ns`` of it. Frames fused (completely or partially) are remembered, so a late
    message of an already-labelled frame is recognised and dropped instead of labelling the
    frame twice. ROS-free: stamps and clock readings are plain numbers.
    """

    KINDS = ('det', 'att')

    def __init__(self, modalities: Sequence[str], slop_ns: int, max_wait_s: float, queue_size: int = 50,
                 remember: int = 200) -> None:
        self.modalities = tuple(modalities)
        self.slop_ns = int(slop_ns)
        self.max_wait_s = float(max_wait_s)
        self.queue_size = int(queue_size)
        # (modality, kind) -> {stamp_ns: (msg, arrival_s)}
        self.pending: Dict[Tuple[str, str], Dict[int, Tuple[object, float]]] = {
            (m, k): {} for m in self.modalities for k in self.KINDS}
        self._fused: deque = deque(maxlen=remember)
        self.evicted = 0

    def already_fused(self, stamp_ns: int) -> bool:
        """A frame within the slop of ``stamp_ns`` was already labelled."""
        return any(abs(int(stamp_ns) - f) <= self.slop_ns for f in self._fused)

    def add(self, modality: str, kind: str, stamp_ns: int, msg, now_s: float) -> bool:
        """Keep one message; False (not kept) when its frame was already labelled."""
        if self.already_fused(stamp_ns):
            return False
        q = self.pending[(modality, kind)]
        q[int(stamp_ns)] = (msg, float(now_s))
        while len(q) > self.queue_size:
            del q[min(q)]
            self.evicted += 1
        return True

    def mark_fused(self, stamps: Mapping[Tuple[str, str], int], frame_stamp_ns: int) -> None:
        """A set was labelled: forget its messages (``(modality, kind) -> stamp``) and remember the frame."""
        for key, t in stamps.items():
            self.pending[key].pop(int(t), None)
        self._fused.append(int(frame_stamp_ns))

    def due(self, now_s: float) -> List[Tuple[int, Dict[str, object], Dict[str, object]]]:
        """Frames that waited ``max_wait_s``: ``[(anchor_stamp_ns, det_msgs, att_msgs)]``, removed.

        A modality counts as present only with both its detections and its attention
        (nearest within the slop of the anchor); a frame with no complete modality is
        returned with empty dicts (the caller counts it as dropped)."""
        out = []
        while True:
            oldest = None
            for q in self.pending.values():
                for t, (_, arrival) in q.items():
                    if oldest is None or arrival < oldest[1] or (arrival == oldest[1] and t < oldest[0]):
                        oldest = (t, arrival)
            if oldest is None or now_s - oldest[1] < self.max_wait_s:
                return out
            anchor = oldest[0]
            dets, atts, used = {}, {}, {}
            for m in self.modalities:
                pick = {}
                for k in self.KINDS:
                    near = [t for t in self.pending[(m, k)] if abs(t - anchor) <= self.slop_ns]
                    if near:
                        pick[k] = min(near, key=lambda t: abs(t - anchor))
                for k, t in pick.items():        # consumed either way: a lone half is useless
                    used[(m, k)] = t
                if len(pick) == 2:
                    dets[m] = self.pending[(m, 'det')][pick['det']][0]
                    atts[m] = self.pending[(m, 'att')][pick['att']][0]
            for (m, k), t in used.items():
                self.pending[(m, k)].pop(t, None)
            self._fused.append(anchor)
            out.append((anchor, dets, atts))
