"""Student encoder: pyramid shapes, size, counting head, pretext -> distillation weights."""

import numpy as np
import pytest
import torch

from mmdistill_common.errors import ConfigError
from mmdistill_student.encoder import (
    AudioEncoder, CountingHead, EncoderConfig, PretextModel, encoder_state_dict,
    load_encoder_state_dict)
from mmdistill_student.frontend import Frontend, FrontendConfig

torch.set_num_threads(1)
LEVELS = [(16, 48), (8, 24), (4, 12)]


@pytest.mark.parametrize('in_ch,kw', [(8, {}), (44, {}), (8, dict(depth=2, out_channels=32)),
                                      (8, dict(widths=(16, 32, 48), decoder_depth=2))])
def test_pyramid_shapes(in_ch, kw):
    torch.manual_seed(0)
    enc = AudioEncoder(EncoderConfig(in_channels=in_ch, **kw))
    x = torch.randn(2, in_ch, 80, 173)
    pyr, emb = enc(x, return_embedding=True)
    C = enc.cfg.out_channels
    assert [tuple(p.shape) for p in pyr] == [(2, C, h, w) for h, w in LEVELS]
    assert emb.shape == (2, enc.cfg.embed_dim)
    assert enc.cfg.level_shapes() == LEVELS
    assert all(torch.isfinite(p).all() for p in pyr)


def test_default_is_small():
    n = sum(p.numel() for p in AudioEncoder(EncoderConfig(in_channels=44)).parameters())
    assert n < 2_000_000


def test_gradients_reach_input_and_all_levels_depend_on_audio():
    torch.manual_seed(0)
    enc = AudioEncoder(EncoderConfig())
    x = torch.randn(2, 8, 80, 173, requires_grad=True)
    sum(p.pow(2).mean() for p in enc(x)).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in enc.named_parameters())
    enc.eval()
    with torch.no_grad():
        a, b = enc(torch.randn(1, 8, 80, 173)), enc(torch.randn(1, 8, 80, 173))
    assert all(not torch.allclose(u, v) for u, v in zip(a, b))


def test_config_validation():
    with pytest.raises(ConfigError):
        EncoderConfig(strides=(8, 16, 48))
    with pytest.raises(ConfigError):
        EncoderConfig(image_size=(380, 128))
    with pytest.raises(ConfigError):
        EncoderConfig(widths=())
    with pytest.raises(ConfigError):
        EncoderConfig.from_dict({'width': 3})
    cfg = EncoderConfig(in_channels=44, widths=(8, 16))
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError):
        AudioEncoder(cfg)(torch.randn(1, 8, 80, 173))


def test_counting_head_and_pretext_init():
    torch.manual_seed(0)
    cfg = EncoderConfig(widths=(8, 16, 24, 32), embed_dim=64, out_channels=16)
    pre = PretextModel(AudioEncoder(cfg), max_count=5)
    x = torch.randn(3, 8, 80, 173)
    logits = pre(x)
    assert logits.shape == (3, 6)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2, 5]))
    loss.backward()
    # the pretext's state dict initialises a fresh encoder for distillation
    sd = encoder_state_dict(pre.state_dict())
    assert sd.keys() == AudioEncoder(cfg).state_dict().keys()
    assert encoder_state_dict(pre).keys() == sd.keys()
    fresh = AudioEncoder(cfg)
    load_encoder_state_dict(fresh, sd)
    pre.eval(), fresh.eval()
    with torch.no_grad():
        for a, b in zip(pre.encoder(x), fresh(x)):
            torch.testing.assert_close(a, b)
    # partial init: decoder keeps its own weights
    fresh2 = AudioEncoder(cfg)
    before = fresh2.to_grid.weight.clone()
    loaded = load_encoder_state_dict(fresh2, {k: v for k, v in sd.items()
                                              if not k.startswith(('to_grid', 'grid_pos', 'p3', 'p4', 'p5'))},
                                     skip_decoder=True)
    assert torch.equal(fresh2.to_grid.weight, before) and 'stages.0.0.0.weight' in loaded
    # a mismatching checkpoint is a clear error
    with pytest.raises(ConfigError, match='shape mismatch'):
        load_encoder_state_dict(AudioEncoder(EncoderConfig(widths=(8, 16, 24, 48), embed_dim=64,
                                                           out_channels=16)), sd)
    with pytest.raises(ConfigError):
        encoder_state_dict({'head.net.0.weight': torch.zeros(1)})
    with pytest.raises(ConfigError):
        CountingHead(64, max_count=0)


def test_frontend_plus_encoder_end_to_end():
    fcfg = FrontendConfig(use_ild=True, use_gccphat=True)
    fe = Frontend(fcfg)
    enc = AudioEncoder(EncoderConfig(in_channels=fcfg.in_channels)).eval()
    x = np.random.default_rng(0).standard_normal((8, 44100)).astype(np.float32) * 0.1
    with torch.no_grad():
        pyr = enc(fe(x))
    assert [tuple(p.shape[2:]) for p in pyr] == LEVELS
