"""Array-to-camera calibration (the acoustic image's geometry) as a JSON file.

Why a file: on a real car the microphone positions and the camera model are measured once and
must reach the dataset builder and ``student_node`` unchanged; the simulator writes the same
structure from its scenario (``dataset_build.scenario_geometry``).

Format (ego frame: x forward, y left, z up; metres and pixels)::

    {"mic_positions_m": [[x, y, z], ...],
     "camera": {"width": 768, "height": 256, "fx": 384, "fy": 384, "cx": 384, "cy": 128,
                "x_m": 0.0, "height_m": 1.5, "pitch_deg": 0.0},
     "speed_of_sound_mps": 343.0}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from mmdistill_common.errors import ConfigError

from .acoustic_image import validate_geometry

__all__ = ['load_geometry']


def load_geometry(path: Union[str, Path], channels: Optional[int] = None) -> dict:
    """Read and validate a calibration file; ``channels`` checks the microphone count."""
    p = Path(path)
    try:
        g = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f'calibration file {p} does not exist') from None
    except (OSError, ValueError) as e:
        raise ConfigError(f'calibration file {p}: not readable JSON ({e})') from None
    if not isinstance(g, dict) or 'mic_positions_m' not in g:
        raise ConfigError(f'calibration file {p}: expected an object with mic_positions_m and camera')
    n = channels if channels is not None else len(g['mic_positions_m']) if isinstance(g['mic_positions_m'], list) else -1
    try:
        validate_geometry(g, n)
    except ConfigError as e:
        raise ConfigError(f'calibration file {p}: {e}') from None
    return g
