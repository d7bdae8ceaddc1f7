"""Teacher detector: one architecture for RGB, depth and thermal images (ROS-free).

``TeacherDetector`` = small residual conv backbone (strides 2..32) + FPN to P3-P5 +
the shared FCOS-style :class:`~mmdistill_teachers.head.DetectionHead`.

Input conventions (the DESIGN.md §3 image encodings, as numpy arrays H x W [x C]):

=========  =====================================  =======================================
modality   accepted input                          network input
=========  =====================================  =======================================
rgb        uint8 (H, W, 3), ``rgb8``              3 channels, ``x / 255``
depth      float32/64 (H, W) or (H, W, 1) metres   ``log1p(min(d, max_m)) / log1p(max_m)``;
           (``32FC1``; NaN, inf, <= 0 = no return)  no return -> ``invalid_fill`` (0), plus a
                                                   validity channel (1 valid, 0 not) by default
thermal    float32/64 (H, W) kelvin (``32FC1``) or  ``(T - center_k) / scale_k`` (290 K, 20 K);
           uint16 raw counts (``16UC1``,            counts -> kelvin as ``counts * counts_gain
           ``T = counts * 0.01 K``, TLinear)        + counts_offset_k``; NaN/inf are refused
=========  =====================================  =======================================

Images must have the model's input size (W x H, default 384 x 128); anything else
raises :class:`mmdistill_common.errors.InputError` with a message naming what is wrong.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdistill_common.errors import ConfigError, InputError

from .head import DEFAULT_STRIDES, DetectionHead, attention_maps, decode, group_norm

__all__ = ['MODALITIES', 'SENSOR_CHANNELS', 'DEFAULT_NORMALISATION', 'TeacherConfig',
           'TeacherDetector', 'Teacher', 'preprocess', 'network_channels']

MODALITIES = ('rgb', 'depth', 'thermal')
SENSOR_CHANNELS = {'rgb': 3, 'depth': 1, 'thermal': 1}
DEFAULT_NORMALISATION: Dict[str, Dict[str, object]] = {
    'rgb': {'kind': 'scale', 'divisor': 255.0},
    'depth': {'kind': 'log1p', 'max_m': 80.0, 'invalid_fill': 0.0, 'validity_channel': True},
    'thermal': {'kind': 'kelvin', 'center_k': 290.0, 'scale_k': 20.0,
                'counts_gain': 0.01, 'counts_offset_k': 0.0,
                'plausible_k': [150.0, 500.0]},
}


def _normalisation(modality: str, normalisation: Optional[dict]) -> dict:
    if modality not in MODALITIES:
        raise ConfigError(f'unknown modality {modality!r}; expected one of {MODALITIES}')
    norm = copy.deepcopy(DEFAULT_NORMALISATION[modality])
    if normalisation:
        unknown = set(normalisation) - set(norm)
        if unknown:
            raise ConfigError(f'unknown {modality} normalisation keys {sorted(unknown)}; '
                              f'known: {sorted(norm)}')
        norm.update(copy.deepcopy(dict(normalisation)))
    return norm


def network_channels(modality: str, normalisation: Optional[dict] = None) -> int:
    """Channels of the network input for ``modality`` (depth gets +1 for its validity channel)."""
    norm = _normalisation(modality, normalisation)
    if modality == 'depth' and norm.get('validity_channel'):
        return 2
    return SENSOR_CHANNELS[modality]


def _describe(a: np.ndarray) -> str:
    return f'dtype {a.dtype}, shape {a.shape}'


def preprocess(image: np.ndarray, modality: str, input_size: Tuple[int, int] = (384, 128),
               normalisation: Optional[dict] = None) -> torch.Tensor:
    """Validate one sensor image and convert it to the network input (C, H, W) float32 tensor.

    ``input_size`` is (W, H). Raises :class:`InputError` for a wrong type, dtype,
    shape, size, or non-finite thermal values, :class:`ConfigError` for an unknown
    modality or normalisation key. See the module docstring for the conventions.
    """
    norm = _normalisation(modality, normalisation)
    if isinstance(image, torch.Tensor):
        raise InputError(f'{modality} image must be a numpy array (sensor image), got a torch.Tensor')
    if not isinstance(image, np.ndarray):
        raise InputError(f'{modality} image must be a numpy array, got {type(image).__name__}')
    w, h = int(input_size[0]), int(input_size[1])
    if image.ndim == 3 and modality != 'rgb' and image.shape[2] == 1:
        image = image[:, :, 0]
    if modality == 'rgb':
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f'rgb image must be (H, W, 3) rgb8, got {_describe(image)}')
        if image.dtype != np.uint8:
            raise InputError(f'rgb image must be uint8 (rgb8 encoding), got {_describe(image)}')
    else:
        if image.ndim != 2:
            raise InputError(f'{modality} image must be (H, W) single channel, got {_describe(image)}')
        allowed = (np.float32, np.float64) + ((np.uint16,) if modality == 'thermal' else ())
        if image.dtype.type not in allowed:
            enc = '32FC1 metres' if modality == 'depth' else '32FC1 kelvin or 16UC1 raw counts'
            raise InputError(f'{modality} image must be {enc}, got {_describe(image)}')
    if image.shape[0] != h or image.shape[1] != w:
        raise InputError(f'{modality} image is {image.shape[1]}x{image.shape[0]} (WxH) but the model '
                         f'expects {w}x{h}')

    if modality == 'rgb':
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32))
        return x / float(norm['divisor'])
    if modality == 'depth':
        d = image.astype(np.float32)
        valid = np.isfinite(d) & (d > 0)
        max_m = float(norm['max_m'])
        if norm['kind'] == 'log1p':
            v = np.log1p(np.clip(np.where(valid, d, 0.0), 0.0, max_m)) / np.log1p(max_m)
        elif norm['kind'] == 'linear':
            v = np.clip(np.where(valid, d, 0.0), 0.0, max_m) / max_m
        else:
            raise ConfigError(f"depth normalisation kind must be 'log1p' or 'linear', got {norm['kind']!r}")
        v = np.where(valid, v, float(norm['invalid_fill'])).astype(np.float32)
        chans = [v]
        if norm['validity_channel']:
            chans.append(valid.astype(np.float32))
        return torch.from_numpy(np.stack(chans))
    # thermal
    if image.dtype == np.uint16:
        t = image.astype(np.float32) * float(norm['counts_gain']) + float(norm['counts_offset_k'])
    else:
        t = image.astype(np.float32)
        if not np.all(np.isfinite(t)):
            bad = int((~np.isfinite(t)).sum())
            raise InputError(f'thermal image has {bad} NaN/inf pixels; expected finite kelvin')
    lo, hi = norm['plausible_k']
    med = float(np.median(t))
    if not lo <= med <= hi:
        hint = ' (looks like Celsius; convert to kelvin)' if -60.0 <= med <= 80.0 else ''
        raise InputError(f'thermal image median {med:.1f} K is outside the plausible range '
                         f'[{lo}, {hi}] K{hint}')
    v = (t - float(norm['center_k'])) / float(norm['scale_k'])
    return torch.from_numpy(v[None].astype(np.float32))


# ---------------------------------------------------------------------------------------------

@dataclass
class TeacherConfig:
    """Everything needed to rebuild a teacher (stored as weights metadata)."""
    modality: str = 'rgb'
    input_size: Tuple[int, int] = (384, 128)        # (W, H)
    width: int = 16                                  # backbone base width (stages w, w, 2w, 4w, 8w, 16w)
    fpn_channels: int = 64
    head_convs: int = 2
    centerness: bool = True
    class_names: Tuple[str, ...] = ('vehicle',)
    strides: Tuple[int, ...] = DEFAULT_STRIDES
    normalisation: Dict[str, object] = field(default_factory=dict)
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    max_detections: int = 100
    attention_r: float = 2.0

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ConfigError(f'unknown modality {self.modality!r}; expected one of {MODALITIES}')
        self.input_size = tuple(int(v) for v in self.input_size)
        self.class_names = tuple(str(c) for c in self.class_names)
        self.strides = tuple(int(s) for s in self.strides)
        self.normalisation = _normalisation(self.modality, self.normalisation)
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise ConfigError(f'input_size must be (W, H) positive, got {self.input_size}')
        if self.strides != DEFAULT_STRIDES:
            raise ConfigError(f'the teacher backbone produces strides {DEFAULT_STRIDES}, got {self.strides}')
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f'class_names must be non-empty and unique, got {self.class_names}')
        if self.width < 1 or self.fpn_channels < 1 or self.head_convs < 0:
            raise ConfigError('width and fpn_channels must be >= 1 and head_convs >= 0')

    @property
    def in_channels(self) -> int:
        return network_channels(self.modality, self.normalisation)

    def to_dict(self) -> dict:
        d = asdict(self)
        d['input_size'] = list(self.input_size)
        d['class_names'] = list(self.class_names)
        d['strides'] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'TeacherConfig':
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f'unknown teacher config keys {sorted(unknown)}')
        return cls(**d)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         group_norm(cout), nn.ReLU(inplace=True))


class _ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = _conv(c, c)
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), group_norm(c))

    def forward(self, x):
        return F.relu(x + self.conv2(self.conv1(x)))


class _Backbone(nn.Module):
    """Stem (stride 2) then 4 stages each halving the resolution; returns C3, C4, C5."""

    def __init__(self, in_ch: int, w: int):
        super().__init__()
        chans = [w, 2 * w, 4 * w, 8 * w, 16 * w]
        self.stem = _conv(in_ch, chans[0], 2)                              # /2
        stages = []
        for i in range(1, 5):                                              # /4 /8 /16 /32
            stages.append(nn.Sequential(_conv(chans[i - 1], chans[i], 2), _ResBlock(chans[i])))
        self.stages = nn.ModuleList(stages)
        self.out_channels = chans[2:]

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for i, s in enumerate(self.stages):
            x = s(x)
            if i >= 1:
                outs.append(x)
        return outs


class _FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], c: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(ci, c, 1) for ci in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in in_channels)

    def forward(self, feats):
        lat = [l(f) for l, f in zip(self.lateral, feats)]
        out = [None] * len(lat)
        top = lat[-1]
        out[-1] = self.output[-1](top)
        for i in range(len(lat) - 2, -1, -1):
            top = lat[i] + F.interpolate(top, size=lat[i].shape[-2:], mode='nearest')
            out[i] = self.output[i](top)
        return out


@runtime_checkable
class Teacher(Protocol):
    """What the nodes and the offline labeller need from a teacher (user models may implement it).

    ``predict`` returns per image a dict with ``boxes`` float32 (N, 4) xyxy RGB pixels,
    ``scores`` float32 (N,) in [0, 1], ``labels`` int64 (N,) indices into
    ``class_names``, and ``attention``: a list of 3 float32 arrays (H_l, W_l) for P3-P5.
    """
    modality: str
    class_names: Tuple[str, ...]

    def predict(self, images) -> List[dict]: ...


class TeacherDetector(nn.Module):
    """RGB / depth / thermal teacher: backbone + FPN (P3-P5) + FCOS-style focal-loss head.

    Build with ``TeacherDetector(modality='depth', width=8, ...)`` (any
    :class:`TeacherConfig` field) or ``TeacherDetector(config=cfg)``.
    ``forward(x)`` takes a preprocessed (B, C, H, W) tensor and returns
    ``(head_outputs, features)`` where ``features`` are the P3-P5 maps.
    """

    def __init__(self, modality: Optional[str] = None, config: Optional[TeacherConfig] = None, **kwargs):
        super().__init__()
        if config is None:
            config = TeacherConfig(modality=modality or 'rgb', **kwargs)
        elif modality is not None or kwargs:
            raise ConfigError('pass either config= or keyword fields, not both')
        self.config = config
        self.backbone = _Backbone(config.in_channels, config.width)
        self.fpn = _FPN(self.backbone.out_channels, config.fpn_channels)
        self.head = DetectionHead(config.fpn_channels, num_classes=len(config.class_names),
                                  num_convs=config.head_convs, strides=config.strides,
                                  centerness=config.centerness)
        #: run :meth:`predict` under bfloat16 autocast (a runtime choice, not part of the weights:
        #: ``mmdistill label --precision``); the head's outputs and the attention stay float32
        self.bf16_inference = False

    # convenient read-only views of the config
    @property
    def modality(self) -> str:
        return self.config.modality

    @property
    def class_names(self) -> Tuple[str, ...]:
        return self.config.class_names

    @property
    def input_size(self) -> Tuple[int, int]:
        return self.config.input_size

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Validate and normalise one sensor image -> (C, H, W) tensor (see :func:`preprocess`)."""
        return preprocess(image, self.config.modality, self.config.input_size, self.config.normalisation)

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """P3-P5 FPN features of a preprocessed batch."""
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels:
            raise InputError(f'{c.modality} network input must be (B, {c.in_channels}, H, W), '
                             f'got {tuple(x.shape)}')
        return self.fpn(self.backbone(x))

    def forward(self, x: torch.Tensor):
        feats = self.features(x)
        w, h = int(x.shape[-1]), int(x.shape[-2])
        return self.head(feats, image_size=(w, h)), feats

    def _batch(self, images) -> torch.Tensor:
        if isinstance(images, np.ndarray):
            images = [images]
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise InputError('images must be a numpy array or a non-empty list of numpy arrays')
        return torch.stack([self.preprocess(im) for im in images])

    @torch.no_grad()
    def predict(self, images, score_threshold: Optional[float] = None, nms_iou: Optional[float] = None,
                max_detections: Optional[int] = None) -> List[dict]:
        """Detect vehicles in one image (numpy array) or a list of images.

        Returns per image ``dict(boxes float32 (N,4), scores float32 (N,), labels int64 (N,),
        attention=[3 float32 arrays (H_l, W_l)])``; thresholds default to the config's.
        """
        c = self.config
        was_training = self.training
        self.eval()
        try:
            x = self._batch(images)
            dev = next(self.parameters()).device
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16_inference):
                outputs, feats = self(x.to(dev))
            feats = [f.float() for f in feats]
            dets = decode(outputs,
                          score_threshold=c.score_threshold if score_threshold is None else score_threshold,
                          nms_iou=c.nms_iou if nms_iou is None else nms_iou,
                          max_detections=c.max_detections if max_detections is None else max_detections)
            att = [a.float().cpu().numpy() for a in attention_maps(feats, c.attention_r)]
        finally:
            self.train(was_training)
        return [{'boxes': b, 'scores': s, 'labels': l,
                 'attention': [a[i].astype(np.float32) for a in att]}
                for i, (b, s, l) in enumerate(dets)]
