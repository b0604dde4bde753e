"""soft_margin_loss / SoftMarginLoss against torch.nn.functional: values and the input's gradient over
every reduction, the legacy size_average/reduce, odd and empty shapes, strided and expanded inputs,
target broadcasting (torch broadcasts the target to the input, never the input), target dtypes (cast
to the input's), every dtype, autocast, extreme values (torch's own float32 overflow to an inf loss
and a NaN gradient included); float64 gradcheck, opcheck of the op's kind, the module, and bad
arguments (torch.compile, determinism, no fallback: tests/test_all_losses.py)."""
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import (assert_close_ref, device_params, DTYPES, gfloor, layouts, make, module_pair, opcheck_test,
                     requires_cuda, torch_ref)

REDUCTIONS = ["none", "mean", "sum"]
SHAPES = [(), (7,), (0,), (5, 4), (4, 0, 3), (3, 1000), (70001,), (2, 3, 4, 5)]
SOFT_MARGIN = 6  # fastloss::_pointwise_forward kind (csrc/ops/pointwise.h)
f64, f32, bf16, f16 = torch.float64, torch.float32, torch.bfloat16, torch.float16


def ours(*args, **kwargs):
    return fastloss.functional.soft_margin_loss(*args, **kwargs)


def sm_fn(module, reduction="mean", **extra):
    """A callable (x, t) -> loss for torch.nn.functional (module=F) or fastloss.functional."""
    return lambda x, t: module.soft_margin_loss(x, t, reduction=reduction, **extra)


def make_target(shape, dtype, device, layout, kind):
    """'sign': +-1 labels (the documented use); 'real': any real values (torch accepts them)."""
    t = make(shape, dtype, device, layout, scale=1.5)
    if kind == "sign":
        with torch.no_grad():
            if t.numel():
                base = t[:1] if layout == "expand" else t  # an expanded view is written through its one row
                base.copy_(torch.where(base >= 0, 1.0, -1.0).to(dtype))
    return t


# ------------------------------------------------------------------------- the main test matrix
def _cases():
    out = []
    for shape in SHAPES:
        for red in REDUCTIONS:
            for tkind in ["sign", "real"]:
                if shape == (70001,) and (red == "mean" or tkind == "real"):
                    continue  # the long shape (vector tails, parallel sums): a thinner slice
                for layout in layouts(shape):
                    if layout != "contig" and (red == "sum" or tkind == "real"):
                        continue  # layouts: a thinner slice of the product
                    out.append((shape, red, tkind, layout))
    return out


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,reduction,tkind,layout", _cases(), ids=str)
def test_matches_torch(device, dtype, shape, reduction, tkind, layout):
    numel = math.prod(shape)
    scale = 0.5 if dtype == torch.float16 and numel > 10000 else 2.0  # float16 sums stay below 65504
    x = make(shape, dtype, device, "contig" if layout == "expand" else layout, scale)
    t = make_target(shape, dtype, device, layout, tkind)
    if dtype == torch.float16 and numel:  # margins below 11.09, where exp overflows in float16 (see
        with torch.no_grad():  # test_overflow_as_torch): the float64 reference is torch's value there
            x.clamp_(-9.0, 9.0)
            (t[:1] if layout == "expand" else t).clamp_(-1.2, 1.2)
    x.requires_grad_()
    before = [x.detach().clone(), t.clone()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of any kind
        loss = ours(x, t, reduction=reduction)
    grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5  # never exactly 1
    ref, (rgx,) = torch_ref(sm_fn(F, reduction), (x, t), grad_out)
    assert loss.dtype == dtype and loss.device.type == device
    assert_close_ref(loss, ref, dtype, "loss")
    gx, = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
    assert gx.dtype == dtype and gx.shape == x.shape
    assert_close_ref(gx, rgx, dtype, "grad input", floor=gfloor(dtype, numel))
    assert torch.equal(before[0], x.detach()) and torch.equal(before[1], t), "an input was modified"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_plain_and_retain_graph(device, reduction):
    """loss.backward() (grad_output exactly 1), retain_graph twice (twice the gradient), and two
    upstream gradients on one graph each give torch's result."""
    x = torch.randn(6, 50, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    t = torch.randn(6, 50, device=device).sign()
    for fn, xx in [(sm_fn(fastloss.functional, reduction), x), (sm_fn(F, reduction), x2)]:
        loss = fn(xx, t)
        loss.backward(torch.ones_like(loss)) if reduction == "none" else loss.backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-7)
    x.grad = x2.grad = None
    for fn, xx in [(sm_fn(fastloss.functional, reduction), x), (sm_fn(F, reduction), x2)]:
        loss = fn(xx, t).sum() * 3.0
        loss.backward(retain_graph=True)
        loss.backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-7)
    loss, loss2 = ours(x, t, reduction=reduction), F.soft_margin_loss(x2, t, reduction=reduction)
    go1, go2 = (torch.rand(loss.shape, device=device) + 0.5 for _ in range(2))
    got = [torch.autograd.grad(loss, x, go1, retain_graph=True)[0], torch.autograd.grad(loss, x, go2)[0]]
    exp = [torch.autograd.grad(loss2, x2, go1, retain_graph=True)[0], torch.autograd.grad(loss2, x2, go2)[0]]
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", device_params())
def test_no_grad_paths(device):
    """no_grad, inference_mode, an input that doesn't require grad: torch's value, no graph. Under
    no_grad a target that requires grad is accepted (as torch)."""
    x = torch.randn(8, 50, device=device, requires_grad=True)
    t = torch.randn(8, 50, device=device).sign()
    for red in REDUCTIONS:
        ref = F.soft_margin_loss(x, t, reduction=red).detach()
        with torch.no_grad():
            out = ours(x, t, reduction=red)
            torch.testing.assert_close(ours(x, t.clone().requires_grad_(), reduction=red), ref)
        assert not out.requires_grad
        torch.testing.assert_close(out, ref)
        with torch.inference_mode():
            torch.testing.assert_close(ours(x, t, reduction=red), ref)
        out = ours(x.detach(), t, reduction=red)
        assert not out.requires_grad
        torch.testing.assert_close(out, ref)


# ------------------------------------------------------------------------- target: no gradient
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("x_grad", [True, False])
def test_target_requires_grad_refused(device, x_grad):
    """torch: 'not differentiable with respect to argument target' (RuntimeError), whether or not the
    input requires grad."""
    x = torch.randn(4, 3, device=device, requires_grad=x_grad)
    t = torch.randn(4, 3, device=device).sign().requires_grad_()
    for red in REDUCTIONS:
        with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'target'"):
            ours(x, t, reduction=red)
        with pytest.raises(RuntimeError, match="not differentiable"):
            F.soft_margin_loss(x, t, reduction=red)


# ------------------------------------------------------------------------------ legacy arguments
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("size_average,reduce", [(True, None), (False, None), (None, True), (None, False),
                                                 (True, False), (False, True), (True, True), (False, False)],
                         ids=str)
def test_legacy_size_average_reduce(device, size_average, reduce):
    """size_average/reduce override reduction (torch's deprecation warning, torch's reduction)."""
    x = torch.randn(6, 5, device=device, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 5, device=device, dtype=torch.float64).sign()
    with pytest.warns(UserWarning, match="deprecated"):
        out = ours(x, t, size_average=size_average, reduce=reduce, reduction="none")
    with pytest.warns(UserWarning, match="deprecated"):
        ref = F.soft_margin_loss(x, t, size_average=size_average, reduce=reduce, reduction="none")
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)
    go = torch.rand_like(ref) + 0.5
    torch.testing.assert_close(torch.autograd.grad(out, x, go)[0], torch.autograd.grad(ref, x, go)[0])


# ---------------------------------------------------------------------------------- broadcasting
BCAST_OK = [((4, 3), (3,)), ((4, 3), (1, 3)), ((4, 3), (4, 1)), ((5,), ()), ((2, 3, 4), (3, 1)),
            ((1, 1000), (1,)), ((3, 1, 5), (1, 1, 5))]
BCAST_BAD = [((3,), (4, 3)), ((), (5,)), ((4, 1), (1, 3)), ((2, 1, 3), (4, 1))]  # the input would be broadcast


def assert_reductions_match(x, t, dtype, no_warning=False):
    """soft_margin_loss(x, t) against torch's for every reduction: the loss (and, with no_warning, that it
    warns nothing and has torch's shape) and, for a random grad_output, the input's gradient."""
    for red in REDUCTIONS:
        with warnings.catch_warnings():
            if no_warning:
                warnings.simplefilter("error")
            loss = ours(x, t, reduction=red)
        if no_warning:
            assert loss.shape == F.soft_margin_loss(x, t, reduction=red).shape
        grad_out = torch.rand(loss.shape, device=x.device, dtype=torch.float64) + 0.5
        ref, (rgx,) = torch_ref(sm_fn(F, red), (x, t), grad_out)
        assert_close_ref(loss, ref, dtype, f"loss {red}")
        gx, = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
        assert_close_ref(gx, rgx, dtype, f"grad input {red}", floor=gfloor(dtype, x.numel()))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [f64, f32, bf16], ids=str)
@pytest.mark.parametrize("xshape,tshape", BCAST_OK, ids=str)
def test_broadcast_target(device, dtype, xshape, tshape):
    """A target that broadcasts to the input's shape: torch broadcasts it, with no warning."""
    x = make(xshape, dtype, device).requires_grad_()
    t = make(tshape, dtype, device).sign()
    assert_reductions_match(x, t, dtype, no_warning=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xshape,tshape", BCAST_BAD, ids=str)
def test_broadcast_input_refused(device, xshape, tshape):
    """torch writes the loss in the input's shape, so a target that would broadcast the input raises a
    RuntimeError (every reduction, with or without gradients): the same here."""
    x = torch.randn(xshape, device=device)
    t = torch.randn(tshape, device=device).sign()
    for red in REDUCTIONS:
        for xx in (x, x.clone().requires_grad_()):
            with pytest.raises(RuntimeError):
                F.soft_margin_loss(xx, t, reduction=red)
            with pytest.raises(RuntimeError):
                ours(xx, t, reduction=red)


# ------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("xdtype,tdtype", [(f32, f64), (f64, f32), (bf16, f32), (f16, f64), (f32, bf16),
                                           (bf16, f16), (f32, torch.int64), (f64, torch.int32), (bf16, torch.int64)],
                         ids=str)
def test_target_dtype(device, xdtype, tdtype):
    """The loss has the input's dtype whatever the target's (torch casts the target to it); integer
    and bool targets are accepted."""
    x = make((5, 7), xdtype, device).requires_grad_()
    t = torch.randn(5, 7, device=device).sign()
    t = (t > 0) if tdtype == torch.bool else t.to(tdtype)
    for red in REDUCTIONS:
        loss = ours(x, t, reduction=red)
        expect = F.soft_margin_loss(x, t, reduction=red)
        assert loss.dtype == expect.dtype == xdtype
        grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, (rgx,) = torch_ref(sm_fn(F, red), (x, t), grad_out)
        assert_close_ref(loss, ref, xdtype, f"loss {red}")
        gx, = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
        assert gx.dtype == xdtype
        assert_close_ref(gx, rgx, xdtype, f"grad input {red}", floor=gfloor(xdtype, x.numel()))


@pytest.mark.parametrize("device", device_params())
def test_bool_target(device):
    """A bool target (as 0 / 1): torch's forward accepts it (its backward cannot negate a bool tensor,
    so only the forward and the gradient through a float copy are compared)."""
    x = torch.randn(5, 7, device=device, requires_grad=True)
    t = torch.rand(5, 7, device=device) > 0.5
    for red in REDUCTIONS:
        loss = ours(x, t, reduction=red)
        expect = F.soft_margin_loss(x.detach(), t, reduction=red)
        assert loss.dtype == expect.dtype == f32
        torch.testing.assert_close(loss, expect)
        go = torch.rand(loss.shape, device=device) + 0.5
        ref = F.soft_margin_loss(x, t.float(), reduction=red)
        torch.testing.assert_close(torch.autograd.grad(loss, x, go)[0], torch.autograd.grad(ref, x, go)[0])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("tdtype", [torch.int64, f32])
def test_integer_input(device, tdtype):
    """An integer input: torch raises (its loss would be written in the integer dtype); so does fastloss,
    with a message about floating point."""
    xi = torch.randint(-3, 4, (4, 5), device=device)
    t = torch.ones(4, 5, device=device, dtype=tdtype)
    with pytest.raises(RuntimeError):
        F.soft_margin_loss(xi, t)
    with pytest.raises(RuntimeError, match="floating"):
        ours(xi, t)


# ---------------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dt", [bf16, f16], ids=str)
def test_autocast(device, reduction, dt):
    """Half inputs under autocast: a float32 loss as torch's (fp32 policy), values at float32's
    accuracy (the half data are exact), the input's gradient in its own dtype."""
    x = make((6, 40), dt, device).requires_grad_()
    t = make((6, 40), dt, device).sign()
    with torch.autocast(device_type=device, dtype=dt):
        loss = ours(x, t, reduction=reduction)
        expect = F.soft_margin_loss(x, t, reduction=reduction)
    assert loss.dtype == expect.dtype == torch.float32
    grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref, (rgx,) = torch_ref(sm_fn(F, reduction), (x, t), grad_out)
    assert_close_ref(loss, ref, loss.dtype, "loss")
    gx, = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
    assert gx.dtype == dt
    assert_close_ref(gx, rgx, dt, "grad input", floor=gfloor(dt, x.numel()))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_autocast_float32_target(device, reduction):
    """Under autocast torch casts both arguments to float32 before computing, so a float32 target with
    a bfloat16 input keeps its full precision: the loss matches the float64 reference at float32
    accuracy (real-valued target, not representable in bfloat16)."""
    x = make((6, 40), bf16, device).requires_grad_()
    t = torch.randn(6, 40, device=device) * 1.3
    with torch.autocast(device_type=device, dtype=bf16):
        loss = ours(x, t, reduction=reduction)
        expect = F.soft_margin_loss(x, t, reduction=reduction)
    assert loss.dtype == expect.dtype == torch.float32
    ref, _ = torch_ref(sm_fn(F, reduction), (x.detach(), t), None)
    assert_close_ref(expect, ref, f32, "loss (torch itself)")
    assert_close_ref(loss, ref, f32, "loss")


# ----------------------------------------------------------------------------- extreme values
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extreme_values(device, dtype):
    """nan, inf, 0 and large margins in input and target (no overflow of exp in any dtype): the float64
    reference's NaN/inf pattern and values, loss and gradient."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([nan, 1.0, inf, -inf, inf, 0.0, 2.0, -3.0, nan, 0.5, -inf, 4.0, 10.0, -10.0, 8.0, 0.0],
                     device=device)
    t = torch.tensor([1.0, nan, 1.0, 1.0, -1.0, 1.0, -inf, -1.0, nan, 0.0, -1.0, inf, 1.0, 1.0, -1.0, -1.0],
                     device=device)
    x = x.to(dtype).requires_grad_()
    t = t.to(dtype)
    assert_reductions_match(x, t, dtype)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_overflow_as_torch(device, dtype):
    """torch computes log1p(exp(-target * input)) as written, in the input's dtype: where exp
    overflows (a margin past ~88.7 in float32 and bfloat16, ~709.8 in float64) its loss is inf and its
    gradient NaN (inf / inf). fastloss gives the same values, bitwise where finite up to the dtype's
    rounding; so, against torch in the same dtype (not a float64 reference). float16 is the documented
    exception: fastloss computes it in float32 (its accumulate type), so it overflows where float32 does,
    not at float16's ~11.1 -- compared with torch's float32 result rounded to float16."""
    m = [5.0, 11.0, 12.0, 30.0, 60.0, 88.0, 89.0, 100.0, 700.0, 710.0, 1000.0, -1000.0, -89.0]
    xs = torch.tensor(m + m, device=device, dtype=torch.float64)
    ts = torch.tensor([-1.0] * len(m) + [1.0] * len(m), device=device, dtype=torch.float64)
    xs = torch.where(ts > 0, -xs, xs).to(dtype)  # -target * input = m (as rounded to the dtype)
    ts = ts.to(dtype)
    ref_dtype = f32 if dtype == f16 else dtype
    for red in REDUCTIONS:
        x, x2 = xs.clone().requires_grad_(), xs.to(ref_dtype).requires_grad_()
        loss, ref = ours(x, ts, reduction=red), F.soft_margin_loss(x2, ts.to(ref_dtype), reduction=red)
        go = torch.rand(ref.shape, device=device, dtype=dtype) + 0.5
        g, = torch.autograd.grad(loss, x, go)
        rg, = torch.autograd.grad(ref, x2, go.to(ref_dtype))
        ref, rg = ref.detach().to(dtype), rg.to(dtype)
        rtol = {f64: 1e-12, f32: 1e-5, bf16: 1e-2, f16: 2e-3}[dtype]
        atol = torch.finfo(dtype).tiny  # subnormal gradients (exp(-89)): torch rounds several times there
        for a, b, what in [(loss, ref, "loss"), (g, rg, "grad input")]:
            assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{what} {red}: NaN pattern {a} vs torch {b}"
            assert torch.equal(torch.isinf(a), torch.isinf(b)), f"{what} {red}: inf pattern {a} vs torch {b}"
            fin = torch.isfinite(b)
            torch.testing.assert_close(a[fin], b[fin], rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("device", device_params())
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bad_arguments(device):
    x = torch.randn(4, 3, device=device)
    t = torch.randn(4, 3, device=device).sign()
    with pytest.raises(ValueError, match=re.escape("is not a valid value for reduction")):
        ours(x, t, reduction="average")
    with pytest.raises(ValueError):
        F.soft_margin_loss(x, t, reduction="average")
    with pytest.raises(ValueError):
        ours(x, t, reduction="batchmean")
    with pytest.raises(ValueError):
        F.soft_margin_loss(x, t, reduction="batchmean")
    for bad in (torch.randn(4, 2, device=device), torch.randn(5, 3, device=device)):
        with pytest.raises(RuntimeError):
            F.soft_margin_loss(x, bad)
        with pytest.raises(RuntimeError):
            ours(x, bad)


@requires_cuda
def test_device_mismatch():
    x = torch.randn(4, 5, device="cuda")
    with pytest.raises(RuntimeError):
        F.soft_margin_loss(x, torch.ones(4, 5))
    with pytest.raises(RuntimeError):
        ours(x, torch.ones(4, 5))


# ------------------------------------------------------------------------------------ modules
MODULE_CASES = [{}, {"reduction": "sum"}, {"reduction": "none"}, {"size_average": False}, {"reduce": False},
                {"size_average": True, "reduce": True}]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("kwargs", MODULE_CASES, ids=str)
def test_module(device, kwargs):
    mod, ref_mod = module_pair("SoftMarginLoss", kwargs, device)
    assert list(mod.parameters()) == [] and list(mod.buffers()) == []
    assert repr(mod) == repr(ref_mod)
    x = torch.randn(7, 11, device=device, requires_grad=True)
    t = torch.randn(7, 11, device=device).sign()
    out, ref = mod(x, t), ref_mod(x, t)
    torch.testing.assert_close(out, ref)
    go = torch.rand_like(ref) + 0.5
    torch.testing.assert_close(torch.autograd.grad(out, x, go)[0], torch.autograd.grad(ref, x, go)[0])
    mod.reduction = "sum"  # torch's forward reads the attribute at call time: so does ours
    torch.testing.assert_close(mod(x, t), F.soft_margin_loss(x, t, reduction="sum"))


# ------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("variant", ["sign", "real", "broadcast"])
def test_gradcheck(device, reduction, variant):
    x = (torch.randn(3, 4, device=device, dtype=torch.float64) * 2).requires_grad_()
    t = torch.randn((4,) if variant == "broadcast" else (3, 4), device=device, dtype=torch.float64)
    if variant != "real":
        t = t.sign()
    assert torch.autograd.gradcheck(lambda a: ours(a, t, reduction=reduction), (x,))


# --------------------------------------------------------------------------------- opcheck
def _op_cases(device):
    ops = torch.ops.fastloss
    x = torch.randn(5, 7, device=device, requires_grad=True)
    t = torch.randn(5, 7, device=device).sign()
    x64 = torch.randn(3, 4, 2, device=device, dtype=torch.float64, requires_grad=True)
    t64 = torch.randn(3, 4, 2, device=device, dtype=torch.float64)
    xb = torch.randn(33, device=device, dtype=torch.bfloat16)
    g = torch.rand(5, 7, device=device)
    return [
        (ops._pointwise_forward.default, (x, t, None, SOFT_MARGIN, 0.0, 1, [True, False, False], None)),
        (ops._pointwise_forward.default, (x64, t64, None, SOFT_MARGIN, 0.0, 2, [True, False, False], None)),
        (ops._pointwise_forward.default, (x, t, None, SOFT_MARGIN, 0.0, 0, [False, False, False], None)),
        (ops._pointwise_forward.default, (xb, xb.flip(0).sign(), None, SOFT_MARGIN, 0.0, 1, [False, False, False],
                                      torch.float32)),
        (ops._pointwise_backward.default, (g, x.detach(), t, None, SOFT_MARGIN, 0.0, 0, g, [True, False, False])),
        (ops._pointwise_backward.default, (g[0, 0], x.detach(), t, None, SOFT_MARGIN, 0.0, 1,
                                               torch.tensor(0.5, device=device), [True, False, False])),
    ]


test_opcheck = opcheck_test(_op_cases, 6)
