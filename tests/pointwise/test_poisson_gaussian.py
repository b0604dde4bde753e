"""poisson_nll_loss / PoissonNLLLoss and gaussian_nll_loss / GaussianNLLLoss against torch.nn.functional,
the reference computed in float64 on the same (rounded) inputs: values and the gradients of input AND
target (and gaussian's var), every argument (log_input, full, eps; var of the input's shape, one dim
short, one dim of size 1, a Python float; eps clamping var, whose gradient torch passes through the
clamp), every reduction, poisson's legacy size_average/reduce, 0-D, 1-D, K-D, empty, strided and
expanded inputs, broadcasting, random upstream gradients, extreme values, every dtype, mixed dtypes,
autocast (poisson: float32 as torch's; gaussian's composite keeps half data in half); float64
gradcheck, opcheck of the op's kinds (param2: log_input / full flags), torch.compile with a tensor var,
the modules, and bad arguments (fullgraph compile, determinism, no fallback: tests/test_all_losses.py)."""
import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import (assert_close_ref, assert_compiled_matches, assert_legacy_matches, assert_matches_with_grads, BIG,
                     check, check_autocast, check_backward_plain_and_retain_graph, check_requires_grad_subsets,
                     coarsest, device_params, DTYPES, laid_out, layout_cases, LEGACY, module_pair, opcheck_test,
                     raises_like, REDUCTIONS, rounded, torch_ref)

fl = fastloss.functional
POISSON, GAUSSIAN = 10, 11  # fastloss::_pointwise_forward kinds (csrc/ops/pointwise.h)
f64, f32, bf16, f16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


# ------------------------------------------------------------------------------------- helpers
def make_input(shape, dtype, device, layout="contig", log_input=True, scale=1.5):
    """log_input: any real log-rates; otherwise positive rates in [0.05, 3.05)."""
    if log_input:
        return laid_out(lambda s: (torch.randn(s, device=device) * scale).to(dtype), shape, layout)
    return laid_out(lambda s: (torch.rand(s, device=device) * 3 + 0.05).to(dtype), shape, layout)


def make_counts(shape, dtype, device, layout="contig"):
    """Positive targets in [0.05, 4.05) with a fraction set exactly to 1, 2 and 3 (Stirling's term is
    masked where target <= 1: the boundary itself included). Targets exactly 0 are in the extreme-value
    test."""
    def base(s):
        t, r = torch.rand(s, device=device) * 4 + 0.05, torch.rand(s, device=device)
        t = torch.where(r < 0.1, 1.0, torch.where(r < 0.2, 2.0, torch.where(r < 0.25, 3.0, t)))
        return t.to(dtype)
    return laid_out(base, shape, layout)


def poisson_fn(module, reduction="mean", log_input=True, full=False, **kw):
    return lambda x, t: module.poisson_nll_loss(x, t, log_input=log_input, full=full, reduction=reduction, **kw)


def gaussian_fn(module, reduction="mean", full=False, eps=1e-6, var=None):
    """(x, t, v) -> loss; with `var` given (a Python float), (x, t) -> loss."""
    if var is not None:
        return lambda x, t: module.gaussian_nll_loss(x, t, var, full=full, eps=eps, reduction=reduction)
    return lambda x, t, v: module.gaussian_nll_loss(x, t, v, full=full, eps=eps, reduction=reduction)


def with_dtypes(cases):
    """(dtype, *case) for every dtype and case (shape, reduction, ...), except float16 sums of the BIG shape:
    the float16 sum of 32001 losses overflows (65504) in any implementation, so there is nothing to compare."""
    return [(dtype, *case) for dtype in DTYPES for case in cases
            if not (dtype == f16 and case[0] == BIG and case[1] == "sum")]


# ====================================================================== poisson_nll_loss
def _poisson_cases():
    def contig(shape):
        return [(red, log_input, full) for red in REDUCTIONS if not (shape == BIG and red == "mean")
                for log_input in (True, False) for full in (False, True)]
    return layout_cases(contig, lambda shape: [("none", True, True), ("mean", False, True)])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype,shape,reduction,log_input,full,layout", with_dtypes(_poisson_cases()), ids=str)
def test_poisson_matches_torch(device, dtype, shape, reduction, log_input, full, layout):
    x = make_input(shape, dtype, device, "contig" if layout == "expand" else layout, log_input).requires_grad_()
    t = make_counts(shape, dtype, device, layout).requires_grad_()
    before = [x.detach().clone(), t.detach().clone()]
    check(poisson_fn(fl, reduction, log_input, full), poisson_fn(F, reduction, log_input, full), (x, t),
          ["input", "target"], dtype)
    assert torch.equal(before[0], x.detach()) and torch.equal(before[1], t.detach()), "an input was modified"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", [1e-8, 1e-3, 0.5, 2.0, 0.0], ids=str)
@pytest.mark.parametrize("full", [False, True])
def test_poisson_eps(device, dtype, eps, full):
    """eps (added to the rate inside the log when log_input=False; unused otherwise), with rates near 0
    where it matters."""
    x = make_input((5, 40), dtype, device, log_input=False)
    with torch.no_grad():
        x[:, :10] = (torch.rand(5, 10, device=device) * 0.01 + 1e-3).to(dtype)
    x.requires_grad_()
    t = make_counts((5, 40), dtype, device).requires_grad_()
    for red in REDUCTIONS:
        for log_input in (False, True):
            check(poisson_fn(fl, red, log_input, full, eps=eps), poisson_fn(F, red, log_input, full, eps=eps), (x, t),
                  ["input", "target"], dtype)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("log_input", [True, False])
@pytest.mark.parametrize("full", [False, True])
def test_poisson_extreme_values(device, dtype, log_input, full):
    """Targets 0, 1, large and NaN; log-rates up to 100 (exp overflows float32 past ~88.7 and float16
    past ~11: the reference is rounded to the dtype), rates 0 (log(eps)), negative (NaN) and large; the
    float64 reference's NaN / inf pattern, loss and both gradients."""
    nan = float("nan")
    if log_input:
        xv = [-100.0, -20.0, 0.0, 1.0, 5.0, 20.0, 80.0, 100.0, nan, 3.0, -3.0, 0.5, 10.0, 2.0]
    else:
        xv = [0.0, 1e-6, 1e-3, 1.0, 5.0, 100.0, 1e4, -1.0, nan, 3.0, 0.0, 0.5, 2.0, 1e-2]
    tv = [0.0, 0.0, 1.0, 0.0, 2.0, 1.0, 0.5, 100.0, 1.0, nan, 0.0, 1e3, 7.0, 1.0]
    x = torch.tensor(xv, device=device).to(dtype)
    t = torch.tensor(tv, device=device).to(dtype)
    for which in ("input", "both"):  # the loss and the input's gradient first, on their own
        for red in REDUCTIONS:
            xx, tt = x.clone().requires_grad_(), t.clone().requires_grad_(which == "both")
            check(poisson_fn(fl, red, log_input, full), poisson_fn(F, red, log_input, full), (xx, tt),
                  ["input", "target"], dtype, round_ref=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("size_average,reduce", LEGACY, ids=str)
def test_poisson_legacy_size_average_reduce(device, size_average, reduce):
    x = make_input((6, 5), f64, device).requires_grad_()
    t = make_counts((6, 5), f64, device).requires_grad_()
    kw = dict(size_average=size_average, reduce=reduce, reduction="none", full=True)
    assert_legacy_matches(lambda: fl.poisson_nll_loss(x, t, **kw), lambda: F.poisson_nll_loss(x, t, **kw), [x, t])


BCAST = [((4, 3), (3,)), ((3,), (4, 3)), ((4, 1), (1, 3)), ((), (5,)), ((5,), ()), ((2, 1, 3), (4, 1))]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [f64, f32, bf16], ids=str)
@pytest.mark.parametrize("xshape,tshape", BCAST, ids=str)
def test_poisson_broadcast(device, dtype, xshape, tshape):
    """torch broadcasts input and target (either one, no warning); gradients summed to each shape."""
    x = make_input(xshape, dtype, device).requires_grad_()
    t = make_counts(tshape, dtype, device).requires_grad_()
    for red in REDUCTIONS:
        for log_input, full in [(True, False), (False, True)]:
            check(poisson_fn(fl, red, log_input, full), poisson_fn(F, red, log_input, full), (x, t),
                  ["input", "target"], dtype)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xdtype,tdtype", [(f32, f64), (f64, f32), (bf16, f32), (f16, bf16), (f32, bf16),
                                           (f32, torch.int64), (bf16, torch.int32)], ids=str)
def test_poisson_mixed_dtypes(device, xdtype, tdtype):
    """input and target promote (an integer target too), as torch; gradients in each tensor's dtype."""
    x = make_input((5, 7), xdtype, device).requires_grad_()
    t = make_counts((5, 7), tdtype if tdtype.is_floating_point else f32, device)
    t = t.round().to(tdtype) if not tdtype.is_floating_point else t.requires_grad_()
    for red in REDUCTIONS:
        for full in (False, True):
            expect = F.poisson_nll_loss(x, t, full=full, reduction=red)
            check(poisson_fn(fl, red, True, full), poisson_fn(F, red, True, full), (x, t), ["input", "target"],
                  coarsest(xdtype, expect.dtype), out_dtype=expect.dtype)


@pytest.mark.parametrize("device", device_params())
def test_poisson_integer_inputs(device):
    """torch computes with integer input and target (exp / log of integers give floats)."""
    x = torch.randint(0, 4, (4, 5), device=device)
    t = torch.randint(0, 4, (4, 5), device=device)
    for log_input in (True, False):
        for red in REDUCTIONS:
            expect = F.poisson_nll_loss(x, t, log_input=log_input, reduction=red)
            got = fl.poisson_nll_loss(x, t, log_input=log_input, reduction=red)
            assert got.dtype == expect.dtype
            torch.testing.assert_close(got, expect)


@pytest.mark.parametrize("device", device_params())
def test_poisson_bad_arguments(device):
    x, t = make_input((4, 3), f32, device), make_counts((4, 3), f32, device)
    for red in ("average", "batchmean", "None"):
        raises_like(lambda: F.poisson_nll_loss(x, t, reduction=red), lambda: fl.poisson_nll_loss(x, t, reduction=red),
                    ValueError, "is not a valid value for reduction")
    for bad in (torch.rand(4, 2, device=device), torch.rand(5, 3, device=device), torch.rand(2, 4, 4, device=device)):
        raises_like(lambda: F.poisson_nll_loss(x, bad), lambda: fl.poisson_nll_loss(x, bad), RuntimeError)


# ===================================================================== gaussian_nll_loss
def var_kinds(shape):
    """'same': the input's shape; 'short': one dim short (homoscedastic, torch unsqueezes it); 'one': one
    dim of size 1; 'float': a Python float."""
    ks = ["same", "float"]
    if len(shape) >= 1:
        ks.append("short")
    if len(shape) >= 2:
        ks.append("one")
    return ks


def make_var(shape, kind, dtype, device, lo=0.1):
    if kind == "float":  # torch multiplies it by ones_like(input): exact in every dtype, as the reference's
        return 0.75
    vs = {"same": shape, "short": shape[:-1], "one": shape[:-2] + (1,) + shape[-1:] if len(shape) >= 2 else shape}
    return (torch.rand(vs[kind], device=device) * 2 + lo).to(dtype)


def check_gaussian(x, t, v, reduction, full, eps, dtype, **kw):
    if isinstance(v, float):
        return check(gaussian_fn(fl, reduction, full, eps, var=v), gaussian_fn(F, reduction, full, eps, var=v), (x, t),
                     ["input", "target"], dtype, **kw)
    return check(gaussian_fn(fl, reduction, full, eps), gaussian_fn(F, reduction, full, eps), (x, t, v),
                 ["input", "target", "var"], dtype, **kw)


def _gaussian_cases():
    def contig(shape):
        for red in REDUCTIONS:
            for vk in var_kinds(shape):
                for vgrad in ([True, False] if vk != "float" else [False]):
                    if shape == BIG and (red == "mean" or not vgrad):
                        continue
                    if not vgrad and red != "none":
                        continue
                    yield red, vk, vgrad
    return layout_cases(contig, lambda shape: [("none", "same", True), ("mean", "short", True)])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype,shape,reduction,vkind,vgrad,layout", with_dtypes(_gaussian_cases()), ids=str)
def test_gaussian_matches_torch(device, dtype, shape, reduction, vkind, vgrad, layout):
    x = laid_out(lambda s: (torch.randn(s, device=device) * 1.5).to(dtype), shape,
                 "contig" if layout == "expand" else layout).requires_grad_()
    t = laid_out(lambda s: (torch.randn(s, device=device) * 1.5).to(dtype), shape, layout).requires_grad_()
    v = make_var(shape, vkind, dtype, device)
    if vkind == "same" and layout != "contig" and layout != "expand":
        v = laid_out(lambda s: (torch.rand(s, device=device) * 2 + 0.1).to(dtype), shape, layout)
    if isinstance(v, torch.Tensor):
        v.requires_grad_(vgrad)
    before = [a.detach().clone() for a in (x, t, v) if isinstance(a, torch.Tensor)]
    for full in (False, True):
        check_gaussian(x, t, v, reduction, full, 1e-6, dtype)
    after = [a.detach() for a in (x, t, v) if isinstance(a, torch.Tensor)]
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "an input was modified (var clamped in place?)"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", [1e-6, 1e-2, 0.5, 1.5], ids=str)
@pytest.mark.parametrize("vkind", ["same", "short", "one", "float"])
def test_gaussian_eps_clamp(device, dtype, eps, vkind):
    """var below eps is clamped for the loss; torch clamps under no_grad, so var's gradient is 1/2 (1/v -
    r^2/v^2) at the clamped v, passed through the clamp unchanged (not zeroed)."""
    x = (torch.randn(6, 30, device=device) * 1.5).to(dtype).requires_grad_()
    t = (torch.randn(6, 30, device=device) * 1.5).to(dtype).requires_grad_()
    v = make_var((6, 30), vkind, dtype, device, lo=0.0)
    if isinstance(v, torch.Tensor):
        with torch.no_grad():
            v.view(-1)[::4] = 0.0  # exact zeros: non-negative, allowed, clamped to eps
        v.requires_grad_()
    for red in REDUCTIONS:
        for full in (False, True):  # r / eps may pass float16's 65504: the reference rounded to the dtype
            check_gaussian(x, t, v, red, full, eps, dtype, round_ref=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xshape,tshape,vshape", [((4, 3), (3,), (4, 3)), ((4, 3), (4, 1), (4,)),
                                                  ((3,), (4, 3), (3,)), ((7,), (7,), ()),
                                                  ((2, 3, 4), (2, 3, 4), (2, 3)), ((2, 3, 4), (2, 3, 4), (1, 3, 4)),
                                                  ((2, 3, 4), (3, 4), (2, 1, 4)), ((4, 1), (4, 1), (4,))], ids=str)
def test_gaussian_broadcast(device, xshape, tshape, vshape):
    """var shapes torch accepts (one dim short -- a 0-D var for a 1-D input --, one dim of size 1) and
    target broadcasting (torch's composite broadcasts input - target; the loss may even grow)."""
    x = (torch.randn(xshape, device=device, dtype=f64) * 1.5).requires_grad_()
    t = (torch.randn(tshape, device=device, dtype=f64) * 1.5).requires_grad_()
    v = (torch.rand(vshape, device=device, dtype=f64) * 2 + 0.1).requires_grad_()
    for red in REDUCTIONS:
        for full in (False, True):
            check_gaussian(x, t, v, red, full, 1e-6, f64)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gaussian_extreme_values(device, dtype):
    """Large residuals, tiny, zero (clamped), large and NaN variances, NaN inputs: the float64 reference's
    NaN / inf pattern (rounded to the dtype), loss and the three gradients."""
    nan = float("nan")
    x = torch.tensor([0.0, 1e3, -1e3, 5.0, nan, 1.0, 0.0, 3.0, -2.0, 0.5, 1e2, 0.0], device=device).to(dtype)
    t = torch.tensor([0.0, 0.0, 1e3, -5.0, 1.0, nan, 0.0, 3.0, 2.0, 0.0, -1e2, 1e-3], device=device).to(dtype)
    v = torch.tensor([1.0, 1e4, 1e-3, 0.0, 1.0, 1.0, 1e-30, 1e30, nan, 1e-6, 1e3, 0.0], device=device).to(dtype)
    for eps in (1e-6, 0.1):
        for red in REDUCTIONS:
            xx, tt, vv = (a.clone().requires_grad_() for a in (x, t, v))
            for full in (False, True):
                check_gaussian(xx, tt, vv, red, full, eps, dtype, round_ref=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xdtype,tdtype,vdtype", [(f32, f64, f32), (f64, f32, f32), (f32, f32, f64),
                                                  (bf16, f32, bf16), (bf16, bf16, f32), (f16, bf16, f16),
                                                  (f32, f32, "float"), (bf16, f32, "float")], ids=str)
def test_gaussian_mixed_dtypes(device, xdtype, tdtype, vdtype):
    """torch's composite promotes input, target and var (a Python float var takes the input's dtype)."""
    x = (torch.randn(5, 7, device=device) * 1.5).to(xdtype).requires_grad_()
    t = (torch.randn(5, 7, device=device) * 1.5).to(tdtype).requires_grad_()
    v = 0.375 if vdtype == "float" else (torch.rand(5, 7, device=device) * 2 + 0.1).to(vdtype).requires_grad_()
    for red in REDUCTIONS:
        expect = F.gaussian_nll_loss(x, t, v, reduction=red)
        check_gaussian(x, t, v, red, False, 1e-6, coarsest(xdtype, expect.dtype), out_dtype=expect.dtype)


@pytest.mark.parametrize("device", device_params())
def test_gaussian_bad_arguments(device):
    x = torch.randn(4, 3, device=device)
    t = torch.randn(4, 3, device=device)
    v = torch.rand(4, 3, device=device) + 0.1
    neg = v.clone()
    neg[1, 2] = -0.5
    for bad in (neg, -v, -1.0, -1e-30):
        raises_like(lambda: F.gaussian_nll_loss(x, t, bad), lambda: fl.gaussian_nll_loss(x, t, bad), ValueError,
                    "var has negative entry/entries")
    for shape in [(3,), (1, 1), (4, 3, 1), (4, 2), (2, 4, 3), (5,), (5, 3), (1, 1, 3)]:
        bad = torch.rand(shape, device=device) + 0.1
        raises_like(lambda: F.gaussian_nll_loss(x, t, bad), lambda: fl.gaussian_nll_loss(x, t, bad), ValueError,
                    "var is of incorrect size")
    for red in ("average", "batchmean", "None"):
        raises_like(lambda: F.gaussian_nll_loss(x, t, v, reduction=red),
                    lambda: fl.gaussian_nll_loss(x, t, v, reduction=red), ValueError, "is not valid")
    # torch checks var's sign before its size and the reduction
    raises_like(lambda: F.gaussian_nll_loss(x, t, -torch.rand(3, device=device) - 0.1, reduction="x"),
                lambda: fl.gaussian_nll_loss(x, t, -torch.rand(3, device=device) - 0.1, reduction="x"), ValueError,
                "var has negative entry/entries")
    # a target that does not broadcast
    raises_like(lambda: F.gaussian_nll_loss(x, torch.randn(4, 2, device=device), v),
                lambda: fl.gaussian_nll_loss(x, torch.randn(4, 2, device=device), v), RuntimeError)
    # an integer var: torch's float check does not take it (TypeError)
    raises_like(lambda: F.gaussian_nll_loss(x, t, 1), lambda: fl.gaussian_nll_loss(x, t, 1), TypeError)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("vdtype", [torch.int64, torch.int32], ids=str)
def test_gaussian_integer_var_tensor(device, vdtype):
    """torch clamps a copy of var in place at eps, which an integer tensor cannot take: RuntimeError."""
    x, t = torch.randn(4, 3, device=device), torch.randn(4, 3, device=device)
    vi = torch.ones(4, 3, dtype=vdtype, device=device)
    raises_like(lambda: F.gaussian_nll_loss(x, t, vi), lambda: fl.gaussian_nll_loss(x, t, vi), RuntimeError)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gaussian_float16_gradient_no_intermediate_overflow(device, reduction):
    """float16: a gradient whose unscaled value (before grad_output's factor) passes 65504 but whose
    final value does not is finite, as torch's (which computes it in one expression)."""
    x = torch.tensor([1.0, 0.5], device=device, dtype=f16).requires_grad_()
    t = torch.tensor([0.0, 0.0], device=device, dtype=f16)
    v = torch.tensor([6e-6, 1.0], device=device, dtype=f16)  # input gradient r / v = 1.7e5
    g = torch.tensor(0.25 if reduction == "sum" else 0.5, device=device, dtype=f16)  # mean: a further 1/2
    got, = torch.autograd.grad(fl.gaussian_nll_loss(x, t, v, reduction=reduction), x, g)
    expect, = torch.autograd.grad(F.gaussian_nll_loss(x, t, v, reduction=reduction), x, g)
    _, (rg,) = torch_ref(lambda a, b, c: F.gaussian_nll_loss(a, b, c, reduction=reduction), (x, t, v), g)
    assert torch.isfinite(expect).all() and torch.isfinite(rounded(rg, f16)).all()
    assert_close_ref(got, rounded(rg, f16), f16, "grad input")


# ============================================================================ both losses
BOTH = ["poisson_log", "poisson_rate_full", "gaussian", "gaussian_float"]


def make_case(which, shape, dtype, device):
    """(ours(reduction), torch(reduction), tensors, names) at a generic configuration."""
    if which.startswith("poisson"):
        log_input = which == "poisson_log"
        x, t = make_input(shape, dtype, device, log_input=log_input), make_counts(shape, dtype, device)
        full = not log_input
        return ((lambda r: poisson_fn(fl, r, log_input, full)), (lambda r: poisson_fn(F, r, log_input, full)),
                [x, t], ["input", "target"])
    x = (torch.randn(shape, device=device) * 1.5).to(dtype)
    t = (torch.randn(shape, device=device) * 1.5).to(dtype)
    if which == "gaussian_float":
        return ((lambda r: gaussian_fn(fl, r, True, 1e-6, var=0.75)),
                (lambda r: gaussian_fn(F, r, True, 1e-6, var=0.75)), [x, t], ["input", "target"])
    v = make_var(shape, "short", dtype, device)
    return ((lambda r: gaussian_fn(fl, r, False, 0.2)), (lambda r: gaussian_fn(F, r, False, 0.2)), [x, t, v],
            ["input", "target", "var"])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which", BOTH)
def test_requires_grad_subsets(device, which):
    """Only one argument (or none) requires grad: torch's gradient for it (a target- or var-only gradient
    must not depend on the input's being computed); nothing: no graph."""
    ours_of, ref_of, tensors, names = make_case(which, (9, 13), f64, device)
    subsets = [sub for sub in [["input"], ["target"], ["var"], ["target", "var"], []]
               if "var" not in sub or "var" in names]
    check_requires_grad_subsets(ours_of, ref_of, tensors, names, subsets)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_plain_and_retain_graph(device, which, reduction):
    """loss.backward() (grad_output exactly 1), retain_graph twice, two upstream gradients on one graph."""
    ours_of, ref_of, tensors, names = make_case(which, (6, 50), f32, device)
    check_backward_plain_and_retain_graph(ours_of, ref_of, reduction, tensors, names, names, device)


# ---------------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which", BOTH)
@pytest.mark.parametrize("dt,other,ac", [(bf16, bf16, bf16), (f16, f16, f16), (bf16, f32, bf16), (f32, bf16, bf16)],
                         ids=str)
def test_autocast(device, which, dt, other, ac):
    """Under torch.autocast: poisson_nll_loss gives float32 (torch's fp32 policy); gaussian_nll_loss's
    composite keeps half data in half (float32 where an argument is float32); values against the float64
    reference at the result dtype's accuracy; each gradient in its own tensor's dtype."""
    ours_of, ref_of, tensors, names = make_case(which, (6, 40), f32, device)
    tensors = [a.to(dt if n == "input" else other).requires_grad_() for a, n in zip(tensors, names)]
    check_autocast(ours_of, ref_of, tensors, names, device, ac)


# ------------------------------------------------------------------------------- gradcheck
def _gradcheck_cases():
    out = []
    for red in REDUCTIONS:
        out += [("poisson", red, (li, fu)) for li in (True, False) for fu in (False, True)]
        out += [("gaussian", red, (vk, fu, eps)) for vk, fu, eps in [("same", False, 1e-6), ("short", True, 1e-6),
                                                                     ("one", False, 1e-6), ("float", True, 1e-6),
                                                                     ("same", True, 0.05)]]
    return out


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which,reduction,variant", _gradcheck_cases(), ids=str)
def test_gradcheck(device, which, reduction, variant):
    """float64 gradcheck of input and target (and var). Targets stay away from 1, where full's Stirling
    term is masked (a jump), and var away from eps (the clamp's kink)."""
    dev = dict(device=device, dtype=f64)
    if which == "poisson":
        log_input, full = variant
        x = (torch.randn(3, 4, **dev) if log_input else torch.rand(3, 4, **dev) * 2 + 0.2).requires_grad_()
        t = torch.rand(3, 4, **dev) * 3 + 0.1
        t = torch.where((t - 1).abs() < 0.1, t + 0.3, t).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: fl.poisson_nll_loss(a, b, log_input=log_input, full=full,
                                                                         reduction=reduction), (x, t))
        return
    vkind, full, eps = variant
    x = torch.randn(3, 4, **dev).requires_grad_()
    t = torch.randn(3, 4, **dev).requires_grad_()
    v = make_var((3, 4), vkind, f64, device)
    if isinstance(v, float):
        assert torch.autograd.gradcheck(lambda a, b: fl.gaussian_nll_loss(a, b, v, full=full, eps=eps,
                                                                          reduction=reduction), (x, t))
        return
    if eps > 1e-3:  # var well above eps: at a clamped entry torch's var gradient passes the clamp (not the
        v = v + 2 * eps  # numerical derivative, 0 there; see test_gaussian_eps_clamp)
    v.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: fl.gaussian_nll_loss(a, b, c, full=full, eps=eps,
                                                                         reduction=reduction), (x, t, v))


# --------------------------------------------------------------------------------- opcheck
def _op_cases(device):
    """Forward cases with fused gradients (grad_now) need opcheck's grad_output (the loss's sign) to be
    1: their losses are positive (poisson: targets with t - t log t + Stirling > 0; gaussian: var >= 1 or
    full). 'none' cases run without fused gradients."""
    ops = torch.ops.fastloss
    pl, plb = ops._pointwise_forward.default, ops._pointwise_backward.default
    x = (torch.randn(5, 7, device=device) * 0.5).requires_grad_()
    r = (torch.rand(5, 7, device=device) * 2 + 0.2).requires_grad_()  # positive rates
    t = (torch.rand(5, 7, device=device) * 0.8 + 0.2).requires_grad_()  # in (0.2, 1]: loss > 0
    tc = (torch.rand(5, 7, device=device) * 3 + 0.2).requires_grad_()
    y = torch.randn(5, 7, device=device, requires_grad=True)
    v1 = (torch.rand(5, 7, device=device) + 1.0).requires_grad_()  # var >= 1: loss >= 0
    v = (torch.rand(5, 7, device=device) * 2 + 0.1).requires_grad_()
    x64 = torch.randn(3, 4, 2, device=device, dtype=f64, requires_grad=True)
    t64 = (torch.rand(3, 4, 2, device=device, dtype=f64) * 3 + 0.2).requires_grad_()
    v64 = (torch.rand(3, 4, 2, device=device, dtype=f64) + 1.0).requires_grad_()
    xb = torch.randn(33, device=device).to(bf16)
    tb = (torch.rand(33, device=device) * 3).to(bf16)
    g = torch.rand(5, 7, device=device)
    xd, rd, tcd, yd, vd = x.detach(), r.detach(), tc.detach(), y.detach(), v.detach()
    half = torch.tensor(0.5, device=device)
    return [
        # poisson_nll (param = eps, param2 = log_input + 2 full)
        (pl, (x, t, None, POISSON, 1e-8, 1, [True, True, False], None, None, 1.0)),
        (pl, (x, tc, None, POISSON, 1e-8, 2, [True, True, False], None, None, 3.0)),
        (pl, (r, t, None, POISSON, 1e-8, 1, [True, True, False], None, None, 0.0)),
        (pl, (r, tc, None, POISSON, 0.5, 2, [True, True, False], None, None, 2.0)),
        (pl, (x, tc, None, POISSON, 1e-8, 0, [False, False, False], None, None, 3.0)),
        (pl, (x64, t64, None, POISSON, 1e-8, 2, [True, True, False], None, None, 3.0)),
        (pl, (xb, tb, None, POISSON, 1e-8, 1, [False, False, False], f32, None, 1.0)),
        (plb, (g, xd, tcd, None, POISSON, 1e-8, 0, g, [True, True, False], None, 3.0)),
        (plb, (g[0, 0], rd, tcd, None, POISSON, 0.1, 1, half, [True, True, False], None, 2.0)),
        # gaussian_nll (c = var, param = eps, param2 = full)
        (pl, (y, tc, v1, GAUSSIAN, 1e-6, 1, [True, True, True], None, None, 0.0)),
        (pl, (y, tc, v, GAUSSIAN, 0.5, 2, [True, True, True], None, None, 1.0)),
        (pl, (y, tc, v1, GAUSSIAN, 1e-6, 2, [False, True, False], None, None, 0.0)),
        (pl, (y, tc, v, GAUSSIAN, 1e-6, 0, [False, False, False], None, None, 1.0)),
        (pl, (x64, t64, v64, GAUSSIAN, 1e-6, 1, [True, True, True], None, None, 1.0)),
        (pl, (xb, tb, tb + 1, GAUSSIAN, 1e-6, 0, [False, False, False], None, None, 0.0)),
        (plb, (g, yd, tcd, vd, GAUSSIAN, 1e-6, 0, g, [True, True, True], None, 1.0)),
        (plb, (g[0, 0], yd, tcd, vd, GAUSSIAN, 0.5, 1, half, [True, False, True], None, 0.0)),
    ]


test_opcheck = opcheck_test(_op_cases, 17)


# --------------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("device", device_params())
def test_compile_tensor_var(device):
    """A tensor var: torch's own sign check is data-dependent (torch's fullgraph trace fails on it);
    compiled without fullgraph, torch's values and gradients (input, target, var)."""
    x = torch.randn(6, 9, device=device, requires_grad=True)
    t = torch.randn(6, 9, device=device, requires_grad=True)
    v = (torch.rand(6, device=device) + 0.1).requires_grad_()

    def step(gauss, a, b, c):
        return gauss(a, b, c, reduction="sum") + gauss(a, b, c.unsqueeze(-1), full=True)

    assert_compiled_matches(torch.compile(lambda a, b, c: step(fl.gaussian_nll_loss, a, b, c), backend="aot_eager"),
                            lambda a, b, c: step(F.gaussian_nll_loss, a, b, c), (x, t, v), [x, t, v], grad_atol=1e-5)


# ------------------------------------------------------------------------------------ modules
POISSON_MODULE_CASES = [{}, {"log_input": False}, {"log_input": False, "full": True, "eps": 1e-3},
                        {"full": True, "reduction": "sum"}, {"reduction": "none"}, {"size_average": False},
                        {"reduce": False}]
GAUSSIAN_MODULE_CASES = [{}, {"full": True}, {"eps": 0.5, "reduction": "sum"}, {"reduction": "none"},
                         {"full": True, "eps": 1e-2, "reduction": "none"}]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("kwargs", POISSON_MODULE_CASES, ids=str)
def test_poisson_module(device, kwargs):
    mod, ref_mod = module_pair("PoissonNLLLoss", kwargs, device)
    assert (mod.log_input, mod.full, mod.eps) == (ref_mod.log_input, ref_mod.full, ref_mod.eps)
    assert list(mod.parameters()) == [] and list(mod.buffers()) == []
    assert repr(mod) == repr(ref_mod)
    x = make_input((7, 11), f32, device, log_input=mod.log_input).requires_grad_()
    t = make_counts((7, 11), f32, device).requires_grad_()
    assert_matches_with_grads(mod(x, t), ref_mod(x, t), [x, t])
    mod.reduction = ref_mod.reduction = "sum"  # read at call time, as torch's forward
    mod.full = ref_mod.full = not mod.full
    torch.testing.assert_close(mod(x, t), ref_mod(x, t))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("kwargs", GAUSSIAN_MODULE_CASES, ids=str)
@pytest.mark.parametrize("vkind", ["same", "short", "one", "float"])
def test_gaussian_module(device, kwargs, vkind):
    mod, ref_mod = module_pair("GaussianNLLLoss", kwargs, device)
    assert (mod.full, mod.eps) == (ref_mod.full, ref_mod.eps)
    assert list(mod.parameters()) == [] and list(mod.buffers()) == []
    assert repr(mod) == repr(ref_mod)
    x = torch.randn(7, 11, device=device, requires_grad=True)
    t = torch.randn(7, 11, device=device, requires_grad=True)
    v = make_var((7, 11), vkind, f32, device)
    diff = [x, t] + ([v.requires_grad_()] if isinstance(v, torch.Tensor) else [])
    assert_matches_with_grads(mod(x, t, v), ref_mod(x, t, v), diff)
    mod.reduction = ref_mod.reduction = "mean"
    mod.eps = ref_mod.eps = 0.9
    torch.testing.assert_close(mod(x, t, v), ref_mod(x, t, v))
