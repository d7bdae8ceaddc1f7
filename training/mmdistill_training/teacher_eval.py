"""``mmdistill teachers evaluate``: score each teacher and the fused pseudo-labels against a bag's
ground truth under the one evaluation rule (ROS-free core apart from reading bags).

Why a command of its own: ``teachers train`` scores on its validation drives only, while the
demo (and a user with a recorded car bag) wants the teachers scored on the same held-out drives
as the student, by condition and by distance, with the same rule
(:func:`mmdistill_training.metrics.evaluate_truth`), so teacher, pseudo-label and student
numbers can be read side by side.

* Sources: simulator bags (``/sim/truth``: per-vehicle visibility, audible flag, distance,
  engine state, and the drive's conditions), or any bag with camera images and a
  ``vision_msgs/Detection2DArray`` truth topic (``--truth-topic``): then there is no audible,
  visibility or distance information, every box >= 8 px tall is ground truth, there are no
  distance buckets, and the output says so (``truth``).
* Methods: each teacher over its detections with score >= 0.05 (as ``teachers train``), and the
  fused pseudo-labels (per-teacher thresholds + class-agnostic NMS at IoU 0.5, the labelling
  default, :class:`mmdistill_teachers.labelling.FusionConfig`).
* "Where its sensor works" (:data:`SENSOR_WORKS`): RGB on day and dusk frames without fog;
  depth on frames without fog, vehicles beyond the depth range being ignore regions; thermal
  on vehicles with the engine on (cold parked cars are ignore regions). It shows what a teacher
  delivers inside its envelope, beside what it delivers everywhere.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from mmdistill_common.errors import ConfigError, InputError
from mmdistill_teachers import PRECISIONS

from .metrics import evaluate_truth, truth_sets
from .teacher_data import MODALITIES, FrameSet, TeacherFrame

__all__ = ['SENSOR_WORKS', 'CONDITION_KEYS', 'FORMAT', 'truth_frame', 'sensor_working_truth', 'fused_predictions',
           'evaluate_methods', 'read_eval_frames', 'evaluate_teacher_bags', 'write_report', 'add_arguments', 'run']

FORMAT = 'mmdistill-teacher-evaluation'
#: condition tags of a frame, as in ``mmdistill evaluate`` (so teacher and student tables line up)
CONDITION_KEYS = ('time_of_day', 'weather', 'ego_motion', 'occluded', 'scenario')
SENSOR_WORKS: Dict[str, str] = {
    'rgb': 'day and dusk frames without fog',
    'depth': 'frames without fog; vehicles beyond the depth range are ignore regions',
    'thermal': 'vehicles with the engine on; cold (engine off) vehicles are ignore regions',
}
SCORE_FLOOR = 0.05


def truth_frame(frame: TeacherFrame) -> dict:
    """A teacher frame's ground truth as :func:`~mmdistill_training.metrics.evaluate_truth` takes it."""
    t = {'boxes': frame.boxes}
    if frame.visible:
        t['visible'] = np.stack([frame.visible[m] for m in sorted(frame.visible)], axis=1).reshape(
            len(frame.boxes), len(frame.visible))
    if frame.audible is not None:
        t['audible'] = frame.audible
    if frame.distance is not None:
        t['distance'] = frame.distance
    return t


def _depth_range(scenario: str) -> float:
    from mmdistill_sim.scenario import Camera, load_scenario
    try:
        return float(load_scenario(scenario).camera.depth_range_m)
    except Exception:               # a scenario file not at hand: the schema default
        return float(Camera().depth_range_m)


def sensor_working_truth(frame: TeacherFrame, modality: str, depth_range_m: float) -> Optional[dict]:
    """The frame's truth where ``modality``'s sensor works (None: not at all in this frame); the
    vehicles outside its envelope are made unseen, so the rule turns them into ignore regions."""
    tags = frame.tags
    if modality == 'rgb' and (tags.get('time_of_day') not in ('day', 'dusk') or tags.get('weather') == 'fog'):
        return None
    if modality == 'depth' and tags.get('weather') == 'fog':
        return None
    t = truth_frame(frame)
    n = len(frame.boxes)
    if modality == 'depth' and frame.distance is not None:
        works = frame.distance <= depth_range_m
    elif modality == 'thermal' and frame.engine_on is not None:
        works = frame.engine_on
    else:
        return t
    t['visible'] = np.where(works, t.get('visible', np.ones((n, 1))).max(axis=1) if n else np.zeros(0), 0.0)
    return t


def fused_predictions(predictions: Mapping[str, List[dict]], fusion_config=None) -> List[dict]:
    """The pseudo-labels of every frame: the teachers' detections fused as ``mmdistill label`` does
    (``support``: bool (n, len(modalities)), which teachers support each box)."""
    from mmdistill_teachers.fusion import fuse_detections
    from mmdistill_teachers.labelling import FusionConfig
    mods = tuple(predictions)
    cfg = fusion_config or FusionConfig(score_thresholds={m: FusionConfig().score_thresholds[m] for m in mods},
                                        modalities=mods)
    n = len(next(iter(predictions.values())))
    out = []
    for i in range(n):
        fd = fuse_detections({m: predictions[m][i] for m in mods}, score_thresholds=dict(cfg.score_thresholds),
                             iou_threshold=cfg.iou_threshold, method=cfg.method, modalities=mods,
                             max_detections=cfg.max_detections)
        out.append({'boxes': fd.boxes, 'scores': fd.scores, 'support': fd.support, 'modalities': fd.modalities})
    return out


def _conditions(frames: Sequence[TeacherFrame]) -> List[dict]:
    return [{k: f.tags[k] for k in CONDITION_KEYS if k in f.tags and f.tags[k] not in (None, '')} for f in frames]


def _worst(result: dict) -> dict:
    """The condition value with the lowest headline AP@0.5 (among those with ground truth)."""
    worst = {'condition': None, 'AP50': None}
    for k, vals in result['ground_truth']['by_condition'].items():
        for v, m in vals.items():
            ap = m['AP50']
            if m['num_gt'] > 0 and not math.isnan(ap) and (worst['AP50'] is None or ap < worst['AP50']):
                worst = {'condition': f'{k}={v}', 'AP50': ap}
    return worst


def evaluate_methods(predictions: Mapping[str, List[dict]], frames: Sequence[TeacherFrame], image_size,
                     fusion_config=None) -> dict:
    """Every teacher (detections from :func:`mmdistill_training.commands.teachers.predict_frames`)
    and the fused labels against the frames' truth: ``{method: evaluate_truth result +
    sensor_working (teachers) / worst_condition (fused)}``."""
    frames = list(frames)
    truths = [truth_frame(f) for f in frames]
    conds = _conditions(frames)
    keys = [k for k in CONDITION_KEYS if any(k in c for c in conds)]
    drives = [f.drive for f in frames]
    methods = {m: [{'boxes': p['boxes'], 'scores': p['scores']} for p in predictions[m]] for m in predictions}
    methods['fused'] = fused_predictions(predictions, fusion_config)
    out: Dict[str, dict] = {}
    for name, preds in methods.items():
        if len(preds) != len(frames):
            raise ValueError(f'{len(preds)} {name} predictions for {len(frames)} frames')
        res = evaluate_truth(preds, truths, image_size, conditions=conds, keys=keys, drives=drives)
        if name in MODALITIES:
            ranges = {f.tags.get('scenario'): None for f in frames}
            ranges = {s: _depth_range(s) for s in ranges} if name == 'depth' else ranges
            sw = [(i, sensor_working_truth(f, name, ranges.get(f.tags.get('scenario')) or math.inf))
                  for i, f in enumerate(frames)]
            sw = [(i, t) for i, t in sw if t is not None]
            block = {'rule': SENSOR_WORKS[name], 'num_frames': len(sw)}
            if sw:
                r = evaluate_truth([preds[i] for i, _ in sw], [t for _, t in sw], image_size,
                                   drives=[drives[i] for i, _ in sw])
                block.update({'ground_truth': r['ground_truth'], 'ground_truth_all_visible': r['ground_truth_all_visible']})
            res['sensor_working'] = block
        else:
            res['worst_condition'] = _worst(res)
        out[name] = res
    return out


# ----------------------------------------------------------------------------- bags

def _read_box_truth_bag(path: Path, modalities: Sequence[str], truth_topic: str, frame_stride: int) -> FrameSet:
    """Camera frames of any bag matched by header stamp to a ``Detection2DArray`` truth topic
    (no visibility, audible or distance information)."""
    from mmdistill_common.bagio import BagReader
    from mmdistill_common.conversions import msg_to_detections, msg_to_image, stamp_to_ns
    from mmdistill_common.topics import image_topic

    from .teacher_data import ACCEPTED_ENCODINGS
    topic_of = {image_topic(m): m for m in modalities}
    with BagReader(path) as bag:
        bag.require(list(topic_of) + [truth_topic])
        truth = {}
        for m in bag.messages([truth_topic]):
            if not hasattr(m.msg, 'detections'):
                raise InputError(f'bag {path}: {truth_topic} is not a vision_msgs/Detection2DArray topic')
            truth[stamp_to_ns(m.msg.header.stamp)] = msg_to_detections(m.msg)
        keep = set(sorted(truth)[::frame_stride])
        images: Dict[int, dict] = {}
        for m in bag.messages(list(topic_of)):
            stamp = stamp_to_ns(m.msg.header.stamp)
            if stamp in keep:
                mod = topic_of[m.topic]
                if m.msg.encoding not in ACCEPTED_ENCODINGS[mod]:
                    raise InputError(f'bag {path}: {m.topic} has encoding {m.msg.encoding!r}; the {mod} teacher '
                                     f'takes {" or ".join(ACCEPTED_ENCODINGS[mod])}')
                images.setdefault(stamp, {})[mod] = msg_to_image(m.msg)
    out = FrameSet()
    for stamp in sorted(keep):
        if len(images.get(stamp, {})) != len(modalities):
            out.skipped['incomplete'] = out.skipped.get('incomplete', 0) + 1
            continue
        d = truth[stamp]
        boxes = np.asarray(d.boxes, np.float64).reshape(-1, 4)
        n = len(boxes)
        out.frames.append(TeacherFrame(path.name, stamp, images[stamp], boxes, np.arange(n), list(d.labels), {},
                                       np.zeros(n, bool), {}))
    if not out.frames:
        raise InputError(f'bag {path}: no camera frame has all of {", ".join(modalities)} images and '
                         f'{truth_topic} with the same header stamp')
    out.drives[path.name] = {'bag': str(path), 'frames': len(out.frames)}
    return out


def read_eval_frames(bags: Sequence[Path], modalities: Sequence[str], truth_topic: Optional[str] = None,
                     frame_stride: int = 1, progress: bool = False) -> FrameSet:
    """Frames of every bag: simulator truth (``/sim/truth``) when the bag has it and no
    ``truth_topic`` is named, else the boxes of ``truth_topic`` (default ``/sim/ground_truth``)."""
    from mmdistill_common.bagio import BagReader
    from mmdistill_common.topics import GROUND_TRUTH, SIM_TRUTH

    from .teacher_data import read_bag_frames
    out = FrameSet()
    for b in bags:
        b = Path(b)
        if not b.exists():
            raise InputError(f'bag {b} does not exist')
        with BagReader(b) as bag:
            sim = SIM_TRUTH in bag.topics
        if sim and truth_topic is None:
            out.extend(read_bag_frames(b, modalities, frame_stride, progress=progress))
        else:
            out.extend(_read_box_truth_bag(b, modalities, truth_topic or GROUND_TRUTH, frame_stride))
    sizes = {next(iter(f.images.values())).shape[:2] for f in out.frames}
    if len(sizes) > 1:
        raise InputError(f'bags hold images of different sizes {sorted(sizes)}')
    return out


def evaluate_teacher_bags(teachers_dir: Path, bags: Sequence[Path], modalities: Optional[Sequence[str]] = None,
                          truth_topic: Optional[str] = None, frame_stride: int = 1, fusion_config=None,
                          progress: bool = False, precision: str = 'fp32') -> dict:
    """The command's core: load the teachers, read the frames, predict, score. Returns the JSON dict."""
    from mmdistill_teachers.weights import load_teachers, set_precision, teacher_path

    from .commands.teachers import predict_frames
    t0 = time.perf_counter()
    teachers_dir = Path(teachers_dir)
    if modalities is None:
        modalities = [m for m in MODALITIES if teacher_path(teachers_dir, m).exists()]
        if not modalities:
            raise ConfigError(f'no teacher weights (<modality>.safetensors) in {teachers_dir}')
    teachers = set_precision(load_teachers(teachers_dir, modalities=tuple(modalities)), precision)
    if fusion_config is None:   # the fusion `mmdistill label` applies: the directory's calibrated fusion.json
        from mmdistill_teachers.weights import load_fusion_config
        fusion_config = load_fusion_config(teachers_dir)
    frames = read_eval_frames(bags, modalities, truth_topic, frame_stride, progress)
    preds = predict_frames(teachers, frames, score_threshold=SCORE_FLOOR, progress=progress)
    results = evaluate_methods(preds, frames.frames, frames.image_size, fusion_config)
    fields = next(iter(results.values()))['truth_fields']
    sim = {'visible', 'audible', 'distance'} <= set(fields)
    return {'format': FORMAT, 'format_version': 1, 'teachers_dir': str(teachers_dir),
            'bags': [str(b) for b in bags], 'modalities': list(modalities), 'frames': len(frames),
            'frame_stride': frame_stride, 'precision': precision, 'image_size': list(frames.image_size),
            'drives': frames.drives,
            'skipped': frames.skipped, 'truth_fields': fields,
            'truth': ('simulator /sim/truth: headline = seen by a camera, >= 8 px tall, audible' if sim else
                      f'boxes only ({truth_topic or "/sim/ground_truth"}): no audible, visibility or distance '
                      'information, every box >= 8 px tall counts, no distance buckets'),
            'sensor_works': {m: SENSOR_WORKS[m] for m in modalities}, 'methods': results,
            'wall_s': time.perf_counter() - t0}


# ----------------------------------------------------------------------------- report

def _f(v) -> str:
    return '–' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.3f}'


def write_report(result: dict, out_dir: Path) -> Path:
    """Markdown tables: AP@0.5 per method overall, where its sensor works, by condition and distance."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = result['methods']
    L = ['# Teachers and fused pseudo-labels against ground truth', '',
         f'{result["frames"]} frames of {len(result["bags"])} bag(s); teachers from `{result["teachers_dir"]}`. '
         f'Truth: {result["truth"]}. AP@0.5 (VOC) under the evaluation rule of the README.', '',
         '| method | headline GT | all visible | shuffled GT (prior check) | where its sensor works |',
         '|---|---|---|---|---|']
    for name, r in methods.items():
        sw = r.get('sensor_working', {}).get('ground_truth', {}).get('all', {}).get('AP50')
        L.append(f'| {name} | {_f(r["ground_truth"]["all"]["AP50"])} | {_f(r["ground_truth_all_visible"]["all"]["AP50"])} '
                 f'| {_f(r["ground_truth_shuffled"]["all"]["AP50"])} | {_f(sw) if "sensor_working" in r else ""} |')
    L += ['', 'Where the sensor works: ' + '; '.join(f'{m}: {t}' for m, t in result['sensor_works'].items()) + '.', '']
    cols = [(k, v) for k, vals in methods['fused']['ground_truth']['by_condition'].items() for v in vals]
    cols += [('distance', b) for b in methods['fused']['ground_truth']['by_distance']]
    if cols:
        L += ['## Headline AP@0.5 by condition and distance', '',
              '| method | ' + ' | '.join(f'{k}={v}' for k, v in cols) + ' |', '|---|' + '---|' * len(cols)]
        for name, r in methods.items():
            g = r['ground_truth']
            cells = [g['by_distance'][v]['AP50'] if k == 'distance' else g['by_condition'][k][v]['AP50']
                     for k, v in cols]
            L.append(f'| {name} | ' + ' | '.join(_f(c) for c in cells) + ' |')
        L.append('')
    path = out_dir / 'report.md'
    path.write_text('\n'.join(L) + '\n')
    return path


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--teachers', type=Path, required=True, help='teachers directory (mmdistill teachers train)')
    parser.add_argument('--bags', type=Path, nargs='+', required=True,
                        help='bags with camera images and ground truth (/sim/truth, or --truth-topic)')
    parser.add_argument('--out', type=Path, required=True, help='metrics JSON file to write')
    parser.add_argument('--report', type=Path, help='also write report.md into this directory')
    parser.add_argument('--truth-topic', default=None,
                        help='vision_msgs/Detection2DArray truth topic (default: /sim/truth where present, '
                             'else /sim/ground_truth); naming one uses its boxes only')
    parser.add_argument('--modalities', nargs='+', choices=MODALITIES, default=None,
                        help='teachers to score (default: every teacher in --teachers)')
    parser.add_argument('--frame-stride', type=int, default=1, help='score every k-th camera frame (default 1)')
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32',
                        help='teacher arithmetic, as `mmdistill label --precision` (default fp32)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')


def _clean(o):
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def run(args: argparse.Namespace) -> int:
    if args.frame_stride < 1:
        raise ConfigError(f'--frame-stride must be >= 1, got {args.frame_stride}')
    if not args.teachers.is_dir():
        raise ConfigError(f'--teachers {args.teachers} is not a directory')
    result = evaluate_teacher_bags(args.teachers, args.bags, args.modalities and list(dict.fromkeys(args.modalities)),
                                   args.truth_topic, args.frame_stride, progress=not args.no_progress,
                                   precision=args.precision)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + '.tmp')
    tmp.write_text(json.dumps(_clean(result), indent=1, allow_nan=False) + '\n')
    os.replace(tmp, args.out)
    if args.report:
        write_report(result, args.report)
    for name, r in result['methods'].items():
        print(f'{name}: AP@0.5 {_f(r["ground_truth"]["all"]["AP50"])} (all visible '
              f'{_f(r["ground_truth_all_visible"]["all"]["AP50"])}, shuffled {_f(r["ground_truth_shuffled"]["all"]["AP50"])})')
    print(f'wrote {args.out}')
    return 0
