"""multi_margin_loss and multilabel_margin_loss (functions and modules) against torch.nn.functional:
values and input gradients over every argument (p, margin incl. 0 and negative, class weights), every
reduction with a random upstream gradient, the legacy size_average/reduce, batched, 1-D and 0-d inputs,
strided inputs and targets, empty batches, multilabel target lists ending anywhere (or nowhere), with
duplicates and with values after the first -1, every dtype (torch's CPU kernels refuse half/bfloat16:
the reference is torch in float64 on the same values), autocast, hinge boundaries, nan/inf; float64
gradcheck, opcheck of the four ops, bad arguments, and the CUDA-only behaviours (target validation,
devices) where a GPU is present (torch.compile, determinism, no fallback: tests/test_all_losses.py)."""
import contextlib
import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import (assert_close_ref, assert_deterministic, call_and_check, device_params, DTYPES, gfloor, make,
                     module_pair, opcheck_test, requires_cuda)

REDUCTIONS = ["none", "mean", "sum"]
f64, f32, bf16, f16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
INF, NAN = float("inf"), float("nan")


def fl():
    return fastloss.functional


def mm_fn(module, p=1, margin=1.0, weight=None, reduction="mean"):
    return lambda x, t: module.multi_margin_loss(x, t, p=p, margin=margin, weight=weight, reduction=reduction)


def ml_fn(module, reduction="mean"):
    return lambda x, t: module.multilabel_margin_loss(x, t, reduction=reduction)


def torch_ref(fn, tensors, grad_out):
    """fn (torch code) on float64 copies of the floating tensors (integer targets as they are), with
    requires_grad as the originals: the loss and the gradients of those that require grad."""
    up = [a.detach().double().requires_grad_(a.requires_grad) if a.is_floating_point() else a for a in tensors]
    loss = fn(*up)
    diff = [a for a in up if a.requires_grad]
    grads = list(torch.autograd.grad(loss, diff, grad_out.double())) if diff and grad_out is not None else []
    return loss, grads


def assert_empty_input_loss(loss, reduction):
    """mean / sum of an empty input, where torch's CPU kernels return uninitialized memory (mean and sum
    alike; comparing with it was flaky whenever that memory was not 0): the mean of nothing, the empty sum."""
    assert torch.isnan(loss) if reduction == "mean" else loss.item() == 0


def rows_of(shape):
    return shape[0] if len(shape) == 2 else 1


def make_input(shape, dtype, device, layout="contig", scale=1.0):
    """Scores of the given shape (0-d, (C,) or (N, C)) in the given layout ('transpose', 'slice')."""
    if len(shape) == 0:
        return (torch.randn((), device=device) * scale).to(dtype)
    return make(shape, dtype, device, layout, scale)


# =============================================================================== multi_margin_loss
def mm_target(shape, C, device, target_dim=None):
    """Class indices for input `shape`: (N,) for (N, C); for unbatched inputs a 0-d target, or a
    1-element 1-D one with target_dim=1 (torch takes both)."""
    if len(shape) == 2:
        return torch.randint(0, C, (shape[0],), device=device)
    t = torch.randint(0, C, (), device=device)
    return t.reshape(1) if target_dim == 1 else t


# (input shape, target dim for unbatched inputs)
MM_SHAPES = [((5, 7), None), ((7,), 0), ((7,), 1), ((), 0), ((), 1), ((1, 6), None), ((0, 5), None), ((3, 1), None),
             ((64, 1000), None), ((3, 2049), None), ((129, 33), None), ((2, 4100), None)]
MARGINS = [1.0, 0.0, -0.5, 2.5]


def _mm_cases():
    out = []
    i = 0
    for (shape, tdim), p, weighted in itertools.product(MM_SHAPES, [1, 2], [False, True]):
        out.append((shape, tdim, p, MARGINS[i % 4], weighted, REDUCTIONS[(i // 2) % 3], "contig"))
        i += 1
    for shape, layout, p, red in itertools.product([(5, 7), (129, 33)], ["transpose", "slice"], [1, 2],
                                                   ["none", "mean"]):
        out.append((shape, None, p, MARGINS[i % 4], i % 2 == 0, red, layout))
        i += 1
    return out


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,tdim,p,margin,weighted,reduction,layout", _mm_cases(), ids=str)
def test_multi_margin_matches_torch(device, dtype, shape, tdim, p, margin, weighted, reduction, layout):
    C = shape[-1] if shape else 1
    x = make_input(shape, dtype, device, layout).requires_grad_()
    t = mm_target(shape, C, device, tdim)
    w = (torch.rand(C, device=device) + 0.2).to(dtype) if weighted else None
    before = x.detach().clone()
    loss = mm_fn(fl(), p, margin, w, reduction)(x, t)
    grad_out = torch.rand(loss.shape, device=device, dtype=f64) + 0.5
    wref = w.double() if weighted else None
    ref, (rgx,) = torch_ref(lambda a, b: F.multi_margin_loss(a, b, p=p, margin=margin, weight=wref,
                                                             reduction=reduction), (x, t), grad_out)
    assert loss.dtype == dtype and loss.device.type == device and loss.shape == ref.shape
    if reduction != "none" and x.numel() == 0:
        assert_empty_input_loss(loss, reduction)
    else:
        assert_close_ref(loss, ref, dtype, "loss")
    gx, = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
    assert gx.dtype == dtype and gx.shape == x.shape
    assert_close_ref(gx, rgx, dtype, "grad input", floor=gfloor(dtype, rows_of(shape) * C))
    assert torch.equal(before, x.detach()), "the input was modified"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [1, 2])
def test_multi_margin_boundary(device, dtype, p):
    """margin - x[y] + x[i] == 0 exactly: no loss and no gradient there (torch's z > 0), the target's
    own entry never counted; an active entry next to it gets the full gradient."""
    x = torch.tensor([[1.0, 0.0, 0.5, -2.0], [0.5, 1.5, 0.5, 3.0], [2.0, 2.0, 2.0, 2.0]], device=device, dtype=dtype)
    t = torch.tensor([0, 1, 3], device=device)
    for red in REDUCTIONS:
        xx = x.clone().requires_grad_()
        loss = fl().multi_margin_loss(xx, t, p=p, margin=1.0, reduction=red)
        go = torch.rand(loss.shape, device=device, dtype=f64) + 0.5
        ref, (rgx,) = torch_ref(mm_fn(F, p, 1.0, None, red), (xx, t), go)
        assert_close_ref(loss, ref, dtype, f"loss {red}")
        gx, = torch.autograd.grad(loss, xx, go.to(loss.dtype))
        assert_close_ref(gx, rgx, dtype, f"grad {red}", floor=gfloor(dtype, 12))
        assert gx[0, 1] == 0 and gx[1, 0] == 0 and gx[1, 2] == 0  # z == 0 exactly
        assert gx[0, 2] != 0 and gx[2, 0] != 0


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [f64, f32, bf16], ids=str)
@pytest.mark.parametrize("p", [1, 2])
def test_multi_margin_extreme_values(device, dtype, p):
    """nan and inf scores, a zero weight times an infinite hinge (nan, as torch): torch's loss and
    gradient, NaN pattern included (a NaN z adds nothing, as torch's z > 0)."""
    x = torch.tensor([[NAN, 1.0, 2.0], [1.0, NAN, 0.0], [INF, 0.0, 1.0], [0.0, INF, 1.0], [INF, INF, 0.0],
                      [-INF, 0.0, 1.0], [0.0, -INF, 1.0], [1.0, 2.0, 3.0]], device=device, dtype=dtype)
    t = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2], device=device)
    for weighted, red in itertools.product([False, True], REDUCTIONS):
        w = torch.tensor([0.0, 1.0, 0.5], device=device, dtype=dtype) if weighted else None
        xx = x.clone().requires_grad_()
        loss = fl().multi_margin_loss(xx, t, p=p, weight=w, reduction=red)
        go = torch.rand(loss.shape, device=device, dtype=f64) + 0.5
        wref = w.double() if weighted else None
        ref, (rgx,) = torch_ref(lambda a, b: F.multi_margin_loss(a, b, p=p, weight=wref, reduction=red), (xx, t),
                                go)
        assert_close_ref(loss, ref, dtype, f"loss {red} w={weighted}")
        gx, = torch.autograd.grad(loss, xx, go.to(loss.dtype))
        assert_close_ref(gx, rgx, dtype, f"grad {red} w={weighted}", floor=gfloor(dtype, 24))


# ========================================================================== multilabel_margin_loss
def ml_target(shape, kind, device, target_dim=None):
    """Target lists of the input's shape. kinds: 'short' (1-3 classes, -1, then junk classes the list
    ignores), 'eight' (8 distinct classes then -1 and junk), 'full' (a permutation of every class: no -1),
    'none' (-1 first), 'dups' (classes listed twice), 'last' (-1 in the last slot only), 'mixed' (a row
    of each). Unbatched inputs: a 1-D target, or 0-d (target_dim=0, only for a 0-d input)."""
    N = shape[0] if len(shape) == 2 else 1
    C = shape[-1] if shape else 1
    t = torch.randint(0, C, (N, C))
    kinds = ["short", "eight", "full", "none", "dups", "last"] if kind == "mixed" else [kind]
    for r in range(N):
        k = kinds[r % len(kinds)]
        perm = torch.randperm(C)
        if k == "short":
            n = min(int(torch.randint(1, 4, ())), C)
            t[r, :n] = perm[:n]
        elif k == "eight":
            n = min(8, C)
            t[r, :n] = perm[:n]
        elif k == "full":
            t[r] = perm
            continue
        elif k == "dups":  # e.g. [a, b, c, c, b, a, -1, ...]
            n = min(6, C)
            t[r, :n] = torch.cat([perm[:3], perm[:3].flip(0)])[:n] if C >= 3 else perm[:1].repeat(n)
        elif k == "last":
            n = C - 1
            t[r, :n] = perm[:n]
        else:
            n = 0
        if n < C:
            t[r, n] = -1
        if n + 1 < C:  # anything valid after the list, -1 included
            t[r, n + 1:] = torch.randint(-1, C, (C - n - 1,))
    t = t.to(device)
    if len(shape) == 2:
        return t
    t = t.reshape(C)
    return t.reshape(()) if target_dim == 0 else t


ML_SHAPES = [((5, 7), None), ((7,), None), ((), 0), ((), None), ((1, 6), None), ((0, 5), None), ((3, 1), None),
             ((64, 256), None), ((4, 600), None), ((2, 5000), None), ((6, 33), None)]
ML_KINDS = ["mixed", "short", "eight", "full", "none", "dups", "last"]


def _ml_cases():
    out = []
    i = 0
    for (shape, tdim), red in itertools.product(ML_SHAPES, REDUCTIONS):
        kinds = ML_KINDS if shape in [(5, 7), (6, 33)] else ["mixed", ML_KINDS[1 + i % 6]]
        for kind in kinds:
            out.append((shape, tdim, kind, red, "contig"))
            i += 1
    for shape, layout, red in itertools.product([(5, 7), (129, 33)], ["transpose", "slice", "target_t"],
                                                ["none", "mean"]):
        out.append((shape, None, "mixed", red, layout))
    out.append(((1, 30000), None, "eight", "sum", "contig"))  # CUDA: counters in global memory
    return out


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,tdim,kind,reduction,layout", _ml_cases(), ids=str)
def test_multilabel_margin_matches_torch(device, dtype, shape, tdim, kind, reduction, layout):
    x = make_input(shape, dtype, device, "contig" if layout == "target_t" else layout).requires_grad_()
    t = ml_target(shape, kind, device, tdim)
    if layout == "target_t":  # a non-contiguous target
        t = t.t().contiguous().t()
        assert not t.is_contiguous()
    before = x.detach().clone()
    loss = ml_fn(fl(), reduction)(x, t)
    grad_out = torch.rand(loss.shape, device=device, dtype=f64) + 0.5
    ref, (rgx,) = torch_ref(ml_fn(F, reduction), (x, t), grad_out)
    assert loss.dtype == dtype and loss.device.type == device and loss.shape == ref.shape
    if reduction != "none" and x.numel() == 0:
        assert_empty_input_loss(loss, reduction)
    else:
        # the loss sums up to K (C - K) hinges per row: its rounding grows with that count
        assert_close_ref(loss, ref, dtype, "loss", floor=max(1.0, math.sqrt(shape[-1]) if shape else 1.0))
    gx, = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
    assert gx.dtype == dtype and gx.shape == x.shape
    C = shape[-1] if shape else 1
    assert_close_ref(gx, rgx, dtype, "grad input", floor=gfloor(dtype, rows_of(shape) * C))
    assert torch.equal(before, x.detach()), "the input was modified"


def assert_ml_reductions_match(x, t, dtype, floor_elems):
    """multilabel_margin_loss on (x, t) against torch's for every reduction: the loss and, for a random
    grad_output, the input's gradient."""
    for red in REDUCTIONS:
        xx = x.clone().requires_grad_()
        loss = fl().multilabel_margin_loss(xx, t, reduction=red)
        go = torch.rand(loss.shape, device=x.device, dtype=f64) + 0.5
        ref, (rgx,) = torch_ref(ml_fn(F, red), (xx, t), go)
        assert_close_ref(loss, ref, dtype, f"loss {red}")
        gx, = torch.autograd.grad(loss, xx, go.to(loss.dtype))
        assert_close_ref(gx, rgx, dtype, f"grad {red}", floor=gfloor(dtype, floor_elems))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_multilabel_duplicates_and_boundary(device, dtype):
    """A class listed twice counts twice (torch's loop over the list), 1 - x[j] + x[i] == 0 exactly gives
    no loss and no gradient, classes after the first -1 are not targets: torch's values, and these
    worked by hand."""
    x = torch.tensor([[0.5, 0.5, 1.0, 0.0, 2.0], [1.0, 0.0, 3.0, 0.25, -1.0]], device=device, dtype=dtype)
    t = torch.tensor([[2, 2, -1, 4, 0], [0, 3, 0, -1, 1]], device=device)
    assert_ml_reductions_match(x, t, dtype, floor_elems=10)
    # row 0 lists class 2 twice: against classes 0, 1, 4 active (z = 0.5, 0.5, 2), class 3 on the
    # boundary (z = 0); row 1 lists 0, 3, 0: target 0 against class 2 (z = 3; class 1 on the boundary),
    # target 3 against classes 1 and 2 (z = 0.75, 3.75); class 4 never active
    xx = x.clone().requires_grad_()
    loss = fl().multilabel_margin_loss(xx, t, reduction="none")
    gx, = torch.autograd.grad(loss.sum(), xx)
    expect_loss = torch.tensor([2 * 3.0 / 5, (3 + 0.75 + 3.75 + 3) / 5], dtype=f64)
    expect_grad = torch.tensor([[2, 2, -6, 0, 2], [-2, 1, 3, -2, 0]], dtype=f64) / 5
    assert_close_ref(loss, expect_loss, dtype, "loss by hand")
    assert_close_ref(gx, expect_grad, dtype, "grad by hand")
    assert gx[0, 3] == 0 and gx[1, 4] == 0


def ml_repeats_target(N, C, device):
    """(N, C) target lists full of repeated classes: one class listed up to 40 times; two classes
    alternating; 16 distinct classes listed twice; (C <= 5000) a list filling the whole row (no -1) drawn
    from 4 classes. Junk after the -1."""
    t = torch.randint(-1, C, (N, C))
    for r in range(N):
        perm = torch.randperm(C)
        k = r % (4 if C <= 5000 else 3)
        if k == 0:
            lst = perm[:1].repeat(min(40, C - 1))
        elif k == 1:
            lst = perm[:2].repeat(32)[:C - 1]
        elif k == 2:
            lst = perm[:16].repeat(2)[:C - 1]
        else:
            t[r] = perm[:4][torch.randint(0, 4, (C,))]
            continue
        t[r, :len(lst)] = lst
        t[r, len(lst)] = -1
    return t.to(device)


# every CUDA tier (float32 rows): a warp per row (C = 33), a block with the row in shared memory (C = 600;
# C = 5000 with the > 48 KB opt-in), counters in global memory (C = 30000)
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [f64, f32, bf16], ids=str)
@pytest.mark.parametrize("N,C", [(10, 33), (10, 600), (4, 5000), (3, 30000)], ids=str)
def test_multilabel_repeated_classes_every_tier(device, dtype, N, C):
    """Classes listed many times (each listing counts, as torch's loop over the list), in every row
    configuration of the CUDA kernel: the marks of a repeated class and the counts lost by a listed
    class come from many threads at once. torch's values and gradients; two runs bitwise equal."""
    x = make_input((N, C), dtype, device)
    t = ml_repeats_target(N, C, device)
    assert_ml_reductions_match(x, t, dtype, floor_elems=N * C)

    def run():
        xx = x.clone().requires_grad_()
        loss = fl().multilabel_margin_loss(xx, t, reduction="none")
        return [loss.detach(), torch.autograd.grad(loss.sum(), xx)[0]]

    assert_deterministic(run, device)


# (inputs made on the CPU: the only kernels that run are fastloss's and torch's fill of the upstream gradient)
RACECHECK_SCRIPT = """
import torch, fastloss
torch.manual_seed(0)
for N, C in [(10, 33), (3, 600), (2, 5000)]:
    x = torch.randn(N, C).cuda().requires_grad_()
    t = torch.full((N, C), -1, dtype=torch.int64)
    t[0, :20] = 3                                 # one class listed 20 times
    t[1, :32] = torch.tensor([5, 7]).repeat(16)   # two classes alternating
    if C <= 600:                                  # (K C pair checks: kept small under racecheck)
        t[-1] = torch.arange(4).repeat(C)[:C]     # the whole row, 4 classes (no -1)
    fastloss.functional.multilabel_margin_loss(x, t.cuda(), reduction="sum").backward()
torch.cuda.synchronize()
print("ml racecheck cases done")
"""


def _compute_sanitizer():
    import os
    import shutil
    found = shutil.which("compute-sanitizer")
    for home in [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]:
        if not found and home and os.path.exists(os.path.join(home, "bin", "compute-sanitizer")):
            found = os.path.join(home, "bin", "compute-sanitizer")
    return found


@requires_cuda
def test_cuda_multilabel_shared_memory_race_free():
    """compute-sanitizer racecheck over the shared-memory multilabel kernels (warp rows, block rows, block
    rows past 48 KB) on lists with repeated classes reports no hazard: the marks of a class listed twice
    and the counters of the listed classes are written by atomics only (or one owner thread), and read
    only after a barrier."""
    import os
    import subprocess
    import sys
    san = _compute_sanitizer()
    if san is None:
        pytest.skip("compute-sanitizer not found")
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastloss.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
               PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    out = subprocess.run([san, "--tool", "racecheck", "--error-exitcode", "9", sys.executable, "-c",
                          RACECHECK_SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert "ml racecheck cases done" in log, log[-4000:]
    assert out.returncode == 0 and re.search(r"RACECHECK SUMMARY: 0 hazards", log), log[-4000:]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [f64, f32, bf16], ids=str)
def test_multilabel_extreme_values(device, dtype):
    """nan / inf scores of targets and non-targets: torch's loss and gradient (a NaN z adds nothing)."""
    x = torch.tensor([[NAN, 1.0, 2.0], [1.0, NAN, 0.0], [INF, 0.0, 1.0], [0.0, INF, 1.0], [-INF, 0.0, 1.0],
                      [0.0, -INF, 1.0], [INF, INF, -INF]], device=device, dtype=dtype)
    t = torch.tensor([[0, -1, 2], [0, 2, -1], [0, -1, 0], [0, -1, 1], [0, -1, -1], [2, -1, 0], [2, 0, -1]],
                     device=device)
    assert_ml_reductions_match(x, t, dtype, floor_elems=21)


# ================================================================================== shared checks
def _calls(module):
    """name -> (callable(x, t, reduction), factory(device, dtype) -> (x, t))."""
    def mm_args(device, dtype):
        return torch.randn(6, 9, device=device).to(dtype).requires_grad_(), torch.randint(0, 9, (6,), device=device)

    def ml_args(device, dtype):
        return (torch.randn(6, 9, device=device).to(dtype).requires_grad_(),
                ml_target((6, 9), "mixed", device))

    w = {}

    def mm_weighted(x, t, reduction="mean"):
        if x.device not in w:
            w[x.device] = torch.linspace(0.25, 1.5, 9, device=x.device, dtype=f64)  # exact in every dtype
        return module.multi_margin_loss(x, t, p=2, margin=0.7, weight=w[x.device].to(x.dtype), reduction=reduction)

    return {
        "multi_margin_loss": (lambda x, t, reduction="mean": module.multi_margin_loss(x, t, reduction=reduction),
                              mm_args),
        "multi_margin_loss_p2_weight": (mm_weighted, mm_args),
        "multilabel_margin_loss": (lambda x, t, reduction="mean": module.multilabel_margin_loss(
            x, t, reduction=reduction), ml_args),
    }


NAMES = list(_calls(F))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_plain_and_retain_graph(device, name, reduction):
    """loss.backward() (grad_output exactly 1), retain_graph (two backward calls add up, the saved
    gradient is not scaled in place), and two different upstream gradients on one graph."""
    f_ours, factory = _calls(fl())[name]
    f_ref, _ = _calls(F)[name]
    x, t = factory(device, f32)
    x2 = x.detach().clone().requires_grad_()
    for f, a in [(f_ours, x), (f_ref, x2)]:
        loss = f(a, t, reduction=reduction)
        loss.backward(torch.ones_like(loss)) if reduction == "none" else loss.backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    x.grad, x2.grad = None, None
    for f, a in [(f_ours, x), (f_ref, x2)]:
        loss = f(a, t, reduction=reduction).sum() * 3.0
        loss.backward(retain_graph=True)
        loss.backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    loss, loss2 = f_ours(x, t, reduction=reduction), f_ref(x2, t, reduction=reduction)
    go1, go2 = torch.rand_like(loss2) + 0.5, torch.rand_like(loss2) + 0.5
    ours = [torch.autograd.grad(loss, x, go1, retain_graph=True)[0], torch.autograd.grad(loss, x, go2)[0]]
    theirs = [torch.autograd.grad(loss2, x2, go1, retain_graph=True)[0], torch.autograd.grad(loss2, x2, go2)[0]]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_legacy_size_average_reduce(device, name):
    fn_ours, fn_ref = getattr(fl(), name), getattr(F, name)
    _, factory = _calls(fl())[name]
    x, t = factory(device, f64)
    for sa, rd in itertools.product([None, True, False], [None, True, False]):
        legacy = sa is not None or rd is not None
        with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated") if legacy \
                else contextlib.nullcontext():
            out = fn_ours(x, t, size_average=sa, reduce=rd, reduction="sum")
        with pytest.warns(UserWarning) if legacy else contextlib.nullcontext():
            ref = fn_ref(x, t, size_average=sa, reduce=rd, reduction="sum")
        torch.testing.assert_close(out, ref)
        go = torch.rand_like(ref) + 0.5
        torch.testing.assert_close(torch.autograd.grad(out, x, go)[0], torch.autograd.grad(ref, x, go)[0])


# ----------------------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dt", [bf16, f16], ids=str)
def test_autocast(device, name, reduction, dt):
    """Half inputs (and weights) under autocast: a float32 loss as torch's (fp32 policy: torch computes
    in float32 on the exact upcast values), the input's gradient in its own dtype."""
    f_ours, factory = _calls(fl())[name]
    f_ref, _ = _calls(F)[name]
    x, t = factory(device, dt)
    with torch.autocast(device_type=device, dtype=dt):
        loss = f_ours(x, t, reduction=reduction)
        expect = f_ref(x, t, reduction=reduction)
    assert loss.dtype == expect.dtype == f32
    assert loss.shape == expect.shape
    go = torch.rand(loss.shape, device=device) + 0.5
    ref, (rgx,) = torch_ref(lambda a, b: f_ref(a, b, reduction=reduction), (x, t), go.double())
    assert_close_ref(loss, ref, f32, "loss")
    gx, = torch.autograd.grad(loss, x, go)
    assert gx.dtype == dt
    assert_close_ref(gx, rgx, dt, "grad input", floor=gfloor(dt, x.numel()))


@pytest.mark.parametrize("device", device_params())
def test_autocast_weight_dtypes(device):
    """torch's weight rule under autocast: half/bfloat16 weights are cast to float32 like the input, a
    float64 weight with a float32 (or autocast half) input is refused -- outside autocast the weight must
    have the input's dtype."""
    x = torch.randn(4, 5, device=device)
    t = torch.tensor([0, 1, 2, 3], device=device)
    for xdt, wdt, ok in [(bf16, bf16, True), (bf16, f32, True), (f32, bf16, True), (bf16, f64, False),
                         (f32, f64, False), (f64, f64, True), (f64, f32, False)]:
        xx, w = x.to(xdt), torch.rand(5, device=device).to(wdt)
        with torch.autocast(device_type=device, dtype=bf16):
            if ok:
                torch.testing.assert_close(fl().multi_margin_loss(xx, t, weight=w),
                                           F.multi_margin_loss(xx, t, weight=w), rtol=1e-5, atol=1e-6)
            else:
                with pytest.raises(RuntimeError, match="expected scalar type"):
                    fl().multi_margin_loss(xx, t, weight=w)
                with pytest.raises(RuntimeError):
                    F.multi_margin_loss(xx, t, weight=w)


# ------------------------------------------------------------------------------------------ modules
MODULE_CASES = [
    ("MultiMarginLoss", {}), ("MultiMarginLoss", {"p": 2, "margin": 0.5, "reduction": "sum"}),
    ("MultiMarginLoss", {"weight": "w", "margin": -0.2, "reduction": "none"}),
    ("MultiMarginLoss", {"size_average": False}), ("MultiMarginLoss", {"reduce": False, "p": 2}),
    ("MultiLabelMarginLoss", {}), ("MultiLabelMarginLoss", {"reduction": "none"}),
    ("MultiLabelMarginLoss", {"reduction": "sum"}), ("MultiLabelMarginLoss", {"size_average": False}),
]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("cls,kwargs", MODULE_CASES, ids=str)
def test_modules(device, cls, kwargs):
    kwargs = dict(kwargs)
    if kwargs.get("weight") == "w":
        kwargs["weight"] = torch.rand(9) + 0.2
    mod, ref_mod = module_pair(cls, kwargs, device)
    if "weight" in kwargs:
        assert "weight" in mod.state_dict() and mod.weight.device.type == device
    _, factory = _calls(fl())["multi_margin_loss" if cls == "MultiMarginLoss" else "multilabel_margin_loss"]
    x, t = factory(device, f32)
    out, ref = mod(x, t), ref_mod(x, t)
    torch.testing.assert_close(out, ref)
    go = torch.rand_like(ref) + 0.5
    torch.testing.assert_close(torch.autograd.grad(out, x, go)[0], torch.autograd.grad(ref, x, go)[0])


def test_module_refuses_what_torch_refuses():
    with pytest.raises(ValueError, match="only p == 1 and p == 2 supported"):
        fastloss.MultiMarginLoss(p=3)
    with pytest.raises(ValueError, match="expected weight to be None or 1D tensor"):
        fastloss.MultiMarginLoss(weight=torch.ones(2, 3))


# --------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_multi_margin(device, p, reduction):
    x = torch.randn(5, 6, device=device, dtype=f64, requires_grad=True)
    t = torch.tensor([0, 5, 2, 2, 1], device=device)
    w = torch.rand(6, device=device, dtype=f64) + 0.1
    for margin, weight in [(1.0, None), (0.3, w), (-0.5, w), (2.0, None)]:
        assert torch.autograd.gradcheck(
            lambda a: fl().multi_margin_loss(a, t, p=p, margin=margin, weight=weight, reduction=reduction), (x,))
    v = torch.randn(6, device=device, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a: fl().multi_margin_loss(a, t[1], p=p, margin=1.5, reduction=reduction), (v,))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_multilabel(device, reduction):
    x = torch.randn(6, 7, device=device, dtype=f64, requires_grad=True)
    t = ml_target((6, 7), "mixed", device)
    assert torch.autograd.gradcheck(lambda a: fl().multilabel_margin_loss(a, t, reduction=reduction), (x,))
    v = torch.randn(7, device=device, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: fl().multilabel_margin_loss(a, t[4], reduction=reduction), (v,))


# ------------------------------------------------------------------------------------------ opcheck
def _op_cases(device):
    ops = torch.ops.fastloss
    x = torch.randn(6, 11, device=device, requires_grad=True)
    x64 = torch.randn(5, 9, device=device, dtype=f64, requires_grad=True)
    xb = torch.randn(6, 11, device=device, dtype=bf16, requires_grad=True)
    v = torch.randn(11, device=device, requires_grad=True)
    t = torch.randint(0, 11, (6,), device=device)
    w = torch.rand(11, device=device)
    tl = ml_target((6, 11), "mixed", device)
    tl64 = ml_target((5, 9), "mixed", device)
    g6 = torch.rand(6, device=device)
    xd, x64d = x.detach(), x64.detach()
    return [
        (ops._multi_margin_loss_forward.default, (x, t, 1, 1.0, None, 1, True, None)),
        (ops._multi_margin_loss_forward.default, (x, t, 2, 0.5, w, 2, True, None)),
        (ops._multi_margin_loss_forward.default, (x, t, 1, -0.5, w, 0, False, None)),
        (ops._multi_margin_loss_forward.default, (xb, t, 2, 1.0, w, 1, True, torch.float32)),
        (ops._multi_margin_loss_forward.default, (v, t[0], 1, 1.0, None, 0, False, None)),
        (ops._multi_margin_loss_backward.default, (g6, xd, t, 2, 0.7, w, 0)),
        (ops._multi_margin_loss_backward.default, (torch.rand((), device=device), xd, t, 1, 1.0, None, 1)),
        (ops._multilabel_margin_loss_forward.default, (x, tl, 1, True, None)),
        (ops._multilabel_margin_loss_forward.default, (x64, tl64, 0, False, None)),
        (ops._multilabel_margin_loss_forward.default, (xb, tl, 2, True, torch.float32)),
        (ops._multilabel_margin_loss_forward.default, (v, tl[0], 0, False, None)),
        (ops._multilabel_margin_loss_backward.default, (g6, xd, tl, 0)),
        (ops._multilabel_margin_loss_backward.default, (torch.rand((), device=device, dtype=f64), x64d, tl64, 2)),
    ]


test_opcheck = opcheck_test(_op_cases, 13)


# ---------------------------------------------------------------------------------------- empty batch
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_empty_batch(device, name):
    """(0, C): 'none' is empty, 'sum' is 0, 'mean' is NaN (0 / 0; torch returns uninitialized memory
    there), and the gradient is empty."""
    x = torch.randn(0, 5, device=device, requires_grad=True)
    t = torch.zeros((0,) if name == "multi_margin_loss" else (0, 5), dtype=torch.long, device=device)
    f = getattr(fl(), name)
    assert f(x, t, reduction="none").shape == (0,)
    assert f(x, t, reduction="sum").item() == 0.0
    assert math.isnan(f(x, t).item())
    for red in REDUCTIONS:
        g, = torch.autograd.grad(f(x, t, reduction=red).sum(), x)
        assert g.shape == (0, 5)


# ---------------------------------------------------------------------------------------- bad inputs
def _bad_cases(device):
    def r(*shape):
        return torch.randn(shape, device=device)

    def L(*v):
        return torch.tensor(v, device=device)

    t4 = L(0, 1, 4, 2)
    tl = L([0, 1, -1, 3, 3], [4, 4, 4, -1, 0])
    return {
        # name: (callable taking the functional module, exception type, text of our message)
        "mm p=3": (lambda m: m.multi_margin_loss(r(4, 5), t4, p=3), ValueError, "only p == 1 and p == 2 supported"),
        "mm p=0": (lambda m: m.multi_margin_loss(r(4, 5), t4, p=0), ValueError, "only p == 1 and p == 2 supported"),
        "mm weight 2-D": (lambda m: m.multi_margin_loss(r(4, 5), t4, weight=r(1, 5)), ValueError,
                          "weight must be one-dimensional"),
        "mm weight size": (lambda m: m.multi_margin_loss(r(4, 5), t4, weight=r(4)), RuntimeError,
                           "inconsistent weight size, expected 5 but got [4]"),
        "mm weight dtype": (lambda m: m.multi_margin_loss(r(4, 5), t4, weight=r(5).double()), RuntimeError,
                            "expected scalar type Float but found Double"),
        "mm weight requires grad": (lambda m: m.multi_margin_loss(r(4, 5), t4, weight=r(5).requires_grad_()),
                                    RuntimeError, "not differentiable with respect to argument 'weight'"),
        "mm target too large": (lambda m: m.multi_margin_loss(r(4, 5), L(0, 1, 5, 2)), RuntimeError,
                                "target 5 is out of range: expected a class index in [0, 5) (at target position 2)"),
        "mm target negative": (lambda m: m.multi_margin_loss(r(4, 5), L(0, -1, 4, 2)), RuntimeError,
                               "target -1 is out of range"),
        "mm 1-D target out of range": (lambda m: m.multi_margin_loss(r(5), L(7)), RuntimeError,
                                       "target 7 is out of range"),
        "mm 0-d input target 1": (lambda m: m.multi_margin_loss(r(), L(1)), RuntimeError, "target 1 is out of range"),
        "mm target length": (lambda m: m.multi_margin_loss(r(4, 5), t4[:3]), RuntimeError,
                             "target tensor should be 1-D with size equal to the number of input samples"),
        "mm target 2-D": (lambda m: m.multi_margin_loss(r(4, 5), t4.view(2, 2)), RuntimeError,
                          "Expected target size [4], but got [2, 2]"),
        "mm 1-D input 2-D target": (lambda m: m.multi_margin_loss(r(5), L([2])), RuntimeError,
                                    "Expected target size [1], but got [1, 1]"),
        "mm int32 target": (lambda m: m.multi_margin_loss(r(4, 5), t4.int()), RuntimeError,
                            "expected scalar type Long but found Int"),
        "mm float target": (lambda m: m.multi_margin_loss(r(4, 5), t4.float()), RuntimeError,
                            "expected scalar type Long but found Float"),
        "mm 3-D input": (lambda m: m.multi_margin_loss(r(2, 3, 4), L(0, 1)), RuntimeError,
                         "Expected non-empty vector or matrix with optional 0-dim batch size, but got: [2, 3, 4]"),
        "mm no classes": (lambda m: m.multi_margin_loss(r(3, 0), L(0, 0, 0)), RuntimeError,
                          "Expected non-empty vector or matrix"),
        "mm empty 1-D": (lambda m: m.multi_margin_loss(r(0), L(0)), RuntimeError, "Expected non-empty vector"),
        "mm integer input": (lambda m: m.multi_margin_loss(r(4, 5).long(), t4), RuntimeError,
                             "must be float64, float32, float16 or bfloat16"),
        "mm unknown reduction": (lambda m: m.multi_margin_loss(r(4, 5), t4, reduction="avg"), ValueError,
                                 "is not a valid value for reduction"),
        "ml target too large": (lambda m: m.multilabel_margin_loss(r(2, 5), L([0, 1, -1, 3, 3], [4, 5, 4, -1, 0])),
                                RuntimeError, "target 5 at [1, 1] is out of range"),
        "ml target below -1": (lambda m: m.multilabel_margin_loss(r(2, 5), L([0, 1, -1, 3, 3], [4, 4, 4, -2, 0])),
                               RuntimeError, "target -2 at [1, 3] is out of range"),
        "ml bad target after -1": (lambda m: m.multilabel_margin_loss(r(2, 5), L([0, 1, -1, 3, 3],
                                                                                 [4, 4, -1, 0, 7])),
                                   RuntimeError, "target 7 at [1, 4] is out of range"),
        "ml 0-d input target 1": (lambda m: m.multilabel_margin_loss(r(), L(1)), RuntimeError,
                                  "target 1 at [0, 0] is out of range"),
        "ml target rows": (lambda m: m.multilabel_margin_loss(r(3, 5), tl), RuntimeError,
                           "inconsistent target size: [2, 5] for input of size: [3, 5]"),
        "ml target columns": (lambda m: m.multilabel_margin_loss(r(2, 4), tl), RuntimeError,
                              "inconsistent target size: [2, 5] for input of size: [2, 4]"),
        "ml 1-D input 2-D target": (lambda m: m.multilabel_margin_loss(r(5), tl[:1]), RuntimeError,
                                    "inconsistent target size: [1, 5] for input of size: [5]"),
        "ml 2-D input 1-D target": (lambda m: m.multilabel_margin_loss(r(1, 5), tl[0]), RuntimeError,
                                    "inconsistent target size: [5] for input of size: [1, 5]"),
        "ml int32 target": (lambda m: m.multilabel_margin_loss(r(2, 5), tl.int()), RuntimeError,
                            "expected scalar type Long but found Int"),
        "ml uint8 target": (lambda m: m.multilabel_margin_loss(r(2, 5), tl.clamp(0).byte()), RuntimeError,
                            "expected scalar type Long but found Byte"),
        "ml 3-D input": (lambda m: m.multilabel_margin_loss(r(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long,
                                                                                    device=device)),
                         RuntimeError, "Expected non-empty vector or matrix"),
        "ml no classes": (lambda m: m.multilabel_margin_loss(r(3, 0), torch.zeros(3, 0, dtype=torch.long,
                                                                                  device=device)),
                          RuntimeError, "Expected non-empty vector or matrix"),
        "ml unknown reduction": (lambda m: m.multilabel_margin_loss(r(2, 5), tl, reduction="x"), ValueError,
                                 "is not a valid value for reduction"),
    }


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", list(_bad_cases("cpu")))
def test_bad_arguments(device, case):
    call, exc, text = _bad_cases(device)[case]
    with pytest.raises(exc, match=re.escape(text)):
        call(fl())
    if device == "cuda" and "out of range" in text:
        return  # torch's CUDA kernels assert on the device for these, which kills the context
    with pytest.raises(exc):
        call(F)  # torch refuses the same input with the same exception type


# ------------------------------------------------------------------------------------------ CUDA only
@requires_cuda
@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_device_mismatch(name):
    x = torch.randn(4, 5, device="cuda")
    t = torch.tensor([0, 1, 2, 3]) if name == "multi_margin_loss" else ml_target((4, 5), "mixed", "cpu")
    with pytest.raises(RuntimeError, match="same device"):
        getattr(fl(), name)(x, t)
    if name == "multi_margin_loss":
        with pytest.raises(RuntimeError, match="same device"):
            fl().multi_margin_loss(x, t.cuda(), weight=torch.rand(5))


@requires_cuda
@pytest.mark.parametrize("shape", [(64, 100), (4, 3000)], ids=str)
def test_cuda_bad_target_keeps_context_and_validation_off_gives_nan(shape):
    """An out-of-range target on CUDA raises (no device-side assert: CUDA keeps working); with
    validation off the bad row's loss and gradient are NaN and the other rows are right."""
    N, C = shape
    x = torch.randn(N, C, device="cuda", requires_grad=True)
    t = torch.randint(0, C, (N,), device="cuda")
    t[3] = C
    tl = ml_target(shape, "mixed", "cuda")
    tl[2, -1] = C + 7
    with pytest.raises(RuntimeError, match=f"target {C} is out of range"):
        call_and_check(lambda: fl().multi_margin_loss(x, t))
    with pytest.raises(RuntimeError, match=re.escape(f"target {C + 7} at [2, {C - 1}] is out of range")):
        call_and_check(lambda: fl().multilabel_margin_loss(x, tl))
    previous = fastloss.set_target_validation(False)
    try:
        for f, tt, bad in [(fl().multi_margin_loss, t, 3), (fl().multilabel_margin_loss, tl, 2)]:
            loss = f(x, tt, reduction="none")
            g, = torch.autograd.grad(f(x, tt), x)
            good = torch.arange(N, device="cuda") != bad
            assert torch.isnan(loss[bad]) and torch.isfinite(loss[good]).all()
            assert torch.isnan(g[bad]).all() and torch.isfinite(g[good]).all()
    finally:
        fastloss.set_target_validation(previous)
    torch.testing.assert_close(fl().multi_margin_loss(x, t.clamp(max=C - 1)),
                               F.multi_margin_loss(x, t.clamp(max=C - 1)))


@requires_cuda
@pytest.mark.parametrize("name", ["multi_margin_loss", "multilabel_margin_loss"])
def test_cuda_matches_cpu(name):
    """The same inputs on both devices: the same losses and gradients (float64, to rounding)."""
    for shape in [(37, 100), (5, 3000), (2, 30000)]:
        x = torch.randn(shape, dtype=f64)
        t = torch.randint(0, shape[1], (shape[0],)) if name == "multi_margin_loss" else \
            ml_target(shape, "mixed", "cpu")
        out = []
        for dev in ["cpu", "cuda"]:
            xx = x.to(dev).requires_grad_()
            loss = getattr(fl(), name)(xx, t.to(dev), reduction="sum")
            out.append((loss.cpu(), torch.autograd.grad(loss, xx)[0].cpu()))
        torch.testing.assert_close(out[0][0], out[1][0])
        torch.testing.assert_close(out[0][1], out[1][1])
