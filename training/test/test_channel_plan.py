"""Feature-channel selection and the left-right mirror augmentation of the trainer.

The mirror is checked against physics: mirroring the *audio* (swapping microphones across the
forward axis) and recomputing the features must equal mirroring the *features*."""
import numpy as np
import pytest
import torch

from mmdistill_common.errors import ConfigError
from mmdistill_sim.scenario import load_scenario
from mmdistill_student.frontend import Frontend, FrontendConfig, mic_pairs
from mmdistill_student.model import feature_groups
from mmdistill_training.trainer import _mirror_features, mirror_plan, plan_channels

FULL = FrontendConfig(use_ild=True, use_gccphat=True)
GROUPS = feature_groups(FULL)


def test_groups_layout():
    assert GROUPS == {'logmel': (0, 8), 'ild': (8, 16), 'gcc': (16, 44)}


def test_plan_all_and_subsets():
    p = plan_channels(FULL.to_dict(), GROUPS, ['logmel', 'ild', 'gcc'])
    assert p.input_channels is None and p.dataset_channels == list(range(44))
    p = plan_channels(FULL.to_dict(), GROUPS, ['logmel', 'gcc'])
    assert p.input_channels is None
    assert p.dataset_channels == list(range(8)) + list(range(16, 44))
    assert p.frontend['use_ild'] is False and p.frontend['use_gccphat'] is True
    p = plan_channels(FULL.to_dict(), GROUPS, ['logmel'], mics=[0, 4])
    assert p.input_channels == [0, 4] and p.dataset_channels == [0, 4]
    p = plan_channels(FULL.to_dict(), GROUPS, ['logmel', 'gcc'], mics=[0, 4])
    k = mic_pairs(8).index((0, 4))
    assert p.dataset_channels == [0, 4, 16 + k] and p.input_channels == [0, 4, 8 + k]


def test_plan_errors():
    with pytest.raises(ConfigError, match='not in the dataset'):
        plan_channels(FrontendConfig().to_dict(), {'logmel': (0, 8)}, ['logmel', 'gcc'])
    with pytest.raises(ConfigError, match='beyond'):
        plan_channels(FULL.to_dict(), GROUPS, ['logmel'], mics=[9])


def _geometry():
    sc = load_scenario('day-static')
    return {'mic_positions_m': sc.mic_array.positions().tolist(),
            'camera': {'cx': sc.camera.cx, 'width': sc.camera.width}}


def test_mirror_of_features_equals_features_of_mirrored_audio():
    plan = plan_channels(FULL.to_dict(), GROUPS, ['logmel', 'ild', 'gcc'])
    mirror = mirror_plan(_geometry(), _geometry()["camera"]["width"], plan, GROUPS)
    assert mirror is not None
    # a source on the left: mic k leads mic j by a few samples; random broadband signal
    rng = np.random.default_rng(0)
    src = rng.standard_normal(44100 + 64).astype(np.float32) * 0.1
    delays = [0, 3, 5, 6, 5, 3, 1, 0]
    gains = np.linspace(0.6, 1.0, 8)
    x = np.stack([g * src[d:d + 44100] for d, g in zip(delays, gains)])
    sigma = [(-k) % 8 for k in range(8)]
    fe = Frontend(FULL)
    f = fe(torch.from_numpy(x))
    f_of_mirrored_audio = fe(torch.from_numpy(x[sigma].copy()))
    mirrored = _mirror_features(f.clone(), mirror)
    assert torch.allclose(mirrored, f_of_mirrored_audio, atol=1e-3)
    assert not torch.allclose(f, f_of_mirrored_audio, atol=1e-1)     # the scene is not symmetric


def test_mirror_refused_for_asymmetric_geometry():
    plan = plan_channels(FULL.to_dict(), GROUPS, ['logmel'])
    geo = _geometry()
    geo['mic_positions_m'][1][1] += 0.05
    assert mirror_plan(geo, 384, plan, GROUPS) is None
    geo = _geometry()
    geo['camera']['cx'] = 150.0
    assert mirror_plan(geo, 384, plan, GROUPS) is None
    assert mirror_plan(None, 384, plan, GROUPS) is None


def test_acoustic_groups_select_channels_and_switch_the_mvdr_map():
    """A dataset with srp, das and mvdr: a student reading mvdr and das takes dataset channels 8-23
    and computes the MVDR map at run time; one reading srp and das does not compute it."""
    geo = {'mic_positions_m': [[0.15 * np.cos(a), 0.15 * np.sin(a), 1.7] for a in np.arange(8) * np.pi / 4],
           'camera': {'width': 768, 'height': 256, 'fx': 384.0}}
    ds = FrontendConfig(kind='acoustic_image', hop=1024, columns=96, geometry=geo, mvdr=True)
    groups = feature_groups(ds)
    assert groups == {'srp': (0, 8), 'das': (8, 16), 'mvdr': (16, 24)}
    p = plan_channels(ds.to_dict(), groups, ['mvdr', 'das'])
    assert p.frontend['mvdr'] and p.dataset_channels == list(range(8, 24)) and p.input_channels == list(range(8, 24))
    p = plan_channels(ds.to_dict(), groups, ['srp', 'das'])
    assert not p.frontend['mvdr'] and p.dataset_channels == list(range(16)) and p.input_channels is None
    with pytest.raises(ConfigError, match='mvdr'):
        plan_channels(ds.to_dict(), {'srp': (0, 8), 'das': (8, 16)}, ['mvdr', 'das'])


@pytest.mark.parametrize('features', [['srp', 'das'], ['das', 'mvdr']])
def test_acoustic_image_mirror_equals_features_of_mirrored_audio(features):
    """Mirroring the acoustic image flips its columns: equal to the features of the audio with
    the microphones swapped across the forward axis (the MVDR map too)."""
    sc = load_scenario('day-static')
    geo = {'mic_positions_m': sc.mic_array.positions().tolist(),
           'camera': {'width': sc.camera.width, 'height': sc.camera.height, 'fx': sc.camera.fx,
                      'cx': sc.camera.width / 2, 'cy': sc.camera.height / 2}}
    fcfg = FrontendConfig(kind='acoustic_image', hop=512, columns=sc.camera.width // 8, geometry=geo,
                          window_s=0.25, mvdr='mvdr' in features)
    groups = feature_groups(fcfg)
    plan = plan_channels(fcfg.to_dict(), groups, features)
    mirror = mirror_plan(geo, sc.camera.width, plan, groups)
    assert mirror is not None
    rng = np.random.default_rng(1)
    n = fcfg.window_samples
    src = rng.standard_normal(n + 64).astype(np.float32) * 0.1
    x = np.stack([g * src[d:d + n] for d, g in zip([0, 3, 5, 6, 5, 3, 1, 0], np.linspace(0.6, 1.0, 8))])
    sigma = [(-k) % 8 for k in range(8)]
    fe = Frontend(fcfg)
    f = fe(torch.from_numpy(x))[:, plan.dataset_channels]
    mirrored = _mirror_features(f.clone(), mirror)
    torch.testing.assert_close(mirrored, fe(torch.from_numpy(x[sigma].copy()))[:, plan.dataset_channels],
                               atol=2e-3, rtol=1e-3)
    assert not torch.allclose(f, mirrored, atol=1e-1)
