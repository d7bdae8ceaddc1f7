import numpy as np
import pytest
import torch

from mmdistill_teachers.detector import TeacherDetector
from mmdistill_teachers.training import crop_boxes, hflip_boxes, train_teacher


def tiny(modality='thermal', seed=0):
    torch.manual_seed(seed)
    return TeacherDetector(modality, input_size=(64, 32), width=4, fpn_channels=8, head_convs=1)


def data(n=6, seed=0):
    rng = np.random.default_rng(seed)
    ims, boxes = [], []
    for _ in range(n):
        im = np.full((32, 64), 285.0, np.float32) + rng.normal(0, 1, (32, 64)).astype(np.float32)
        x1, y1 = int(rng.integers(0, 40)), int(rng.integers(0, 16))
        im[y1:y1 + 12, x1:x1 + 20] = 330.0
        ims.append(im)
        boxes.append(np.array([[x1, y1, x1 + 20, y1 + 12]], float))
    return ims, boxes


def test_hflip_boxes():
    b = np.array([[10, 5, 30, 20], [0, 0, 64, 32]], float)
    f = hflip_boxes(b, 64)
    assert np.allclose(f, [[34, 5, 54, 20], [0, 0, 64, 32]])
    assert np.allclose(hflip_boxes(f, 64), b)
    assert hflip_boxes(np.zeros((0, 4)), 64).shape == (0, 4)


def test_flip_is_consistent_with_image():
    # a flipped image with flipped boxes gives the same targets as flipping the target maps
    from mmdistill_teachers.head import assign_targets, feature_sizes_for
    b = np.array([[8, 4, 40, 28]], float)
    t = assign_targets([b], (64, 32))['pos'][0]
    tf = assign_targets([hflip_boxes(b, 64)], (64, 32))['pos'][0]
    (h, w) = feature_sizes_for((64, 32))[0]
    p3 = t[:h * w].reshape(h, w)
    p3f = tf[:h * w].reshape(h, w)
    assert torch.equal(p3.flip(-1), p3f)


def test_deterministic_with_seed():
    ims, boxes = data()
    h1 = train_teacher(m1 := tiny(), ims, boxes, epochs=2, batch_size=4, seed=3, progress=False)
    h2 = train_teacher(m2 := tiny(), ims, boxes, epochs=2, batch_size=4, seed=3, progress=False)
    assert h1['step_loss'] == h2['step_loss'] and len(h1['step_loss']) == 4
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    h3 = train_teacher(tiny(), ims, boxes, epochs=2, batch_size=4, seed=4, progress=False)
    assert h3['step_loss'] != h1['step_loss']
    assert set(h1) >= {'loss', 'focal', 'box', 'centerness', 'num_pos', 'lr', 'val'}
    assert len(h1['loss']) == 2 and not m1.training


def test_init_seed_and_tensor_input_and_options():
    ims, boxes = data()
    x = torch.stack([tiny().preprocess(im) for im in ims])
    m_a, m_b = tiny(seed=1), tiny(seed=2)
    calls = []
    ha = train_teacher(m_a, x, boxes, epochs=3, batch_size=4, seed=0, init_seed=5, max_steps=3,
                       hflip=False, box_loss='l1', progress=False, warmup_steps=2,
                       val_fn=lambda m, e: calls.append(e) or {'epoch': e})
    hb = train_teacher(m_b, ims, boxes, epochs=3, batch_size=4, seed=0, init_seed=5, max_steps=3,
                       hflip=False, box_loss='l1', progress=False, warmup_steps=2)
    assert len(ha['step_loss']) == 3 and ha['step_loss'] == hb['step_loss']
    assert calls == [0, 1] and ha['val'] == [{'epoch': 0}, {'epoch': 1}]
    assert ha['lr'][0] < ha['lr'][1]           # warm-up


def test_training_input_errors():
    ims, boxes = data(2)
    with pytest.raises(ValueError, match='2 images but 1'):
        train_teacher(tiny(), ims, boxes[:1], progress=False)
    with pytest.raises(ValueError, match='no training images'):
        train_teacher(tiny(), [], [], progress=False)


def test_crop_boxes_shift_clip_and_drop_slivers():
    b = np.array([[10, 5, 30, 20], [90, 0, 130, 10], [95, 0, 110, 10], [140, 0, 150, 10]], float)
    c = crop_boxes(b, 100, 32)           # crop [100, 132)
    # first and last are outside, the second keeps 30 of 40 px, the third 10 of 15 px
    assert np.allclose(c, [[0, 0, 30, 10], [0, 0, 10, 10]])
    assert len(crop_boxes(np.array([[98, 0, 110, 10]], float), 100, 32, min_kept=0.9)) == 0


def test_crop_training_is_deterministic_and_learns():
    ims, boxes = data(n=8)
    hs = []
    for _ in range(2):
        m = tiny()
        hs.append(train_teacher(m, ims, boxes, epochs=3, batch_size=4, seed=1, progress=False, crop_width=32))
    assert hs[0]['step_loss'] == hs[1]['step_loss']
    assert hs[0]['loss'][-1] < hs[0]['loss'][0]
    with pytest.raises(ValueError, match='crop_width'):
        train_teacher(tiny(), ims, boxes, epochs=1, progress=False, crop_width=65)


def test_bf16_autocast_trains_float32_weights_and_learns():
    """bfloat16 autocast: deterministic, float32 weights and loss, the loss falls as in float32."""
    ims, boxes = data(n=8)
    hs = [train_teacher(m := tiny(), ims, boxes, epochs=3, batch_size=4, seed=1, progress=False, bf16=True)
          for _ in range(2)]
    assert hs[0]['step_loss'] == hs[1]['step_loss']
    assert hs[0]['loss'][-1] < hs[0]['loss'][0]
    assert all(p.dtype == torch.float32 for p in m.parameters())
    h32 = train_teacher(tiny(), ims, boxes, epochs=3, batch_size=4, seed=1, progress=False)
    assert h32['step_loss'] != hs[0]['step_loss']          # the autocast really ran


def test_head_outputs_are_float32_under_bf16_autocast():
    """The box sides come out of float32 output convs: bfloat16 would round 700 px to 2-4 px."""
    m = tiny().eval()
    x = m.preprocess(data(1)[0][0])[None]
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out, feats = m(x)
    assert feats[0].dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for k in ('cls_logits', 'box_ltrb', 'centerness') for t in out[k])
