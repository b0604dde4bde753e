"""binary_cross_entropy / BCELoss, binary_cross_entropy_with_logits / BCEWithLogitsLoss,
multilabel_soft_margin_loss / MultiLabelSoftMarginLoss and sigmoid_focal_loss / FocalLoss against torch
(torch.nn.functional; for the focal loss torchvision.ops.sigmoid_focal_loss's formula written with torch
ops below, torchvision not being a dependency), the reference always computed in float64 on the same
(rounded) inputs: values and the gradients of input AND target (and multilabel_soft_margin's weight),
every argument (weight and pos_weight shapes that broadcast, alpha (negative: no alpha term), gamma),
every reduction, the legacy size_average/reduce, 0-D, 1-D, K-D, empty, strided and expanded inputs,
random upstream gradients, extreme values (|logits| up to 100, probabilities exactly 0 and 1: torch's
-100 clamp), every dtype, mixed dtypes, autocast; float64 gradcheck, opcheck of the op's kinds (pos_weight
and gamma included), the modules (torch.compile of them too), bad arguments. torch.compile, determinism and
no fallback of the functions: tests/test_all_losses.py."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import (assert_close_ref, assert_legacy_matches, assert_matches_with_grads, BIG, check, check_autocast,
                     check_backward_plain_and_retain_graph, check_requires_grad_subsets, device_params, DTYPES,
                     focal_ref, laid_out, layout_cases, LEGACY, module_pair, opcheck_test, raises_like, REDUCTIONS,
                     requires_cuda, rounded, torch_ref)

fl = fastloss.functional
SHAPES = [(), (7,), (0,), (5, 4), (4, 0, 3), (3, 1000), BIG, (2, 3, 4, 5)]
BCE, BCE_LOGITS, FOCAL = 8, 9, 12  # fastloss::_pointwise_forward kinds (csrc/ops/pointwise.h)
f64, f32, bf16, f16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
ALPHAS = [0.25, 0.0, 1.0, 0.6, -1.0]
GAMMAS = [0.0, 0.5, 1.0, 2.0, 3.5]


# ------------------------------------------------------------------------------------- helpers
def make_prob(shape, dtype, device, layout="contig", lo=0.02, hi=0.98):
    return laid_out(lambda s: (torch.rand(s, device=device) * (hi - lo) + lo).to(dtype), shape, layout)


def make_logits(shape, dtype, device, layout="contig", scale=3.0):
    return laid_out(lambda s: (torch.randn(s, device=device) * scale).to(dtype), shape, layout)


def make_target(shape, dtype, device, layout="contig", hard=0.4):
    """Targets in [0, 1]: a fraction `hard` exactly 0 or 1, the rest soft labels."""
    def base(s):
        t, r = torch.rand(s, device=device), torch.rand(s, device=device)
        return torch.where(r < hard / 2, 0.0, torch.where(r < hard, 1.0, t)).to(dtype)
    return laid_out(base, shape, layout)


def make_weight(shape, dtype, device, lo=0.25):
    return None if shape is None else (torch.rand(shape, device=device) * 1.5 + lo).to(dtype)


def weight_kinds(shape):
    """'full': the input's shape; 'scalar': 0-D; 'last': (C,) over the last dim; 'col': (N, 1, ...)."""
    return ["none", "full", "scalar"] + (["last", "col"] if len(shape) >= 2 else [])


def weight_shape(shape, kind):
    return {"none": None, "full": shape, "scalar": (), "last": shape[-1:],
            "col": shape[:1] + (1,) * (len(shape) - 1)}[kind]


def with_dtypes(cases, core):
    """(dtype, *case) for every case: all four dtypes for the core cases, float64 and bfloat16 (the exact
    and the least precise) for the further argument combinations (fewer tests on a 2-core machine)."""
    return [(dt, *c) for c in cases for dt in (DTYPES if core(*c) else [f64, bf16])]


# ================================================================== binary_cross_entropy
def _bce_cases():
    def contig(shape):
        for red in REDUCTIONS:
            for wk in weight_kinds(shape):
                if shape == BIG and (red == "mean" or wk not in ("none", "full")):
                    continue
                if wk in ("scalar", "col") and red == "sum":
                    continue
                yield red, wk
    return layout_cases(contig, lambda shape: [("none", "full"), ("mean", "none")])


def bce_fn(module, reduction="mean", **kw):
    return lambda x, t, w=None: module.binary_cross_entropy(x, t, w, reduction=reduction, **kw)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype,shape,reduction,wkind,layout",
                         with_dtypes(_bce_cases(), lambda s, r, wk, lay: wk in ("none", "full") or lay != "contig"),
                         ids=str)
def test_bce_matches_torch(device, dtype, shape, reduction, wkind, layout):
    x = make_prob(shape, dtype, device, "contig" if layout == "expand" else layout).requires_grad_()
    t = make_target(shape, dtype, device, layout).requires_grad_()
    w = make_weight(weight_shape(shape, wkind), dtype, device)
    before = [x.detach().clone(), t.detach().clone()]
    check(bce_fn(fl, reduction), bce_fn(F, reduction), (x, t, w), ["input", "target", "weight"], dtype)
    assert torch.equal(before[0], x.detach()) and torch.equal(before[1], t.detach()), "an input was modified"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bce_extreme_values(device, dtype):
    """Probabilities exactly 0 and 1 (torch clamps the logs at -100 and the input gradient's denominator
    at 1e-12; the target gradient -logit(x) is +-inf there), tiny ones, targets 0, 1 and soft: the float64
    reference (rounded to the dtype: 1e12 overflows float16) with its inf pattern."""
    xv = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.5, 1e-6, 1 - 2 ** -11, 0.25, 1e-3, 0.999]
    tv = [0.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.5, 1.0, 0.0, 0.75, 0.0, 1.0]
    x = torch.tensor(xv, device=device).to(dtype)
    t = torch.tensor(tv, device=device).to(dtype)
    for which in ["target", "input", "both"]:  # the loss and the target's gradient first, on their own
        for wkind in ["none", "full"]:
            w = make_weight(weight_shape(x.shape, wkind), dtype, device)
            for red in REDUCTIONS:
                xx = x.clone().requires_grad_(which != "target")
                tt = t.clone().requires_grad_(which != "input")
                check(bce_fn(fl, red), bce_fn(F, red), (xx, tt, w), ["input", "target", "weight"], dtype,
                      round_ref=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("size_average,reduce", LEGACY, ids=str)
def test_bce_legacy_size_average_reduce(device, size_average, reduce):
    x = make_prob((6, 5), f64, device).requires_grad_()
    t = make_target((6, 5), f64, device).requires_grad_()
    w = make_weight((5,), f64, device)
    kw = dict(size_average=size_average, reduce=reduce, reduction="none")
    assert_legacy_matches(lambda: fl.binary_cross_entropy(x, t, w, **kw), lambda: F.binary_cross_entropy(x, t, w, **kw),
                          [x, t])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("wdtype", [f64, f32, bf16], ids=str)
def test_bce_weight_dtype(device, wdtype):
    """torch casts a weight of another floating dtype to the input's: a float32 loss."""
    x = make_prob((4, 6), f32, device).requires_grad_()
    t = make_target((4, 6), f32, device)
    w = make_weight((6,), wdtype, device)
    for red in REDUCTIONS:
        check(bce_fn(fl, red), bce_fn(F, red), (x, t, w), ["input", "target", "weight"], f32,
              out_dtype=F.binary_cross_entropy(x, t, w, reduction=red).dtype)


@pytest.mark.parametrize("device", device_params())
def test_bce_bad_arguments(device):
    x = make_prob((4, 3), f32, device)
    t = make_target((4, 3), f32, device)
    for red in REDUCTIONS:
        for bx, bt in [(x * 2, t), (x - 1.5, t), (x, t + 1.5), (x, -t - 0.5), (x * float("nan"), t),
                       (x, t * float("nan")), (x.new_full((4, 3), float("inf")), t)]:
            what = "input" if not torch.equal(bx, x) else "target"
            raises_like(lambda: F.binary_cross_entropy(bx, bt, reduction=red),
                        lambda: fl.binary_cross_entropy(bx, bt, reduction=red), RuntimeError,
                        f"all elements of {what} should be between 0 and 1")
    # the first bad element decides (input before target within an element), as torch's loop
    bx, bt = x.clone(), t.clone()
    bx[2, 1], bt[0, 2] = 1.5, -0.5
    raises_like(lambda: F.binary_cross_entropy(bx, bt), lambda: fl.binary_cross_entropy(bx, bt), RuntimeError,
                "all elements of target should be between 0 and 1")
    bt[0, 2], bt[2, 1] = 0.5, 2.0
    raises_like(lambda: F.binary_cross_entropy(bx, bt), lambda: fl.binary_cross_entropy(bx, bt), RuntimeError,
                "all elements of input should be between 0 and 1")
    # the check holds under no_grad and for an input that requires grad
    with torch.no_grad():
        raises_like(lambda: F.binary_cross_entropy(x * 2, t), lambda: fl.binary_cross_entropy(x * 2, t),
                    RuntimeError, "all elements of input should be between 0 and 1")
    xg = (x * 2).requires_grad_()
    raises_like(lambda: F.binary_cross_entropy(xg, t, reduction="sum"),
                lambda: fl.binary_cross_entropy(xg, t, reduction="sum"), RuntimeError,
                "all elements of input should be between 0 and 1")
    # target size != input size: ValueError (even where it would broadcast)
    for bad in (t[0], t[:, :1], t.reshape(3, 4), t.unsqueeze(0)):
        raises_like(lambda: F.binary_cross_entropy(x, bad), lambda: fl.binary_cross_entropy(x, bad), ValueError,
                    re.escape("that is different to the input size"))
    # target dtype != input dtype
    for xx, tt in [(x, t.double()), (x.double(), t), (x.to(bf16), t), (x, t.half())]:
        raises_like(lambda: F.binary_cross_entropy(xx, tt), lambda: fl.binary_cross_entropy(xx, tt), RuntimeError,
                    "Found dtype .* but expected")
    # a weight requiring grad: not differentiable
    wg = torch.rand(3, device=device, requires_grad=True)
    raises_like(lambda: F.binary_cross_entropy(x, t, wg), lambda: fl.binary_cross_entropy(x, t, wg), RuntimeError,
                "not differentiable with respect to argument 'weight'")
    # a weight that would enlarge the output, or does not broadcast
    for w in (torch.rand(2, 4, 3, device=device), torch.rand(5, 1, 1, device=device), torch.rand(4, device=device)):
        raises_like(lambda: F.binary_cross_entropy(x, t, w), lambda: fl.binary_cross_entropy(x, t, w), RuntimeError)
    raises_like(lambda: F.binary_cross_entropy(x, t, torch.rand(2, 4, 3, device=device)),
                lambda: fl.binary_cross_entropy(x, t, torch.rand(2, 4, 3, device=device)), RuntimeError,
                re.escape("doesn't match the broadcast shape"))
    # unknown reduction
    for red in ("average", "batchmean", "None"):
        raises_like(lambda: F.binary_cross_entropy(x, t, reduction=red),
                    lambda: fl.binary_cross_entropy(x, t, reduction=red), ValueError,
                    "is not a valid value for reduction")


# ======================================================= binary_cross_entropy_with_logits
def _bcel_cases():
    def contig(shape):
        pws = ["none", "full"] + (["last"] if len(shape) >= 2 else [])
        for red in REDUCTIONS:
            for wk in weight_kinds(shape):
                for pk in pws:
                    if shape == BIG and (red == "mean" or wk not in ("none", "full") or pk == "full"):
                        continue
                    if (wk in ("scalar", "col") or pk == "full") and red == "sum":
                        continue
                    if wk in ("scalar", "col") and pk != "last" and len(shape) >= 2:
                        continue
                    yield red, wk, pk
    out = layout_cases(contig, lambda shape: [("none", "full", "last" if len(shape) >= 2 else "full"),
                                              ("mean", "none", "none")])
    # pos_weight (C,) over the last dim of an (N, D, C) input, with weights of the other dims
    for wk in ["none", "col", "full"]:
        for red in REDUCTIONS:
            out.append(((4, 3, 5), red, wk, "last", "contig"))
    return out


def bcel_fn(module, reduction="mean", **kw):
    return lambda x, t, w=None, pw=None: module.binary_cross_entropy_with_logits(x, t, w, reduction=reduction,
                                                                                 pos_weight=pw, **kw)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype,shape,reduction,wkind,pwkind,layout",
                         with_dtypes(_bcel_cases(), lambda s, r, wk, pk, lay: (wk, pk) in (("none", "none"),
                                                                                          ("full", "full"))
                                     or lay != "contig" or (s == (4, 3, 5) and wk == "none")), ids=str)
def test_bce_with_logits_matches_torch(device, dtype, shape, reduction, wkind, pwkind, layout):
    scale = 1.0 if dtype == f16 and math.prod(shape) > 10000 else 3.0  # float16 sums stay below 65504
    x = make_logits(shape, dtype, device, "contig" if layout == "expand" else layout, scale).requires_grad_()
    t = make_target(shape, dtype, device, layout).requires_grad_()
    w = make_weight(weight_shape(shape, wkind), dtype, device)
    pw = make_weight(weight_shape(shape, pwkind), dtype, device, lo=0.1)
    before = [x.detach().clone(), t.detach().clone()]
    check(bcel_fn(fl, reduction), bcel_fn(F, reduction), (x, t, w, pw), ["input", "target", "weight", "pos_weight"],
          dtype)
    assert torch.equal(before[0], x.detach()) and torch.equal(before[1], t.detach()), "an input was modified"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bce_with_logits_extreme_values(device, dtype):
    """|x| up to 100 (softplus without overflow in every dtype), targets 0, 1 and soft, with and without
    weight and pos_weight; NaN propagates."""
    xv = [-100.0, -50.0, -20.0, -5.0, 0.0, 5.0, 20.0, 50.0, 100.0, -100.0, 100.0, 0.0, 30.0, -30.0, float("nan")]
    tv = [0.0, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 1.0]
    x = torch.tensor(xv, device=device).to(dtype)
    t = torch.tensor(tv, device=device).to(dtype)
    for wkind, pwkind in [("none", "none"), ("full", "none"), ("none", "full"), ("full", "scalar")]:
        w = make_weight(weight_shape(x.shape, wkind), dtype, device)
        pw = make_weight(weight_shape(x.shape, pwkind), dtype, device, lo=0.1)
        for red in REDUCTIONS:
            xx, tt = x.clone().requires_grad_(), t.clone().requires_grad_()
            check(bcel_fn(fl, red), bcel_fn(F, red), (xx, tt, w, pw), ["input", "target", "weight", "pos_weight"],
                  dtype, round_ref=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("size_average,reduce", LEGACY, ids=str)
def test_bce_with_logits_legacy_size_average_reduce(device, size_average, reduce):
    x = make_logits((6, 5), f64, device).requires_grad_()
    t = make_target((6, 5), f64, device).requires_grad_()
    w, pw = make_weight((6, 1), f64, device), make_weight((5,), f64, device)
    kw = dict(size_average=size_average, reduce=reduce, reduction="none", pos_weight=pw)
    assert_legacy_matches(lambda: fl.binary_cross_entropy_with_logits(x, t, w, **kw),
                          lambda: F.binary_cross_entropy_with_logits(x, t, w, **kw), [x, t])


DTYPE_PAIRS = [(f32, f64), (f64, f32), (bf16, f32), (f32, bf16), (f16, bf16), (bf16, f16), (f16, f32), (f32, f16)]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xdtype,tdtype", DTYPE_PAIRS, ids=str)
def test_bce_with_logits_mixed_dtypes(device, xdtype, tdtype):
    """torch computes the loss in place in the target's dtype: the loss has the target's dtype; each
    gradient its own tensor's dtype; weight / pos_weight of a third dtype are cast."""
    x = make_logits((5, 7), xdtype, device).requires_grad_()
    t = make_target((5, 7), tdtype, device).requires_grad_()
    for w, pw in [(None, None), (make_weight((7,), f64, device), make_weight((7,), f32, device))]:
        for red in REDUCTIONS:
            expect = F.binary_cross_entropy_with_logits(x, t, w, reduction=red, pos_weight=pw)
            check(bcel_fn(fl, red), bcel_fn(F, red), (x, t, w, pw), ["input", "target", "weight", "pos_weight"],
                  xdtype, out_dtype=expect.dtype)


@pytest.mark.parametrize("device", device_params())
def test_bce_with_logits_bad_arguments(device):
    x = make_logits((4, 3), f32, device)
    t = make_target((4, 3), f32, device)
    for bad in (t[0], t[:, :1], t.reshape(3, 4), t.unsqueeze(0)):
        raises_like(lambda: F.binary_cross_entropy_with_logits(x, bad),
                    lambda: fl.binary_cross_entropy_with_logits(x, bad), ValueError,
                    re.escape("must be the same as input size"))
    wg = torch.rand(3, device=device, requires_grad=True)
    raises_like(lambda: F.binary_cross_entropy_with_logits(x, t, wg),
                lambda: fl.binary_cross_entropy_with_logits(x, t, wg), RuntimeError,
                "not differentiable with respect to argument 'weight'")
    raises_like(lambda: F.binary_cross_entropy_with_logits(x, t, pos_weight=wg),
                lambda: fl.binary_cross_entropy_with_logits(x, t, pos_weight=wg), RuntimeError,
                "not differentiable with respect to argument 'pos_weight'")
    big = torch.rand(2, 4, 3, device=device)
    raises_like(lambda: F.binary_cross_entropy_with_logits(x, t, big),
                lambda: fl.binary_cross_entropy_with_logits(x, t, big), RuntimeError,
                re.escape("doesn't match the broadcast shape"))
    raises_like(lambda: F.binary_cross_entropy_with_logits(x, t, pos_weight=big),
                lambda: fl.binary_cross_entropy_with_logits(x, t, pos_weight=big), RuntimeError,
                re.escape("doesn't match the broadcast shape"))
    for bad in (torch.rand(5, device=device), torch.rand(4, device=device), torch.rand(3, 3, device=device)):
        for kw in ({"weight": bad}, {"pos_weight": bad}):
            raises_like(lambda: F.binary_cross_entropy_with_logits(x, t, **kw),
                        lambda: fl.binary_cross_entropy_with_logits(x, t, **kw), RuntimeError)
    ti = (t > 0.5).long()
    raises_like(lambda: F.binary_cross_entropy_with_logits(x, ti), lambda: fl.binary_cross_entropy_with_logits(x, ti),
                RuntimeError, "result type Float can't be cast to the desired output type")
    for red in ("average", "batchmean"):
        raises_like(lambda: F.binary_cross_entropy_with_logits(x, t, reduction=red),
                    lambda: fl.binary_cross_entropy_with_logits(x, t, reduction=red), ValueError,
                    "is not a valid value for reduction")


# ============================================================== multilabel_soft_margin_loss
MLSM_SHAPES = [(5, 4), (7,), (1, 1), (3, 4, 6), (0, 3), (3, 0), (4, 1000), (2, 3, 2, 5)]


def _mlsm_cases():
    def contig(shape):
        wks = ["none", "last", "full"] if len(shape) >= 2 else ["none", "full"]
        return [(red, wk, wgrad) for red in REDUCTIONS for wk in wks
                for wgrad in ([True, False] if wk != "none" and red == "none" else [wk != "none"])]
    return layout_cases(contig, lambda shape: [("none", "last" if len(shape) >= 2 else "full", True),
                                               ("mean", "none", False)], MLSM_SHAPES)


def mlsm_fn(module, reduction="mean", **kw):
    return lambda x, t, w=None: module.multilabel_soft_margin_loss(x, t, w, reduction=reduction, **kw)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype,shape,reduction,wkind,wgrad,layout",
                         with_dtypes(_mlsm_cases(), lambda s, r, wk, wg, lay: wk == "none" or (wk == "last" and wg)
                                     or lay != "contig"), ids=str)
def test_multilabel_soft_margin_matches_torch(device, dtype, shape, reduction, wkind, wgrad, layout):
    """Input, target (labels 0 / 1 and soft) and the weight, which torch differentiates."""
    x = make_logits(shape, dtype, device, "contig" if layout == "expand" else layout).requires_grad_()
    t = make_target(shape, dtype, device, layout).requires_grad_()
    w = make_weight(weight_shape(shape, wkind), dtype, device)
    if w is not None:
        w.requires_grad_(wgrad)
    check(mlsm_fn(fl, reduction), mlsm_fn(F, reduction), (x, t, w), ["input", "target", "weight"], dtype)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_multilabel_soft_margin_extreme_values(device, dtype):
    xv = [[-100.0, -50.0, -20.0, 0.0, 20.0], [50.0, 100.0, -100.0, 100.0, 30.0], [-30.0, 5.0, -5.0, 1.0, 0.0]]
    tv = [[0.0, 1.0, 0.0, 0.5, 1.0], [0.0, 1.0, 1.0, 0.0, 0.5], [0.5, 1.0, 0.0, 1.0, 0.0]]
    x = torch.tensor(xv, device=device).to(dtype)
    t = torch.tensor(tv, device=device).to(dtype)
    for w in [None, make_weight((5,), dtype, device).requires_grad_()]:
        for red in REDUCTIONS:
            xx, tt = x.clone().requires_grad_(), t.clone().requires_grad_()
            check(mlsm_fn(fl, red), mlsm_fn(F, red), (xx, tt, w), ["input", "target", "weight"], dtype,
                  round_ref=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_multilabel_soft_margin_half_sum_no_overflow(device, dtype):
    """'sum' over N*C terms whose total passes float16's 65504 while every row's sum / C stays small:
    torch sums per row, so must fastloss (its fused total is divided by C before the cast)."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(129, 2048, generator=g) * 4).to(device, dtype).requires_grad_()
    t = (torch.rand(129, 2048, generator=g) > 0.5).to(device, dtype)
    w = (torch.rand(2048, generator=g) + 0.5).to(device, dtype)
    loss = fl.multilabel_soft_margin_loss(x, t, w, reduction="sum")
    ref = F.multilabel_soft_margin_loss(x.detach().double(), t.double(), w.double(), reduction="sum")
    assert loss.dtype == dtype and torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-2, atol=0)
    g_ours, = torch.autograd.grad(loss, x)
    xr = x.detach().double().requires_grad_()
    g_ref, = torch.autograd.grad(F.multilabel_soft_margin_loss(xr, t.double(), w.double(), reduction="sum"), xr)
    assert_close_ref(g_ours, g_ref, dtype, "grad")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xshape,tshape,wshape", [((4, 3), (4, 3), (2, 1, 3)), ((4, 3), (3,), None),
                                                  ((4, 3), (4, 3), (4, 1)), ((4, 3), (1, 3), (3,)),
                                                  ((2, 4, 3), (4, 3), (1, 1, 3))], ids=str)
def test_multilabel_soft_margin_broadcast(device, xshape, tshape, wshape):
    """torch's composite broadcasts target and weight (a weight may even enlarge the output)."""
    x = make_logits(xshape, f64, device).requires_grad_()
    t = make_target(tshape, f64, device).requires_grad_()
    w = make_weight(wshape, f64, device)
    if w is not None:
        w.requires_grad_()
    for red in REDUCTIONS:
        check(mlsm_fn(fl, red), mlsm_fn(F, red), (x, t, w), ["input", "target", "weight"], f64)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("size_average,reduce", LEGACY, ids=str)
def test_multilabel_soft_margin_legacy_size_average_reduce(device, size_average, reduce):
    x = make_logits((6, 5), f64, device).requires_grad_()
    t = make_target((6, 5), f64, device).requires_grad_()
    w = make_weight((5,), f64, device).requires_grad_()
    kw = dict(size_average=size_average, reduce=reduce, reduction="none")
    assert_legacy_matches(lambda: fl.multilabel_soft_margin_loss(x, t, w, **kw),
                          lambda: F.multilabel_soft_margin_loss(x, t, w, **kw), [x, t, w])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xdtype,tdtype,wdtype", [(f32, f64, None), (f64, f32, f32), (bf16, f32, None),
                                                  (f32, f32, f64), (bf16, bf16, f32), (f16, bf16, None)], ids=str)
def test_multilabel_soft_margin_mixed_dtypes(device, xdtype, tdtype, wdtype):
    """torch's composite promotes input, target and weight."""
    x = make_logits((5, 7), xdtype, device).requires_grad_()
    t = make_target((5, 7), tdtype, device).requires_grad_()
    w = make_weight((7,), wdtype, device).requires_grad_() if wdtype else None
    for red in REDUCTIONS:
        expect = F.multilabel_soft_margin_loss(x, t, w, reduction=red)
        check(mlsm_fn(fl, red), mlsm_fn(F, red), (x, t, w), ["input", "target", "weight"], xdtype,
              out_dtype=expect.dtype)


@pytest.mark.parametrize("device", device_params())
def test_multilabel_soft_margin_bad_arguments(device):
    x = make_logits((4, 3), f32, device)
    t = make_target((4, 3), f32, device)
    for red in ("average", "batchmean"):
        raises_like(lambda: F.multilabel_soft_margin_loss(x, t, reduction=red),
                    lambda: fl.multilabel_soft_margin_loss(x, t, reduction=red), ValueError, "is not valid")
    x0 = torch.tensor(0.5, device=device)
    raises_like(lambda: F.multilabel_soft_margin_loss(x0, x0), lambda: fl.multilabel_soft_margin_loss(x0, x0),
                IndexError)
    for bad in (torch.rand(4, 2, device=device), torch.rand(5, 3, device=device)):
        raises_like(lambda: F.multilabel_soft_margin_loss(x, bad), lambda: fl.multilabel_soft_margin_loss(x, bad),
                    RuntimeError)
        raises_like(lambda: F.multilabel_soft_margin_loss(x, t, bad),
                    lambda: fl.multilabel_soft_margin_loss(x, t, bad), RuntimeError)


# ======================================================================= sigmoid_focal_loss
def focal_fn(module_fn, alpha=0.25, gamma=2.0, reduction="none"):
    return lambda x, t: module_fn(x, t, alpha=alpha, gamma=gamma, reduction=reduction)


def _focal_cases():
    return layout_cases(lambda shape: [(red,) for red in REDUCTIONS if not (shape == BIG and red == "mean")],
                        lambda shape: [("none",)])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,reduction,layout", _focal_cases(), ids=str)
def test_focal_matches_reference(device, dtype, shape, reduction, layout):
    """torchvision's defaults (alpha 0.25, gamma 2) over shapes, layouts and reductions."""
    x = make_logits(shape, dtype, device, "contig" if layout == "expand" else layout).requires_grad_()
    t = make_target(shape, dtype, device, layout).requires_grad_()
    before = [x.detach().clone(), t.detach().clone()]
    check(lambda a, b: fl.sigmoid_focal_loss(a, b, reduction=reduction),
          lambda a, b: focal_ref(a, b, reduction=reduction), (x, t), ["input", "target"], dtype)
    assert torch.equal(before[0], x.detach()) and torch.equal(before[1], t.detach()), "an input was modified"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("alpha", ALPHAS, ids=str)
@pytest.mark.parametrize("gamma", GAMMAS, ids=str)
def test_focal_alpha_gamma(device, dtype, alpha, gamma):
    """Every alpha (negative: no alpha term) and gamma (0: the plain BCE, with pow's zero gradient; 0.5:
    a derivative that grows near p_t = 1), every reduction, both gradients."""
    x = make_logits((6, 50), dtype, device, scale=2.5).requires_grad_()
    t = make_target((6, 50), dtype, device).requires_grad_()
    for red in REDUCTIONS:
        check(focal_fn(fl.sigmoid_focal_loss, alpha, gamma, red), focal_fn(focal_ref, alpha, gamma, red), (x, t),
              ["input", "target"], dtype)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5], ids=str)
def test_focal_extreme_values(device, dtype, gamma):
    """|x| up to 100, targets 0, 1 and soft (gamma >= 1 or 0: finite derivatives of (1 - p_t)^gamma)."""
    xv = [-100.0, -50.0, -20.0, -5.0, 0.0, 5.0, 20.0, 50.0, 100.0, -100.0, 100.0, 0.0, 30.0, -30.0]
    tv = [0.0, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5]
    x = torch.tensor(xv, device=device).to(dtype)
    t = torch.tensor(tv, device=device).to(dtype)
    for alpha in (0.25, -1.0):
        for red in REDUCTIONS:
            xx, tt = x.clone().requires_grad_(), t.clone().requires_grad_()
            check(focal_fn(fl.sigmoid_focal_loss, alpha, gamma, red), focal_fn(focal_ref, alpha, gamma, red), (xx, tt),
                  ["input", "target"], dtype, round_ref=True)


def test_focal_extreme_values_gamma_half():
    """gamma 0.5 at saturated logits (float64): (1 - p_t)^0.5 has an infinite derivative where p_t == 1,
    so the reference's gradient is NaN there; the NaN pattern and the finite values must agree."""
    xv = [-100.0, -50.0, -20.0, -5.0, 0.0, 5.0, 20.0, 50.0, 100.0, -100.0, 100.0, 0.0, 30.0, -30.0]
    tv = [0.0, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5]
    x = torch.tensor(xv, dtype=f64)
    t = torch.tensor(tv, dtype=f64)
    for red in REDUCTIONS:  # the loss and the input's gradient
        xx, tt = x.clone().requires_grad_(), t.clone()
        check(focal_fn(fl.sigmoid_focal_loss, 0.25, 0.5, red), focal_fn(focal_ref, 0.25, 0.5, red), (xx, tt),
              ["input", "target"], f64)
    # The target's gradient: where the derivative is infinite (p_t == 1 with t in {0, 1}) torch's autograd
    # gives NaN (inf * 0 in its chain), fastloss's closed form +-inf (documented): both non-finite there;
    # equal everywhere else.
    tt = t.clone().requires_grad_()
    (ours,) = torch.autograd.grad(fl.sigmoid_focal_loss(x, tt, 0.25, 0.5, "sum"), tt)
    (ref,) = torch.autograd.grad(focal_ref(x, tt, 0.25, 0.5, "sum"), tt)
    bad = ~torch.isfinite(ref)
    assert bad.any()
    assert (~torch.isfinite(ours) == bad).all(), (ours, ref)
    torch.testing.assert_close(ours[~bad], ref[~bad], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xdtype,tdtype", [(f32, f64), (f64, f32), (bf16, f32), (f16, bf16)], ids=str)
def test_focal_mixed_dtypes(device, xdtype, tdtype):
    x = make_logits((5, 7), xdtype, device).requires_grad_()
    t = make_target((5, 7), tdtype, device).requires_grad_()
    for red in REDUCTIONS:
        expect = focal_ref(x, t, reduction=red)
        check(lambda a, b: fl.sigmoid_focal_loss(a, b, reduction=red), lambda a, b: focal_ref(a, b, reduction=red),
              (x, t), ["input", "target"], xdtype, out_dtype=expect.dtype)


@pytest.mark.parametrize("device", device_params())
def test_focal_default_arguments(device):
    """sigmoid_focal_loss(x, t) is torchvision's default call: alpha 0.25, gamma 2, reduction 'none'."""
    x = make_logits((4, 9), f64, device).requires_grad_()
    t = make_target((4, 9), f64, device).requires_grad_()
    check(fl.sigmoid_focal_loss, focal_ref, (x, t), ["input", "target"], f64)


@pytest.mark.parametrize("device", device_params())
def test_focal_bad_arguments(device):
    x = make_logits((4, 3), f32, device)
    t = make_target((4, 3), f32, device)
    for bad in (t[0], t[:, :1], t.reshape(3, 4), t.unsqueeze(0)):
        raises_like(lambda: focal_ref(x, bad), lambda: fl.sigmoid_focal_loss(x, bad), ValueError,
                    re.escape("must be the same as input size"))
    for red in ("average", "batchmean", "None"):
        raises_like(lambda: focal_ref(x, t, reduction=red), lambda: fl.sigmoid_focal_loss(x, t, reduction=red),
                    ValueError, re.escape(f"Invalid Value for arg 'reduction': '{red}"))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which", ["bce", "bce_logits"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_float16_gradient_no_intermediate_overflow(device, which, reduction):
    """float16: an input gradient whose unscaled value (before grad_output's factor) passes 65504 but
    whose final value does not is finite, as torch's (which computes it in one expression)."""
    t = torch.tensor([1.0, 0.0], device=device, dtype=f16)
    g = torch.tensor(0.25, device=device, dtype=f16)
    if which == "bce":
        x = torch.tensor([6e-6, 0.5], device=device, dtype=f16).requires_grad_()  # gradient -1.7e5
        fns = [lambda m: lambda a, b: m.binary_cross_entropy(a, b, reduction=reduction)]
    else:
        x = torch.tensor([-20.0, 0.0], device=device, dtype=f16).requires_grad_()
        w = torch.tensor([4.0, 1.0], device=device, dtype=f16)  # gradient -w pw = -2.4e5
        pw = torch.tensor([60000.0, 1.0], device=device, dtype=f16)
        fns = [lambda m: lambda a, b: m.binary_cross_entropy_with_logits(a, b, w, pos_weight=pw, reduction=reduction)]
    if reduction == "mean":
        g = g * 2  # the mean's 1/2 leaves the unscaled gradient past 65504, the final one below
    fn = fns[0]
    got, = torch.autograd.grad(fn(fl)(x, t), x, g)
    expect, = torch.autograd.grad(fn(F)(x, t), x, g)
    _, (rg,) = torch_ref(fn(F), (x, t), g)
    assert torch.isfinite(rounded(rg, f16)).all()  # the exact gradient fits float16
    if reduction == "sum":
        assert torch.isfinite(expect).all()  # torch's too ('mean' overflows in torch's float16 steps; ours does not)
    assert_close_ref(got, rounded(rg, f16), f16, "grad input")


# ============================================================================ all four
ALL = ["bce", "bce_logits", "mlsm", "focal"]


def make_case(which, shape, dtype, device):
    """(ours, torch reference, tensors, names) for one loss at a generic configuration with every
    optional argument given."""
    if which == "bce":
        x, t = make_prob(shape, dtype, device), make_target(shape, dtype, device)
        w = make_weight(shape[-1:], dtype, device)
        return (lambda r: bce_fn(fl, r)), (lambda r: bce_fn(F, r)), [x, t, w], ["input", "target", "weight"]
    if which == "bce_logits":
        x, t = make_logits(shape, dtype, device), make_target(shape, dtype, device)
        w, pw = make_weight(shape[:1] + (1,), dtype, device), make_weight(shape[-1:], dtype, device)
        return ((lambda r: bcel_fn(fl, r)), (lambda r: bcel_fn(F, r)), [x, t, w, pw],
                ["input", "target", "weight", "pos_weight"])
    if which == "mlsm":
        x, t = make_logits(shape, dtype, device), make_target(shape, dtype, device)
        w = make_weight(shape[-1:], dtype, device)
        return (lambda r: mlsm_fn(fl, r)), (lambda r: mlsm_fn(F, r)), [x, t, w], ["input", "target", "weight"]
    x, t = make_logits(shape, dtype, device), make_target(shape, dtype, device)
    return ((lambda r: focal_fn(fl.sigmoid_focal_loss, 0.4, 1.5, r)), (lambda r: focal_fn(focal_ref, 0.4, 1.5, r)),
            [x, t], ["input", "target"])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which", ["bce", "bce_logits"])
def test_weight_requiring_grad_under_no_grad(device, which):
    """Under no_grad a weight (and pos_weight) that requires grad is accepted, as torch (the rest of the
    no-grad paths: tests/test_all_losses.py)."""
    ours_of, ref_of, tensors, names = make_case(which, (8, 50), f32, device)
    wg = [a.detach().requires_grad_() if n in ("weight", "pos_weight") else a for a, n in zip(tensors, names)]
    for red in REDUCTIONS:
        ref = ref_of(red)(*tensors).detach()
        with torch.no_grad():
            out = ours_of(red)(*wg)
        assert not out.requires_grad
        torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which", ALL)
def test_requires_grad_subsets(device, which):
    """Only input, only target (multilabel: only weight), or nothing requires grad: torch's gradients
    of those that do (a target-only gradient must not depend on the input's being computed); nothing:
    no graph."""
    ours_of, ref_of, tensors, names = make_case(which, (9, 13), f64, device)
    subsets = [["input"], ["target"], []] + ([["weight"], ["target", "weight"]] if which == "mlsm" else [])
    check_requires_grad_subsets(ours_of, ref_of, tensors, names, subsets)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which", ALL)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_plain_and_retain_graph(device, which, reduction):
    """loss.backward() (grad_output exactly 1), retain_graph twice (twice the gradient), and two upstream
    gradients on one graph, for every argument that requires grad."""
    ours_of, ref_of, tensors, names = make_case(which, (6, 50), f32, device)
    diff_names = ["input", "target"] + (["weight"] if which == "mlsm" else [])
    check_backward_plain_and_retain_graph(ours_of, ref_of, reduction, tensors, names, diff_names, device)


# ---------------------------------------------------------------------------------- autocast
AUTOCAST_PAIRS = [(bf16, bf16, bf16), (f16, f16, f16), (bf16, f32, bf16), (f32, bf16, bf16), (f16, f32, f16)]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which,weighted", [(w, wt) for w in ALL for wt in (False, True) if not (w == "focal" and wt)],
                         ids=str)  # the focal loss takes no weight
@pytest.mark.parametrize("xdtype,tdtype,ac", AUTOCAST_PAIRS, ids=str)
def test_autocast(device, which, xdtype, tdtype, ac, weighted):
    """Under torch.autocast: the loss's dtype is torch's (float32 for binary_cross_entropy[_with_logits]
    and the focal formula, whose BCE runs in float32; multilabel_soft_margin's composite keeps half data
    in half), values against the float64 reference at the result dtype's accuracy (half data are exact;
    a float32 weight / pos_weight keeps its float32 values, as torch casts everything to float32), each
    gradient in its own tensor's dtype."""
    ours_of, ref_of, tensors, names = make_case(which, (6, 40), f32, device)
    if not weighted:
        tensors = [None if n in ("weight", "pos_weight") else a for a, n in zip(tensors, names)]
    tensors = [a.to(xdtype) if n == "input" else a.to(tdtype) if n == "target" else a
               for a, n in zip(tensors, names)]
    tensors[0].requires_grad_()
    tensors[1].requires_grad_()
    check_autocast(ours_of, ref_of, tensors, names, device, ac)


# ------------------------------------------------------------------------------- gradcheck
def _gradcheck_cases():
    out = []
    for red in REDUCTIONS:
        out += [("bce", red, "none"), ("bce", red, "last"), ("bce_logits", red, "none"), ("bce_logits", red, "both"),
                ("bce_logits", red, "pos_weight"), ("mlsm", red, "none"), ("mlsm", red, "weight")]
        out += [("focal", red, (a, g)) for a, g in [(0.25, 2.0), (-1.0, 0.5), (0.7, 0.0), (0.0, 1.0), (1.0, 3.5)]]
    return out


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which,reduction,variant", _gradcheck_cases(), ids=str)
def test_gradcheck(device, which, reduction, variant):
    """float64 gradcheck of input and target (and multilabel_soft_margin's weight)."""
    dev = dict(device=device, dtype=f64)
    shape = (3, 4)
    t = (torch.rand(shape, **dev) * 0.8 + 0.1).requires_grad_()
    if which == "bce":
        x = (torch.rand(shape, **dev) * 0.8 + 0.1).requires_grad_()
        w = torch.rand(4, **dev) + 0.5 if variant == "last" else None
        fn = lambda a, b: fl.binary_cross_entropy(a, b, w, reduction=reduction)  # noqa: E731
        args = (x, t)
    elif which == "bce_logits":
        x = (torch.randn(shape, **dev) * 2).requires_grad_()
        w = torch.rand(3, 1, **dev) + 0.5 if variant == "both" else None
        pw = torch.rand(4, **dev) * 2 + 0.2 if variant in ("both", "pos_weight") else None
        fn = lambda a, b: fl.binary_cross_entropy_with_logits(a, b, w, reduction=reduction, pos_weight=pw)  # noqa
        args = (x, t)
    elif which == "mlsm":
        x = (torch.randn(shape, **dev) * 2).requires_grad_()
        if variant == "weight":
            w = (torch.rand(4, **dev) + 0.5).requires_grad_()
            fn = lambda a, b, c: fl.multilabel_soft_margin_loss(a, b, c, reduction=reduction)  # noqa: E731
            args = (x, t, w)
        else:
            fn = lambda a, b: fl.multilabel_soft_margin_loss(a, b, reduction=reduction)  # noqa: E731
            args = (x, t)
    else:
        alpha, gamma = variant
        x = (torch.randn(shape, **dev) * 2).requires_grad_()
        fn = lambda a, b: fl.sigmoid_focal_loss(a, b, alpha=alpha, gamma=gamma, reduction=reduction)  # noqa
        args = (x, t)
    assert torch.autograd.gradcheck(fn, args)


# --------------------------------------------------------------------------------- opcheck
def _op_cases(device):
    """Where the forward writes gradients (grad_now), the backward scales those very buffers in place,
    so opcheck's eager run needs grad_output exactly 1: opcheck's is the loss's sign, and every loss here
    is positive. 'none' cases run without fused gradients (_pointwise_backward computes them)."""
    ops = torch.ops.fastloss
    pl, plb = ops._pointwise_forward.default, ops._pointwise_backward.default
    p = (torch.rand(5, 7, device=device) * 0.9 + 0.05).requires_grad_()
    t = make_target((5, 7), f32, device).requires_grad_()
    w = torch.rand(5, 7, device=device) + 0.5
    wg = w.clone().requires_grad_()
    pw = torch.rand(5, 7, device=device) * 2 + 0.1
    x = (torch.randn(5, 7, device=device) * 3).requires_grad_()
    x64 = torch.randn(3, 4, 2, device=device, dtype=f64, requires_grad=True)
    t64 = make_target((3, 4, 2), f64, device).requires_grad_()
    pb = (torch.rand(33, device=device) * 0.9 + 0.05).to(bf16)
    tb = make_target((33,), bf16, device)
    g = torch.rand(5, 7, device=device)
    pd, td, xd, wd = p.detach(), t.detach(), x.detach(), w.detach()
    half = torch.tensor(0.5, device=device)
    return [
        # binary_cross_entropy (c = weight)
        (pl, (p, t, None, BCE, 0.0, 1, [True, True, False], None)),
        (pl, (p, t, w, BCE, 0.0, 2, [True, True, False], None)),
        (pl, (p, t, w, BCE, 0.0, 0, [False, False, False], None)),
        (pl, (pb, tb, None, BCE, 0.0, 1, [False, False, False], f32)),
        (plb, (g, pd, td, wd, BCE, 0.0, 0, g, [True, True, False])),
        (plb, (g[0, 0], pd, td, None, BCE, 0.0, 1, half, [True, True, False])),
        # binary_cross_entropy_with_logits (d = pos_weight, param = has pos_weight)
        (pl, (x, t, None, BCE_LOGITS, 0.0, 1, [True, True, False], None)),
        (pl, (x, t, w, BCE_LOGITS, 1.0, 2, [True, True, False], None, pw)),
        (pl, (x, t, wg, BCE_LOGITS, 0.0, 1, [True, True, True], None)),
        (pl, (x, t, wg, BCE_LOGITS, 1.0, 0, [False, False, False], None, pw)),
        (pl, (x64, t64, None, BCE_LOGITS, 1.0, 2, [True, True, False], None, torch.rand(3, 4, 2, device=device,
                                                                                    dtype=f64) + 0.5)),
        (pl, (pb * 4 - 2, tb, None, BCE_LOGITS, 1.0, 1, [False, False, False], f32, (pb + 0.5).to(bf16))),
        (plb, (g, xd, td, wd, BCE_LOGITS, 1.0, 0, g, [True, True, True], pw)),
        (plb, (g[0, 0], xd, td, wd, BCE_LOGITS, 0.0, 2, half, [True, True, True])),
        # sigmoid_focal (param = alpha, param2 = gamma)
        (pl, (x, t, None, FOCAL, 0.25, 1, [True, True, False], None, None, 2.0)),
        (pl, (x, t, None, FOCAL, -1.0, 2, [True, True, False], None, None, 0.5)),
        (pl, (x, t, None, FOCAL, 0.6, 0, [False, False, False], None, None, 3.5)),
        (pl, (x64, t64, None, FOCAL, 0.25, 1, [True, True, False], None, None, 0.0)),
        (pl, (pb * 4 - 2, tb, None, FOCAL, 0.25, 2, [False, False, False], f32, None, 2.0)),
        (plb, (g, xd, td, None, FOCAL, 0.25, 0, g, [True, True, False], None, 2.0)),
        (plb, (g[0, 0], xd, td, None, FOCAL, -1.0, 1, half, [True, True, False], None, 1.0)),
    ]


test_opcheck = opcheck_test(_op_cases, 21)


# --------------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("device", device_params())
def test_compile_fullgraph_aot_eager_modules(device):
    """The modules (weight / pos_weight buffers) compile with fullgraph too."""
    w, pw = make_weight((5,), f32, device), make_weight((5,), f32, device)
    mods = [fastloss.BCEWithLogitsLoss(weight=w, pos_weight=pw), fastloss.MultiLabelSoftMarginLoss(weight=w),
            fastloss.FocalLoss(alpha=0.3, gamma=1.5)]
    refs = [torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw), torch.nn.MultiLabelSoftMarginLoss(weight=w),
            lambda a, b: focal_ref(a, b, 0.3, 1.5, "mean")]
    x = make_logits((3, 4, 5), f32, device).requires_grad_()
    t = make_target((3, 4, 5), f32, device)
    for mod, ref_mod in zip(mods, refs):
        got = torch.compile(mod, backend="aot_eager", fullgraph=True)(x, t)
        ref = ref_mod(x, t)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(ref, x)[0], rtol=1e-5,
                                   atol=1e-6)


# ------------------------------------------------------------------------------------ modules
MODULE_CASES = {
    "BCELoss": [{}, {"reduction": "sum"}, {"reduction": "none"}, {"weight": "C"}, {"weight": "C", "reduction": "none"},
                {"size_average": False}, {"reduce": False}],
    "BCEWithLogitsLoss": [{}, {"reduction": "none"}, {"pos_weight": "C"}, {"weight": "N1", "pos_weight": "C",
                                                                          "reduction": "sum"},
                          {"weight": "C"}, {"size_average": False}, {"reduce": False}],
    "MultiLabelSoftMarginLoss": [{}, {"weight": "C"}, {"reduction": "none"}, {"weight": "C", "reduction": "sum"},
                                 {"size_average": False}, {"reduce": False}],
}
_MOD_PARAMS = [(cls, i) for cls, cases in MODULE_CASES.items() for i in range(len(cases))]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("cls,case", _MOD_PARAMS, ids=str)
def test_module(device, cls, case):
    shape = (7, 11)
    tensors = {"C": make_weight((11,), f32, "cpu"), "N1": make_weight((7, 1), f32, "cpu")}
    kwargs = {k: tensors[v] if isinstance(v, str) and v in tensors else v for k, v in MODULE_CASES[cls][case].items()}
    mod, ref_mod = module_pair(cls, kwargs, device)
    assert repr(mod) == repr(ref_mod)
    assert list(mod.parameters()) == [] and [n for n, _ in mod.named_buffers()] == [n for n, _ in
                                                                                    ref_mod.named_buffers()]
    for (k, a), (_, b) in zip(mod.state_dict().items(), ref_mod.state_dict().items()):
        assert torch.equal(a, b), k
    x = (make_prob if cls == "BCELoss" else make_logits)(shape, f32, device).requires_grad_()
    t = make_target(shape, f32, device).requires_grad_()
    assert_matches_with_grads(mod(x, t), ref_mod(x, t), [x, t])
    mod.reduction = ref_mod.reduction = "sum"  # torch's forward reads the attribute at call time: so does ours
    torch.testing.assert_close(mod(x, t), ref_mod(x, t))
    # a state_dict round trip between the two classes
    mod2 = getattr(fastloss, cls)(**kwargs).to(device) if not ({"size_average", "reduce"} & kwargs.keys()) else None
    if mod2 is not None:
        mod2.load_state_dict(ref_mod.state_dict())
        mod2.reduction = "sum"
        torch.testing.assert_close(mod2(x, t), ref_mod(x, t))


def test_focal_module_defaults():
    """FocalLoss(): alpha 0.25, gamma 2, reduction 'mean' (torch.nn's default reduction), an nn.Module
    that is no torch.nn loss, with no parameters or buffers; its values and gradients are the formula's."""
    mod = fastloss.FocalLoss()
    assert isinstance(mod, torch.nn.Module) and not isinstance(mod, torch.nn.modules.loss._Loss)
    assert (mod.alpha, mod.gamma, mod.reduction) == (0.25, 2.0, "mean")
    assert list(mod.parameters()) == [] and list(mod.buffers()) == [] and len(mod.state_dict()) == 0
    assert "alpha=0.25" in repr(mod) and "gamma=2.0" in repr(mod)
    x = make_logits((7, 11), f32, "cpu").requires_grad_()
    t = make_target((7, 11), f32, "cpu").requires_grad_()
    check(mod, lambda a, b: focal_ref(a, b, 0.25, 2, "mean"), (x, t), ["input", "target"], f32)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("alpha,gamma,reduction", [(0.25, 2.0, "none"), (-1.0, 0.5, "sum"), (0.9, 0.0, "mean"),
                                                   (0.0, 3.5, "mean")], ids=str)
def test_focal_module(device, alpha, gamma, reduction):
    mod = fastloss.FocalLoss(alpha=alpha, gamma=gamma, reduction=reduction).to(device)
    x = make_logits((3, 5, 4), f64, device).requires_grad_()
    t = make_target((3, 5, 4), f64, device).requires_grad_()
    check(mod, lambda a, b: focal_ref(a, b, alpha, gamma, reduction), (x, t), ["input", "target"], f64)
    mod.alpha, mod.gamma, mod.reduction = 0.5, 1.0, "sum"  # read at call time
    check(mod, lambda a, b: focal_ref(a, b, 0.5, 1.0, "sum"), (x, t), ["input", "target"], f64)


def test_focal_module_bad_reduction():
    for red in ("average", "batchmean"):
        with pytest.raises(ValueError, match=red):
            fastloss.FocalLoss(reduction=red)
    x, t = make_logits((3, 4), f32, "cpu"), make_target((3, 4), f32, "cpu")
    with pytest.raises(ValueError, match="must be the same as input size"):
        fastloss.FocalLoss()(x, t[0])


@requires_cuda
def test_device_mismatch():
    x = torch.rand(4, 5, device="cuda")
    for fn in (F.binary_cross_entropy, fl.binary_cross_entropy, F.binary_cross_entropy_with_logits,
               fl.binary_cross_entropy_with_logits, fl.sigmoid_focal_loss):
        with pytest.raises(RuntimeError):
            fn(x, torch.rand(4, 5))
