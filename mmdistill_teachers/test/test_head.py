import math

import numpy as np
import pytest
import torch

from mmdistill_common.boxes import iou_matrix
from mmdistill_teachers.head import (DetectionHead, TargetCache, assign_targets, attention_maps, cell_centers, decode,
                                     detection_loss, feature_sizes_for, giou_loss, paired_iou,
                                     quality_focal_loss, sigmoid_focal_loss)

IMG = (384, 128)


def perfect_outputs(targets, image_size=IMG, strides=(8, 16, 32), centerness=True):
    """Head outputs that reproduce ``targets`` exactly (batch of targets)."""
    sizes = feature_sizes_for(image_size, strides)
    bsz, _, k = targets['cls'].shape
    cls, box, ctr = [], [], []
    start = 0
    for h, w in sizes:
        sl = slice(start, start + h * w)
        c = torch.where(targets['cls'][:, sl] > 0, 12.0, -12.0)
        cls.append(c.transpose(1, 2).reshape(bsz, k, h, w))
        ltrb = targets['ltrb'][:, sl].clamp(min=1e-3)
        box.append(ltrb.transpose(1, 2).reshape(bsz, 4, h, w))
        ct = targets['centerness'][:, sl].clamp(1e-4, 1 - 1e-4)
        ctr.append(torch.log(ct / (1 - ct)).reshape(bsz, 1, h, w))
        start += h * w
    return {'cls_logits': cls, 'box_ltrb': box, 'centerness': ctr if centerness else None,
            'strides': tuple(strides), 'image_size': image_size}


def test_feature_sizes_default():
    assert feature_sizes_for(IMG) == [(16, 48), (8, 24), (4, 12)]
    pts, st, lv = cell_centers(feature_sizes_for(IMG), (8, 16, 32))
    assert pts.shape == (16 * 48 + 8 * 24 + 4 * 12, 2)
    assert np.allclose(pts[0], [4, 4]) and np.allclose(pts[1], [12, 4]) and np.allclose(pts[48], [4, 12])
    assert st[-1] == 32 and lv[-1] == 2


def test_head_output_structure():
    torch.manual_seed(0)
    head = DetectionHead(16, num_classes=3, width=8, num_convs=1)
    feats = [torch.randn(2, 16, h, w) for h, w in feature_sizes_for(IMG)]
    out = head(feats, image_size=IMG)
    assert [tuple(t.shape) for t in out['cls_logits']] == [(2, 3, 16, 48), (2, 3, 8, 24), (2, 3, 4, 12)]
    assert [tuple(t.shape) for t in out['box_ltrb']] == [(2, 4, 16, 48), (2, 4, 8, 24), (2, 4, 4, 12)]
    assert [tuple(t.shape) for t in out['centerness']] == [(2, 1, 16, 48), (2, 1, 8, 24), (2, 1, 4, 12)]
    assert out['strides'] == (8, 16, 32) and out['image_size'] == IMG
    # prior-probability bias init: sigmoid(bias) == 0.01
    assert torch.allclose(torch.sigmoid(head.cls_out.bias), torch.full((3,), 0.01))
    assert all(bool((b > 0).all()) for b in out['box_ltrb'])
    with pytest.raises(ValueError):
        head(feats[:2])
    nc = DetectionHead(16, centerness=False)(feats)
    assert nc['centerness'] is None and nc['image_size'] == IMG


def test_assignment_rules():
    boxes = [np.array([[100, 30, 160, 90], [10, 10, 26, 22], [150, 0, 380, 128]], float)]
    t = assign_targets(boxes, IMG)
    pos = t['pos'][0].numpy()
    pts = t['points'].numpy()
    matched = t['matched'][0].numpy()
    assert pos.sum() > 0
    for gi in range(3):
        assert (matched == gi).any(), f'box {gi} has no positive cell'
    sizes = feature_sizes_for(IMG)
    n3 = sizes[0][0] * sizes[0][1]
    n4 = sizes[1][0] * sizes[1][1]
    g = boxes[0]
    for i in np.flatnonzero(pos):
        b = g[matched[i]]
        x, y = pts[i]
        assert b[0] < x < b[2] and b[1] < y < b[3]
        assert np.allclose(t['boxes'][0, i].numpy(), b)
        assert np.allclose(t['ltrb'][0, i].numpy(), [x - b[0], y - b[1], b[2] - x, b[3] - y])
        m = t['ltrb'][0, i].max().item()
        level = 0 if i < n3 else (1 if i < n3 + n4 else 2)
        lo, hi = [(0, 64), (64, 128), (128, math.inf)][level]
        assert lo <= m <= hi
    # the big box only on coarse levels, the small one only on P3
    assert all(i >= n3 for i in np.flatnonzero(matched == 2))
    assert all(i < n3 for i in np.flatnonzero(matched == 1))
    assert t['cls'][0, pos, 0].eq(1).all() and t['cls'][0, ~pos].eq(0).all()
    assert ((t['centerness'][0][pos] > 0) & (t['centerness'][0][pos] <= 1)).all()


def test_assignment_min_area_and_tiny_fallback_and_labels():
    big = [40, 20, 120, 100]
    small = [70, 50, 90, 70]           # inside the big one: shared cells go to the smaller box
    tiny = [201, 61, 205, 65]          # smaller than a stride, between cell centres
    t = assign_targets([np.array([big, small, tiny], float)], IMG, labels_list=[np.array([0, 2, 1])],
                       num_classes=3)
    matched = t['matched'][0].numpy()
    pts = t['points'].numpy()
    assert (matched == 1).sum() >= 1 and (matched == 2).sum() == 1
    i_tiny = int(np.flatnonzero(matched == 2)[0])
    assert np.allclose(pts[i_tiny], [204, 60])
    assert t['cls'][0, i_tiny].tolist() == [0, 1, 0]
    assert t['centerness'][0, i_tiny] == 1.0
    # cells inside the small box's centre region are the small box's
    i_centre = int(np.flatnonzero(np.all(pts == [76, 60], axis=1))[0])
    assert matched[i_centre] == 1
    with pytest.raises(ValueError):
        assign_targets([np.array([big], float)], IMG, labels_list=[np.array([3])], num_classes=3)


def test_empty_images():
    t = assign_targets([np.zeros((0, 4)), np.zeros((0, 4))], IMG)
    assert t['pos'].sum() == 0 and t['cls'].shape == (2, 1008, 1)
    torch.manual_seed(0)
    head = DetectionHead(8, num_convs=1)
    out = head([torch.randn(2, 8, h, w, requires_grad=True) for h, w in feature_sizes_for(IMG)])
    loss = detection_loss(out, t)
    assert loss['box'].item() == 0 and loss['centerness'].item() == 0 and loss['total'].item() > 0
    loss['total'].backward()
    assert decode(out, score_threshold=0.5)[0][0].shape == (0, 4)


@pytest.mark.parametrize('centerness', [True, False])
def test_encode_decode_round_trip(centerness):
    rng = np.random.default_rng(1)
    boxes_list = []
    for _ in range(3):
        bs = []
        while len(bs) < 4:
            w, h = rng.uniform(12, 200), rng.uniform(10, 110)
            x1, y1 = rng.uniform(0, 384 - w), rng.uniform(0, 128 - h)
            cand = np.array([x1, y1, x1 + w, y1 + h])
            if not bs or iou_matrix(cand[None], np.array(bs)).max() < 0.3:
                bs.append(cand)
        boxes_list.append(np.array(bs))
    t = assign_targets(boxes_list, IMG)
    out = perfect_outputs(t, centerness=centerness)
    dets = decode(out, score_threshold=0.5, nms_iou=0.5)
    for (b, s, l), g in zip(dets, boxes_list):
        assert len(b) == len(g)
        iou = iou_matrix(b, g)
        assert np.all(iou.max(axis=1) > 0.999), iou
        assert np.allclose(np.sort(b, axis=0), np.sort(g, axis=0).astype(np.float32), atol=1e-3)
        assert np.all(l == 0) and np.all(s > (0.5 if centerness else 0.99)) and np.all(np.diff(s) <= 0)
    # perfect outputs have (near) zero box loss
    loss = detection_loss(out, t)
    assert loss['box'].item() < 1e-4
    l1 = detection_loss(out, t, box_loss='l1')
    assert l1['box'].item() < 1e-2


def test_decode_class_aware_nms_and_limits():
    boxes = np.array([[50, 20, 120, 100]], float)
    t = assign_targets([boxes], IMG, labels_list=[np.array([1])], num_classes=2)
    out = perfect_outputs(t)
    # the same cells also fire for class 0 at a lower score: class-aware NMS keeps both
    out['cls_logits'] = [torch.cat([torch.where(c[:, 1:2] > 0, 2.0, -12.0), c[:, 1:2]], dim=1)
                         for c in out['cls_logits']]
    b, s, l = decode(out, score_threshold=0.3)[0]
    assert sorted(l.tolist()) == [0, 1] and l[0] == 1
    b, s, l = decode(out, score_threshold=0.3, class_agnostic_nms=True)[0]
    assert l.tolist() == [1]
    b, s, l = decode(out, score_threshold=0.3, max_detections=1)[0]
    assert len(b) == 1


def test_decode_clips_to_image():
    t = assign_targets([np.array([[300, 60, 383, 127]], float)], IMG)
    out = perfect_outputs(t)
    out['box_ltrb'] = [b * 3 for b in out['box_ltrb']]
    b, _, _ = decode(out, score_threshold=0.5)[0]
    assert b[:, [0, 2]].min() >= 0 and b[:, 2].max() <= 384 and b[:, 3].max() <= 128


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0):
    # torchvision.ops.sigmoid_focal_loss, reduction 'none' (torchvision is not installed here)
    p = torch.sigmoid(inputs)
    ce_loss = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction='none')
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


def test_focal_loss_formula():
    x = torch.tensor([[-3.0, -0.5, 0.0, 0.7, 4.0], [2.0, -1.0, 1.5, -6.0, 0.1]], dtype=torch.float64)
    y = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.float64)
    got = sigmoid_focal_loss(x, y, reduction='none')
    xn, yn = x.numpy(), y.numpy()
    p = 1 / (1 + np.exp(-xn))
    pt = np.where(yn == 1, p, 1 - p)
    at = np.where(yn == 1, 0.25, 0.75)
    expected = -at * (1 - pt) ** 2 * np.log(pt)
    assert np.allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(got, torchvision_sigmoid_focal_loss(x, y))
    assert torch.isclose(sigmoid_focal_loss(x, y), got.sum())
    assert torch.isclose(sigmoid_focal_loss(x, y, reduction='mean'), got.mean())
    # gamma 0 and no alpha: plain BCE
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction='none')
    assert torch.allclose(sigmoid_focal_loss(x, y, alpha=-1, gamma=0, reduction='none'), bce)
    # stable for large logits
    big = sigmoid_focal_loss(torch.tensor([80.0, -80.0]), torch.tensor([0.0, 1.0]), reduction='none')
    assert torch.all(torch.isfinite(big)) and torch.allclose(big, torch.tensor([0.75 * 80, 0.25 * 80]))


def test_detection_loss_focal_normalisation():
    boxes = [np.array([[50, 20, 120, 100]], float), np.array([[200, 40, 240, 80]], float)]
    t = assign_targets(boxes, IMG)
    torch.manual_seed(0)
    head = DetectionHead(8, num_convs=1)
    out = head([torch.randn(2, 8, h, w) for h, w in feature_sizes_for(IMG)])
    loss = detection_loss(out, t)
    cls = torch.cat([c.flatten(2).transpose(1, 2) for c in out['cls_logits']], 1)
    manual = torchvision_sigmoid_focal_loss(cls, t['cls']).sum() / t['pos'].sum()
    assert torch.isclose(loss['focal'], manual)
    assert torch.isclose(loss['total'], loss['focal'] + loss['box'] + loss['centerness'])
    assert loss['num_pos'].item() == t['pos'].sum().item()
    with pytest.raises(ValueError, match='do not match'):
        detection_loss(out, assign_targets(boxes, (384, 256)))


def test_quality_focal_loss_formula():
    x = torch.tensor([[-3.0, -0.5, 0.0, 0.7, 4.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.3, 1.0, 0.7, 0.9]], dtype=torch.float64)
    p = 1 / (1 + np.exp(-x.numpy()))
    yn = y.numpy()
    expected = -(yn * np.log(p) + (1 - yn) * np.log(1 - p)) * np.abs(yn - p) ** 2
    got = quality_focal_loss(x, y, reduction='none')
    assert np.allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    assert torch.isclose(quality_focal_loss(x, y), got.sum())
    # with hard targets and no alpha it is the binary focal loss
    hard = (y > 0.5).double()
    assert torch.allclose(quality_focal_loss(x, hard, reduction='none'),
                          sigmoid_focal_loss(x, hard, alpha=-1, reduction='none'))
    with pytest.raises(ValueError, match='reduction'):
        quality_focal_loss(x, y, reduction='max')


def test_paired_iou_is_the_diagonal_of_the_iou_matrix():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (50, 2))
    a = np.c_[xy, xy + rng.uniform(1, 60, (50, 2))]
    b = a + rng.normal(0, 15, (50, 4))
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
    got = paired_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.allclose(got, np.diag(iou_matrix(a, b)), atol=1e-6)


def test_detection_loss_iou_quality_targets():
    """quality='iou': the centerness target is the predicted box's IoU with its label box;
    'iou_focal': the class target too, learnt with the quality focal loss (a perfect box: 1)."""
    boxes = [np.array([[50, 20, 120, 100]], float), np.array([[200, 40, 240, 80]], float)]
    t = assign_targets(boxes, IMG)
    torch.manual_seed(0)
    head = DetectionHead(8, num_convs=1)
    out = head([torch.randn(2, 8, h, w) for h, w in feature_sizes_for(IMG)])
    loss = detection_loss(out, t, quality='iou_focal')
    cls = torch.cat([c.flatten(2).transpose(1, 2) for c in out['cls_logits']], 1)
    ltrb = torch.cat([c.flatten(2).transpose(1, 2) for c in out['box_ltrb']], 1)
    ctr = torch.cat([c.flatten(2).transpose(1, 2) for c in out['centerness']], 1)[..., 0]
    pos = t['pos']
    pts = t['points'].unsqueeze(0).expand(2, -1, -1)[pos]
    pred = torch.cat([pts - ltrb[pos][:, :2], pts + ltrb[pos][:, 2:]], 1).detach()
    iou = torch.tensor([iou_matrix(p[None].numpy(), g[None].numpy())[0, 0]
                        for p, g in zip(pred, t['boxes'][pos])], dtype=cls.dtype).clamp(min=0.01)
    soft = t['cls'].clone().to(cls.dtype)
    soft[pos] = soft[pos] * iou[:, None]
    manual = quality_focal_loss(cls, soft).sum() / pos.sum()
    assert torch.isclose(loss['focal'], manual, rtol=1e-4)
    assert torch.isclose(loss['centerness'],
                         torch.nn.functional.binary_cross_entropy_with_logits(ctr[pos], iou), rtol=1e-4)
    plain, iou_only = detection_loss(out, t), detection_loss(out, t, quality='iou')
    assert not torch.isclose(loss['focal'], plain['focal'])
    assert torch.isclose(iou_only['focal'], plain['focal']) and torch.isclose(iou_only['box'], plain['box'])
    assert torch.isclose(iou_only['centerness'], loss['centerness'])
    # exact boxes: every positive's target is 1, so the class loss is the binary one without alpha
    perfect = perfect_outputs(t)
    exact = detection_loss(perfect, t, quality='iou_focal')
    pcls = torch.cat([c.flatten(2).transpose(1, 2) for c in perfect['cls_logits']], 1)
    hard = sigmoid_focal_loss(pcls, t['cls'].to(pcls.dtype), alpha=-1).sum() / pos.sum()
    assert torch.isclose(exact['focal'], hard, rtol=1e-3)
    with pytest.raises(ValueError, match='quality'):
        detection_loss(out, t, quality='centre')


def test_giou_loss_values():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 0, 30, 10]])
    got = giou_loss(a, b)
    # identical: 0; half overlap: 1 - (50/150 - 0); disjoint: 1 - (0 - (300-200)/300)
    assert torch.allclose(got, torch.tensor([0.0, 1 - 1 / 3, 1 + 1 / 3]), atol=1e-5)


def test_attention_maps():
    f = [torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]]), torch.randn(2, 5, 4, 12)]
    a = attention_maps(f, r=2)
    assert tuple(a[0].shape) == (1, 1, 2) and tuple(a[1].shape) == (2, 4, 12)
    assert torch.allclose(a[0], torch.tensor([[[5.0, 2.0]]]))
    assert torch.allclose(a[1], (f[1] ** 2).mean(1))
    a1 = attention_maps(f, r=1)
    assert torch.allclose(a1[0], torch.tensor([[[2.0, 1.0]]]))
    assert all(bool((m >= 0).all()) for m in a)


def test_target_cache_equals_assign_targets_and_memoises():
    rng = np.random.default_rng(3)
    size, strides = (768, 256), (16, 32, 64)
    images = []
    for k in (0, 1, 3, 5, 2):
        x1, y1 = rng.uniform(0, 700, k), rng.uniform(0, 200, k)
        w, h = rng.uniform(2, 200, k), rng.uniform(2, 60, k)      # includes sub-stride (fallback) boxes
        images.append(np.stack([x1, y1, np.minimum(x1 + w, 768), np.minimum(y1 + h, 256)], axis=1))
    mirrored = [np.stack([768 - b[:, 2], b[:, 1], 768 - b[:, 0], b[:, 3]], axis=1) for b in images]
    cache = TargetCache(size, strides)
    for batch in (images, mirrored[::-1], images[1:] + mirrored[:2]):
        got, want = cache(batch), assign_targets(batch, size, strides)
        assert set(got) == set(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    assert len(cache) == len(images) + len(mirrored) - 1        # the two empty images share one entry
    empty = cache([])
    assert empty['pos'].shape[0] == 0


def test_decode_flat_equals_decode_of_the_level_maps():
    """decode_flat (the ONNX student's flat outputs, numpy) gives decode's detections, with the
    per-level pre-NMS cap in force."""
    from mmdistill_teachers.head import decode_flat, flatten_outputs
    torch.manual_seed(0)
    sizes, strides = [(8, 24), (4, 12), (2, 6)], (16, 32, 64)
    outs = {'cls_logits': [torch.randn(2, 2, h, w) for h, w in sizes],
            'box_ltrb': [torch.rand(2, 4, h, w) * 80 for h, w in sizes],
            'centerness': [torch.randn(2, 1, h, w) for h, w in sizes], 'strides': strides, 'image_size': (384, 128)}
    f = flatten_outputs(outs)
    for kw in ({'score_threshold': 0.2, 'pre_nms_top_k': 30}, {'score_threshold': 0.5, 'class_agnostic_nms': True}):
        a = decode(outs, **kw)
        b = decode_flat(f['cls'].numpy(), f['ltrb'].numpy(), f['ctr'].numpy(), f['feature_sizes'], strides,
                        (384, 128), **kw)
        for x, y in zip(a, b):
            assert len(x[0]) > 0
            for u, v in zip(x, y):
                np.testing.assert_array_equal(u, v)
