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
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from mmdistill_common.errors import ConfigError

from .attention_focus import attention_focus, format_focus
from .dataset import DistillDataset
from .experiments import EXPERIMENTS, Experiment
from .evaluate import evaluate_predictions, headline
from .train_config import DEFAULTS

__all__ = ['Experiment', 'EXPERIMENTS', 'run_ablation', 'row_dir', 'classical_predictions', 'scene_prior_predictions',
           'aggregate_seeds', 'format_table']


#: the summary figures aggregated over seeds (mean and std) per reference
_FIGURES = ('AP50', 'mAP_avg', 'CDx', 'CDy')


def classical_predictions(ds: DistillDataset, rows: Sequence[int], train_rows: Sequence[int],
                          algorithm: str = 'SRP', progress: bool = True,
                          rule: Tuple[float, Sequence[str]] = (0.0, ())) -> List[dict]:
    """The classical baseline on the raw audio windows of ``rows`` (box size prior fitted on the
    training pseudo-labels the student learns: ``rule`` = min_label_score, label_support)."""
    from .trainer import reference_frames
    from .baselines.classical import ClassicalBaseline
    geo = ds.index.get('geometry')
    if not geo:
        raise ConfigError('the dataset has no array/camera geometry (index.json "geometry"); the '
                          'classical baseline needs it')
    base = ClassicalBaseline.from_geometry(geo, algorithm=algorithm)
    try:
        base.fit([f['boxes'] for f in reference_frames(ds, train_rows, 'fused', *rule)])
    except ConfigError:          # no training pseudo-label at all: a car at the baseline's range
        base.fit_geometric()
    out = []
    for r in tqdm(rows, desc=f'classical {algorithm}', disable=not progress, unit='frame'):
        w = ds.audio_window(int(r)).astype(np.float32).T / 32768.0
        out.append(base.predict(w))
    return out


def scene_prior_predictions(ds: DistillDataset, rows: Sequence[int], rule: Tuple[float, Sequence[str]] = (0.0, ())
                            ) -> List[dict]:
    """The scene-prior baseline: boxes fitted on the train split's pseudo-labels (those the student
    learns: ``rule`` = min_label_score, label_support), K chosen on val."""
    from .baselines.scene_prior import ScenePrior
    from .trainer import reference_frames
    recorded = ds.split_indices('train', mixed=False)      # the training drives, not their mixes
    prior = ScenePrior.fit([f['boxes'] for f in reference_frames(ds, recorded, 'fused', *rule)],
                           [f['boxes'] for f in reference_frames(ds, ds.split_indices('val'), 'fused', *rule)])
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


def row_dir(out: Path, name: str, seed: int = 0) -> Path:
    """Where ``run_ablation`` keeps one row's checkpoint and ``eval.json`` for one seed."""
    return Path(out) / f'seed-{seed}' / name


def _check_twin(ds: DistillDataset, twin: DistillDataset) -> None:
    """The spectrogram dataset must hold the same drives, splits and frames as the main one."""
    if ds.index['splits'] != twin.index['splits'] or len(ds) != len(twin) \
            or not np.array_equal(ds.stamps(np.arange(len(ds))), twin.stamps(np.arange(len(twin)))):
        raise ConfigError('--spectrogram-dataset must be built from the same labelled bags (same drives, '
                          'splits and frames) as --dataset')


def _train_row(exp: Experiment, dataset: Path, ds: DistillDataset, rows, d: Path, pretext_dir: Path,
               seed: int, epochs: Optional[int], progress: bool,
               labels: Dict[str, object]) -> Tuple[List[dict], dict]:
    from .evaluate import student_predictor
    from .train_config import load_train_config
    from .trainer import train
    from mmdistill_student.checkpoint import load_checkpoint
    ov: Dict[str, object] = {'seed': seed, **labels}
    if epochs:
        ov['optim'] = {'epochs': epochs}
    summary = train(load_train_config(exp.config, ov), dataset, d,
                    init=f'pretext:{pretext_dir}' if exp.pretext else None,
                    progress=progress, resume=(d / 'train_state.json').is_file())
    model, meta = load_checkpoint(d)
    extra = {'best_val': summary['best'], 'epochs_run': summary['epochs_run'],
             'parameters': int(sum(p.numel() for p in model.parameters())),
             'operating_point': meta.get('operating_point')}
    return student_predictor(model, meta, ds)(rows), extra


def run_ablation(dataset: Path, out: Path, names: Optional[Sequence[str]] = None,
                 epochs: Optional[int] = None, pretext_epochs: Optional[int] = None,
                 progress: bool = True, split: str = 'test', seeds: Sequence[int] = (0,),
                 spectrogram_dataset: Optional[Path] = None, min_label_score: Optional[float] = None,
                 label_support: Optional[Sequence[str]] = None) -> dict:
    """Train and evaluate every row for every seed (``out/seed-S/<row>``), then one table of mean
    and std over seeds (``min_label_score``, ``label_support``: the fused pseudo-labels kept as
    targets and as the PL reference, default the training configs'). Rows on the spectrogram encoder read ``spectrogram_dataset`` (the same
    labelled bags built with ``--features logmel,ild,gcc``) and are left out without it."""
    from .train_config import load_train_config
    from .trainer import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = DistillDataset(dataset)
    twin = DistillDataset(spectrogram_dataset) if spectrogram_dataset is not None else None
    if twin is not None:
        _check_twin(ds, twin)
    known = {e.name: e for e in EXPERIMENTS}
    for n in names or []:
        if n not in known:
            raise ConfigError(f'unknown experiment {n!r}; known: {", ".join(known)}')
    todo = [known[n] for n in names] if names else EXPERIMENTS
    skipped = [e.name for e in todo if e.features == 'spectrogram' and twin is None]
    todo = [e for e in todo if e.name not in skipped]
    if names and skipped:
        raise ConfigError(f'{", ".join(skipped)} need --spectrogram-dataset (a dataset of the same bags built '
                          'with --features logmel,ild,gcc)')
    if not seeds:
        raise ConfigError('--seeds must name at least one seed')
    labels: Dict[str, object] = {}          # train-config overrides: the targets every row learns
    if min_label_score is not None:
        labels['min_label_score'] = min_label_score
    if label_support is not None:
        labels['label_support'] = list(label_support)
    rule = (labels.get('min_label_score', DEFAULTS['min_label_score']),
            labels.get('label_support', DEFAULTS['label_support']))
    rows = ds.split_indices(split)
    if len(rows) == 0:
        raise ConfigError(f'dataset has no {split!r} frames')
    per_seed: Dict[str, List[dict]] = {e.name: [] for e in todo}
    for seed in seeds:
        root = out / f'seed-{seed}'
        root.mkdir(exist_ok=True)
        for exp in todo:
            d = row_dir(out, exp.name, seed)
            d.mkdir(exist_ok=True)
            eval_path = d / 'eval.json'
            if eval_path.is_file():
                per_seed[exp.name].append(json.loads(eval_path.read_text()))
                continue
            if exp.config is None and seed != seeds[0]:      # deterministic rows: computed once
                per_seed[exp.name].append(per_seed[exp.name][0])
                continue
            src, src_ds = (spectrogram_dataset, twin) if exp.features == 'spectrogram' else (dataset, ds)
            pretext_dir = root / ('pretext-spectrogram' if exp.features == 'spectrogram' else 'pretext')
            if exp.pretext and not (pretext_dir / 'summary.json').is_file():
                ov: Dict[str, object] = {'seed': seed, **labels}
                if pretext_epochs:
                    ov['optim'] = {'epochs': pretext_epochs}
                if exp.features == 'spectrogram':       # the spectrogram rows' network (spectrogram.yaml)
                    ov['features'] = ['logmel', 'ild', 'gcc']
                    ov['model'] = {'strides': None, 'head_convs': 1}
                train(load_train_config('pretext', ov), src, pretext_dir, progress=progress,
                      resume=(pretext_dir / 'train_state.json').is_file())
            t0 = time.perf_counter()
            extra: Dict[str, object] = {'seed': seed}
            if exp.name == 'scene-prior':
                preds = scene_prior_predictions(ds, rows, rule)
            elif exp.config is None:
                preds = classical_predictions(ds, rows, ds.split_indices('train', mixed=False), progress=progress,
                                              rule=rule)
            else:
                preds, more = _train_row(exp, src, src_ds, rows, d, pretext_dir, seed, epochs, progress, labels)
                extra.update(more)
            res = evaluate_predictions(ds, rows, preds, min_label_score=rule[0], label_support=rule[1])
            row = _row(exp.name, exp, res, {**extra, 'time_s': time.perf_counter() - t0})
            eval_path.write_text(json.dumps(row, indent=1, default=float))
            per_seed[exp.name].append(row)
    results = [aggregate_seeds(per_seed[e.name]) for e in todo]
    # what the MTA rows' targets hold, on ours' pyramid levels: without mass on the audible
    # vehicles beyond their share of the image, MTA cannot add to the focal loss on the boxes
    focus = attention_focus(ds, rows, strides=load_train_config('student').model.get('strides')) \
        if ds.has_ground_truth else {}
    table = format_table(results)
    if focus:
        table += ('\nMTA targets: share of attention mass on the audible vehicles / on the other vehicles / '
                  'share of cells they cover (focus = mass / cells; 1 is a uniform map)\n\n' + format_focus(focus))
    (out / 'table.md').write_text(table)
    summary = {'dataset': str(dataset), 'spectrogram_dataset': str(spectrogram_dataset) if twin else None,
               'split': split, 'frames': int(len(rows)), 'seeds': list(seeds), 'left_out': skipped,
               'rows': results, 'mta_targets': focus}
    (out / 'results.json').write_text(json.dumps(summary, indent=1, default=float))
    return summary


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def aggregate_seeds(rows: Sequence[dict]) -> dict:
    """One table row from the per-seed rows: each figure as its mean, with ``<figure>_std``."""
    out = dict(rows[0])
    out['seeds'] = [r.get('seed') for r in rows]
    out['per_seed'] = rows
    for ref in ('ground_truth', 'pseudo_labels', 'ground_truth_shuffled', 'ground_truth_all_visible'):
        block = {}
        for k in _FIGURES:
            m, sd = _mean_std([r.get(ref, {}).get(k) for r in rows])
            block[k], block[f'{k}_std'] = m, sd
        out[ref] = block
    return out


def _f(v: float, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '–'
    return f'{v:.2f}' if pct else f'{v:.3f}'


def _ms(block: dict, k: str, pct: bool = False) -> str:
    m, sd = block.get(k), block.get(f'{k}_std')
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return '–'
    return _f(m, pct) if not sd else f'{_f(m, pct)} ± {_f(sd, pct)}'


def format_table(rows: List[dict]) -> str:
    """Markdown table: method, then AP@0.5 / mAP@Avg / CDx / CDy against the headline ground truth,
    AP@0.5 against time-shuffled ground truth (the prior check), then against pseudo-labels; each
    cell the mean ± std over seeds."""
    lines = ['| group | method | seeds | GT AP@0.5 | GT mAP@Avg | GT CDx % | GT CDy % | shuffled GT AP@0.5 | '
             'PL AP@0.5 | PL mAP@Avg | PL CDx % | PL CDy % |', '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        g, p = r['ground_truth'], r['pseudo_labels']
        sh = r.get('ground_truth_shuffled', {})
        lines.append(f'| {r["group"]} | {r["name"]} | {len(r.get("seeds") or [0])} | {_ms(g, "AP50")} | '
                     f'{_ms(g, "mAP_avg")} | {_ms(g, "CDx", True)} | {_ms(g, "CDy", True)} | {_ms(sh, "AP50")} | '
                     f'{_ms(p, "AP50")} | {_ms(p, "mAP_avg")} | {_ms(p, "CDx", True)} | {_ms(p, "CDy", True)} |')
    return '\n'.join(lines) + '\n'
