"""Camera geometry and the modalities' failure modes, checked against formulas and physics expectations."""
import numpy as np
import pytest

from mmdistill_sim.camera import PinholeCamera
from mmdistill_sim.scenario import scenario_from_dict
from mmdistill_sim.simulator import Simulator


def one_car(position=20.0, offset=0.0, speed=0.0, engine_on=True, kind='car', **extra):
    data = {'duration_s': 1.0, 'seed': 3, 'road': {'lanes': [{'direction': 'along', 'offset_m': offset}]},
            'traffic': {'vehicles_per_minute': 0,
                        'scripted': [{'kind': kind, 'lane': 0, 'position_m': position, 'speed_mps': speed,
                                      'engine_on': engine_on}]}}
    data.update(extra)
    return Simulator(scenario_from_dict(data))


def test_vehicle_straight_ahead_is_centred():
    sim = one_car(position=20.0)
    f = sim.frame(0)
    assert len(f.gt) == 1
    x1, y1, x2, y2 = f.gt.boxes[0]
    cam, v = sim.scenario.camera, sim.world.vehicles[0]
    assert abs((x1 + x2) / 2 - cam.cx) < 0.5
    # pinhole formula: nearest face at z = 20 - L/2, box spans ground (z = 0) to roof height H
    z_near = 20.0 - v.size[0] / 2
    half_w = cam.fx * (v.size[1] / 2) / z_near
    assert abs((x2 - x1) / 2 - half_w) < 0.5
    assert abs(y2 - (cam.cy + cam.fy * cam.height_m / z_near)) < 0.5
    # the roof is below the camera, so the top edge comes from the far face
    z_top = z_near if v.size[2] > cam.height_m else 20.0 + v.size[0] / 2
    assert abs(y1 - (cam.cy + cam.fy * (cam.height_m - v.size[2]) / z_top)) < 0.5
    assert abs(f.gt.azimuth_deg[0]) < 1e-6 and abs(f.gt.distance_m[0] - 20.0) < 1e-6
    assert f.gt.visible_fraction[0] == 1.0 and not f.gt.occluded[0]


def test_projection_matches_intrinsics_with_pitch():
    sc = scenario_from_dict({'camera': {'pitch_deg': 5.0}})
    cam = PinholeCamera(sc.camera)
    # a point on the optical axis projects to the principal point
    th = np.radians(5.0)
    p = cam.position + 10 * np.array([np.cos(th), 0, -np.sin(th)])
    uv, z = cam.project(p)
    assert np.allclose(uv, [cam.cx, cam.cy]) and abs(z - 10) < 1e-9
    # rays through pixel centres re-project to those pixels
    uv2, _ = cam.project(cam.position + 7.0 * cam.rays[37, 200])
    assert np.allclose(uv2, [200.5, 37.5])


def test_image_types_and_shapes():
    sim = one_car()
    f = sim.frame(0)
    h, w = sim.scenario.camera.height, sim.scenario.camera.width
    assert f.rgb.shape == (h, w, 3) and f.rgb.dtype == np.uint8
    assert f.depth.shape == (h, w) and f.depth.dtype == np.float32
    assert f.thermal.shape == (h, w) and f.thermal.dtype == np.float32
    assert np.isnan(f.depth[:20]).all()                     # sky: no return
    assert 200 < np.nanmedian(f.thermal) < 330


def test_depth_matches_geometry_and_range_limit():
    near = one_car(position=12.0).frame(0)
    x1, y1, x2, y2 = near.gt.boxes[0].astype(int)
    d = near.depth[y1 + 2:y2 - 2, x1 + 2:x2 - 2]
    z_face = 12.0 - one_car(position=12.0).world.vehicles[0].size[0] / 2
    assert abs(np.nanmedian(d) - z_face) < 0.5
    far = one_car(position=80.0).frame(0)                   # beyond the 40 m depth range
    assert far.gt.visible_depth[0] == 0.0
    assert far.gt.visible_thermal[0] > 0.5


def test_occluder_hides_vehicle():
    sim = one_car(position=30.0, occluders=[{'kind': 'wall', 'center_m': [15.0, 0.0], 'size_m': [0.3, 6.0, 3.0]}])
    gt = sim.frame(0).gt
    assert len(gt) == 1 and gt.occluded[0] and gt.visible_fraction[0] == 0.0
    assert gt.visible_rgb[0] == gt.visible_depth[0] == gt.visible_thermal[0] == 0.0


def test_rgb_fails_at_night_thermal_does_not():
    day = one_car(position=35.0, offset=3.5).frame(0).gt
    night = one_car(position=35.0, offset=3.5, time_of_day='night').frame(0).gt
    assert day.visible_rgb[0] > 0.7
    assert night.visible_rgb[0] < 0.5 * day.visible_rgb[0]
    assert night.visible_thermal[0] > 0.5


def test_fog_hurts_rgb_and_depth_more_than_thermal():
    fog = one_car(position=45.0, offset=3.5, weather='fog', environment={'fog_visibility_m': 25.0}).frame(0).gt
    assert fog.visible_rgb[0] < 0.2
    assert fog.visible_depth[0] < 0.05
    assert fog.visible_thermal[0] > 0.5


def test_thermal_misses_cold_parked_vehicle():
    hot = one_car(position=15.0, offset=3.5, engine_on=True, time_of_day='night').frame(0)
    cold = one_car(position=15.0, offset=3.5, engine_on=False, time_of_day='night').frame(0)
    assert hot.gt.visible_thermal[0] > 0.5
    assert cold.gt.visible_thermal[0] < 0.4
    assert not cold.gt.audible[0] and hot.gt.audible[0]
    x1, y1, x2, y2 = hot.gt.boxes[0].astype(int)
    assert hot.thermal[y1:y2, x1:x2].max() > cold.thermal[y1:y2, x1:x2].max() + 20


def test_headlights_visible_at_night():
    f = one_car(position=25.0, offset=3.5, speed=0.0, time_of_day='night').frame(0)
    # car faces +x (away from the camera): tail lights are red
    x1, y1, x2, y2 = f.gt.boxes[0].astype(int)
    patch = f.rgb[y1:y2, x1:x2].astype(int)
    assert (patch[..., 0] - patch[..., 2]).max() > 100


def test_compiled_and_numpy_ray_casting_give_identical_images():
    """The compiled box ray caster (render._cast_box) and vehicle appearance (render._vehicle_appearance)
    and their numpy twins give the same bits: frames of a busy town scene at night (lamps) rendered both
    ways."""
    import dataclasses

    from mmdistill_sim import render
    from mmdistill_sim.scenario import load_scenario
    if render._cast_box is render._cast_box_numpy:
        pytest.skip('numba not available: only the numpy ray caster exists')
    sc = dataclasses.replace(load_scenario('town-night-driving'), duration_s=1.0)
    frames = {}
    saved = render._cast_box, render._vehicle_appearance
    for name, fns in (('compiled', saved), ('numpy', (render._cast_box_numpy, None))):
        render._cast_box, render._vehicle_appearance = fns
        try:
            sim = Simulator(sc)
            frames[name] = [sim.frame(k) for k in (0, 5, 9)]
        finally:
            render._cast_box, render._vehicle_appearance = saved
    for a, b in zip(frames['compiled'], frames['numpy']):
        assert len(a.gt) > 3
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.thermal, b.thermal)
        assert np.array_equal(a.depth, b.depth, equal_nan=True)
        assert a.gt.to_list() == b.gt.to_list()


def test_project_boxes_equals_project_box():
    """The batched projection gives exactly project_box's boxes (None where project_box gives None),
    for boxes in front, straddling the near plane, behind the camera and outside the image."""
    sc = scenario_from_dict({'camera': {'pitch_deg': 4.0}})
    cam = PinholeCamera(sc.camera)
    rng = np.random.default_rng(4)
    lo = rng.uniform([-10, -30, 0], [60, 30, 0.5], (300, 3))
    hi = lo + rng.uniform([0.5, 0.5, 1.0], [6, 3, 4], (300, 3))
    boxes = cam.project_boxes(lo, hi)
    n_none = 0
    for k in range(len(lo)):
        ref = cam.project_box(lo[k], hi[k])
        if ref is None:
            n_none += 1
            assert boxes[k] is None
        else:
            assert np.array_equal(boxes[k], ref)
    assert 0 < n_none < len(lo)
    assert cam.project_boxes(np.zeros((0, 3)), np.zeros((0, 3))) == []
