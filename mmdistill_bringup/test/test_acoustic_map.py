"""SRP-PHAT direction energy: a plane wave's peak at its azimuth, columns that follow the camera."""
import numpy as np
import pytest

from mmdistill_bringup.acoustic_map import ArrayGeometry, BearingHistory, SrpPhatMap, column_azimuths

SR = 44100


def plane_wave(mics, azimuth_deg, c, n=4410, seed=0, noise=0.3):
    """White noise arriving from ``azimuth_deg`` (left positive), exact fractional delays."""
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(n + 2000)
    a = np.radians(azimuth_deg)
    lead = (mics - mics.mean(axis=0)) @ np.array([np.cos(a), np.sin(a), 0.0]) / c
    f = np.fft.rfftfreq(len(s), 1 / SR)
    x = np.stack([np.fft.irfft(np.fft.rfft(s) * np.exp(2j * np.pi * f * t), len(s)) for t in lead], axis=1)
    return x[1000:1000 + n] + noise * rng.standard_normal((n, len(mics)))


def test_column_azimuths_follow_the_pinhole():
    az = np.degrees(column_azimuths(384, 192.0, 192.0, 4))
    assert az[0] > 0 > az[-1]                                   # left of the image = positive azimuth
    np.testing.assert_allclose(az, -az[::-1])
    assert az[0] == pytest.approx(np.degrees(np.arctan2(192 - 48, 192)))


@pytest.mark.parametrize('azimuth', [-30.0, 0.0, 25.0])
def test_srp_peak_at_the_source(azimuth):
    g = ArrayGeometry.from_scenario()
    az = np.radians(np.arange(-60, 61, 1.0))
    srp = SrpPhatMap(g.mic_positions, SR, az, speed_of_sound=g.speed_of_sound)
    e = srp(plane_wave(g.mic_positions, azimuth, g.speed_of_sound))
    assert np.degrees(az[np.argmax(e)]) == pytest.approx(azimuth, abs=2.0)
    assert e.max() > 0.5 and np.median(e) < 0.3                 # coherent peak over a low floor
    noise = srp(np.random.default_rng(1).standard_normal((4410, 8)))
    assert noise.max() < 0.15                                    # diffuse noise: no direction


def test_bearing_history_scrolls():
    hist = BearingHistory(lambda block: np.full(3, float(block[0, 0])), 3, rows=4)
    assert hist.latest is None
    hist.push(np.ones((10, 2)))
    out = hist.push(2 * np.ones((10, 2)))
    assert out.shape == (4, 3) and (out[0] == 2).all() and (out[1] == 1).all() and np.isnan(out[2:]).all()
    hist.reset()
    assert hist.latest is None
