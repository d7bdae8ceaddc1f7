"""Distillation losses: Multi-Teacher Alignment (MTA), its reference-implementation ablation,
the averaged-teacher target and the StereoSoundNet-style ranking loss.

Notation (DESIGN section 7).  For a feature map ``F`` of shape ``(C, H, W)``:

* attention map ``q = mean_c |F_c|^r`` flattened to ``N = H * W`` cells (``r = 2``);
* ``normalize(x) = x / sum(x)``;
* with a temperature ``tau``: ``P = normalize(q ** (1 / tau))`` (``tau = 1``: ``P = normalize(q)``;
  ``tau -> inf`` flattens ``P`` towards uniform, ``tau -> 0`` sharpens it towards the argmax).

All distributions are computed in the log domain (``log P = log_softmax(log(q + tiny) / tau)``)
so that the KL divergence is exact and finite.

Input forms accepted wherever a "map" is expected:

* a feature map ``(B, C, H, W)`` -> ``q`` is computed with exponent ``r``;
* a precomputed attention map ``(B, H, W)`` or ``(B, N)`` (e.g. decoded from a recorded
  ``mmdistill_msgs/AttentionMap``) -> used as ``q`` directly (must be >= 0).

Teacher maps are always detached: gradients flow to the student only.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from mmdistill_common.errors import ConfigError

__all__ = [
    'attention_map', 'attention_distribution', 'log_attention_distribution',
    'teacher_product_target', 'averaged_teacher_target', 'kl_divergence', 'mta_loss',
    'mta_loss_reference', 'ranking_loss',
]

TINY = 1e-12
Tensor = torch.Tensor


def attention_map(x: Tensor, r: float = 2.0) -> Tensor:
    """``q`` of shape ``(B, N)``.

    Features ``(B, C, H, W)``: ``q[b, n] = (1/C) sum_c |F[b, c, n]|^r``.  Maps ``(B, H, W)`` or
    ``(B, N)`` are taken as ``q`` (flattened)."""
    if x.ndim == 4:
        return x.abs().pow(r).mean(dim=1).flatten(1)
    if x.ndim == 3:
        return x.flatten(1)
    if x.ndim == 2:
        return x
    raise ConfigError(f'attention input must be (B,C,H,W), (B,H,W) or (B,N); got {tuple(x.shape)}')


def log_attention_distribution(x: Tensor, r: float = 2.0, tau: float = 1.0) -> Tensor:
    """``log P`` with ``P = normalize(q ** (1/tau))``, ``(B, N)``:
    ``log P = log_softmax(log(q + 1e-12) / tau)``."""
    if not tau > 0:
        raise ConfigError(f'tau must be > 0, got {tau}')
    q = attention_map(x, r)
    return torch.log_softmax(torch.log(q.clamp_min(0) + TINY) / tau, dim=-1)


def attention_distribution(x: Tensor, r: float = 2.0, tau: float = 1.0) -> Tensor:
    """``P = normalize(q ** (1/tau))``, ``(B, N)``, each row sums to 1 (see module docstring for
    the accepted input forms)."""
    return log_attention_distribution(x, r, tau).exp()


def _per_teacher_log_normalized(maps: Sequence[Tensor], r: float, eps: float) -> Tensor:
    """``log(normalize(q_i) + eps/N)`` for each teacher, stacked ``(T, B, N)``; detached."""
    if len(maps) == 0:
        raise ConfigError('at least one teacher map is needed')
    qs = [attention_map(m.detach(), r).clamp_min(0).float() for m in maps]
    shape = qs[0].shape
    for q in qs:
        if q.shape != shape:
            raise ConfigError(f'teacher maps of one level differ in shape: {q.shape} vs {shape}')
    n = shape[-1]
    out = []
    for q in qs:
        nq = q / (q.sum(dim=-1, keepdim=True) + TINY)      # a silent teacher gives zeros here
        out.append(torch.log(nq + eps / n + TINY))
    return torch.stack(out)


def teacher_product_target(teacher_maps: Sequence[Tensor], eps: float = 0.01, tau: float = 1.0,
                           r: float = 2.0, log: bool = False) -> Tensor:
    """Product-of-teachers target for one pyramid level, ``(B, N)``:

        P_t = normalize( ( prod_i ( normalize(q_{t_i}) + eps / N ) ) ** (1 / tau) )

    ``eps / N`` (``eps`` relative to the uniform value ``1/N``) keeps one silent or missing
    teacher (all-zero map) from zeroing the product: such a teacher contributes a constant
    factor, so the target becomes the product of the remaining teachers.  A teacher that is
    low on a cell lowers that cell.  Detached.  ``log=True`` returns ``log P_t``."""
    if not tau > 0:
        raise ConfigError(f'tau must be > 0, got {tau}')
    logp = _per_teacher_log_normalized(teacher_maps, r, eps).sum(dim=0)
    out = torch.log_softmax(logp / tau, dim=-1)
    return out if log else out.exp()


def averaged_teacher_target(teacher_maps: Sequence[Tensor], tau: float = 1.0, r: float = 2.0,
                            log: bool = False) -> Tensor:
    """Averaged-teachers baseline target for one level, ``(B, N)``:

        P_avg = normalize( ( (1/T) sum_i normalize(q_{t_i}) ) ** (1 / tau) )

    (a silent teacher dilutes the others rather than vetoing cells).  Detached."""
    if not tau > 0:
        raise ConfigError(f'tau must be > 0, got {tau}')
    if len(teacher_maps) == 0:
        raise ConfigError('at least one teacher map is needed')
    qs = [attention_map(m.detach(), r).clamp_min(0).float() for m in teacher_maps]
    mean = torch.stack([q / (q.sum(dim=-1, keepdim=True) + TINY) for q in qs]).mean(dim=0)
    out = torch.log_softmax(torch.log(mean + TINY) / tau, dim=-1)
    return out if log else out.exp()


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(P || Q) = sum_n P_n (log P_n - log Q_n)`` per row, from log-probabilities ``(B, N)``.
    Non-negative (Gibbs), zero iff ``P == Q``; cells with ``P_n = 0`` contribute 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)


def _by_level(teachers, n_levels: int):
    """Normalise the teacher argument to ``[level][teacher]``."""
    if isinstance(teachers, Mapping):
        per_teacher = list(teachers.values())
        for name, maps in teachers.items():
            if len(maps) != n_levels:
                raise ConfigError(f'teacher {name!r} has {len(maps)} levels, student has {n_levels}')
        return [[maps[j] for maps in per_teacher] for j in range(n_levels)]
    teachers = list(teachers)
    if len(teachers) != n_levels:
        raise ConfigError(f'teacher maps cover {len(teachers)} levels, student has {n_levels} '
                          '(pass a list indexed [level][teacher] or a dict name -> [levels])')
    return [list(t) if isinstance(t, (list, tuple)) else [t] for t in teachers]


def mta_loss(student_features: Sequence[Tensor], teacher_maps, beta: float = 0.5,
             r: float = 2.0, tau: float = 1.0, eps: float = 0.01, target: str = 'product',
             mask: Optional[Tensor] = None) -> Tensor:
    """Multi-Teacher Alignment loss (DESIGN section 7):

        L_MTA = beta * sum_j mean_b KL( P_t^j || P_s^j )
              = beta * sum_j mean_b sum_n P_t^j[n] (log P_t^j[n] - log P_s^j[n])

    with ``P_s^j = normalize(q_s^j ** (1/tau))`` from the student's level-j features and
    ``P_t^j`` = :func:`teacher_product_target` (``target='product'``) or
    :func:`averaged_teacher_target` (``target='average'``).  Non-negative, zero iff the
    distributions are equal, gradient to the student only (targets detached).

    ``student_features``: list over levels of ``(B, C, H, W)``.  ``teacher_maps``: list over
    levels of lists over teachers (``[level][teacher]``), or a dict ``name -> [level maps]``;
    each map a feature map ``(B, C', H, W)`` or an attention map ``(B, H, W)`` / ``(B, H*W)``
    with the student's ``H, W``.  ``mask``: optional ``(B,)`` bool/float weights (e.g. frames
    without teacher attention get 0); the batch mean is taken over the weights."""
    if target not in ('product', 'average'):
        raise ConfigError(f"target must be 'product' or 'average', got {target!r}")
    levels = _by_level(teacher_maps, len(student_features))
    total = student_features[0].new_zeros(())
    for feat, maps in zip(student_features, levels):
        log_ps = log_attention_distribution(feat, r, tau)
        if target == 'product':
            log_pt = teacher_product_target(maps, eps, tau, r, log=True)
        else:
            log_pt = averaged_teacher_target(maps, tau, r, log=True)
        if log_pt.shape != log_ps.shape:
            raise ConfigError(f'teacher attention {tuple(log_pt.shape)} does not match student '
                              f'level {tuple(feat.shape)} (cells must match)')
        kl = kl_divergence(log_pt.to(log_ps.dtype), log_ps)          # (B,)
        if mask is None:
            total = total + kl.mean()
        else:
            w = mask.to(kl.dtype)
            total = total + (kl * w).sum() / w.sum().clamp_min(1.0)
    return beta * total


def mta_loss_reference(student_features: Sequence[Tensor], teacher_maps, beta: float = 0.5,
                       r: float = 2.0, T: float = 9.0) -> Tensor:
    """ABLATION ONLY: the MTA loss as the reference implementation computes it.

        L_ref = beta * sum_j sum_i F.kl_div( softmax(a_s^j / T), softmax(a_ti^j / T),
                                             reduction='batchmean')
        a = q / ||q||_2   (F.normalize: values in [0, 1])

    ``F.kl_div(input, target)`` computes ``sum target * (log target - input)`` and expects
    ``input`` to be a *log*-probability; here probabilities are passed.  Why this is wrong:

    * the term ``- sum target * input`` is ``- sum P_t P_s``, which is ~1/N, so the loss is
      ``~ -H(P_t)``: the negative entropy of the target, about ``-log N`` (-6.6 at 16x48),
      negative and nearly constant whatever the student does; its gradient w.r.t. the
      student only pushes ``sum P_t P_s`` up, a weak and biased signal;
    * ``T = 9`` applied to maps in [0, 1] (``softmax(a / 9)``) makes both distributions almost
      uniform (logits differ by at most 1/9), wiping out the spatial structure;
    * it is computed per teacher and summed instead of on the teachers' product.
    """
    levels = _by_level(teacher_maps, len(student_features))
    total = student_features[0].new_zeros(())
    for feat, maps in zip(student_features, levels):
        a_s = F.normalize(attention_map(feat, r), dim=1)
        p_s = torch.softmax(a_s / T, dim=-1)
        for m in maps:
            a_t = F.normalize(attention_map(m.detach(), r).float(), dim=1)
            p_t = torch.softmax(a_t / T, dim=-1)
            total = total + F.kl_div(p_s, p_t, reduction='batchmean')
    return beta * total


def ranking_loss(student_features: Union[Tensor, Sequence[Tensor]],
                 teacher_features: Union[Tensor, Sequence[Tensor]], margin: float = 0.5,
                 negatives: str = 'all') -> Tensor:
    """StereoSoundNet-style feature ranking loss (Gan et al., ICCV 2019) for the baseline.

    Per level, student and teacher maps are flattened per sample and L2-normalised
    (``s_b``, ``t_b``; channel counts may differ only if flattened sizes match, so project
    beforehand otherwise).  With ``d(x, y) = ||x - y||^2`` (in [0, 4]), the positive is the
    paired teacher ``t_b`` and the negatives are teachers of other samples ``t_k, k != b``
    (``negatives='all'``) or of the batch rolled by one (``negatives='roll'``, one shuffled
    negative per sample):

        L = mean_b mean_{k in neg(b)} max(0, margin + d(s_b, t_b) - d(s_b, t_k))

    summed over levels.  The student is pulled towards its own teacher and away from the
    others'; teachers are detached.  A batch of one has no negatives and gives 0."""
    if negatives not in ('all', 'roll'):
        raise ConfigError(f"negatives must be 'all' or 'roll', got {negatives!r}")
    if isinstance(student_features, Tensor):
        student_features, teacher_features = [student_features], [teacher_features]
    if len(student_features) != len(teacher_features):
        raise ConfigError('student and teacher feature lists differ in length')
    total = student_features[0].new_zeros(())
    for fs, ft in zip(student_features, teacher_features):
        B = fs.shape[0]
        s = F.normalize(fs.flatten(1), dim=1)
        t = F.normalize(ft.detach().flatten(1).to(fs.dtype), dim=1)
        if s.shape != t.shape:
            raise ConfigError(f'student {tuple(fs.shape)} and teacher {tuple(ft.shape)} '
                              'flatten to different sizes')
        if B < 2:
            total = total + 0.0 * s.sum()
            continue
        d = torch.cdist(s, t).pow(2)                                   # (B, B)
        pos = d.diagonal()
        if negatives == 'roll':
            neg = d[torch.arange(B), torch.roll(torch.arange(B), 1)]
            total = total + F.relu(margin + pos - neg).mean()
        else:
            hinge = F.relu(margin + pos[:, None] - d)
            off = ~torch.eye(B, dtype=torch.bool, device=d.device)
            total = total + hinge[off].mean()
    return total
