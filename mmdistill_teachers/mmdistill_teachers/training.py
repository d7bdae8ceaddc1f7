"""Teacher training core (no CLI, no bag reading): supervised training on images + GT boxes.

Deterministic on CPU for a given ``seed``: model initialisation is the caller's
business (seed torch before building the model, or pass ``init_seed``), batch order
and augmentation draw from generators seeded by ``seed``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from mmdistill_common.errors import ConfigError

from . import PRECISIONS
from .head import assign_targets, detection_loss
from .detector import TeacherDetector

__all__ = ['train_teacher', 'hflip_boxes', 'crop_boxes', 'seed_everything', 'bf16_is_fast', 'use_bf16']


def bf16_is_fast() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN with AVX512-BF16 or AMX);
    elsewhere bfloat16 autocast is emulated and slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(precision: str) -> bool:
    """Whether ``precision`` (one of :data:`PRECISIONS`) means bfloat16 autocast on this machine."""
    if precision not in PRECISIONS:
        raise ConfigError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    return precision == 'bf16' or (precision == 'auto' and bf16_is_fast())


def seed_everything(seed: int) -> None:
    """Seed torch and numpy's global generators (for model initialisation)."""
    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % (2 ** 32))


def hflip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Mirror xyxy boxes horizontally in an image of ``width`` pixels: x' = W - x."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    x1 = width - b[:, 2]
    x2 = width - b[:, 0]
    b[:, 0], b[:, 2] = x1, x2
    return b


def crop_boxes(boxes: np.ndarray, x0: float, width: float, min_kept: float = 0.3) -> np.ndarray:
    """xyxy boxes seen through a horizontal crop [x0, x0 + width): shifted by -x0 and clipped to it.

    A box keeps its place when at least ``min_kept`` of its width lies inside the crop; a
    smaller remnant is dropped (a sliver at the crop edge is no vehicle one could localise).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    w = b[:, 2] - b[:, 0]
    b[:, [0, 2]] = np.clip(b[:, [0, 2]] - x0, 0.0, width)
    keep = (b[:, 2] - b[:, 0]) >= min_kept * np.maximum(w, 1e-9)
    return b[keep & (b[:, 2] > b[:, 0])]


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def train_teacher(model: TeacherDetector, images: Union[Sequence[np.ndarray], torch.Tensor],
                  boxes_list: Sequence[np.ndarray], labels_list: Optional[Sequence[np.ndarray]] = None,
                  epochs: int = 10, lr: float = 2e-3, batch_size: int = 8, seed: int = 0,
                  hflip: bool = True, weight_decay: float = 1e-4, warmup_steps: Optional[int] = None,
                  grad_clip: Optional[float] = 10.0, box_loss: str = 'giou',
                  max_steps: Optional[int] = None, progress: bool = True,
                  val_fn: Optional[Callable[[TeacherDetector, int], Dict[str, float]]] = None,
                  init_seed: Optional[int] = None, device: Union[str, torch.device] = 'cpu',
                  crop_width: Optional[int] = None, bf16: bool = False) -> Dict[str, list]:
    """Train ``model`` in place with AdamW, linear warm-up and cosine decay (to 5 % of ``lr``).

    Args:
        images: sensor images (numpy, passed through ``model.preprocess`` on the fly)
            or an already preprocessed (N, C, H, W) float tensor (float16 storage is fine: batches are
            computed in float32).
        boxes_list: per image the (N_i, 4) xyxy GT boxes in pixels.
        labels_list: per image (N_i,) class indices (default: all class 0).
        hflip: flip each sample horizontally with probability 0.5 (boxes mirrored).
        max_steps: stop after this many optimizer steps (over all epochs).
        crop_width: train on random horizontal crops this wide (boxes through :func:`crop_boxes`):
            the detector is fully convolutional, so a crop costs its share of the image and the
            full image is still what it sees at inference; None = whole images.
        val_fn: called as ``val_fn(model, epoch)`` after every epoch (model in eval
            mode); its returned dict is appended to ``history['val']``.
        init_seed: if given, re-initialise the model's parameters from this seed first.
        bf16: run the backbone, FPN and head towers under bfloat16 autocast (weights, optimizer
            and loss stay float32); on a CPU with AMX or AVX512-BF16 a step costs about 0.7 of
            a float32 step (see :func:`bf16_is_fast`).

    Returns ``history``: ``step_loss`` (total per step), ``lr`` per step, per epoch
    means ``loss``, ``focal``, ``box``, ``centerness``, ``num_pos``, and ``val``.
    """
    n = len(images)
    if n != len(boxes_list):
        raise ValueError(f'{n} images but {len(boxes_list)} box arrays')
    if labels_list is not None and len(labels_list) != n:
        raise ValueError(f'{n} images but {len(labels_list)} label arrays')
    if n == 0:
        raise ValueError('no training images')
    if init_seed is not None:
        torch.manual_seed(int(init_seed))
        for m in model.modules():
            if m is not model and hasattr(m, 'reset_parameters'):
                m.reset_parameters()
        # the head's own initialisation (std 0.01, prior bias) is redone by rebuilding it
        head_cls = type(model.head)
        c = model.config
        model.head = head_cls(c.fpn_channels, num_classes=len(c.class_names), num_convs=c.head_convs,
                              strides=c.strides, centerness=c.centerness)
    model.to(device)
    cfg = model.config
    width, height = cfg.input_size
    if crop_width is not None and not 0 < int(crop_width) <= width:
        raise ValueError(f'crop_width must be in 1..{width}, got {crop_width}')
    cw = width if crop_width is None else int(crop_width)
    k = len(cfg.class_names)
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    if max_steps is not None:
        total = min(total, int(max_steps))
    warmup = warmup_steps if warmup_steps is not None else min(100, max(1, total // 10))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    pre = isinstance(images, torch.Tensor)

    history: Dict[str, list] = {'step_loss': [], 'lr': [], 'loss': [], 'focal': [], 'box': [],
                                'centerness': [], 'num_pos': [], 'val': []}
    step = 0
    bar = tqdm(total=total, desc=f'train {cfg.modality} teacher', disable=not progress, unit='step')
    try:
        for epoch in range(epochs):
            if step >= total:
                break
            model.train()
            perm = torch.randperm(n, generator=gen).tolist()
            sums = {'loss': 0.0, 'focal': 0.0, 'box': 0.0, 'centerness': 0.0, 'num_pos': 0.0}
            count = 0
            for start in range(0, n, batch_size):
                if step >= total:
                    break
                idx = perm[start:start + batch_size]
                xs, bs, ls = [], [], []
                for i in idx:
                    x = images[i] if pre else model.preprocess(images[i])
                    b = np.asarray(boxes_list[i], dtype=np.float64).reshape(-1, 4)
                    if cw < width:
                        x0 = int(rng.integers(0, width - cw + 1))
                        x = x[..., x0:x0 + cw]
                        b = crop_boxes(b, x0, cw)
                    if hflip and rng.random() < 0.5:
                        x = torch.flip(x, dims=[-1])
                        b = hflip_boxes(b, cw)
                    xs.append(x)
                    bs.append(b)
                    ls.append(None if labels_list is None else np.asarray(labels_list[i]))
                x = torch.stack(xs).to(device=device, dtype=torch.float32)
                targets = assign_targets(bs, (cw, height), cfg.strides,
                                         None if labels_list is None else ls, num_classes=k)
                for g in opt.param_groups:
                    g['lr'] = _lr_at(step, total, lr, warmup)
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                    outputs, _ = model(x)
                losses = detection_loss(outputs, targets, box_loss=box_loss)
                opt.zero_grad(set_to_none=True)
                losses['total'].backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                tot = float(losses['total'].detach())
                if not math.isfinite(tot):
                    raise FloatingPointError(f'training loss became {tot} at step {step}')
                history['step_loss'].append(tot)
                history['lr'].append(opt.param_groups[0]['lr'])
                sums['loss'] += tot
                for key in ('focal', 'box', 'centerness', 'num_pos'):
                    sums[key] += float(losses[key].detach())
                count += 1
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f'{tot:.3f}')
            for key, v in sums.items():
                history[key].append(v / max(count, 1))
            if val_fn is not None:
                model.eval()
                history['val'].append(dict(val_fn(model, epoch)))
    finally:
        bar.close()
    model.eval()
    return history
