"""Classical SRP-PHAT / MUSIC baseline: camera geometry, synthetic plane waves, a simulated drive."""
import numpy as np
import pytest

from mmdistill_common.errors import ConfigError, InputError
from mmdistill_sim.camera import PinholeCamera
from mmdistill_sim.scenario import scenario_from_dict
from mmdistill_sim.simulator import Simulator
from mmdistill_training.baselines import ClassicalBaseline, camera_dict

FS = 44100
C = 343.0
SC = scenario_from_dict({})
MICS = SC.mic_array.positions()
CAM = camera_dict(SC.camera)          # the scenario camera (90 deg horizontal FOV)


def plane_waves(azimuths_deg, gains, n=FS // 2, seed=0, noise=0.05):
    """Far-field white-noise sources at the given azimuths (left positive), exact fractional delays."""
    rng = np.random.default_rng(seed)
    f = np.fft.rfftfreq(n, 1 / FS)
    out = np.zeros((len(MICS), n))
    centred = MICS - MICS.mean(0)
    for az, g in zip(azimuths_deg, gains):
        a = np.radians(az)
        u = np.array([np.cos(a), np.sin(a), 0.0])
        tau = -(centred @ u) / C                   # a mic closer to the source hears it earlier
        S = np.fft.rfft(rng.standard_normal(n))
        out += g * np.fft.irfft(S[None] * np.exp(-2j * np.pi * f[None] * tau[:, None]), n)
    return out + noise * rng.standard_normal(out.shape)


def fitted(**kw):
    return ClassicalBaseline(MICS, CAM, **kw).fit([np.array([[10.0, 50, 70, 80]]), np.array([[0.0, 40, 50, 90]])])


def test_azimuth_zero_is_image_centre_and_left_is_left():
    bl = ClassicalBaseline(MICS, CAM)
    u = bl.azimuth_to_x([0.0, 20.0, -20.0, 44.0, 60.0, 180.0, -90.0])
    assert u[0] == pytest.approx(CAM['cx'])
    assert u[1] < CAM['cx'] < u[2]                     # left positive (REP 103) -> left of centre
    assert u[1] + u[2] == pytest.approx(2 * CAM['cx'])
    assert u[3] == pytest.approx(CAM['cx'] - CAM['fx'] * np.tan(np.radians(44.0)), abs=0.5)
    assert np.isnan(u[4:]).all()                       # outside the 90-degree view, behind


def test_projection_matches_the_simulator_camera():
    sc = scenario_from_dict({'camera': {'pitch_deg': 6.0, 'x_m': 1.2, 'height_m': 1.3}})
    bl = ClassicalBaseline.from_scenario(sc, range_m=15.0, source_height_m=0.6)
    cam = PinholeCamera(sc.camera)
    centre = sc.mic_array.positions().mean(0)
    for az in (-35.0, -5.0, 0.0, 12.0, 30.0):
        a = np.radians(az)
        p = centre + 15.0 * np.array([np.cos(a), np.sin(a), 0.0])
        p[2] = 0.6
        uv, _ = cam.project(p)
        assert bl.azimuth_to_x(az)[0] == pytest.approx(uv[0], abs=1e-6)


def test_camera_yaw_moves_the_centre():
    bl = ClassicalBaseline(MICS, dict(CAM, yaw_deg=30.0), range_m=1e4)
    assert bl.azimuth_to_x(30.0)[0] == pytest.approx(CAM['cx'], abs=0.1)
    assert np.isnan(bl.azimuth_to_x(-30.0)[0])


def test_from_dataset_geometry_entry():
    geometry = {'frame': 'ego: x forward, y left, z up (m)', 'mic_positions_m': MICS.tolist(),
                'camera': dict(CAM, fy=192.0, height_m=1.5, x_m=0.0, pitch_deg=0.0), 'speed_of_sound_mps': 340.0}
    bl = ClassicalBaseline.from_geometry(geometry)
    assert bl.c == 340.0 and bl.azimuth_to_x(0.0)[0] == pytest.approx(CAM['cx'])
    with pytest.raises(ConfigError):
        ClassicalBaseline.from_geometry(None)


@pytest.mark.parametrize('algorithm', ['SRP', 'MUSIC'])
def test_plane_wave_gives_one_box_at_the_right_column(algorithm):
    bl = fitted(algorithm=algorithm)
    out = bl.predict(plane_waves([25.0], [1.0]))
    assert out['boxes'].shape == (1, 4) and out['labels'].tolist() == [0]
    assert abs(out['azimuth_deg'][0] - 25.0) <= 2.0
    x = (out['boxes'][0, 0] + out['boxes'][0, 2]) / 2
    assert abs(x - bl.azimuth_to_x(25.0)[0]) < 8.0
    assert 0.0 < out['scores'][0] <= 1.0
    w, h, yc = bl.box_size                              # medians of the fitted boxes
    assert (w, h, yc) == (55.0, 40.0, 65.0)
    assert out['boxes'][0, 2] - out['boxes'][0, 0] == pytest.approx(55.0)


def test_two_sources_and_out_of_view_source_dropped():
    bl = fitted(max_sources=3, min_relative=0.3)
    az, strength = bl.locate(plane_waves([20.0, -30.0], [1.0, 0.8], seed=1))
    assert len(az) >= 2 and np.all(np.diff(strength) <= 0)
    assert min(abs(az - 20.0)) <= 2 and min(abs(az + 30.0)) <= 2
    out = bl.predict(plane_waves([20.0, 120.0], [1.0, 1.0], seed=2))   # 120 deg: behind-left
    assert len(out['boxes']) == 1 and abs(out['azimuth_deg'][0] - 20.0) <= 2


def test_score_is_low_for_diffuse_noise():
    bl = fitted()
    quiet = np.random.default_rng(3).standard_normal((8, FS // 2))
    _, s_noise = bl.spectrum(quiet)
    _, s_src = bl.spectrum(plane_waves([0.0], [1.0]))
    assert s_noise.max() < 0.15 < 0.5 < s_src.max()


def test_bad_inputs():
    with pytest.raises(ConfigError):
        ClassicalBaseline(MICS, CAM).predict(plane_waves([0.0], [1.0]))   # not fitted
    with pytest.raises(ConfigError):
        ClassicalBaseline(MICS, CAM, algorithm='beamformer')
    with pytest.raises(ConfigError):
        ClassicalBaseline(MICS, {'fx': 100.0})
    with pytest.raises(ConfigError):
        ClassicalBaseline(MICS, CAM).fit([np.zeros((0, 4))])
    bl = fitted()
    with pytest.raises(InputError):
        bl.predict(np.zeros((7, FS)))
    bad = np.zeros((8, FS))
    bad[0, 5] = np.nan
    with pytest.raises(InputError):
        bl.predict(bad)


def test_simulated_drive_single_vehicle_x_centre():
    """A car crosses the view 18 m ahead, right to left; half-second windows centred on the frames."""
    sc = scenario_from_dict({
        'duration_s': 6.0, 'seed': 3,
        'road': {'lanes': [{'direction': 'across', 'offset_m': 18.0, 'travel': 'positive'}]},
        'traffic': {'vehicles_per_minute': 0,
                    'scripted': [{'kind': 'car', 'lane': 0, 'position_m': -22.0, 'speed_mps': 7.0}]}})
    sim = Simulator(sc)
    audio = sim.audio()
    gts = [sim.frame(k).gt for k in range(sim.n_frames)]
    bl = ClassicalBaseline.from_scenario(sc, max_sources=2).fit([g.boxes for g in gts])
    W = sc.camera.width
    half = FS // 4
    errors, signs = [], []
    for k, g in enumerate(gts):
        c = int(round(sim.frame_time(k) * FS))
        if len(g) != 1 or not g.audible[0] or abs(g.azimuth_deg[0]) > 43 or c - half < 0 or c + half > len(audio):
            continue
        out = bl.predict(audio[c - half:c + half].T)
        gx = (g.boxes[0, 0] + g.boxes[0, 2]) / 2
        if len(out['boxes']) == 0:
            errors.append(np.inf)
            continue
        px = (out['boxes'][:, 0] + out['boxes'][:, 2]) / 2
        errors.append(np.min(np.abs(px - gx)))
        signs.append(np.sign(out['azimuth_deg'][0]) == np.sign(g.azimuth_deg[0]) or abs(g.azimuth_deg[0]) < 3)
    errors = np.array(errors)
    assert len(errors) >= 35                              # the car is in view and audible most of the drive
    assert np.mean(errors < 0.06 * W) >= 0.85, np.round(errors, 1)
    assert np.mean(signs) >= 0.95


def test_geometric_box_prior_without_labels():
    """A 4.5 m x 1.5 m car at 20 m straight ahead through the default pinhole camera (pitch 0)."""
    bl = ClassicalBaseline(MICS, CAM)
    with pytest.raises(ConfigError, match='no box'):
        bl.fit([np.zeros((0, 4))])
    w, h, yc = bl.fit_geometric().box_size
    fx, cam_h = CAM['fx'], CAM.get('height_m', 1.5)
    assert w == pytest.approx(fx * 4.5 / 20.0, rel=0.02)       # array and camera nearly coincide
    assert h == pytest.approx(CAM.get('fy', fx) * 1.5 / 20.0, rel=0.02)
    assert yc == pytest.approx(CAM['cy'] + CAM.get('fy', fx) * (cam_h - 0.75) / 20.0, abs=0.5)
    assert bl.predict(plane_waves([0.0], [1.0]))['boxes'].shape == (1, 4)
