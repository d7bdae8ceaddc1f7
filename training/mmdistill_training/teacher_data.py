"""Camera frames + simulator ground truth for training and evaluating the teachers (ROS-free core).

A :class:`TeacherFrame` is one camera frame of one drive: the images of the requested
modalities (as the detectors take them: ``rgb8`` uint8 (H, W, 3), depth ``32FC1`` metres,
thermal ``32FC1`` kelvin or ``16UC1`` counts), the ground-truth boxes of ``/sim/truth`` with
each box's per-modality visible fraction, and the frame's condition tags.

Two sources give the same frames:

* :func:`read_bag_frames` / :func:`read_frames`: simulator bags (``mmdistill sim``). Images and
  ``/sim/truth`` are matched by **header stamp** (exact: every camera of the simulated car is
  triggered together); a frame that lacks one of the requested images or its truth is
  skipped and counted in ``FrameSet.skipped``.
* :func:`simulator_frames`: straight from a :class:`mmdistill_sim.simulator.Simulator`, without
  writing a bag (what the demo and tests use for speed); identical content.

Condition names (:data:`CONDITIONS`) used by the reports: ``day``, ``dusk``, ``night``
(``time_of_day``), ``clear``, ``fog``, ``rain`` (``weather``), ``static``, ``driving``
(``ego_motion``) and ``occluded`` (the frame holds at least one ground-truth vehicle flagged
``occluded``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from mmdistill_common.errors import InputError

__all__ = ['MODALITIES', 'ACCEPTED_ENCODINGS', 'CONDITIONS', 'TeacherFrame', 'FrameSet', 'read_bag_frames',
           'read_frames', 'simulator_frames', 'bag_scenario', 'frame_conditions', 'split_drives']

MODALITIES = ('rgb', 'depth', 'thermal')
# image encodings each teacher accepts (mmdistill_teachers.detector.preprocess)
ACCEPTED_ENCODINGS: Dict[str, Tuple[str, ...]] = {'rgb': ('rgb8',), 'depth': ('32FC1',),
                                                  'thermal': ('32FC1', '16UC1')}

# condition name -> predicate on a frame's tags (the order is the report's column order)
CONDITIONS: Dict[str, Callable[[Mapping], bool]] = {
    'day': lambda t: t.get('time_of_day') == 'day',
    'dusk': lambda t: t.get('time_of_day') == 'dusk',
    'night': lambda t: t.get('time_of_day') == 'night',
    'clear': lambda t: t.get('weather') == 'clear',
    'fog': lambda t: t.get('weather') == 'fog',
    'rain': lambda t: t.get('weather') == 'rain',
    'static': lambda t: t.get('ego_motion') == 'static',
    'driving': lambda t: t.get('ego_motion') == 'driving',
    'occluded': lambda t: bool(t.get('occluded')),
}


@dataclass
class TeacherFrame:
    """One camera frame with ground truth.

    ``boxes`` float64 (N, 4) xyxy pixels of the RGB image (amodal, as ``/sim/truth``);
    ``visible`` modality -> (N,) visible fraction in [0, 1]; ``occluded`` bool (N,);
    ``tags``: ``scenario, time_of_day, weather, ego_motion`` and ``occluded`` (any box occluded).
    ``audible`` bool (N,), ``distance`` (N,) metres and ``engine_on`` bool (N,): the simulator's
    per-vehicle truth for the evaluation rule (:func:`mmdistill_training.metrics.evaluate_truth`);
    None where the source does not know them (a camera bag with boxes only).
    """
    drive: str
    stamp_ns: int
    images: Dict[str, np.ndarray]
    boxes: np.ndarray
    ids: np.ndarray
    classes: List[str]
    visible: Dict[str, np.ndarray]
    occluded: np.ndarray
    tags: Dict[str, object]
    audible: Optional[np.ndarray] = None
    distance: Optional[np.ndarray] = None
    engine_on: Optional[np.ndarray] = None

    def target_boxes(self, modality: str, min_visible: float = 0.0) -> np.ndarray:
        """Ground-truth boxes that ``modality`` can see (visible fraction >= ``min_visible``).

        Why: a teacher is trained on the vehicles its sensor shows (as a real detector is
        trained on labelled, visible objects); a box invisible to the sensor would teach it to
        hallucinate. Evaluation uses all boxes (:attr:`boxes`).
        """
        if min_visible <= 0.0 or len(self.boxes) == 0:
            return self.boxes
        return self.boxes[self.visible[modality] >= min_visible]

    @property
    def conditions(self) -> List[str]:
        return frame_conditions(self.tags)


@dataclass
class FrameSet:
    """Frames of one or more drives plus what was skipped (``reason -> count``) and per drive its
    scenario tags (``drives: name -> {scenario, time_of_day, weather, ego_motion, frames, bag}``)."""
    frames: List[TeacherFrame] = field(default_factory=list)
    drives: Dict[str, dict] = field(default_factory=dict)
    skipped: Dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def extend(self, other: 'FrameSet') -> None:
        clash = set(self.drives) & set(other.drives)
        if clash:
            raise InputError(f'drive names must be unique, {sorted(clash)} given twice')
        self.frames.extend(other.frames)
        self.drives.update(other.drives)
        for k, v in other.skipped.items():
            self.skipped[k] = self.skipped.get(k, 0) + v

    @property
    def image_size(self) -> Tuple[int, int]:
        """(W, H) of the frames' images (all equal, checked on reading)."""
        if not self.frames:
            raise InputError('no frames')
        im = next(iter(self.frames[0].images.values()))
        return int(im.shape[1]), int(im.shape[0])


def frame_conditions(tags: Mapping) -> List[str]:
    """Names of :data:`CONDITIONS` that hold for a frame's tags."""
    return [name for name, pred in CONDITIONS.items() if pred(tags)]


def _check_modalities(modalities: Sequence[str]) -> Tuple[str, ...]:
    modalities = tuple(modalities)
    bad = [m for m in modalities if m not in MODALITIES]
    if bad or not modalities:
        raise InputError(f'unknown modalities {bad}; choose from {", ".join(MODALITIES)}')
    return modalities


def _check_stride(frame_stride: int) -> int:
    if int(frame_stride) < 1:
        raise InputError(f'frame_stride must be >= 1, got {frame_stride}')
    return int(frame_stride)


def _truth_arrays(truth) -> Tuple[np.ndarray, np.ndarray, List[str], Dict[str, np.ndarray], np.ndarray]:
    vs = list(truth.vehicles)
    boxes = np.zeros((len(vs), 4), np.float64)
    for i, v in enumerate(vs):
        b = v.bbox
        cx, cy, w, h = b.center.position.x, b.center.position.y, b.size_x, b.size_y
        boxes[i] = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    visible = {m: np.array([getattr(v, f'visible_{m}') for v in vs], np.float64) for m in MODALITIES}
    return (boxes, np.array([v.id for v in vs], np.int64), [v.vehicle_class for v in vs], visible,
            np.array([v.occluded for v in vs], bool))


def bag_scenario(path: Union[str, Path]) -> dict:
    """Scenario tags of a simulator bag (from its first ``/sim/truth`` message), without images."""
    from mmdistill_common.bagio import BagReader
    from mmdistill_common.topics import SIM_TRUTH
    with BagReader(path) as bag:
        bag.require([SIM_TRUTH])
        for m in bag.messages([SIM_TRUTH]):
            t = m.msg
            return {'scenario': t.scenario, 'time_of_day': t.time_of_day, 'weather': t.weather,
                    'ego_motion': t.ego_motion}
    raise InputError(f'bag {path} has no {SIM_TRUTH} messages')


def read_bag_frames(path: Union[str, Path], modalities: Sequence[str] = MODALITIES, frame_stride: int = 1,
                    drive: Optional[str] = None, progress: bool = False) -> FrameSet:
    """Read the camera frames of one simulator bag, matched to ``/sim/truth`` by header stamp.

    Keeps every ``frame_stride``-th matched frame (in stamp order, starting with the first).
    ``drive`` names the drive (default: the bag directory's name). Raises :class:`InputError`
    when the bag is missing, damaged, lacks an image topic or ``/sim/truth``, holds an image
    encoding the teacher cannot take, images of differing sizes, or no complete frame.
    """
    from tqdm import tqdm

    from mmdistill_common.bagio import BagReader
    from mmdistill_common.conversions import msg_to_image, stamp_to_ns
    from mmdistill_common.topics import SIM_TRUTH, image_topic

    modalities = _check_modalities(modalities)
    stride = _check_stride(frame_stride)
    path = Path(path)
    drive = drive or path.name
    topic_of = {image_topic(m): m for m in modalities}
    with BagReader(path) as bag:
        bag.require(list(topic_of) + [SIM_TRUTH])
        n_truth = bag.topics[SIM_TRUTH][1]
        # pass 1: truth only (small), to know which stamps are kept before decoding images
        truths = {}
        for m in bag.messages([SIM_TRUTH]):
            truths[stamp_to_ns(m.msg.header.stamp)] = m.msg
        images: Dict[int, Dict[str, np.ndarray]] = {}
        kept_order = sorted(truths)
        wanted = set(kept_order)
        with tqdm(total=bag.topics[image_topic(modalities[0])][1] * len(modalities), unit='img',
                  desc=f'read {drive}', disable=not progress, leave=False) as bar:
            for m in bag.messages(list(topic_of)):
                bar.update(1)
                mod = topic_of[m.topic]
                stamp = stamp_to_ns(m.msg.header.stamp)
                if stamp not in wanted:
                    continue
                enc = m.msg.encoding
                if enc not in ACCEPTED_ENCODINGS[mod]:
                    raise InputError(f'bag {path}: {m.topic} has encoding {enc!r}; the {mod} teacher takes '
                                     f'{" or ".join(ACCEPTED_ENCODINGS[mod])}')
                images.setdefault(stamp, {})[mod] = m.msg  # decoded below, only for kept frames
    complete = [s for s in kept_order if len(images.get(s, {})) == len(modalities)]
    out = FrameSet()
    if len(complete) < n_truth:
        out.skipped['incomplete'] = n_truth - len(complete)
    complete = complete[::stride]
    if not complete:
        raise InputError(f'bag {path}: no camera frame has all of {", ".join(modalities)} images and '
                         f'{SIM_TRUTH} with the same header stamp')
    size = None
    for stamp in complete:
        truth = truths[stamp]
        ims = {}
        for mod in modalities:
            im = msg_to_image(images[stamp][mod])
            if size is None:
                size = im.shape[:2]
            elif im.shape[:2] != size:
                raise InputError(f'bag {path}: {mod} image at stamp {stamp} is {im.shape[1]}x{im.shape[0]}, '
                                 f'earlier images are {size[1]}x{size[0]} (WxH)')
            ims[mod] = im
        boxes, ids, classes, visible, occluded = _truth_arrays(truth)
        tags = {'scenario': truth.scenario, 'time_of_day': truth.time_of_day, 'weather': truth.weather,
                'ego_motion': truth.ego_motion, 'occluded': bool(occluded.any())}
        vs = truth.vehicles
        out.frames.append(TeacherFrame(drive, stamp, ims, boxes, ids, classes, visible, occluded, tags,
                                       audible=np.array([v.audible for v in vs], bool),
                                       distance=np.array([v.distance_m for v in vs], np.float32).astype(np.float64),
                                       engine_on=np.array([v.engine_on for v in vs], bool)))
    t0 = out.frames[0].tags
    out.drives[drive] = {'bag': str(path), 'frames': len(out.frames),
                         **{k: t0[k] for k in ('scenario', 'time_of_day', 'weather', 'ego_motion')}}
    return out


def read_frames(bags: Iterable[Union[str, Path]], modalities: Sequence[str] = MODALITIES,
                frame_stride: int = 1, progress: bool = False) -> FrameSet:
    """:func:`read_bag_frames` over several bags (drive = bag directory name, must be unique)."""
    from tqdm import tqdm
    bags = [Path(b) for b in bags]
    out = FrameSet()
    for b in tqdm(bags, desc='read bags', unit='bag', disable=not progress):
        out.extend(read_bag_frames(b, modalities, frame_stride, progress=progress))
    if out.frames:
        sizes = {f.images[modalities[0]].shape[:2] for f in out.frames}
        if len(sizes) > 1:
            raise InputError(f'bags hold images of different sizes {sorted(sizes)}; one teacher needs one size')
    return out


def simulator_frames(sim, modalities: Sequence[str] = MODALITIES, frame_stride: int = 1,
                     drive: Optional[str] = None, progress: bool = False) -> FrameSet:
    """The frames of a :class:`~mmdistill_sim.simulator.Simulator` (no bag): every
    ``frame_stride``-th frame, the same content :func:`read_bag_frames` gives for its bag."""
    from tqdm import tqdm
    modalities = _check_modalities(modalities)
    stride = _check_stride(frame_stride)
    sc = sim.scenario
    drive = drive or f'{sc.name}-{sc.seed}'
    out = FrameSet()
    for k in tqdm(range(0, sim.n_frames, stride), desc=f'simulate {drive}', unit='frame', disable=not progress,
                  leave=False):
        f = sim.frame(k)
        gt = f.gt
        boxes = np.asarray(gt.boxes, np.float64).reshape(-1, 4)
        # the same float32 round trip as the bag (BoundingBox2D centre/size are float64, visible_* float32)
        visible = {m: np.asarray(getattr(gt, f'visible_{m}'), np.float32).astype(np.float64) for m in MODALITIES}
        occluded = np.asarray(gt.occluded, bool)
        tags = {'scenario': sc.name, 'time_of_day': sc.time_of_day, 'weather': sc.weather,
                'ego_motion': sc.ego.mode, 'occluded': bool(occluded.any())}
        out.frames.append(TeacherFrame(drive, f.stamp_ns, {m: getattr(f, m) for m in modalities}, boxes,
                                       np.asarray(gt.ids, np.int64), list(gt.classes), visible, occluded, tags,
                                       audible=np.asarray(gt.audible, bool),
                                       distance=np.asarray(gt.distance_m, np.float32).astype(np.float64),
                                       engine_on=np.asarray(gt.engine_on, bool)))
    if not out.frames:
        raise InputError(f'simulation {drive} has no frames')
    out.drives[drive] = {'bag': None, 'frames': len(out.frames), 'scenario': sc.name,
                         'time_of_day': sc.time_of_day, 'weather': sc.weather, 'ego_motion': sc.ego.mode}
    return out


def split_drives(drives: Mapping[str, str], test_apart: bool = False):
    """Train / validation drives for the teachers, by drive, never by frame.

    ``drives``: drive name -> scenario. The rule of docs/data-formats.md §3 (drives grouped by
    scenario, sorted by name; of n drives the last ``max(1, round(0.15 n))`` are test, the ones
    before them val when n >= 3; a group of 2 gives one train and one test drive; a group of 1
    is train). The teachers train on its **train** drives and are validated on the val + test
    drives, so that no drive the student is later evaluated on was seen by a teacher.
    With ``test_apart`` it returns ``(train, val, test)``: the fusion is calibrated on ``val``
    only, never on the drives the student is tested on.
    """
    groups: Dict[str, List[str]] = {}
    for name, scen in drives.items():
        groups.setdefault(scen, []).append(name)
    train, held, val, test = [], [], [], []
    for scen in sorted(groups):
        names = sorted(groups[scen])
        n = len(names)
        if n == 1:
            train += names
            continue
        k = max(1, round(0.15 * n))
        n_held = k + (k if n >= 3 else 0)
        train += names[:n - n_held]
        held += names[n - n_held:]
        val += names[n - n_held:n - k]
        test += names[n - k:]
    return (train, val, test) if test_apart else (train, held)
