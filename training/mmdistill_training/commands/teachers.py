"""``mmdistill teachers train``: train the RGB, depth and thermal teachers on simulator bags and
evaluate them, alone and fused into pseudo-labels, against the simulator's ground truth.

Writes ``DIR/<m>.safetensors`` (+ ``.json``), ``DIR/metrics.json``, ``DIR/report.md`` and
``DIR/examples/*.png`` (docs/data-formats.md §1).

Protocol (what the numbers in the report mean):

* **Split by drive** (= bag), never by frame: ``--val-bags``, or the rule of docs/data-formats.md
  §3 applied to ``--bags`` (:func:`mmdistill_training.teacher_data.split_drives`).
* **Training targets** of modality m: the ground-truth boxes that m's sensor shows (visible
  fraction >= ``min_visible``) and that are at least ``min_box_height`` px tall. A teacher is
  thus never asked to find a vehicle its sensor cannot see.
* **Evaluation** against *all* ground-truth boxes (what a user cares about), so a teacher is
  scored low where its sensor fails (RGB at night, depth far away, thermal on cold cars).
  Boxes lower than ``eval_min_height`` px, and boxes no camera sees (visible fraction < 0.1 in
  every modality: fully behind an occluder), are *ignored* (as in KITTI / Caltech): they are
  not counted as misses, and an unmatched detection lower than ``eval_min_height`` or
  overlapping an ignored box at IoU >= 0.3 is not a false positive.
* **AP@0.5** (VOC, :func:`mmdistill_training.metrics.detection_ap`) of each teacher over all its
  detections with score >= 0.05; and, for the fused-vs-single comparison, every method at its
  **operating point**: each teacher alone at its fusion score threshold, the fused pseudo-labels
  (per-teacher thresholds then class-agnostic NMS at IoU 0.5, :class:`FusionConfig` defaults)
  and weighted box fusion with the same thresholds; AP@0.5, precision and recall at IoU 0.5.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from mmdistill_common.errors import ConfigError, InputError
from mmdistill_teachers import PRECISIONS

__all__ = ['TeacherTrainConfig', 'init_directory', 'label_rule', 'label_score_threshold', 'train_teachers', 'train_and_report',
           'predict_frames', 'evaluate_predictions', 'evaluate_teachers', 'ignored_gt', 'ap_table', 'fused_table', 'write_examples', 'write_report', 'add_arguments', 'run']

METHODS_FUSED = ('fused_nms', 'fused_wbf')
SCORE_FLOOR = 0.05


@dataclass
class TeacherTrainConfig:
    """Training recipe shared by the three teachers (defaults measured to fit the demo's budget:
    see the README section "Teachers")."""
    epochs: int = 6
    batch_size: int = 4
    lr: float = 2e-3
    width: int = 8
    fpn_channels: int = 32
    head_convs: int = 1
    min_visible: float = 0.25
    min_box_height: float = 6.0
    seed: int = 0
    max_steps: Optional[int] = 500
    crop_width: Optional[int] = 384
    precision: str = 'auto'          # 'fp32', 'bf16' (autocast) or 'auto' (bf16 where the CPU runs it natively)
    init: Optional[str] = None       # teachers directory to start from ('pretrained' = the shipped weights)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError('epochs must be >= 0, batch size >= 1 and lr > 0')
        if self.epochs == 0 and self.init is None:
            raise ConfigError('epochs 0 (no training) needs init: the teachers to adopt as they are')
        if self.crop_width is not None and self.crop_width < 32:
            raise ConfigError(f'crop_width must be >= 32 px (or None for whole images), got {self.crop_width}')
        if not 0.0 <= self.min_visible <= 1.0:
            raise ConfigError(f'min_visible must be in [0, 1], got {self.min_visible}')


# ----------------------------------------------------------------------------- training

def init_directory(init: str) -> Path:
    """The teachers directory ``--init`` names: ``pretrained`` is the package's shipped weights
    (:func:`mmdistill_teachers.weights.pretrained_directory`), anything else a path."""
    if init == 'pretrained':
        from mmdistill_teachers.weights import pretrained_directory
        return pretrained_directory()
    d = Path(init)
    if not d.is_dir():
        raise ConfigError(f'--init {init}: no such teachers directory')
    return d


def _frames_of(frames):
    return frames.frames if hasattr(frames, 'frames') else list(frames)


def train_teachers(train_frames, modalities: Sequence[str], config: TeacherTrainConfig,
                   progress: bool = True) -> Dict[str, dict]:
    """Train one teacher per modality on ``train_frames`` (a FrameSet or list of TeacherFrame).

    Returns ``modality -> {'model', 'history', 'wall_s', 'frames', 'boxes', 'steps'}``. Training
    runs on random crops ``config.crop_width`` wide (whole images when they are not wider).
    ``config.epochs`` 0 adopts the ``config.init`` teachers untrained (``train_frames`` unused).
    """
    import torch

    from mmdistill_teachers.detector import TeacherDetector
    from mmdistill_teachers.training import seed_everything, train_teacher, use_bf16

    bf16 = use_bf16(config.precision)
    if config.epochs == 0:
        return {m: _adopted(m, config, bf16) for m in modalities}
    frames = _frames_of(train_frames)
    if not frames:
        raise InputError('no training frames')
    h, w = next(iter(frames[0].images.values())).shape[:2]
    out = {}
    for m in modalities:
        if m not in frames[0].images:
            raise InputError(f'training frames have no {m} images')
        start = time.perf_counter()
        seed_everything(config.seed)
        if config.init is not None:      # fine-tune: the architecture is the initial weights'
            from mmdistill_teachers.weights import load_teacher, teacher_path
            model = load_teacher(teacher_path(init_directory(config.init), m), modality=m, input_size=(w, h))
            model.train()
        else:
            model = TeacherDetector(m, input_size=(w, h), width=config.width, fpn_channels=config.fpn_channels,
                                    head_convs=config.head_convs)
        # preprocess once: the same tensors are reused every epoch, held as float16 (half the
        # memory: 1920 RGB frames at 768x256 are 4.5 GB in float32; the inputs are normalised to
        # about [-3, 3], where float16 keeps 3 decimal digits)
        first = model.preprocess(frames[0].images[m])
        x = torch.empty((len(frames), *first.shape), dtype=torch.float16)
        for i, f in enumerate(frames):
            x[i] = first if i == 0 else model.preprocess(f.images[m])
        boxes = []
        for f in frames:
            b = f.target_boxes(m, config.min_visible)
            boxes.append(b[(b[:, 3] - b[:, 1]) >= config.min_box_height])
        crop = config.crop_width if config.crop_width is not None and config.crop_width < w else None
        hist = train_teacher(model, x, boxes, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                             seed=config.seed, max_steps=config.max_steps, progress=progress, crop_width=crop,
                             bf16=bf16)
        model.bf16_inference = bf16         # its validation predictions in the arithmetic it trained in
        del x
        out[m] = {'model': model, 'history': hist, 'wall_s': time.perf_counter() - start, 'bf16': bf16,
                  'frames': len(frames), 'boxes': int(sum(len(b) for b in boxes)),
                  'steps': len(hist['step_loss'])}
    return out


def _adopted(modality: str, config: TeacherTrainConfig, bf16: bool) -> dict:
    """The ``config.init`` teacher as it is, in :func:`train_teachers`'s result form (0 steps)."""
    from mmdistill_teachers.weights import load_teacher, teacher_path
    start = time.perf_counter()
    model = load_teacher(teacher_path(init_directory(config.init), modality), modality=modality)
    model.bf16_inference = bf16
    return {'model': model.eval(), 'history': {'step_loss': [], 'loss': []}, 'wall_s': time.perf_counter() - start,
            'bf16': bf16, 'frames': 0, 'boxes': 0, 'steps': 0}


_FORKED: dict = {}


def _train_and_predict_one(modality: str):
    """Worker of :func:`train_and_predict`: one teacher on the frames inherited from the parent by
    fork (nothing is copied in), on one torch thread; returns its weights, not the module."""
    import torch
    torch.set_num_threads(1)
    st = _FORKED
    res = train_teachers(st['train'], [modality], st['config'], progress=False)[modality]
    preds = predict_frames({modality: res['model']}, st['val'])[modality] if st['val'] else None
    # plain numpy, not tensors: torch's multiprocessing pickler shares tensors through a
    # file-descriptor handshake that hung the demo's teacher stage (children stuck in a futex)
    model = res.pop('model')
    res['state_dict'] = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    res['teacher_config'] = model.config.to_dict()       # the architecture (--init's, if given)
    print(f"teacher {modality}: {res['steps']} steps in {res['wall_s']:.0f} s", flush=True)
    return modality, res, preds


def _default_sigterm() -> None:
    """Pool worker start: SIGTERM back to its default. A worker forked from a process where rclpy
    is initialised (a test session, an embedding application) inherits rclpy's C handler, which only
    wakes rclpy's signal thread (not forked), so ``Pool.terminate`` would wait for it forever
    (seen: a 300-s timeout in the test suite; 2 of 3 runs of 5 pools hung beside a spinning
    executor, none with this)."""
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def train_and_predict(train_frames, val_frames, modalities: Sequence[str], config: TeacherTrainConfig,
                      jobs: int = 1, progress: bool = True):
    """Train the teachers and run them on ``val_frames``: ``(trained, predictions)`` as
    :func:`train_teachers` and :func:`predict_frames` return them.

    With ``jobs`` > 1 the teachers train in that many forked processes, one torch thread each:
    three small networks on two cores go faster side by side than one after another on two
    threads each (small convolutions scale poorly over threads). Results are identical to
    ``jobs=1`` (same seeds, CPU, one thread).
    """
    import multiprocessing as mp

    import torch

    mods = list(modalities)
    val = _frames_of(val_frames) if val_frames is not None else []
    if jobs <= 1 or len(mods) == 1 or config.epochs == 0:
        trained = train_teachers(train_frames, mods, config, progress=progress)
        preds = predict_frames({m: t['model'] for m, t in trained.items()}, val, progress=progress) if val else {}
        return trained, preds
    from mmdistill_teachers.detector import TeacherConfig, TeacherDetector
    frames = _frames_of(train_frames)
    _FORKED.update(train=frames, val=val, config=config)
    try:
        with mp.get_context('fork').Pool(min(jobs, len(mods)), initializer=_default_sigterm) as pool:
            results = pool.map(_train_and_predict_one, mods, chunksize=1)
    finally:
        _FORKED.clear()
    trained, preds = {}, {}
    for m, res, p in results:
        model = TeacherDetector(config=TeacherConfig.from_dict(res.pop('teacher_config')))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in res.pop('state_dict').items()})
        model.bf16_inference = res['bf16']
        trained[m] = {**res, 'model': model.eval()}
        if p is not None:
            preds[m] = p
    return trained, preds


# ----------------------------------------------------------------------------- evaluation

def predict_frames(teachers: Mapping[str, object], frames, batch_size: int = 16,
                   score_threshold: float = SCORE_FLOOR, progress: bool = False) -> Dict[str, List[dict]]:
    """Run every teacher on every frame: ``modality -> [predict() result per frame]``."""
    from tqdm import tqdm
    frames = _frames_of(frames)
    out: Dict[str, List[dict]] = {}
    for m, model in teachers.items():
        preds: List[dict] = []
        for i in tqdm(range(0, len(frames), batch_size), desc=f'evaluate {m}', unit='batch',
                      disable=not progress, leave=False):
            chunk = frames[i:i + batch_size]
            missing = [f.drive for f in chunk if m not in f.images]
            if missing:
                raise InputError(f'frames of drive {missing[0]} have no {m} image')
            preds += model.predict([f.images[m] for f in chunk], score_threshold=score_threshold)
        out[m] = preds
    return out


def _with_ignore(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, ignore: np.ndarray,
                 min_height: float = 0.0):
    """Drop the ignored GT (``ignore`` mask) and the unmatched detections that are ignored too:
    lower than ``min_height`` px, or overlapping an ignored GT box at IoU >= 0.3 (loose: a box too
    small to count is also too small to localise at IoU 0.5)."""
    from mmdistill_common.boxes import iou_matrix
    from mmdistill_training.metrics import match_frame

    gt = np.asarray(gt, np.float64).reshape(-1, 4)
    keep_gt, ign = gt[~ignore], gt[ignore]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes):
        matched = match_frame(boxes, scores, keep_gt) >= 0
        drop = (boxes[:, 3] - boxes[:, 1]) < min_height
        if len(ign):
            drop |= iou_matrix(boxes, ign).max(axis=1) >= 0.3
        k = matched | ~drop
        boxes, scores = boxes[k], scores[k]
    return {'boxes': boxes, 'scores': scores}, {'boxes': keep_gt}


def ignored_gt(frame, eval_min_height: float = 8.0, min_seen: float = 0.1) -> np.ndarray:
    """Mask of the GT boxes the evaluation ignores: lower than ``eval_min_height`` px, or seen by
    no camera (visible fraction < ``min_seen`` in every modality, e.g. fully behind an occluder)."""
    b = frame.boxes
    if len(b) == 0:
        return np.zeros(0, bool)
    seen = np.max(np.stack([frame.visible[m] for m in sorted(frame.visible)]), axis=0)
    return ((b[:, 3] - b[:, 1]) < eval_min_height) | (seen < min_seen)


def _condition_index(frames) -> Dict[str, List[int]]:
    from mmdistill_training.teacher_data import CONDITIONS
    groups: Dict[str, List[int]] = {'all': list(range(len(frames)))}
    for name, pred in CONDITIONS.items():
        idx = [i for i, f in enumerate(frames) if pred(f.tags)]
        if idx:
            groups[name] = idx
    return groups


def _scores(preds, gts, idx, shared=None) -> dict:
    """AP@0.5 / 0.75, precision and recall of the frames ``idx``. ``shared``: ``(matches,
    matched)`` of all the frames (:class:`mmdistill_training.metrics._FrameMatches` and per frame
    the count of matched predictions), so that a frame in several conditions is matched once."""
    from mmdistill_training.metrics import _FrameMatches, match_frame
    if shared is None:
        shared = (_FrameMatches(preds, gts),
                  [int((match_frame(a['boxes'], a['scores'], b['boxes']) >= 0).sum()) for a, b in zip(preds, gts)])
    ap = shared[0].ap_block(idx)          # = detection_ap(frames idx, per_class=False)
    tp = sum(shared[1][i] for i in idx)
    n_pred, n_gt = ap['num_pred'], ap['num_gt']
    return {'AP50': ap['AP50'], 'AP75': ap['AP75'], 'num_gt': n_gt, 'num_pred': n_pred, 'num_frames': len(idx),
            'precision': tp / n_pred if n_pred else math.nan, 'recall': tp / n_gt if n_gt else math.nan}


def evaluate_predictions(predictions: Mapping[str, List[dict]], frames, fusion_config=None,
                         eval_min_height: float = 8.0, min_seen: float = 0.1) -> dict:
    """Score teacher predictions (from :func:`predict_frames`) and their fusion against ground truth.

    Returns ``{'conditions': {name: n_frames}, 'teachers': {m: {cond: scores}},
    'operating_point': {method: {cond: scores}}, 'fusion': {...}, 'eval_min_height'}``, where
    ``scores`` = ``AP50, AP75, precision, recall, num_gt, num_pred, num_frames`` and ``method``
    is each modality (alone, at its fusion threshold), ``fused_nms`` and ``fused_wbf``.
    """
    from mmdistill_teachers.fusion import fuse_detections
    from mmdistill_teachers.labelling import FusionConfig
    from mmdistill_training.metrics import _FrameMatches, match_frame

    frames = _frames_of(frames)
    mods = tuple(predictions)
    if fusion_config is None:
        fusion_config = FusionConfig(modalities=mods)
    thr = {m: float(fusion_config.score_thresholds[m]) for m in mods}
    n = len(frames)
    for m, p in predictions.items():
        if len(p) != n:
            raise ValueError(f'{len(p)} {m} predictions for {n} frames')
    groups = _condition_index(frames)
    ignores = [ignored_gt(f, eval_min_height, min_seen) for f in frames]

    def scored(per_frame: List[dict]) -> Dict[str, dict]:
        pairs = [_with_ignore(d['boxes'], d['scores'], f.boxes, ign, eval_min_height) for d, f, ign in zip(per_frame, frames, ignores)]
        preds, gts = [a for a, _ in pairs], [b for _, b in pairs]
        shared = (_FrameMatches(preds, gts),
                  [int((match_frame(a['boxes'], a['scores'], b['boxes']) >= 0).sum()) for a, b in zip(preds, gts)])
        return {c: _scores(preds, gts, idx, shared) for c, idx in groups.items()}

    out = {'eval_min_height': eval_min_height, 'min_seen': min_seen, 'score_floor': SCORE_FLOOR,
           'conditions': {c: len(idx) for c, idx in groups.items()},
           'fusion': {'score_thresholds': thr, 'iou_threshold': fusion_config.iou_threshold,
                      'max_detections': fusion_config.max_detections},
           'teachers': {m: scored(predictions[m]) for m in mods}, 'operating_point': {}}
    for m in mods:
        cut = []
        for d in predictions[m]:
            k = d['scores'] >= thr[m]
            cut.append({'boxes': d['boxes'][k], 'scores': d['scores'][k]})
        out['operating_point'][m] = scored(cut)
    for method in ('nms', 'wbf'):
        fused = []
        for i in range(n):
            fd = fuse_detections({m: predictions[m][i] for m in mods}, score_thresholds=thr,
                                 iou_threshold=fusion_config.iou_threshold, method=method, modalities=mods,
                                 max_detections=fusion_config.max_detections)
            fused.append({'boxes': fd.boxes, 'scores': fd.scores})
        out['operating_point'][f'fused_{method}'] = scored(fused)
    return out


def evaluate_teachers(teachers: Mapping[str, object], frames, fusion_config=None,
                      eval_min_height: float = 8.0, min_seen: float = 0.1, progress: bool = False) -> dict:
    """Single teachers and fused pseudo-labels vs ground truth, per condition (see
    :func:`evaluate_predictions`); ``teachers`` maps modality -> TeacherDetector (or any
    :class:`mmdistill_teachers.detector.Teacher`), ``frames`` a FrameSet or list of TeacherFrame."""
    frames = _frames_of(frames)
    if not frames:
        raise InputError('no frames to evaluate on')
    preds = predict_frames(teachers, frames, progress=progress)
    return evaluate_predictions(preds, frames, fusion_config, eval_min_height, min_seen)


# ----------------------------------------------------------------------------- fusion calibration

CALIBRATION_THRESHOLDS = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7)
CALIBRATION_KEYS = ('time_of_day', 'weather', 'ego_motion')


def ap50(predictions: Sequence[Mapping], ground_truths: Sequence[Mapping]) -> float:
    """VOC AP@0.5 exactly as :func:`mmdistill_training.metrics.detection_ap` computes it (same
    matching, ignore regions and interpolation), without the other IoU thresholds it also
    evaluates: the calibration search scores hundreds of candidates."""
    from mmdistill_training import metrics
    preds, gts = metrics._frames(predictions, ground_truths)
    num_gt = int(sum(len(g[0]) for g in gts))
    if num_gt == 0:
        return math.nan
    tp, _ = metrics._ranked_tp(preds, gts, 0.5)
    return metrics.voc_ap(*metrics._pr(tp, num_gt))


def _fusion_objective(predictions: Mapping[str, List[dict]], truths: List[dict], groups: Dict[str, List[int]],
                      config) -> dict:
    """Headline-rule AP@0.5 of the fused labels over all frames and per condition group; the
    objective is the overall AP plus the worst group's AP (the issue's two bars, weighted alike).
    The plain definition: :class:`_FusionScorer` computes the same, memoised, for the search."""
    from mmdistill_training.teacher_eval import fused_predictions
    fused = fused_predictions(predictions, config)
    ap = {name: ap50([fused[i] for i in idx], [truths[i] for i in idx]) for name, idx in groups.items()}
    return _objective(ap)


def _objective(ap: Dict[str, float]) -> dict:
    worst = min((v for k, v in ap.items() if k != 'all' and not math.isnan(v)), default=math.nan)
    return {'AP50': ap, 'worst': worst, 'objective': ap['all'] + (0.0 if math.isnan(worst) else worst)}


class _FusionScorer:
    """:func:`_fusion_objective` for many fusion configs on the same frames, memoised per frame.

    A frame's fused labels depend on the thresholds only through the set of detections each
    teacher keeps (``score >= threshold``), i.e. on how many of its detections pass; the search
    moves one teacher's threshold at a time, so most frames keep the same sets and their
    matched, ranked detections (the per-frame part of :func:`ap50`) are reused. The AP of a
    group is then its frames' ranked blocks concatenated and ranked once, exactly as
    :func:`mmdistill_training.metrics.detection_ap` does: results equal :func:`_fusion_objective`.
    """

    def __init__(self, predictions: Mapping[str, List[dict]], truths: List[dict], groups: Dict[str, List[int]]):
        from mmdistill_training import metrics
        self.predictions = predictions
        self.mods = tuple(predictions)
        self.n = len(truths)
        # ascending scores per teacher and frame: kept count = n - searchsorted(score, thr, 'left')
        self.asc = {m: [np.sort(np.asarray(p['scores'], dtype=np.float64).reshape(-1)) for p in predictions[m]]
                    for m in self.mods}
        self.gts = [metrics._gt_frame(t, i) for i, t in enumerate(truths)]
        self.groups = {name: list(idx) for name, idx in groups.items()}
        self.num_gt = {name: int(sum(len(self.gts[i][0]) for i in idx)) for name, idx in self.groups.items()}
        self.cache: List[dict] = [{} for _ in range(self.n)]
        self.misses = 0

    def _frame(self, i: int, config) -> tuple:
        from mmdistill_teachers.fusion import fuse_detections
        from mmdistill_training import metrics
        thr = config.score_thresholds
        key = (config.method, config.iou_threshold, config.max_detections) + tuple(
            len(a) - int(np.searchsorted(a, float(thr[m]), side='left'))
            for m, a in ((m, self.asc[m][i]) for m in self.mods))
        hit = self.cache[i].get(key)
        if hit is None:
            self.misses += 1
            fd = fuse_detections({m: self.predictions[m][i] for m in self.mods},
                                 score_thresholds=dict(thr), iou_threshold=config.iou_threshold,
                                 method=config.method, modalities=self.mods, max_detections=config.max_detections)
            pred = metrics._pred_frame({'boxes': fd.boxes, 'scores': fd.scores}, i)
            hit = self.cache[i][key] = metrics._ranked_tp([pred], [self.gts[i]], 0.5)
        return hit

    def __call__(self, config) -> dict:
        from mmdistill_training import metrics
        per_frame = [self._frame(i, config) for i in range(self.n)]
        ap = {}
        for name, idx in self.groups.items():
            if self.num_gt[name] == 0:
                ap[name] = math.nan
                continue
            tp = np.concatenate([per_frame[i][0] for i in idx])
            sc = np.concatenate([per_frame[i][1] for i in idx])
            rank = np.argsort(-sc, kind='mergesort')
            ap[name] = metrics.voc_ap(*metrics._pr(tp[rank], self.num_gt[name]))
        return _objective(ap)


#: calibration frames at most (an even subsample of the validation frames): the search fuses and
#: scores them ~50 times per method, which took over 10 min on the full demo's 960 frames
CALIBRATION_MAX_FRAMES = 240
#: candidate label thresholds: the fused score a pseudo-label needs to be a student's target
LABEL_SCORE_THRESHOLDS = tuple(round(0.2 + 0.05 * k, 2) for k in range(13))      # 0.2 .. 0.8


def label_score_threshold(fused: Sequence[Mapping], truths: Sequence[Mapping],
                          thresholds: Sequence[float] = LABEL_SCORE_THRESHOLDS, iou_threshold: float = 0.5):
    """The fused score above which pseudo-labels best stand for the truth, as student targets:
    the threshold of highest F1 at IoU ``iou_threshold`` against ``truths`` (``{'boxes'}`` frames,
    optionally with ``'ignore'`` regions on which a label is neither right nor wrong;
    :func:`calibrate_fusion` passes the headline boxes alone). A target set has no ranking, so AP
    cannot choose it; F1 weighs a missing target and a false one alike. Returns ``(threshold,
    table)`` with precision, recall, F1 and labels per frame for every candidate (ties: the lower
    threshold)."""
    from mmdistill_common.boxes import ioa_matrix
    from mmdistill_training.metrics import IGNORE_IOA, match_frame
    n_gt = sum(len(t['boxes']) for t in truths)
    table = []
    for thr in thresholds:
        tp = fp = kept = 0
        for f, t in zip(fused, truths):
            keep = np.asarray(f['scores']) >= thr
            b, sc = np.asarray(f['boxes']).reshape(-1, 4)[keep], np.asarray(f['scores'])[keep]
            kept += len(b)
            m = match_frame(b, sc, t['boxes'], iou_threshold) >= 0
            ig = np.asarray(t.get('ignore', np.zeros((0, 4)))).reshape(-1, 4)
            on_ignore = (ioa_matrix(b, ig) >= IGNORE_IOA).any(axis=1)
            tp += int(m.sum())
            fp += int((~m & ~on_ignore).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / n_gt if n_gt else 0.0
        table.append({'threshold': float(thr), 'precision': p, 'recall': r,
                      'f1': 2 * p * r / (p + r) if p + r else 0.0, 'labels_per_frame': kept / max(len(fused), 1)})
    best = max(table, key=lambda row: (row['f1'], -row['threshold']))
    return best['threshold'], table


def label_rule(fused: Sequence[Mapping], truths: Sequence[Mapping],
               thresholds: Sequence[float] = LABEL_SCORE_THRESHOLDS, iou_threshold: float = 0.5):
    """The pseudo-labels that best stand for the truth as student targets: a fused score threshold
    (:func:`label_score_threshold`) and the teachers that must support a label, chosen together by
    F1. Candidates: no requirement, or one teacher's support. Why: the array hears running engines;
    RGB and depth also see parked cars (on the demo's train drives half the labels at the
    calibrated score), while a parked car sits at road temperature for the thermal camera.
    Returns ``(threshold, support, table)``, each table row with its ``support``."""
    mods = tuple(fused[0]['modalities']) if fused and 'modalities' in fused[0] else ()
    best, table = None, []
    for sup in [()] + [(m,) for m in mods]:
        cols = [mods.index(m) for m in sup]
        sub = []
        for f in fused:
            keep = np.asarray(f['support'], bool).reshape(len(f['scores']), len(mods))[:, cols].all(axis=1)
            sub.append({'boxes': np.asarray(f['boxes']).reshape(-1, 4)[keep], 'scores': np.asarray(f['scores'])[keep]})
        thr, rows = label_score_threshold(sub, truths, thresholds, iou_threshold)
        rows = [{'support': list(sup), **r} for r in rows]
        table += rows
        top = next(r for r in rows if r['threshold'] == thr)
        if best is None or top['f1'] > best[2] + 1e-9:
            best = (thr, sup, top['f1'])
    return best[0], best[1], table


def calibrate_fusion(predictions: Mapping[str, List[dict]], frames, iou_threshold: float = 0.5,
                     thresholds: Sequence[float] = CALIBRATION_THRESHOLDS, rounds: int = 2,
                     max_frames: int = CALIBRATION_MAX_FRAMES):
    """Per-teacher score thresholds and the fusion method (NMS or WBF), chosen on ``frames``
    (validation drives only: calibrating on test drives would leak into every later score).

    For each method, coordinate ascent over the teachers' thresholds (``rounds`` sweeps over
    ``thresholds``, from 0.5 each) on at most ``max_frames`` evenly spaced frames of :func:`_fusion_objective` under the evaluation rule
    (:func:`mmdistill_training.metrics.reference_frame`, headline ground truth); the better
    method wins. Returns ``(FusionConfig, info)`` with every tried point in ``info['search']``.
    """
    from mmdistill_teachers.labelling import FusionConfig
    from mmdistill_training.metrics import reference_frame
    from mmdistill_training.teacher_eval import truth_frame

    frames = _frames_of(frames)
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in keep]
        predictions = {m: [p[i] for i in keep] for m, p in predictions.items()}
    mods = tuple(predictions)
    truths = [reference_frame(truth_frame(f)) for f in frames]
    groups: Dict[str, List[int]] = {'all': list(range(len(frames)))}
    for k in CALIBRATION_KEYS:
        for i, f in enumerate(frames):
            if f.tags.get(k) not in (None, ''):
                groups.setdefault(f'{k}={f.tags[k]}', []).append(i)
    scorer = _FusionScorer(predictions, truths, groups)
    search, best = [], {}
    for method in ('nms', 'wbf'):
        thr = {m: 0.5 for m in mods}
        score = scorer(FusionConfig(thr, iou_threshold, method, mods))
        search.append({'method': method, 'score_thresholds': dict(thr), **score})
        for _ in range(rounds):
            for m in mods:
                for t in thresholds:
                    if t == thr[m]:
                        continue
                    cand = {**thr, m: t}
                    sc = scorer(FusionConfig(cand, iou_threshold, method, mods))
                    search.append({'method': method, 'score_thresholds': dict(cand), **sc})
                    if sc['objective'] > score['objective'] + 1e-9:
                        thr, score = cand, sc
        best[method] = (thr, score)
    method = max(best, key=lambda k: best[k][1]['objective'])
    thr, score = best[method]
    config = FusionConfig(dict(thr), iou_threshold, method, mods)
    from mmdistill_training.teacher_eval import fused_predictions
    # strict: a target on a silent or hidden vehicle (an ignore region of the rule) is a wrong
    # target, since the student cannot hear it; counting it neither way kept 6 labels per frame
    # for 3.3 audible vehicles on the demo's val drives
    label_thr, label_sup, label_table = label_rule(fused_predictions(predictions, config),
                                                  [{'boxes': t['boxes']} for t in truths])
    info = {'drives': sorted({f.drive for f in frames}), 'frames': len(frames), 'objective':
            'AP50 (headline rule) over all frames + worst AP50 over time of day, weather, ego motion',
            'min_label_score': label_thr, 'label_support': list(label_sup), 'label_scores': label_table,
            'chosen': {'method': method, 'score_thresholds': thr, **score},
            'per_method': {k: {'score_thresholds': v[0], **v[1]} for k, v in best.items()}, 'search': search}
    return config, info


# ----------------------------------------------------------------------------- report

def _fmt(v) -> str:
    return '–' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.2f}'


def ap_table(evaluation: dict) -> List[str]:
    """Markdown: AP@0.5 of each teacher (all detections, score >= 0.05) per condition."""
    conds = list(evaluation['conditions'])
    lines = ['| teacher | ' + ' | '.join(conds) + ' |', '|---|' + '---|' * len(conds)]
    for m, res in evaluation['teachers'].items():
        lines.append(f'| {m} | ' + ' | '.join(_fmt(res[c]['AP50']) for c in conds) + ' |')
    lines.append('| *frames / GT boxes* | ' + ' | '.join(
        f"{evaluation['conditions'][c]} / {next(iter(evaluation['teachers'].values()))[c]['num_gt']}"
        for c in conds) + ' |')
    return lines


def fused_table(evaluation: dict) -> List[str]:
    """Markdown: every method at its operating point, AP@0.5 (recall) per condition."""
    conds = list(evaluation['conditions'])
    names = {'fused_nms': '**fused (NMS, paper)**', 'fused_wbf': 'fused (WBF)'}
    thr = evaluation['fusion']['score_thresholds']
    lines = ['| method | ' + ' | '.join(conds) + ' |', '|---|' + '---|' * len(conds)]
    for meth, res in evaluation['operating_point'].items():
        label = names.get(meth, f'{meth} alone (score ≥ {thr.get(meth, 0):.2f})')
        lines.append(f'| {label} | ' + ' | '.join(
            f"{_fmt(res[c]['AP50'])} ({_fmt(res[c]['recall'])})" for c in conds) + ' |')
    return lines


def rule_tables(rule_eval: Mapping[str, dict]) -> List[str]:
    """Markdown: each teacher and the fused labels under the evaluation rule (headline ground
    truth): AP@0.5 overall, where the sensor works, per condition value, then per distance bucket."""
    from mmdistill_training.metrics import DISTANCE_BUCKETS
    first = next(iter(rule_eval.values()))['ground_truth']
    cols = [(k, v) for k in ('time_of_day', 'weather', 'ego_motion') for v in first['by_condition'].get(k, {})]
    lines = ['| method | all | where its sensor works | ' + ' | '.join(v for _, v in cols) + ' |',
             '|---|---|---|' + '---|' * len(cols)]
    for name, r in rule_eval.items():
        g = r['ground_truth']
        sw = r.get('sensor_working', {}).get('ground_truth')
        lines.append(f"| {name} | {_fmt(g['all']['AP50'])} | {_fmt(sw['all']['AP50']) if sw else '–'} | " + ' | '.join(
            _fmt(g['by_condition'][k][v]['AP50']) for k, v in cols) + ' |')
    lines.append('| *GT boxes* | ' + str(first['all']['num_gt']) + ' | | ' + ' | '.join(
        str(first['by_condition'][k][v]['num_gt']) for k, v in cols) + ' |')
    names = [b[0] for b in DISTANCE_BUCKETS]
    lines += ['', '| method | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
    for name, r in rule_eval.items():
        d = r['ground_truth']['by_distance']
        lines.append(f'| {name} | ' + ' | '.join(_fmt(d[b]['AP50']) if b in d else '–' for b in names) + ' |')
    d = first['by_distance']
    lines.append('| *GT boxes* | ' + ' | '.join(str(d[b]['num_gt']) if b in d else '–' for b in names) + ' |')
    return lines


def write_report(out: Path, info: dict, evaluation: Optional[dict], examples: Sequence[str],
                 rule_eval: Optional[Mapping[str, dict]] = None) -> Path:
    adopted = info['config']['epochs'] == 0
    lines = ['# Teachers', '',
             (f"Adopted untrained from {info['config']['init']}" if adopted else
              f"Trained on {len(info['train_drives'])} drives ({info['train_frames']} frames, stride "
              f"{info['frame_stride']})") + ", validated on {len(info['val_drives'])} drives "
             f"({info.get('val_frames', 0)} frames). Split: {info['split_rule']}.", '',
             f"- train drives: {', '.join(info['train_drives'])}",
             f"- val drives: {', '.join(info['val_drives']) or 'none'}", '',
             '## Training', '',
             '| teacher | frames | target boxes | steps | final loss | wall (s) |', '|---|---|---|---|---|---|']
    for m, t in info['training'].items():
        lines.append(f"| {m} | {t['frames']} | {t['boxes']} | {t['steps']} | {_fmt(t['final_loss'])} | "
                     f"{t['wall_s']:.1f} |")
    cfg = info['config']
    lines += ['', f"Recipe: {cfg['epochs']} epochs (at most {cfg['max_steps']} steps), batch {cfg['batch_size']}, lr {cfg['lr']}, width "
              f"{cfg['width']}, FPN {cfg['fpn_channels']} channels, {cfg['head_convs']} head conv(s); targets = "
              f"GT boxes with visible fraction ≥ {cfg['min_visible']} for the modality and ≥ "
              f"{cfg['min_box_height']:g} px tall. Total {info['wall_s']:.0f} s.", '']
    if evaluation is None:
        lines += ['## Evaluation', '', 'No validation drives, so no evaluation (give `--val-bags`, or two or more '
                  'drives of a scenario).', '']
    else:
        h = evaluation['eval_min_height']
        lines += ['## Single teachers vs ground truth (val drives)', '',
                  f'AP@0.5 against **all** ground-truth vehicles that at least one camera sees (boxes lower than '
                  f'{h:g} px, and vehicles no camera sees, are ignored), '
                  f'each teacher\'s detections with score ≥ {SCORE_FLOOR}. A condition is a subset of frames '
                  '(`occluded`: the frame holds an occluded vehicle); a teacher whose sensor fails in a '
                  'condition scores low there by design of the simulator (RGB at night and in fog, depth '
                  'beyond its range, thermal on cold parked cars).', '']
        lines += ap_table(evaluation)
        lines += ['', '## Fused pseudo-labels vs single teachers', '',
                  'Each method at its operating point: a teacher alone keeps its detections above its '
                  'fusion threshold; the fused pseudo-labels apply the per-teacher thresholds then '
                  'class-agnostic NMS at IoU 0.5 (the paper, `FusionConfig` defaults) or weighted box '
                  'fusion. Cells: AP@0.5 (recall at IoU 0.5).', '']
        lines += fused_table(evaluation)
        lines += ['']
    if rule_eval:
        fz = info.get('fusion', {})
        where = (f"calibrated on the validation drives {', '.join(fz['calibrated_on'])}"
                 if fz.get('calibrated_on') else 'not calibrated (defaults or given)')
        lines += ['## Under the evaluation rule (held-out drives)', '',
                  'AP@0.5 against the headline ground truth of `metrics.evaluate_truth` (seen by a camera, '
                  '≥ 8 px, audible; other vehicles are ignore regions); "where its sensor works" as in '
                  '`mmdistill teachers evaluate`. Fused: per-teacher thresholds '
                  + ', '.join(f'{m} {t:.2f}' for m, t in fz.get('score_thresholds', {}).items())
                  + f", {fz.get('method', 'nms').upper()}, {where} (`fusion.json`).", '']
        lines += rule_tables(rule_eval) + ['']
    if examples:
        lines += ['## Examples', '', 'Green: ground truth; red: detections above the fusion threshold '
                  '(score shown); last row: fused pseudo-labels on the RGB image.', '']
        lines += [f'![{Path(e).stem}](examples/{Path(e).name})' for e in examples]
    path = out / 'report.md'
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text('\n'.join(lines) + '\n')
    os.replace(tmp, path)
    return path


def write_examples(out_dir: Path, frames, predictions: Mapping[str, List[dict]], fusion_config=None,
                   n: int = 4, eval_min_height: float = 8.0) -> List[Path]:
    """PNG per chosen frame: each modality with GT (green) and its detections (red), then the fused
    labels on RGB. Frames are picked one per condition (night, fog, rain, occluded, day, ...)
    with the most GT boxes of at least ``eval_min_height`` px."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from mmdistill_teachers.fusion import fuse_detections
    from mmdistill_teachers.labelling import FusionConfig

    frames = _frames_of(frames)
    mods = tuple(predictions)
    cfg = fusion_config or FusionConfig(modalities=mods)
    thr = {m: float(cfg.score_thresholds[m]) for m in mods}
    big = [int(np.sum((f.boxes[:, 3] - f.boxes[:, 1]) >= eval_min_height)) for f in frames]
    picks: List[tuple] = []
    for cond in ('night', 'fog', 'rain', 'occluded', 'day', 'dusk', 'driving', 'clear'):
        cand = [i for i, f in enumerate(frames) if cond in f.conditions and i not in [p[0] for p in picks]
                and f.drive not in [frames[p[0]].drive for p in picks]]
        if cand:
            picks.append((max(cand, key=lambda i: (big[i], -i)), cond))
        if len(picks) >= n:
            break
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for j, (i, cond) in enumerate(picks):
        f = frames[i]
        fused = fuse_detections({m: predictions[m][i] for m in mods}, score_thresholds=thr, modalities=mods,
                                iou_threshold=cfg.iou_threshold)
        rows = [(m, f.images[m], predictions[m][i]['boxes'][predictions[m][i]['scores'] >= thr[m]],
                 predictions[m][i]['scores'][predictions[m][i]['scores'] >= thr[m]]) for m in mods]
        base = f.images['rgb'] if 'rgb' in f.images else f.images[mods[0]]
        rows.append(('fused', base, fused.boxes, fused.scores))
        fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.6 * len(rows) + 0.5), squeeze=False)
        for ax, (name, im, boxes, scores) in zip(axes[:, 0], rows):
            if im.ndim == 3:
                ax.imshow(im)
            elif name == 'depth':
                ax.imshow(np.nan_to_num(im, nan=0.0), cmap='turbo', vmin=0, vmax=max(1.0, float(np.nanmax(im))
                          if np.isfinite(im).any() else 1.0))
            else:
                ax.imshow(im.astype(np.float32), cmap='inferno')
            for b in f.boxes:
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec='lime', lw=1.0))
            for b, s in zip(boxes, scores):
                ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec='red', lw=1.0))
                ax.text(b[0], b[1] - 1, f'{s:.2f}', color='red', fontsize=6)
            ax.set_title(f'{name}: {len(boxes)} detections', fontsize=8, loc='left')
            ax.axis('off')
        fig.suptitle(f'{f.drive} t={f.stamp_ns / 1e9:.1f} s ({cond}), {len(f.boxes)} GT', fontsize=9)
        fig.tight_layout()
        path = out_dir / f'{j}_{cond}_{f.drive}.png'
        tmp = path.with_name(path.stem + '.tmp.png')
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='teachers_command', metavar='SUBCOMMAND', required=True)
    p = sub.add_parser('train', help='train the teachers on simulator bags and evaluate them',
                       description='Train RGB / depth / thermal teachers on simulator bags (ground truth from '
                                   '/sim/truth) and report AP per condition, alone and fused.')
    d = TeacherTrainConfig()
    p.add_argument('--bags', nargs='+', type=Path, required=True, help='simulator bags (one drive each)')
    p.add_argument('--out', type=Path, required=True, help='teachers directory to write')
    p.add_argument('--val-bags', nargs='+', type=Path, default=None,
                   help='validation drives: evaluated, and the fusion is calibrated on them '
                        '(default: split --bags by drive, docs/data-formats.md §3)')
    p.add_argument('--test-bags', nargs='+', type=Path, default=None,
                   help='held-out drives evaluated beside --val-bags but never used for calibration')
    p.add_argument('--modalities', nargs='+', default=['rgb', 'depth', 'thermal'],
                   choices=['rgb', 'depth', 'thermal'], help='teachers to train (default all three)')
    p.add_argument('--epochs', type=int, default=d.epochs,
                   help=f'epochs (default {d.epochs}); 0 with --init: adopt those teachers untrained, '
                        'calibrate the fusion on --val-bags (the train bags are not read)')
    p.add_argument('--frame-stride', type=int, default=3, help='use every k-th camera frame (default 3)')
    p.add_argument('--val-stride', type=int, default=None, help='frame stride on val drives (default: --frame-stride)')
    p.add_argument('--batch-size', type=int, default=d.batch_size, help=f'batch size (default {d.batch_size})')
    p.add_argument('--lr', type=float, default=d.lr, help=f'peak learning rate (default {d.lr})')
    p.add_argument('--width', type=int, default=d.width, help=f'backbone base width (default {d.width})')
    p.add_argument('--fpn-channels', type=int, default=d.fpn_channels, help=f'FPN channels (default {d.fpn_channels})')
    p.add_argument('--head-convs', type=int, default=d.head_convs, help=f'head convs (default {d.head_convs})')
    p.add_argument('--min-visible', type=float, default=d.min_visible,
                   help=f'train on GT boxes at least this visible to the modality (default {d.min_visible})')
    p.add_argument('--min-box-height', type=float, default=d.min_box_height,
                   help=f'train on GT boxes at least this tall, px (default {d.min_box_height:g})')
    p.add_argument('--eval-min-height', type=float, default=8.0,
                   help='ignore GT boxes lower than this in the evaluation, px (default 8)')
    p.add_argument('--max-steps', type=int, default=d.max_steps,
                   help=f'stop each teacher after this many optimizer steps (default {d.max_steps}; 0 = no cap)')
    p.add_argument('--init', metavar='DIR', default=None,
                   help="start from the teachers in DIR (or 'pretrained': the weights shipped with "
                        'mmdistill_teachers) and fine-tune them; their architecture overrides --width, '
                        '--fpn-channels and --head-convs (default: train from scratch)')
    p.add_argument('--precision', choices=PRECISIONS, default=d.precision,
                   help='training arithmetic: bf16 autocast (weights and loss in float32), fp32, or auto = bf16 '
                        f'where the CPU runs it natively (AVX512-BF16/AMX) (default {d.precision})')
    p.add_argument('--crop-width', type=int, default=d.crop_width,
                   help=f'train on random crops this wide, px (default {d.crop_width}; 0 = whole images)')
    p.add_argument('--jobs', type=int, default=1,
                   help='train the teachers in this many processes side by side, one thread each (default 1)')
    p.add_argument('--seed', type=int, default=d.seed, help=f'seed (default {d.seed})')
    p.add_argument('--threads', type=int, default=0, help='torch threads (default: torch default)')
    p.add_argument('--examples', type=int, default=4, help='example PNGs to write (default 4)')
    p.add_argument('--force', action='store_true', help='overwrite teachers already in --out')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    from ..teacher_eval import add_arguments as add_evaluate_arguments
    add_evaluate_arguments(sub.add_parser(
        'evaluate', help='score teachers and fused labels against a bag\'s ground truth (the evaluation rule)',
        description='Score each teacher and the fused pseudo-labels against the ground truth of bags with camera '
                    'images, by condition and distance bucket (mmdistill_training.teacher_eval).'))


def _check_out(out: Path, modalities: Sequence[str], force: bool) -> None:
    from mmdistill_teachers.weights import teacher_path
    if out.exists() and not out.is_dir():
        raise ConfigError(f'--out {out} exists and is not a directory')
    existing = [m for m in modalities if teacher_path(out, m).exists()]
    if existing and not force:
        raise ConfigError(f'{out} already holds {", ".join(existing)} teachers; pass --force to overwrite')


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def _clean(o):
    """NaN -> None so that metrics.json is strict JSON."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float) and math.isnan(o):
        return None
    return o


def run(args: argparse.Namespace) -> int:
    if args.teachers_command == 'evaluate':
        from ..teacher_eval import run as evaluate_command
        return evaluate_command(args)
    if args.teachers_command != 'train':
        raise ConfigError(f'unknown teachers subcommand {args.teachers_command!r}')
    return train_command(args)


def train_command(args: argparse.Namespace) -> int:
    from mmdistill_teachers.weights import teacher_path

    from ..teacher_data import FrameSet, bag_scenario, read_frames, split_drives

    start = time.perf_counter()
    progress = not args.no_progress
    mods = list(dict.fromkeys(args.modalities))
    if args.frame_stride < 1 or (args.val_stride is not None and args.val_stride < 1):
        raise ConfigError('--frame-stride and --val-stride must be >= 1')
    cfg = TeacherTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, width=args.width,
                             fpn_channels=args.fpn_channels, head_convs=args.head_convs,
                             min_visible=args.min_visible, min_box_height=args.min_box_height, seed=args.seed,
                             max_steps=args.max_steps or None, crop_width=args.crop_width or None,
                             precision=args.precision, init=args.init)
    if cfg.init is not None:             # fail before reading any bag
        from mmdistill_teachers.weights import read_metadata
        for m in mods:
            read_metadata(teacher_path(init_directory(cfg.init), m))
    _check_out(args.out, mods, args.force)
    if args.test_bags and not args.val_bags:
        raise ConfigError('--test-bags needs --val-bags (the drives the fusion is calibrated on)')
    held = list(args.val_bags or []) + list(args.test_bags or [])
    for b in list(args.bags) + held:
        if not Path(b).exists():
            raise InputError(f'bag {b} does not exist')
    names = [Path(b).name for b in args.bags] + [Path(b).name for b in held]
    if len(set(names)) != len(names):
        raise InputError('bag directory names must be unique (they name the drives)')
    if args.threads:
        import torch
        torch.set_num_threads(int(args.threads))

    if args.val_bags:
        train_bags, val_bags = list(args.bags), held
        calib = [Path(b).name for b in args.val_bags]
        rule = 'explicit --val-bags' + (' and --test-bags' if args.test_bags else '')
    else:
        scen = {Path(b).name: bag_scenario(b)['scenario'] for b in args.bags}
        tr, va, te = split_drives(scen, test_apart=True)
        by_name = {Path(b).name: Path(b) for b in args.bags}
        train_bags, val_bags = [by_name[n] for n in tr], [by_name[n] for n in va + te]
        calib = va
        rule = 'by drive, docs/data-formats.md §3 (evaluated on the rule\'s val + test drives, fusion calibrated on val)'
    if not train_bags:
        raise InputError('no training drives left after the split')

    train = read_frames(train_bags, mods, args.frame_stride, progress=progress) if cfg.epochs else FrameSet()
    val = read_frames(val_bags, mods, args.val_stride or args.frame_stride, progress=progress) \
        if val_bags else FrameSet()
    if len(val) and len(train) and val.image_size != train.image_size:
        raise InputError(f'val images are {val.image_size}, train images {train.image_size} (WxH)')

    metrics = train_and_report(train, val, args.out, mods, cfg, eval_min_height=args.eval_min_height,
                               examples=args.examples, split_rule=rule, frame_stride=args.frame_stride,
                               val_stride=args.val_stride or args.frame_stride, progress=progress, start=start,
                               calibration_drives=calib, jobs=args.jobs)
    print(f'wrote {", ".join(str(teacher_path(args.out, m)) for m in mods)}, {args.out / "metrics.json"}, '
          f'{args.out / "report.md"} ({metrics["wall_s"]:.0f} s)')
    if metrics['evaluation'] is not None:
        print('\n'.join(fused_table(metrics['evaluation'])))
    return 0


def train_and_report(train, val, out: Path, modalities: Sequence[str], cfg: TeacherTrainConfig,
                     fusion_config=None, eval_min_height: float = 8.0, examples: int = 4,
                     split_rule: str = 'given', frame_stride: int = 1, val_stride: int = 1,
                     progress: bool = True, start: Optional[float] = None,
                     calibration_drives: Optional[Sequence[str]] = None, jobs: int = 1) -> dict:
    """Train the teachers on ``train`` (FrameSet), evaluate on ``val`` (FrameSet, may be empty) and
    write ``out/<m>.safetensors``, ``fusion.json``, ``metrics.json``, ``report.md``, ``examples/``.
    Returns the metrics dict (as written; NaN as None). The CLI's core, callable with
    :func:`~mmdistill_training.teacher_data.simulator_frames` (no bags) by the demo.

    Without ``fusion_config`` the fusion is calibrated (:func:`calibrate_fusion`) on the frames
    of ``calibration_drives`` (default: every ``val`` drive) and saved as ``fusion.json``, which
    ``mmdistill label`` then uses. ``jobs``: see :func:`train_and_predict`."""
    from mmdistill_teachers.labelling import FusionConfig
    from mmdistill_teachers.weights import save_fusion_config, save_teacher, teacher_path

    from ..teacher_eval import evaluate_methods

    start = time.perf_counter() if start is None else start
    mods = list(modalities)
    out = Path(out)
    trained, preds = train_and_predict(train, val if len(val) else None, mods, cfg, jobs=jobs, progress=progress)
    teachers = {m: t['model'] for m, t in trained.items()}
    fusion = fusion_config or FusionConfig(
        score_thresholds={m: FusionConfig().score_thresholds[m] for m in mods}, modalities=tuple(mods))
    evaluation, rule_eval, calibration, example_paths = None, None, None, []
    if len(val):
        if fusion_config is None:
            calib = set(calibration_drives) if calibration_drives is not None else set(val.drives)
            idx = [i for i, f in enumerate(val.frames) if f.drive in calib]
            if idx:
                fusion, calibration = calibrate_fusion({m: [p[i] for i in idx] for m, p in preds.items()},
                                                       [val.frames[i] for i in idx])
        evaluation = evaluate_predictions(preds, val, fusion, eval_min_height)
        rule_eval = evaluate_methods(preds, val.frames, val.image_size, fusion)
        if examples > 0:
            example_paths = write_examples(out / 'examples', val.frames, preds, fusion, n=examples,
                                           eval_min_height=eval_min_height)

    info = {'config': dataclasses.asdict(cfg), 'frame_stride': frame_stride, 'val_stride': val_stride, 'jobs': jobs,
            'split_rule': split_rule, 'train_drives': sorted(train.drives), 'val_drives': sorted(val.drives),
            'drives': {**train.drives, **val.drives}, 'train_frames': len(train), 'val_frames': len(val),
            'skipped': {**train.skipped}, 'training': {}}
    for m, t in trained.items():
        info['training'][m] = {'frames': t['frames'], 'boxes': t['boxes'], 'steps': t['steps'],
                               'wall_s': round(t['wall_s'], 2),
                               'final_loss': t['history']['loss'][-1] if t['history']['loss'] else None,
                               'loss': t['history']['loss']}
    out.mkdir(parents=True, exist_ok=True)
    save_fusion_config(fusion, out, _clean({k: v for k, v in (calibration or {'default': True}).items()
                                            if k != 'search'}))
    info['fusion'] = {'score_thresholds': dict(fusion.score_thresholds), 'method': fusion.method,
                      'calibrated_on': None if calibration is None else calibration['drives']}
    for m, model in teachers.items():
        val_ap = None if evaluation is None else {c: r['AP50'] for c, r in evaluation['teachers'][m].items()}
        save_teacher(model, teacher_path(out, m), training_info=_clean({
            'command': 'mmdistill teachers train',
            **{k: info[k] for k in ('config', 'frame_stride', 'train_drives', 'val_drives')},
            **info['training'][m], 'val_AP50': val_ap}))
    info['wall_s'] = time.perf_counter() - start
    metrics = _clean({'format': 'mmdistill-teacher-metrics', 'format_version': 1, **info, 'evaluation': evaluation,
                      'evaluation_rule': rule_eval, 'calibration': calibration})
    path = out / 'metrics.json'
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(metrics, indent=2, default=_json_default, allow_nan=False) + '\n')
    os.replace(tmp, path)
    write_report(out, info, evaluation, [str(p) for p in example_paths], rule_eval)
    return metrics
