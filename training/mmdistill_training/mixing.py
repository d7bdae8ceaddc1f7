"""Mixed drives: two training drives' microphone signals summed, their labels joined.

Why: the student sees too few vehicles to learn to separate simultaneous sources (the vehicles
at 15-30 m it misses sit beside louder ones), and more simulated drives cost demo time. Sound
adds at the array: the sum of two drives' 8-channel recordings is what the array would have
heard with both scenes' vehicles around it (and both scenes' ambient noise), and the camera sees
both sets of boxes, since every drive shares one camera and one array (the dataset's common
geometry). So a mixed drive is a physically valid new training drive with about twice the
vehicles per frame, built from audio and labels already in the dataset; only the front end
runs again. The drives used as partners are training drives; validation and test drives are
never mixed.

A mixed drive keeps drive A's timeline: its audio is ``A[t] + B[t + shift]`` (``shift`` aligns
B's first labelled window with A's), and a frame of A is kept when B has a labelled frame at the
same point of its own timeline. Its labels, teacher detections and truth are the union of the two
frames' (truth ids of B offset by :data:`ID_OFFSET`); a teacher counts as present when it
delivered on both frames, and its attention maps are summed (each map is an unnormalised
|F|^2 mass, so the sum is the joint scene's mass).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mmdistill_common.errors import ConfigError

__all__ = ['ID_OFFSET', 'mix_partners', 'mix_drives']

#: added to the truth ids of the second drive of a mix, so the two drives' vehicles stay distinct
ID_OFFSET = 1_000_000


def mix_partners(drives: Sequence[Tuple[str, str]], copies: int) -> List[Tuple[str, str]]:
    """``[(drive, scenario)]`` of the training split -> ``[(A, B)]``: every drive ``copies`` times,
    copy ``c`` (1-based) paired with the drive at the same position in the ``c``-th next scenario
    (sorted names, wrapping round), so partners always come from another scenario."""
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
        raise ConfigError(f'--mix must be a non-negative integer, got {copies!r}')
    if copies == 0:
        return []
    groups: Dict[str, List[str]] = collections.defaultdict(list)
    for name, scenario in drives:
        groups[scenario].append(name)
    scenarios = sorted(groups)
    if len(scenarios) < 2:
        raise ConfigError(f'--mix needs training drives of at least two scenarios, got {scenarios}')
    if copies >= len(scenarios):
        raise ConfigError(f'--mix {copies}: at most {len(scenarios) - 1} copies with {len(scenarios)} '
                          'training scenarios (each copy pairs a drive with another scenario)')
    pairs = []
    for c in range(1, copies + 1):
        for i, s in enumerate(scenarios):
            partner = sorted(groups[scenarios[(i + c) % len(scenarios)]])
            for k, a in enumerate(sorted(groups[s])):
                pairs.append((a, partner[k % len(partner)]))
    return pairs


def _join_truth(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    if a is None or b is None:
        return None
    out = {}
    for key, va in a.items():
        vb = np.asarray(b[key])
        if key == 'ids':
            vb = vb.astype(np.int64) + ID_OFFSET
        out[key] = np.concatenate([np.asarray(va), vb.astype(np.asarray(va).dtype)])
    return out


def _join_label(a, b):
    """Two ``PseudoLabelData`` -> their union on A's stamp (teachers present on both)."""
    present = [m for m in a.modalities if m in b.modalities]
    attention = {m: [np.asarray(x, np.float32) + np.asarray(y, np.float32)
                     for x, y in zip(a.attention[m], b.attention[m])]
                 for m in present if m in a.attention and m in b.attention}
    return dataclasses.replace(
        a, boxes=np.concatenate([np.asarray(a.boxes).reshape(-1, 4), np.asarray(b.boxes).reshape(-1, 4)]),
        scores=np.concatenate([np.asarray(a.scores).reshape(-1), np.asarray(b.scores).reshape(-1)]),
        labels=list(a.labels) + list(b.labels), support=list(a.support) + list(b.support),
        modalities=present, attention=attention)


def mix_drives(a, b):
    """Two ``DriveData`` -> the mixed ``DriveData`` named ``'A+B'`` (see the module docstring).
    Samples that overflow int16 in the sum are clipped and counted (``clipped_samples``); frames of
    A without a partner frame in B are counted in ``skipped['mix_unmatched']``."""
    from .dataset_build import DriveData, FrameRecord

    if (a.audio.sample_rate, a.audio.channels) != (b.audio.sample_rate, b.audio.channels):
        raise ConfigError(f'cannot mix {a.name} and {b.name}: different audio formats')
    if not a.frames or not b.frames:
        raise ConfigError(f'cannot mix {a.name} and {b.name}: a drive without labelled frames')
    shift = b.frames[0].window_start - a.frames[0].window_start
    lo, hi = max(0, -shift), min(len(a.audio.samples), len(b.audio.samples) - shift)   # where B's audio lies
    total = a.audio.samples.astype(np.int32)
    if hi > lo:
        total[lo:hi] += b.audio.samples[lo + shift:hi + shift]
    clipped = int(np.count_nonzero((total > 32767) | (total < -32768)))
    audio = dataclasses.replace(a.audio, samples=np.clip(total, -32768, 32767).astype(np.int16))
    partner = {f.window_start - shift: f for f in b.frames}
    frames, unmatched = [], 0
    for f in a.frames:
        g = partner.get(f.window_start)
        if g is None:
            unmatched += 1
            continue
        teachers = {m: (np.concatenate([f.teachers[m][0], g.teachers[m][0]]),
                        np.concatenate([f.teachers[m][1], g.teachers[m][1]]))
                    for m in f.teachers if m in g.teachers}
        frames.append(FrameRecord(f.stamp_ns, _join_label(f.label, g.label), teachers,
                                  _join_truth(f.truth, g.truth), f.window_start))
    skipped = {'mix_unmatched': unmatched} if unmatched else {}
    return DriveData(f'{a.name}+{b.name}', f'{a.bag}+{b.bag}', dict(a.conditions), audio, frames, len(frames),
                     skipped, a.has_truth and b.has_truth, a.image_size,
                     [t for t in a.teacher_topics if t in b.teacher_topics], mixed_with=b.name,
                     clipped_samples=clipped)
