"""kl_div / KLDivLoss against torch.nn.functional: values and the gradients of input AND target over
every reduction ('batchmean' included, with torch's 'mean' warning), log_target, the legacy
size_average/reduce, odd, empty and 0-dim shapes, strided and expanded inputs, broadcasting of either
argument, dtype promotion, every dtype, autocast, extreme values (target 0: loss 0 and torch's NaN
target gradient; negative / NaN targets: NaN); float64 gradcheck, opcheck of the op's kind,
the module, and bad arguments (torch.compile, determinism, no fallback: tests/test_all_losses.py)."""
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import (assert_close_ref, assert_close_to_ref, assert_matches_with_grads, coarsest, device_params, DTYPES,
                      gfloor, layouts, make, module_pair, opcheck_test, requires_cuda, torch_ref)

REDUCTIONS = ["none", "mean", "sum", "batchmean"]
SHAPES = [(), (7,), (0,), (5, 4), (4, 0, 3), (3, 1000), (70001,), (2, 3, 4, 5)]
KL_DIV = 7  # fastloss::_pointwise_forward kind (csrc/ops/pointwise.h)
f64, f32, bf16, f16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
MEAN_WARNING = ("reduction: 'mean' divides the total loss by both the batch size and the support size."
                "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
                "'mean' will be changed to behave the same as 'batchmean' in the next major release.")


def ours(*args, **kwargs):
    return fastloss.functional.kl_div(*args, **kwargs)


def kl_fn(module, reduction="mean", log_target=False, **extra):
    """A callable (x, t) -> loss for torch.nn.functional (module=F) or fastloss.functional."""
    return lambda x, t: module.kl_div(x, t, reduction=reduction, log_target=log_target, **extra)


def _writable(t, layout):
    """The view to write through (an expanded tensor through its one stored row)."""
    return t[:1] if layout == "expand" and t.dim() else t


def make_input(shape, dtype, device, layout="contig", scale=2.0):
    """log-probabilities (any real values; torch does not check)."""
    return make(shape, dtype, device, layout, scale)


def make_target(shape, dtype, device, layout="contig", log_target=False, zeros=0.2):
    """log_target: real values around -1; otherwise probabilities in [0.2, 1.2) with a fraction
    `zeros` of exact zeros (loss 0 there, torch's target gradient NaN)."""
    t = make(shape, dtype, device, layout, scale=1.0, positive=not log_target)
    with torch.no_grad():
        w = _writable(t, layout)
        if log_target:
            w.sub_(1.0)
        elif zeros and w.numel():
            w[torch.rand(w.shape, device=device) < zeros] = 0.0
    return t


def call_recording(fn, *args):
    """fn(*args) and the warnings it raised (every one recorded)."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn(*args)
    return out, w


def check_warnings(got, expected, reduction, legacy=False):
    """Our warnings are torch's: the 'mean' one exactly once, attributed to the caller (this file)."""
    assert [(type(w.message), str(w.message)) for w in got] == [(type(w.message), str(w.message)) for w in expected]
    if reduction == "mean" and not legacy:
        assert len(got) == 1 and str(got[0].message) == MEAN_WARNING and got[0].category is UserWarning
        assert got[0].filename == expected[0].filename == __file__, (got[0].filename, expected[0].filename)


# ------------------------------------------------------------------------- the main test matrix
def _cases():
    out = []
    for shape in SHAPES:
        for red in REDUCTIONS:
            for log_target in [False, True]:
                if shape == (70001,) and red in ("mean", "batchmean"):
                    continue  # the long shape (vector tails, parallel sums): 'none' and 'sum' suffice
                for layout in layouts(shape):
                    if layout != "contig" and red in ("sum", "mean"):
                        continue  # layouts: a thinner slice of the product
                    out.append((shape, red, log_target, layout))
    return out


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,reduction,log_target,layout", _cases(), ids=str)
def test_matches_torch(device, dtype, shape, reduction, log_target, layout):
    numel = math.prod(shape)
    scale = 0.3 if dtype == torch.float16 and numel > 10000 else 2.0  # float16 sums stay below 65504
    x = make_input(shape, dtype, device, "contig" if layout == "expand" else layout, scale).requires_grad_()
    t = make_target(shape, dtype, device, layout, log_target).requires_grad_()
    before = [x.detach().clone(), t.detach().clone()]
    loss, got_w = call_recording(kl_fn(fastloss.functional, reduction, log_target), x, t)
    _, ref_w = call_recording(kl_fn(F, reduction, log_target), x, t)
    check_warnings(got_w, ref_w, reduction)
    grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5  # never exactly 1
    ref, (rgx, rgt) = torch_ref(kl_fn(F, reduction, log_target), (x, t), grad_out)
    assert loss.dtype == dtype and loss.device.type == device
    assert_close_ref(loss, ref, dtype, "loss")
    gx, gt = torch.autograd.grad(loss, [x, t], grad_out.to(loss.dtype))
    assert gx.dtype == gt.dtype == dtype and gx.shape == x.shape and gt.shape == t.shape
    assert_close_ref(gx, rgx, dtype, "grad input", floor=gfloor(dtype, numel))
    assert_close_ref(gt, rgt, dtype, "grad target", floor=gfloor(dtype, numel))
    if not log_target and reduction != "none":
        zero = t.detach() == 0
        assert torch.isnan(gt[zero]).all(), "torch's target gradient at target == 0 is NaN (0/0)"
        assert torch.isfinite(gx).all()
    assert torch.equal(before[0], x.detach()) and torch.equal(before[1], t.detach()), "an input was modified"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_backward_plain_and_retain_graph(device, reduction, log_target):
    """loss.backward() (grad_output exactly 1), retain_graph twice (twice the gradient), and two
    upstream gradients on one graph each give torch's result, for input and target."""
    def leaves():
        torch.manual_seed(1)
        x = torch.randn(6, 50, device=device, requires_grad=True)
        t = make_target((6, 50), torch.float32, device, log_target=log_target, zeros=0).requires_grad_()
        return x, t

    (x, t), (x2, t2) = leaves(), leaves()
    f_ours, f_ref = kl_fn(fastloss.functional, reduction, log_target), kl_fn(F, reduction, log_target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn, args in [(f_ours, (x, t)), (f_ref, (x2, t2))]:
            loss = fn(*args)
            loss.backward(torch.ones_like(loss)) if reduction == "none" else loss.backward()
        # float32 against float32: the target's gradient log(t) + 1 - x cancels, so an absolute error
        # of a few ulp of its O(1) terms (both libraries round in their own order)
        for a, b in [(x, x2), (t, t2)]:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
            a.grad = b.grad = None
        for fn, args in [(f_ours, (x, t)), (f_ref, (x2, t2))]:
            loss = fn(*args).sum() * 3.0
            loss.backward(retain_graph=True)
            loss.backward()
        for a, b in [(x, x2), (t, t2)]:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
        loss, loss2 = f_ours(x, t), f_ref(x2, t2)
    go1, go2 = (torch.rand(loss.shape, device=device) + 0.5 for _ in range(2))
    got = (torch.autograd.grad(loss, [x, t], go1, retain_graph=True) + torch.autograd.grad(loss, [x, t], go2))
    exp = (torch.autograd.grad(loss2, [x2, t2], go1, retain_graph=True) + torch.autograd.grad(loss2, [x2, t2], go2))
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("which", ["input", "target", "none"])
@pytest.mark.parametrize("log_target", [False, True])
def test_requires_grad_subsets(device, which, log_target):
    """Only one argument requires grad: it gets torch's gradient (a target-only gradient must not depend
    on the input's being computed in the forward); neither: no graph."""
    x = torch.randn(9, 13, device=device, dtype=torch.float64, requires_grad=which == "input")
    t = make_target((9, 13), torch.float64, device, log_target=log_target).requires_grad_(which == "target")
    for red in REDUCTIONS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = ours(x, t, reduction=red, log_target=log_target)
        grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, ref_grads = torch_ref(kl_fn(F, red, log_target), (x, t), grad_out)
        torch.testing.assert_close(loss, ref, equal_nan=True)
        diff = [a for a in (x, t) if a.requires_grad]
        assert loss.requires_grad == bool(diff)
        for g, r in zip(torch.autograd.grad(loss, diff, grad_out) if diff else [], ref_grads):
            torch.testing.assert_close(g, r, equal_nan=True)


# ------------------------------------------------------------------- reductions: legacy, batchmean
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("size_average,reduce", [(True, None), (False, None), (None, True), (None, False),
                                                 (True, False), (False, True), (True, True), (False, False)],
                         ids=str)
@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
def test_legacy_size_average_reduce(device, size_average, reduce, reduction):
    """size_average/reduce override reduction ('batchmean' too): torch's deprecation warning and no
    'mean' warning, torch's reduction, torch's gradients."""
    x = torch.randn(6, 5, device=device, dtype=torch.float64, requires_grad=True)
    t = make_target((6, 5), torch.float64, device, zeros=0).requires_grad_()
    fn = lambda m: kl_fn(m, reduction, size_average=size_average, reduce=reduce)  # noqa: E731
    out, got_w = call_recording(fn(fastloss.functional), x, t)
    ref, ref_w = call_recording(fn(F), x, t)
    check_warnings(got_w, ref_w, reduction, legacy=True)
    assert any("deprecated" in str(w.message) for w in got_w)
    assert not any("batchmean" in str(w.message) for w in got_w)
    assert_matches_with_grads(out, ref, [x, t])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("shape", [(), (1,), (5,), (0,), (0, 3), (3, 0), (4, 7), (2, 3, 5)], ids=str)
@pytest.mark.parametrize("log_target", [False, True])
def test_batchmean(device, shape, log_target):
    """'batchmean' is the sum divided by input.size(0) (0-dim input: the sum; empty batch: 0/0 = NaN;
    empty support: 0), exactly torch's value and gradients."""
    x = torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)
    t = make_target(shape, torch.float64, device, log_target=log_target, zeros=0).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 'batchmean' warns of nothing
        out = ours(x, t, reduction="batchmean", log_target=log_target)
    ref = F.kl_div(x, t, reduction="batchmean", log_target=log_target)
    total = F.kl_div(x, t, reduction="sum", log_target=log_target)
    torch.testing.assert_close(ref, total if len(shape) == 0 else total / shape[0], equal_nan=True)
    assert out.shape == ref.shape == ()
    torch.testing.assert_close(out, ref, equal_nan=True)
    if x.numel():
        for a, b in zip(torch.autograd.grad(out, [x, t]), torch.autograd.grad(ref, [x, t])):
            torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------- broadcasting
BCAST = [((4, 3), (3,)), ((4, 3), (1, 3)), ((3, 1), (1, 4)), ((5,), ()), ((), (5,)), ((2, 1, 3), (4, 1)),
         ((3,), (4, 3)), ((1, 1000), (3, 1))]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [f64, f32, bf16], ids=str)
@pytest.mark.parametrize("xshape,tshape", BCAST, ids=str)
@pytest.mark.parametrize("log_target", [False, True])
def test_broadcast(device, dtype, xshape, tshape, log_target):
    """Either argument broadcasts (torch: no warning); gradients are summed back to each argument's
    own shape; 'batchmean' divides by the input's own first size."""
    x = make_input(xshape, dtype, device).requires_grad_()
    t = make_target(tshape, dtype, device, log_target=log_target).requires_grad_()
    for red in REDUCTIONS:
        loss, got_w = call_recording(kl_fn(fastloss.functional, red, log_target), x, t)
        expect, ref_w = call_recording(kl_fn(F, red, log_target), x, t)
        check_warnings(got_w, ref_w, red)
        assert loss.shape == expect.shape
        gx, gt = assert_close_to_ref(loss, kl_fn(F, red, log_target), (x, t), [x, t], ["input", "target"], dtype, red,
                                     n=max(x.numel(), t.numel()))
        assert gx.shape == x.shape and gt.shape == t.shape


# ------------------------------------------------------------------------------------- dtypes
DTYPE_PAIRS = [(f32, f64), (f64, f32), (bf16, f32), (f16, f64), (f32, bf16), (bf16, f16), (f16, f32), (f16, bf16)]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xdtype,tdtype", DTYPE_PAIRS, ids=str)
@pytest.mark.parametrize("log_target", [False, True])
def test_mixed_dtypes(device, xdtype, tdtype, log_target):
    """input and target promote (float32 with float64: float64; bfloat16 with float16: float32), as
    torch; gradients come back in each tensor's own dtype."""
    x = make_input((5, 7), xdtype, device).requires_grad_()
    t = make_target((5, 7), tdtype, device, log_target=log_target).requires_grad_()
    for red in ["none", "sum", "batchmean"]:
        loss = ours(x, t, reduction=red, log_target=log_target)
        expect = F.kl_div(x, t, reduction=red, log_target=log_target)
        assert loss.dtype == expect.dtype == torch.promote_types(xdtype, tdtype)
        tol = coarsest(xdtype, tdtype, loss.dtype)
        gx, gt = assert_close_to_ref(loss, kl_fn(F, red, log_target), (x, t), [x, t], ["input", "target"], tol, red)
        assert gx.dtype == xdtype and gt.dtype == tdtype


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xdtype,tdtype", [(torch.int64, f32), (f32, torch.int64), (torch.int64, torch.int64),
                                           (f64, torch.int32), (f32, torch.bool), (torch.uint8, f16)], ids=str)
@pytest.mark.parametrize("log_target", [False, True])
def test_integral_inputs_refused(device, xdtype, tdtype, log_target):
    """torch: 'Integral inputs not supported' (RuntimeError) when either argument is not floating."""
    x = torch.randint(0, 3, (4, 5), device=device).to(xdtype)
    t = torch.randint(0, 3, (4, 5), device=device).to(tdtype)
    for red in ["none", "sum", "batchmean"]:
        with pytest.raises(RuntimeError, match="Integral inputs not supported"):
            F.kl_div(x, t, reduction=red, log_target=log_target)
        with pytest.raises(RuntimeError, match="Integral inputs not supported"):
            ours(x, t, reduction=red, log_target=log_target)


# ---------------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("dt,tdt", [(bf16, bf16), (bf16, f32), (f32, bf16), (f16, f16)], ids=str)
@pytest.mark.filterwarnings("ignore:reduction. 'mean'")
def test_autocast(device, reduction, log_target, dt, tdt):
    """Under autocast torch runs kl_div in float32 (fp32 policy): a float32 loss, values at float32's
    accuracy (the half data are exact), each gradient in its own tensor's dtype."""
    ac = f16 if f16 in (dt, tdt) else bf16
    x = make_input((6, 40), dt, device).requires_grad_()
    t = make_target((6, 40), tdt, device, log_target=log_target).requires_grad_()
    with torch.autocast(device_type=device, dtype=ac):
        loss = ours(x, t, reduction=reduction, log_target=log_target)
        expect = F.kl_div(x, t, reduction=reduction, log_target=log_target)
    assert loss.dtype == expect.dtype == torch.float32
    grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref, (rgx, rgt) = torch_ref(kl_fn(F, reduction, log_target), (x, t), grad_out)
    assert_close_ref(loss, ref, f32, "loss")
    gx, gt = torch.autograd.grad(loss, [x, t], grad_out.to(loss.dtype))
    assert gx.dtype == dt and gt.dtype == tdt
    assert_close_ref(gx, rgx, coarsest(dt, tdt), "grad input", floor=gfloor(coarsest(dt, tdt), x.numel()))
    assert_close_ref(gt, rgt, coarsest(dt, tdt), "grad target", floor=gfloor(coarsest(dt, tdt), x.numel()))


# ----------------------------------------------------------------------------- extreme values
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("log_target", [False, True])
def test_extreme_values(device, dtype, log_target):
    """nan, +-inf, 0, negative, tiny and large targets and inputs (no overflow in any dtype): the float64
    reference's NaN/inf pattern and values for the loss and both gradients. Without log_target: target
    0 gives loss 0 (also against an infinite input: xlogy), a NaN target gradient; a negative or NaN
    target gives NaN."""
    nan, inf = float("nan"), float("inf")
    if log_target:
        tv = [0.0, -1.0, 2.0, -inf, inf, nan, 4.0, -30.0, 0.5, -2.0, 1.0, -inf, 3.0, 0.0]
    else:
        tv = [0.0, 0.5, 1.0, -0.5, inf, nan, 1e-30, 100.0, 0.25, 0.0, 0.0, 2.0, 0.0, 0.125]
    xv = [0.0, -inf, inf, 1.0, 0.0, 1.0, -3.0, -10.0, nan, inf, -inf, 5.0, nan, -1.0]
    x = torch.tensor(xv, device=device).to(dtype).requires_grad_()
    t = torch.tensor(tv, device=device).to(dtype).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for red in REDUCTIONS:
            loss = ours(x, t, reduction=red, log_target=log_target)
            grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
            ref, (rgx, rgt) = torch_ref(kl_fn(F, red, log_target), (x, t), grad_out)
            assert_close_ref(loss, ref, dtype, f"loss {red}")
            gx, gt = torch.autograd.grad(loss, [x, t], grad_out.to(loss.dtype))
            assert_close_ref(gx, rgx, dtype, f"grad input {red}", floor=gfloor(dtype, x.numel()))
            assert_close_ref(gt, rgt, dtype, f"grad target {red}", floor=gfloor(dtype, x.numel()))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [f64, f32], ids=str)
def test_overflow_as_torch(device, dtype):
    """log_target with a large target: exp(target) overflows where torch's does (float32 past ~88.7),
    an inf loss and gradients; against torch in the same dtype."""
    x = torch.tensor([0.0, 1.0, -1.0, 50.0, 0.0, 100.0], device=device, dtype=dtype)
    t = torch.tensor([80.0, 88.0, 89.0, 100.0, 720.0, -100.0], device=device, dtype=dtype)
    for red in ["none", "sum", "batchmean"]:
        xs = [x.clone().requires_grad_() for _ in range(2)]
        ts = [t.clone().requires_grad_() for _ in range(2)]
        loss = ours(xs[0], ts[0], reduction=red, log_target=True)
        ref = F.kl_div(xs[1], ts[1], reduction=red, log_target=True)
        go = torch.rand(ref.shape, device=device, dtype=dtype) + 0.5
        got = [loss] + list(torch.autograd.grad(loss, [xs[0], ts[0]], go))
        exp = [ref] + list(torch.autograd.grad(ref, [xs[1], ts[1]], go))
        for a, b, what in zip(got, exp, ["loss", "grad input", "grad target"]):
            assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{what} {red}: NaN pattern {a} vs torch {b}"
            assert torch.equal(torch.isinf(a), torch.isinf(b)), f"{what} {red}: inf pattern {a} vs torch {b}"
            fin = torch.isfinite(b)
            # subnormal results (exp(-96)): absolute granularity 1.4e-45, rounded differently by each exp
            torch.testing.assert_close(a[fin], b[fin], rtol=1e-5 if dtype == f32 else 1e-12,
                                       atol=torch.finfo(dtype).tiny)


# ------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("device", device_params())
def test_bad_arguments(device):
    x = torch.randn(4, 3, device=device)
    t = torch.rand(4, 3, device=device)
    for red in ("average", "avg", "batch_mean"):
        with pytest.raises(ValueError, match=re.escape("is not a valid value for reduction")):
            ours(x, t, reduction=red)
        with pytest.raises(ValueError):
            F.kl_div(x, t, reduction=red)
    for bad in (torch.rand(4, 2, device=device), torch.rand(5, 3, device=device), torch.rand(2, 4, 3, 1)):
        with pytest.raises(RuntimeError):
            F.kl_div(x, bad.to(device), reduction="sum")
        with pytest.raises(RuntimeError):
            ours(x, bad.to(device), reduction="sum")


@requires_cuda
def test_device_mismatch():
    x = torch.randn(4, 5, device="cuda")
    for a, b in [(x, torch.rand(4, 5)), (x.cpu(), torch.rand(4, 5, device="cuda"))]:
        with pytest.raises(RuntimeError):
            F.kl_div(a, b, reduction="sum")
        with pytest.raises(RuntimeError):
            ours(a, b, reduction="sum")


# ------------------------------------------------------------------------------------ modules
MODULE_CASES = [{}, {"reduction": "batchmean"}, {"reduction": "sum", "log_target": True}, {"reduction": "none"},
                {"log_target": True}, {"size_average": False}, {"reduce": False}, {"size_average": True}]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("kwargs", MODULE_CASES, ids=str)
def test_module(device, kwargs):
    mod, ref_mod = module_pair("KLDivLoss", kwargs, device)
    assert mod.log_target == ref_mod.log_target
    assert list(mod.parameters()) == [] and list(mod.buffers()) == []
    assert repr(mod) == repr(ref_mod)
    x = torch.randn(7, 11, device=device, requires_grad=True)
    t = make_target((7, 11), torch.float32, device, log_target=mod.log_target, zeros=0).requires_grad_()
    out, got_w = call_recording(mod, x, t)
    ref, ref_w = call_recording(ref_mod, x, t)
    assert [str(w.message) for w in got_w] == [str(w.message) for w in ref_w]  # 'mean': torch's warning
    torch.testing.assert_close(out, ref)
    go = torch.rand_like(ref) + 0.5
    for a, b in zip(torch.autograd.grad(out, [x, t], go), torch.autograd.grad(ref, [x, t], go)):
        torch.testing.assert_close(a, b)
    mod.reduction, mod.log_target = "batchmean", not mod.log_target  # read at call time, as torch's forward
    torch.testing.assert_close(mod(x, t), F.kl_div(x, t, reduction="batchmean", log_target=mod.log_target),
                               equal_nan=True)


# ------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("xshape,tshape", [((3, 4), (3, 4)), ((3, 4), (4,)), ((4,), (3, 4)), ((), ())], ids=str)
@pytest.mark.filterwarnings("ignore:reduction. 'mean'")
def test_gradcheck(device, reduction, log_target, xshape, tshape):
    """float64 gradcheck of input and target (target > 0 without log_target: the derivative exists)."""
    x = torch.randn(xshape, device=device, dtype=torch.float64).requires_grad_()
    t = (torch.randn(tshape, device=device, dtype=torch.float64) if log_target
         else torch.rand(tshape, device=device, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ours(a, b, reduction=reduction, log_target=log_target), (x, t))


# --------------------------------------------------------------------------------- opcheck
def _op_cases(device):
    """Where the forward writes gradients (grad_now), the op returns them and backward scales those very
    buffers by grad_output in place (fused backward): opcheck's eager run then sees its returned
    gradients change, unless grad_output is exactly 1 (skipped). opcheck's grad_output is the sign of
    the loss, so those cases use true distributions (KL >= 0). Cases with a negative loss run with no
    fused gradients (_pointwise_backward then computes them)."""
    ops = torch.ops.fastloss
    x = torch.randn(5, 7, device=device).log_softmax(-1).requires_grad_()
    t = torch.randn(5, 7, device=device).softmax(-1).requires_grad_()
    lt = torch.randn(5, 7, device=device).log_softmax(-1).requires_grad_()
    xr = torch.randn(5, 7, device=device, requires_grad=True)  # any values: the loss may be negative
    tr = (torch.rand(5, 7, device=device) + 0.1).requires_grad_()
    x64 = torch.randn(3, 4, 2, device=device, dtype=torch.float64).log_softmax(-1).requires_grad_()
    t64 = torch.randn(3, 4, 2, device=device, dtype=torch.float64).softmax(-1).requires_grad_()
    xb = torch.randn(33, device=device, dtype=torch.bfloat16)
    g = torch.rand(5, 7, device=device)
    xd, td, ltd = xr.detach(), tr.detach(), lt.detach()
    return [
        (ops._pointwise_forward.default, (x, t, None, KL_DIV, 0.0, 1, [True, True, False], None)),
        (ops._pointwise_forward.default, (x, lt, None, KL_DIV, 1.0, 2, [True, True, False], None)),
        (ops._pointwise_forward.default, (x64, t64, None, KL_DIV, 0.0, 2, [False, True, False], None)),
        (ops._pointwise_forward.default, (xr, tr, None, KL_DIV, 0.0, 2, [False, False, False], None)),
        (ops._pointwise_forward.default, (xr, lt, None, KL_DIV, 1.0, 1, [False, False, False], None)),
        (ops._pointwise_forward.default, (xr, lt, None, KL_DIV, 1.0, 0, [False, False, False], None)),
        (ops._pointwise_forward.default, (xr, tr, None, KL_DIV, 0.0, 0, [False, False, False], None)),
        (ops._pointwise_forward.default, (xb, xb.flip(0).exp(), None, KL_DIV, 0.0, 1, [False, False, False],
                                      torch.float32)),
        (ops._pointwise_backward.default, (g, xd, td, None, KL_DIV, 0.0, 0, g, [True, True, False])),
        (ops._pointwise_backward.default, (g, xd, ltd, None, KL_DIV, 1.0, 0, g, [False, True, False])),
        (ops._pointwise_backward.default, (g[0, 0], xd, ltd, None, KL_DIV, 1.0, 1,
                                               torch.tensor(0.5, device=device), [True, True, False])),
    ]


test_opcheck = opcheck_test(_op_cases, 11)
