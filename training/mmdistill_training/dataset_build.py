"""Labelled bags -> dataset directory (docs/data-formats.md §3), ROS-free apart from reading bags.

Why a separate build step: training reads the same 1-s windows for many epochs, so the front
end runs once here and its output is stored as memory-mapped float16 next to the raw audio
(kept whole per drive so other front ends and classical baselines can be run later).

Windows are never padded. The audio of a drive is cut into contiguous *segments* wherever a
chunk's stamp disagrees with the one predicted from the previous chunk's stamp and sample
count (more than ``tolerance_ns`` off, as ``AudioRingBuffer``); a labelled frame whose window
is not inside one segment is skipped and counted (``incomplete_window`` at the start/end of the
audio, ``audio_gap`` when the window straddles a discontinuity). Sample positions are anchored
on the stamp of the chunk that holds the frame's stamp, so slow clock drift does not
accumulate.

The build writes into a temporary sibling of ``--out`` and renames it at the end: an error
leaves nothing behind.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mmdistill_common import topics
from mmdistill_common.errors import ConfigError, InputError

__all__ = ['BuildConfig', 'AudioTrack', 'DriveData', 'FORMAT', 'FORMAT_VERSION', 'FEATURES', 'MODALITIES',
           'STRIDES', 'assemble_audio', 'read_drive', 'split_by_rule', 'load_split_file', 'scenario_geometry',
           'build_dataset', 'content_hash', 'SPLIT_RULE']

FORMAT = 'mmdistill-dataset'
FORMAT_VERSION = 1
FEATURES = ('logmel', 'ild', 'gcc')
#: the acoustic-image front end's groups (SRP-PHAT coherence, beam energy, and optionally the MVDR
#: beam power), steered from the geometry
ACOUSTIC_FEATURES = ('srp', 'das', 'mvdr')
#: the acoustic image's STFT hop (= n_fft, 23 ms frames): finer than the bearing changes they
#: track, and half the frames of an overlapping hop for the front end and the network
ACOUSTIC_HOP = 1024
MODALITIES = ('rgb', 'depth', 'thermal')
STRIDES = (8, 16, 32)
DEFAULT_IMAGE_SIZE = (384, 128)
UNKNOWN = 'unknown'
SPLITS = ('train', 'val', 'test')
SPLIT_RULE = ('by drive: drives grouped by scenario and sorted by name; in a group of n >= 3 the last '
              'max(1, round(0.15 n)) go to test and the max(1, round(0.15 n)) before them to val, the rest '
              'to train; a group of 2 gives one train and one test drive; a group of 1 goes to train')
F16_MAX = float(np.finfo(np.float16).max)


@dataclasses.dataclass
class BuildConfig:
    """What ``mmdistill dataset build`` does; stored (in part) in index.json."""
    window: str = 'centered'
    window_s: float = 1.0                # audio per window (the paper's 1 s; a parameter, DESIGN §7)
    features: Tuple[str, ...] = FEATURES
    frame_stride: int = 1
    split_file: Optional[Path] = None
    batch_size: int = 2                  # windows per front-end call; larger batches are slower on CPU (cache)
    tolerance_ns: Optional[int] = None   # audio continuity tolerance (default 1 ms, >= half a sample)
    geometry: Optional[dict] = None      # mics + camera (calibration); None = from the named scenarios
    mix: int = 0                         # mixed copies of every training drive (mixing.py)

    def __post_init__(self):
        self.features = tuple(self.features)
        if self.window not in ('centered', 'causal'):
            raise ConfigError(f"--window must be 'centered' or 'causal', got {self.window!r}")
        known = FEATURES + ACOUSTIC_FEATURES
        unknown = [f for f in self.features if f not in known]
        if unknown or not self.features:
            raise ConfigError(f'--features: unknown {unknown or "(empty)"}; choose from {",".join(known)}')
        if self.acoustic:
            if not {'srp', 'das'} <= set(self.features) or not set(self.features) <= set(ACOUSTIC_FEATURES):
                raise ConfigError('--features: the acoustic image is srp,das or srp,das,mvdr, not mixed with '
                                  'spectrogram groups')
        elif 'logmel' not in self.features:
            raise ConfigError('--features must include logmel (the other groups are added to it)')
        if len(set(self.features)) != len(self.features):
            raise ConfigError(f'--features lists a group twice: {",".join(self.features)}')
        if not 0.1 <= float(self.window_s) <= 4.0:
            raise ConfigError(f'--window-s must be in [0.1, 4] s, got {self.window_s}')
        if int(self.frame_stride) < 1:
            raise ConfigError(f'--frame-stride must be >= 1, got {self.frame_stride}')
        if int(self.batch_size) < 1:
            raise ConfigError(f'batch_size must be >= 1, got {self.batch_size}')
        if isinstance(self.mix, bool) or not isinstance(self.mix, int) or self.mix < 0:
            raise ConfigError(f'--mix must be a non-negative integer, got {self.mix!r}')

    def window_samples(self, sample_rate: int) -> int:
        from mmdistill_student.frontend import FrontendConfig
        return FrontendConfig(sample_rate=int(sample_rate), window_s=float(self.window_s)).window_samples

    @property
    def acoustic(self) -> bool:
        return any(f in ACOUSTIC_FEATURES for f in self.features)

    def frontend_config(self, sample_rate: int, channels: int, geometry: Optional[dict] = None,
                        image_size: Tuple[int, int] = DEFAULT_IMAGE_SIZE):
        """The front end of the dataset's features; the acoustic image steers to the columns of the
        finest student grid (stride 8) of ``image_size`` with the mics and camera of ``geometry``."""
        from mmdistill_student.frontend import FrontendConfig
        if self.acoustic:
            if geometry is None:
                raise ConfigError('--features srp,das needs the array and camera geometry: the drives are not '
                                  'named simulator scenarios with one common geometry; pass --geometry FILE.json')
            return FrontendConfig(sample_rate=int(sample_rate), channels=int(channels), mode=self.window,
                                  window_s=float(self.window_s), kind='acoustic_image', hop=ACOUSTIC_HOP,
                                  columns=int(image_size[0]) // STRIDES[0], geometry=geometry,
                                  mvdr='mvdr' in self.features)
        return FrontendConfig(sample_rate=int(sample_rate), channels=int(channels), mode=self.window,
                              window_s=float(self.window_s), use_ild='ild' in self.features,
                              use_gccphat='gcc' in self.features)


# ----------------------------------------------------------------------------------- audio
@dataclasses.dataclass
class AudioTrack:
    """A drive's audio: all received samples in stamp order, cut into contiguous segments."""
    samples: np.ndarray          # (S, C) int16
    sample_rate: int
    chunk_stamps: np.ndarray     # (K,) int64 stamp of each chunk's first sample
    chunk_first: np.ndarray      # (K,) int64 index of each chunk's first sample in ``samples``
    chunk_segment: np.ndarray    # (K,) int64 segment of each chunk
    segments: List[Tuple[int, int, int]]   # (first sample, stamp ns, n samples)
    gaps: int = 0
    overlaps: int = 0

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    def window_start(self, stamp_ns: int, mode: str, n: int) -> Tuple[Optional[int], str]:
        """First sample of the ``n``-sample window for ``stamp_ns`` (``mode`` centered: sample
        ``n // 2`` of the window is the one captured at the stamp; causal: the window ends just
        before it), or ``(None, reason)`` when the window is not inside one segment."""
        k = int(np.searchsorted(self.chunk_stamps, int(stamp_ns), side='right')) - 1
        if k < 0:
            return None, 'incomplete_window'
        idx = int(self.chunk_first[k]) + int(round((int(stamp_ns) - int(self.chunk_stamps[k]))
                                                   * self.sample_rate / 1e9))
        start = idx - (n if mode == 'causal' else n // 2)
        seg = int(self.chunk_segment[k])
        s0, _, sn = self.segments[seg]
        if start >= s0 and start + n <= s0 + sn:
            return start, ''
        # outside its segment: a gap if other audio would have covered the window
        lo_seg = seg if start >= s0 else seg - 1
        hi_seg = seg if start + n <= s0 + sn else seg + 1
        if start >= 0 and start + n <= len(self.samples) and (lo_seg >= 0 and hi_seg < len(self.segments)):
            return None, 'audio_gap'
        return None, 'incomplete_window'


def assemble_audio(chunks: Sequence[Tuple[int, bytes]], channels: int, sample_rate: int, where: str = 'bag',
                   tolerance_ns: Optional[int] = None) -> AudioTrack:
    """``[(stamp_ns, S16LE bytes)]`` -> :class:`AudioTrack`; InputError when the bytes or the stamps
    disagree with AudioInfo (odd byte length, a stamp rate that is not ``sample_rate``)."""
    if not chunks:
        raise InputError(f'{where}: no audio messages')
    order = sorted(range(len(chunks)), key=lambda i: chunks[i][0])
    frame_bytes = 2 * channels
    tol = max(1_000_000 if tolerance_ns is None else int(tolerance_ns), int(math.ceil(0.5e9 / sample_rate)))
    arrays, stamps, firsts, seg_of, segments = [], [], [], [], []
    count, expected, prev_stamp, gaps, overlaps = 0, None, None, 0, 0
    for i in order:
        stamp, data = chunks[i]
        if len(data) % frame_bytes:
            raise InputError(f'{where}: audio chunk at {stamp} ns has {len(data)} bytes, not a whole number of '
                             f'{channels}-channel S16LE frames ({frame_bytes} bytes each) as AudioInfo says')
        n = len(data) // frame_bytes
        if n == 0:
            continue
        if expected is None or abs(stamp - expected) > tol or stamp == prev_stamp:
            if expected is not None:
                if stamp > expected:
                    gaps += 1
                else:
                    overlaps += 1
            segments.append([count, int(stamp), 0])
        arrays.append(np.frombuffer(data, dtype='<i2').reshape(n, channels))
        stamps.append(int(stamp))
        firsts.append(count)
        seg_of.append(len(segments) - 1)
        segments[-1][2] += n
        count += n
        prev_stamp = stamp
        expected = stamp + int(round(n * 1e9 / sample_rate))
    if not arrays:
        raise InputError(f'{where}: the audio messages carry no samples')
    # a stream whose stamps advance at another rate than AudioInfo's (wrong rate or channel
    # count) breaks continuity at nearly every chunk: refuse it instead of skipping everything
    if len(stamps) >= 9:
        dt = np.diff(np.asarray(stamps, np.int64))
        ns = np.asarray([len(a) for a in arrays[:-1]], np.float64)
        ok = dt > 0
        est = float(np.median(ns[ok] / (dt[ok] / 1e9))) if ok.any() else float('nan')
        if not abs(est - sample_rate) <= 0.01 * sample_rate:
            raise InputError(f'{where}: audio stamps advance at about {est:.0f} samples/s but AudioInfo says '
                             f'{sample_rate} Hz with {channels} channels; sample rate or channel count is wrong')
    samples = np.concatenate(arrays).astype(np.int16)
    return AudioTrack(samples, int(sample_rate), np.asarray(stamps, np.int64), np.asarray(firsts, np.int64),
                      np.asarray(seg_of, np.int64), [tuple(s) for s in segments], gaps, overlaps)


# ----------------------------------------------------------------------------------- bags
@dataclasses.dataclass
class FrameRecord:
    stamp_ns: int
    label: object                                   # PseudoLabelData
    teachers: Dict[str, Tuple[np.ndarray, np.ndarray]]
    truth: Optional[dict]
    window_start: int = -1


@dataclasses.dataclass
class DriveData:
    name: str
    bag: str
    conditions: Dict[str, str]
    audio: AudioTrack
    frames: List[FrameRecord]          # kept frames, time order
    labelled: int                      # PseudoLabel messages in the bag
    skipped: Dict[str, int]
    has_truth: bool
    image_size: Optional[Tuple[int, int]]
    teacher_topics: List[str]
    mixed_with: Optional[str] = None   # a mixed drive (mixing.py): the partner drive summed into it
    clipped_samples: int = 0           # samples of a mixed drive's sum clipped to int16


def _truth_dict(msg) -> dict:
    n = len(msg.vehicles)
    boxes = np.zeros((n, 4), np.float32)
    for k, v in enumerate(msg.vehicles):
        cx, cy = v.bbox.center.position.x, v.bbox.center.position.y
        hw, hh = v.bbox.size_x / 2, v.bbox.size_y / 2
        boxes[k] = (cx - hw, cy - hh, cx + hw, cy + hh)
    return {'boxes': boxes, 'ids': np.array([v.id for v in msg.vehicles], np.int32),
            'occluded': np.array([v.occluded for v in msg.vehicles], bool),
            'audible': np.array([v.audible for v in msg.vehicles], bool),
            # for the evaluation rule (metrics.truth_sets): seen by a camera, distance bucket
            'visible': np.array([[getattr(v, f'visible_{m}') for m in MODALITIES] for v in msg.vehicles],
                                np.float32).reshape(n, len(MODALITIES)),
            'distance': np.array([v.distance_m for v in msg.vehicles], np.float32)}


def _image_size_of(label, where: str) -> Optional[Tuple[int, int]]:
    size = None
    for m, levels in label.attention.items():
        if len(levels) != len(STRIDES):
            raise InputError(f'{where}: attention of {m!r} has {len(levels)} levels, expected {len(STRIDES)}')
        h3, w3 = levels[0].shape
        this = (w3 * STRIDES[0], h3 * STRIDES[0])
        for lvl, s in zip(levels, STRIDES):
            if lvl.shape != (this[1] // s, this[0] // s):
                raise InputError(f'{where}: attention of {m!r} has levels {[l.shape for l in levels]}, '
                                 f'not a P3-P5 pyramid at strides {STRIDES}')
        if size is not None and this != size:
            raise InputError(f'{where}: attention maps of different image sizes {size} and {this}')
        size = this
    return size


def read_drive(bag_path: Path, name: str, config: BuildConfig) -> DriveData:
    """Read one labelled bag: audio, AudioInfo, pseudo-labels, teacher detections and truth."""
    from mmdistill_common.bagio import BagReader
    from mmdistill_common.conversions import check_audio_info, msg_to_detections, stamp_to_ns
    from mmdistill_teachers.labelling import parse_pseudo_label

    where = f'bag {bag_path}'
    with BagReader(bag_path) as bag:
        bag.require([topics.AUDIO, topics.AUDIO_INFO, topics.PSEUDO_LABELS])
        have = bag.topics
        teacher_topics = [topics.teacher_detections_topic(m) for m in MODALITIES
                          if topics.teacher_detections_topic(m) in have]
        want = [topics.AUDIO, topics.AUDIO_INFO, topics.PSEUDO_LABELS, *teacher_topics]
        has_truth = topics.SIM_TRUTH in have
        if has_truth:
            want.append(topics.SIM_TRUTH)
        infos, chunks, labels, teachers, truths = [], [], [], {m: {} for m in MODALITIES}, {}
        for m in bag.messages(want):
            if m.topic == topics.AUDIO:
                chunks.append((stamp_to_ns(m.msg.header.stamp), bytes(m.msg.audio.data)))
            elif m.topic == topics.AUDIO_INFO:
                infos.append(m.msg)
            elif m.topic == topics.PSEUDO_LABELS:
                labels.append(m.msg)
            elif m.topic == topics.SIM_TRUTH:
                truths.setdefault(stamp_to_ns(m.msg.header.stamp), m.msg)
            else:
                mod = m.topic.split('/')[2]
                teachers[mod].setdefault(stamp_to_ns(m.msg.header.stamp), m.msg)
    if not infos:
        raise InputError(f'{where}: no AudioInfo message on {topics.AUDIO_INFO}')
    info = infos[0]
    try:
        check_audio_info(info)
    except InputError as exc:
        raise InputError(f'{where}: {exc}') from None
    for other in infos[1:]:
        if (other.channels, other.sample_rate, other.sample_format) != (info.channels, info.sample_rate,
                                                                        info.sample_format):
            raise InputError(f'{where}: AudioInfo changes during the drive ({info.channels} ch {info.sample_rate} '
                             f'Hz -> {other.channels} ch {other.sample_rate} Hz)')
    audio = assemble_audio(chunks, int(info.channels), int(info.sample_rate), where, config.tolerance_ns)
    if not labels:
        raise InputError(f'{where}: no PseudoLabel messages on {topics.PSEUDO_LABELS}')

    parsed = []
    image_size = None
    for msg in labels:
        try:
            pl = parse_pseudo_label(msg)
        except InputError as exc:
            raise InputError(f'{where}: bad PseudoLabel at {stamp_to_ns(msg.header.stamp)} ns: {exc}') from None
        unknown = [m for m in pl.modalities if m not in MODALITIES]
        if unknown:
            raise InputError(f'{where}: PseudoLabel names unknown teachers {unknown}')
        size = _image_size_of(pl, where)
        if size is not None:
            if image_size is not None and size != image_size:
                raise InputError(f'{where}: attention maps of different image sizes {image_size} and {size}')
            image_size = size
        parsed.append(pl)
    parsed.sort(key=lambda p: p.stamp_ns)

    skipped: Dict[str, int] = collections.Counter()
    unique, last = [], None
    for pl in parsed:
        if pl.stamp_ns == last:
            skipped['duplicate_stamp'] += 1
            continue
        unique.append(pl)
        last = pl.stamp_ns
    n = config.window_samples(info.sample_rate)
    frames: List[FrameRecord] = []
    for i, pl in enumerate(unique):
        if i % int(config.frame_stride):
            continue
        start, reason = audio.window_start(pl.stamp_ns, config.window, n)
        if start is None:
            skipped[reason] += 1
            continue
        tdets = {}
        for m in MODALITIES:
            msg = teachers[m].get(pl.stamp_ns)
            if msg is not None:
                d = msg_to_detections(msg)
                tdets[m] = (d.boxes.astype(np.float32), d.scores.astype(np.float32))
        truth = _truth_dict(truths[pl.stamp_ns]) if pl.stamp_ns in truths else None
        frames.append(FrameRecord(pl.stamp_ns, pl, tdets, truth, start))

    first_truth = next(iter(truths.values()), None)
    conditions = {k: (getattr(first_truth, k) or UNKNOWN) if first_truth is not None else UNKNOWN
                  for k in ('scenario', 'time_of_day', 'weather', 'ego_motion')}
    return DriveData(name, str(bag_path), conditions, audio, frames, len(labels), dict(skipped),
                     has_truth, image_size, teacher_topics)


# ----------------------------------------------------------------------------------- splits
def split_by_rule(drives: Sequence[Tuple[str, str]]) -> Dict[str, List[str]]:
    """``[(drive name, scenario)]`` -> ``{'train', 'val', 'test'}`` drive lists (see :data:`SPLIT_RULE`)."""
    groups: Dict[str, List[str]] = collections.defaultdict(list)
    for name, scenario in drives:
        groups[scenario].append(name)
    out = {s: [] for s in SPLITS}
    for scenario in sorted(groups):
        names = sorted(groups[scenario])
        n = len(names)
        if n == 1:
            out['train'] += names
        elif n == 2:
            out['train'].append(names[0])
            out['test'].append(names[1])
        else:
            k = max(1, int(round(0.15 * n)))
            out['test'] += names[n - k:]
            out['val'] += names[n - 2 * k:n - k]
            out['train'] += names[:n - 2 * k]
    return {s: sorted(v) for s, v in out.items()}


def load_split_file(path: Path, names: Sequence[str]) -> Dict[str, List[str]]:
    """A JSON ``{"train": [...], "val": [...], "test": [...]}`` (or a dataset index.json with
    ``splits``) naming every drive exactly once."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f'--split {path}: cannot read JSON ({exc})') from None
    if isinstance(data, dict) and isinstance(data.get('splits'), dict):
        data = data['splits']
    if not isinstance(data, dict) or set(data) - set(SPLITS):
        raise ConfigError(f'--split {path}: expected an object with keys among {list(SPLITS)}')
    seen: Dict[str, str] = {}
    for split, lst in data.items():
        if not isinstance(lst, list) or not all(isinstance(x, str) for x in lst):
            raise ConfigError(f'--split {path}: {split!r} must be a list of drive names')
        for x in lst:
            if x in seen:
                raise ConfigError(f'--split {path}: drive {x!r} is in both {seen[x]!r} and {split!r}')
            seen[x] = split
    unknown = sorted(set(seen) - set(names))
    missing = sorted(set(names) - set(seen))
    if unknown:
        raise ConfigError(f'--split {path}: unknown drives {unknown} (drives: {sorted(names)})')
    if missing:
        raise ConfigError(f'--split {path}: drives {missing} are in no split')
    return {s: sorted(data.get(s, [])) for s in SPLITS}


# ----------------------------------------------------------------------------------- geometry
def scenario_geometry(scenario: str, channels: int) -> Optional[dict]:
    """Mic positions and camera of a named simulator scenario (ego frame: x forward, y left,
    z up; metres), or None when the name does not load or the mic count differs."""
    if not scenario or scenario == UNKNOWN:
        return None
    try:
        from mmdistill_sim.scenario import list_scenarios, load_scenario
        if scenario not in list_scenarios():
            return None
        sc = load_scenario(scenario)
    except Exception:   # a scenario we cannot load is simply not described
        return None
    mics = sc.mic_array.positions()
    if len(mics) != channels:
        return None
    c = sc.camera
    return {'frame': 'ego: x forward, y left, z up (m)',
            'mic_positions_m': [[round(float(v), 9) for v in p] for p in mics],
            'mic_positions': [[round(float(v), 9) for v in p] for p in mics],     # alias (trainer.mirror_plan)
            'camera': {'width': int(c.width), 'height': int(c.height), 'fx': float(c.fx), 'fy': float(c.fy),
                       'cx': float(c.cx), 'cy': float(c.cy), 'height_m': float(c.height_m),
                       'x_m': float(c.x_m), 'pitch_deg': float(c.pitch_deg)},
            'speed_of_sound_mps': float(sc.speed_of_sound)}


def _common_geometry(geometries: Sequence[Optional[dict]]) -> Optional[dict]:
    """The drives' geometry when every drive has the same array and camera, else None. The speed
    of sound varies with each scenario's air temperature; the common entry holds its mean."""
    if not geometries or any(g is None for g in geometries):
        return None
    strip = [{k: v for k, v in g.items() if k != 'speed_of_sound_mps'} for g in geometries]
    if any(g != strip[0] for g in strip):
        return None
    out = dict(geometries[0])
    speeds = [g['speed_of_sound_mps'] for g in geometries if 'speed_of_sound_mps' in g]
    if speeds:
        out['speed_of_sound_mps'] = float(np.mean(speeds))
    return out


# ----------------------------------------------------------------------------------- hash
def content_hash(root: Path) -> str:
    """sha256 over every ``.npy`` under ``root`` (relative path, dtype, shape, data), in path order."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob('*.npy'), key=lambda q: q.relative_to(root).as_posix()):
        arr = np.load(p, mmap_mode='r')
        h.update(f'{p.relative_to(root).as_posix()}|{arr.dtype.str}|{arr.shape}\n'.encode())
        flat = arr.reshape(-1) if arr.size else arr
        step = max(1, (8 << 20) // max(1, arr.dtype.itemsize))
        for i in range(0, flat.size, step):
            h.update(np.ascontiguousarray(flat[i:i + step]).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------- build
def _drive_names(bags: Sequence[Path]) -> List[str]:
    names, used = [], collections.Counter()
    for b in bags:
        base = Path(b).resolve().name or 'drive'
        base = ''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in base)
        used[base] += 1
        names.append(base if used[base] == 1 else f'{base}-{used[base]}')
    return names


def _ragged(out: Path, name: str, per_frame: List[Dict[str, np.ndarray]], spec: Dict[str, Tuple[str, tuple]]):
    offsets = np.zeros(len(per_frame) + 1, np.int64)
    offsets[1:] = np.cumsum([len(next(iter(f.values()))) if f else 0 for f in per_frame])
    np.save(out / f'{name}_offsets.npy', offsets)
    for key, (dtype, tail) in spec.items():
        parts = [f[key] for f in per_frame if f]
        arr = np.concatenate(parts).astype(dtype) if parts else np.zeros((0, *tail), dtype)
        np.save(out / f'{name}_{key}.npy', arr.reshape(-1, *tail))


def _empty(tail=(4,), dtype=np.float32):
    return np.zeros((0, *tail), dtype)


def build_dataset(bags: Sequence[Path], out: Path, config: Optional[BuildConfig] = None,
                  progress: bool = True) -> dict:
    """Build the dataset directory ``out`` (must not exist) from labelled ``bags``; returns index.json."""
    import torch
    from tqdm import tqdm

    from mmdistill_student.frontend import Frontend
    from mmdistill_student.model import feature_groups

    config = config or BuildConfig()
    out = Path(out)
    if not bags:
        raise ConfigError('no bags given (--bags B1 ...)')
    if out.exists():
        raise ConfigError(f'{out} already exists; choose a new dataset directory')
    if not out.parent.exists():
        raise ConfigError(f'parent directory {out.parent} does not exist')
    bags = [Path(b) for b in bags]
    names = _drive_names(bags)

    drives: List[DriveData] = []
    for bag, name in tqdm(list(zip(bags, names)), desc='read bags', unit='bag', disable=not progress):
        drives.append(read_drive(bag, name, config))
    rates = {(d.audio.sample_rate, d.audio.channels) for d in drives}
    if len(rates) > 1:
        raise InputError(f'bags differ in audio format (sample rate, channels): {sorted(rates)}')
    sizes = {d.image_size for d in drives if d.image_size is not None}
    if len(sizes) > 1:
        raise InputError(f'bags differ in image size (from the attention maps): {sorted(sizes)}')
    image_size = sizes.pop() if sizes else DEFAULT_IMAGE_SIZE
    sample_rate, channels = rates.pop()
    geometries = [scenario_geometry(d.conditions['scenario'], d.audio.channels) for d in drives]
    geometry = config.geometry if config.geometry is not None else _common_geometry(geometries)
    fcfg = config.frontend_config(sample_rate, channels, geometry, image_size)
    n_frames = sum(len(d.frames) for d in drives)
    skipped = collections.Counter()
    for d in drives:
        skipped.update(d.skipped)
    if n_frames == 0:
        raise InputError(f'no labelled frame has a complete {fcfg.window_s:g}-s audio window '
                         f'(skipped: {dict(skipped) or "none"})')
    if config.split_file is not None:
        splits = load_split_file(config.split_file, names)
        split_rule = f'from {config.split_file}'
    else:
        splits = split_by_rule([(d.name, d.conditions['scenario']) for d in drives])
        split_rule = SPLIT_RULE
    if config.mix:
        from .mixing import mix_drives, mix_partners
        by_name = {d.name: (d, g) for d, g in zip(drives, geometries)}
        train = [(n, by_name[n][0].conditions['scenario']) for n in splits['train']]
        for a, b in mix_partners(train, int(config.mix)):
            m = mix_drives(by_name[a][0], by_name[b][0])
            drives.append(m)
            geometries.append(by_name[a][1])
            splits['train'].append(m.name)
            skipped.update(m.skipped)
        n_frames = sum(len(d.frames) for d in drives)

    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)      # mkdtemp makes it private; the dataset is not
        (tmp / 'audio').mkdir()
        frontend = Frontend(fcfg).eval()
        feats = np.lib.format.open_memmap(tmp / 'features.npy', mode='w+', dtype=np.float16,
                                          shape=(n_frames, *fcfg.feature_shape()))
        rows = []                    # (drive index, FrameRecord)
        drive_entries = []
        clipped = 0
        bar = tqdm(total=n_frames, desc='features', unit='frame', disable=not progress)
        for di, d in enumerate(drives):
            np.save(tmp / 'audio' / f'{d.name}.npy', d.audio.samples)
            first = len(rows)
            starts = [f.window_start for f in d.frames]
            n = fcfg.window_samples
            with torch.no_grad():
                for b in range(0, len(starts), int(config.batch_size)):
                    sl = starts[b:b + int(config.batch_size)]
                    x = np.stack([d.audio.samples[s:s + n].T for s in sl]).astype(np.float32) / 32768.0
                    y = frontend(torch.from_numpy(x)).numpy()
                    clipped += int(np.count_nonzero(np.abs(y) > F16_MAX))
                    feats[first + b:first + b + len(sl)] = np.clip(y, -F16_MAX, F16_MAX).astype(np.float16)
                    bar.update(len(sl))
            rows += [(di, f) for f in d.frames]
            drive_entries.append({
                'name': d.name, 'bag': d.bag, **d.conditions, 'first': first, 'count': len(d.frames),
                'audio': f'audio/{d.name}.npy', 'sample_rate': d.audio.sample_rate, 'channels': d.audio.channels,
                'audio_start_ns': int(d.audio.chunk_stamps[0]), 'audio_samples': int(len(d.audio.samples)),
                'segments': [[int(a), int(b), int(c)] for a, b, c in d.audio.segments],
                'audio_gaps': d.audio.gaps, 'audio_overlaps': d.audio.overlaps,
                'labelled': d.labelled, 'skipped': d.skipped, 'has_ground_truth': d.has_truth,
                'teacher_topics': d.teacher_topics,
                'geometry': geometries[di],
                **({'mixed_with': d.mixed_with, 'clipped_samples': d.clipped_samples} if d.mixed_with else {})})
        bar.close()
        feats.flush()
        del feats

        N = len(rows)
        np.save(tmp / 'stamp_ns.npy', np.array([f.stamp_ns for _, f in rows], np.int64))
        np.save(tmp / 'drive.npy', np.array([di for di, _ in rows], np.int32))
        np.save(tmp / 'window_start.npy', np.array([f.window_start for _, f in rows], np.int64))
        np.save(tmp / 'count.npy', np.array([len(f.label.boxes) for _, f in rows], np.int16))
        np.save(tmp / 'occluded.npy', np.array([bool(f.truth is not None and f.truth['occluded'].any())
                                                for _, f in rows], bool))
        np.save(tmp / 'teacher_present.npy', np.array([[m in f.label.modalities for m in MODALITIES]
                                                       for _, f in rows], bool).reshape(N, len(MODALITIES)))
        w, h = image_size
        for m in MODALITIES:
            for lvl, s in zip((3, 4, 5), STRIDES):
                arr = np.zeros((N, h // s, w // s), np.float16)
                for r, (_, f) in enumerate(rows):
                    maps = f.label.attention.get(m)
                    if maps is not None:
                        a = maps[lvl - 3]
                        clipped += int(np.count_nonzero(np.abs(a) > F16_MAX))
                        arr[r] = np.clip(a, -F16_MAX, F16_MAX)
                np.save(tmp / f'attention_{m}_p{lvl}.npy', arr)

        class_names: List[str] = ['vehicle']
        for _, f in rows:
            for c in f.label.labels:
                if c not in class_names:
                    class_names.append(c)
        cidx = {c: i for i, c in enumerate(class_names)}
        _ragged(tmp, 'labels', [{'boxes': f.label.boxes, 'scores': f.label.scores,
                                 'support': np.array([[m in s for m in MODALITIES] for s in f.label.support],
                                                     bool).reshape(-1, len(MODALITIES)),
                                 'class': np.array([cidx[c] for c in f.label.labels], np.int16)}
                                for _, f in rows],
                {'boxes': (np.float32, (4,)), 'scores': (np.float32, ()), 'support': (bool, (3,)),
                 'class': (np.int16, ())})
        for m in MODALITIES:
            _ragged(tmp, f'teacher_{m}', [dict(zip(('boxes', 'scores'), f.teachers.get(m, (_empty(), _empty(())))))
                                          for _, f in rows],
                    {'boxes': (np.float32, (4,)), 'scores': (np.float32, ())})
        has_gt = any(f.truth is not None for _, f in rows)
        if has_gt:
            empty_gt = {'boxes': _empty(), 'ids': _empty((), np.int32), 'occluded': _empty((), bool),
                        'audible': _empty((), bool), 'visible': _empty((len(MODALITIES),)),
                        'distance': _empty(())}
            _ragged(tmp, 'gt', [f.truth if f.truth is not None else empty_gt for _, f in rows],
                    {'boxes': (np.float32, (4,)), 'ids': (np.int32, ()), 'occluded': (bool, ()),
                     'audible': (bool, ()), 'visible': (np.float32, (len(MODALITIES),)),
                     'distance': (np.float32, ())})
            np.save(tmp / 'gt_present.npy', np.array([f.truth is not None for _, f in rows], bool))

        groups = feature_groups(fcfg)
        index = {
            'format': FORMAT, 'format_version': FORMAT_VERSION, 'window_mode': config.window,
            'frontend': fcfg.to_dict(), 'features': list(config.features),
            'feature_groups': {k: [int(a), int(b)] for k, (a, b) in groups.items()},
            'image_size': [int(w), int(h)], 'strides': list(STRIDES), 'modalities': list(MODALITIES),
            'class_names': class_names, 'n_frames': N, 'has_ground_truth': has_gt,
            'frame_stride': int(config.frame_stride),
            'mix': int(config.mix),
            'geometry': geometry,
            'drives': drive_entries,
            'skipped': {'incomplete_window': 0, 'audio_gap': 0, **dict(sorted(skipped.items()))},
            'float16_clipped': clipped,
            'splits': splits, 'split_rule': split_rule,
        }
        index['content_hash'] = content_hash(tmp)
        (tmp / 'index.json').write_text(json.dumps(index, indent=1) + '\n')
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index
