import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mmdistill_common.errors import ConfigError
from mmdistill_teachers.detector import TeacherDetector
from mmdistill_teachers.labelling import FusionConfig
from mmdistill_teachers.weights import (FORMAT_VERSION, METADATA_KEY, fusion_path, load_fusion_config, load_teacher,
                                      read_metadata, save_fusion_config, save_teacher)


def tiny(modality='depth', **kw):
    torch.manual_seed(0)
    return TeacherDetector(modality, input_size=(128, 64), width=4, fpn_channels=8, head_convs=1, **kw)


@pytest.fixture
def saved(tmp_path):
    m = tiny(class_names=('car', 'truck', 'motorbike'))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = save_teacher(m, tmp_path / 'depth_teacher', training_info={'epochs': 3, 'seed': 7})
    return m, path


def test_round_trip(saved, tmp_path):
    m, path = saved
    assert path.name == 'depth_teacher.safetensors' and path.is_file()
    side = json.loads(path.with_suffix('.json').read_text())
    meta = read_metadata(path)
    assert side == meta
    assert meta['modality'] == 'depth' and meta['input_size'] == [128, 64] and meta['channels'] == 2
    assert meta['sensor_channels'] == 1 and meta['format_version'] == FORMAT_VERSION
    assert meta['class_names'] == ['car', 'truck', 'motorbike'] and meta['training'] == {'epochs': 3, 'seed': 7}
    assert meta['normalisation']['kind'] == 'log1p'
    loaded = load_teacher(path, modality='depth', input_size=(128, 64))
    assert loaded.config == m.config and not loaded.training
    assert loaded.training_info == {'epochs': 3, 'seed': 7}
    for (k, a), (k2, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    img = np.random.default_rng(0).uniform(1, 60, (64, 128)).astype(np.float32)
    a, b = m.predict(img, score_threshold=0.0)[0], loaded.predict(img, score_threshold=0.0)[0]
    assert np.array_equal(a['boxes'], b['boxes']) and np.array_equal(a['scores'], b['scores'])
    assert all(np.array_equal(x, y) for x, y in zip(a['attention'], b['attention']))


def test_mismatch_errors(saved):
    _, path = saved
    with pytest.raises(ConfigError, match="holds a 'depth' teacher, but a 'rgb'"):
        load_teacher(path, modality='rgb')
    with pytest.raises(ConfigError, match='trained for 128x64 .* but 384x128'):
        load_teacher(path, input_size=(384, 128))
    with pytest.raises(ConfigError, match='predicts classes'):
        load_teacher(path, class_names=['vehicle'])


def _rewrite(path, out, tensors=None, meta_update=None, raw_meta=None):
    t = load_file(str(path))
    if tensors is not None:
        t = tensors(t)
    meta = read_metadata(path)
    if meta_update:
        meta.update(meta_update)
    save_file(t, str(out), metadata={METADATA_KEY: raw_meta if raw_meta is not None else json.dumps(meta)})
    return out


def test_bad_files(saved, tmp_path):
    _, path = saved
    with pytest.raises(ConfigError, match='not found'):
        load_teacher(tmp_path / 'nope.safetensors')
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'\x80\x04this is a pickle, not safetensors')
    with pytest.raises(ConfigError, match='not a readable safetensors'):
        load_teacher(garbage)
    nometa = tmp_path / 'nometa.safetensors'
    save_file({'x': torch.zeros(2)}, str(nometa))
    with pytest.raises(ConfigError, match='no mmdistill metadata'):
        load_teacher(nometa)
    with pytest.raises(ConfigError, match='version 99'):
        load_teacher(_rewrite(path, tmp_path / 'v99.safetensors', meta_update={'format_version': 99}))
    with pytest.raises(ConfigError, match='not valid JSON'):
        load_teacher(_rewrite(path, tmp_path / 'badjson.safetensors', raw_meta='{oops'))
    with pytest.raises(ConfigError, match='format'):
        load_teacher(_rewrite(path, tmp_path / 'fmt.safetensors', meta_update={'format': 'other'}))
    with pytest.raises(ConfigError, match='missing'):
        load_teacher(_rewrite(path, tmp_path / 'missing.safetensors',
                              tensors=lambda t: {k: v for k, v in t.items() if not k.startswith('head.cls_out')}))
    with pytest.raises(ConfigError, match='unexpected'):
        load_teacher(_rewrite(path, tmp_path / 'extra.safetensors', tensors=lambda t: {**t, 'bogus': torch.zeros(1)}))

    def widen(t):
        t = dict(t)
        t['head.cls_out.bias'] = torch.zeros(5)
        return t
    with pytest.raises(ConfigError, match='shape'):
        load_teacher(_rewrite(path, tmp_path / 'shape.safetensors', tensors=widen))
    # top-level modality disagreeing with the stored config
    with pytest.raises(ConfigError, match='inconsistent'):
        load_teacher(_rewrite(path, tmp_path / 'incons.safetensors', meta_update={'modality': 'thermal'}))
    # a truncated file
    trunc = tmp_path / 'trunc.safetensors'
    trunc.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ConfigError):
        load_teacher(trunc)


def test_non_json_training_info(tmp_path):
    with pytest.raises(ConfigError, match='JSON'):
        save_teacher(tiny(), tmp_path / 'x.safetensors', training_info={'a': object()})
    assert not (tmp_path / 'x.safetensors').exists()


def test_fusion_config_round_trip_and_errors(tmp_path):
    assert load_fusion_config(tmp_path) is None          # teachers trained before calibration existed
    cfg = FusionConfig({'rgb': 0.3, 'depth': 0.45, 'thermal': 0.25}, 0.5, 'wbf')
    save_fusion_config(cfg, tmp_path, {'drives': ['d-1']})
    back = load_fusion_config(tmp_path)
    assert back.score_thresholds == cfg.score_thresholds and back.method == 'wbf' and back.modalities == cfg.modalities
    assert json.loads(fusion_path(tmp_path).read_text())['calibration'] == {'drives': ['d-1']}
    fusion_path(tmp_path).write_text('{"format": "other"}')
    with pytest.raises(ConfigError, match='not a mmdistill-fusion'):
        load_fusion_config(tmp_path)
    fusion_path(tmp_path).write_text('{"format": "mmdistill-fusion", "method": "max"}')
    with pytest.raises(ConfigError, match='bad fusion config'):
        load_fusion_config(tmp_path)


def test_set_precision_switches_bf16_inference():
    from mmdistill_teachers.training import bf16_is_fast
    from mmdistill_teachers.weights import set_precision
    teachers = {'depth': tiny(), 'thermal': TeacherDetector('thermal', input_size=(128, 64), width=4,
                                                          fpn_channels=8, head_convs=1)}
    assert not any(t.bf16_inference for t in teachers.values())          # float32 unless asked
    assert set_precision(teachers, 'bf16') is teachers and all(t.bf16_inference for t in teachers.values())
    set_precision(teachers, 'auto')
    assert all(t.bf16_inference == bf16_is_fast() for t in teachers.values())
    set_precision(teachers['depth'], 'fp32')
    assert not teachers['depth'].bf16_inference
    with pytest.raises(ConfigError, match='precision'):
        set_precision(teachers, 'fp16')


def test_bf16_predictions_are_float32_and_near_the_float32_ones():
    m = tiny()
    img = np.random.default_rng(0).uniform(1, 60, (64, 128)).astype(np.float32)
    a = m.predict(img, score_threshold=0.0, max_detections=1000)[0]
    m.bf16_inference = True
    b = m.predict(img, score_threshold=0.0, max_detections=1000)[0]
    assert b['boxes'].dtype == np.float32 and b['scores'].dtype == np.float32
    assert all(x.dtype == np.float32 for x in b['attention'])
    assert abs(len(a['scores']) - len(b['scores'])) <= 0.1 * len(a['scores'])
    assert np.max(np.abs(np.sort(a['scores'])[-10:] - np.sort(b['scores'])[-10:])) < 0.02
    for x, y in zip(a['attention'], b['attention']):
        assert np.allclose(x, y, rtol=0.05, atol=0.02)
