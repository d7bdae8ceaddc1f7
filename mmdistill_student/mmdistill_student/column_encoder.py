"""Column-equivariant student encoder: acoustic image ``(B, C_in, columns, T)`` -> image-plane
pyramid P3-P5 (DESIGN §7).

Why this shape: the front end has already put each direction on its image column, so every
layer that mixes columns is a convolution along x (shared weights, same padding): a source that
moves by one column moves the output by one column. The time axis is kept until a learned
read-out at the frame time, so the network sees the bearing trajectory across the window (its
rate and curvature carry distance for a moving source) instead of pooling it away.

1. ``BatchNorm2d(C_in)`` on the input (SRP coherence and dB energies on one scale), then a
   ``time_pool`` average over time (the STFT frames are finer than the bearing changes).
2. ``len(widths)`` conv stages over (column, time), each a 3x3 conv with stride 2 in time only,
   BN + ReLU: columns stay at full resolution.
3. A learned linear read-out over the remaining time steps (a ``(1, T')`` convolution, shared by
   all columns) -> per-column features ``(B, width, columns)``, plus the window's column mean
   (scene context for separating simultaneous sources), then ``column_depth`` residual 1-D
   convolutions along x (dilations 1, 2, 4, ...).
4. ``position`` > 0: each P3 column's features are joined with Fourier features of its image
   x (``position`` of them) and mixed by a per-column 1x1 layer. Direction stays equivariant
   (the stages above), but where a vehicle sits vertically and how big it is depend on its
   bearing in a street (a car at the image edge is near, one at the vanishing point far), which a
   strictly shift-equivariant decoder cannot express.
5. The vertical axis and box size come from per-column features: pooled onto the P3 grid's
   columns when the directions are finer, a 1x1 map per column to ``out_channels x H3`` (the
   P3 rows of that column); P4 and P5
   are 2x2 average-pooled levels, each refined by a 1x1 conv (the detection head's 3x3 output
   convs add the local context; everything stays within a few milliseconds per window).

``forward(x, return_embedding=False)`` as :class:`~.encoder.AudioEncoder`; the embedding (mean
and max over columns of the per-column features) feeds the counting pretext.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from mmdistill_common.errors import ConfigError

from .encoder import PyramidConfig

__all__ = ['ColumnEncoderConfig', 'ColumnEncoder']


@dataclasses.dataclass
class ColumnEncoderConfig(PyramidConfig):
    """``in_channels``/``columns``/``n_frames``: input size (derived from the front end);
    ``time_pool``: frames averaged before the stages; ``widths``: channels of the (column, time) stages, each halving time; ``column_depth``:
    residual 1-D convs along x; ``out_channels``: channels of every pyramid level;
    ``image_size``: (W, H); ``strides``: pyramid strides (P3, P4, P5); ``position``: Fourier
    features of the column's x given to the decoder (0: a shift-equivariant decoder)."""

    in_channels: int = 16
    columns: int = 48
    n_frames: int = 87
    time_pool: int = 1
    widths: Tuple[int, ...] = (16, 24, 32)
    column_depth: int = 3
    out_channels: int = 32
    image_size: Tuple[int, int] = (384, 128)
    strides: Tuple[int, ...] = (8, 16, 32)
    dropout: float = 0.1
    position: int = 8
    kind: str = 'column'

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.strides = tuple(int(s) for s in self.strides)
        self.image_size = tuple(int(s) for s in self.image_size)
        self.validate()

    def validate(self) -> 'ColumnEncoderConfig':
        def bad(msg):
            raise ConfigError(f'ColumnEncoderConfig: {msg}')
        for name in ('in_channels', 'columns', 'n_frames', 'out_channels', 'time_pool'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(f'{name} must be a positive integer, got {v!r}')
        if isinstance(self.column_depth, bool) or not isinstance(self.column_depth, int) or self.column_depth < 0:
            bad(f'column_depth must be a non-negative integer, got {self.column_depth!r}')
        if not self.widths or any(w <= 0 for w in self.widths):
            bad(f'widths must be non-empty positive integers, got {self.widths}')
        if len(self.strides) != 3 or any(b != 2 * a for a, b in zip(self.strides, self.strides[1:])):
            bad(f'strides must be 3 values, each double the previous, got {self.strides}')
        W, H = self.image_size
        if any(W % s or H % s for s in self.strides):
            bad(f'image_size {self.image_size} not divisible by the strides {self.strides}')
        if isinstance(self.position, bool) or not isinstance(self.position, int) or self.position < 0 \
                or self.position % 2:
            bad(f'position must be an even non-negative integer, got {self.position!r}')
        if not 0 <= self.dropout < 1:
            bad(f'dropout must be in [0, 1), got {self.dropout}')
        if self.kind != 'column':
            bad(f"kind must be 'column', got {self.kind!r}")
        return self

    @property
    def embed_dim(self) -> int:
        return 2 * self.widths[-1]

    @property
    def time_steps(self) -> int:
        t = -(-self.n_frames // self.time_pool)
        for _ in self.widths:
            t = (t + 1) // 2
        return t



class _ColumnResidual(nn.Module):
    """x + BN(conv1d_k3(x)) along the column axis, dilated."""

    def __init__(self, c: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(c, c, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(c)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


class ColumnEncoder(nn.Module):
    """Acoustic image ``(B, C_in, columns, T)`` -> ``[P3, P4, P5]`` on the image plane."""

    #: parameters the counting pretext does not train (left at initialisation when loading it)
    decoder_prefixes = ('position_mix.', 'to_rows.', 'row_pos', 'p3.', 'p4.', 'p5.')

    def __init__(self, cfg: Optional[ColumnEncoderConfig] = None, **kwargs):
        super().__init__()
        cfg = cfg if cfg is not None else ColumnEncoderConfig(**kwargs)
        self.cfg = cfg.validate()
        self.input_norm = nn.BatchNorm2d(cfg.in_channels)
        stages, cin = [], cfg.in_channels
        for w in cfg.widths:
            stages += [nn.Conv2d(cin, w, 3, (1, 2), 1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            cin = w
        self.stages = nn.Sequential(*stages)
        C = cin
        self.readout = nn.Sequential(nn.Conv2d(C, C, (1, cfg.time_steps), bias=False), nn.BatchNorm2d(C),
                                     nn.ReLU(inplace=True))
        self.context = nn.Conv1d(C, C, 1)
        self.columns_net = nn.Sequential(*[_ColumnResidual(C, 2 ** i) for i in range(cfg.column_depth)])
        self.dropout = nn.Dropout(cfg.dropout)
        (h3, w3), _, _ = cfg.level_shapes()
        self._p3 = (h3, w3)
        O = cfg.out_channels
        if cfg.position:
            k = torch.arange(1, cfg.position // 2 + 1, dtype=torch.float32)
            u = (torch.arange(w3, dtype=torch.float32) + 0.5) / w3 * 2 - 1     # column centre in [-1, 1]
            ang = 0.5 * torch.pi * k[:, None] * u[None, :]
            self.register_buffer('column_code', torch.cat([ang.sin(), ang.cos()])[None], persistent=False)
            self.position_mix = nn.Sequential(nn.Conv1d(C + cfg.position, C, 1, bias=False),
                                              nn.BatchNorm1d(C), nn.ReLU(inplace=True))
        self.to_rows = nn.Conv1d(C, O * h3, 1)
        self.row_pos = nn.Parameter(torch.zeros(1, O, h3, 1))
        self.p3 = nn.Sequential(nn.BatchNorm2d(O), nn.ReLU(inplace=True))
        self.p4 = nn.Sequential(nn.Conv2d(O, O, 1, bias=False), nn.BatchNorm2d(O), nn.ReLU(inplace=True))
        self.p5 = nn.Sequential(nn.Conv2d(O, O, 1, bias=False), nn.BatchNorm2d(O), nn.ReLU(inplace=True))

    def column_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, columns, T)`` -> ``(B, C, columns)``."""
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] != cfg.columns:
            raise ConfigError(f'ColumnEncoder expects (B, {cfg.in_channels}, {cfg.columns}, T), '
                              f'got {tuple(x.shape)}')
        x = self.input_norm(x)
        if self.cfg.time_pool > 1:
            x = F.avg_pool2d(x, (1, self.cfg.time_pool), ceil_mode=True)
        h = self.readout(self.stages(x)).squeeze(-1)                        # (B, C, columns)
        h = F.relu(h + self.context(h.mean(dim=2, keepdim=True)))
        return self.columns_net(h)

    def embed_columns(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, embed_dim)``: mean and max over columns (the counting pretext reads it)."""
        return self.embed_columns(self.column_features(x))

    def decode(self, h: torch.Tensor) -> List[torch.Tensor]:
        h3, w3 = self._p3
        B = h.shape[0]
        if h.shape[-1] != w3:                       # directions finer than the P3 grid: pool onto it
            h = F.avg_pool1d(h, h.shape[-1] // w3) if h.shape[-1] % w3 == 0 else \
                F.interpolate(h, size=w3, mode='linear', align_corners=False)
        if self.cfg.position:
            h = self.position_mix(torch.cat([h, self.column_code.expand(B, -1, -1)], dim=1))
        g = self.to_rows(self.dropout(h))                                   # (B, O*h3, w3)
        p3 = self.p3(g.view(B, self.cfg.out_channels, h3, w3) + self.row_pos)
        p4 = self.p4(F.avg_pool2d(p3, 2))
        p5 = self.p5(F.avg_pool2d(p4, 2))
        return [p3, p4, p5]

    def forward(self, x: torch.Tensor, return_embedding: bool = False):
        h = self.column_features(x)
        pyr = self.decode(h)
        return (pyr, self.embed_columns(h)) if return_embedding else pyr
