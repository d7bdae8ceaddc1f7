"""``runs/demo/report.md`` and ``runs/demo/summary.json``: every number the demo produced, read
back from the stage outputs (each computed by the one evaluation rule of
:func:`mmdistill_training.metrics.evaluate_truth`; nothing is recomputed here).

``summary.json`` has a stable schema (:data:`SUMMARY_SCHEMA_VERSION`, documented in the README,
"summary.json"): scripts and CI read it instead of parsing the report. A figure whose producer
did not run (or does not exist yet) is ``null``; NaN is written as ``null``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, List, Optional

from .ablate import row_dir

__all__ = ['write_demo_report', 'write_demo_summary', 'build_summary', 'check_summary', 'SUMMARY_SCHEMA_VERSION',
           'SUMMARY_KEYS', 'student_summary', 'teacher_summary', 'STAGES']


def _f(v, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '–'
    return f'{v:.1f}' if pct else f'{v:.3f}'


def _json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_json(log: Path) -> Optional[dict]:
    """The JSON object a command printed last (``mmdistill label`` prints its statistics)."""
    try:
        text = log.read_text()
    except OSError:
        return None
    start = text.rfind('\n{')
    try:
        return json.loads(text[start + 1:] if start >= 0 else text)
    except ValueError:
        return None


def _label_stats(logs: Path) -> Dict[str, dict]:
    """Labelled drive -> the statistics ``mmdistill label`` printed (one bag, or ``{'bags': [...]}``)."""
    out: Dict[str, dict] = {}
    for log in sorted(logs.glob('label-*.log')):
        obj = _last_json(log) or {}
        for s in obj.get('bags', [obj]):
            if s.get('out_bag'):
                out[Path(s['out_bag']).name] = s
    return out


def _section(md: str, title_regex: str) -> List[str]:
    """Lines of the first Markdown section whose heading matches (without the heading)."""
    lines = md.splitlines()
    out, on = [], False
    for ln in lines:
        if ln.startswith('#'):
            if on:
                break
            on = re.search(title_regex, ln, re.I) is not None
            continue
        if on:
            out.append(ln)
    return out


STAGES = ('simulate', 'teachers', 'label', 'dataset', 'student', 'runtime')


def _stage_times(stages) -> List[float]:
    t = [stages.elapsed(n) for n in STAGES]
    return [x for x in t if not math.isnan(x)]


def write_demo_report(out: Path, plan, quick: bool, drives: List[str], split: Dict[str, List[str]],
                      test_drive: str, stages, total_s: float) -> Path:
    L: List[str] = ['# mmdistill demo report', '']
    L += [f'Simulated drives: {len(drives)} ({len(plan.scenarios)} scenarios × {plan.drives_per_scenario}, '
          f'{plan.duration_s:g} s each){" — quick variant" if quick else ""}. '
          f'The stages took {sum(_stage_times(stages)) / 60:.1f} min in all (this invocation '
          f'{total_s / 60:.1f} min; a stage finished by an earlier invocation is reused and counted with '
          f'its original time). Reproduce with `make demo` (or `mmdistill demo'
          f'{" --quick" if quick else ""}`).', '']
    L += ['Split by drive (never by frame): ' + '; '.join(f'{k}: {", ".join(v)}' for k, v in split.items()), '']

    # headline ---------------------------------------------------------------------------
    abl = _json(out / 'ablation' / 'results.json')
    rows = {r['name']: r for r in (abl or {}).get('rows', [])}
    L += ['## Headline: audio-only detection on the held-out test drives', '']
    if abl:
        L += [f'{abl["frames"]} test frames. Against the simulator ground truth (GT: vehicles seen by a camera, '
              '≥ 8 px tall and audible; the evaluation rule of the README), against the GT of other frames '
              '(shuffled: the prior check) and against the fused teacher pseudo-labels (PL), the paper\'s protocol. '
              'AP@0.5 and mAP@Avg (IoU 0.50:0.05:0.90), CDx/CDy = centre distance of matched boxes in % of image '
              'width/height.', '']
        L += (out / 'ablation' / 'table.md').read_text().splitlines() + ['']
        ours, classical = rows.get('ours'), rows.get('classical-srp')
        if ours and classical:
            a, b = ours['ground_truth']['AP50'], classical['ground_truth']['AP50']
            verdict = 'beats' if a > b else 'does NOT beat'
            L += [f'**The student {verdict} the classical SRP-PHAT baseline** against ground truth '
                  f'(AP@0.5 {_f(a)} vs {_f(b)}).', '']
            conds = ours.get('by_condition_gt', {})
            if conds:
                L += ['AP@0.5 against ground truth by condition (ours / classical):', '',
                      '| condition | value | ours | classical |', '|---|---|---|---|']
                for k, vals in conds.items():
                    for v, ap in vals.items():
                        cb = classical.get('by_condition_gt', {}).get(k, {}).get(v)
                        L.append(f'| {k} | {v} | {_f(ap)} | {_f(cb)} |')
                L.append('')
    else:
        L += ['(not run)', '']
    evm = _json(out / 'evaluation' / 'metrics.json')
    if evm and 'ground_truth_shuffled' in evm:
        L += [f'**Prior check:** the student scores AP@0.5 {_f(evm["ground_truth"]["all"]["AP50"])} against the '
              f'ground truth and {_f(evm["ground_truth_shuffled"]["all"]["AP50"])} against time-shuffled ground truth '
              '(the truth of other frames). A small drop means it learned where cars usually are, not what it hears.',
              '']
    mb = _get(evm, 'ground_truth', 'mota_bound')
    if mb and mb.get('MOTA_bound') is not None:
        L += [f'**What tracking can reach from these detections** (`mota_bound`): publishing, in every test frame, '
              f'the detections scored at least {_f(mb.get("threshold"))}, with never a wrong identity, gives MOTA '
              f'{_f(mb["MOTA_bound"])} (recall {_f(mb.get("recall"))}, precision {_f(mb.get("precision"))}); no '
              'single threshold gives more, so a tracker gains on it only by filling missed frames or dropping '
              'false boxes.', '']
    ev = out / 'evaluation' / 'report.md'
    if ev.exists():
        L += ['Full evaluation of the student (every condition, PR curves, centre-distance histograms, '
              f'example frames): [evaluation/report.md](evaluation/report.md).', '',
              '![PR curves](evaluation/pr_curves.png)', '']
        ex = sorted((out / 'evaluation').glob('example_*.png'))[:2]
        L += [f'![{p.stem}](evaluation/{p.name})' for p in ex] + ['']

    # runtime ----------------------------------------------------------------------------
    L += ['## Runtime graph on a held-out drive', '']
    rep = _json(out / 'runtime' / 'replay.json')
    if rep:
        L += [f'`student_node` → `tracking_node` (Kalman tracker) on real DDS, fed by a replay of test drive '
              f'`{test_drive}` at {plan.replay_rate:g}× real time with `/clock`.', '']
        L += ['| reference | scored frames | AP@0.5 | mAP@Avg | CDx % | CDy % | MOTA | IDF1 | ID switches | '
              'fragmentations | FP | FN |', '|---|---|---|---|---|---|---|---|---|---|---|---|']
        for ref, block in rep.get('references', {}).items():
            d, t = block.get('detection', {}), block.get('tracking', {})
            L.append(f'| {ref.replace("_", " ")} | {block.get("coverage", {}).get("scored_frames", "–")} | '
                     f'{_f(d.get("AP50"))} | {_f(d.get("mAP_avg"))} | {_f(d.get("CDx"), 1)} | {_f(d.get("CDy"), 1)} | '
                     f'{_f(t.get("MOTA"))} | {_f(t.get("IDF1"))} | {t.get("ID_switches", "–")} | '
                     f'{t.get("fragmentations", "–")} | {t.get("FP", "–")} | {t.get("FN", "–")} |')
        L += ['', f'{rep.get("detections", 0)} detection messages and {rep.get("track_frames", 0)} track messages '
              'received; tracking is scored against the simulator\'s vehicle ids.', '']
        bound = _get(rep, 'references', 'ground_truth', 'mota_bound', 'MOTA_bound')
        if bound is not None:
            L += [f'What the detections allow (`mota_bound`): publishing, in every frame, the detections above '
                  f'one score threshold with never a wrong identity gives at most MOTA {_f(bound)} on this drive '
                  f'(its detections are those above the operating threshold).', '']
    else:
        L += ['(not run)', '']

    # teachers ---------------------------------------------------------------------------
    L += ['## Teachers and pseudo-labels', '']
    trep = out / 'teachers' / 'report.md'
    if trep.exists():
        md = trep.read_text()
        how = next((ln for ln in md.splitlines()[1:] if ln.strip()), '')
        L += [f'{how} ([teachers/report.md](teachers/report.md)).', '']
        cal = (_json(out / 'teachers' / 'fusion.json') or {}).get('calibration', {})
        if cal.get('min_label_score') is not None:
            sup = cal.get('label_support') or []
            L += [f'Student targets: fused labels scored ≥ {cal["min_label_score"]:g}'
                  + (f', supported by the {" and ".join(sup)} teacher' if sup else '')
                  + ' (chosen together by the labels\' F1 against the headline truth of the val drives; '
                  'a label on a silent or hidden vehicle counts as wrong).', '']
        body = [ln for ln in md.splitlines() if ln.startswith('|')]
        L += body[:60] + ['']
    else:
        L += ['(not run)', '']
    tev = _json(out / 'teachers' / 'evaluation.json')
    if tev:
        L += [f'Scored like the student, on its test drives ({tev["frames"]} frames, `mmdistill teachers evaluate`, '
              '[teachers/evaluation/report.md](teachers/evaluation/report.md)): AP@0.5 against the headline '
              'ground truth, all visible vehicles, time-shuffled ground truth (prior check) and where each '
              'sensor works.', '',
              '| method | headline GT | all visible | shuffled GT | where its sensor works |', '|---|---|---|---|---|']
        for name, r in tev['methods'].items():
            sw = ((r.get('sensor_working') or {}).get('ground_truth') or {}).get('all', {}).get('AP50')
            L.append(f'| {name} | {_f(r["ground_truth"]["all"]["AP50"])} | '
                     f'{_f(r["ground_truth_all_visible"]["all"]["AP50"])} | '
                     f'{_f(r["ground_truth_shuffled"]["all"]["AP50"])} | {_f(sw) if name != "fused" else ""} |')
        L.append('')
    ok = _label_stats(out / 'logs')
    if ok:
        frames = sum(s['frames'] for s in ok.values())
        boxes = sum(s['boxes'] for s in ok.values())
        fps = [s['frames_per_s'] for s in ok.values() if s.get('frames_per_s')]
        L += [f'Labelling: {frames} camera frames labelled (every {plan.label_frame_stride}th), {boxes} fused boxes, '
              f'{sum(s["frames_with_boxes"] for s in ok.values())} frames with at least one box; '
              f'{min(fps):.1f}–{max(fps):.1f} frames/s per worker.', '']
    idx = _json(out / 'dataset' / 'index.json')
    if idx:
        mixed = [d for d in idx.get('drives', []) if d.get('mixed_with')]
        mix = (f'; {sum(d["count"] for d in mixed)} of them from {len(mixed)} mixed training drives '
               f'(`--mix {idx.get("mix")}`)' if mixed else '')
        L += [f'Dataset: {idx["n_frames"]} windows ({idx["window_mode"]}, features '
              f'{", ".join(idx.get("features", []))}{mix}), skipped {json.dumps(idx.get("skipped", {}))}.', '']

    # simulation -------------------------------------------------------------------------
    L += ['## Simulation', '', 'Contact sheets (three modalities with ground-truth boxes, 8-channel spectrogram):', '']
    L += [f'![{s}](previews/{s}.png)' for s in plan.scenarios] + ['']

    # timings and commands ----------------------------------------------------------------
    L += ['## Stages, times and the commands that reproduce them', '',
          '| stage | wall time (s) |', '|---|---|']
    for name in ('simulate', 'teachers', 'label', 'dataset', 'student', 'runtime'):
        L.append(f'| {name} | {_f(stages.elapsed(name), pct=True)} |')
    L += ['', 'Commands (paths relative to this folder):', '', '```']
    for name, cmds in stages.commands.items():
        L += [f'# {name}'] + cmds[:3] + ([f'# ... ({len(cmds) - 3} more of the same form)'] if len(cmds) > 3 else [])
    L += ['```', '']
    path = out / 'report.md'
    path.write_text('\n'.join(L) + '\n')
    return path


# ------------------------------------------------------------------------------------- summary.json
#: Version of the ``summary.json`` schema: bumped when a key changes meaning or disappears (new keys
#: may be added without a bump).
SUMMARY_SCHEMA_VERSION = 1
#: The keys (dotted = nested) every summary.json holds, with a number, a string or null (README,
#: "summary.json"); ``by_condition`` / ``by_distance`` are objects.
SUMMARY_KEYS = (
    'schema_version', 'quick', 'test_drives', 'teachers_dir',
    *[f'teachers.{m}.{k}' for m in ('rgb', 'depth', 'thermal')
      for k in ('gt_ap50', 'gt_ap50_sensor_working', 'gt_ap50_all_visible', 'gt_ap50_shuffled', 'by_condition',
                'by_distance')],
    'teachers.fused.gt_ap50', 'teachers.fused.gt_ap50_worst_condition', 'teachers.fused.worst_condition',
    'teachers.fused.by_condition', 'teachers.fused.by_distance',
    'student.checkpoint', 'student.gt_ap50', 'student.gt_map_avg', 'student.gt_ap50_all_visible',
    'student.gt_ap50_shuffled', 'student.pl_ap50', 'student.pl_map_avg', 'student.boxes_per_frame',
    'student.gt_boxes_per_frame', 'student.frame_mota_bound', 'student.upper_bound_gt_ap50',
    'student.by_condition', 'student.by_distance',
    'baselines.classical.gt_ap50', 'baselines.scene_prior.gt_ap50',
    'runtime.gt_ap50', 'runtime.gt_ap50_shuffled', 'runtime.mota', 'runtime.idf1',
    *[f'stage_seconds.{s}' for s in STAGES],
)


def check_summary(summary: dict) -> None:
    """Raise ``ValueError`` unless ``summary`` follows the schema: every :data:`SUMMARY_KEYS` present,
    every AP (keys with ``ap50`` / ``map_``, and the breakdowns) null or in [0, 1]."""
    if summary.get('schema_version') != SUMMARY_SCHEMA_VERSION:
        raise ValueError(f'schema_version {summary.get("schema_version")!r}, expected {SUMMARY_SCHEMA_VERSION}')
    for key in SUMMARY_KEYS:
        d = summary
        for k in key.split('.'):
            if not isinstance(d, dict) or k not in d:
                raise ValueError(f'summary lacks {key}')
            d = d[k]

    def aps(d: dict, path: str):
        for k, v in d.items():
            p = f'{path}.{k}' if path else k
            if isinstance(v, dict):
                if k in ('by_condition', 'by_distance'):
                    for kk, vv in v.items():
                        for leaf in (vv.values() if isinstance(vv, dict) else [vv]):
                            yield f'{p}.{kk}', leaf
                else:
                    yield from aps(v, p)
            elif 'ap50' in k or 'map_' in k:
                yield p, v
    for path, v in aps(summary, ''):
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0):
            raise ValueError(f'{path} = {v!r} is not an AP in [0, 1] or null')


def _num(v) -> Optional[float]:
    """A JSON number or null (NaN, inf and missing -> null)."""
    if v is None or isinstance(v, bool):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _get(d: Optional[dict], *path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _breakdown(result: Optional[dict]) -> dict:
    """``by_condition: {key: {value: AP50}}`` and ``by_distance: {bucket: AP50}`` of a headline block."""
    g = _get(result, 'ground_truth') or {}
    return {'by_condition': {k: {v: _num(m.get('AP50')) for v, m in vals.items()}
                             for k, vals in (g.get('by_condition') or {}).items()},
            'by_distance': {b: _num(m.get('AP50')) for b, m in (g.get('by_distance') or {}).items()}}


def teacher_summary(evaluation: Optional[dict], name: str) -> dict:
    """Summary block of one method of ``mmdistill teachers evaluate``'s JSON (``rgb``, ..., ``fused``)."""
    r = _get(evaluation, 'methods', name)
    out = {'gt_ap50': _num(_get(r, 'ground_truth', 'all', 'AP50')),
           'gt_ap50_all_visible': _num(_get(r, 'ground_truth_all_visible', 'all', 'AP50')),
           'gt_ap50_shuffled': _num(_get(r, 'ground_truth_shuffled', 'all', 'AP50'))}
    if name == 'fused':
        out['gt_ap50_worst_condition'] = _num(_get(r, 'worst_condition', 'AP50'))
        out['worst_condition'] = _get(r, 'worst_condition', 'condition')
    else:
        out['gt_ap50_sensor_working'] = _num(_get(r, 'sensor_working', 'ground_truth', 'all', 'AP50'))
        out['sensor_working'] = _get(r, 'sensor_working', 'rule')
    out.update(_breakdown(r))
    return out


def student_summary(evaluation: Optional[dict], checkpoint: Optional[str]) -> dict:
    """Summary block of the student from ``mmdistill evaluate``'s JSON."""
    e = evaluation
    out = {'checkpoint': checkpoint,
           'gt_ap50': _num(_get(e, 'ground_truth', 'all', 'AP50')),
           'gt_map_avg': _num(_get(e, 'ground_truth', 'all', 'mAP_avg')),
           'gt_ap50_all_visible': _num(_get(e, 'ground_truth_all_visible', 'all', 'AP50')),
           'gt_ap50_shuffled': _num(_get(e, 'ground_truth_shuffled', 'all', 'AP50')),
           'pl_ap50': _num(_get(e, 'pseudo_labels', 'all', 'AP50')),
           'pl_map_avg': _num(_get(e, 'pseudo_labels', 'all', 'mAP_avg')),
           'boxes_per_frame': _num(_get(e, 'boxes_per_frame')),
           'gt_boxes_per_frame': _num(_get(e, 'gt_boxes_per_frame')),
           'frame_mota_bound': _num(_get(e, 'ground_truth', 'mota_bound', 'MOTA_bound')),
           'upper_bound_gt_ap50': None}
    out.update(_breakdown(e))
    return out


def _baseline(row: Optional[dict]) -> dict:
    return {'gt_ap50': _num(_get(row, 'ground_truth', 'AP50')),
            'gt_ap50_shuffled': _num(_get(row, 'ground_truth_shuffled', 'AP50')),
            'pl_ap50': _num(_get(row, 'pseudo_labels', 'AP50'))}


def build_summary(out: Path, quick: bool, split: Dict[str, List[str]], test_drive: str,
                  stage_seconds: Dict[str, Optional[float]]) -> dict:
    """The summary dict (schema in the README) from the stage outputs under ``out``."""
    out = Path(out)
    tev = _json(out / 'teachers' / 'evaluation.json')
    ev = _json(out / 'evaluation' / 'metrics.json')
    rows = {r['name']: r for r in (_json(out / 'ablation' / 'results.json') or {}).get('rows', [])}
    rep = _json(out / 'runtime' / 'replay.json')
    gt_rt = _get(rep, 'references', 'ground_truth')
    return {
        'schema_version': SUMMARY_SCHEMA_VERSION,
        'quick': bool(quick),
        'test_drives': list(split.get('test', [])),
        'frames': {'student': _get(ev, 'num_frames'), 'teachers': _get(tev, 'frames')},
        'teachers_dir': str(out / 'teachers'),
        'teachers': {**{m: teacher_summary(tev, m) for m in ('rgb', 'depth', 'thermal')},
                     'fused': teacher_summary(tev, 'fused')},
        'student': {**student_summary(ev, str(row_dir(out / 'ablation', 'ours')) if ev else None),
                    'upper_bound_gt_ap50': _num(_get(rows.get('upper-bound'), 'ground_truth', 'AP50'))},
        'baselines': {'classical': _baseline(rows.get('classical-srp')),
                      'scene_prior': _baseline(rows.get('scene-prior'))},
        'runtime': {'drive': test_drive if rep else None,
                    'gt_ap50': _num(_get(gt_rt, 'detection', 'AP50')),
                    'gt_ap50_shuffled': _num(_get(rep, 'references', 'ground_truth_shuffled', 'detection', 'AP50')),
                    'mota': _num(_get(gt_rt, 'tracking', 'MOTA')),
                    'idf1': _num(_get(gt_rt, 'tracking', 'IDF1'))},
        'stage_seconds': {k: _num(v) for k, v in stage_seconds.items()},
    }


def write_demo_summary(out: Path, quick: bool, split: Dict[str, List[str]], test_drive: str, stages) -> Path:
    """Write ``out/summary.json`` (strict JSON, written atomically)."""
    out = Path(out)
    summary = build_summary(out, quick, split, test_drive, {n: stages.elapsed(n) for n in STAGES})
    path = out / 'summary.json'
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(summary, indent=1, allow_nan=False) + '\n')
    tmp.replace(path)
    return path
