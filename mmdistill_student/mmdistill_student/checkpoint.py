"""Student checkpoints: a directory with ``model.safetensors`` (state dict; the metadata JSON in
its header) and ``checkpoint.json`` (the same JSON, for people and tools). Never pickle.

Metadata: ``format`` ``mmdistill-student``, ``format_version``, ``config`` (StudentConfig),
``window_mode``, ``channels``, ``sample_rate``, plus free-form ``dataset`` (path, content hash),
``metrics``, ``training`` and ``versions``. Loading trusts the copy inside the safetensors file.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mmdistill_common.errors import ConfigError

from .model import StudentConfig, StudentDetector

__all__ = ['FORMAT', 'FORMAT_VERSION', 'save_checkpoint', 'load_checkpoint', 'read_checkpoint_metadata',
           'check_stream']

FORMAT = 'mmdistill-student'
FORMAT_VERSION = 1
MODEL_FILE = 'model.safetensors'
META_FILE = 'checkpoint.json'
_KEY = 'mmdistill'

PathLike = Union[str, os.PathLike]


def _versions() -> dict:
    import numpy
    return {'python': platform.python_version(), 'torch': torch.__version__, 'numpy': numpy.__version__}


def save_checkpoint(model: StudentDetector, directory: PathLike, info: Optional[dict] = None) -> Path:
    """Write ``model`` into ``directory`` (created); ``info`` (JSON-serialisable) is merged into
    the metadata. Files are written under temporary names and renamed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fe = model.frontend_config
    meta = {'format': FORMAT, 'format_version': FORMAT_VERSION, 'config': model.config.to_dict(),
            'window_mode': fe.mode, 'channels': fe.channels, 'sample_rate': fe.sample_rate,
            'versions': _versions(), 'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    clash = set(info or {}) & {'format', 'format_version', 'config', 'window_mode', 'channels', 'sample_rate'}
    if clash:
        raise ConfigError(f'checkpoint info must not override {sorted(clash)}')
    meta.update(info or {})
    try:
        text = json.dumps(meta, sort_keys=True)
    except TypeError as e:
        raise ConfigError(f'checkpoint info is not JSON-serialisable: {e}') from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / (MODEL_FILE + '.tmp')
    save_file(tensors, str(tmp), metadata={_KEY: text})
    os.replace(tmp, directory / MODEL_FILE)
    tmp = directory / (META_FILE + '.tmp')
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')
    os.replace(tmp, directory / META_FILE)
    return directory


def read_checkpoint_metadata(directory: PathLike) -> dict:
    directory = Path(directory)
    path = directory / MODEL_FILE if directory.is_dir() else directory
    if not path.is_file():
        raise ConfigError(f'student checkpoint not found: {path}')
    try:
        with safe_open(str(path), framework='pt') as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f'{path} is not a readable safetensors file: {e}') from None
    try:
        meta = json.loads(header[_KEY])
    except (KeyError, json.JSONDecodeError):
        raise ConfigError(f'{path} has no valid mmdistill metadata: not a student checkpoint') from None
    if meta.get('format') != FORMAT:
        raise ConfigError(f'{path}: format {meta.get("format")!r}, expected {FORMAT!r}')
    if meta.get('format_version') != FORMAT_VERSION:
        raise ConfigError(f'{path}: checkpoint format version {meta.get("format_version")!r} is not '
                          f'supported (this code reads {FORMAT_VERSION})')
    return meta


def load_checkpoint(directory: PathLike, device: Union[str, torch.device] = 'cpu',
                    geometry: Optional[dict] = None) -> Tuple[StudentDetector, dict]:
    """Rebuild the student from ``directory`` -> ``(model in eval mode, metadata)``; a config or
    tensors that do not fit raise :class:`ConfigError` with one line. ``geometry`` (a calibration,
    see :mod:`.calibration`) replaces the stored array/camera geometry of an acoustic-image
    student: the same network steered for another car's array and camera."""
    directory = Path(directory)
    path = directory / MODEL_FILE if directory.is_dir() else directory
    meta = read_checkpoint_metadata(directory)
    if geometry is not None:
        if meta['config'].get('frontend', {}).get('kind') != 'acoustic_image':
            raise ConfigError(f'{path}: a calibration applies to acoustic-image students only')
        meta = dict(meta, config=dict(meta['config'], frontend=dict(meta['config']['frontend'], geometry=geometry)))
    try:
        model = StudentDetector(StudentConfig.from_dict(meta['config']))
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f'{path}: invalid student config: {e}') from None
    try:
        tensors = load_file(str(path), device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f'{path}: cannot read tensors: {e}') from None
    expected = model.state_dict()
    if set(expected) != set(tensors):
        diff = sorted(set(expected) ^ set(tensors))
        raise ConfigError(f'{path}: tensors do not match the student architecture (e.g. {diff[:3]})')
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ConfigError(f'{path}: tensor {k} has shape {tuple(tensors[k].shape)}, '
                              f'the config needs {tuple(v.shape)}')
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), meta


def check_stream(meta: dict, channels: int, sample_rate: int, window_mode: Optional[str] = None) -> None:
    """Refuse (ConfigError) a checkpoint whose channels / rate / window mode differ from the stream's."""
    if int(meta['channels']) != int(channels) or int(meta['sample_rate']) != int(sample_rate):
        raise ConfigError(f'checkpoint expects {meta["channels"]} channels at {meta["sample_rate"]} Hz, '
                          f'the stream has {channels} channels at {sample_rate} Hz')
    if window_mode is not None and meta['window_mode'] != window_mode:
        raise ConfigError(f'checkpoint was trained on {meta["window_mode"]} windows, '
                          f'{window_mode} requested')
