"""Labelled bags without trained teachers: "oracle" teachers derived from simulator truth.

Why: the dataset builder, its tests and its benchmark need labelled bags (data-formats §2),
and training real teachers takes minutes. An oracle teacher sees a simulated vehicle when the
modality's visible fraction (``VehicleTruth.visible_<m>``) is high enough, reports its box with
a little seeded jitter and a score that grows with visibility, and emits attention maps that
are Gaussian blobs on the boxes. The outputs go through the real message path
(``teacher_messages`` -> ``fuse_messages``), so the bag is exactly what ``mmdistill label``
writes, only with different detections.

Hooks let tests damage the stream (drop or alter audio chunks, rewrite AudioInfo).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

STRIDES = (8, 16, 32)


def _truth_boxes(truth) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    n = len(truth.vehicles)
    boxes = np.zeros((n, 4))
    vis = {m: np.zeros(n) for m in ('rgb', 'depth', 'thermal')}
    for k, v in enumerate(truth.vehicles):
        cx, cy, hw, hh = v.bbox.center.position.x, v.bbox.center.position.y, v.bbox.size_x / 2, v.bbox.size_y / 2
        boxes[k] = (cx - hw, cy - hh, cx + hw, cy + hh)
        vis['rgb'][k], vis['depth'][k], vis['thermal'][k] = v.visible_rgb, v.visible_depth, v.visible_thermal
    return boxes, vis


def attention_blobs(boxes: np.ndarray, image_size: Tuple[int, int], strides: Sequence[int] = STRIDES,
                    floor: float = 1e-2) -> list:
    """Per level an ``(H/s, W/s)`` map: ``floor`` plus one Gaussian per box (sigma = half its size)."""
    w, h = image_size
    out = []
    for s in strides:
        hh, ww = h // s, w // s
        ys, xs = (np.arange(hh) + 0.5) * s, (np.arange(ww) + 0.5) * s
        q = np.full((hh, ww), floor, np.float64)
        for x1, y1, x2, y2 in boxes:
            sx, sy = max((x2 - x1) / 2, s / 2), max((y2 - y1) / 2, s / 2)
            gx = np.exp(-0.5 * ((xs - (x1 + x2) / 2) / sx) ** 2)
            gy = np.exp(-0.5 * ((ys - (y1 + y2) / 2) / sy) ** 2)
            q += np.outer(gy, gx)
        out.append(q.astype(np.float32))
    return out


def oracle_outputs(truth, image_size: Tuple[int, int], rng: np.random.Generator,
                   min_visible: float = 0.3, jitter: float = 0.05, dropout: float = 0.0) -> Dict[str, Optional[dict]]:
    """modality -> ``TeacherDetector.predict``-style dict (boxes, scores, labels, attention), or
    None for a teacher that did not deliver (with probability ``dropout``). Box corners are
    jittered by ``jitter`` times the box size."""
    boxes, vis = _truth_boxes(truth)
    out: Dict[str, Optional[dict]] = {}
    for m in ('rgb', 'depth', 'thermal'):
        drop = rng.random() < dropout
        keep = vis[m] >= min_visible
        b = boxes[keep]
        wh = np.tile(b[:, 2:] - b[:, :2], 2)
        b = b + rng.normal(0.0, jitter, size=b.shape) * wh      # jitter relative to the box size
        b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1.0)
        out[m] = None if drop else {'boxes': b, 'scores': np.clip(0.4 + 0.6 * vis[m][keep], 0, 1),
                                    'labels': np.zeros(len(b), np.int64),
                                    'attention': attention_blobs(b, image_size)}
    return out


def write_oracle_bag(scenario, out: Path, seed: int = 0, dropout: float = 0.1, storage: str = 'mcap',
                     audio_hook: Optional[Callable] = None, info_hook: Optional[Callable] = None,
                     truth: bool = True, teacher_topics: bool = True, progress: bool = False) -> dict:
    """Simulate ``scenario`` (a Scenario or name) into a labelled bag at ``out``.

    ``audio_hook(msg) -> msg | None`` may alter or drop each AudioDataStamped chunk,
    ``info_hook(msg) -> msg`` the AudioInfo; ``truth=False`` leaves out ``/sim/*``;
    ``teacher_topics=False`` leaves out ``/teachers/<m>/detections``. Returns message counts."""
    from tqdm import tqdm

    from mmdistill_common import topics
    from mmdistill_common.bagio import BagWriter
    from mmdistill_sim.messages import messages
    from mmdistill_sim.simulator import Simulator
    from mmdistill_teachers.labelling import FusionConfig, fuse_messages, teacher_messages

    sim = Simulator(scenario)
    cam = sim.scenario.camera
    image_size = (int(cam.width), int(cam.height))
    rng = np.random.default_rng(seed)
    fusion = FusionConfig()
    with BagWriter(out, storage=storage) as bag:
        bag.add_topic(topics.AUDIO_INFO, 'audio_common_msgs/msg/AudioInfo', transient_local=True)
        with tqdm(total=sim.n_frames, unit='frame', desc='oracle bag', disable=not progress) as bar:
            for topic, msg, stamp in messages(sim, images=False):
                if topic == topics.AUDIO_INFO and info_hook is not None:
                    msg = info_hook(msg)
                elif topic == topics.AUDIO and audio_hook is not None:
                    msg = audio_hook(msg)
                    if msg is None:
                        continue
                if topic == topics.SIM_TRUTH:
                    results = oracle_outputs(msg, image_size, rng, dropout=dropout)
                    dets, atts = {}, {}
                    for m, res in results.items():
                        if res is not None:
                            dets[m], atts[m] = teacher_messages(res, m, stamp, STRIDES)
                            if teacher_topics:
                                bag.write(topics.teacher_detections_topic(m), dets[m], stamp)
                    label, _ = fuse_messages(stamp, dets, atts, fusion)
                    bag.write(topics.PSEUDO_LABELS, label, stamp)
                    bar.update(1)
                if topic in (topics.SIM_TRUTH, topics.GROUND_TRUTH) and not truth:
                    continue
                bag.write(topic, msg, stamp)
        return dict(bag.counts)


def short_scenario(name: str = 'day-static', duration_s: float = 3.0, sample_rate: Optional[int] = None,
                   seed: Optional[int] = None):
    """A named scenario cut to ``duration_s`` (and optionally resampled) for tests and benchmarks."""
    from mmdistill_sim.scenario import load_scenario
    sc = load_scenario(name, seed=seed)
    sc = dataclasses.replace(sc, duration_s=float(duration_s))
    if sample_rate is not None:
        sc = dataclasses.replace(sc, audio=dataclasses.replace(sc.audio, sample_rate=int(sample_rate)))
    return sc
