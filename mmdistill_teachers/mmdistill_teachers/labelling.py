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

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mmdistill_common.conversions import (attention_to_msg, detections_to_msg, make_header,
                                          msg_to_attention, msg_to_detections, stamp_to_ns)
from mmdistill_common.errors import ConfigError, InputError

from .fusion import DEFAULT_MODALITIES, FusedDetections, fuse_detections

__all__ = ['FusionConfig', 'PseudoLabelData', 'teacher_messages', 'detections_from_messages',
           'fuse_messages', 'parse_pseudo_label', 'SUPPORT_SEPARATOR']

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
