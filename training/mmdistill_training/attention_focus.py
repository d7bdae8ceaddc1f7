"""How much of an MTA target's attention falls on the vehicles the array can hear.

MTA (DESIGN §7) can only teach the student something the focal loss on the boxes does not if
its target puts its mass where the audible vehicles are. This measures that on a dataset split
against the simulator's truth: per pyramid level and per target (each teacher's normalised
attention, their product, their average) the share of attention mass on the cells covered by
headline vehicles (visible and audible), the share on the other vehicles (silent or too small),
and the share of cells the headline vehicles cover. ``focus`` = mass share / cell share: 1 is no
better than a uniform map, the larger the sharper on audible vehicles.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from mmdistill_common.errors import ConfigError

from .dataset import DistillDataset
from .losses import attention_distribution, averaged_teacher_target, teacher_product_target
from .metrics import truth_sets

__all__ = ['box_cells', 'mass_shares', 'attention_focus', 'format_focus']


def box_cells(boxes: np.ndarray, shape: Sequence[int], stride: int) -> np.ndarray:
    """bool ``(H, W)``: the cells of a stride-``stride`` grid whose area a box overlaps."""
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4) / stride:
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
        out[r0:r1, c0:c1] = True
    return out


def mass_shares(p: np.ndarray, audible: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``(mass on audible cells, mass on other vehicles' cells, share of audible cells)`` of one
    distribution ``p`` ``(H, W)`` (sums to 1); a cell of both counts as audible."""
    other = other & ~audible
    return np.array([p[audible].sum(), p[other].sum(), audible.mean()])


def attention_focus(ds: DistillDataset, rows: Sequence[int], strides: Optional[Sequence[int]] = None,
                    teachers: Sequence[str] = ('rgb', 'depth', 'thermal'), eps: float = 0.01, r: float = 2.0,
                    tau: float = 1.0) -> Dict[str, Dict[str, dict]]:
    """``{target: {stride: {audible_mass, other_mass, audible_cells, focus}}}`` averaged over the
    frames of ``rows`` that have truth, all teachers and at least one headline vehicle; targets are
    the teachers, ``product`` (MTA) and ``average`` (the averaged-teachers baseline), computed by
    the training losses' own functions on the student's levels (``strides``, default the
    dataset's)."""
    from .trainer import align_attention
    ds_strides = tuple(int(s) for s in ds.index['strides'])
    strides = tuple(int(s) for s in (strides or ds_strides))
    teachers = list(teachers)
    if not teachers:
        raise ConfigError('attention_focus needs at least one teacher')
    names = teachers + ['product', 'average']
    acc = {n: {s: [] for s in strides} for n in names}
    present_idx = [('rgb', 'depth', 'thermal').index(m) for m in teachers]
    for row in rows:
        gt = ds.ground_truth(int(row))
        if gt is None or not ds.teacher_present([int(row)])[0, present_idx].all():
            continue
        head = truth_sets(gt)['ground_truth']
        if not head.any():
            continue
        boxes = np.asarray(gt['boxes']).reshape(-1, 4)
        maps = {m: align_attention([torch.from_numpy(a) for a in ds.attention([int(row)], m)], ds_strides, strides)
                for m in teachers}
        for j, s in enumerate(strides):
            level = [maps[m][j] for m in teachers]
            shape = level[0].shape[1:]
            aud, oth = box_cells(boxes[head], shape, s), box_cells(boxes[~head], shape, s)
            dists = {m: attention_distribution(q, r, tau) for m, q in zip(teachers, level)}
            dists['product'] = teacher_product_target(level, eps=eps, tau=tau, r=r)
            dists['average'] = averaged_teacher_target(level, tau=tau, r=r)
            for n, p in dists.items():
                acc[n][s].append(mass_shares(p.reshape(shape).numpy(), aud, oth))
    out: Dict[str, Dict[str, dict]] = {}
    for n in names:
        out[n] = {}
        for s in strides:
            if not acc[n][s]:
                continue
            a, o, c = np.mean(acc[n][s], axis=0)
            out[n][str(s)] = {'audible_mass': float(a), 'other_mass': float(o), 'audible_cells': float(c),
                              'focus': float(a / c) if c > 0 else float('nan'), 'frames': len(acc[n][s])}
    return out


def format_focus(focus: Mapping[str, Mapping[str, dict]]) -> str:
    """Markdown table: per target and level the audible mass / other-vehicle mass / cell share and
    the focus."""
    strides = sorted({s for per in focus.values() for s in per}, key=int)
    head = ' | '.join(f'stride {s}: audible / other / cells (focus)' for s in strides)
    lines = [f'| MTA target | {head} |', '|---|' + '---|' * len(strides)]
    for n, per in focus.items():
        cells = []
        for s in strides:
            f = per.get(s)
            cells.append('–' if f is None else f'{f["audible_mass"]:.3f} / {f["other_mass"]:.3f} / '
                                                 f'{f["audible_cells"]:.3f} ({f["focus"]:.2f})')
        lines.append(f'| {n} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'
