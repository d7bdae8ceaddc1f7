"""``runs/demo/report.md``: every number the demo produced, read back from the stage outputs."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ['write_demo_report']


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


def _stage_times(stages) -> List[float]:
    t = [stages.elapsed(n) for n in ('simulate', 'teachers', 'label', 'dataset', 'student', 'runtime')]
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
        L += [f'{abl["frames"]} test frames. Against the simulator ground truth (GT) and the fused teacher '
              'pseudo-labels (PL), the paper\'s protocol. AP@0.5 and mAP@Avg (IoU 0.50:0.05:0.90), CDx/CDy = '
              'centre distance of matched boxes in % of image width/height.', '']
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
    else:
        L += ['(not run)', '']

    # teachers ---------------------------------------------------------------------------
    L += ['## Teachers and pseudo-labels', '']
    trep = out / 'teachers' / 'report.md'
    if trep.exists():
        md = trep.read_text()
        L += [f'Trained on the train drives\' simulator ground truth, evaluated on the held-out drives '
              f'([teachers/report.md](teachers/report.md)).', '']
        body = [ln for ln in md.splitlines() if ln.startswith('|')]
        L += body[:60] + ['']
    else:
        L += ['(not run)', '']
    label_stats = {d: _last_json(out / 'logs' / f'label-{d}.log') for d in drives}
    ok = {d: s for d, s in label_stats.items() if s}
    if ok:
        frames = sum(s['frames'] for s in ok.values())
        boxes = sum(s['boxes'] for s in ok.values())
        fps = [s['frames_per_s'] for s in ok.values() if s.get('frames_per_s')]
        L += [f'Labelling: {frames} camera frames labelled (every {plan.label_frame_stride}th), {boxes} fused boxes, '
              f'{sum(s["frames_with_boxes"] for s in ok.values())} frames with at least one box; '
              f'{min(fps):.1f}–{max(fps):.1f} frames/s per worker.', '']
    idx = _json(out / 'dataset' / 'index.json')
    if idx:
        L += [f'Dataset: {idx["n_frames"]} windows ({idx["window_mode"]}, features '
              f'{", ".join(idx.get("features", []))}), skipped {json.dumps(idx.get("skipped", {}))}.', '']

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
