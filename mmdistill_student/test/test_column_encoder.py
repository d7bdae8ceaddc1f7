"""Column-equivariant encoder: shapes, equivariance along x, pretext loading, config errors."""
import pytest
import torch

from mmdistill_common.errors import ConfigError
from mmdistill_student.column_encoder import ColumnEncoder, ColumnEncoderConfig
from mmdistill_student.encoder import PretextModel, encoder_state_dict, load_encoder_state_dict


def _encoder(**kw):
    torch.manual_seed(0)
    return ColumnEncoder(ColumnEncoderConfig(in_channels=4, columns=48, n_frames=40, **kw)).eval()


def test_pyramid_shapes_follow_the_image():
    enc = _encoder(image_size=(768, 256))
    pyr, emb = enc(torch.randn(2, 4, 48, 40), return_embedding=True)
    assert [tuple(p.shape[2:]) for p in pyr] == [(32, 96), (16, 48), (8, 24)]
    assert emb.shape == (2, enc.cfg.embed_dim)


def test_shifting_the_sources_shifts_the_column_features():
    """Columns away from the borders (beyond the receptive field) move with the input."""
    enc = _encoder()
    x = torch.zeros(1, 4, 48, 40)
    x[0, :, 20, 10:30] = torch.randn(4, 20)
    x[0, :, 26, :] = 1.5
    shifted = torch.roll(x, 3, dims=2)
    with torch.no_grad():
        a = enc.column_features(x)
        b = enc.column_features(shifted)
    torch.testing.assert_close(b[..., 14 + 3:34 + 3], a[..., 14:34], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(a[..., 14:34], a[..., 15:35])


def test_pretext_weights_load_without_the_decoder():
    enc = _encoder()
    pre = PretextModel(_encoder(), max_count=4)
    state = encoder_state_dict(pre)
    loaded = load_encoder_state_dict(enc, state, skip_decoder=True)
    assert not any(k.startswith(ColumnEncoder.decoder_prefixes) for k in loaded)
    torch.testing.assert_close(enc.state_dict()['readout.0.weight'], pre.encoder.state_dict()['readout.0.weight'])


def test_config_errors():
    with pytest.raises(ConfigError, match='columns'):
        ColumnEncoderConfig(columns=0)
    with pytest.raises(ConfigError, match='strides'):
        ColumnEncoderConfig(strides=(8, 12, 32))
    with pytest.raises(ConfigError, match='divisible'):
        ColumnEncoderConfig(image_size=(100, 128))
    with pytest.raises(ConfigError, match=r'expects \(B, 4, 48'):
        _encoder()(torch.randn(1, 4, 40, 40))


def test_position_lets_the_decoder_depend_on_the_bearing():
    """Identical column features decode identically everywhere without ``position`` and
    differently by column with it (size and height depend on where in the street a source is)."""
    for position, equal in ((0, True), (8, False)):
        enc = _encoder(position=position)
        with torch.no_grad():
            for m in enc.modules():             # non-trivial BN statistics
                if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                    m.running_mean.uniform_(-0.5, 0.5)
            p3 = enc.decode(torch.ones(1, enc.cfg.widths[-1], 48))[0]
        same = torch.allclose(p3[..., 10], p3[..., 30], atol=1e-6)
        assert same == equal


def test_position_must_be_even():
    with pytest.raises(ConfigError, match='position'):
        ColumnEncoderConfig(position=3)



def test_checkpoint_configs_from_before_position_load_without_it():
    from mmdistill_sim.scenario import load_scenario
    from mmdistill_student.model import StudentConfig
    sc = load_scenario('town-day-static')
    c = sc.camera
    geo = {'mic_positions_m': sc.mic_array.positions().tolist(),
           'camera': {'width': c.width, 'height': c.height, 'fx': c.fx, 'fy': c.fy, 'x_m': c.x_m,
                      'height_m': c.height_m, 'pitch_deg': c.pitch_deg}}
    fe = dict(kind='acoustic_image', hop=1024, columns=c.width // 8, geometry=geo)
    new = StudentConfig(frontend=fe, image_size=(c.width, c.height), strides=(16, 32, 64))
    assert new.encoder_config().position == ColumnEncoderConfig.position
    assert StudentConfig.from_dict(new.to_dict()).encoder_config().position == ColumnEncoderConfig.position
    old = new.to_dict()
    del old['encoder']['position']
    assert StudentConfig.from_dict(old).encoder_config().position == 0
