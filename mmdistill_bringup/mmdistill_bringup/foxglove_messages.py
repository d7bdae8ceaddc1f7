"""ROS-free conversion of the graph's data into Foxglove's own message types.

Foxglove's stock panels read well-known schemas without configuration: the Image panel shows a
``RawImage`` and draws ``ImageAnnotations`` on it, the 3D panel draws a ``SceneUpdate``, the Plot
panel plots any numeric field. So every channel of ``mmdistill view`` carries one of these,
built here from numpy arrays (the form :mod:`mmdistill_common.conversions` gives ROS messages)
and tested without rclpy.

* :func:`box_annotations`: xyxy pixel boxes -> one closed ``LINE_LOOP`` per box (4 corners) and a
  text label each (``#id score`` or ``label score``).
* :func:`raw_image`: ``rgb8`` / ``mono8`` arrays -> ``RawImage``; :func:`compressed_image`: the same
  as JPEG or PNG ``CompressedImage`` (a camera frame is ~10x smaller on the wire as JPEG).
* :func:`heatmap_image`: a 2-D array of energies -> colour-mapped ``rgb8`` ``RawImage``.
* :func:`scene_update`: :class:`~mmdistill_tracking.visualization.MarkerSpec` lists (the RViz
  markers as plain data) -> ``SceneUpdate`` with the same boxes and labels.
* :func:`audio_levels`: per-microphone RMS and peak level in dBFS, a JSON message for plots.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from foxglove.messages import (Color, CompressedImage, ImageAnnotations, LinePrimitive, LinePrimitiveLineType,
                               Point2, Point3, PointsAnnotation, PointsAnnotationType, Pose, Quaternion, RawImage,
                               SceneEntity, SceneEntityDeletion, SceneEntityDeletionType, SceneUpdate,
                               TextAnnotation, TextPrimitive, Timestamp, Vector3)

from mmdistill_tracking.visualization import MarkerSpec, track_color

__all__ = ['timestamp', 'rgba', 'box_annotations', 'box_corners', 'raw_image', 'encode_image', 'compressed_image',
           'heatmap_image', 'scene_update', 'audio_levels', 'audio_levels_schema_bytes', 'AUDIO_LEVELS_SCHEMA',
           'AUDIO_LEVELS_SCHEMA_NAME', 'colormap']

RGBA = Tuple[float, float, float, float]

AUDIO_LEVELS_SCHEMA_NAME = 'mmdistill.AudioLevels'
#: JSON schema of the ``/view/audio_levels`` channel (the Plot panel reads ``.rms_dbfs[k]``)
AUDIO_LEVELS_SCHEMA: Dict = {
    'type': 'object',
    'title': AUDIO_LEVELS_SCHEMA_NAME,
    'properties': {
        'timestamp': {'type': 'object', 'properties': {'sec': {'type': 'integer'}, 'nsec': {'type': 'integer'}}},
        'rms_dbfs': {'type': 'array', 'items': {'type': 'number'},
                     'description': 'RMS level per microphone over the last block, dB re full scale'},
        'peak_dbfs': {'type': 'array', 'items': {'type': 'number'},
                      'description': 'peak level per microphone over the last block, dB re full scale'},
    },
}
_FLOOR_DB = -120.0      # level of digital silence (log of zero)


def timestamp(ns: int) -> Timestamp:
    """Nanoseconds -> Foxglove ``Timestamp``."""
    ns = int(ns)
    return Timestamp(sec=ns // 1_000_000_000, nsec=ns % 1_000_000_000)


def rgba(color: Sequence[float]) -> Color:
    """``(r, g, b[, a])`` in [0, 1] -> ``Color`` (alpha 1 by default)."""
    r, g, b = (float(c) for c in color[:3])
    return Color(r=r, g=g, b=b, a=float(color[3]) if len(color) > 3 else 1.0)


def box_corners(box: Sequence[float]) -> List[Tuple[float, float]]:
    """xyxy -> the four corners clockwise from top-left (the points of a LINE_LOOP)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]


def _label(ident: str, label: str, score: Optional[float]) -> str:
    head = f'#{ident}' if ident else label
    return f'{head} {score:.2f}'.strip() if score is not None else head


def box_annotations(boxes, stamp_ns: int, ids: Optional[Sequence[str]] = None,
                    scores: Optional[Sequence[float]] = None, labels: Optional[Sequence[str]] = None,
                    color: Optional[RGBA] = None, thickness: float = 1.5, font_size: float = 10.0,
                    show_scores: bool = True) -> ImageAnnotations:
    """Boxes (N, 4) xyxy pixels -> ``ImageAnnotations``: per box a LINE_LOOP of its 4 corners (in
    the box order) and a text at its top-left corner. ``color``: one colour for all boxes;
    ``None`` colours each box by its id (:func:`~mmdistill_tracking.visualization.track_color`,
    the colours of ``/tracking/image``), so a track keeps its colour across frames."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(b)
    ids = [str(i) for i in ids] if ids is not None else [''] * n
    labels = list(labels) if labels is not None else [''] * n
    if len(ids) != n or len(labels) != n or (scores is not None and len(scores) != n):
        raise ValueError(f'{n} boxes but {len(ids)} ids, {len(labels)} labels and '
                         f'{"no" if scores is None else len(scores)} scores')
    ts = timestamp(stamp_ns)
    points, texts = [], []
    for k, box in enumerate(b):
        c = rgba(color) if color is not None else rgba([v / 255.0 for v in track_color(ids[k] or k)])
        points.append(PointsAnnotation(timestamp=ts, type=PointsAnnotationType.LineLoop, outline_color=c,
                                       thickness=thickness,
                                       points=[Point2(x=x, y=y) for x, y in box_corners(box)]))
        score = float(scores[k]) if scores is not None and show_scores else None
        texts.append(TextAnnotation(timestamp=ts, position=Point2(x=float(box[0]), y=float(box[1])),
                                    text=_label(ids[k], labels[k], score), font_size=font_size, text_color=c,
                                    background_color=Color(r=0.0, g=0.0, b=0.0, a=0.5)))
    return ImageAnnotations(timestamp=ts, points=points, texts=texts)


def raw_image(image: np.ndarray, stamp_ns: int, frame_id: str = 'camera') -> RawImage:
    """(H, W, 3) uint8 RGB or (H, W) uint8 -> ``RawImage`` (``rgb8`` / ``mono8``, no padding)."""
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f'expected (H, W, 3) or (H, W) uint8, got {img.shape} {img.dtype}')
    h, w = img.shape[:2]
    enc, step = ('rgb8', 3 * w) if img.ndim == 3 else ('mono8', w)
    return RawImage(timestamp=timestamp(stamp_ns), frame_id=frame_id, width=w, height=h, encoding=enc,
                    step=step, data=img.tobytes())


def encode_image(image: np.ndarray, fmt: str = 'jpeg', quality: int = 85) -> bytes:
    """(H, W, 3) uint8 RGB or (H, W) uint8 -> JPEG or PNG bytes."""
    import cv2
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f'expected (H, W, 3) or (H, W) uint8, got {img.shape} {img.dtype}')
    if fmt not in ('jpeg', 'png'):
        raise ValueError(f'format must be jpeg or png, got {fmt!r}')
    bgr = img[..., ::-1] if img.ndim == 3 else img
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == 'jpeg' else []
    ok, data = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', bgr, params)
    if not ok:
        raise ValueError('image encoding failed')
    return data.tobytes()


def compressed_image(image: np.ndarray, stamp_ns: int, frame_id: str = 'camera', fmt: str = 'jpeg',
                     quality: int = 85) -> CompressedImage:
    """(H, W, 3) uint8 RGB or (H, W) uint8 -> ``CompressedImage`` (``jpeg`` or ``png``)."""
    return CompressedImage(timestamp=timestamp(stamp_ns), frame_id=frame_id, data=encode_image(image, fmt, quality),
                           format=fmt)


_COLORMAPS: Dict[str, np.ndarray] = {}


def colormap(name: str = 'inferno') -> np.ndarray:
    """A (256, 3) uint8 lookup table of a matplotlib colormap (built once per name)."""
    if name not in _COLORMAPS:
        from matplotlib import colormaps
        _COLORMAPS[name] = (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)
    return _COLORMAPS[name]


def heatmap_image(values: np.ndarray, stamp_ns: int, vmin: Optional[float] = None, vmax: Optional[float] = None,
                  scale: Tuple[int, int] = (1, 1), cmap: str = 'inferno', frame_id: str = 'acoustic') -> RawImage:
    """(rows, cols) energies -> colour-mapped ``rgb8`` ``RawImage``, each cell ``scale`` = (sy, sx)
    pixels. ``vmin``/``vmax`` default to the array's range; NaN cells are black."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f'expected a non-empty 2-D array, got shape {v.shape}')
    finite = np.isfinite(v)
    lo = float(np.min(v[finite])) if vmin is None and finite.any() else float(vmin or 0.0)
    hi = float(np.max(v[finite])) if vmax is None and finite.any() else float(vmax if vmax is not None else 1.0)
    idx = np.clip((v - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255)
    img = colormap(cmap)[np.where(finite, idx, 0).astype(np.uint8)]
    img[~finite] = 0
    sy, sx = scale
    if sy > 1 or sx > 1:
        img = np.repeat(np.repeat(img, sy, axis=0), sx, axis=1)
    return raw_image(img, stamp_ns, frame_id)


def _point3(p: Sequence[float]) -> Point3:
    return Point3(x=float(p[0]), y=float(p[1]), z=float(p[2]))


_IDENTITY = Pose(position=Vector3(x=0.0, y=0.0, z=0.0), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))


def scene_update(markers: Sequence[MarkerSpec], stamp_ns: int, frame_id: str = 'image_plane') -> SceneUpdate:
    """RViz markers as :class:`MarkerSpec` -> ``SceneUpdate``. ``delete_all`` becomes a deletion of
    all entities (so ended tracks disappear, as in RViz); ``line_strip`` and ``text`` markers become
    one entity each, id ``<ns>/<id>``, with a ``LinePrimitive`` or a billboard ``TextPrimitive``
    (text height = the marker scale, in metres)."""
    ts = timestamp(stamp_ns)
    deletions, entities = [], []
    for m in markers:
        if m.kind == 'delete_all':
            deletions.append(SceneEntityDeletion(timestamp=ts, type=SceneEntityDeletionType.All))
            continue
        common = dict(timestamp=ts, frame_id=frame_id, id=f'{m.ns}/{m.id}')
        if m.kind == 'line_strip':
            line = LinePrimitive(type=LinePrimitiveLineType.LineStrip, pose=_IDENTITY, thickness=float(m.scale),
                                 scale_invariant=False, points=[_point3(p) for p in m.points], color=rgba(m.color))
            entities.append(SceneEntity(**common, lines=[line]))
        elif m.kind == 'text':
            pose = Pose(position=Vector3(x=float(m.position[0]), y=float(m.position[1]), z=float(m.position[2])),
                        orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))
            entities.append(SceneEntity(**common, texts=[TextPrimitive(pose=pose, billboard=True, font_size=float(m.scale),
                                                                       color=rgba(m.color), text=m.text)]))
        else:
            raise ValueError(f'unknown marker kind {m.kind!r}')
    return SceneUpdate(deletions=deletions, entities=entities)


def audio_levels(samples: np.ndarray, stamp_ns: int, full_scale: float = 32768.0) -> Dict:
    """(frames, channels) samples (int16 counts, or floats with ``full_scale=1``) -> the JSON message
    of ``/view/audio_levels``: RMS and peak level per microphone in dBFS (silence: -120)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f'expected (frames, channels) samples, got shape {x.shape}')
    x = x / full_scale
    with np.errstate(divide='ignore'):
        rms = 10.0 * np.log10(np.mean(x * x, axis=0))
        peak = 20.0 * np.log10(np.max(np.abs(x), axis=0))
    rms, peak = (np.maximum(v, _FLOOR_DB) for v in (rms, peak))
    ns = int(stamp_ns)
    return {'timestamp': {'sec': ns // 1_000_000_000, 'nsec': ns % 1_000_000_000},
            'rms_dbfs': [round(float(v), 2) for v in rms], 'peak_dbfs': [round(float(v), 2) for v in peak]}


def audio_levels_schema_bytes() -> bytes:
    """The JSON schema of :data:`AUDIO_LEVELS_SCHEMA` as bytes (a ``foxglove.Schema``'s data)."""
    return json.dumps(AUDIO_LEVELS_SCHEMA).encode()
