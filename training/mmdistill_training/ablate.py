"""Baselines and ablations trained and evaluated side by side (issue 5, item 7).

One table in the layout of the paper's Tables 1, 2 and 4: per method the AP@0.5, mAP@Avg,
CDx and CDy on the test split against the simulator's ground truth and against the fused
pseudo-labels. Every trained row is a shipped config in ``mmdistill_training/configs/``;
a finished row (``summary.json`` and ``eval.json`` present) is reused, so an interrupted run
continues where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from mmdistill_common.errors import ConfigError

from .dataset import DistillDataset
from .evaluate import evaluate_predictions, headline

__all__ = ['Experiment', 'EXPERIMENTS', 'run_ablation', 'classical_predictions', 'scene_prior_predictions',
           'format_table']


@dataclass(frozen=True)
class Experiment:
    name: str
    config: Optional[str]         # shipped training config; None = not trained (classical)
    pretext: bool                 # encoder initialised from the counting pretext
    group: str                    # table section
    description: str


EXPERIMENTS: List[Experiment] = [
    Experiment('classical-srp', None, False, 'baselines', 'SRP-PHAT (pyroomacoustics) azimuth -> image box'),
    Experiment('scene-prior', None, False, 'baselines',
               'the best fixed set of boxes from the training pseudo-labels (k-means, K chosen on val), every frame'),
    Experiment('stereosoundnet', 'stereosoundnet', False, 'baselines',
               'StereoSoundNet-style: 2 mics, log-mel, RGB teacher, ranking loss'),
    Experiment('single-rgb', 'single-rgb', True, 'single teacher', 'RGB teacher boxes + attention'),
    Experiment('single-depth', 'single-depth', True, 'single teacher', 'depth teacher boxes + attention'),
    Experiment('single-thermal', 'single-thermal', True, 'single teacher', 'thermal teacher boxes + attention'),
    Experiment('averaged-teachers', 'averaged-teachers', True, 'multi-teacher', 'MTA on the averaged teachers'),
    Experiment('mta-reference', 'mta-reference', True, 'multi-teacher',
               'reference implementation\'s MTA (probabilities as log-probabilities, T = 9, per teacher)'),
    Experiment('no-mta', 'no-distill', True, 'ours (ablations)', 'focal + box loss only, no MTA'),
    Experiment('ours-no-pretext', 'student', False, 'ours (ablations)', 'ours without the counting pretext'),
    Experiment('ours-logmel-only', 'logmel-only', False, 'ours (ablations)',
               'ours without inter-microphone features and without pretext'),
    Experiment('ours', 'student', True, 'ours', 'log-mel + ILD + GCC-PHAT, pretext, focal + MTA (product)'),
]


def classical_predictions(ds: DistillDataset, rows: Sequence[int], train_rows: Sequence[int],
                          algorithm: str = 'SRP', progress: bool = True) -> List[dict]:
    """The classical baseline on the raw audio windows of ``rows`` (box size prior fitted on the
    training pseudo-labels)."""
    from .baselines.classical import ClassicalBaseline
    geo = ds.index.get('geometry')
    if not geo:
        raise ConfigError('the dataset has no array/camera geometry (index.json "geometry"); the '
                          'classical baseline needs it')
    base = ClassicalBaseline.from_geometry(geo, algorithm=algorithm)
    try:
        base.fit([ds.labels(int(r))[0] for r in train_rows])
    except ConfigError:          # no training pseudo-label at all: a car at the baseline's range
        base.fit_geometric()
    out = []
    for r in tqdm(rows, desc=f'classical {algorithm}', disable=not progress, unit='frame'):
        w = ds.audio_window(int(r)).astype(np.float32).T / 32768.0
        out.append(base.predict(w))
    return out


def scene_prior_predictions(ds: DistillDataset, rows: Sequence[int]) -> List[dict]:
    """The scene-prior baseline: boxes fitted on the train split's pseudo-labels, K chosen on val."""
    from .baselines.scene_prior import ScenePrior
    prior = ScenePrior.fit([ds.labels(int(r))[0] for r in ds.split_indices('train')],
                           [ds.labels(int(r))[0] for r in ds.split_indices('val')])
    return [prior.predict() for _ in rows]


def _row(name: str, exp: Experiment, res: dict, extra: dict) -> dict:
    return {'name': name, 'group': exp.group, 'description': exp.description, 'pretext': exp.pretext,
            'ground_truth': headline(res, 'ground_truth'), 'pseudo_labels': headline(res, 'pseudo_labels'),
            'ground_truth_all_visible': headline(res, 'ground_truth_all_visible'),
            'ground_truth_shuffled': headline(res, 'ground_truth_shuffled'),
            'by_distance_gt': {b: m['AP50'] for b, m in res.get('ground_truth', {}).get('by_distance', {}).items()},
            'by_condition_gt': {k: {v: m['AP50'] for v, m in vals.items()}
                                for k, vals in res.get('ground_truth', {}).get('by_condition', {}).items()},
            **extra}


def run_ablation(dataset: Path, out: Path, names: Optional[Sequence[str]] = None,
                 epochs: Optional[int] = None, pretext_epochs: Optional[int] = None,
                 progress: bool = True, split: str = 'test') -> dict:
    from .evaluate import student_predictor
    from .train_config import load_train_config
    from .trainer import train
    from mmdistill_student.checkpoint import load_checkpoint

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = DistillDataset(dataset)
    known = {e.name: e for e in EXPERIMENTS}
    todo = [known[n] for n in names] if names else EXPERIMENTS
    for n in names or []:
        if n not in known:
            raise ConfigError(f'unknown experiment {n!r}; known: {", ".join(known)}')
    rows = ds.split_indices(split)
    if len(rows) == 0:
        raise ConfigError(f'dataset has no {split!r} frames')
    pretext_dir = out / 'pretext'
    if any(e.pretext for e in todo) and not (pretext_dir / 'summary.json').is_file():
        ov = {'optim': {'epochs': pretext_epochs}} if pretext_epochs else None
        train(load_train_config('pretext', ov), dataset, pretext_dir, progress=progress,
              resume=(pretext_dir / 'train_state.json').is_file())
    results = []
    for exp in todo:
        d = out / exp.name
        d.mkdir(exist_ok=True)
        eval_path = d / 'eval.json'
        if eval_path.is_file():
            results.append(json.loads(eval_path.read_text()))
            continue
        t0 = time.perf_counter()
        extra: Dict[str, object] = {}
        if exp.name == 'scene-prior':
            preds = scene_prior_predictions(ds, rows)
        elif exp.config is None:
            preds = classical_predictions(ds, rows, ds.split_indices('train'), progress=progress)
        else:
            ov = {'optim': {'epochs': epochs}} if epochs else None
            cfg = load_train_config(exp.config, ov)
            summary = train(cfg, dataset, d, init=f'pretext:{pretext_dir}' if exp.pretext else None,
                            progress=progress, resume=(d / 'train_state.json').is_file())
            extra.update({'best_val': summary['best'], 'epochs_run': summary['epochs_run']})
            model, meta = load_checkpoint(d)
            extra['parameters'] = int(sum(p.numel() for p in model.parameters()))
            preds = student_predictor(model, meta, ds)(rows)
        res = evaluate_predictions(ds, rows, preds)
        row = _row(exp.name, exp, res, {**extra, 'time_s': time.perf_counter() - t0})
        eval_path.write_text(json.dumps(row, indent=1, default=float))
        results.append(row)
    table = format_table(results)
    (out / 'table.md').write_text(table)
    summary = {'dataset': str(dataset), 'split': split, 'frames': int(len(rows)), 'rows': results}
    (out / 'results.json').write_text(json.dumps(summary, indent=1, default=float))
    return summary


def _f(v: float, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '–'
    return f'{v:.2f}' if pct else f'{v:.3f}'


def format_table(rows: List[dict]) -> str:
    """Markdown table: method, then AP@0.5 / mAP@Avg / CDx / CDy against the headline ground truth,
    AP@0.5 against time-shuffled ground truth (the prior check), then against pseudo-labels."""
    lines = ['| group | method | GT AP@0.5 | GT mAP@Avg | GT CDx % | GT CDy % | shuffled GT AP@0.5 | PL AP@0.5 | '
             'PL mAP@Avg | PL CDx % | PL CDy % |', '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        g, p = r['ground_truth'], r['pseudo_labels']
        sh = r.get('ground_truth_shuffled', {}).get('AP50')
        lines.append(f'| {r["group"]} | {r["name"]} | {_f(g["AP50"])} | {_f(g["mAP_avg"])} | {_f(g["CDx"], 1)} | '
                     f'{_f(g["CDy"], 1)} | {_f(sh)} | {_f(p["AP50"])} | {_f(p["mAP_avg"])} | {_f(p["CDx"], 1)} | '
                     f'{_f(p["CDy"], 1)} |')
    return '\n'.join(lines) + '\n'
