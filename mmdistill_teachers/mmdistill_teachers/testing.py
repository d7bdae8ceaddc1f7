"""Teachers for tests of the labelling plumbing (nodes, ``mmdistill label``, the record graph).

Real trained teachers take minutes; an untrained small teacher whose score logits are stretched
(x40) puts a few cells above any threshold, deterministically for a seed, so the fused output is
not empty and every message path carries boxes and attention."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from .detector import MODALITIES, TeacherDetector
from .weights import save_teacher

__all__ = ['sharp_teacher', 'save_sharp_teachers']


def sharp_teacher(modality: str, seed: int = 0) -> TeacherDetector:
    """An untrained teacher (width 4) whose score logits are stretched, so a few cells score high."""
    torch.manual_seed(seed)
    t = TeacherDetector(modality=modality, width=4, fpn_channels=8, head_convs=1, score_threshold=0.1,
                        max_detections=10)
    with torch.no_grad():
        t.head.cls_out.weight.mul_(40)
        t.head.ctr_out.weight.mul_(40)
    return t.eval()


def save_sharp_teachers(directory: Union[str, Path]) -> Path:
    """``DIR/<m>.safetensors`` for rgb, depth and thermal (seeds 0, 1, 2): a teachers directory."""
    directory = Path(directory)
    for i, m in enumerate(MODALITIES):
        save_teacher(sharp_teacher(m, seed=i), directory / m)
    return directory
