"""A still of the Foxglove layout rendered with matplotlib from an MCAP file of ``mmdistill view``.

Where the Foxglove app cannot run (a headless machine, a README), this draws the shipped
layout's four panels from the same channels, decoded with the schemas stored in the file:
the camera with the box channels, the acoustic bearing-time map, the tracking scene and the
microphone levels, at bag time ``--time`` (seconds from the first message).

    mmdistill view --bag DRIVE --checkpoint CKPT --mcap view.mcap
    python -m mmdistill_bringup.foxglove_preview view.mcap docs/foxglove-view.png --time 4
"""
from __future__ import annotations

import argparse
import base64
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .foxglove_client import decoder
from .foxglove_view import ACOUSTIC, CAMERA, LEVELS, PSEUDO, SCENE, STUDENT, TRACKS, TRUTH

__all__ = ['read_mcap', 'render', 'main']

Messages = Dict[str, List[Tuple[int, object]]]


def read_mcap(path) -> Messages:
    """Every message of an MCAP file, decoded with its schema: topic -> [(log time, message)]."""
    from mcap.reader import make_reader
    out: Messages = {}
    decoders = {}
    with open(path, 'rb') as f:
        for schema, channel, message in make_reader(f).iter_messages(log_time_order=True):
            if channel.id not in decoders:
                decoders[channel.id] = decoder({'encoding': channel.message_encoding, 'schemaName': schema.name,
                                                'schema': base64.b64encode(schema.data).decode()})
            out.setdefault(channel.topic, []).append((message.log_time, decoders[channel.id](message.data)))
    return out


def _at(msgs: Messages, topic: str, t: int):
    """The last message of ``topic`` logged at or before ``t`` (None if none)."""
    best = None
    for log_time, m in msgs.get(topic, []):
        if log_time > t:
            break
        best = m
    return best


def _image(msg) -> np.ndarray:
    import cv2
    if hasattr(msg, 'format'):
        return cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step // 3, 3)[:, :msg.width]


def render(msgs: Messages, out, time_s: float, title: str = '') -> None:
    """Draw the four panels at ``time_s`` seconds after the first message into ``out`` (PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    t0 = min(v[0][0] for v in msgs.values() if v)
    t = t0 + int(time_s * 1e9)
    fig = plt.figure(figsize=(13, 6.5), facecolor='#1e1e24')
    grid = fig.add_gridspec(2, 2, width_ratios=(2, 1), height_ratios=(2, 1.2), wspace=0.15, hspace=0.3)
    style = dict(color='w', fontsize=9, loc='left')

    ax = fig.add_subplot(grid[0, 0])
    cam = _at(msgs, CAMERA, t)
    if cam is not None:
        ax.imshow(_image(cam))
    for topic in (TRUTH, PSEUDO, STUDENT, TRACKS):
        ann = _at(msgs, topic, t)
        if ann is None:
            continue
        for p, txt in zip(ann.points, ann.texts):
            c = p.outline_color
            xs = [q.x for q in p.points] + [p.points[0].x]
            ys = [q.y for q in p.points] + [p.points[0].y]
            ax.plot(xs, ys, color=(c.r, c.g, c.b, c.a), lw=1.2)
            ax.text(txt.position.x, txt.position.y - 2, txt.text, color=(c.r, c.g, c.b), fontsize=6)
    ax.set_title('/view/camera + ' + ', '.join(s for s in (TRUTH, STUDENT, TRACKS) if s in msgs), **style)
    ax.axis('off')

    ax = fig.add_subplot(grid[1, 0])
    heat = _at(msgs, ACOUSTIC, t)
    if heat is not None:
        ax.imshow(_image(heat), aspect='auto')
    ax.set_title(f'{ACOUSTIC}: SRP-PHAT per image column, newest row on top (3 s)', **style)
    ax.axis('off')

    ax = fig.add_subplot(grid[0, 1], facecolor='#2a2a32')
    scene = _at(msgs, SCENE, t)
    if scene is not None:
        for e in scene.entities:
            for line in e.lines:
                ax.plot([p.x for p in line.points], [p.y for p in line.points],
                        color=(line.color.r, line.color.g, line.color.b))
            for txt in e.texts:
                ax.text(txt.pose.position.x, txt.pose.position.y, txt.text, fontsize=7,
                        color=(txt.color.r, txt.color.g, txt.color.b))
    ax.set_title(f'{SCENE} (3D panel, image_plane from above)', **style)
    if cam is not None:                          # the markers' default 0.01 m per pixel
        h, w = _image(cam).shape[:2]
        ax.set_xlim(0, w * 0.01)
        ax.set_ylim(-h * 0.01, 0)
    ax.set_aspect('equal')
    ax.tick_params(colors='w', labelsize=7)

    ax = fig.add_subplot(grid[1, 1], facecolor='#2a2a32')
    levels = [(lt, m) for lt, m in msgs.get(LEVELS, []) if lt <= t]
    if levels:
        ts = np.array([(lt - t0) * 1e-9 for lt, _ in levels])
        db = np.array([m['rms_dbfs'] for _, m in levels])
        for k in range(db.shape[1]):
            ax.plot(ts, db[:, k], lw=0.8, label=f'mic {k}')
        ax.legend(fontsize=5, ncol=4, loc='lower left')
    ax.set_title(f'{LEVELS}.rms_dbfs[k] (Plot panel)', **style)
    ax.tick_params(colors='w', labelsize=7)
    if title:
        fig.suptitle(title, color='w', fontsize=10)
    fig.savefig(out, dpi=110, facecolor=fig.get_facecolor())
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog='python -m mmdistill_bringup.foxglove_preview', description=__doc__.split('\n')[0])
    p.add_argument('mcap', help='MCAP written by mmdistill view --mcap')
    p.add_argument('png', help='image to write')
    p.add_argument('--time', type=float, default=3.0, help='seconds after the first message (default 3)')
    p.add_argument('--title', default='', help='figure title')
    a = p.parse_args(argv)
    msgs = read_mcap(a.mcap)
    if CAMERA not in msgs:
        print(f'foxglove_preview: error: {a.mcap} has no {CAMERA} messages', file=sys.stderr)
        return 2
    render(msgs, a.png, a.time, a.title)
    return 0


if __name__ == '__main__':
    sys.exit(main())
