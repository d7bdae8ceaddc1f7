"""ROS-free drawing of tracks: an annotated image and RViz markers as plain data.

``tracking_node`` converts the results to ``sensor_msgs/Image`` and
``visualization_msgs/MarkerArray``; tests and offline reports use them directly.

* :func:`draw_tracks`: boxes with track ids on a dark camera-sized canvas (the student has no
  camera image to draw on) or on any RGB background of that size.
* :func:`track_markers`: one ``DELETEALL`` first (so tracks that ended disappear), then per track
  a closed ``LINE_STRIP`` box and a text label with the id, in an *image-plane frame*: pixel
  ``(u, v)`` maps to ``(u * scale, -v * scale, 0)`` metres, so the image appears upright when
  viewed from above (+z) in RViz, ``scale`` metres per pixel.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['BACKGROUND', 'MarkerSpec', 'track_color', 'clip_boxes', 'draw_tracks', 'pixel_to_plane',
           'track_markers']

BACKGROUND = (24, 26, 32)     # dark grey-blue canvas


def track_color(track_id) -> Tuple[int, int, int]:
    """A bright colour per id, stable across frames and runs (golden-ratio hue steps)."""
    try:
        k = int(track_id)
    except (TypeError, ValueError):
        k = sum(map(ord, str(track_id)))
    r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def clip_boxes(boxes, width: int, height: int) -> np.ndarray:
    """xyxy boxes clipped to the image ``[0, width] x [0, height]``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b


def draw_tracks(boxes, ids: Sequence, scores: Optional[Sequence[float]] = None, width: int = 384,
                height: int = 128, background: Optional[np.ndarray] = None, thickness: int = 1) -> np.ndarray:
    """Draw xyxy pixel ``boxes`` labelled ``#id`` (and score) -> ``(height, width, 3)`` uint8 RGB.

    ``background``: an RGB image of that size to draw on (copied); default a dark canvas.
    Boxes are clipped to the image; a box entirely outside leaves it unchanged."""
    import cv2

    if background is not None:
        img = np.array(background, dtype=np.uint8, copy=True)
        if img.shape != (height, width, 3):
            raise ValueError(f'background must be ({height}, {width}, 3) uint8, got {img.shape}')
    else:
        img = np.empty((height, width, 3), np.uint8)
        img[:] = BACKGROUND
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ids = list(ids)
    if len(ids) != len(b):
        raise ValueError(f'{len(b)} boxes but {len(ids)} ids')
    if scores is not None and len(scores) != len(b):
        raise ValueError(f'{len(b)} boxes but {len(scores)} scores')
    font, fscale = cv2.FONT_HERSHEY_SIMPLEX, 0.35
    for k, (box, ident) in enumerate(zip(b, ids)):
        if not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
            continue
        x1, y1, x2, y2 = np.round(clip_boxes(box, width - 1, height - 1)[0]).astype(int)
        color = track_color(ident)
        cv2.rectangle(img, (int(x1), int(y1)), (int(x2), int(y2)), color, thickness)
        text = f'#{ident}' + (f' {float(scores[k]):.2f}' if scores is not None else '')
        (tw, th), base = cv2.getTextSize(text, font, fscale, 1)
        ty = int(y1) - 2 if y1 - th - 2 >= 0 else int(y1) + th + 2      # above the box, else inside
        cv2.putText(img, text, (int(x1) + 1, ty), font, fscale, color, 1, cv2.LINE_AA)
    return img


@dataclass
class MarkerSpec:
    """One RViz marker as plain data. ``kind``: ``delete_all``, ``line_strip`` or ``text``;
    ``points``/``position`` in metres of the image-plane frame; ``color`` RGBA in [0, 1];
    ``scale``: line width (line_strip) or text height (text), metres."""
    kind: str
    ns: str = ''
    id: int = 0
    points: List[Tuple[float, float, float]] = field(default_factory=list)
    position: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    color: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    scale: float = 0.0
    text: str = ''


def pixel_to_plane(u: float, v: float, scale: float) -> Tuple[float, float, float]:
    """Pixel ``(u, v)`` -> image-plane frame ``(u * scale, -v * scale, 0)`` metres."""
    return (float(u) * scale, -float(v) * scale, 0.0)


def track_markers(boxes, ids: Sequence, scale: float = 0.01, line_px: float = 2.0,
                  text_px: float = 10.0) -> List[MarkerSpec]:
    """``[delete_all, (box line_strip, id text) per track]`` for xyxy pixel boxes."""
    if not scale > 0:
        raise ValueError(f'scale must be > 0, got {scale}')
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ids = list(ids)
    if len(ids) != len(b):
        raise ValueError(f'{len(b)} boxes but {len(ids)} ids')
    out = [MarkerSpec('delete_all')]
    for (x1, y1, x2, y2), ident in zip(b, ids):
        r, g, bl = (c / 255.0 for c in track_color(ident))
        color = (r, g, bl, 1.0)
        try:
            mid = int(ident)
        except (TypeError, ValueError):
            mid = sum(map(ord, str(ident)))
        corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)]
        out.append(MarkerSpec('line_strip', 'tracks', mid, [pixel_to_plane(u, v, scale) for u, v in corners],
                              color=color, scale=line_px * scale))
        out.append(MarkerSpec('text', 'track_ids', mid, position=pixel_to_plane(x1, y1 - text_px, scale),
                              color=color, scale=text_px * scale, text=f'#{ident}'))
    return out
