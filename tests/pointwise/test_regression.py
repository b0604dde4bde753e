"""l1_loss, mse_loss, smooth_l1_loss, huber_loss (functions and modules) against torch.nn.functional:
values and gradients (input, target, and weight where torch takes one) over every reduction, the
legacy size_average/reduce, odd and large shapes, strided and expanded inputs, broadcasting, every
dtype, mixed dtypes, autocast, extreme values; float64 gradcheck, and the CPU kernel's
two paths (torch.compile, determinism, no fallback: tests/test_all_losses.py)."""
import contextlib
import itertools
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import (assert_close_ref, assert_close_to_ref, coarsest, device_params, diff_of, DTYPES, gfloor, layouts,
                      make, module_pair, requires_cuda, torch_ref)

REDUCTIONS = ["none", "mean", "sum"]
LOSSES = ["l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss"]
WEIGHTED = ("l1_loss", "mse_loss", "huber_loss")  # torch 2.14: optional weight of the input's size
LEGACY = ("l1_loss", "mse_loss", "smooth_l1_loss")  # huber_loss has no size_average/reduce
PARAM = {"l1_loss": None, "mse_loss": None, "smooth_l1_loss": "beta", "huber_loss": "delta"}
VALUES = {"smooth_l1_loss": [1.0, 0.0, 0.5, 2.5], "huber_loss": [1.0, 0.5, 2.0]}  # first one: torch's default

SHAPES = [(), (7,), (0,), (5, 4), (4, 0, 3), (3, 1000), (70001,), (2, 3, 4, 5)]


def ours(name):
    """The fastloss function (looked up at call time)."""
    return getattr(fastloss.functional, name)


def param_kw(name, value):
    return {} if PARAM[name] is None or value is None else {PARAM[name]: value}


# ------------------------------------------------------------------------------------- helpers
# valid (loss, weighted) pairs: only l1/mse/huber take a weight
NAME_WEIGHTED = [(n, False) for n in LOSSES] + [(n, True) for n in WEIGHTED]


def reg_fn(module, name, reduction="mean", value=None, weighted=False, **extra):
    """A callable (x, t, w) -> loss for torch.nn.functional (module=F) or fastloss.functional."""
    kw = dict(param_kw(name, value), **extra)

    def call(x, t, w=None):
        f = getattr(module, name)
        if weighted:
            return f(x, t, reduction=reduction, weight=w, **kw)
        return f(x, t, reduction=reduction, **kw)
    return call


# ------------------------------------------------------------------------- the main test matrix
def _cases():
    out = []
    for name in LOSSES:
        for vi, value in enumerate(VALUES.get(name, [None])):
            default = vi == 0
            for shape in (SHAPES if default else [(7,), (5, 4), (70001,)]):
                for red in REDUCTIONS:
                    weights = ["none", "grad", "const"] if (name in WEIGHTED and default) else ["none"]
                    for weight in weights:
                        if weight == "const" and shape not in [(5, 4), (70001,)]:
                            continue  # a weight without requires_grad: a thinner slice
                        for layout in layouts(shape):
                            if layout != "contig" and (weight == "const" or red == "sum" or not default):
                                continue  # layouts: a thinner slice of the product
                            out.append((name, value, shape, red, weight, layout))
    return out


CASES = _cases()


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,value,shape,reduction,weight,layout", CASES, ids=str)
def test_matches_torch(device, dtype, name, value, shape, reduction, weight, layout):
    numel = math.prod(shape)
    scale = 0.3 if dtype == torch.float16 and numel > 10000 else 2.0  # float16 sums stay below 65504
    x = make(shape, dtype, device, "contig" if layout == "expand" else layout, scale).requires_grad_()
    t = make(shape, dtype, device, layout, scale).requires_grad_()
    w = None
    if weight != "none":
        w = make(shape, dtype, device, layout, positive=True).requires_grad_(weight == "grad")
    before = [a.detach().clone() for a in (x, t, w) if a is not None]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same sizes: no broadcasting warning (nor any other)
        loss = reg_fn(fastloss.functional, name, reduction, value, w is not None)(x, t, w)
    # a random upstream gradient (per element for 'none'), never exactly 1
    grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref, ref_grads = torch_ref(reg_fn(F, name, reduction, value, w is not None), (x, t, w), grad_out)

    assert loss.dtype == dtype and loss.device.type == device
    assert_close_ref(loss, ref, dtype, "loss")
    diff = diff_of(x, t, w)
    grads = torch.autograd.grad(loss, diff, grad_out.to(loss.dtype))
    for g, r, a, what in zip(grads, ref_grads, diff, ["input", "target", "weight"]):
        assert g.dtype == dtype and g.shape == a.shape
        assert_close_ref(g, r, dtype, f"grad {what}", floor=gfloor(dtype, numel))
    for a, b in zip(before, [a for a in (x, t, w) if a is not None]):
        assert torch.equal(a, b.detach()), "an input was modified"


# ------------------------------------------------------------- backward paths: grad_output 1, retain
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name,weighted", NAME_WEIGHTED, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_plain_and_retain_graph(device, name, weighted, reduction):
    """loss.backward() (grad_output exactly 1: the path that may scale the forward's gradient in
    place); then retain_graph: the saved gradients survive, two backward calls give twice the grad,
    and two different upstream gradients each give their own result."""
    value = VALUES.get(name, [None])[0]

    def leaves():
        torch.manual_seed(1)
        x = torch.randn(6, 50, device=device, requires_grad=True)
        t = torch.randn(6, 50, device=device, requires_grad=True)
        w = (torch.rand(6, 50, device=device) + 0.2).requires_grad_() if weighted else None
        return x, t, w

    (x, t, w), (x2, t2, w2) = leaves(), leaves()
    f_ours = reg_fn(fastloss.functional, name, reduction, value, weighted)
    f_ref = reg_fn(F, name, reduction, value, weighted)

    def one_backward(fn, x, t, w):
        loss = fn(x, t, w)
        loss.backward(torch.ones_like(loss)) if reduction == "none" else loss.backward()

    one_backward(f_ours, x, t, w)
    one_backward(f_ref, x2, t2, w2)
    for a, b in zip(diff_of(x, t, w), diff_of(x2, t2, w2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)
        a.grad, b.grad = None, None

    for fn, args in [(f_ours, (x, t, w)), (f_ref, (x2, t2, w2))]:
        loss = fn(*args).sum() * 3.0
        loss.backward(retain_graph=True)
        loss.backward()
    for a, b in zip(diff_of(x, t, w), diff_of(x2, t2, w2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)

    loss, loss2 = f_ours(x, t, w), f_ref(x2, t2, w2)
    go1 = torch.rand(loss.shape, device=device) + 0.5
    go2 = torch.rand(loss.shape, device=device) + 0.5
    g_first = torch.autograd.grad(loss, diff_of(x, t, w), go1, retain_graph=True)
    g_second = torch.autograd.grad(loss, diff_of(x, t, w), go2)
    r_first = torch.autograd.grad(loss2, diff_of(x2, t2, w2), go1, retain_graph=True)
    r_second = torch.autograd.grad(loss2, diff_of(x2, t2, w2), go2)
    for a, b in zip(g_first + g_second, r_first + r_second):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name,which", [(n, w) for n in LOSSES for w in ["input", "target", "none"]]
                         + [(n, w) for n in WEIGHTED for w in ["weight", "input+weight"]], ids=str)
def test_requires_grad_subsets(device, name, which):
    """Only some inputs require grad: each gets torch's gradient (a target-only gradient must not
    depend on the input's gradient being computed in the forward)."""
    weighted = "weight" in which
    x = torch.randn(9, 13, device=device, dtype=torch.float64, requires_grad="input" in which)
    t = torch.randn(9, 13, device=device, dtype=torch.float64, requires_grad=which == "target")
    w = (torch.rand(9, 13, device=device, dtype=torch.float64) + 0.2).requires_grad_(weighted) if weighted else None
    for red in REDUCTIONS:
        loss = reg_fn(fastloss.functional, name, red, weighted=weighted)(x, t, w)
        grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, ref_grads = torch_ref(reg_fn(F, name, red, weighted=weighted), (x, t, w), grad_out)
        torch.testing.assert_close(loss, ref)
        diff = diff_of(x, t, w)
        assert loss.requires_grad == bool(diff)
        if diff:
            for g, r in zip(torch.autograd.grad(loss, diff, grad_out), ref_grads):
                torch.testing.assert_close(g, r)


# ---------------------------------------------------------------------------- broadcasting
BCAST = [((4, 3), (3,)), ((4, 3), (1, 3)), ((3, 1), (1, 4)), ((5,), ()), ((), (5,)), ((2, 1, 3), (4, 1)),
         ((3,), (4, 3)), ((1, 1000), (3, 1))]


@pytest.mark.parametrize("name", ["l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss"])
def test_broadcast_warning_points_at_the_caller(name):
    """The size warning names the caller's line, as torch's does (filters by module, -W error::...:__main__,
    'once per location' depend on it); also through the module's forward."""
    x, t = torch.randn(3, 4), torch.randn(4)
    for fn in (getattr(F, name), getattr(fastloss.functional, name)):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            fn(x, t)
        assert [w.filename for w in rec] == [__file__], (fn, [(w.filename, w.lineno) for w in rec])
    mod = {"l1_loss": "L1Loss", "mse_loss": "MSELoss", "smooth_l1_loss": "SmoothL1Loss",
           "huber_loss": "HuberLoss"}[name]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        getattr(fastloss, mod)()(x, t)
    assert [w.filename.replace("\\", "/").split("/")[-2:] for w in rec] == [["fastloss", "modules.py"]]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,weighted", NAME_WEIGHTED, ids=str)
@pytest.mark.parametrize("xshape,tshape", BCAST, ids=str)
def test_broadcasting(device, dtype, name, weighted, xshape, tshape):
    """Mismatched shapes broadcast as in torch, with torch's UserWarning; a weight has the input's
    size (torch then multiplies it into the broadcast loss); gradients reduce to each shape."""
    value = VALUES.get(name, [None])[0]
    x = make(xshape, dtype, device).requires_grad_()
    t = make(tshape, dtype, device).requires_grad_()
    w = make(xshape, dtype, device, positive=True).requires_grad_() if weighted else None
    for red in ["none", "sum", "mean"]:
        with pytest.warns(UserWarning, match=re.escape(f"Using a target size ({t.size()}) that is different to "
                                                       f"the input size ({x.size()})")):
            loss = reg_fn(fastloss.functional, name, red, value, weighted)(x, t, w)
        grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, ref_grads = torch_ref(reg_fn(F, name, red, value, weighted), (x, t, w), grad_out)
        assert loss.dtype == dtype
        assert_close_ref(loss, ref, dtype, f"loss {red}")
        grads = torch.autograd.grad(loss, diff_of(x, t, w), grad_out.to(loss.dtype))
        n = math.prod(torch.broadcast_shapes(xshape, tshape))
        for g, r, what in zip(grads, ref_grads, ["input", "target", "weight"]):
            floor = gfloor(dtype, n)
            if what == "weight" and red == "mean" and w.numel() == 1 and name in ("l1_loss", "mse_loss"):
                # sum(w*l)/w: the exact gradient 0 is a cancellation of two terms of size loss/w,
                # so in low precision it is only 0 up to rounding of those terms (torch's too)
                floor = max(floor, ref.abs().item() / w.detach().abs().item())
            assert_close_ref(g, r, dtype, f"grad {what} {red}", floor=floor)


# -------------------------------------------------------------------------- legacy arguments
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", LEGACY)
def test_legacy_size_average_reduce(device, name):
    x = torch.randn(6, 5, device=device, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 5, device=device, dtype=torch.float64)
    for sa, rd in itertools.product([None, True, False], [None, True, False]):
        legacy = sa is not None or rd is not None
        with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated") if legacy \
                else contextlib.nullcontext():
            out = ours(name)(x, t, size_average=sa, reduce=rd, reduction="sum")
        with pytest.warns(UserWarning) if legacy else contextlib.nullcontext():
            ref = getattr(F, name)(x, t, size_average=sa, reduce=rd, reduction="sum")
        torch.testing.assert_close(out, ref)
        go = torch.rand_like(ref) + 0.5
        torch.testing.assert_close(torch.autograd.grad(out, x, go)[0], torch.autograd.grad(ref, x, go)[0])
    if name in WEIGHTED:  # legacy arguments with a weight: the reduction they pick applies to the weighted loss
        w = torch.rand(6, 5, device=device, dtype=torch.float64) + 0.2
        for sa, rd in [(True, None), (False, None), (None, False)]:
            with pytest.warns(UserWarning):
                out = ours(name)(x, t, size_average=sa, reduce=rd, weight=w)
            with pytest.warns(UserWarning):
                ref = getattr(F, name)(x, t, size_average=sa, reduce=rd, weight=w)
            torch.testing.assert_close(out, ref)


# ------------------------------------------------------------------ branch boundaries, beta / delta
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,value", [("l1_loss", None), ("mse_loss", None)]
                         + [("smooth_l1_loss", b) for b in (0.0, 0.5, 1.0, 2.5)]
                         + [("huber_loss", d) for d in (0.5, 1.0, 2.0)], ids=str)
def test_branch_boundaries(device, dtype, name, value):
    """|input - target| exactly 0, exactly beta / delta, and on either side of it (all exact in every
    dtype): torch's values and gradients. beta = 0 is exactly L1 (no 0/0 at d = 0: gradient 0)."""
    d = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 2.5, -2.5, 0.25, 3.0, -3.0, 2.25, 2.75, 0.75],
                     device=device, dtype=torch.float64)
    t = torch.linspace(-2, 2, d.numel(), device=device, dtype=torch.float64).mul(4).round().div(4)  # quarters
    x = (t + d).to(dtype).requires_grad_()
    t = t.to(dtype).requires_grad_()
    for red in REDUCTIONS:
        loss = reg_fn(fastloss.functional, name, red, value)(x, t)
        grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, (rgx, rgt) = torch_ref(reg_fn(F, name, red, value), (x, t), grad_out)
        assert_close_ref(loss, ref, dtype, f"loss {red}")
        gx, gt = torch.autograd.grad(loss, [x, t], grad_out.to(loss.dtype))
        assert torch.isfinite(gx).all() and torch.isfinite(gt).all()
        assert_close_ref(gx, rgx, dtype, f"grad input {red}", floor=gfloor(dtype, d.numel()))
        assert_close_ref(gt, rgt, dtype, f"grad target {red}", floor=gfloor(dtype, d.numel()))
        if red == "none" and (name == "l1_loss" or value == 0.0):
            assert gx[0] == 0 and gt[0] == 0  # d == 0: sign(0) = 0, as torch
            torch.testing.assert_close(loss.double(), d.abs(), rtol=0, atol=0)  # exactly L1


# ----------------------------------------------------------------------------- extreme values
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name,value", [("l1_loss", None), ("mse_loss", None), ("smooth_l1_loss", 1.0),
                                        ("smooth_l1_loss", 0.0), ("huber_loss", 1.0)], ids=str)
def test_extreme_values(device, dtype, name, value):
    """nan and inf in input and target: torch's NaN/inf pattern in the loss and both gradients
    (l1's gradient at NaN is 0: sign(nan) = 0 in torch; the others give NaN)."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([nan, 1.0, inf, -inf, inf, 0.0, 2.0, -3.0, nan, 0.5, -inf, 4.0], device=device)
    t = torch.tensor([0.0, nan, 1.0, 1.0, inf, 0.0, -inf, -3.0, nan, 0.5, -inf, inf], device=device)
    x = x.to(dtype).requires_grad_()
    t = t.to(dtype).requires_grad_()
    for red in REDUCTIONS:
        loss = reg_fn(fastloss.functional, name, red, value)(x, t)
        assert_close_to_ref(loss, reg_fn(F, name, red, value), (x, t), [x, t], ["input", "target"], dtype, red)


# ------------------------------------------------------------------------------------- dtypes
f64, f32, bf16, f16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
DTYPE_PAIRS = [(f32, f64), (f64, f32), (bf16, f32), (f16, f64), (f32, bf16), (bf16, f16), (f16, f32)]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("xdtype,tdtype", DTYPE_PAIRS, ids=str)
def test_mixed_dtypes(device, name, xdtype, tdtype):
    """l1/mse/smooth_l1 promote (float32 input + float64 target: float64 loss); huber keeps the
    input's dtype. Gradients come back in each tensor's own dtype."""
    x = make((5, 7), xdtype, device).requires_grad_()
    t = make((5, 7), tdtype, device).requires_grad_()
    for red in REDUCTIONS:
        loss = ours(name)(x, t, reduction=red)
        expect = getattr(F, name)(x, t, reduction=red)
        assert loss.dtype == expect.dtype, f"{loss.dtype} != torch's {expect.dtype}"
        tol = coarsest(xdtype, tdtype, loss.dtype)
        gx, gt = assert_close_to_ref(loss, reg_fn(F, name, red), (x, t), [x, t], ["input", "target"], tol, red)
        assert gx.dtype == xdtype and gt.dtype == tdtype


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", WEIGHTED)
@pytest.mark.parametrize("xdtype,wdtype", [(f32, f64), (bf16, f32), (f64, f32)], ids=str)
def test_mixed_weight_dtype(device, name, xdtype, wdtype):
    """A weight of another dtype promotes as torch's `loss * weight` does."""
    x = make((5, 7), xdtype, device).requires_grad_()
    t = make((5, 7), xdtype, device)
    w = make((5, 7), wdtype, device, positive=True).requires_grad_()
    for red in REDUCTIONS:
        loss = ours(name)(x, t, reduction=red, weight=w)
        expect = getattr(F, name)(x, t, reduction=red, weight=w)
        assert loss.dtype == expect.dtype, f"{loss.dtype} != torch's {expect.dtype}"
        tol = coarsest(xdtype, wdtype, loss.dtype)
        gx, gw = assert_close_to_ref(loss, reg_fn(F, name, red, weighted=True), (x, t, w), [x, w],
                                     ["input", "weight"], tol, red)
        assert gx.dtype == xdtype and gw.dtype == wdtype


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("xdtype", [f64, f32, bf16], ids=str)
def test_integer_target(device, name, xdtype):
    """A floating input with an integer target works in torch (loss in the input's dtype): same here."""
    x = make((6, 5), xdtype, device).requires_grad_()
    t = torch.randint(-3, 4, (6, 5), device=device)
    for red in REDUCTIONS:
        loss = ours(name)(x, t, reduction=red)
        expect = getattr(F, name)(x, t, reduction=red)
        assert loss.dtype == expect.dtype == xdtype
        grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, (rgx,) = torch_ref(reg_fn(F, name, red), (x, t), grad_out)
        assert_close_ref(loss, ref, xdtype, f"loss {red}")
        gx, = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
        assert_close_ref(gx, rgx, xdtype, f"grad input {red}", floor=gfloor(xdtype, x.numel()))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", LOSSES)
def test_integer_input(device, name):
    """Integer input and target: fastloss refuses with a message about floating point (torch fails
    too). Integer input with a floating target: torch computes some of these (promoting); where it
    does, the same values here, where it raises, a RuntimeError here too."""
    xi = torch.randint(-3, 4, (4, 5), device=device)
    ti = torch.randint(-3, 4, (4, 5), device=device)
    with pytest.raises(RuntimeError, match="floating"):
        ours(name)(xi, ti)
    with pytest.raises((RuntimeError, NotImplementedError)):
        getattr(F, name)(xi, ti)
    tf = torch.randn(4, 5, device=device)
    try:
        expect = getattr(F, name)(xi, tf)
    except (RuntimeError, NotImplementedError):
        expect = None
    if expect is None:
        with pytest.raises(RuntimeError):
            ours(name)(xi, tf)
    else:
        out = ours(name)(xi, tf)
        assert out.dtype == expect.dtype
        torch.testing.assert_close(out, expect)


# ---------------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name,weighted", NAME_WEIGHTED, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_autocast(device, name, weighted, reduction):
    """bfloat16 inputs under autocast: the loss has torch's dtype (torch runs these losses in float32;
    its weighted l1/mse are composite ops that autocast does not upcast: bfloat16), values match the
    float64 reference, gradients come back in bfloat16."""
    dt = torch.bfloat16
    x = make((6, 40), dt, device).requires_grad_()
    t = make((6, 40), dt, device).requires_grad_()
    w = make((6, 40), dt, device, positive=True) if weighted else None
    with torch.autocast(device_type=device, dtype=dt):
        loss = reg_fn(fastloss.functional, name, reduction, weighted=weighted)(x, t, w)
        expect = reg_fn(F, name, reduction, weighted=weighted)(x, t, w)
    assert loss.dtype == expect.dtype, f"{loss.dtype} != torch's {expect.dtype}"
    grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref, (rgx, rgt) = torch_ref(reg_fn(F, name, reduction, weighted=weighted), (x, t, w), grad_out)
    assert_close_ref(loss, ref, loss.dtype, "loss")
    gx, gt = torch.autograd.grad(loss, [x, t], grad_out.to(loss.dtype))
    assert gx.dtype == gt.dtype == dt
    assert_close_ref(gx, rgx, dt, "grad input", floor=gfloor(dt, x.numel()))
    assert_close_ref(gt, rgt, dt, "grad target", floor=gfloor(dt, x.numel()))


# ------------------------------------------------------------------------------ bad arguments
def _bad_cases(device):
    x = torch.randn(4, 3, device=device)
    t = torch.randn(4, 3, device=device)
    cases = {
        # name: (callable taking the functional module, exception type, text of our message)
        "smooth_l1 negative beta": (lambda m: m.smooth_l1_loss(x, t, beta=-0.5), RuntimeError,
                                    "smooth_l1_loss does not support negative values for beta."),
        "huber zero delta": (lambda m: m.huber_loss(x, t, delta=0.0), RuntimeError,
                             "huber_loss does not support non-positive values for delta."),
        "huber negative delta": (lambda m: m.huber_loss(x, t, delta=-1.0), RuntimeError,
                                 "huber_loss does not support non-positive values for delta."),
    }
    for name in WEIGHTED:
        cases[f"{name} weight size"] = (lambda m, n=name: getattr(m, n)(x, t, weight=torch.rand(4, 2, device=device)),
                                        ValueError, "Weights and input must have the same size.")
        cases[f"{name} weight broadcastable"] = (
            lambda m, n=name: getattr(m, n)(x, t, weight=torch.rand(3, device=device)), ValueError,
            "Weights and input must have the same size.")
        cases[f"{name} weight with unknown reduction"] = (
            lambda m, n=name: getattr(m, n)(x, t, weight=torch.rand(4, 3, device=device), reduction="avg"),
            ValueError, "")
    for name in LOSSES:
        cases[f"{name} unknown reduction"] = (lambda m, n=name: getattr(m, n)(x, t, reduction="average"), ValueError,
                                              "is not a valid value for reduction")
        cases[f"{name} shapes that don't broadcast"] = (
            lambda m, n=name: getattr(m, n)(x, torch.randn(4, 2, device=device)), RuntimeError, "")
    return cases


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", list(_bad_cases("cpu")))
@pytest.mark.filterwarnings("ignore:Using a target size")
def test_bad_arguments(device, case):
    call, exc, text = _bad_cases(device)[case]
    with pytest.raises(exc, match=re.escape(text) if text else None):
        call(fastloss.functional)
    with pytest.raises(exc):
        call(F)  # torch refuses the same input with the same exception type


@requires_cuda
@pytest.mark.parametrize("name", LOSSES)
def test_device_mismatch(name):
    x = torch.randn(4, 5, device="cuda")
    with pytest.raises(RuntimeError):
        ours(name)(x, torch.randn(4, 5))
    if name in WEIGHTED:
        with pytest.raises(RuntimeError):
            ours(name)(x, torch.randn(4, 5, device="cuda"), weight=torch.rand(4, 5))


# ------------------------------------------------------------------------------------ modules
MODULE_CASES = [
    ("L1Loss", {}), ("L1Loss", {"reduction": "sum"}), ("L1Loss", {"size_average": False}),
    ("MSELoss", {}), ("MSELoss", {"reduction": "none"}), ("MSELoss", {"reduce": False}),
    ("SmoothL1Loss", {"beta": 0.5}), ("SmoothL1Loss", {"beta": 0.0, "reduction": "sum"}),
    ("SmoothL1Loss", {"size_average": True, "beta": 2.0}),
    ("HuberLoss", {}), ("HuberLoss", {"delta": 2.0, "reduction": "none"}), ("HuberLoss", {"delta": 0.3}),
]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("cls,kwargs", MODULE_CASES, ids=str)
def test_modules(device, cls, kwargs):
    mod, ref_mod = module_pair(cls, kwargs, device)
    x = torch.randn(7, 11, device=device, requires_grad=True)
    t = torch.randn(7, 11, device=device, requires_grad=True)
    out, ref = mod(x, t), ref_mod(x, t)
    torch.testing.assert_close(out, ref)
    go = torch.rand_like(ref) + 0.5
    for a, b in zip(torch.autograd.grad(out, [x, t], go), torch.autograd.grad(ref, [x, t], go)):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------- gradcheck
GRADCHECK = [(n, v, variant) for n in LOSSES for v in VALUES.get(n, [None])[:2]
             for variant in (["plain", "broadcast"] + (["weighted"] if n in WEIGHTED else []))]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name,value,variant", GRADCHECK, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.filterwarnings("ignore:Using a target size")
def test_gradcheck(device, name, value, variant, reduction):
    """float64 gradcheck of every differentiable input (input, target, weight)."""
    x = (torch.randn(3, 4, device=device, dtype=torch.float64) * 2).requires_grad_()
    tshape = (4,) if variant == "broadcast" else (3, 4)
    t = (torch.randn(tshape, device=device, dtype=torch.float64) * 2).requires_grad_()
    fn = reg_fn(fastloss.functional, name, reduction, value, weighted=variant == "weighted")
    if variant == "weighted":
        w = (torch.rand(3, 4, device=device, dtype=torch.float64) + 0.2).requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b, c: fn(a, b, c), (x, t, w))
    else:
        assert torch.autograd.gradcheck(lambda a, b: fn(a, b), (x, t))


# ------------------------------------------------------------------------------ no torch fallback
# l1/mse with a weight average by sum(weight) under 'mean': a different division, not compared
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,reduction", [(n, r) for n in ["huber_loss", "l1_loss", "mse_loss"]
                                            for r in ["none", "mean", "sum"] if n == "huber_loss" or r != "mean"])
def test_cpu_two_input_path_matches_general_path(name, reduction, dtype):
    """Without a weight the CPU kernel takes its a-and-b loop (cpu/pointwise.cpp pw_range_ab); a weight of
    ones takes the general staged loop. Both must give the same bits: values, summation order, gradients
    (several 16384-element chunks and a partial 256-element tile). For 'none' the backward's grad_loss is
    per element (random), one expanded value (loss.sum() * 0.37) or the loss's float32 (autocast-style)."""
    n = 3 * 16384 + 1000 + 13
    x = torch.randn(n, dtype=dtype)
    y = torch.randn(n, dtype=dtype)
    fn = getattr(fastloss.functional, name)
    grads = [None]
    if reduction == "none":
        g = torch.randn(n, dtype=dtype)
        grads = [g, torch.tensor(0.37, dtype=dtype).expand(n), g.float() if dtype != torch.float64 else g]
    for grad in grads:
        outs = []
        for w in (None, torch.ones(n, dtype=dtype)):
            xi, yi = x.clone().requires_grad_(), y.clone().requires_grad_()
            loss = fn(xi, yi, reduction=reduction, weight=w)
            if grad is None:
                loss.backward()
            else:  # the backward op directly: autograd would cast a float32 grad to the loss's dtype
                kind = {"l1_loss": 0, "mse_loss": 1, "huber_loss": 3}[name]
                outs.append(torch.ops.fastloss._pointwise_backward(grad, xi, yi, w, kind, 1.0, 0, loss.detach(),
                                                                       [True, True, False]))
                continue
            outs.append((loss.detach(), xi.grad, yi.grad))
        for a, b in zip(*outs):
            assert torch.equal(a, b)
