"""Teachers for tests of the labelling plumbing (nodes, ``mmdistill label``, the record graph).

Real trained teachers take minutes; an untrained small teacher whose score logits are stretched
(x40) puts a few cells above any threshold, deterministically for a seed, so the fused output is
not empty and every message path carries boxes and attention."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple, Union

import torch

from .detector import MODALITIES, TeacherDetector
from .weights import save_teacher

__all__ = ['sharp_teacher', 'save_sharp_teachers']


def sharp_teacher(modality: str, seed: int = 0, input_size: Tuple[int, int] = (384, 128)) -> TeacherDetector:
    """An untrained teacher (width 4) whose score logits are stretched, so a few cells score high;
    ``input_size`` (W, H): the images it will be given (a simulated bag: its scenario's camera)."""
    torch.manual_seed(seed)
    t = TeacherDetector(modality=modality, input_size=input_size, width=4, fpn_channels=8, head_convs=1,
                        score_threshold=0.1, max_detections=10)
    with torch.no_grad():
        t.head.cls_out.weight.mul_(40)
        t.head.ctr_out.weight.mul_(40)
    return t.eval()


def save_sharp_teachers(directory: Union[str, Path], input_size: Tuple[int, int] = (384, 128)) -> Path:
    """``DIR/<m>.safetensors`` for rgb, depth and thermal (seeds 0, 1, 2): a teachers directory."""
    directory = Path(directory)
    for i, m in enumerate(MODALITIES):
        save_teacher(sharp_teacher(m, seed=i, input_size=input_size), directory / m)
    return directory
