"""The export form of the student (fused head output convs, folded ColumnEncoder constants) gives
the PyTorch model's outputs, from a smaller graph."""
import numpy as np
import onnx
import pytest
import torch

from mmdistill_student.model import StudentConfig, StudentDetector
from mmdistill_training.export import INPUT_NAME, _FlatHead, export_onnx


def _column_student(**model_fields) -> StudentDetector:
    from mmdistill_training.dataset_build import ACOUSTIC_HOP, scenario_geometry
    from mmdistill_training.train_config import load_train_config
    g = scenario_geometry('town-day-static', 8)
    w, h = g['camera']['width'], g['camera']['height']
    fields = {**load_train_config('student').student_fields(), **model_fields}
    torch.manual_seed(0)
    model = StudentDetector(StudentConfig(frontend={'kind': 'acoustic_image', 'hop': ACOUSTIC_HOP,
                                                    'columns': w // 8, 'geometry': g},
                                          image_size=(w, h), **fields)).eval()
    with torch.no_grad():       # non-trivial statistics, scales and head weights
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1.0, 1.0)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for i, s in enumerate(model.head.scales):
            s.scale.fill_(0.7 + 0.2 * i)
        model.encoder.row_pos.normal_(0.0, 0.5)
        for conv in (model.head.cls_out, model.head.box_out, model.head.ctr_out):
            conv.weight.normal_(0.0, 0.1)
            conv.bias.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize('head_convs', [0, 1])
def test_fused_export_equals_pytorch(tmp_path, head_convs):
    import onnxruntime as ort
    model = _column_student(head_convs=head_convs)
    assert type(model.encoder).__name__ == 'ColumnEncoder'
    meta = export_onnx(model, tmp_path / 's.onnx')
    graph = onnx.load(str(tmp_path / 's.onnx')).graph
    ops = [n.op_type for n in graph.node]
    assert 'Expand' not in ops
    if head_convs == 0:          # (GroupNorm in head towers reshapes by the input's shape)
        assert 'Shape' not in ops                                 # constant shapes only
    levels = len(model.head.strides)
    head_out_convs = sum(1 for n in graph.node if n.op_type == 'Conv' and n.name.startswith('/Conv'))
    assert head_out_convs == (levels if head_convs == 0 else 2 * levels)   # was 3 per level
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(tmp_path / 's.onnx'), so, providers=['CPUExecutionProvider'])
    x = torch.randn((3,) + tuple(meta['input']['shape'][1:]), generator=torch.Generator().manual_seed(5)) * 3.0
    with torch.no_grad():
        ref = [r.numpy() for r in _FlatHead(model)(x)]
    got = sess.run([o['name'] for o in meta['outputs']], {INPUT_NAME: x.numpy()})
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(np.abs(r).max()))
    assert meta['verification']['max_abs_diff'] < 1e-3 * max(1.0, float(np.abs(ref[1]).max()))
