"""margin_ranking_loss and hinge_embedding_loss (pointwise kinds in csrc: csrc/ops/pointwise.h) against
torch.nn.functional: values and gradients of every differentiable input over every reduction, odd and large
shapes, strided inputs, broadcasting, +-1 / other / integer targets, every dtype, exact hinge boundaries,
extreme values. Their modules, legacy arguments, mixed dtypes, autocast, bad arguments and gradcheck run with
the embedding losses' in tests/test_embedding.py (one parametrized set over the five hinge-like losses)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import (assert_close_ref, check_grads, device_params, diff_of, drop_kinks, DTYPES, make, make_sign_target,
                      REDUCTIONS, torch_ref)

INF = float("inf")


# ============================================================================ margin_ranking_loss
def mr_fn(module, margin=0.0, reduction="mean"):
    return lambda x1, x2, t: module.margin_ranking_loss(x1, x2, t, margin=margin, reduction=reduction)


MR_SHAPES = [((), (), ()), ((7,),) * 3, ((0,),) * 3, ((5, 4),) * 3, ((70001,),) * 3, ((3, 1000),) * 3,
             ((4, 1), (1, 3), (1, 1)), ((5,), (5,), (1,)), ((1, 6), (4, 6), (4, 1))]


def _mr_cases():
    out = []
    margins = [0.0, 0.5, -0.3]
    i = 0
    for shapes, kind, red in itertools.product(MR_SHAPES, ["pm1", "other", "int"], REDUCTIONS):
        margin = 0.0 if shapes[0] == (70001,) else margins[i % 3]  # float16 sums stay below 65504
        out.append((shapes, kind, margin, red, "contig"))
        i += 1
    for shape, layout, red in itertools.product([(5, 4), (3, 1000)], ["transpose", "slice"], ["none", "mean"]):
        out.append(((shape,) * 3, "pm1", 0.2, red, layout))
    return out


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes,kind,margin,reduction,layout", _mr_cases(), ids=str)
def test_margin_ranking_matches_torch(device, dtype, shapes, kind, margin, reduction, layout):
    """max(0, -target * (input1 - input2) + margin): input1, input2 and (floating) target gradients."""
    scale = 0.1 if math.prod(torch.broadcast_shapes(*shapes)) > 10000 else 1.5
    x1 = make(shapes[0], dtype, device, layout, scale).requires_grad_()
    x2 = make(shapes[1], dtype, device, layout, scale).requires_grad_()
    t = make_sign_target(kind, shapes[2], dtype, device)
    if t.is_floating_point():
        t.requires_grad_()
    loss = mr_fn(fastloss.functional, margin, reduction)(x1, x2, t)
    go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref, ref_grads = torch_ref(mr_fn(F, margin, reduction), (x1, x2, t), go)
    assert loss.dtype == dtype
    assert_close_ref(loss, ref, dtype, "loss")
    diff = diff_of(x1, x2, t)
    grads = torch.autograd.grad(loss, diff, go.to(loss.dtype))
    for g, a in zip(grads, diff):
        assert g.dtype == a.dtype and g.shape == a.shape
    kink = (-t.double() * (x1.double() - x2.double()) + margin) == 0
    grads, ref_grads = drop_kinks(grads, ref_grads, kink)
    check_grads(grads, ref_grads, dtype, math.prod(torch.broadcast_shapes(*shapes)), "",
                ["input1", "input2", "target"])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_margin_ranking_boundary(device, dtype):
    """-target * (input1 - input2) + margin == 0 exactly: loss 0, gradients 0 (all three), as torch."""
    x1 = torch.tensor([1.0, 2.0, 0.5, 0.25, 3.0, -1.0], device=device, dtype=dtype)
    x2 = torch.tensor([0.5, 2.0, 1.0, 0.75, 1.0, -1.5], device=device, dtype=dtype)
    t = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, 1.0], device=device, dtype=dtype)
    for margin, red in itertools.product([0.5, 0.0], REDUCTIONS):
        args = [a.clone().requires_grad_() for a in (x1, x2, t)]
        loss = fastloss.functional.margin_ranking_loss(*args, margin=margin, reduction=red)
        go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, ref_grads = torch_ref(mr_fn(F, margin, red), args, go)
        assert_close_ref(loss, ref, dtype, "loss")
        grads = torch.autograd.grad(loss, args, go.to(loss.dtype))
        at_boundary = (-t * (x1 - x2) + margin).double() == 0
        check_grads(*drop_kinks(grads, ref_grads, at_boundary), dtype, 6, f"margin={margin} {red}",
                    ["input1", "input2", "target"])
        assert at_boundary.any()
        for g in grads:
            assert (g[at_boundary] == 0).all()


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_margin_ranking_extreme_values(device, dtype):
    """nan / inf in margin_ranking_loss: torch's loss pattern and torch's gradients, NaN pattern
    included (torch's target gradient is -(input1 - input2) * gate: NaN where input1 - input2 is NaN,
    even though the gate is 0 there)."""
    nan = float("nan")
    x1 = torch.tensor([nan, INF, INF, 1.0, -INF, 2.0], device=device, dtype=dtype).requires_grad_()
    x2 = torch.tensor([0.0, INF, 0.0, nan, 0.0, 1.0], device=device, dtype=dtype).requires_grad_()
    t = torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0, -1.0], device=device, dtype=dtype).requires_grad_()
    for red in REDUCTIONS:
        loss = fastloss.functional.margin_ranking_loss(x1, x2, t, reduction=red)
        go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, ref_grads = torch_ref(mr_fn(F, 0.0, red), (x1, x2, t), go)
        assert_close_ref(loss, ref, dtype, f"margin_ranking loss {red}")
        grads = torch.autograd.grad(loss, [x1, x2, t], go.to(loss.dtype))
        check_grads(grads, ref_grads, dtype, 6, f"margin_ranking {red}", ["input1", "input2", "target"])


# =========================================================================== hinge_embedding_loss
def hinge_fn(module, margin=1.0, reduction="mean"):
    return lambda x, t: module.hinge_embedding_loss(x, t, margin=margin, reduction=reduction)


HINGE_SHAPES = [((), ()), ((7,), (7,)), ((0,), (0,)), ((5, 4), (5, 4)), ((3, 1000), (3, 1000)),
                ((70001,), (70001,)), ((2, 3, 4), (2, 3, 4)), ((5, 4), (4,)), ((4,), (5, 4)), ((5, 4), ())]


def _hinge_cases():
    out = []
    margins = [1.0, 0.5, 2.0, -0.5]
    i = 0
    for shapes, kind, red in itertools.product(HINGE_SHAPES, ["pm1_0", "other"], REDUCTIONS):
        margin = 0.5 if shapes[0] == (70001,) else margins[i % 4]  # float16 sums stay below 65504
        out.append((shapes, kind, margin, red, "contig"))
        i += 1
    for shapes, kind, red in itertools.product([((7,), (7,)), ((5, 4), (5, 4)), ((70001,), (70001,))],
                                               ["pm1", "int", "f64"], REDUCTIONS):
        if kind != "pm1" and shapes[0] == (7,):
            continue
        margin = 0.5 if shapes[0] == (70001,) else margins[i % 4]
        out.append((shapes, kind, margin, red, "contig"))
        i += 1
    for shape, layout, red in itertools.product([(5, 4), (3, 1000)], ["transpose", "slice"], ["none", "mean"]):
        out.append(((shape, shape), "pm1_0", 1.0, red, layout))
    out.append((((2, 3, 4), (2, 3, 4)), "pm1_0", 1.0, "sum", "permute"))
    return out


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes,kind,margin,reduction,layout", _hinge_cases(), ids=str)
def test_hinge_embedding_matches_torch(device, dtype, shapes, kind, margin, reduction, layout):
    """target 1: input; -1: max(0, margin - input); anything else: both. Loss keeps the input's dtype."""
    scale = 0.1 if math.prod(shapes[0]) > 10000 else 1.5
    x = make(shapes[0], dtype, device, layout, scale).requires_grad_()
    t = make_sign_target(kind, shapes[1], dtype, device)
    loss = hinge_fn(fastloss.functional, margin, reduction)(x, t)
    expect_dtype = F.hinge_embedding_loss(x.detach(), t, reduction="none").dtype
    go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref, (rgx,) = torch_ref(hinge_fn(F, margin, reduction), (x, t), go)
    assert loss.dtype == expect_dtype == dtype
    assert_close_ref(loss, ref, dtype, "loss")
    gx, = torch.autograd.grad(loss, x, go.to(loss.dtype))
    assert gx.dtype == dtype and gx.shape == x.shape
    kink = (t != 1) & (x.detach().double() == margin)  # margin - x == 0 in the clamped branch
    check_grads(*drop_kinks([gx], [rgx], kink), dtype, math.prod(torch.broadcast_shapes(*shapes)), "", ["input"])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hinge_boundary_and_extremes(device, dtype):
    """input == margin exactly (gradient 0 from the clamp), targets 1 / -1 / 0 / other, nan and inf."""
    nan = float("nan")
    x = torch.tensor([1.0, 1.0, 1.0, 0.5, 2.0, nan, nan, INF, -INF, INF, -INF, 0.25], device=device)
    t = torch.tensor([-1.0, 0.0, 1.0, -1.0, 3.0, 1.0, -1.0, 1.0, -1.0, -1.0, 0.0, 2.0], device=device)
    x, t = x.to(dtype), t.to(dtype)
    for margin, red in itertools.product([1.0, 0.5], REDUCTIONS):
        xx = x.clone().requires_grad_()
        loss = fastloss.functional.hinge_embedding_loss(xx, t, margin=margin, reduction=red)
        go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, (rgx,) = torch_ref(hinge_fn(F, margin, red), (xx, t), go)
        assert_close_ref(loss, ref, dtype, f"loss {red}")
        gx, = torch.autograd.grad(loss, xx, go.to(loss.dtype))
        kink = (t != 1) & (x.double() == margin)  # margin - x == 0 in the clamped branch
        check_grads(*drop_kinks([gx], [rgx], kink), dtype, 12, f"margin={margin} {red}", ["input"])
