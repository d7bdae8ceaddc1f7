"""The rows of ``mmdistill ablate`` (baselines, ablations, the upper bound).

Kept apart from :mod:`.ablate` so that listing them (``mmdistill ablate --help``, built for every
``mmdistill`` command line) imports neither torch nor the trainer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

__all__ = ['Experiment', 'EXPERIMENTS']


@dataclass(frozen=True)
class Experiment:
    name: str
    config: Optional[str]         # shipped training config; None = not trained (classical, scene prior)
    pretext: bool                 # encoder initialised from the counting pretext
    group: str                    # table section
    description: str
    features: str = 'acoustic'    # which dataset the row reads: acoustic (the main one) or spectrogram


EXPERIMENTS: List[Experiment] = [
    Experiment('classical-srp', None, False, 'baselines', 'SRP-PHAT (pyroomacoustics) azimuth -> image box'),
    Experiment('scene-prior', None, False, 'baselines',
               'the best fixed set of boxes from the training pseudo-labels (k-means, K chosen on val), every frame'),
    Experiment('stereosoundnet', 'stereosoundnet', False, 'baselines',
               'StereoSoundNet-style: 2 mics, log-mel, RGB teacher, ranking loss', 'spectrogram'),
    Experiment('spectrogram', 'spectrogram', True, 'baselines',
               'the spectrogram encoder (reference approach): log-mel + ILD + GCC-PHAT maps, pooled, focal + MTA',
               'spectrogram'),
    Experiment('single-rgb', 'single-rgb', True, 'single teacher', 'RGB teacher boxes + attention'),
    Experiment('single-depth', 'single-depth', True, 'single teacher', 'depth teacher boxes + attention'),
    Experiment('single-thermal', 'single-thermal', True, 'single teacher', 'thermal teacher boxes + attention'),
    Experiment('averaged-teachers', 'averaged-teachers', True, 'multi-teacher', 'MTA on the averaged teachers'),
    Experiment('mta-reference', 'mta-reference', True, 'multi-teacher',
               'reference implementation\'s MTA (probabilities as log-probabilities, T = 9, per teacher)'),
    Experiment('no-mta', 'no-distill', True, 'ours (ablations)', 'focal + box loss only, no MTA'),
    Experiment('ours-no-pretext', 'student', False, 'ours (ablations)', 'ours without the counting pretext'),
    Experiment('ours', 'student', True, 'ours',
               'acoustic image + column-equivariant network, pretext, focal + MTA (product)'),
    Experiment('upper-bound', 'upper-bound', False, 'upper bound (not a result)',
               'ours trained on simulator ground truth (headline rule): what the audio supports'),
]
