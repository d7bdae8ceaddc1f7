"""The Foxglove layout shipped as ``config/foxglove_layout.json``, built with foxglove-sdk's own
layout types (``foxglove.layouts``) so that its JSON is what the app expects.

Left: the camera (or the dark canvas) with every box channel as an annotation layer (student,
tracks, ground truth, pseudo-labels, teachers; toggle them in the panel's settings), and below
it the acoustic bearing-time heat map (columns aligned with the camera's). Right: the tracking
markers in the 3D panel (image-plane frame, seen from above) and the per-microphone RMS level.

Regenerate after changing the channels: ``python -m mmdistill_bringup.foxglove_layout > \
mmdistill_bringup/config/foxglove_layout.json`` (a test compares the file with this module).
"""
from __future__ import annotations

import json

import foxglove.layouts as fl

from .foxglove_view import ACOUSTIC, CAMERA, LEVELS, PSEUDO, SCENE, STUDENT, TRACKS, TRUTH, teacher_channel

__all__ = ['layout', 'layout_json', 'FILE_NAME']

FILE_NAME = 'foxglove_layout.json'
MICROPHONES = 8


def layout() -> fl.Layout:
    """The layout of ``mmdistill view``."""
    annotations = {t: fl.ImageAnnotationSettings(visible=True) for t in (STUDENT, TRACKS, TRUTH, PSEUDO)}
    annotations.update({teacher_channel(m): fl.ImageAnnotationSettings(visible=False)
                        for m in ('rgb', 'depth', 'thermal')})
    camera = fl.ImagePanel(title='camera + boxes', config=fl.ImageConfig(
        image_mode=fl.ImageModeConfig(image_topic=CAMERA, annotations=annotations)))
    acoustic = fl.ImagePanel(title='acoustic bearing-time map (SRP-PHAT, newest on top)',
                             config=fl.ImageConfig(image_mode=fl.ImageModeConfig(image_topic=ACOUSTIC)))
    scene = fl.ThreeDeePanel(title='tracks (image plane)', config=fl.ThreeDeeConfig(
        follow_tf='image_plane', topics={SCENE: fl.BaseRendererSceneUpdateTopicSettings(visible=True)}))
    levels = fl.PlotPanel(title='microphone RMS level (dBFS)', config=fl.PlotConfig(
        paths=[fl.PlotSeries(value=f'{LEVELS}.rms_dbfs[{k}]', label=f'mic {k}') for k in range(MICROPHONES)],
        show_legend=True, min_y_value=-90.0, max_y_value=0.0))
    return fl.Layout(content=fl.SplitContainer(direction='row', items=[
        fl.SplitItem(proportion=2, content=fl.SplitContainer(direction='column', items=[
            fl.SplitItem(proportion=2, content=camera), fl.SplitItem(proportion=1, content=acoustic)])),
        fl.SplitItem(proportion=1, content=fl.SplitContainer(direction='column', items=[
            fl.SplitItem(proportion=1, content=scene), fl.SplitItem(proportion=1, content=levels)])),
    ]))


def layout_json() -> str:
    """The layout as the indented JSON of the shipped file."""
    return json.dumps(json.loads(layout().to_json()), indent=2) + '\n'


if __name__ == '__main__':
    print(layout_json(), end='')
