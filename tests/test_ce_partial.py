"""The partial (class-slice) cross-entropy steps (csrc/ops/ce_partial.h): stats of class slices, merged,
finished and turned into gradients, against torch's cross_entropy in float64 on the whole logits (softcap
and z-loss composed in torch)."""
import pytest
import torch
import torch.nn.functional as F

import fastloss  # noqa: F401

ops = torch.ops.fastloss


def _reference(x, target, weight, ignore_index, eps, softcap, z_loss, reduction):
    """torch's cross_entropy on capped logits plus the z-loss, in float64, with its gradient."""
    x = x.detach().double().requires_grad_()
    z = softcap * torch.tanh(x / softcap) if softcap else x
    w = weight.double() if weight is not None else None
    prob = target.is_floating_point()
    t = target.double() if prob else target
    kw = {} if prob else {"ignore_index": ignore_index}
    loss = F.cross_entropy(z, t, w, reduction=reduction, label_smoothing=eps, **kw)
    if z_loss:
        lse = torch.logsumexp(z, 1)
        valid = torch.ones_like(lse, dtype=torch.bool) if prob else target != ignore_index
        zt = torch.where(valid, z_loss * lse * lse, torch.zeros_like(lse))
        zt = {"none": zt, "sum": zt.sum(), "mean": zt.sum() / valid.sum()}[reduction]
        loss = loss + zt
    g = torch.autograd.grad(loss.sum(), x)[0]
    return loss.detach(), g


def _partial(x, target, weight, ignore_index, eps, softcap, z_loss, reduction, cuts):
    """The same through slices [cuts[i], cuts[i+1]) of the classes."""
    R, C = x.shape
    prob = target.is_floating_point()
    stats = None
    for a, b in zip(cuts[:-1], cuts[1:]):
        tw = weight[a:b] if weight is not None else None
        tt = target[:, a:b] if prob else target
        st = ops.ce_partial_stats(x[:, a:b].contiguous(), tt.contiguous(), tw, a, C, ignore_index, eps, softcap)
        stats = st if stats is None else ops.ce_partial_merge(stats, st)
    W = weight.sum().to(stats.dtype) if weight is not None else torch.tensor(float(C), dtype=stats.dtype)
    ce, zt, coef = ops.ce_partial_finish(stats, target, W, C, ignore_index, eps, z_loss)
    valid = torch.ones(R, dtype=torch.bool) if prob else target != ignore_index
    if reduction == "mean":
        s_ce = 1 / (torch.tensor(float(R), dtype=stats.dtype) if prob else stats[:, 3].sum())
        s_z = 1 / valid.sum().to(stats.dtype)
        loss = ce.sum() * s_ce + zt.sum() * s_z
    elif reduction == "sum":
        s_ce = s_z = torch.ones((), dtype=stats.dtype)
        loss = ce.sum() + zt.sum()
    else:
        s_ce = s_z = torch.ones((), dtype=stats.dtype)
        loss = ce + zt
    k4 = ops.ce_partial_grad_coef(coef, s_ce, s_z)
    grads = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        tw = weight[a:b] if weight is not None else None
        tt = target[:, a:b].contiguous() if prob else target
        grads.append(ops.ce_partial_grad(x[:, a:b].contiguous(), tt, tw, k4, a, ignore_index, softcap))
    g = torch.cat(grads, 1)
    g2 = x.clone()
    ops.ce_partial_grad_(g2, target, weight, k4, 0, ignore_index, softcap)
    torch.testing.assert_close(g2, ops.ce_partial_grad(x, target, weight, k4, 0, ignore_index, softcap))
    return loss, g


@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_partial_matches_whole(prob, weighted, eps, softcap, z_loss, reduction):
    g = torch.Generator().manual_seed(0)
    R, C = 7, 23
    x = torch.randn(R, C, generator=g, dtype=torch.float64) * 3
    weight = torch.rand(C, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    if prob:
        target = torch.rand(R, C, generator=g, dtype=torch.float64).softmax(1)
    else:
        target = torch.randint(0, C, (R,), generator=g)
        target[2] = -100
    ref_loss, ref_g = _reference(x, target, weight, -100, eps, softcap, z_loss, reduction)
    for cuts in ([0, C], [0, 5, 6, 17, C]):
        loss, grad = _partial(x, target, weight, -100, eps, softcap, z_loss, reduction, cuts)
        torch.testing.assert_close(loss, ref_loss)
        if reduction == "none":
            continue  # the row gradient needs grad_output per row: checked with sum below
        torch.testing.assert_close(grad, ref_g)
