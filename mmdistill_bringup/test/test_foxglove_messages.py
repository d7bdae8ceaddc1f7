"""Foxglove message conversion (no rclpy): decoded with the schema each message type advertises."""
import base64
import json

import numpy as np
import pytest

from mmdistill_bringup import foxglove_messages as F
from mmdistill_bringup.foxglove_client import decoder
from mmdistill_tracking.visualization import track_color, track_markers


def decode(msg):
    """Encode a Foxglove message and decode it with its own schema, as the app does."""
    schema = type(msg).get_schema()
    channel = {'encoding': 'protobuf', 'schemaName': schema.name, 'schema': base64.b64encode(schema.data).decode()}
    return decoder(channel)(msg.encode())


def test_box_annotations_are_the_boxes():
    boxes = [[10.5, 20.0, 60.25, 70.0], [0, 0, 5, 5]]
    ann = decode(F.box_annotations(boxes, 3 * 10**9 + 7, ids=['4', '9'], scores=[0.5, 0.25]))
    assert ann.timestamp.seconds == 3 and ann.timestamp.nanos == 7
    assert len(ann.points) == 2 and len(ann.texts) == 2
    for p, b in zip(ann.points, boxes):
        assert [(q.x, q.y) for q in p.points] == F.box_corners(b)
        assert p.type == 2                                                   # LINE_LOOP
    assert [t.text for t in ann.texts] == ['#4 0.50', '#9 0.25']
    r, g, b = track_color('4')                                               # the tracking image's colours
    assert ann.points[0].outline_color.r == pytest.approx(r / 255) and ann.points[0].outline_color.g == pytest.approx(g / 255)


def test_box_annotations_fixed_colour_labels_and_empty():
    ann = decode(F.box_annotations([[1, 2, 3, 4]], 0, labels=['car'], scores=[0.9], color=(0, 1, 0)))
    assert ann.texts[0].text == 'car 0.90' and ann.points[0].outline_color.g == 1.0
    assert len(decode(F.box_annotations(np.zeros((0, 4)), 0)).points) == 0
    with pytest.raises(ValueError):
        F.box_annotations([[1, 2, 3, 4]], 0, ids=['1', '2'])


def test_images():
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    raw = decode(F.raw_image(img, 5))
    assert (raw.width, raw.height, raw.encoding, raw.step) == (5, 4, 'rgb8', 15) and raw.data == img.tobytes()
    assert decode(F.raw_image(img[..., 0], 5)).encoding == 'mono8'
    import cv2
    png = decode(F.compressed_image(img, 5, fmt='png'))
    assert png.format == 'png'
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1], img)
    with pytest.raises(ValueError):
        F.raw_image(img.astype(np.float32), 0)


def test_heatmap_scales_and_maps_colours():
    v = np.array([[0.0, 1.0], [np.nan, 0.5]])
    heat = decode(F.heatmap_image(v, 0, vmin=0.0, vmax=1.0, scale=(2, 3)))
    assert (heat.width, heat.height, heat.encoding) == (6, 4, 'rgb8')
    px = np.frombuffer(heat.data, np.uint8).reshape(4, 6, 3)
    lut = F.colormap('inferno')
    assert (px[0, 0] == lut[0]).all() and (px[1, 5] == lut[255]).all() and (px[3, 0] == 0).all()
    assert (px[2, 3] == lut[127]).all()


def test_scene_update_mirrors_the_markers():
    specs = track_markers([[10, 20, 50, 60]], ['3'], scale=0.01)
    scene = decode(F.scene_update(specs, 10**9, 'image_plane'))
    assert len(scene.deletions) == 1 and scene.deletions[0].type == 1      # ALL
    by_id = {e.id: e for e in scene.entities}
    assert set(by_id) == {'tracks/3', 'track_ids/3'}
    line = by_id['tracks/3'].lines[0]
    np.testing.assert_allclose([(p.x, p.y, p.z) for p in line.points], specs[1].points)
    assert by_id['track_ids/3'].texts[0].text == '#3' and by_id['track_ids/3'].frame_id == 'image_plane'


def test_audio_levels():
    x = np.zeros((100, 3), np.int16)
    x[:, 0] = 16384                                                          # half scale: -6 dB
    x[::2, 1] = 32767
    lv = F.audio_levels(x, 2 * 10**9 + 1)
    assert lv['timestamp'] == {'sec': 2, 'nsec': 1}
    assert lv['rms_dbfs'][0] == pytest.approx(-6.02, abs=0.01) and lv['peak_dbfs'][0] == pytest.approx(-6.02, abs=0.01)
    assert lv['rms_dbfs'][1] == pytest.approx(-3.01, abs=0.01) and lv['rms_dbfs'][2] == -120.0
    schema = json.loads(F.audio_levels_schema_bytes())
    assert set(lv) == set(schema['properties'])
