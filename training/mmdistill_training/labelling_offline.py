"""Offline labelling: a simulator (or car) bag with images -> a labelled bag (docs/data-formats.md §2).

The live graph (``teacher_node`` x3 -> ``pseudo_label_node`` -> ``recorder_node``) and this
batch path share every step that shapes the output: camera frames are matched with the
same approximate-time rule (the ``mmdistill_common.sync`` synchronizer, ``slop``), each
teacher runs through :func:`mmdistill_teachers.labelling.run_teacher` and the fusion through
:func:`mmdistill_teachers.labelling.fuse_messages`. Only the batching differs (several
frames per forward pass here, which changes scores in the last float bits; ``batch_size=1``
reproduces the live nodes exactly).

The output is written to a hidden temporary bag beside ``out_bag`` and renamed at the end,
so an error or an interrupt never leaves half a bag.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

from mmdistill_common import topics
from mmdistill_common.errors import ConfigError, InputError

__all__ = ['label_bag', 'parse_thresholds', 'EXPECTED_ENCODINGS']

# what each teacher accepts (DESIGN §3); anything else is refused with the topic named
EXPECTED_ENCODINGS = {'rgb': ('rgb8',), 'depth': ('32FC1',), 'thermal': ('32FC1', '16UC1')}
COPIED_IF_PRESENT = (topics.GROUND_TRUTH, topics.SIM_TRUTH)


def parse_thresholds(text: Optional[str], modalities: Sequence[str] = topics.CAMERAS,
                     default: float = 0.5) -> Dict[str, float]:
    """``'0.3'`` (all teachers) or ``'rgb=0.5,thermal=0.4'`` (others keep ``default``) -> dict."""
    out = {m: float(default) for m in modalities}
    if text is None or not str(text).strip():
        return out
    text = str(text).strip()
    try:
        if '=' not in text:
            return {m: float(text) for m in modalities}
        for part in text.split(','):
            name, value = part.split('=')
            name = name.strip()
            if name not in out:
                raise ConfigError(f'--thresholds: unknown teacher {name!r} (known: {", ".join(modalities)})')
            out[name] = float(value)
    except ValueError:
        raise ConfigError(f"--thresholds must be a number or 'rgb=0.5,depth=0.5,thermal=0.5', got {text!r}") from None
    return out


def _image(msg, modality: str, topic: str):
    from mmdistill_common.conversions import msg_to_image, stamp_to_ns
    if msg.encoding not in EXPECTED_ENCODINGS[modality]:
        raise InputError(f'{topic} at stamp {stamp_to_ns(msg.header.stamp)} ns has encoding {msg.encoding!r}; '
                         f'the {modality} teacher needs {" or ".join(EXPECTED_ENCODINGS[modality])}')
    try:
        return msg_to_image(msg)
    except InputError as exc:
        raise InputError(f'{topic} at stamp {stamp_to_ns(msg.header.stamp)} ns: {exc}') from None


def _temp_path(out: Path) -> Path:
    return out.parent / f'.{out.name}.partial-{os.getpid()}'


def label_bag(in_bag: Union[str, Path], teachers: Union[Mapping[str, object], str, Path],
              out_bag: Union[str, Path], fusion=None, images: bool = False, progress: bool = True,
              batch_size: int = 8, slop: float = 0.05, queue_size: int = 30, storage: str = 'mcap',
              teacher_score_threshold: Optional[float] = None, teacher_nms_iou: Optional[float] = None,
              teacher_max_detections: Optional[int] = None, frame_stride: int = 1) -> dict:
    """Run the teachers and the fusion over every camera frame of ``in_bag``; write ``out_bag``.

    Args:
        teachers: modality -> teacher (``TeacherDetector`` or anything with ``predict``,
            ``modality``, ``class_names``), or a teachers directory (``DIR/<m>.safetensors``).
        fusion: :class:`~mmdistill_teachers.labelling.FusionConfig` (default: the paper's).
        images: also copy the camera images and camera_info.
        batch_size: frames per forward pass (1 = bit-identical to ``teacher_node``).
        slop, queue_size: frame matching across cameras, as ``pseudo_label_node``.
        teacher_*: the teachers' own thresholds; None = the values stored with the weights
            (``teacher_node``'s default).
        frame_stride: label every k-th matched camera frame (1 = all; the teachers' cost
            dominates labelling, and neighbouring frames 100 ms apart are nearly the same).

    Returns statistics (frames, boxes, per-teacher counts, unmatched images, timing).
    Raises :class:`InputError` / :class:`ConfigError` with one line for missing topics, a
    damaged bag, a wrong image encoding or size, or audio that disagrees with its AudioInfo;
    ``out_bag`` is then not created.
    """
    from mmdistill_teachers.labelling import FusionConfig

    fusion = fusion or FusionConfig()
    in_bag, out_bag = Path(in_bag), Path(out_bag)
    if out_bag.exists():
        raise ConfigError(f'{out_bag} already exists; choose a new bag path')
    if batch_size < 1:
        raise ConfigError(f'batch_size must be >= 1, got {batch_size}')
    if int(frame_stride) < 1:
        raise ConfigError(f'frame_stride must be >= 1, got {frame_stride}')
    if not isinstance(teachers, Mapping):
        from mmdistill_teachers.weights import load_teachers
        teachers = load_teachers(teachers, modalities=fusion.modalities)
    missing = [m for m in fusion.modalities if m not in teachers]
    if missing:
        raise ConfigError(f'no teacher given for {", ".join(missing)}')
    class_names = {tuple(teachers[m].class_names) for m in fusion.modalities}
    if len(class_names) != 1:
        raise ConfigError(f'the teachers predict different classes: {sorted(class_names)}')
    tmp = _temp_path(out_bag)
    if tmp.exists():
        shutil.rmtree(tmp)
    out_bag.parent.mkdir(parents=True, exist_ok=True)
    try:
        stats = _label(in_bag, teachers, tmp, fusion, class_names.pop(), images, progress, batch_size, slop,
                       queue_size, storage, dict(score_threshold=teacher_score_threshold,
                                                 nms_iou=teacher_nms_iou, max_detections=teacher_max_detections),
                       int(frame_stride))
        os.rename(tmp, out_bag)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    stats['out_bag'] = str(out_bag)
    return stats


def _label(in_bag: Path, teachers, tmp: Path, fusion, class_names, images: bool, progress: bool,
           batch_size: int, slop: float, queue_size: int, storage: str, teacher_kwargs: dict,
           frame_stride: int = 1) -> dict:
    from tqdm import tqdm

    from mmdistill_common.bagio import BagReader, BagWriter
    from mmdistill_common.conversions import check_audio_info, msg_to_audio, stamp_to_ns
    from mmdistill_common.sync import FallbackApproximateTimeSynchronizer, SimpleFilter
    from mmdistill_teachers.labelling import fuse_messages, run_teacher

    modalities = tuple(fusion.modalities)
    image_topics = {topics.image_topic(m): m for m in modalities}
    start = time.perf_counter()
    stats = {'in_bag': str(in_bag), 'method': fusion.method, 'frames': 0, 'boxes': 0, 'frames_with_boxes': 0,
             'images': {m: 0 for m in modalities}, 'unmatched_images': {},
             'teacher_boxes': {m: 0 for m in modalities}, 'audio_chunks': 0, 'frame_stride': frame_stride,
             'skipped_by_stride': 0}
    with BagReader(in_bag) as reader:
        required = [topics.AUDIO, topics.AUDIO_INFO, *image_topics]
        reader.require(required)
        have = reader.topics
        empty = [t for t in required if have[t][1] == 0]
        if empty:
            raise InputError(f'bag {in_bag} has no messages on {", ".join(empty)}')
        info_msgs = [m.msg for m in reader.messages([topics.AUDIO_INFO])]
        if not info_msgs:
            raise InputError(f'bag {in_bag} has no {topics.AUDIO_INFO} message')
        for info in info_msgs:
            check_audio_info(info)
        channels = int(info_msgs[0].channels)
        if any(int(i.channels) != channels or int(i.sample_rate) != int(info_msgs[0].sample_rate)
               for i in info_msgs):
            raise InputError(f'{topics.AUDIO_INFO} changes during the bag; split the bag where it changes')
        copied = [topics.AUDIO, topics.AUDIO_INFO] + [t for t in COPIED_IF_PRESENT if t in have]
        if images:
            copied += list(image_topics) + [topics.camera_info_topic(m) for m in modalities
                                            if topics.camera_info_topic(m) in have]
        wanted = set(copied) | set(image_topics)

        ready: List[tuple] = []
        inputs = [SimpleFilter() for _ in modalities]
        sync = FallbackApproximateTimeSynchronizer(inputs, queue_size=queue_size, slop=slop)
        matched = [0]

        def on_frame(*msgs) -> None:
            if matched[0] % frame_stride == 0:
                ready.append(msgs)
            else:
                stats['skipped_by_stride'] += 1
            matched[0] += 1
        sync.registerCallback(on_frame)
        total = have[topics.image_topic(modalities[0])][1]

        with BagWriter(tmp, storage=storage) as out, \
                tqdm(total=total, unit='frame', desc=f'label {in_bag.name}', disable=not progress) as bar:
            out.add_topic(topics.AUDIO_INFO, 'audio_common_msgs/msg/AudioInfo', transient_local=True)
            out.add_topic(topics.PSEUDO_LABELS, 'mmdistill_msgs/msg/PseudoLabel')
            for m in modalities:
                out.add_topic(topics.teacher_detections_topic(m), 'vision_msgs/msg/Detection2DArray')

            def flush() -> None:
                batch = ready[:]
                ready.clear()
                if not batch:
                    return
                per_teacher = {}
                for i, m in enumerate(modalities):
                    topic = topics.image_topic(m)
                    msgs = [s[i] for s in batch]
                    try:
                        per_teacher[m] = run_teacher(
                            teachers[m], [_image(x, m, topic) for x in msgs],
                            [stamp_to_ns(x.header.stamp) for x in msgs], [x.header.frame_id for x in msgs],
                            **teacher_kwargs)
                    except InputError as exc:
                        if str(exc).startswith(topic):
                            raise
                        raise InputError(f'{topic}: {exc}') from None
                for k in range(len(batch)):
                    dets = {m: per_teacher[m][k][0] for m in modalities}
                    atts = {m: per_teacher[m][k][1] for m in modalities}
                    ref = dets[modalities[0]]
                    stamp = stamp_to_ns(ref.header.stamp)
                    label, fused = fuse_messages(stamp, dets, atts, fusion, class_names,
                                                 frame_id=ref.header.frame_id)
                    for m in modalities:
                        out.write(topics.teacher_detections_topic(m), dets[m], stamp_to_ns(dets[m].header.stamp))
                        stats['teacher_boxes'][m] += len(dets[m].detections)
                    out.write(topics.PSEUDO_LABELS, label, stamp)
                    stats['frames'] += 1
                    stats['boxes'] += len(fused)
                    stats['frames_with_boxes'] += int(len(fused) > 0)
                bar.update(len(batch))

            for item in reader.messages(sorted(wanted)):
                if item.topic in image_topics:
                    m = image_topics[item.topic]
                    stats['images'][m] += 1
                    inputs[modalities.index(m)].signalMessage(item.msg)
                    if len(ready) >= batch_size:
                        flush()
                if item.topic == topics.AUDIO:
                    try:
                        msg_to_audio(item.msg, channels)
                    except InputError as exc:
                        raise InputError(f'{topics.AUDIO} at stamp {stamp_to_ns(item.msg.header.stamp)} ns '
                                         f'disagrees with its AudioInfo ({channels} channels): {exc}') from None
                    stats['audio_chunks'] += 1
                if item.topic in copied:
                    out.write(item.topic, item.msg, item.stamp_ns)
            flush()
            if stats['frames'] == 0:
                raise InputError(f'bag {in_bag}: no camera frame has all of {", ".join(modalities)} within '
                                 f'{slop} s of each other; nothing to label')
    stats['unmatched_images'] = {m: stats['images'][m] - stats['frames'] - stats['skipped_by_stride']
                                 for m in modalities}
    elapsed = time.perf_counter() - start
    stats['wall_s'] = round(elapsed, 3)
    stats['frames_per_s'] = round(stats['frames'] / elapsed, 2) if elapsed > 0 else None
    return stats
