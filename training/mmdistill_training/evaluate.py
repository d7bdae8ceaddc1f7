"""Evaluation of a student (or any predictor) on a dataset split (DESIGN §8).

Every number is reported against the fused teacher pseudo-labels (the paper's protocol) and,
where the dataset has it, the simulator's ground truth under the one evaluation rule of
:func:`mmdistill_training.metrics.evaluate_truth` (headline: seen by a camera, >= 8 px tall,
audible; second reference: all visible; distance buckets; the prior check against
time-shuffled truth) -- overall and split by condition (time of day, weather, ego motion,
occlusion, scenario).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from mmdistill_common.errors import ConfigError

from .dataset import DistillDataset
from .metrics import (MIN_GT_HEIGHT_PX, MIN_VISIBLE_FRACTION, evaluate_by_condition, evaluate_detections,
                      evaluate_truth, reference_frame)
from .train_config import DEFAULTS
from .trainer import TEACHER_SCORE_THRESHOLD, plan_channels, predict_rows, reference_frames

__all__ = ['check_frontend_compatible', 'student_predictor', 'truth_frames', 'evaluate_predictions',
           'evaluate_checkpoint', 'headline', 'write_report', 'CONDITION_KEYS']

CONDITION_KEYS = ('time_of_day', 'weather', 'ego_motion', 'occluded', 'scenario')
_FRONTEND_MUST_MATCH = ('sample_rate', 'channels', 'n_mels', 'n_fft', 'hop', 'fmin', 'fmax', 'window_s', 'mode',
                        'kind', 'columns', 'bands_hz', 'mvdr_smooth', 'mvdr_loading', 'mvdr_bins_per_band')


def check_frontend_compatible(model_frontend: dict, ds_frontend: dict) -> None:
    """The dataset's features must be what the student was trained on (ILD/GCC/MVDR may be extra).
    Both are compared with their defaults filled in (front ends stored before a key existed)."""
    from mmdistill_student.frontend import FrontendConfig
    model_frontend, ds_frontend = (FrontendConfig.from_dict(dict(d)).to_dict() for d in (model_frontend, ds_frontend))
    bad = [k for k in _FRONTEND_MUST_MATCH if model_frontend.get(k) != ds_frontend.get(k)]
    if bad:
        raise ConfigError('dataset front end differs from the checkpoint\'s in ' + ', '.join(
            f'{k} ({ds_frontend.get(k)!r} vs {model_frontend.get(k)!r})' for k in bad))


def student_predictor(model, meta: dict, ds: DistillDataset, score_threshold: float = 0.05,
                      device='cpu') -> Callable[[Sequence[int]], List[dict]]:
    """rows -> detections of a loaded student, reading the dataset's precomputed features."""
    check_frontend_compatible(model.config.frontend, ds.frontend.to_dict())
    cfg = meta.get('train_config', {})
    fe = model.config.frontend
    if cfg.get('features'):
        features = cfg['features']
    elif fe.get('kind') == 'acoustic_image':
        features = ['srp', 'das'] + (['mvdr'] if fe.get('mvdr') else [])
    else:
        features = ['logmel'] + (['ild'] if fe.get('use_ild') else []) + (['gcc'] if fe.get('use_gccphat') else [])
    plan = plan_channels(ds.frontend.to_dict(), ds.feature_groups, features, cfg.get('mics'))
    if len(plan.dataset_channels) != model.config.in_channels:
        raise ConfigError(f'checkpoint reads {model.config.in_channels} channels, the dataset provides '
                          f'{len(plan.dataset_channels)} for its feature selection')

    def predict(rows: Sequence[int]) -> List[dict]:
        return predict_rows(model, ds, rows, plan.dataset_channels, score_threshold, device=device)
    return predict


def _conditions(ds: DistillDataset, rows: Sequence[int]) -> List[dict]:
    out = []
    for r in rows:
        c = dict(ds.conditions(int(r)))
        out.append({k: c[k] for k in CONDITION_KEYS if k in c})
    return out


def truth_frames(ds: DistillDataset, rows: Sequence[int]) -> List[dict]:
    """The simulator truth of ``rows`` as :func:`~mmdistill_training.metrics.evaluate_truth` takes
    it (an empty frame where a row has none)."""
    out = []
    for r in rows:
        g = ds.ground_truth(int(r))
        out.append({'boxes': np.zeros((0, 4))} if g is None else
                   {k: g[k] for k in ('boxes', 'audible', 'visible', 'distance') if k in g})
    return out


def evaluate_predictions(ds: DistillDataset, rows: Sequence[int], predictions: List[dict],
                         curves: bool = False, min_label_score: Optional[float] = None,
                         label_support: Sequence[str] = ()) -> dict:
    """Metrics of ``predictions`` (one per row) against the pseudo-labels scored at least
    ``min_label_score`` (default: the training default) and supported by ``label_support``, and, under the evaluation rule, ground
    truth (``ground_truth``, ``ground_truth_all_visible``, ``ground_truth_shuffled``), by
    condition."""
    size = tuple(ds.index['image_size'])
    conds = _conditions(ds, rows)
    keys = [k for k in CONDITION_KEYS if any(k in c for c in conds)]
    out: Dict[str, dict] = {'num_frames': len(rows)}
    pl = reference_frames(ds, rows, 'fused',
                          DEFAULTS['min_label_score'] if min_label_score is None else min_label_score, label_support)
    res = evaluate_by_condition(predictions, pl, conds, size, keys=keys)
    if curves:
        res['all']['curves'] = evaluate_detections(predictions, pl, size, per_class=False,
                                                   return_curves=True)['curves']
    out['pseudo_labels'] = res
    if ds.has_ground_truth:
        out.update(evaluate_truth(predictions, truth_frames(ds, rows), size, conditions=conds, keys=keys,
                                  drives=[ds.drive_name(int(r)) for r in rows], curves=curves))
    return out


def headline(result: dict, reference: str) -> dict:
    """AP50, mAP_avg, CDx, CDy over all frames for one reference (NaN-safe floats)."""
    if reference not in result:
        return {k: float('nan') for k in ('AP50', 'mAP_avg', 'CDx', 'CDy')}
    a = result[reference]['all']
    return {k: float(a[k]) for k in ('AP50', 'mAP_avg', 'CDx', 'CDy')}


def evaluate_checkpoint(checkpoint: Path, dataset: Path, split: str = 'test', score_threshold: float = 0.05,
                        curves: bool = True) -> dict:
    from mmdistill_student.checkpoint import load_checkpoint
    ds = DistillDataset(dataset)
    model, meta = load_checkpoint(checkpoint)
    rows = ds.split_indices(split)
    if len(rows) == 0:
        raise ConfigError(f'dataset {dataset} has no {split!r} frames')
    preds = student_predictor(model, meta, ds, score_threshold)(rows)
    # the pseudo-labels the student was trained against (checkpoints before min_label_score: all)
    tc = meta.get('train_config', {})
    res = evaluate_predictions(ds, rows, preds, curves=curves, min_label_score=tc.get('min_label_score', 0.0),
                               label_support=tc.get('label_support', ()))
    # how many boxes the runtime would publish (its own threshold, not the AP cut), beside the truth
    thr = float(model.config.score_threshold)
    res['operating_threshold'] = thr
    res['boxes_per_frame'] = float(np.mean([np.sum(np.asarray(p['scores']) >= thr) for p in preds]))
    if 'ground_truth' in res:
        res['gt_boxes_per_frame'] = res['ground_truth']['all']['num_gt'] / len(rows)
    res.update({'checkpoint': str(checkpoint), 'dataset': str(dataset), 'split': split,
                'model': meta.get('train_config', {}).get('name'),
                'dataset_hash': ds.content_hash, 'checkpoint_dataset_hash': meta.get('dataset', {}).get('content_hash')})
    res['_predictions'] = preds
    res['_rows'] = rows
    return res


# ------------------------------------------------------------------------ report

def _fmt(v) -> str:
    return '–' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.3f}' if abs(v) < 10 else f'{v:.1f}'


def write_report(result: dict, ds: DistillDataset, out_dir: Path, title: str = 'Student evaluation',
                 n_examples: int = 4) -> Path:
    """Markdown report with the condition tables, PR curves, CD histograms and example frames."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f'# {title}', '', f'{result["num_frames"]} frames of split `{result.get("split", "?")}`. Ground truth '
             f'(headline) = vehicles seen by a camera (visible fraction ≥ {MIN_VISIBLE_FRACTION:g}), at least '
             f'{MIN_GT_HEIGHT_PX:g} px tall, audible by the simulator\'s flag; "all visible" drops the audible '
             'condition; other vehicles are ignore regions (README, "The evaluation rule"). Truth fields known: '
             f'{", ".join(result.get("truth_fields", [])) or "none"}.', '']
    if 'ground_truth_shuffled' in result:
        lines += [f'**Prior check:** AP@0.5 {_fmt(result["ground_truth"]["all"]["AP50"])} against the real ground '
                  f'truth, {_fmt(result["ground_truth_shuffled"]["all"]["AP50"])} against time-shuffled ground truth '
                  '(other frames\' truth; a small drop means the model learned the scene, not the sound).', '']
    titles = {'ground_truth': 'ground truth (headline)', 'ground_truth_all_visible': 'ground truth, all visible',
              'pseudo_labels': 'pseudo-labels'}
    for ref in ('ground_truth', 'ground_truth_all_visible', 'pseudo_labels'):
        if ref not in result:
            continue
        r = result[ref]
        lines += [f'## Against {titles[ref]}', '',
                  '| subset | frames / GT | AP@0.5 | AP@0.75 | mAP@Avg | COCO AP | CDx % | CDy % |',
                  '|---|---|---|---|---|---|---|---|']
        rowsets = [('all', r['all'])] + [(f'{k} = {v}', m) for k, vals in r['by_condition'].items()
                                         for v, m in vals.items()] + \
            [(f'distance {b}', m) for b, m in r.get('by_distance', {}).items()]
        for name, m in rowsets:
            lines.append(f'| {name} | {m["num_frames"]} / {m["num_gt"]} | {_fmt(m["AP50"])} | {_fmt(m["AP75"])} | '
                         f'{_fmt(m["mAP_avg"])} | {_fmt(m["coco_AP"])} | {_fmt(m["CDx"])} | {_fmt(m["CDy"])} |')
        lines.append('')
    # PR curves
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for ref in ('ground_truth', 'pseudo_labels'):
        c = result.get(ref, {}).get('all', {}).get('curves')
        if c:
            for iou, style in (('0.50', '-'), ('0.75', '--')):
                ax.plot(c[iou]['recall'], c[iou]['precision'], style, label=f'{ref} IoU {iou}')
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / 'pr_curves.png', dpi=90)
    plt.close(fig)
    lines += ['![PR curves](pr_curves.png)', '']
    preds, rows = result.get('_predictions'), result.get('_rows')
    if preds is not None:
        _cd_histogram(ds, rows, preds, out_dir / 'cd_hist.png')
        lines += ['![centre distance histograms](cd_hist.png)', '']
        names = _examples(ds, rows, preds, out_dir, n_examples)
        lines += ['## Example frames', '',
                  'Top: log-mel of microphone 0 (1 s). Bottom: image plane with student boxes (red), '
                  'fused pseudo-labels (cyan) and ground truth (white, dashed).', '']
        lines += [f'![{n}]({n})' for n in names] + ['']
    path = out_dir / 'report.md'
    path.write_text('\n'.join(lines))
    clean = {k: v for k, v in result.items() if not k.startswith('_')}
    (out_dir / 'metrics.json').write_text(json.dumps(clean, indent=1, default=float))
    return path


def _cd_histogram(ds, rows, preds, path: Path) -> None:
    import matplotlib.pyplot as plt
    from .metrics import match_frame
    from mmdistill_common.boxes import xyxy_to_cxcywh
    w, h = ds.index['image_size']
    dx, dy = [], []
    for r, p in zip(rows, preds):
        g = reference_frame(truth_frames(ds, [r])[0])['boxes'] if ds.has_ground_truth else \
            np.asarray(ds.labels(int(r))[0], np.float64).reshape(-1, 4)
        pb = np.asarray(p['boxes'], np.float64).reshape(-1, 4)
        m = match_frame(pb, np.asarray(p['scores']), g, 0.5)
        ok = m >= 0
        if ok.any():
            d = xyxy_to_cxcywh(pb[ok]) - xyxy_to_cxcywh(g[m[ok]])
            dx += list(d[:, 0] / w * 100)
            dy += list(d[:, 1] / h * 100)
    fig, ax = plt.subplots(1, 2, figsize=(7, 2.8))
    ax[0].hist(dx, bins=30)
    ax[0].set_xlabel('centre x error, % of width')
    ax[1].hist(dy, bins=30)
    ax[1].set_xlabel('centre y error, % of height')
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _examples(ds, rows, preds, out_dir: Path, n: int) -> List[str]:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from mmdistill_student.acoustic_image import heatmap
    w, h = ds.index['image_size']
    rows = np.asarray(rows)
    # frames with the most pseudo-label boxes first, spread over the split
    picks = np.linspace(0, len(rows) - 1, min(n * 4, len(rows))).astype(int)
    picks = sorted(picks, key=lambda i: -len(ds.labels(int(rows[i]))[0]))[:n]
    names = []
    for k, i in enumerate(sorted(picks)):
        r = int(rows[i])
        fig, ax = plt.subplots(2, 1, figsize=(6, 4.2), gridspec_kw={'height_ratios': [1, 1.2]})
        if ds.frontend.kind == 'acoustic_image':
            # the acoustic image over the camera's columns (time running down), above the image plane
            ax[0].imshow(heatmap(ds.features([r])[0], ds.frontend.n_bands), aspect='auto', extent=(0, w, 1, 0))
            ax[0].set_title(f'{ds.drive_name(r)}, row {r}: acoustic image (SRP-PHAT, time down)', fontsize=8)
        else:
            ax[0].imshow(ds.features([r], channels=[0])[0, 0], origin='lower', aspect='auto', cmap='magma')
            ax[0].set_title(f'{ds.drive_name(r)}, dataset row {r}', fontsize=8)
        ax[0].axis('off')
        ax[1].set_xlim(0, w)
        ax[1].set_ylim(h, 0)
        ax[1].set_facecolor('0.15')
        ax[1].set_aspect('equal')
        gt = ds.ground_truth(r) if ds.has_ground_truth else None
        for b in (gt['boxes'] if gt is not None else []):
            ax[1].add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec='white', ls='--'))
        for b in ds.labels(r)[0]:
            ax[1].add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec='cyan'))
        p = preds[i]
        for b, s in zip(p['boxes'], p['scores']):
            if s >= 0.3:
                ax[1].add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, ec='red', lw=1.5))
        ax[1].set_xticks([])
        ax[1].set_yticks([])
        fig.tight_layout()
        name = f'example_{k}.png'
        fig.savefig(out_dir / name, dpi=80)
        plt.close(fig)
        names.append(name)
    return names
