"""Training configuration: a YAML file validated into :class:`TrainConfig` with one-line errors.

Every key has a default, so a config file lists only what differs; unknown keys are refused
with their path (``loss.distil_weight: unknown key; known: ...``) so that typos never pass
silently. The shipped configs live in ``mmdistill_training/configs/``.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from mmdistill_common.errors import ConfigError

#: head.detection_loss's ``quality`` choices (named here too so that reading a config needs no
#: torch; training/test/test_train_config.py checks that the two agree)
QUALITY_TARGETS = ('centerness', 'iou', 'iou_focal')

__all__ = ['TrainConfig', 'load_train_config', 'DEFAULTS', 'DISTILL_LOSSES', 'TARGETS', 'config_dir',
           'resolve_config']

DISTILL_LOSSES = ('mta', 'mta_average', 'mta_reference', 'ranking', 'none')
TARGETS = ('fused', 'rgb', 'depth', 'thermal', 'ground_truth')
#: targets that are teachers (``loss.teachers``); ``ground_truth`` (simulator truth under the
#: headline rule) trains the upper-bound row only, never the headline student
TEACHER_TARGETS = ('rgb', 'depth', 'thermal')
FEATURES = ('logmel', 'ild', 'gcc')
ACOUSTIC_FEATURES = ('srp', 'das', 'mvdr')

DEFAULTS: Dict[str, Any] = {
    'name': 'student',
    'stage': 'distill',             # distill | pretext
    'seed': 0,
    'device': 'auto',               # auto | cpu | cuda
    'features': None,               # feature groups read; None = every group of the dataset
    'mics': None,                   # list of microphone indices, None = all
    'targets': 'fused',             # which pseudo-labels supervise the detection loss
    # fused pseudo-labels kept as targets (and counted by the pretext): WBF scores a box seen by
    # one teacher of three at a third of its score, so the labels hold many weak boxes (the demo:
    # 16 per frame against 3.3 audible vehicles); 0.45 maximises their F1 on the demo's val drives
    'min_label_score': 0.45,
    # teachers that must support a fused pseudo-label for it to be a target: ['thermal'] keeps the
    # vehicles whose engine runs (a parked car sits at road temperature), the ones the array can
    # hear; `teachers train` calibrates it on the val drives with min_label_score (fusion.json)
    'label_support': [],
    'model': {                      # StudentConfig fields (frontend/input_channels come from data)
        'encoder': {},
        'strides': None,            # pyramid strides; None = the dataset's (the teachers' 8/16/32)
        'head_convs': 1,
        'head_width': 32,
        'score_threshold': 0.3,
        'nms_iou': 0.5,
        'max_detections': 20,
    },
    'loss': {
        'focal_weight': 1.0,        # delta
        'box_weight': 1.0,
        'centerness_weight': 1.0,
        # what ranks a vehicle's boxes (score = sqrt(class * quality)): centerness (FCOS), iou (the
        # quality branch learns each positive's box IoU) or iou_focal (the class target too, by a
        # quality focal loss); measured on val in the README (Student training), not adopted
        'quality': 'centerness',
        'distill': 'mta',           # mta | mta_average | mta_reference | ranking | none
        'distill_weight': 0.05,     # omega
        'beta': 0.5,
        'tau': 1.0,
        'eps': 0.01,
        'r': 2.0,
        'teachers': ['rgb', 'depth', 'thermal'],
        'reference_temperature': 9.0,
        'ranking_margin': 0.5,
    },
    'optim': {
        'lr': 2e-3,
        'weight_decay': 1e-4,
        'batch_size': 32,
        'epochs': 20,
        'patience': 6,              # early stopping on val mAP (epochs without improvement)
        'schedule': 'plateau',      # plateau: ReduceLROnPlateau on val mAP | cosine: lr -> min_lr over the epochs
        'plateau_patience': 2,      # ReduceLROnPlateau on val mAP
        'plateau_factor': 0.5,
        'min_lr': 1e-5,
        # exponential moving average of the weights (and BN statistics), validated and saved in
        # place of the raw weights; 0 = off (distillation stage only)
        'ema': 0.0,
        'grad_clip': 10.0,
        'hflip': True,              # mirror augmentation (symmetric circular arrays only)
        'max_train_frames': None,
        'max_val_frames': 400,
    },
    'pretext': {'max_count': 4},
    # operating_point: the student's publishing threshold, set on val against the references:
    # f1 (highest F1) or count (as many boxes per frame as references)
    'eval': {'score_threshold': 0.05, 'operating_point': 'f1'},
}


def _merge(base: dict, over: dict, path: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        where = f'{path}.{k}' if path else k
        if k not in base:
            raise ConfigError(f'{where}: unknown key; known: {", ".join(sorted(base))}')
        if isinstance(base[k], dict) and k not in ('encoder',):
            if not isinstance(v, dict):
                raise ConfigError(f'{where}: expected a mapping, got {type(v).__name__}')
            out[k] = _merge(base[k], v, where)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _num(cfg: dict, path: str, lo: Optional[float] = None, hi: Optional[float] = None,
         integer: bool = False, allow_none: bool = False) -> None:
    node = cfg
    keys = path.split('.')
    for k in keys[:-1]:
        node = node[k]
    v = node[keys[-1]]
    if v is None and allow_none:
        return
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok:
        raise ConfigError(f'{path}: expected {"an integer" if integer else "a number"}, got {v!r}')
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(f'{path}: {v} outside [{lo}, {hi}]')


@dataclasses.dataclass
class TrainConfig:
    """The validated training configuration (a nested dict with attribute access to sections)."""
    data: Dict[str, Any]

    def __getattr__(self, name):
        try:
            return self.__dict__['data'][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict:
        return copy.deepcopy(self.data)

    def student_fields(self) -> dict:
        return {k: v for k, v in copy.deepcopy(self.data['model']).items() if not (k == 'strides' and v is None)}


def validate(raw: dict) -> TrainConfig:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f'training config must be a mapping, got {type(raw).__name__}')
    cfg = _merge(DEFAULTS, raw, '')
    if cfg['stage'] not in ('distill', 'pretext'):
        raise ConfigError(f"stage: must be 'distill' or 'pretext', got {cfg['stage']!r}")
    if cfg['device'] not in ('auto', 'cpu', 'cuda'):
        raise ConfigError(f"device: must be auto, cpu or cuda, got {cfg['device']!r}")
    feats = cfg['features']
    if feats is not None and not (
            isinstance(feats, list) and feats and len(set(feats)) == len(feats)
            and (all(f in ACOUSTIC_FEATURES for f in feats)
                 or (all(f in FEATURES for f in feats) and 'logmel' in feats))):
        raise ConfigError(f'features: null (all of the dataset), a list from {list(FEATURES)} that includes '
                          f'logmel, or a list from {list(ACOUSTIC_FEATURES)}; got {feats!r}')
    mics = cfg['mics']
    if mics is not None and (not isinstance(mics, list) or not mics
                             or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in mics)
                             or len(set(mics)) != len(mics)):
        raise ConfigError(f'mics: null or a list of distinct microphone indices, got {mics!r}')
    _num(cfg, 'min_label_score', lo=0, hi=1)
    sup = cfg['label_support']
    if not isinstance(sup, list) or any(m not in TEACHER_TARGETS for m in sup) or len(set(sup)) != len(sup):
        raise ConfigError(f'label_support: a list of distinct teachers from {list(TEACHER_TARGETS)}, got {sup!r}')
    if cfg['targets'] not in TARGETS:
        raise ConfigError(f'targets: one of {list(TARGETS)}, got {cfg["targets"]!r}')
    loss = cfg['loss']
    if loss['quality'] not in QUALITY_TARGETS:
        raise ConfigError(f"loss.quality: one of {list(QUALITY_TARGETS)}, got {loss['quality']!r}")
    if loss['distill'] not in DISTILL_LOSSES:
        raise ConfigError(f'loss.distill: one of {list(DISTILL_LOSSES)}, got {loss["distill"]!r}')
    t = loss['teachers']
    if not isinstance(t, list) or not t or any(m not in TEACHER_TARGETS for m in t):
        raise ConfigError(f'loss.teachers: a non-empty list from {list(TEACHER_TARGETS)}, got {t!r}')
    for k in ('focal_weight', 'box_weight', 'centerness_weight', 'distill_weight', 'beta', 'eps'):
        _num(cfg, f'loss.{k}', lo=0)
    for k in ('tau', 'r', 'reference_temperature', 'ranking_margin'):
        _num(cfg, f'loss.{k}', lo=1e-6)
    o = cfg['optim']
    _num(cfg, 'optim.lr', lo=1e-8, hi=1.0)
    _num(cfg, 'optim.weight_decay', lo=0)
    _num(cfg, 'optim.batch_size', lo=1, integer=True)
    _num(cfg, 'optim.epochs', lo=1, integer=True)
    _num(cfg, 'optim.patience', lo=1, integer=True)
    _num(cfg, 'optim.plateau_patience', lo=0, integer=True)
    _num(cfg, 'optim.plateau_factor', lo=0.01, hi=0.99)
    _num(cfg, 'optim.min_lr', lo=0)
    if not isinstance(o['ema'], (int, float)) or isinstance(o['ema'], bool) or not 0 <= o['ema'] < 1:
        raise ConfigError(f"optim.ema: a decay in [0, 1) (0 = off), got {o['ema']!r}")
    _num(cfg, 'optim.grad_clip', lo=0, allow_none=True)
    _num(cfg, 'optim.max_train_frames', lo=1, integer=True, allow_none=True)
    _num(cfg, 'optim.max_val_frames', lo=1, integer=True, allow_none=True)
    if o['schedule'] not in ('plateau', 'cosine'):
        raise ConfigError(f"optim.schedule: 'plateau' or 'cosine', got {o['schedule']!r}")
    if not isinstance(o['hflip'], bool):
        raise ConfigError(f'optim.hflip: true or false, got {o["hflip"]!r}')
    _num(cfg, 'pretext.max_count', lo=1, hi=32, integer=True)
    _num(cfg, 'eval.score_threshold', lo=0, hi=1)
    if cfg['eval']['operating_point'] not in ('f1', 'count'):
        raise ConfigError(f"eval.operating_point: f1 or count, got {cfg['eval']['operating_point']!r}")
    _num(cfg, 'seed', lo=0, integer=True)
    if not isinstance(cfg['model']['encoder'], dict):
        raise ConfigError('model.encoder: expected a mapping of EncoderConfig fields')
    return TrainConfig(cfg)


def config_dir() -> Path:
    """The configs shipped with the package (``student.yaml``, ablations, baselines)."""
    return Path(__file__).resolve().parent / 'configs'


def resolve_config(name_or_path: str) -> Path:
    """A path, or the name of a shipped config (``student`` -> configs/student.yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = config_dir() / f'{name_or_path}.yaml'
    if shipped.is_file():
        return shipped
    names = sorted(q.stem for q in config_dir().glob('*.yaml'))
    raise ConfigError(f'training config {name_or_path!r} not found (not a file, not one of {names})')


def load_train_config(name_or_path: str, overrides: Optional[dict] = None) -> TrainConfig:
    """Read, merge with defaults and validate a training config (``base:`` names a parent)."""
    path = resolve_config(str(name_or_path))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f'{path}: not valid YAML: {str(e).splitlines()[0]}') from None
    if not isinstance(raw, dict):
        raise ConfigError(f'{path}: expected a mapping at the top level')
    base = raw.pop('base', None)
    if base is not None:
        parent = load_train_config(base).to_dict()
        raw = _deep_update(parent, raw)
    if overrides:
        raw = _deep_update(raw, overrides)
    try:
        return validate(raw)
    except ConfigError as e:
        raise ConfigError(f'{path}: {e}') from None


def _deep_update(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != 'encoder':
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
