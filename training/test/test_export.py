"""ONNX export of the student: ORT agrees with PyTorch, decoding gives the same boxes, bad input -> exit 2."""
import json

import numpy as np
import pytest
import torch

from mmdistill_student.checkpoint import save_checkpoint
from mmdistill_student.model import StudentConfig, StudentDetector
from mmdistill_training.cli import main
from mmdistill_training.export import INPUT_NAME, OnnxStudent, export_onnx


def _student(seed=0, **kw) -> StudentDetector:
    torch.manual_seed(seed)
    model = StudentDetector(StudentConfig(**kw)).eval()
    with torch.no_grad():       # a fresh head predicts ~0.01 everywhere: make some cells fire
        model.head.cls_out.weight.normal_(0.0, 0.2)
        model.head.cls_out.bias.fill_(0.0)
        model.head.box_out.weight.normal_(0.0, 0.05)
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp('export')
    model = _student()
    save_checkpoint(model, d / 'ckpt', info={'metrics': {'note': 'random weights'}})
    rc = main(['export', '--checkpoint', str(d / 'ckpt'), '--out', str(d / 'student.onnx')])
    assert rc == 0
    return model, d


def test_export_writes_valid_onnx_and_metadata(exported):
    import onnx
    _, d = exported
    onnx.checker.check_model(onnx.load(str(d / 'student.onnx')))
    meta = json.loads((d / 'student.json').read_text())
    assert meta['input'] == {'name': INPUT_NAME, 'shape': ['batch', 8, 80, 173], 'dtype': 'float32'}
    assert [o['name'] for o in meta['outputs']] == ['cls_logits', 'box_ltrb', 'centerness']
    n = 16 * 48 + 8 * 24 + 4 * 12
    assert meta['outputs'][0]['shape'] == ['batch', n, 1]
    assert meta['feature_sizes'] == [[16, 48], [8, 24], [4, 12]] and meta['strides'] == [8, 16, 32]
    assert meta['checkpoint']['format'] == 'mmdistill-student'
    assert meta['checkpoint']['metrics'] == {'note': 'random weights'}
    assert meta['verification']['max_abs_diff'] < 1e-3
    assert not list(d.glob('*.tmp'))


def test_onnx_runtime_matches_pytorch_and_decodes_same_boxes(exported):
    model, d = exported
    ox = OnnxStudent(d / 'student.onnx')
    x = torch.randn(4, 8, 80, 173, generator=torch.Generator().manual_seed(5)) * 8.0
    raw = ox.run(x.numpy())
    with torch.no_grad():
        outputs, _ = model(x)
    from mmdistill_teachers.head import flatten_outputs
    flat = flatten_outputs(outputs)
    assert raw['cls_logits'].shape == (4, 1008, 1)
    np.testing.assert_allclose(raw['cls_logits'], flat['cls'].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(raw['box_ltrb'], flat['ltrb'].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(raw['centerness'], flat['ctr'].numpy(), atol=1e-4, rtol=1e-4)
    ref = model.predict_features(x, score_threshold=0.4)
    got = ox.predict_features(x.numpy(), score_threshold=0.4)
    assert sum(len(r['boxes']) for r in ref) > 0          # the comparison is not vacuous
    for r, g in zip(ref, got):
        assert len(r['boxes']) == len(g['boxes'])
        np.testing.assert_allclose(g['boxes'], r['boxes'], atol=1e-3)
        np.testing.assert_allclose(g['scores'], r['scores'], atol=1e-4)
        assert np.array_equal(g['labels'], r['labels'])
    from mmdistill_common.errors import InputError
    with pytest.raises(InputError):
        ox.predict_features(np.zeros((1, 7, 80, 173), np.float32))


def test_predict_window_with_channel_subset_and_stats(tmp_path):
    model = _student(seed=1, input_channels=[0, 4], score_threshold=0.4)
    model.frontend.set_stats(np.full(8, -60.0), np.full(8, 15.0))
    meta = export_onnx(model, tmp_path / 'sub.onnx', verify=False)
    assert meta['input']['shape'] == ['batch', 2, 80, 173] and meta['frontend_stats']['normalize']
    ox = OnnxStudent(tmp_path / 'sub.onnx')
    window = 0.05 * np.random.default_rng(2).standard_normal((8, 44100)).astype(np.float32)
    ref, got = model.predict_window(window), ox.predict_window(window)
    assert len(ref['boxes']) == len(got['boxes'])
    np.testing.assert_allclose(got['boxes'], ref['boxes'], atol=1e-3)


def test_bad_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'model.safetensors').write_bytes(b'not a safetensors file')
    assert main(['export', '--checkpoint', str(bad), '--out', str(tmp_path / 'x.onnx')]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('mmdistill export: error:')
    assert main(['export', '--checkpoint', str(tmp_path / 'missing'), '--out', str(tmp_path / 'x.onnx')]) == 2
    assert 'not found' in capsys.readouterr().err
    assert not (tmp_path / 'x.onnx').exists() and not (tmp_path / 'x.json').exists()


def test_bad_output_name_and_opset_exit_2(exported, tmp_path, capsys):
    _, d = exported
    assert main(['export', '--checkpoint', str(d / 'ckpt'), '--out', str(tmp_path / 'x.pt')]) == 2
    assert '.onnx' in capsys.readouterr().err
    assert main(['export', '--checkpoint', str(d / 'ckpt'), '--out', str(tmp_path / 'x.onnx'),
                 '--opset', '9']) == 2
    assert 'opset' in capsys.readouterr().err


def test_onnx_decoding_keeps_the_checkpoints_pre_nms_cap(tmp_path):
    model = _student(pre_nms_top_k=3)            # at most 3 candidates per level reach the NMS
    export_onnx(model, tmp_path / 'capped.onnx', verify=False)
    ox = OnnxStudent(tmp_path / 'capped.onnx')
    x = torch.randn(2, 8, 80, 173, generator=torch.Generator().manual_seed(6)) * 8.0
    ref = model.predict_features(x, score_threshold=0.0)
    got = ox.predict_features(x.numpy(), score_threshold=0.0)
    assert all(0 < len(r['boxes']) <= 3 * 3 for r in ref)
    for r, g in zip(ref, got):
        assert len(g['boxes']) == len(r['boxes'])
        np.testing.assert_allclose(g['boxes'], r['boxes'], atol=1e-3)
