"""Teacher weights: safetensors tensors + JSON metadata, never pickle.

A teacher weights file ``NAME.safetensors`` holds the model's ``state_dict`` and,
in the safetensors header's ``__metadata__`` under the key ``mmdistill``, a JSON
document::

    {
      "format": "mmdistill-teacher",
      "format_version": 1,
      "modality": "rgb" | "depth" | "thermal",
      "input_size": [W, H],
      "channels": <network input channels>,
      "sensor_channels": <channels of the sensor image>,
      "normalisation": {...},
      "class_names": [...],
      "config": {<TeacherConfig fields>},
      "training": {<free-form training info: epochs, seed, data, metrics>},
      "created": "<UTC ISO time>"
    }

A copy of the same JSON is written beside it as ``NAME.json`` for people and tools;
loading trusts only the copy inside the safetensors file, so the two cannot disagree.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from mmdistill_common.errors import ConfigError

from .detector import SENSOR_CHANNELS, TeacherConfig, TeacherDetector

__all__ = ['FORMAT', 'FORMAT_VERSION', 'METADATA_KEY', 'save_teacher', 'load_teacher', 'read_metadata',
           'fusion_path', 'save_fusion_config', 'load_fusion_config',
           'teacher_path', 'load_teachers', 'pretrained_directory', 'set_precision']

FORMAT = 'mmdistill-teacher'
FORMAT_VERSION = 1
METADATA_KEY = 'mmdistill'

PathLike = Union[str, os.PathLike]


def _metadata(model: TeacherDetector, training_info: Optional[dict]) -> dict:
    c = model.config
    return {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'modality': c.modality,
        'input_size': list(c.input_size),
        'channels': c.in_channels,
        'sensor_channels': SENSOR_CHANNELS[c.modality],
        'normalisation': c.normalisation,
        'class_names': list(c.class_names),
        'config': c.to_dict(),
        'training': dict(training_info or {}),
        'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
    }


def save_teacher(model: TeacherDetector, path: PathLike, training_info: Optional[dict] = None) -> Path:
    """Write ``model`` to ``path`` (suffix ``.safetensors`` added if missing) plus the JSON sidecar.

    ``training_info`` must be JSON-serialisable. The file is written to a temporary
    name and renamed, so an interrupted save never leaves a half file. Returns the path.
    """
    path = Path(path)
    if path.suffix != '.safetensors':
        path = path.with_name(path.name + '.safetensors')
    meta = _metadata(model, training_info)
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except TypeError as e:
        raise ConfigError(f'training_info is not JSON-serialisable: {e}') from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    save_file(tensors, str(tmp), metadata={METADATA_KEY: meta_json})
    os.replace(tmp, path)
    side = path.with_suffix('.json')
    tmp = side.with_name(side.name + '.tmp')
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')
    os.replace(tmp, side)
    return path


def read_metadata(path: PathLike) -> dict:
    """Read and check the JSON metadata of a teacher weights file (no tensors loaded)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'teacher weights file not found: {path}')
    try:
        with safe_open(str(path), framework='pt') as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f'{path} is not a readable safetensors file: {e}') from None
    if METADATA_KEY not in header:
        raise ConfigError(f'{path} has no mmdistill metadata: not a teacher weights file '
                          f'written by save_teacher')
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ConfigError(f'{path}: metadata is not valid JSON: {e}') from None
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        raise ConfigError(f'{path}: metadata format is {meta.get("format") if isinstance(meta, dict) else meta!r}, '
                          f'expected {FORMAT!r}')
    if meta.get('format_version') != FORMAT_VERSION:
        raise ConfigError(f'{path}: teacher weights format version {meta.get("format_version")!r} is not '
                          f'supported (this code reads version {FORMAT_VERSION})')
    for key in ('modality', 'input_size', 'config'):
        if key not in meta:
            raise ConfigError(f'{path}: metadata lacks {key!r}')
    return meta


def load_teacher(path: PathLike, modality: Optional[str] = None,
                 input_size: Optional[Tuple[int, int]] = None, class_names=None,
                 device: Union[str, torch.device] = 'cpu') -> TeacherDetector:
    """Load a teacher saved by :func:`save_teacher`, checking it matches what the caller expects.

    ``modality``, ``input_size`` (W, H) and ``class_names``, when given, must equal the
    stored values. Raises :class:`ConfigError` with a one-line reason for a missing or
    unreadable file, a wrong format or version, a mismatch, or tensors that do not fit
    the architecture described by the metadata (missing, unexpected or wrong shape).
    The returned model is in eval mode.
    """
    path = Path(path)
    meta = read_metadata(path)
    if modality is not None and meta['modality'] != modality:
        raise ConfigError(f'{path} holds a {meta["modality"]!r} teacher, but a {modality!r} teacher '
                          f'was requested')
    if input_size is not None and tuple(meta['input_size']) != tuple(int(v) for v in input_size):
        w, h = meta['input_size']
        raise ConfigError(f'{path} was trained for {w}x{h} (WxH) images, but {input_size[0]}x{input_size[1]} '
                          f'was requested')
    if class_names is not None and list(meta.get('class_names', [])) != list(class_names):
        raise ConfigError(f'{path} predicts classes {meta.get("class_names")}, but {list(class_names)} '
                          f'were requested')
    try:
        config = TeacherConfig.from_dict(dict(meta['config']))
    except (TypeError, ValueError) as e:
        raise ConfigError(f'{path}: invalid teacher config in metadata: {e}') from None
    if config.modality != meta['modality'] or list(config.input_size) != list(meta['input_size']):
        raise ConfigError(f'{path}: metadata is inconsistent (config vs top-level modality/input_size)')
    model = TeacherDetector(config=config)
    try:
        tensors = load_file(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f'{path}: cannot read tensors: {e}') from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing (e.g. {missing[:3]})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected (e.g. {unexpected[:3]})')
        raise ConfigError(f'{path}: tensors do not match the teacher architecture: ' + '; '.join(parts))
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ConfigError(f'{path}: tensor {k} has shape {tuple(tensors[k].shape)}, the architecture '
                              f'needs {tuple(v.shape)}')
    model.load_state_dict(tensors, strict=True)
    model.training_info = dict(meta.get('training', {}))
    return model.to(device).eval()


def teacher_path(directory: PathLike, modality: str) -> Path:
    """Where a teachers directory keeps ``modality``'s weights: ``DIR/<modality>.safetensors``."""
    return Path(directory) / f'{modality}.safetensors'


def load_teachers(directory: PathLike, modalities=('rgb', 'depth', 'thermal'),
                  device: Union[str, torch.device] = 'cpu') -> 'dict[str, TeacherDetector]':
    """Load ``DIR/<m>.safetensors`` for every modality (the layout ``mmdistill teachers train``
    writes); each file must hold the teacher of its name's modality."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f'teachers directory not found: {directory}')
    return {m: load_teacher(teacher_path(directory, m), modality=m, device=device) for m in modalities}


def set_precision(teachers, precision: str):
    """Make every teacher of ``teachers`` (a dict or one) predict in ``precision``: 'fp32',
    'bf16' (autocast) or 'auto' (bf16 where the CPU runs it natively). Returns ``teachers``."""
    from .training import use_bf16
    bf16 = use_bf16(precision)
    for t in (teachers.values() if isinstance(teachers, dict) else [teachers]):
        t.bf16_inference = bf16
    return teachers


def pretrained_directory() -> Path:
    """The teachers shipped with the package (``pretrained/``: RGB, depth and thermal weights and
    ``manifest.json``, made by ``tools/pretrain_teachers.py`` on simulated drives disjoint from
    the demo's). Raises :class:`ConfigError` when the installation lacks them."""
    d = Path(__file__).resolve().parent / 'pretrained'
    if not all(teacher_path(d, m).exists() for m in ('rgb', 'depth', 'thermal')):
        raise ConfigError(f'no pretrained teachers in {d} (make them with tools/pretrain_teachers.py)')
    return d


FUSION_FORMAT = 'mmdistill-fusion'


def fusion_path(directory: PathLike) -> Path:
    """Where a teachers directory keeps its calibrated fusion: ``DIR/fusion.json``."""
    return Path(directory) / 'fusion.json'


def save_fusion_config(config, directory: PathLike, info: Optional[dict] = None) -> Path:
    """Write a :class:`~mmdistill_teachers.labelling.FusionConfig` (thresholds, method, IoU) as
    ``DIR/fusion.json``, with ``info`` (how it was calibrated) beside it."""
    path = fusion_path(directory)
    doc = {'format': FUSION_FORMAT, 'format_version': 1,
           'score_thresholds': {m: float(config.score_thresholds[m]) for m in config.modalities},
           'method': config.method, 'iou_threshold': float(config.iou_threshold),
           'max_detections': int(config.max_detections), 'modalities': list(config.modalities),
           'calibration': info or {}}
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(doc, indent=2) + '\n')
    os.replace(tmp, path)
    return path


def load_fusion_config(directory: PathLike):
    """The teachers directory's calibrated :class:`~mmdistill_teachers.labelling.FusionConfig`, or
    None when it has no ``fusion.json`` (teachers trained before calibration existed)."""
    from .labelling import FusionConfig
    path = fusion_path(directory)
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f'{path}: not readable JSON ({exc})') from None
    if not isinstance(doc, dict) or doc.get('format') != FUSION_FORMAT:
        raise ConfigError(f'{path}: not a {FUSION_FORMAT} file')
    try:
        return FusionConfig(score_thresholds=dict(doc['score_thresholds']), method=doc['method'],
                            iou_threshold=float(doc['iou_threshold']), modalities=tuple(doc['modalities']),
                            max_detections=int(doc.get('max_detections', 50)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f'{path}: bad fusion config ({exc})') from None
