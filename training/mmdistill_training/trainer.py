"""Student training (DESIGN §7): counting pretext and multi-teacher distillation.

``train(config, dataset_dir, out_dir)`` runs one stage:

* ``stage: pretext`` -- a :class:`CountingHead` on the encoder's embedding, cross-entropy on the
  number of fused pseudo-label boxes (clipped to ``pretext.max_count``); monitored by
  validation accuracy. Its encoder initialises distillation (``init='pretext:DIR'``).
* ``stage: distill`` -- focal + GIoU + centerness against the pseudo-labels chosen by
  ``targets`` plus ``distill_weight`` x the distillation loss chosen by ``loss.distill`` (MTA
  on the teachers' product, MTA on their average, the reference implementation's variant,
  the StereoSoundNet ranking loss, or none); monitored by validation mAP@Avg against the same
  pseudo-labels (never loss, never ground truth).

Adam with weight decay, ReduceLROnPlateau and early stopping on the monitored metric,
deterministic for a seed on CPU (the permutation and dropout RNG are re-seeded per epoch, so a
resumed run continues exactly), a checkpoint of the best epoch, a train state after every epoch
(``--resume``), ``log.csv`` and ``curves.png``. Under ``torchrun`` (``WORLD_SIZE`` > 1) the
model is wrapped in DistributedDataParallel, every rank takes its share of each batch list and
rank 0 validates and writes.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from mmdistill_common.errors import ConfigError, InputError
from mmdistill_student.checkpoint import load_checkpoint, save_checkpoint
from mmdistill_student.encoder import CountingHead, load_encoder_state_dict
from mmdistill_student.frontend import mic_pairs
from mmdistill_student.model import StudentConfig, StudentDetector, feature_groups
from mmdistill_teachers.head import TargetCache, attention_maps, detection_loss

from .dataset import DistillDataset
from .losses import mta_loss, mta_loss_reference, ranking_loss
from .metrics import evaluate_detections, match_frame, reference_frame
from .train_config import TrainConfig

__all__ = ['ChannelPlan', 'plan_channels', 'mirror_plan', 'build_student', 'train', 'predict_rows',
           'reference_frames']

MODALITIES = ('rgb', 'depth', 'thermal')
TEACHER_SCORE_THRESHOLD = 0.5      # single-teacher targets: the fusion's default per-teacher threshold


# ------------------------------------------------------------------------ channels

@dataclass
class ChannelPlan:
    """Which dataset feature channels the student reads, and the student's front end.

    ``frontend``: the runtime front end (dataset front end with ILD / GCC-PHAT switched per
    ``features``); ``input_channels``: selection inside that front end's output (None = all);
    ``dataset_channels``: the same channels as indices into the dataset's feature array."""
    frontend: dict
    input_channels: Optional[List[int]]
    dataset_channels: List[int]


#: feature groups of the acoustic-image front end (channels x columns x time)
ACOUSTIC_GROUPS = ('srp', 'das', 'mvdr')


def plan_channels(ds_frontend: dict, ds_groups: Dict[str, Sequence[int]], features: Sequence[str],
                  mics: Optional[Sequence[int]] = None) -> ChannelPlan:
    from mmdistill_student.frontend import FrontendConfig
    for g in features:
        if g not in ds_groups:
            raise ConfigError(f'feature group {g!r} is not in the dataset (it has {sorted(ds_groups)}); '
                              f'rebuild it with --features including {g}')
    fe = dict(ds_frontend)
    fe['use_ild'] = 'ild' in features
    fe['use_gccphat'] = 'gcc' in features
    if fe.get('kind') == 'acoustic_image':
        fe['mvdr'] = 'mvdr' in features      # computed at run time only when the student reads it
    fcfg = FrontendConfig.from_dict(fe)
    groups = feature_groups(fcfg)
    n_mics = fcfg.channels
    if mics is not None and fcfg.kind == 'acoustic_image':
        raise ConfigError('mics: the acoustic image is steered with every microphone; select mics only '
                          'with spectrogram features')
    if mics is not None and max(mics) >= n_mics:
        raise ConfigError(f'mics {list(mics)} refer to microphones beyond the {n_mics} of the dataset')
    keep = set(range(n_mics)) if mics is None else set(int(m) for m in mics)
    pairs = mic_pairs(n_mics)
    student_idx, ds_idx = [], []
    for g, (start, stop) in groups.items():
        ds_start = int(ds_groups[g][0])
        for k in range(stop - start):
            if g in ACOUSTIC_GROUPS:
                ok = g in features        # every direction uses every microphone
            elif g in ('logmel', 'ild'):
                ok = k in keep
            else:
                i, j = pairs[k]
                ok = i in keep and j in keep
            if ok:
                student_idx.append(start + k)
                ds_idx.append(ds_start + k)
    if not student_idx:
        raise ConfigError('the feature/mic selection leaves no channels')
    total = groups[list(groups)[-1]][1]
    sel = None if len(student_idx) == total else student_idx
    return ChannelPlan(fe, sel, ds_idx)


def mirror_plan(geometry: Optional[dict], image_width: int, plan: ChannelPlan,
                ds_groups: Dict[str, Sequence[int]]) -> Optional[np.ndarray]:
    """Channel permutation (over ``plan.dataset_channels`` order) and lag flips that mirror the
    scene left-right, or None when the array/camera are not mirror-symmetric.

    Returns an int array ``perm`` and bool ``flip`` packed as ``(2, C)``: mirrored features are
    ``x[:, perm]`` with the mel/lag axis reversed where ``flip`` (GCC-PHAT of swapped pairs)."""
    key = 'mic_positions_m' if geometry and 'mic_positions_m' in geometry else 'mic_positions'
    if not geometry or key not in geometry:
        return None
    pos = np.asarray(geometry[key], float)
    cam = geometry.get('camera', {})
    if abs(float(cam.get('cx', image_width / 2)) - image_width / 2) > 1e-6 or abs(float(cam.get('y_m', 0.0))) > 1e-6:
        return None
    mirrored = pos * np.array([1.0, -1.0, 1.0])
    d = np.linalg.norm(mirrored[:, None, :] - pos[None, :, :], axis=2)
    sigma = d.argmin(axis=1)
    if not np.allclose(d[np.arange(len(pos)), sigma], 0, atol=1e-6) or len(set(sigma)) != len(pos):
        return None
    n = len(pos)
    pairs = mic_pairs(n)
    pair_index = {p: k for k, p in enumerate(pairs)}
    # mirrored source channel (dataset index) and flip flag for every dataset channel
    src: Dict[int, Tuple[int, bool]] = {}
    for g, (start, stop) in ds_groups.items():
        for k in range(stop - start):
            if g in ACOUSTIC_GROUPS:
                src[start + k] = (start + k, True)          # columns mirror about the image centre
            elif g in ('logmel', 'ild'):
                src[start + k] = (start + int(sigma[k]), False)
            else:
                i, j = pairs[k]
                a, b = int(sigma[i]), int(sigma[j])
                src[start + k] = ((start + pair_index[(a, b)], False) if a < b
                                  else (start + pair_index[(b, a)], True))
    pos_of = {c: i for i, c in enumerate(plan.dataset_channels)}
    perm, flip = [], []
    for c in plan.dataset_channels:
        s, f = src[c]
        if s not in pos_of:
            return None             # the mirror needs a channel the student does not read
        perm.append(pos_of[s])
        flip.append(f)
    return np.stack([np.array(perm), np.array(flip, dtype=np.int64)])


def _mirror_features(x: torch.Tensor, mirror: np.ndarray) -> torch.Tensor:
    perm = torch.as_tensor(mirror[0])
    flip = torch.as_tensor(mirror[1].astype(bool))
    y = x[:, perm]
    if flip.any():
        y[:, flip] = torch.flip(y[:, flip], dims=[2])
    return y


# ------------------------------------------------------------------------ data

def reference_frames(ds: DistillDataset, rows: Sequence[int], targets: str,
                     min_label_score: float = 0.0, label_support: Sequence[str] = ()) -> List[dict]:
    """Per row the boxes that supervise / evaluate the student: fused pseudo-labels scored at
    least ``min_label_score`` and supported by every teacher of ``label_support``, one teacher's own detections (score >= 0.5, the fusion's
    per-teacher threshold), or the simulator truth under the headline rule (``ground_truth``:
    the upper-bound row only)."""
    out = []
    for r in rows:
        if targets == 'ground_truth':
            gt = ds.ground_truth(int(r))
            if gt is None:
                raise ConfigError(f'targets ground_truth: row {int(r)} ({ds.drive_name(int(r))}) has no simulator truth')
            b = reference_frame(gt, 'ground_truth')['boxes']
            s = np.ones(len(b))
        elif targets == 'fused':
            b, s = ds.labels(int(r))
            keep = np.asarray(s) >= min_label_score
            if label_support:
                keep &= ds.label_support(int(r))[:, [MODALITIES.index(m) for m in label_support]].all(axis=1)
            b, s = np.asarray(b)[keep], np.asarray(s)[keep]
        else:
            b, s = ds.teacher_boxes(int(r), targets)
            keep = s >= TEACHER_SCORE_THRESHOLD
            b, s = b[keep], s[keep]
        out.append({'boxes': np.asarray(b, np.float64).reshape(-1, 4), 'scores': np.asarray(s)})
    return out


def _batches(rows: np.ndarray, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> List[np.ndarray]:
    if shuffle:
        g = np.random.default_rng([seed, epoch])
        rows = rows[g.permutation(len(rows))]
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def _subset(rows: np.ndarray, n: Optional[int], seed: int) -> np.ndarray:
    if n is None or len(rows) <= n:
        return rows
    g = np.random.default_rng([seed, 12345])
    return np.sort(g.choice(rows, size=n, replace=False))


# ------------------------------------------------------------------------ model

def build_student(cfg: TrainConfig, ds: DistillDataset) -> Tuple[StudentDetector, ChannelPlan]:
    features = cfg.features if cfg.features is not None else list(ds.feature_groups)
    plan = plan_channels(ds.frontend.to_dict(), ds.feature_groups, features, cfg.mics)
    fields = cfg.student_fields()
    fields.setdefault('strides', tuple(ds.index['strides']))
    try:
        scfg = StudentConfig(frontend=plan.frontend, input_channels=plan.input_channels,
                             image_size=tuple(ds.index['image_size']),
                             class_names=tuple(ds.index.get('class_names', ['vehicle'])), **fields)
    except TypeError as e:
        raise ConfigError(f'model: {e}') from None
    return StudentDetector(scfg), plan


def _device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('device: cuda requested but no CUDA device is available')
    return torch.device(name)


@torch.no_grad()
def predict_rows(model: StudentDetector, ds: DistillDataset, rows: Sequence[int], channels: Sequence[int],
                 score_threshold: float, batch_size: int = 64, device='cpu', progress: bool = False
                 ) -> List[dict]:
    """Student detections for dataset rows (features read from the dataset)."""
    model.eval()
    out: List[dict] = []
    rows = np.asarray(rows)
    for i in tqdm(range(0, len(rows), batch_size), desc='predict', disable=not progress, unit='batch'):
        x = torch.from_numpy(ds.features(rows[i:i + batch_size], channels=list(channels))).float().to(device)
        out.extend(model.predict_features(x, score_threshold=score_threshold))
    return out


# ------------------------------------------------------------------------ state I/O

def _save_train_state(out: Path, model: torch.nn.Module, opt, sched, state: dict) -> None:
    tensors = {f'model.{k}': v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    meta_state = {}
    for pid, st in osd['state'].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f'opt.{pid}.{k}'] = v.detach().cpu().contiguous()
            else:
                meta_state[f'{pid}.{k}'] = v
    meta = {'param_groups': osd['param_groups'], 'opt_scalars': meta_state,
            'scheduler': {k: v for k, v in sched.state_dict().items()}, **state}
    tmp = out / 'train_state.safetensors.tmp'
    save_file(tensors, str(tmp))
    os.replace(tmp, out / 'train_state.safetensors')
    tmp = out / 'train_state.json.tmp'
    tmp.write_text(json.dumps(meta, indent=1, default=float))
    os.replace(tmp, out / 'train_state.json')


def _ema_step(decay: float):
    """Moving-average update with the decay ramped up as ``(1 + n) / (10 + n)`` after ``n``
    updates: a fixed decay would keep the untrained initial weights (a random head) in the
    average for thousands of steps, and a blend of those with trained ones detects nothing."""
    def step(avg: torch.Tensor, cur: torch.Tensor, n) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return avg + (cur - avg) * (1.0 - d)
    return step


def _train_modules(model, count_head, ema) -> torch.nn.ModuleDict:
    """What a train state holds: the student, the counting head (pretext), the moving average."""
    return torch.nn.ModuleDict({'student': model, **({'count': count_head} if count_head is not None else {}),
                                **({'ema': ema} if ema is not None else {})})


def _load_train_state(out: Path, model: torch.nn.Module, opt, sched) -> dict:
    try:
        tensors = load_file(str(out / 'train_state.safetensors'))
        meta = json.loads((out / 'train_state.json').read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f'cannot resume from {out}: {e}') from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith('model.')})
    state: Dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith('opt.'):
            _, pid, name = k.split('.', 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta['opt_scalars'].items():
        pid, name = k.split('.', 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({'state': state, 'param_groups': meta['param_groups']})
    sched.load_state_dict(meta['scheduler'])
    return meta


# ------------------------------------------------------------------------ training

def _distill_term(cfg: TrainConfig, pyramid, batch_att, present, rgb_index: int) -> torch.Tensor:
    loss = cfg.loss
    kind = loss['distill']
    if kind == 'none':
        return pyramid[0].sum() * 0.0
    teachers = loss['teachers']
    maps = {m: batch_att[m] for m in teachers}
    mask = present[:, [MODALITIES.index(m) for m in teachers]].any(dim=1).float()
    if kind in ('mta', 'mta_average'):
        return mta_loss(pyramid, maps, beta=loss['beta'], r=loss['r'], tau=loss['tau'], eps=loss['eps'],
                        target='product' if kind == 'mta' else 'average', mask=mask)
    if kind == 'mta_reference':
        return mta_loss_reference(pyramid, maps, beta=loss['beta'], r=loss['r'], T=loss['reference_temperature'])
    # ranking: student attention maps against the first listed teacher's, per level
    q_s = attention_maps(pyramid, loss['r'])
    return ranking_loss(q_s, batch_att[teachers[0]], margin=loss['ranking_margin'])


def align_attention(maps: Sequence[torch.Tensor], teacher_strides: Sequence[int],
                    student_strides: Sequence[int]) -> List[torch.Tensor]:
    """Teacher attention maps ``(B, H, W)`` at ``teacher_strides`` -> one map per student level:
    the teacher level of the same stride, or the coarsest one sum-pooled to the student's stride
    (attention is a per-cell mass that MTA normalises, so pooling sums it)."""
    by_stride = dict(zip((int(s) for s in teacher_strides), maps))
    out = []
    for s in student_strides:
        if int(s) in by_stride:
            out.append(by_stride[int(s)])
            continue
        base = max(t for t in by_stride if t < s and s % t == 0)
        k = int(s) // base
        out.append(F.avg_pool2d(by_stride[base][:, None], k)[:, 0] * (k * k))
    return out


def _load_batch(ds: DistillDataset, rows: np.ndarray, channels, refs: Dict[int, dict], cfg: TrainConfig,
                mirror: Optional[np.ndarray], rng: np.random.Generator, width: int,
                strides: Optional[Sequence[int]] = None):
    x = torch.from_numpy(ds.features(rows, channels=list(channels))).float()
    boxes = [refs[int(r)]['boxes'].copy() for r in rows]
    need_att = cfg.stage == 'distill' and cfg.loss['distill'] != 'none'
    att = {}
    if need_att:
        for m in cfg.loss['teachers']:
            att[m] = [torch.from_numpy(np.asarray(a, np.float32)) for a in ds.attention(rows, m)]
            if strides is not None and tuple(strides) != tuple(ds.index['strides']):
                att[m] = align_attention(att[m], ds.index['strides'], strides)
    present = torch.from_numpy(np.asarray(ds.teacher_present(rows), bool))
    counts = torch.tensor([len(b) for b in boxes], dtype=torch.int64)     # the boxes the student learns
    if mirror is not None:
        flip = torch.from_numpy(rng.random(len(rows)) < 0.5)
        if flip.any():
            x[flip] = _mirror_features(x[flip], mirror)
            for i in np.flatnonzero(flip.numpy()):
                b = boxes[i]
                if len(b):
                    boxes[i] = np.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], axis=1)
            for m in att:
                att[m] = [torch.where(flip[:, None, None], torch.flip(a, dims=[2]), a) for a in att[m]]
    return x, boxes, att, present, counts


def train(cfg: TrainConfig, dataset_dir: Path, out_dir: Path, init: Optional[str] = None,
          resume: bool = False, progress: bool = True, epochs: Optional[int] = None) -> dict:
    """Run one training stage; returns the summary written to ``out_dir/summary.json``."""
    out_dir = Path(out_dir)
    ds = DistillDataset(dataset_dir)
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    distributed = world > 1
    device = _device(cfg.device)
    if distributed:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
        if device.type == 'cuda':
            device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
            torch.cuda.set_device(device)
    seed = int(cfg.seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    o = cfg.optim
    n_epochs = int(epochs if epochs is not None else o['epochs'])

    model, plan = build_student(cfg, ds)
    train_rows = _subset(ds.split_indices('train'), o['max_train_frames'], seed)
    val_rows = _subset(ds.split_indices('val'), o['max_val_frames'], seed)
    if len(train_rows) == 0:
        raise InputError(f'dataset {dataset_dir} has no training frames')
    if len(val_rows) == 0:
        raise InputError(f'dataset {dataset_dir} has no validation frames (split by drive needs >= 2 '
                         'drives of a scenario, or a --split file)')
    if init:
        kind, _, path = init.partition(':')
        if kind != 'pretext' or not path:
            raise ConfigError(f"--init must be 'pretext:DIR', got {init!r}")
        pre, meta = load_checkpoint(path)
        if meta.get('stage') != 'pretext':
            raise ConfigError(f'{path} is not a pretext checkpoint (stage {meta.get("stage")!r})')
        load_encoder_state_dict(model.encoder, pre.encoder.state_dict())
    count_head = CountingHead(model.encoder.cfg.embed_dim, cfg.pretext['max_count']) \
        if cfg.stage == 'pretext' else None
    targets = cfg.targets
    rule = (cfg.min_label_score, cfg.label_support)
    refs_train = dict(zip(train_rows.tolist(), reference_frames(ds, train_rows, targets, *rule)))
    refs_val = reference_frames(ds, val_rows, targets, *rule)
    mirror = mirror_plan(ds.index.get('geometry'), model.config.image_size[0], plan, ds.feature_groups) \
        if o['hflip'] else None

    # channels-last convolutions: the column encoder's forward + backward is about 30 % faster on
    # the CPU (same-process A/B, batch 32), a demo epoch about 15 %; saved state is made contiguous
    model.to(device, memory_format=torch.channels_last)
    params = list(model.parameters()) + (list(count_head.parameters()) if count_head is not None else [])
    if count_head is not None:
        count_head.to(device)
    opt = torch.optim.Adam(params, lr=o['lr'], weight_decay=o['weight_decay'])
    if o['schedule'] == 'cosine':
        # a fixed budget: anneal to min_lr by the last epoch; closed form in the epoch, so a run
        # resumed with more --epochs follows the longer schedule from where it stopped
        lo = o['min_lr'] / o['lr']
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: lo + (1 - lo) * (1 + math.cos(math.pi * min(e, n_epochs) / n_epochs)) / 2)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode='max', factor=o['plateau_factor'],
                                                           patience=o['plateau_patience'], min_lr=o['min_lr'])
    # the weights validated, saved and calibrated: the raw ones, or their moving average
    ema = torch.optim.swa_utils.AveragedModel(model, avg_fn=_ema_step(o['ema']), use_buffers=True) \
        if o['ema'] and cfg.stage == 'distill' else None
    kept = ema.module if ema is not None else model
    net = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        class _Both(torch.nn.Module):          # one DDP module over student (+ counting head)
            def __init__(self, m, h):
                super().__init__()
                self.m, self.h = m, h

            def forward(self, x):
                if self.h is not None:
                    return self.h(self.m.encoder.embed(x))
                return self.m(x)
        net = DDP(_Both(model, count_head), device_ids=[device.index] if device.type == 'cuda' else None)

    out_dir.mkdir(parents=True, exist_ok=True)
    history: List[dict] = []
    start_epoch, best, best_epoch, bad_epochs = 0, -math.inf, -1, 0
    if resume:
        wrapped = _train_modules(model, count_head, ema)
        meta = _load_train_state(out_dir, wrapped, opt, sched)
        if o['schedule'] == 'cosine':       # this run's epoch count sets the rest of the schedule
            for g, base, f in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
                g['lr'] = base * f(sched.last_epoch)
        start_epoch, best, best_epoch, bad_epochs = (meta['epoch'] + 1, meta['best'], meta['best_epoch'],
                                                     meta['bad_epochs'])
        history = meta['history']
    monitor = 'val_accuracy' if cfg.stage == 'pretext' else 'val_mAP_avg'
    width = model.config.image_size[0]
    info_base = {'stage': cfg.stage, 'train_config': cfg.to_dict(), 'channel_plan': plan.dataset_channels,
                 'dataset': {'path': str(Path(dataset_dir).resolve()), 'content_hash': ds.content_hash},
                 'monitor': monitor}
    targets = TargetCache(model.config.image_size, model.config.strides)
    t_start = time.perf_counter()
    stopped_early = False
    for epoch in range(start_epoch, n_epochs):
        t0 = time.perf_counter()
        torch.manual_seed(seed * 1000 + epoch)
        rng = np.random.default_rng([seed, epoch, 7])
        model.train()
        if count_head is not None:
            count_head.train()
        batches = _batches(train_rows, o['batch_size'], seed, epoch)
        sums: Dict[str, float] = {}
        n_seen = 0
        bar = tqdm(batches, desc=f'{cfg.name} {cfg.stage} epoch {epoch + 1}/{n_epochs}',
                   disable=not progress or rank != 0, unit='batch')
        for rows in bar:
            if distributed:
                rows = rows[rank::world]
                if len(rows) == 0:
                    continue
            x, boxes, att, present, counts = _load_batch(ds, rows, plan.dataset_channels, refs_train, cfg,
                                                         mirror, rng, width, model.config.strides)
            x = x.to(device, memory_format=torch.channels_last)
            if count_head is not None:
                logits = net(x) if distributed else count_head(model.encoder.embed(x))
                target = counts.clamp(max=cfg.pretext['max_count']).to(device)
                loss = F.cross_entropy(logits, target)
                parts = {'loss': float(loss.detach()), 'ce': float(loss.detach())}
            else:
                outputs, pyramid = net(x)
                tgt = targets(boxes)
                det = detection_loss(outputs, tgt, alpha=0.25, gamma=2.0, focal_weight=cfg.loss['focal_weight'],
                                     box_weight=cfg.loss['box_weight'],
                                     centerness_weight=cfg.loss['centerness_weight'],
                                     quality=cfg.loss['quality'])
                batch_att = {m: [a.to(device) for a in v] for m, v in att.items()}
                dist_l = _distill_term(cfg, pyramid, batch_att, present.to(device), 0)
                loss = det['total'] + cfg.loss['distill_weight'] * dist_l
                parts = {'loss': float(loss.detach()), 'focal': float(det['focal'].detach()),
                         'box': float(det['box'].detach()), 'distill': float(dist_l.detach())}
            if not math.isfinite(parts['loss']):
                raise FloatingPointError(f'training loss became {parts["loss"]} in epoch {epoch + 1}')
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o['grad_clip']:
                torch.nn.utils.clip_grad_norm_(params, o['grad_clip'])
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(rows)
            n_seen += len(rows)
            bar.set_postfix(loss=f'{parts["loss"]:.3f}')
        row = {'epoch': epoch + 1, 'lr': opt.param_groups[0]['lr'],
               **{f'train_{k}': v / max(n_seen, 1) for k, v in sums.items()}}
        # validation (rank 0), broadcast of the monitored value
        value = 0.0
        t_val = time.perf_counter()
        if rank == 0:
            if count_head is not None:
                value = _pretext_accuracy(model, count_head, ds, val_rows, [len(f['boxes']) for f in refs_val],
                                          plan.dataset_channels,
                                          cfg.pretext['max_count'], device)
                row['val_accuracy'] = value
            else:
                preds = predict_rows(kept, ds, val_rows, plan.dataset_channels, cfg.eval['score_threshold'],
                                     device=device)
                m = evaluate_detections(preds, refs_val, model.config.image_size, per_class=False)
                value = 0.0 if math.isnan(m['mAP_avg']) else m['mAP_avg']
                row.update({'val_mAP_avg': value, 'val_AP50': m['AP50'], 'val_CDx': m['CDx']})
        if distributed:
            import torch.distributed as dist
            t = torch.tensor([value], device=device)
            dist.broadcast(t, 0)
            value = float(t.item())
        sched.step() if o['schedule'] == 'cosine' else sched.step(value)
        row['val_time_s'] = time.perf_counter() - t_val
        row['time_s'] = time.perf_counter() - t0
        history.append(row)
        improved = value > best + 1e-6
        if improved:
            best, best_epoch, bad_epochs = value, epoch + 1, 0
        else:
            bad_epochs += 1
        if rank == 0:
            if improved:
                save_checkpoint(kept.cpu(), out_dir, {**info_base, 'metrics': {monitor: value, 'epoch': epoch + 1,
                                                                              **{k: v for k, v in row.items()
                                                                                 if k.startswith('val_')}}})
                kept.to(device)
            wrapped = _train_modules(model, count_head, ema)
            _save_train_state(out_dir, wrapped, opt, sched, {'epoch': epoch, 'best': best, 'best_epoch': best_epoch,
                                                             'bad_epochs': bad_epochs, 'history': history})
            _write_log(out_dir, history)
            if progress:
                tqdm.write(f'epoch {epoch + 1}: ' + ', '.join(f'{k} {v:.4g}' for k, v in row.items()
                                                               if k != 'epoch'))
        if bad_epochs >= o['patience']:
            stopped_early = True
            break
    operating = None
    if rank == 0 and cfg.stage == 'distill' and best_epoch > 0:
        # every val frame, not the per-epoch subset: the F1 curve is flat near its top, and on 400
        # frames its argmax moved the box count by a third (0.39 -> 3.2, 0.40 -> 2.5 per frame)
        all_val = ds.split_indices('val')
        operating = _calibrate_checkpoint(out_dir, ds, all_val, plan.dataset_channels,
                                          refs_val if len(all_val) == len(val_rows)
                                          else reference_frames(ds, all_val, cfg.targets, *rule),
                                          cfg.eval['score_threshold'], cfg.eval['operating_point'])
    summary = {'stage': cfg.stage, 'monitor': monitor, 'best': best, 'best_epoch': best_epoch,
               'operating_point': operating,
               'epochs_run': len(history), 'stopped_early': stopped_early,
               'train_frames': int(len(train_rows)), 'val_frames': int(len(val_rows)),
               'mirror_augmentation': mirror is not None,
               'time_s': time.perf_counter() - t_start, 'history': history}
    if rank == 0:
        (out_dir / 'summary.json').write_text(json.dumps(summary, indent=1, default=float))
        _plot(out_dir, history, monitor)
    return summary


def count_matching_threshold(scores: Sequence[np.ndarray], target_boxes: int, floor: float = 0.05) -> float:
    """The score threshold at which ``target_boxes`` boxes pass over these frames' detections
    (one calibrated box per vehicle: mean boxes per frame = the reference's mean count), not below
    ``floor``."""
    flat = np.sort(np.concatenate([np.asarray(s, np.float64).reshape(-1) for s in scores] or [np.zeros(0)]))[::-1]
    if target_boxes <= 0 or not len(flat):
        return 1.0 if target_boxes <= 0 else float(floor)
    if target_boxes >= len(flat):
        return float(floor)
    return float(max(floor, 0.5 * (flat[target_boxes - 1] + flat[target_boxes])))


def _f1_curve(preds: Sequence[dict], refs: Sequence[dict], floor: float,
              iou_threshold: float = 0.5) -> Tuple[np.ndarray, np.ndarray]:
    """Detection scores >= ``floor`` in descending order and the F1 against ``refs`` (IoU
    ``iou_threshold``, greedy as the AP) of keeping each prefix. Greedy matching by score makes a
    frame's matches at any threshold the prefix of its matches at the floor: one pass gives all."""
    n_ref = int(sum(len(r['boxes']) for r in refs))
    scores, hits = [np.zeros(0)], [np.zeros(0, bool)]
    for p, r in zip(preds, refs):
        sc = np.asarray(p['scores'], np.float64).reshape(-1)
        keep = sc >= floor
        scores.append(sc[keep])
        hits.append(match_frame(np.asarray(p['boxes']).reshape(-1, 4)[keep], sc[keep], r['boxes'],
                                iou_threshold) >= 0)
    sc = np.concatenate(scores)
    order = np.argsort(-sc, kind='mergesort')
    tp = np.cumsum(np.concatenate(hits)[order])
    return sc[order], 2.0 * tp / (n_ref + np.arange(1, len(sc) + 1))


def f1_threshold(preds: Sequence[dict], refs: Sequence[dict], floor: float = 0.05,
                 curve: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> float:
    """The score threshold at which these frames' detections best reproduce ``refs`` (highest F1
    at IoU 0.5), not below ``floor``; 1.0 (publish nothing) without any reference. ``curve``: their
    :func:`_f1_curve`, when the caller has it already."""
    if not sum(len(r['boxes']) for r in refs):
        return 1.0
    sc, f1 = curve if curve is not None else _f1_curve(preds, refs, floor)
    if not len(sc):
        return float(floor)
    f1 = np.where(np.r_[sc[1:] != sc[:-1], True], f1, -1.0)   # a threshold cannot split equal scores
    i = int(np.argmax(f1))
    below = sc[i + 1] if i + 1 < len(sc) else float(floor)
    return float(max(floor, 0.5 * (sc[i] + below)))


def _calibrate_checkpoint(out_dir: Path, ds: DistillDataset, val_rows: np.ndarray, channels: Sequence[int],
                          refs_val: Sequence[dict], floor: float, rule: str = 'f1') -> dict:
    """Set the best checkpoint's operating threshold on the validation drives against the training
    references (pseudo-labels, or truth for the upper bound): where its detections' F1 against them
    is highest (``f1``), or where its mean number of boxes per frame equals theirs (``count``);
    written into the checkpoint's config and metadata. Why F1 by default: references the student
    cannot hear (a vehicle 50 m away) still count, and matching their number filled the frames
    with boxes its scores could not rank (4.7 per frame against 2.6 audible vehicles)."""
    from mmdistill_student.checkpoint import read_checkpoint_metadata
    model, meta = load_checkpoint(out_dir)
    preds = predict_rows(model, ds, val_rows, channels, floor)
    target = int(sum(len(r['boxes']) for r in refs_val))
    sc, f1 = _f1_curve(preds, refs_val, floor)
    thr = count_matching_threshold([p['scores'] for p in preds], target, floor) if rule == 'count' \
        else f1_threshold(preds, refs_val, floor, curve=(sc, f1))
    kept = int((sc >= thr).sum())
    n = len(preds) or 1
    point = {'rule': rule, 'score_threshold': thr, 'val_frames': len(preds),
             'val_reference_boxes_per_frame': target / n, 'val_boxes_per_frame': kept / n,
             'val_f1': float(f1[kept - 1]) if kept else 0.0}
    model.config.score_threshold = thr
    info = {k: v for k, v in read_checkpoint_metadata(out_dir).items()
            if k not in ('format', 'format_version', 'config', 'window_mode', 'channels', 'sample_rate',
                         'versions', 'created')}
    save_checkpoint(model, out_dir, {**info, 'operating_point': point})
    return point


@torch.no_grad()
def _pretext_accuracy(model, head, ds, rows, counts, channels, max_count, device) -> float:
    model.eval()
    head.eval()
    correct = 0
    for i in range(0, len(rows), 64):
        r = rows[i:i + 64]
        x = torch.from_numpy(ds.features(r, channels=list(channels))).float().to(device)
        pred = head(model.encoder.embed(x)).argmax(dim=1).cpu().numpy()
        correct += int((pred == np.minimum(np.asarray(counts[i:i + 64]), max_count)).sum())
    return correct / max(len(rows), 1)


def _write_log(out: Path, history: List[dict]) -> None:
    keys: List[str] = []
    for h in history:
        keys += [k for k in h if k not in keys]
    tmp = out / 'log.csv.tmp'
    with open(tmp, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for h in history:
            w.writerow(h)
    os.replace(tmp, out / 'log.csv')


def _plot(out: Path, history: List[dict], monitor: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ep = [h['epoch'] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    for k in [k for k in history[0] if k.startswith('train_')]:
        ax[0].plot(ep, [h.get(k, np.nan) for h in history], label=k[6:])
    ax[0].set_xlabel('epoch')
    ax[0].set_title('training loss')
    ax[0].legend(fontsize=7)
    ax[1].plot(ep, [h.get(monitor, np.nan) for h in history], 'o-')
    ax[1].set_xlabel('epoch')
    ax[1].set_title(monitor)
    fig.tight_layout()
    fig.savefig(out / 'curves.png', dpi=90)
    plt.close(fig)
