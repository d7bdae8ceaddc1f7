"""The end-to-end demo pipeline on the built-in simulator (``mmdistill demo``).

Stages, each a command a user can run by hand (the report lists them):

1. simulate drives (``mmdistill sim``): every demo scenario several times with different seeds,
   so that the dataset split by drive has train, val and test drives of every scenario;
2. train the RGB, depth and thermal teachers on the train drives' simulator ground truth
   (``mmdistill teachers train``), evaluated on the held-out drives (fused vs single teacher),
   and scored with the student's evaluation rule on the student's test drives
   (``mmdistill teachers evaluate``);
3. label every drive with the fused teachers (``mmdistill label``);
4. build the dataset (``mmdistill dataset build``);
5. counting pretext, then distillation (``mmdistill train``), the classical and the scene-prior
   baselines, all evaluated on the test drives (``mmdistill ablate --only classical-srp
   scene-prior ours``);
6. run the runtime graph (student_node -> tracking_node) on a held-out drive replayed from its
   bag, scored with detection and MOT metrics (``mmdistill replay-eval``);
7. ``report.md`` with every table and plot, and ``summary.json`` with the headline figures in a
   stable schema (:data:`mmdistill_training.demo_report.SUMMARY_SCHEMA_VERSION`).

Independent jobs (simulation, labelling) run in two worker processes; each stage's output is
kept, so a rerun without ``--force`` continues after the last finished stage.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from mmdistill_common.errors import MmdistillError

from .ablate import row_dir

__all__ = ['DemoPlan', 'PLANS', 'run_demo']


@dataclass(frozen=True)
class DemoPlan:
    scenarios: Tuple[str, ...]
    drives_per_scenario: int
    duration_s: float
    teacher_epochs: int
    teacher_frame_stride: int
    teacher_max_steps: int
    label_frame_stride: int
    dataset_frame_stride: int
    pretext_epochs: int
    student_epochs: int
    replay_scenario: str
    replay_rate: float
    workers: int = 2
    frame_rate: Optional[float] = None     # camera frame rate override (Hz); None = the scenarios'
    teacher_jobs: int = 1                  # teachers trained side by side (one thread each)
    teacher_val_stride: Optional[int] = None   # frame stride on the val drives (None = teacher_frame_stride)
    teacher_eval_stride: int = 1           # frame stride of `teachers evaluate` on the test drives
    min_label_score: Optional[float] = None    # fused labels the student learns (None = calibrated in fusion.json)
    label_support: Optional[Tuple[str, ...]] = None   # teachers such a label needs (None = calibrated)
    teacher_init: Optional[str] = None     # `teachers train --init` ('pretrained': the shipped weights)
    teacher_lr: Optional[float] = None     # `teachers train --lr` (None = its default)
    dataset_mix: int = 0                   # `dataset build --mix`: mixed copies of every training drive


PLANS: Dict[str, DemoPlan] = {
    # the benchmark world (DESIGN §6): a car in town, day to night, fog and rain, static and driving;
    # 6 drives per scenario give 4 train, 1 val and 1 test drive each (5 drives took 21.3 min of the
    # 25-min budget, and the student is data-limited: half the windows cost its upper bound 0.07 val
    # AP). Cameras at 5 Hz: every frame is labelled, and the student gets one window per frame.
    'full': DemoPlan(scenarios=('town-day-static', 'town-dusk-static', 'town-night-static', 'town-fog-static',
                                'town-day-driving', 'town-dusk-driving', 'town-night-driving', 'town-rain-driving'),
                     drives_per_scenario=6, duration_s=24.0, teacher_epochs=0, teacher_frame_stride=1,
                     teacher_max_steps=200, label_frame_stride=1, dataset_frame_stride=1,
                     # one mixed copy of every train drive (twice the windows, so an epoch takes twice
                     # as long): the pretext's 1 epoch is its 2 before, 10 epochs are 20 of the
                     # recorded drives alone (val GT AP@0.5, seeds 0 / 1: see the README, "Mixed drives")
                     dataset_mix=1, pretext_epochs=1,
                     student_epochs=10, replay_scenario='town-day-driving', replay_rate=2.0, frame_rate=5.0,
                     teacher_jobs=3, teacher_val_stride=4, teacher_eval_stride=2,
                     # the shipped teachers (trained on other drives), adopted untrained (epochs 0:
                     # the fusion and the label rule are calibrated on the val drives); fine-tuning
                     # on the train drives, 300 steps at 5e-4 or 600 at 2e-3, gave the same val AP
                     # (rgb where it works 0.850 / 0.848 against 0.848 untrained) for 95 s
                     teacher_init='pretrained', teacher_lr=5e-4),
    'quick': DemoPlan(scenarios=('day-static', 'night-static', 'occluded-crossing'),
                      drives_per_scenario=3, duration_s=6.0, teacher_epochs=2, teacher_frame_stride=2, teacher_max_steps=30,
                      label_frame_stride=2, dataset_frame_stride=1, pretext_epochs=1, student_epochs=2,
                      replay_scenario='occluded-crossing', replay_rate=4.0, teacher_jobs=3,
                      teacher_init='pretrained', teacher_lr=5e-4, dataset_mix=1),
}

SEED_BASE = 1000


def student_label_rule(plan: DemoPlan, teachers: Path) -> Tuple[Optional[float], Optional[List[str]]]:
    """The fused score a pseudo-label needs to be a student target and the teachers that must
    support it: the plan's, else what ``teachers train`` calibrated on the val drives
    (``fusion.json``), else None (the train config's default)."""
    from mmdistill_teachers.weights import fusion_path
    path = fusion_path(teachers)
    cal = json.loads(path.read_text()).get('calibration', {}) if path.is_file() else {}
    score = plan.min_label_score if plan.min_label_score is not None else cal.get('min_label_score')
    support = plan.label_support if plan.label_support is not None else cal.get('label_support')
    return (None if score is None else float(score)), (None if support is None else list(support))


def _mmdistill(args: Sequence[str], log: Path, threads: int = 1, tee: bool = False) -> None:
    """Run one ``mmdistill`` command in a subprocess, output to ``log`` (and to the terminal
    with ``tee``, progress bars included); one line on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, '-m', 'mmdistill_training.cli', *map(str, args)]
    with open(log, 'wb') as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        while True:
            data = proc.stdout.read1(4096) if hasattr(proc.stdout, 'read1') else proc.stdout.read(4096)
            if not data:
                break
            f.write(data)
            if tee:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
        rc = proc.wait()
    if rc != 0:
        tail = log.read_text(errors='replace').strip().splitlines()[-1:] or ['(no output)']
        raise MmdistillError(f'`mmdistill {" ".join(map(str, args))}` failed ({rc}): {tail[0][-300:]} '
                             f'(log: {log})')


def _simulate_drive(scenario: str, seed: int, duration: float, frame_rate: Optional[float], bag: Path,
                    log: Path) -> None:
    """One drive of the simulate stage, what ``mmdistill sim`` does, its statistics to ``log``."""
    import argparse

    from threadpoolctl import threadpool_limits

    from .commands.sim import load, write_bag
    sc = load(argparse.Namespace(scenario=scenario, seed=seed, duration=duration, frame_rate=frame_rate))
    with threadpool_limits(1):            # one core per worker, as OMP_NUM_THREADS=1 gives a subprocess
        stats = write_bag(sc, bag, progress=False)
    log.write_text(json.dumps(stats, indent=2) + '\n')


def _simulate(drives: List[tuple], workers: int) -> None:
    """Simulate ``(scenario, seed, duration, frame_rate, bag, log)`` drives in ``workers`` forked
    processes (a failed drive: one line naming it and its log)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from tqdm import tqdm
    with ProcessPoolExecutor(workers, mp_context=mp.get_context('fork')) as pool, \
            tqdm(total=len(drives), desc='simulate drives', unit='drive') as bar:
        futures = [(d, pool.submit(_simulate_drive, *d)) for d in drives]
        for d, fut in futures:
            try:
                fut.result()
            except Exception as exc:
                d[5].write_text(f'{type(exc).__name__}: {exc}\n')
                raise MmdistillError(f'simulating {d[4].name} failed: {" ".join(str(exc).split())[:300]} '
                                     f'(log: {d[5]})') from None
            bar.update(1)


def _parallel(jobs: List[Tuple[str, Sequence[str], Path]], workers: int, what: str) -> None:
    from tqdm import tqdm
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(jobs), desc=what, unit='job') as bar:
        futures = [pool.submit(_mmdistill, args, log) for _, args, log in jobs]
        for fut in futures:
            fut.result()
            bar.update(1)


class _Stages:
    """Stage bookkeeping: timings, done markers, commands for the report."""

    def __init__(self, out: Path, n: int):
        self.out, self.n, self.k = out, n, 0
        self.times: Dict[str, float] = {}
        self.commands: Dict[str, List[str]] = {}

    def start(self, name: str) -> bool:
        """True when the stage must run (not finished before)."""
        self.k += 1
        done = (self.out / '.done' / name).exists()
        print(f'[demo] stage {self.k}/{self.n}: {name}' + (' (done before, reused)' if done else ''), flush=True)
        self._t0 = time.perf_counter()
        return not done

    def finish(self, name: str) -> None:
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - self._t0
        (self.out / '.done').mkdir(exist_ok=True)
        (self.out / '.done' / name).write_text(json.dumps({'time_s': self.times[name]}))

    def elapsed(self, name: str) -> float:
        if name in self.times:
            return self.times[name]
        p = self.out / '.done' / name
        return json.loads(p.read_text())['time_s'] if p.exists() else float('nan')


def run_demo(out: Path, plan: DemoPlan, quick: bool) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / 'logs'
    logs.mkdir(exist_ok=True)
    st = _Stages(out, 7)
    t_all = time.perf_counter()
    drives = [f'{s}-{k}' for s in plan.scenarios for k in range(plan.drives_per_scenario)]
    bags = {d: out / 'bags' / d for d in drives}
    labelled = {d: out / 'labelled' / d for d in drives}

    from .dataset_build import split_by_rule
    split = split_by_rule([(d, d.rsplit('-', 1)[0]) for d in drives])
    train_drives = split['train']

    # 1. simulate ------------------------------------------------------------------------
    name = 'simulate'
    rate = ['--frame-rate', plan.frame_rate] if plan.frame_rate else []
    st.commands[name] = [f'mmdistill sim --scenario {d.rsplit("-", 1)[0]} --seed {SEED_BASE + i} '
                         f'--duration {plan.duration_s:g} ' + ' '.join(map(str, rate)) + f' --out bags/{d}'
                         for i, d in enumerate(drives)]
    if st.start(name):
        (out / 'bags').mkdir(exist_ok=True)
        for d in drives:
            if bags[d].exists():
                shutil.rmtree(bags[d])
        # the previews first: they load the simulator and its compiled kernels once in this process,
        # and the forked workers inherit them (a process per drive spent 3.5 s of 25 starting up)
        from mmdistill_sim.preview import contact_sheet
        from mmdistill_sim.scenario import load_scenario
        from mmdistill_sim.simulator import Simulator
        import dataclasses
        (out / 'previews').mkdir(exist_ok=True)
        for s in plan.scenarios:
            sc = dataclasses.replace(load_scenario(s, seed=SEED_BASE), duration_s=plan.duration_s)
            contact_sheet(Simulator(sc), out / 'previews' / f'{s}.png', n=2)
        _simulate([(d.rsplit('-', 1)[0], SEED_BASE + i, plan.duration_s, plan.frame_rate, bags[d],
                    logs / f'sim-{d}.log') for i, d in enumerate(drives)], plan.workers)
        st.finish(name)

    # 2. teachers ------------------------------------------------------------------------
    name = 'teachers'
    teachers = out / 'teachers'
    # fusion thresholds and method calibrated on the val drives only; the test drives are scored by
    # `teachers evaluate` below; three teachers side by side, one thread each
    targs = ['teachers', 'train', '--bags', *[bags[d] for d in train_drives],
             '--val-bags', *[bags[d] for d in split['val']], '--out', teachers,
             '--epochs', plan.teacher_epochs, '--frame-stride', plan.teacher_frame_stride,
             '--max-steps', plan.teacher_max_steps, '--jobs', plan.teacher_jobs, '--force',
             *(['--val-stride', plan.teacher_val_stride] if plan.teacher_val_stride else []),
             *(['--init', plan.teacher_init] if plan.teacher_init else []),
             *(['--lr', plan.teacher_lr] if plan.teacher_lr else [])]
    eargs = ['teachers', 'evaluate', '--teachers', teachers, '--bags', *[bags[d] for d in split['test']],
             '--out', teachers / 'evaluation.json', '--report', teachers / 'evaluation',
             '--frame-stride', plan.teacher_eval_stride, '--precision', 'auto', '--no-progress']
    st.commands[name] = ['mmdistill ' + ' '.join(str(a).replace(str(out) + '/', '') for a in args)
                         for args in (targs, eargs)]
    if st.start(name):
        _mmdistill(targs, logs / 'teachers.log', threads=2, tee=True)
        _mmdistill(eargs, logs / 'teachers-evaluate.log', threads=2, tee=True)
        st.finish(name)

    # 3. label ---------------------------------------------------------------------------
    name = 'label'
    # one process per worker, each labelling its share of the drives (torch and the teachers load once
    # per process: with one process per drive that took 40 % of the stage)
    shares = [drives[k::plan.workers] for k in range(plan.workers)]
    st.commands[name] = [f'mmdistill label --bag ' + ' '.join(f'bags/{d}' for d in share) + ' --teachers teachers '
                         f'--out labelled --frame-stride {plan.label_frame_stride} --precision auto' for share in shares]
    if st.start(name):
        (out / 'labelled').mkdir(exist_ok=True)
        for d in drives:
            if labelled[d].exists():
                shutil.rmtree(labelled[d])
        _parallel([(f'share {k}', ['label', '--bag', *[bags[d] for d in share], '--teachers', teachers,
                                   '--out', out / 'labelled', '--frame-stride', plan.label_frame_stride,
                                   '--precision', 'auto', '--no-progress'], logs / f'label-{k}.log')
                   for k, share in enumerate(shares)], plan.workers, 'label drives')
        st.finish(name)

    # 4. dataset -------------------------------------------------------------------------
    name = 'dataset'
    dataset = out / 'dataset'
    dargs = ['dataset', 'build', '--bags', *[labelled[d] for d in drives], '--out', dataset,
             '--features', 'srp,das,mvdr', '--frame-stride', plan.dataset_frame_stride,
             *(['--mix', plan.dataset_mix] if plan.dataset_mix else [])]
    st.commands[name] = ['mmdistill ' + ' '.join(str(a).replace(str(out) + '/', '') for a in dargs)]
    if st.start(name):
        if dataset.exists():
            shutil.rmtree(dataset)
        _mmdistill(dargs, logs / 'dataset.log', threads=2, tee=True)
        st.finish(name)

    # 5. student + baseline --------------------------------------------------------------
    name = 'student'
    ablation = out / 'ablation'
    student = row_dir(ablation, 'ours')
    rows = ['classical-srp', 'scene-prior', 'ours', 'upper-bound']
    label_score, label_support = student_label_rule(plan, teachers)
    base = ['ablate', '--dataset', dataset, '--out', ablation,
            '--epochs', plan.student_epochs, '--pretext-epochs', plan.pretext_epochs,
            *(['--min-label-score', label_score] if label_score is not None else []),
            *(['--label-support', *label_support] if label_support is not None else [])]
    aargs = [*base, '--only', *rows]
    st.commands[name] = ['mmdistill ' + ' '.join(str(a).replace(str(out) + '/', '') for a in aargs),
                         f'mmdistill evaluate --checkpoint {student.relative_to(out)} --dataset dataset '
                         '--out evaluation/metrics.json --report evaluation']
    if st.start(name):
        if ablation.exists():
            shutil.rmtree(ablation)
        # ours (with its pretext) and the upper bound train side by side, one core each, and the
        # baselines take the core the upper bound (no pretext: it ends first) frees; the last call
        # reuses the finished rows and writes the one table
        _parallel([('ours', [*base, '--only', 'ours', '--quiet'], logs / 'student-ours.log'),
                   ('upper-bound', [*base, '--only', 'upper-bound', '--quiet'], logs / 'student-upper-bound.log'),
                   ('baselines', [*base, '--only', 'classical-srp', 'scene-prior', '--quiet'],
                    logs / 'student-baselines.log')],
                  plan.workers, 'train the student and its upper bound, run the baselines')
        _mmdistill(aargs, logs / 'student.log', threads=2, tee=True)
        _mmdistill(['evaluate', '--checkpoint', student, '--dataset', dataset,
                    '--out', out / 'evaluation' / 'metrics.json', '--report', out / 'evaluation'],
                   logs / 'evaluate.log', threads=2, tee=True)
        st.finish(name)

    # 6. runtime graph on a held-out drive ------------------------------------------------
    name = 'runtime'
    test_drive = next((d for d in split['test'] if d.startswith(plan.replay_scenario)), split['test'][0])
    rargs = ['replay-eval', '--bag', labelled[test_drive], '--checkpoint', student,
             '--out', out / 'runtime' / 'replay.json', '--rate', plan.replay_rate, '--tracker', 'kalman']
    st.commands[name] = ['mmdistill ' + ' '.join(str(a).replace(str(out) + '/', '') for a in rargs)]
    if st.start(name):
        (out / 'runtime').mkdir(exist_ok=True)
        _mmdistill(rargs, logs / 'replay.log', threads=2, tee=True)
        st.finish(name)

    # 7. report --------------------------------------------------------------------------
    st.start('report')
    from .demo_report import write_demo_report, write_demo_summary
    path = write_demo_report(out, plan, quick, drives, split, test_drive, st,
                             total_s=time.perf_counter() - t_all)
    summary = write_demo_summary(out, quick, split, test_drive, st)
    print(f'[demo] wrote {path} and {summary} in {time.perf_counter() - t_all:.0f} s', flush=True)
    return path
