"""Track drawing and markers (ROS-free), plus the Marker message conversion of tracking_node."""
import numpy as np
import pytest

from mmdistill_tracking.visualization import (BACKGROUND, clip_boxes, draw_tracks, pixel_to_plane, track_color,
                                              track_markers)


def test_colors_are_stable_and_distinct():
    assert track_color(3) == track_color('3') == track_color(3)
    colors = {track_color(k) for k in range(1, 9)}
    assert len(colors) == 8
    assert all(max(c) >= 200 for c in colors)          # bright on the dark canvas


def test_draw_tracks_outlines_boxes_on_dark_canvas():
    img = draw_tracks([[10, 20, 60, 70], [200, 30, 300, 100]], ids=[1, 2], scores=[0.9, 0.5])
    assert img.shape == (128, 384, 3) and img.dtype == np.uint8
    bg = np.array(BACKGROUND, np.uint8)
    c1 = np.array(track_color(1), np.uint8)
    # the outline carries the track's colour; the inside and far away stay background
    assert np.array_equal(img[45, 10], c1) and np.array_equal(img[70, 35], c1)
    assert np.array_equal(img[45, 35], bg) and np.array_equal(img[120, 380], bg)
    assert np.array_equal(img[60, 300], np.array(track_color(2), np.uint8))
    # the id label is drawn (pixels in the track's hue above box 2's top edge)
    label = img[18:29, 200:240].reshape(-1, 3)
    assert np.any(np.all(label != bg, axis=1))


def test_draw_tracks_clips_and_skips():
    img = draw_tracks([[-50, -10, 40, 40], [500, 10, 600, 50], [np.nan, 0, 1, 1]], ids=[4, 5, 6])
    c4 = np.array(track_color(4), np.uint8)
    assert np.array_equal(img[20, 40], c4) and np.array_equal(img[40, 20], c4)   # clipped box, inside edges
    assert not np.any(np.all(img == np.array(track_color(5), np.uint8), axis=2))  # off-image: not drawn
    bgimg = np.full((128, 384, 3), 7, np.uint8)
    out = draw_tracks(np.zeros((0, 4)), [], background=bgimg)
    assert np.array_equal(out, bgimg) and out is not bgimg
    with pytest.raises(ValueError):
        draw_tracks([[0, 0, 1, 1]], ids=[1, 2])
    with pytest.raises(ValueError):
        draw_tracks([], [], background=np.zeros((10, 10, 3), np.uint8))


def test_clip_boxes():
    np.testing.assert_array_equal(clip_boxes([[-5, -5, 500, 60]], 384, 128), [[0, 0, 384, 60]])


def test_track_markers():
    specs = track_markers([[10, 20, 60, 70]], ids=[7], scale=0.01)
    assert [s.kind for s in specs] == ['delete_all', 'line_strip', 'text']
    box, text = specs[1], specs[2]
    assert box.id == text.id == 7 and text.text == '#7'
    assert len(box.points) == 5 and box.points[0] == box.points[-1]             # closed
    np.testing.assert_allclose(box.points[2], pixel_to_plane(60, 70, 0.01))
    np.testing.assert_allclose(box.points[2], (0.6, -0.7, 0.0))
    assert box.color[:3] == pytest.approx(tuple(c / 255 for c in track_color(7)))
    assert box.scale == pytest.approx(0.02) and text.scale == pytest.approx(0.1)
    assert [s.kind for s in track_markers(np.zeros((0, 4)), [])] == ['delete_all']
    with pytest.raises(ValueError):
        track_markers([[0, 0, 1, 1]], ids=[])


def test_marker_messages():
    from visualization_msgs.msg import Marker

    from mmdistill_common.conversions import make_header
    from mmdistill_tracking.tracking_node import marker_msg
    header = make_header(5, 'image_plane')
    msgs = [marker_msg(s, header) for s in track_markers([[10, 20, 60, 70]], ids=[3])]
    assert msgs[0].action == Marker.DELETEALL
    assert msgs[1].type == Marker.LINE_STRIP and len(msgs[1].points) == 5 and msgs[1].scale.x > 0
    assert msgs[1].points[1].x == pytest.approx(0.6) and msgs[1].points[1].y == pytest.approx(-0.2)
    assert msgs[2].type == Marker.TEXT_VIEW_FACING and msgs[2].text == '#3' and msgs[2].scale.z > 0
    assert all(m.header.frame_id == 'image_plane' for m in msgs)
    assert msgs[1].color.a == 1.0 and msgs[1].pose.orientation.w == 1.0
