import time

import numpy as np
import pytest
import torch

from mmdistill_common.boxes import iou_matrix
from mmdistill_common.errors import ConfigError, InputError
from mmdistill_teachers.detector import TeacherConfig, TeacherDetector, Teacher, network_channels, preprocess
from mmdistill_teachers.training import train_teacher


def tiny(modality='rgb', **kw):
    torch.manual_seed(0)
    kw.setdefault('input_size', (128, 64))
    return TeacherDetector(modality, width=4, fpn_channels=16, head_convs=1, **kw)


# ------------------------------------------------------------------ preprocess

def test_rgb_preprocess():
    im = np.zeros((128, 384, 3), np.uint8)
    im[0, 0] = [255, 0, 51]
    x = preprocess(im, 'rgb')
    assert x.shape == (3, 128, 384) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))


@pytest.mark.parametrize('image, match', [
    (np.zeros((128, 384, 3), np.float32), 'uint8'),
    (np.zeros((128, 384), np.uint8), r'\(H, W, 3\)'),
    (np.zeros((128, 384, 4), np.uint8), r'\(H, W, 3\)'),
    (np.zeros((64, 384, 3), np.uint8), '384x64 .* expects 384x128'),
    ([[0, 1]], 'numpy array'),
])
def test_rgb_preprocess_errors(image, match):
    with pytest.raises(InputError, match=match):
        preprocess(image, 'rgb')


def test_preprocess_rejects_tensor_and_bad_modality():
    with pytest.raises(InputError, match='torch.Tensor'):
        preprocess(torch.zeros(128, 384, 3), 'rgb')
    with pytest.raises(ConfigError, match='unknown modality'):
        preprocess(np.zeros((128, 384), np.float32), 'lidar')
    with pytest.raises(ConfigError, match='normalisation keys'):
        preprocess(np.zeros((128, 384), np.float32), 'depth', normalisation={'bogus': 1})


def test_depth_preprocess():
    d = np.full((128, 384), 10.0, np.float32)
    d[0, 0] = np.nan
    d[0, 1] = np.inf
    d[0, 2] = 0.0
    d[0, 3] = 500.0
    x = preprocess(d, 'depth')
    assert x.shape == (2, 128, 384)
    assert torch.all(torch.isfinite(x))
    assert x[1, 0, :3].tolist() == [0.0, 0.0, 0.0] and x[1, 0, 3] == 1.0 and x[1, 5, 5] == 1.0
    assert x[0, 0, :3].tolist() == [0.0, 0.0, 0.0]
    assert x[0, 0, 3].item() == pytest.approx(1.0)
    assert x[0, 5, 5].item() == pytest.approx(np.log1p(10) / np.log1p(80), rel=1e-6)
    # (H, W, 1) accepted, float64 accepted, fixed fill without validity channel
    x1 = preprocess(d[:, :, None].astype(np.float64), 'depth',
                    normalisation={'validity_channel': False, 'invalid_fill': -1.0})
    assert x1.shape == (1, 128, 384) and x1[0, 0, 0] == -1.0
    assert network_channels('depth') == 2 and network_channels('depth', {'validity_channel': False}) == 1
    for bad, match in [(np.zeros((128, 384), np.uint16), '32FC1 metres'),
                       (np.zeros((128, 384, 2), np.float32), 'single channel'),
                       (np.zeros((128, 383), np.float32), 'expects 384x128')]:
        with pytest.raises(InputError, match=match):
            preprocess(bad, 'depth')


def test_thermal_preprocess():
    t = np.full((128, 384), 290.0, np.float32)
    t[3, 3] = 350.0
    x = preprocess(t, 'thermal')
    assert x.shape == (1, 128, 384) and x[0, 0, 0] == 0.0 and x[0, 3, 3].item() == pytest.approx(3.0)
    counts = (t * 100).astype(np.uint16)           # 16UC1 TLinear centikelvin
    assert torch.allclose(preprocess(counts, 'thermal'), x, atol=1e-4)
    with pytest.raises(InputError, match='Celsius'):
        preprocess(t - 273.15, 'thermal')
    nan = t.copy()
    nan[0, 0] = np.nan
    with pytest.raises(InputError, match='NaN'):
        preprocess(nan, 'thermal')
    with pytest.raises(InputError, match='16UC1'):
        preprocess(t.astype(np.int32), 'thermal')


def test_config_validation():
    with pytest.raises(ConfigError):
        TeacherConfig(modality='sonar')
    with pytest.raises(ConfigError):
        TeacherConfig(strides=(4, 8, 16))
    with pytest.raises(ConfigError):
        TeacherConfig(class_names=('car', 'car'))
    c = TeacherConfig(modality='thermal', class_names=['car', 'truck', 'motorbike'])
    assert TeacherConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError):
        TeacherConfig.from_dict({**c.to_dict(), 'extra': 1})


# ------------------------------------------------------------------ model

@pytest.mark.parametrize('modality, image', [
    ('rgb', np.zeros((64, 128, 3), np.uint8)),
    ('depth', np.full((64, 128), 5.0, np.float32)),
    ('thermal', np.full((64, 128), 295.0, np.float32)),
])
def test_predict_structure(modality, image):
    m = tiny(modality)
    assert isinstance(m, Teacher)
    out = m.predict([image, image], score_threshold=0.0, max_detections=7)
    assert len(out) == 2
    for r in out:
        assert r['boxes'].dtype == np.float32 and r['boxes'].shape == (7, 4)
        assert r['scores'].dtype == np.float32 and r['labels'].dtype == np.int64
        assert [a.shape for a in r['attention']] == [(8, 16), (4, 8), (2, 4)]
        assert all(a.dtype == np.float32 and (a >= 0).all() for a in r['attention'])
    single = m.predict(image)
    assert len(single) == 1
    with pytest.raises(InputError):
        m.predict([np.zeros((64, 128, 3), np.float32)] if modality == 'rgb' else [np.zeros((64, 128), np.int8)])
    with pytest.raises(InputError):
        m.predict([])


def test_default_teacher_shapes():
    torch.manual_seed(0)
    m = TeacherDetector('rgb')
    x = torch.zeros(1, 3, 128, 384)
    with torch.no_grad():
        out, feats = m(x)
    assert [tuple(f.shape) for f in feats] == [(1, 64, 16, 48), (1, 64, 8, 24), (1, 64, 4, 12)]
    assert out['image_size'] == (384, 128)
    with pytest.raises(InputError):
        m(torch.zeros(1, 1, 128, 384))


def make_rectangles(n, seed, w=128, h=64):
    """Noisy dark images with 1-2 bright rectangles, boxes on integer pixel edges."""
    rng = np.random.default_rng(seed)
    ims, boxes = [], []
    for _ in range(n):
        im = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        bs = []
        for _ in range(rng.integers(1, 3)):
            bw, bh = rng.uniform(12, 40), rng.uniform(10, 30)
            x1, y1 = int(round(rng.uniform(0, w - bw))), int(round(rng.uniform(0, h - bh)))
            x2, y2 = int(round(x1 + bw)), int(round(y1 + bh))
            im[y1:y2, x1:x2] = 230
            bs.append([x1, y1, x2, y2])
        ims.append(im)
        boxes.append(np.array(bs, float))
    return ims, boxes


def average_precision(dets, gts, iou_thr=0.5):
    """VOC all-point AP, greedy matching by score (reference implementation for the test)."""
    records, npos = [], sum(len(g) for g in gts)
    for (b, s), g in zip(dets, gts):
        used = np.zeros(len(g), bool)
        iou = iou_matrix(b, g) if len(b) and len(g) else np.zeros((len(b), len(g)))
        for i in np.argsort(-s, kind='stable'):
            j = int(np.argmax(iou[i])) if len(g) else -1
            ok = j >= 0 and iou[i, j] >= iou_thr and not used[j]
            if ok:
                used[j] = True
            records.append((s[i], ok))
    records.sort(key=lambda r: -r[0])
    tp = np.cumsum([r[1] for r in records])
    fp = np.cumsum([not r[1] for r in records])
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, 1)
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.concatenate([[0], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]).sum())


def test_tiny_detector_learns_bright_rectangles():
    t0 = time.perf_counter()
    m = tiny('rgb')
    ims, boxes = make_rectangles(64, 0)
    hist = train_teacher(m, ims, boxes, epochs=40, lr=1e-2, batch_size=16, seed=0, progress=False)
    assert hist['loss'][-1] < 0.5 * hist['loss'][0]
    test_ims, test_boxes = make_rectangles(32, 1)
    for data_ims, data_boxes in [(ims, boxes), (test_ims, test_boxes)]:
        pred = m.predict(data_ims, score_threshold=0.05)
        ap = average_precision([(p['boxes'], p['scores']) for p in pred], data_boxes)
        assert ap > 0.85, ap
    assert time.perf_counter() - t0 < 60
