"""The audio student: front end -> :class:`AudioEncoder` (image-plane P3-P5) -> the teachers'
detection head family (:class:`mmdistill_teachers.head.DetectionHead`).

One class serves training (``forward`` on precomputed features), evaluation
(``predict_features``) and the runtime node (``predict_window`` on raw audio, or features from
:class:`StreamingFrontend`).

Feature channels: the front end described by ``StudentConfig.frontend`` produces
``frontend.in_channels`` maps (log-mel per microphone, then level differences, then GCC-PHAT
per pair, see ``frontend.py``); ``input_channels`` optionally selects a subset of them (for
example ``[0, 4]``: log-mel of two opposite microphones, the StereoSoundNet-style baseline).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from mmdistill_common.errors import ConfigError, InputError
from mmdistill_teachers.head import DetectionHead, attention_maps, decode

from .column_encoder import ColumnEncoder, ColumnEncoderConfig
from .encoder import AudioEncoder, EncoderConfig
from .frontend import Frontend, FrontendConfig

__all__ = ['StudentConfig', 'StudentDetector', 'FEATURE_GROUPS', 'ENCODER_KINDS', 'feature_groups']

FEATURE_GROUPS = ('logmel', 'ild', 'gcc')
_ENCODER_DERIVED = ('in_channels', 'n_mels', 'n_frames', 'image_size', 'strides', 'columns')
#: student encoders by ``encoder['kind']``: the column-equivariant network reads the acoustic
#: image; the spectrogram encoder (the reference implementation's approach) log-mel maps.
ENCODER_KINDS = ('spectrogram', 'column')


def feature_groups(frontend: FrontendConfig) -> Dict[str, Tuple[int, int]]:
    """Channel range ``[start, stop)`` of each feature group in the front end's output."""
    if frontend.kind == 'acoustic_image':
        b = frontend.n_bands
        return {'srp': (0, b), 'das': (b, 2 * b), **({'mvdr': (2 * b, 3 * b)} if frontend.mvdr else {})}
    out, c = {}, 0
    for name, on, n in (('logmel', True, frontend.channels), ('ild', frontend.use_ild, frontend.channels),
                        ('gcc', frontend.use_gccphat, frontend.n_pairs)):
        if on:
            out[name] = (c, c + n)
            c += n
    return out


@dataclasses.dataclass
class StudentConfig:
    """Everything needed to rebuild a student (stored in the checkpoint).

    ``encoder``: :class:`EncoderConfig` fields except the derived ones (input channels, mel
    bins, frames, image size, strides); ``head_convs``/``head_width``: detection head towers;
    ``score_threshold``/``nms_iou``/``max_detections``: decoding; ``attention_r``: the r of
    the attention maps q = mean_c |F|^r (DESIGN §7)."""
    frontend: Dict = dataclasses.field(default_factory=dict)
    encoder: Dict = dataclasses.field(default_factory=dict)
    input_channels: Optional[List[int]] = None
    class_names: Tuple[str, ...] = ('vehicle',)
    image_size: Tuple[int, int] = (384, 128)
    strides: Tuple[int, ...] = (8, 16, 32)
    head_convs: int = 1
    head_width: Optional[int] = 32
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    max_detections: int = 20
    pre_nms_top_k: int = 100
    attention_r: float = 2.0

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        self.image_size = tuple(int(v) for v in self.image_size)
        self.strides = tuple(int(v) for v in self.strides)
        if isinstance(self.frontend, FrontendConfig):
            self.frontend = self.frontend.to_dict()
        if isinstance(self.encoder, (EncoderConfig, ColumnEncoderConfig)):
            self.encoder = {k: v for k, v in self.encoder.to_dict().items() if k not in _ENCODER_DERIVED}
        bad = set(self.encoder) & set(_ENCODER_DERIVED)
        if bad:
            raise ConfigError(f'student encoder config must not set {sorted(bad)} (derived from the '
                              'front end and image size)')
        fe = self.frontend_config()
        if self.encoder_kind == 'column':       # stored explicitly: see from_dict
            self.encoder = {'position': ColumnEncoderConfig.position, **self.encoder}
        if self.input_channels is not None:
            self.input_channels = [int(c) for c in self.input_channels]
            if not self.input_channels or len(set(self.input_channels)) != len(self.input_channels) \
                    or min(self.input_channels) < 0 or max(self.input_channels) >= fe.in_channels:
                raise ConfigError(f'input_channels must be distinct indices below {fe.in_channels}, '
                                  f'got {self.input_channels}')
        if not 0.0 <= self.score_threshold <= 1.0 or not 0.0 < self.nms_iou <= 1.0:
            raise ConfigError('score_threshold must be in [0, 1] and nms_iou in (0, 1]')
        self.encoder_config()       # validate

    def frontend_config(self) -> FrontendConfig:
        return FrontendConfig.from_dict(dict(self.frontend))

    @property
    def in_channels(self) -> int:
        fe = self.frontend_config()
        return len(self.input_channels) if self.input_channels is not None else fe.in_channels

    @property
    def encoder_kind(self) -> str:
        """``encoder['kind']``, by default the one that reads the front end's features."""
        default = 'column' if self.frontend_config().kind == 'acoustic_image' else 'spectrogram'
        return self.encoder.get('kind', default)

    def encoder_config(self):
        fe = self.frontend_config()
        kind = self.encoder_kind
        if kind not in ENCODER_KINDS:
            raise ConfigError(f'student encoder kind must be one of {ENCODER_KINDS}, got {kind!r}')
        if (kind == 'column') != (fe.kind == 'acoustic_image'):
            raise ConfigError(f'encoder kind {kind!r} does not read the {fe.kind!r} front end '
                              "(column <-> acoustic_image, spectrogram <-> spectrogram)")
        rest = {k: v for k, v in self.encoder.items() if k != 'kind'}
        if kind == 'column':
            return ColumnEncoderConfig(in_channels=self.in_channels, columns=fe.columns, n_frames=fe.n_frames,
                                       image_size=self.image_size, strides=self.strides, **rest)
        return EncoderConfig(in_channels=self.in_channels, n_mels=fe.n_mels, n_frames=fe.n_frames,
                             image_size=self.image_size, strides=self.strides, **rest)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ('class_names', 'image_size', 'strides'):
            d[k] = list(d[k])
        d['encoder'] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d['encoder'].items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> 'StudentConfig':
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f'StudentConfig: unknown keys {sorted(unknown)}')
        d = dict(d)
        if dict(d.get('encoder') or {}).get('kind', 'column') == 'column' and \
                FrontendConfig.from_dict(dict(d.get('frontend') or {})).kind == 'acoustic_image':
            # checkpoints written before the column decoder's ``position`` existed decode
            # shift-equivariantly; newer ones store it
            d['encoder'] = {'position': 0, **dict(d.get('encoder') or {})}
        return cls(**d)


class StudentDetector(nn.Module):
    """Audio features -> boxes in the camera image.

    ``forward(features)`` -> ``(head_outputs, pyramid)`` on a (B, C_in, n_mels, T) batch of
    the *selected* channels; ``select(full)`` applies ``input_channels`` to front-end output."""

    def __init__(self, config: Optional[StudentConfig] = None, **kwargs):
        super().__init__()
        self.config = config if config is not None else StudentConfig(**kwargs)
        cfg = self.config
        self.frontend = Frontend(cfg.frontend_config())
        enc = cfg.encoder_config()
        self.encoder = ColumnEncoder(enc) if isinstance(enc, ColumnEncoderConfig) else AudioEncoder(enc)
        self.head = DetectionHead(enc.out_channels, num_classes=len(cfg.class_names),
                                  width=cfg.head_width, num_convs=cfg.head_convs, strides=cfg.strides)
        idx = cfg.input_channels if cfg.input_channels is not None else \
            list(range(self.frontend.cfg.in_channels))
        self.register_buffer('channel_index', torch.tensor(idx, dtype=torch.long), persistent=False)

    @property
    def frontend_config(self) -> FrontendConfig:
        return self.frontend.cfg

    def select(self, full: torch.Tensor) -> torch.Tensor:
        """Front-end output (B, frontend.in_channels, M, T) -> the channels the encoder reads."""
        if self.config.input_channels is None:
            return full
        return full.index_select(1, self.channel_index)

    def forward(self, features: torch.Tensor):
        pyramid = self.encoder(features)
        return self.head(pyramid, image_size=self.config.image_size), pyramid

    def attention(self, pyramid: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return attention_maps(pyramid, self.config.attention_r)

    @torch.no_grad()
    def predict_features(self, features, score_threshold: Optional[float] = None,
                         nms_iou: Optional[float] = None) -> List[dict]:
        """Selected features (B, C_in, M, T) (numpy or tensor) -> per window
        ``dict(boxes float32 (N, 4), scores (N,), labels int64 (N,))``."""
        x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features,
                            dtype=torch.float32)
        if x.ndim == 3:
            x = x[None]
        want = (self.config.in_channels, self.frontend.cfg.rows, self.frontend.cfg.n_frames)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise InputError(f'student features must be (B, {want[0]}, {want[1]}, {want[2]}), '
                             f'got {tuple(x.shape)}')
        if not torch.isfinite(x).all():
            raise InputError('student features contain NaN or infinite values')
        was = self.training
        self.eval()
        try:
            outputs, _ = self(x)
            c = self.config
            dets = decode(outputs, score_threshold=c.score_threshold if score_threshold is None else score_threshold,
                          nms_iou=c.nms_iou if nms_iou is None else nms_iou,
                          max_detections=c.max_detections, pre_nms_top_k=c.pre_nms_top_k,
                          class_agnostic_nms=True)
        finally:
            self.train(was)
        return [{'boxes': b, 'scores': s, 'labels': l} for b, s, l in dets]

    @torch.no_grad()
    def predict_window(self, window, **kwargs) -> dict:
        """One raw window, float (channels, N) in [-1, 1) -> detections (see ``predict_features``)."""
        full = self.frontend(window)
        return self.predict_features(self.select(full), **kwargs)[0]
