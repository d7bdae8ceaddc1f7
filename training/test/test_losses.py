"""Distillation losses: properties of the MTA KL, product target, reference ablation, ranking."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mmdistill_common.errors import ConfigError
from mmdistill_training.losses import (
    attention_distribution, attention_map, averaged_teacher_target, kl_divergence, mta_loss,
    mta_loss_reference, ranking_loss, teacher_product_target)

torch.set_num_threads(1)
LEVELS = [(16, 48), (8, 24), (4, 12)]


def feats(B=2, C=8, seed=0, requires_grad=False, levels=LEVELS):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, C, h, w, generator=g).requires_grad_(requires_grad) for h, w in levels]


def teacher_q(B=2, n_teachers=3, seed=1, levels=LEVELS):
    g = torch.Generator().manual_seed(seed)
    return [[torch.rand(B, h, w, generator=g) for _ in range(n_teachers)] for h, w in levels]


# ---------------------------------------------------------------- attention distribution

def test_attention_map_formula():
    f = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(attention_map(f, r=2), (f ** 2).mean(1).flatten(1))
    torch.testing.assert_close(attention_map(f, r=3), f.abs().pow(3).mean(1).flatten(1))
    p = attention_distribution(f)
    torch.testing.assert_close(p, attention_map(f) / attention_map(f).sum(1, keepdim=True))
    q = torch.rand(2, 3, 4)
    torch.testing.assert_close(attention_distribution(q, tau=0.5),
                               q.flatten(1) ** 2 / (q.flatten(1) ** 2).sum(1, keepdim=True))


def test_tau_flattens_and_sharpens():
    q = torch.rand(4, 16, 48) + 0.01
    uniform = math.log(16 * 48)

    def entropy(p):
        return -(p * p.log()).sum(1)
    h = [entropy(attention_distribution(q, tau=t)) for t in (0.25, 1.0, 4.0, 1000.0)]
    assert torch.all(h[0] < h[1]) and torch.all(h[1] < h[2]) and torch.all(h[2] < h[3])
    assert torch.allclose(h[3], torch.full_like(h[3], uniform), atol=1e-4)
    with pytest.raises(ConfigError):
        attention_distribution(q, tau=0)


# ---------------------------------------------------------------- KL / MTA

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), B=st.integers(1, 3), n_teachers=st.integers(1, 3),
       tau=st.floats(0.3, 5.0), scale=st.floats(1e-3, 1e3), target=st.sampled_from(['product', 'average']))
def test_mta_nonnegative(seed, B, n_teachers, tau, scale, target):
    s = [f * scale for f in feats(B, seed=seed)]
    t = teacher_q(B, n_teachers, seed=seed + 1)
    loss = mta_loss(s, t, tau=tau, target=target)
    assert torch.isfinite(loss) and loss.item() >= -1e-6


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 50))
def test_kl_nonnegative_zero_iff_equal(seed, n):
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(3, n, generator=g) * 3, 1)
    lq = torch.log_softmax(torch.randn(3, n, generator=g) * 3, 1)
    kl = kl_divergence(lp, lq)
    assert torch.all(kl >= -1e-6)
    assert torch.allclose(kl_divergence(lp, lp), torch.zeros(3), atol=1e-6)
    differs = (lp.exp() - lq.exp()).abs().amax(1) > 1e-3
    assert torch.all(kl[differs] > 0)


def test_mta_zero_iff_student_matches_target():
    # single teacher whose features equal the student's -> identical distributions -> 0
    s = feats(seed=3)
    loss = mta_loss(s, [[f.clone()] for f in s], eps=0.0)
    assert abs(loss.item()) < 1e-5
    # teacher product target reproduced exactly by a student whose q is that target
    t = teacher_q(seed=4)
    targets = [teacher_product_target(level) for level in t]
    student = [p.view(2, 1, h, w).sqrt() for p, (h, w) in zip(targets, LEVELS)]   # q = P_t
    assert abs(mta_loss(student, t).item()) < 1e-5
    assert mta_loss(feats(seed=5), t).item() > 1e-3


def test_mta_gradient_to_student_only():
    s = feats(seed=6, requires_grad=True)
    t_feats = [[torch.randn(2, 16, h, w, requires_grad=True) for _ in range(3)] for h, w in LEVELS]
    loss = mta_loss(s, t_feats)
    loss.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s)
    assert all(f.grad is None for level in t_feats for f in level)
    # explicit: derivative w.r.t. teacher inputs is zero / absent
    t2 = [[torch.rand(2, h, w, requires_grad=True) for _ in range(2)] for h, w in LEVELS]
    grads = torch.autograd.grad(mta_loss(feats(seed=7, requires_grad=True), t2),
                                [x for level in t2 for x in level], allow_unused=True)
    assert all(gr is None or gr.abs().sum() == 0 for gr in grads)


def test_mta_accepts_dict_and_features_and_checks_shapes():
    s = feats(seed=8)
    t = teacher_q(seed=9)
    by_name = {name: [t[j][i] for j in range(3)] for i, name in enumerate(['rgb', 'depth', 'thermal'])}
    torch.testing.assert_close(mta_loss(s, t), mta_loss(s, by_name))
    with pytest.raises(ConfigError):
        mta_loss(s, t[:2])
    with pytest.raises(ConfigError):
        mta_loss(s, [[torch.rand(2, 5, 5)]] * 3)
    # beta scales linearly; mask drops samples
    torch.testing.assert_close(mta_loss(s, t, beta=1.0), 2 * mta_loss(s, t, beta=0.5))
    only0 = mta_loss([f[:1] for f in s], [[q[:1] for q in lv] for lv in t])
    torch.testing.assert_close(mta_loss(s, t, mask=torch.tensor([1.0, 0.0])), only0)


# ---------------------------------------------------------------- product target

def test_product_target_with_silent_teacher():
    t = teacher_q(B=1, n_teachers=2, seed=10, levels=[(8, 24)])[0]
    silent = torch.zeros(1, 8, 24)
    p = teacher_product_target(t + [silent])
    assert torch.all(p > 0) and torch.allclose(p.sum(1), torch.ones(1))
    # a silent teacher contributes a constant factor: target == product of the others
    torch.testing.assert_close(p, teacher_product_target(t))
    # a naive product without eps vanishes everywhere (the defect eps prevents)
    naive = torch.stack([q.flatten(1) / q.flatten(1).sum(1, keepdim=True).clamp_min(1e-12)
                         for q in t + [silent]]).prod(0)
    assert torch.all(naive == 0)
    # a teacher that is low on a cell lowers that cell
    low = t[0].clone()
    low[0, 3, 3] = 0.0
    assert teacher_product_target([low, t[1]]).view(8, 24)[3, 3] < p.view(8, 24)[3, 3]


def test_product_target_agreement_and_veto():
    base = torch.full((1, 4, 4), 1.0)
    a = base.clone(); a[0, 1, 1] = 10.0                 # both teachers see cell (1,1)
    b = base.clone(); b[0, 1, 1] = 10.0; b[0, 2, 2] = 10.0   # only b sees (2,2)
    c = base.clone(); c[0, 2, 2] = 0.0                  # c says nothing is at (2,2)
    p = teacher_product_target([a, b, c], eps=0.01).view(4, 4)
    assert p.argmax() == 5                              # agreed cell wins
    avg = averaged_teacher_target([a, b, c]).view(4, 4)
    assert p[2, 2] < avg[2, 2]                          # product lets one teacher lower a cell
    assert torch.allclose(avg.sum(), torch.tensor(1.0))
    torch.testing.assert_close(averaged_teacher_target([a]), teacher_product_target([a], eps=0.0))


# ---------------------------------------------------------------- reference ablation

def test_reference_variant_is_negative_and_nearly_constant():
    t = teacher_q(B=4, seed=11)
    values = []
    for seed in range(5):
        s = feats(B=4, seed=100 + seed)
        values.append(mta_loss_reference(s, t).item())
    # student equal to a teacher vs a random student: the reference barely notices
    match = mta_loss_reference([lv[0].sqrt().unsqueeze(1) for lv in t], t).item()
    values.append(match)
    expected = -0.5 * 3 * sum(math.log(h * w) for h, w in LEVELS)   # ~ -beta * T * sum_j log N_j
    assert all(v < 0 for v in values)
    assert max(values) - min(values) < 1e-3 * abs(expected)
    assert abs(values[0] - expected) < 0.05 * abs(expected)
    # whereas the true KL separates a matching student from random ones by orders of magnitude
    true_match = mta_loss([lv[0].sqrt().unsqueeze(1) for lv in t], [[lv[0]] for lv in t], eps=0.0).item()
    true_rand = mta_loss(feats(B=4, seed=100), [[lv[0]] for lv in t], eps=0.0).item()
    assert true_match < 1e-5 < 0.1 < true_rand


def test_reference_gradient_is_tiny():
    s = feats(seed=12, requires_grad=True)
    t = teacher_q(seed=13)
    g_ref = torch.autograd.grad(mta_loss_reference(s, t), s)
    s2 = [f.detach().clone().requires_grad_(True) for f in s]
    g_true = torch.autograd.grad(mta_loss(s2, t), s2)
    ratio = sum(g.abs().sum() for g in g_ref) / sum(g.abs().sum() for g in g_true)
    assert ratio < 0.05


# ---------------------------------------------------------------- ranking loss

def test_ranking_loss_properties():
    g = torch.Generator().manual_seed(14)
    t = [torch.randn(4, 8, h, w, generator=g) for h, w in LEVELS]
    aligned = ranking_loss([x.clone() for x in t], t, margin=0.5)
    shuffled = ranking_loss([x[[1, 2, 3, 0]] for x in t], t, margin=0.5)
    assert aligned.item() == pytest.approx(0.0, abs=1e-6)   # d(pos)=0, d(neg)~2 > margin
    assert shuffled.item() > 1.0
    assert ranking_loss([x.clone() for x in t], t, negatives='roll').item() == pytest.approx(0.0, abs=1e-6)
    s = [torch.randn(4, 8, h, w, generator=g, requires_grad=True) for h, w in LEVELS]
    tt = [x.requires_grad_(True) for x in t]
    ranking_loss(s, tt).backward()
    assert all(x.grad.abs().sum() > 0 for x in s) and all(x.grad is None for x in tt)
    single = ranking_loss(t[0][:1], t[0][:1])
    assert single.item() == 0.0
    with pytest.raises(ConfigError):
        ranking_loss(s, tt, negatives='hard')
