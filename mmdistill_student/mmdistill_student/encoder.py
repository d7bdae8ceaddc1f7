"""Audio student encoder: features ``(B, C_in, n_mels, T)`` -> image-plane pyramid P3-P5.

Architecture (all sizes configurable through :class:`EncoderConfig`):

1. ``BatchNorm2d(C_in)`` on the input (puts dB log-mel, level differences and GCC-PHAT on a
   common scale; frozen into an affine at export).
2. A 2-D conv stack over (mel, time): ``len(widths)`` stages, each a stride-2 3x3 conv
   followed by ``depth - 1`` residual 3x3 convs (BN + ReLU).  Microphones / pairs stay conv
   input channels, so inter-channel level and delay cues reach the first layer.
3. Pooling over time (mean and max) keeps the mel axis -> flattened -> MLP -> embedding
   ``(B, embed_dim)``.  This is the encoder's deepest representation (the counting pretext
   head reads it).
4. A linear map from the embedding to a coarse grid ``(C, 4, 12)`` (learned "reshaping"
   onto the image plane; azimuth lives on the width axis), then a top-down decoder: P5 =
   conv3x3(grid); P4 = sepconv(upsample(P5)); P3 = sepconv(upsample(P4)) (depthwise-separable
   3x3 at the two large grids to stay within the CPU budget), at strides 32/16/8 of the
   384 x 128 image: ``(B, C, 4, 12)``, ``(B, C, 8, 24)``, ``(B, C, 16, 48)``.

``forward`` returns the pyramid as a list ordered P3, P4, P5 (the detection head's order).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
import torch.nn.functional as F

from mmdistill_common.errors import ConfigError

__all__ = ['PyramidConfig', 'EncoderConfig', 'AudioEncoder', 'CountingHead', 'PretextModel',
           'encoder_state_dict', 'load_encoder_state_dict']


class PyramidConfig:
    """What the student encoders' configs share: the pyramid's grid sizes and (de)serialisation
    of a dataclass with ``widths``, ``strides`` and ``image_size`` tuples."""

    def level_shapes(self) -> List[Tuple[int, int]]:
        """(H, W) of P3, P4, P5: ``[(16, 48), (8, 24), (4, 12)]`` at strides 8/16/32 of 384x128."""
        W, H = self.image_size
        return [(H // s, W // s) for s in self.strides]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ('widths', 'strides', 'image_size'):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f'{cls.__name__}: unknown keys {sorted(unknown)}')
        return cls(**dict(d))


@dataclasses.dataclass
class EncoderConfig(PyramidConfig):
    """``in_channels``: feature channels (``FrontendConfig.in_channels``);
    ``n_mels``/``n_frames``: input size; ``widths``: channels of the conv stages (each halves
    mel and time); ``depth``: convs per stage; ``embed_dim``: embedding size; ``out_channels``:
    channels of every pyramid level; ``image_size``: (W, H) of the image plane;
    ``strides``: pyramid strides (P3, P4, P5); ``decoder_depth``: convs per pyramid level."""

    in_channels: int = 8
    n_mels: int = 80
    n_frames: int = 173
    widths: Tuple[int, ...] = (24, 48, 64, 96)
    depth: int = 1
    embed_dim: int = 256
    out_channels: int = 64
    image_size: Tuple[int, int] = (384, 128)
    strides: Tuple[int, ...] = (8, 16, 32)
    decoder_depth: int = 1
    dropout: float = 0.1

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.strides = tuple(int(s) for s in self.strides)
        self.image_size = tuple(int(s) for s in self.image_size)
        self.validate()

    def validate(self) -> 'EncoderConfig':
        def bad(msg):
            raise ConfigError(f'EncoderConfig: {msg}')
        for name in ('in_channels', 'n_mels', 'n_frames', 'depth', 'embed_dim', 'out_channels',
                     'decoder_depth'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                bad(f'{name} must be a positive integer, got {v!r}')
        if not self.widths or any(w <= 0 for w in self.widths):
            bad(f'widths must be non-empty positive integers, got {self.widths}')
        if len(self.strides) != 3 or list(self.strides) != sorted(self.strides):
            bad(f'strides must be 3 increasing values, got {self.strides}')
        W, H = self.image_size
        for s in self.strides:
            if W % s or H % s:
                bad(f'image_size {self.image_size} not divisible by stride {s}')
        for a, b in zip(self.strides, self.strides[1:]):
            if b != 2 * a:
                bad(f'consecutive strides must double, got {self.strides}')
        if not 0 <= self.dropout < 1:
            bad(f'dropout must be in [0, 1), got {self.dropout}')
        mel, t = self.n_mels, self.n_frames
        for _ in self.widths:
            mel, t = (mel + 1) // 2, (t + 1) // 2
        if mel < 1 or t < 1:
            bad('input too small for the number of stages')
        return self



def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _sep_conv_bn(c: int) -> nn.Sequential:
    """Depthwise-separable 3x3 conv (cheap at the large P3/P4 grids)."""
    return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


class AudioEncoder(nn.Module):
    """Features ``(B, C_in, n_mels, T)`` -> ``[P3 (B,C,16,48), P4 (B,C,8,24), P5 (B,C,4,12)]``.

    ``forward(x, return_embedding=False)``; ``embed(x)`` gives the ``(B, embed_dim)``
    embedding alone (counting pretext)."""

    #: parameters the counting pretext does not train (left at initialisation when loading it)
    decoder_prefixes = ('to_grid.', 'grid_pos', 'p3.', 'p4.', 'p5.')

    def __init__(self, cfg: Optional[EncoderConfig] = None, **kwargs):
        super().__init__()
        if cfg is None:
            cfg = EncoderConfig(**kwargs)
        elif kwargs:
            cfg = dataclasses.replace(cfg, **kwargs)
        self.cfg = cfg.validate()
        self.input_norm = nn.BatchNorm2d(cfg.in_channels)
        stages, cin = [], cfg.in_channels
        mel, t = cfg.n_mels, cfg.n_frames
        for w in cfg.widths:
            layers = [_conv_bn(cin, w, 2)] + [_Residual(w) for _ in range(cfg.depth - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
            mel, t = (mel + 1) // 2, (t + 1) // 2
        self.stages = nn.Sequential(*stages)
        self._pooled_mel = mel
        flat = 2 * cin * mel                    # mean + max over time, mel axis kept
        self.embed_mlp = nn.Sequential(
            nn.Linear(flat, cfg.embed_dim), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.embed_dim, cfg.embed_dim), nn.ReLU(inplace=True))
        (h3, w3), (h4, w4), (h5, w5) = cfg.level_shapes()
        self._grid = (h5, w5)
        C = cfg.out_channels
        self.to_grid = nn.Linear(cfg.embed_dim, C * h5 * w5)
        self.grid_pos = nn.Parameter(torch.zeros(1, C, h5, w5))   # learned position code

        def level(block):
            return nn.Sequential(*[block(C) for _ in range(cfg.decoder_depth)])
        self.p5 = level(lambda c: _conv_bn(c, c))
        self.p4 = level(_sep_conv_bn)
        self.p3 = level(_sep_conv_bn)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, n_mels, T)`` -> ``(B, embed_dim)``."""
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ConfigError(f'AudioEncoder expects (B, {cfg.in_channels}, n_mels, T), '
                              f'got {tuple(x.shape)}')
        h = self.stages(self.input_norm(x))
        h = torch.cat([h.mean(dim=3), h.amax(dim=3)], dim=1)      # (B, 2C, mel')
        return self.embed_mlp(h.flatten(1))

    def decode(self, e: torch.Tensor) -> List[torch.Tensor]:
        """Embedding ``(B, embed_dim)`` -> ``[P3, P4, P5]``."""
        h5, w5 = self._grid
        g = self.to_grid(e).view(e.shape[0], self.cfg.out_channels, h5, w5) + self.grid_pos
        p5 = self.p5(g)
        p4 = self.p4(F.interpolate(p5, scale_factor=2.0, mode='nearest'))
        p3 = self.p3(F.interpolate(p4, scale_factor=2.0, mode='nearest'))
        return [p3, p4, p5]

    def forward(self, x: torch.Tensor, return_embedding: bool = False):
        e = self.embed(x)
        pyr = self.decode(e)
        return (pyr, e) if return_embedding else pyr


class CountingHead(nn.Module):
    """Pretext head: embedding ``(B, embed_dim)`` -> logits ``(B, max_count + 1)`` over vehicle
    counts 0..max_count (counts above ``max_count`` are clipped into the last class by the
    caller).  Trained with cross-entropy on fused-teacher counts."""

    def __init__(self, embed_dim: int = 256, max_count: int = 4, hidden: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        if max_count < 1:
            raise ConfigError(f'CountingHead: max_count must be >= 1, got {max_count}')
        self.max_count = int(max_count)
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(hidden, max_count + 1))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)


class PretextModel(nn.Module):
    """Encoder + counting head: features -> count logits.  ``state_dict`` keys of the encoder
    are prefixed ``encoder.``, which :func:`encoder_state_dict` strips."""

    def __init__(self, encoder: AudioEncoder, head: Optional[CountingHead] = None,
                 max_count: int = 4):
        super().__init__()
        self.encoder = encoder
        self.head = head or CountingHead(encoder.cfg.embed_dim, max_count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.embed(x))


def encoder_state_dict(source: Union[nn.Module, Mapping[str, torch.Tensor]],
                       prefix: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The encoder's weights from an :class:`AudioEncoder`, a model holding one (attribute
    ``encoder``), or a flat state dict of such a model.  Keys are returned without prefix.
    With ``prefix=None`` the prefix is ``''`` for an encoder, else ``'encoder.'``."""
    if isinstance(source, nn.Module) and hasattr(source, 'embed') and hasattr(source, 'decode'):
        return {k: v.detach().clone() for k, v in source.state_dict().items()}
    if isinstance(source, nn.Module):
        enc = getattr(source, 'encoder', None)
        if not (isinstance(enc, nn.Module) and hasattr(enc, 'embed')):
            raise ConfigError('model has no student encoder attribute "encoder"')
        return {k: v.detach().clone() for k, v in enc.state_dict().items()}
    prefix = 'encoder.' if prefix is None else prefix
    out = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
    if not out:
        raise ConfigError(f'no encoder weights (keys starting with {prefix!r}) in state dict')
    return out


def load_encoder_state_dict(encoder: AudioEncoder, state: Mapping[str, torch.Tensor],
                            skip_decoder: bool = False) -> List[str]:
    """Load encoder weights (e.g. from the counting pretext) into ``encoder``.

    Raises :class:`ConfigError` listing missing/unexpected keys or shape mismatches (a
    checkpoint that does not match the config).  ``skip_decoder=True`` loads only the parts
    the pretext trains (input norm, conv stages, embedding MLP) and leaves the image-plane
    decoder at its initialisation.  Returns the loaded key names."""
    own = encoder.state_dict()
    decoder_prefixes = getattr(encoder, 'decoder_prefixes', AudioEncoder.decoder_prefixes)
    wanted = {k for k in own if not (skip_decoder and k.startswith(decoder_prefixes))}
    state = {k: v for k, v in state.items() if k in wanted or k not in own}
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in wanted & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f'missing {missing[:5]}{"..." if len(missing) > 5 else ""}')
        if unexpected:
            parts.append(f'unexpected {unexpected[:5]}{"..." if len(unexpected) > 5 else ""}')
        if shape:
            parts.append('shape mismatch ' + ', '.join(
                f'{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in shape[:5]))
        raise ConfigError('encoder weights do not match the encoder config: ' + '; '.join(parts))
    own.update({k: state[k] for k in wanted})
    encoder.load_state_dict(own)
    return sorted(wanted)
