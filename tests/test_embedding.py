"""triplet_margin_loss, triplet_margin_with_distance_loss, margin_ranking_loss, cosine_embedding_loss,
hinge_embedding_loss (functions and modules) against torch.nn.functional: values and gradients of
every differentiable input over every reduction, the legacy size_average/reduce, odd and large shapes,
strided inputs, broadcasting, every dtype, mixed dtypes, autocast, exact hinge boundaries and ties,
extreme values; float64 gradcheck, (torch.compile, determinism, no
fallback: tests/test_all_losses.py). margin_ranking_loss and hinge_embedding_loss are pointwise kinds in
csrc: their own tests are in tests/pointwise/test_margin_ranking_hinge.py; the checks below that run over
all five hinge-like losses stay parametrized here."""
import contextlib
import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import (assert_close_ref, check_grads, coarsest, device_params, diff_of, drop_kinks, DTYPES, gfloor, make,
                     make_sign_target, module_pair, REDUCTIONS, requires_cuda, torch_ref)

INF = float("inf")
P_ALL = [1, 1.5, 2, 3, 0.5, INF]
EMBEDDING = ["triplet_margin_loss", "triplet_margin_with_distance_loss", "margin_ranking_loss",
             "cosine_embedding_loss", "hinge_embedding_loss"]


def fl():
    return fastloss.functional


# ============================================================================ triplet_margin_loss
def triplet_fn(module, margin=1.0, p=2, eps=1e-6, swap=False, reduction="mean"):
    return lambda a, pos, neg: module.triplet_margin_loss(a, pos, neg, margin=margin, p=p, eps=eps, swap=swap,
                                                          reduction=reduction)


TRIPLET_MAIN = [((5, 8),) * 3, ((7,),) * 3, ((2, 3, 6),) * 3, ((5, 8), (1, 8), (5, 8))]
TRIPLET_MORE = [((4, 1),) * 3, ((3, 0),) * 3, ((0, 6),) * 3, ((3, 1000),) * 3, ((2, 35001),) * 3, ((129, 33),) * 3,
                ((3, 4, 5), (1, 4, 5), (3, 1, 5)), ((4, 6), (4, 6), (1, 6))]


def _triplet_cases():
    out = []
    margins, epss = [1.0, 0.3, 5.0], [1e-6, 0.1, 0.0]
    i = 0
    for shapes in TRIPLET_MAIN:  # every p with and without swap; reductions, margins and eps rotate
        for p, swap in itertools.product(P_ALL, [False, True]):
            eps = epss[(i // 3) % 3]
            if p < 1 and eps == 0.0:
                eps = 1e-6  # p < 1 at an exactly zero difference: tested on its own (test_triplet_zero_distance)
            out.append((shapes, p, swap, margins[i % 3], eps, REDUCTIONS[(i // 2) % 3], "contig"))
            i += 1
    combos = [(2, False, "none"), (2, True, "mean"), (1, False, "sum"), (1, True, "none"), (INF, False, "mean"),
              (INF, True, "sum")]
    for shapes in TRIPLET_MORE:
        for p, swap, red in combos:
            if p == INF and shapes[0][-1] == 0:
                continue  # torch: no inf-norm over an empty dimension (it raises)
            out.append((shapes, p, swap, margins[i % 3], epss[(i // 3) % 2], red, "contig"))
            i += 1
    for shape in [(5, 8), (129, 33)]:
        for layout, p, swap in itertools.product(["transpose", "slice"], [2, 1.5], [False, True]):
            out.append(((shape,) * 3, p, swap, 1.0, 1e-6, "mean" if swap else "none", layout))
    return out


def distance_floor(args, p=2, eps=1e-6, swap=False):
    """assert_close_ref floor for a triplet loss: the loss is a difference of two distances, so its
    rounding error scales with the distances (~40000 for p = 1, D = 35001), not with the loss; in
    float32 also with the length of the sums (sqrt(D / 1000) beyond D = 1000)."""
    a, pos, neg = (t.detach().double() for t in args)
    pairs = [(a, pos), (a, neg)] + ([(pos, neg)] if swap else [])
    d = [F.pairwise_distance(x, y, p=p, eps=eps) for x, y in pairs]
    m = max((x[torch.isfinite(x)].abs().max().item() for x in d if torch.isfinite(x).any()), default=0.0)
    growth = math.sqrt(max(1.0, a.shape[-1] / 1000)) if args[0].dtype == torch.float32 else 1.0
    return max(1.0, m) * growth


TRIPLET_CASES = _triplet_cases()


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes,p,swap,margin,eps,reduction,layout", TRIPLET_CASES, ids=str)
def test_triplet_matches_torch(device, dtype, shapes, p, swap, margin, eps, reduction, layout):
    a, pos, neg = (make(s, dtype, device, layout if s == shapes[0] else "contig", scale=1.0).requires_grad_()
                   for s in shapes)
    before = [t.detach().clone() for t in (a, pos, neg)]
    loss = triplet_fn(fl(), margin, p, eps, swap, reduction)(a, pos, neg)
    grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref, ref_grads = torch_ref(triplet_fn(F, margin, p, eps, swap, reduction), (a, pos, neg), grad_out)
    assert loss.dtype == dtype and loss.device.type == device
    assert_close_ref(loss, ref, dtype, "loss", floor=distance_floor((a, pos, neg), p, eps, swap))
    grads = torch.autograd.grad(loss, [a, pos, neg], grad_out.to(loss.dtype))
    for g, t in zip(grads, (a, pos, neg)):
        assert g.dtype == dtype and g.shape == t.shape
    rows = math.prod(torch.broadcast_shapes(*shapes)[:-1])
    check_grads(grads, ref_grads, dtype, rows, "", ["anchor", "positive", "negative"])
    for x, y in zip(before, (a, pos, neg)):
        assert torch.equal(x, y.detach()), "an input was modified"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_triplet_hinge_boundary(device, dtype):
    """margin + d(a,p) - d(a,n) == 0 exactly: loss 0 and gradient 0 (torch's clamp_min passes no
    gradient at the boundary); a row just inside gets the full gradient."""
    a = torch.zeros(3, 3, device=device, dtype=dtype)
    pos = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], device=device, dtype=dtype)
    neg = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 1.5]], device=device, dtype=dtype)
    for red in REDUCTIONS:
        args = [t.clone().requires_grad_() for t in (a, pos, neg)]
        loss = fl().triplet_margin_loss(*args, margin=1.0, eps=0.0, reduction=red)
        go = torch.rand(loss.shape, device=device, dtype=dtype) + 0.5
        ref, ref_grads = torch_ref(triplet_fn(F, 1.0, 2, 0.0, False, red), args, go)
        torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=0)
        grads = torch.autograd.grad(loss, args, go)
        kink = torch.tensor([True, False, False], device=device).unsqueeze(1).expand(3, 3)  # row 0
        for g, r in zip(*drop_kinks(grads, ref_grads, kink)):
            torch.testing.assert_close(g.double(), r, rtol=1e-6, atol=1e-7)
        for g in grads:
            assert (g[0] == 0).all()  # the boundary row
        assert (grads[1][2] != 0).any() and (grads[2][2] != 0).any()  # the active row


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("p", [1, 2, 3, INF])
def test_triplet_swap_tie(device, dtype, p):
    """swap with d(a,n) == d(p,n) exactly: torch.minimum splits the gradient in half between the two."""
    a = torch.tensor([[0.0, 0, 0], [0, 0, 0]], device=device, dtype=dtype)
    pos = torch.tensor([[2.0, 0, 0], [0, 0.5, 0]], device=device, dtype=dtype)
    neg = torch.tensor([[1.0, 0, 0], [0, 0.25, 0]], device=device, dtype=dtype)
    for red in REDUCTIONS:
        args = [t.clone().requires_grad_() for t in (a, pos, neg)]
        loss = fl().triplet_margin_loss(*args, margin=2.0, p=p, eps=0.0, swap=True, reduction=red)
        go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, ref_grads = torch_ref(triplet_fn(F, 2.0, p, 0.0, True, red), args, go)
        assert_close_ref(loss, ref, dtype, "loss")
        grads = torch.autograd.grad(loss, args, go.to(loss.dtype))
        check_grads(grads, ref_grads, dtype, 2, red, ["anchor", "positive", "negative"])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("p", P_ALL)
def test_triplet_zero_distance(device, p):
    """eps = 0 and anchor == positive (a zero distance), and differences with some zero components:
    torch's norm gradients there (0 for the zero vector, finite for p < 1 as torch masks zeros)."""
    dt = torch.float64
    a = torch.tensor([[0.0, 0, 0], [0, 1, 2], [1, 1, 1], [0.5, -1, 0]], device=device, dtype=dt)
    pos = torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 1, 1], [0.5, 0, 0]], device=device, dtype=dt)
    neg = torch.tensor([[0.1, 0.1, 0.1], [0, 1, 0], [3, 1, 1], [0, 0, 0]], device=device, dtype=dt)
    for swap in [False, True]:
        args = [t.clone().requires_grad_() for t in (a, pos, neg)]
        loss = fl().triplet_margin_loss(*args, margin=5.0, p=p, eps=0.0, swap=swap, reduction="none")
        go = torch.rand(loss.shape, device=device, dtype=dt) + 0.5
        ref, ref_grads = torch_ref(triplet_fn(F, 5.0, p, 0.0, swap, "none"), args, go)
        assert_close_ref(loss, ref, dt, "loss")
        grads = torch.autograd.grad(loss, args, go)
        check_grads(grads, ref_grads, dt, 1, f"swap={swap}", ["anchor", "positive", "negative"])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("p", [1, 2, INF])
def test_triplet_extreme_values(device, dtype, p):
    """nan and inf entries: torch's NaN/inf pattern in the loss; gradients equal torch's on every row
    where torch's gradients are finite (elsewhere torch's own pattern depends on the norm's
    backward formula, e.g. 0 * inf / inf)."""
    nan = float("nan")
    a = torch.randn(6, 4, device=device, dtype=torch.float64)
    pos, neg = torch.randn_like(a), torch.randn_like(a)
    a[0, 1] = nan
    neg[1, 0] = INF
    pos[2, 2] = INF
    neg[3, 3] = nan
    pos[4, 0] = -INF
    args = [t.to(dtype).requires_grad_() for t in (a, pos, neg)]
    for swap, red in itertools.product([False, True], REDUCTIONS):
        loss = fl().triplet_margin_loss(*args, p=p, swap=swap, reduction=red)
        go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, ref_grads = torch_ref(triplet_fn(F, 1.0, p, 1e-6, swap, red), args, go)
        assert_close_ref(loss, ref, dtype, f"loss {red}")
        grads = torch.autograd.grad(loss, args, go.to(loss.dtype))
        finite_rows = torch.stack([torch.isfinite(r).all(1) for r in ref_grads]).all(0)
        for g, r, name in zip(grads, ref_grads, ["anchor", "positive", "negative"]):
            assert_close_ref(g[finite_rows], r[finite_rows], dtype, f"grad {name} {red} swap={swap}",
                             floor=gfloor(dtype, 6))


# =============================================================== triplet_margin_with_distance_loss
def twd_fn(module, distance_function=None, margin=1.0, swap=False, reduction="mean"):
    return lambda a, pos, neg: module.triplet_margin_with_distance_loss(
        a, pos, neg, distance_function=distance_function, margin=margin, swap=swap, reduction=reduction)


def cosine_distance(x, y):
    return 1.0 - F.cosine_similarity(x, y)


def l1_distance(x, y):
    return (x - y).abs().sum(-1)


TWD_SHAPES = [((5, 8),) * 3, ((7,),) * 3, ((2, 3, 6),) * 3, ((5, 8), (1, 8), (5, 8)), ((3, 1000),) * 3, ((0, 4),) * 3]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes", TWD_SHAPES, ids=str)
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triplet_with_distance_default(device, dtype, shapes, swap, reduction):
    """distance_function=None: torch's pairwise_distance (p=2, eps=1e-6), here the fused kernel."""
    margin = 0.7 if swap else 1.0
    args = [make(s, dtype, device, scale=1.0).requires_grad_() for s in shapes]
    loss = twd_fn(fl(), None, margin, swap, reduction)(*args)
    go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref, ref_grads = torch_ref(twd_fn(F, None, margin, swap, reduction), args, go)
    assert loss.dtype == dtype
    assert_close_ref(loss, ref, dtype, "loss", floor=distance_floor(args, swap=swap))
    grads = torch.autograd.grad(loss, args, go.to(loss.dtype))
    rows = math.prod(torch.broadcast_shapes(*shapes)[:-1])
    check_grads(grads, ref_grads, dtype, rows, "", ["anchor", "positive", "negative"])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("distance", ["cosine", "l1", "pairwise_p1", "pairwise_keepdim"])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_triplet_with_distance_user_function(device, distance, swap, reduction):
    """A user distance_function runs as ordinary torch code (the documented path): torch's values and
    gradients. nn.PairwiseDistance instances (what the module holds by default) give torch's result too."""
    fn = {"cosine": cosine_distance, "l1": l1_distance, "pairwise_p1": torch.nn.PairwiseDistance(p=1.0, eps=0.1),
          "pairwise_keepdim": torch.nn.PairwiseDistance(keepdim=True)}[distance]
    args = [torch.randn(6, 5, device=device, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    loss = twd_fn(fl(), fn, 0.5, swap, reduction)(*args)
    ref = twd_fn(F, fn, 0.5, swap, reduction)(*args)
    assert loss.shape == ref.shape
    torch.testing.assert_close(loss, ref)
    go = torch.rand_like(ref) + 0.5
    for g, r in zip(torch.autograd.grad(loss, args, go), torch.autograd.grad(ref, args, go)):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("swap", [False, True])
def test_triplet_with_distance_calls_user_function(swap):
    """The user's distance_function is really called: twice, three times with swap (a, p), (a, n), (p, n)."""
    calls = []

    def dist(x, y):
        calls.append((x.shape, y.shape))
        return (x - y).pow(2).sum(-1)

    args = [torch.randn(4, 3, requires_grad=True) for _ in range(3)]
    loss = fl().triplet_margin_with_distance_loss(*args, distance_function=dist, swap=swap)
    assert len(calls) == (3 if swap else 2)
    torch.testing.assert_close(loss, F.triplet_margin_with_distance_loss(*args, distance_function=dist, swap=swap))
    loss.backward()
    assert all(a.grad is not None for a in args)


# ========================================================================== cosine_embedding_loss
def cos_fn(module, margin=0.0, reduction="mean"):
    return lambda x1, x2, t: module.cosine_embedding_loss(x1, x2, t, margin=margin, reduction=reduction)


COS_SHAPES = [((5, 8), (5, 8), (5,)), ((7,), (7,), ()), ((3, 1), (3, 1), (3,)), ((0, 4), (0, 4), (0,)),
              ((4, 0), (4, 0), (4,)), ((3, 1000), (3, 1000), (3,)), ((2, 35001), (2, 35001), (2,)),
              ((5, 8), (1, 8), (5,)), ((1, 8), (5, 8), (5,)), ((5, 8), (5, 8), (1,))]


def _cos_cases():
    out = []
    margins = [-0.5, 0.0, 0.5]
    i = 0
    for shapes, kind, red in itertools.product(COS_SHAPES, ["pm1", "pm1_0", "int"], REDUCTIONS):
        out.append((shapes, kind, margins[i % 3], red, "contig"))
        i += 1
    for layout, red in itertools.product(["transpose", "slice"], ["none", "mean"]):
        out.append((((129, 33), (129, 33), (129,)), "pm1", 0.3, red, layout))
    return out


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shapes,kind,margin,reduction,layout", _cos_cases(), ids=str)
def test_cosine_embedding_matches_torch(device, dtype, shapes, kind, margin, reduction, layout):
    x1 = make(shapes[0], dtype, device, layout, 1.0).requires_grad_()
    x2 = make(shapes[1], dtype, device, layout, 1.0).requires_grad_()
    t = make_sign_target(kind, shapes[2], dtype, device)
    loss = cos_fn(fl(), margin, reduction)(x1, x2, t)
    go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref, ref_grads = torch_ref(cos_fn(F, margin, reduction), (x1, x2, t), go)
    assert loss.dtype == dtype
    assert_close_ref(loss, ref, dtype, "loss")
    grads = torch.autograd.grad(loss, [x1, x2], go.to(loss.dtype))
    for g, a in zip(grads, (x1, x2)):
        assert g.dtype == dtype and g.shape == a.shape
    rows = max(shapes[0][0] if len(shapes[0]) == 2 else 1, shapes[1][0] if len(shapes[1]) == 2 else 1)
    check_grads(grads, ref_grads, dtype, rows, "", ["input1", "input2"])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("margin", [-0.5, 0.0, 0.5])
def test_cosine_zero_vectors(device, dtype, margin):
    """Zero vectors: 1e-12 inside the norms (as torch) gives cos = 0 and a finite gradient."""
    x1 = torch.randn(6, 5, device=device, dtype=torch.float64)
    x2 = torch.randn(6, 5, device=device, dtype=torch.float64)
    x1[0] = 0
    x2[1] = 0
    x1[2] = 0
    x2[2] = 0
    x1[3] = 0
    x2[4] = 0
    t = torch.tensor([1, 1, 1, -1, -1, 0], device=device)
    args = [a.to(dtype).requires_grad_() for a in (x1, x2)]
    for red in REDUCTIONS:
        loss = fl().cosine_embedding_loss(*args, t, margin=margin, reduction=red)
        go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, ref_grads = torch_ref(cos_fn(F, margin, red), (*args, t), go)
        assert_close_ref(loss, ref, dtype, f"loss {red}")
        grads = torch.autograd.grad(loss, args, go.to(loss.dtype))
        for g in grads:
            assert torch.isfinite(g).all()
        # t == -1 with cos == 0 (a zero vector) at margin 0: the clamp's kink
        kink = ((t == -1) & (margin == 0.0) & ((x1 == 0).all(1) | (x2 == 0).all(1)))[:, None].expand(6, 5)
        check_grads(*drop_kinks(grads, ref_grads, kink), dtype, 6, red, ["input1", "input2"])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_cosine_extreme_values(device, dtype):
    """nan / inf in cosine_embedding_loss: torch's loss pattern; torch's gradients on every row where
    they are finite."""
    nan = float("nan")
    c1 = torch.randn(5, 4, device=device, dtype=torch.float64)
    c2 = torch.randn(5, 4, device=device, dtype=torch.float64)
    c1[0, 0] = nan
    c2[1, 1] = INF
    c1[2, 3] = -INF
    args = [c.to(dtype).requires_grad_() for c in (c1, c2)]
    ct = torch.tensor([1, -1, 1, -1, 1], device=device)
    for red in REDUCTIONS:
        loss = fl().cosine_embedding_loss(*args, ct, reduction=red)
        go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, ref_grads = torch_ref(cos_fn(F, 0.0, red), (*args, ct), go)
        assert_close_ref(loss, ref, dtype, f"cosine loss {red}")
        grads = torch.autograd.grad(loss, args, go.to(loss.dtype))
        finite_rows = torch.stack([torch.isfinite(r).all(1) for r in ref_grads]).all(0)
        for g, r, name in zip(grads, ref_grads, ["input1", "input2"]):
            assert_close_ref(g[finite_rows], r[finite_rows], dtype, f"cosine grad {name} {red}",
                             floor=gfloor(dtype, 5))


# ================================================================================= shared checks
def _calls(module):
    """name -> (callable on tensors, tensor factory (device, dtype) -> args) for every function."""
    def trip(device, dtype):
        return [torch.randn(6, 9, device=device).to(dtype).requires_grad_() for _ in range(3)]

    def pair(device, dtype):
        return [torch.randn(6, 9, device=device).to(dtype).requires_grad_() for _ in range(2)] + \
               [(torch.randint(0, 2, (6,), device=device) * 2 - 1).to(dtype)]

    def ranking(device, dtype):
        return [torch.randn(6, 9, device=device).to(dtype).requires_grad_() for _ in range(2)] + \
               [(torch.randint(0, 2, (6, 9), device=device) * 2 - 1).to(dtype).requires_grad_()]

    def hinge(device, dtype):
        return [torch.randn(6, 9, device=device).to(dtype).requires_grad_(),
                torch.randint(-1, 2, (6, 9), device=device).to(dtype)]

    return {
        "triplet_margin_loss": (lambda *a, reduction="mean": module.triplet_margin_loss(
            *a, margin=1.5, p=1.5, swap=True, reduction=reduction), trip),
        "triplet_margin_with_distance_loss": (lambda *a, reduction="mean": module.triplet_margin_with_distance_loss(
            *a, margin=1.5, swap=True, reduction=reduction), trip),
        "margin_ranking_loss": (lambda *a, reduction="mean": module.margin_ranking_loss(
            *a, margin=0.3, reduction=reduction), ranking),
        "cosine_embedding_loss": (lambda *a, reduction="mean": module.cosine_embedding_loss(
            *a, margin=0.2, reduction=reduction), pair),
        "hinge_embedding_loss": (lambda *a, reduction="mean": module.hinge_embedding_loss(
            *a, margin=0.7, reduction=reduction), hinge),
    }


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", EMBEDDING)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_plain_and_retain_graph(device, name, reduction):
    """loss.backward() (grad_output exactly 1), then retain_graph: two backward calls give twice the
    gradient, and two different upstream gradients each give their own result."""
    f_ours, factory = _calls(fl())[name]
    f_ref, _ = _calls(F)[name]
    torch.manual_seed(3)
    args = factory(device, torch.float32)
    args2 = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]

    for f, a in [(f_ours, args), (f_ref, args2)]:
        loss = f(*a, reduction=reduction)
        loss.backward(torch.ones_like(loss)) if reduction == "none" else loss.backward()
    for a, b in zip(diff_of(*args), diff_of(*args2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
        a.grad, b.grad = None, None

    for f, a in [(f_ours, args), (f_ref, args2)]:
        loss = f(*a, reduction=reduction).sum() * 3.0
        loss.backward(retain_graph=True)
        loss.backward()
    for a, b in zip(diff_of(*args), diff_of(*args2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)

    loss, loss2 = f_ours(*args, reduction=reduction), f_ref(*args2, reduction=reduction)
    go1, go2 = torch.rand_like(loss2) + 0.5, torch.rand_like(loss2) + 0.5
    ours = torch.autograd.grad(loss, diff_of(*args), go1, retain_graph=True) + \
        torch.autograd.grad(loss, diff_of(*args), go2)
    theirs = torch.autograd.grad(loss2, diff_of(*args2), go1, retain_graph=True) + \
        torch.autograd.grad(loss2, diff_of(*args2), go2)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


SUBSETS = [("triplet_margin_loss", i) for i in range(3)] + [("triplet_margin_with_distance_loss", 1)] + \
    [("margin_ranking_loss", i) for i in range(3)] + [("cosine_embedding_loss", i) for i in range(2)] + \
    [(n, None) for n in EMBEDDING]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name,only", SUBSETS, ids=str)
def test_requires_grad_subsets(device, name, only):
    """Only one input requires grad (or none): it gets torch's gradient."""
    f_ours, factory = _calls(fl())[name]
    f_ref, _ = _calls(F)[name]
    args = [a.detach().double().requires_grad_(i == only) for i, a in enumerate(factory(device, torch.float64))]
    for red in REDUCTIONS:
        loss, ref = f_ours(*args, reduction=red), f_ref(*args, reduction=red)
        torch.testing.assert_close(loss, ref)
        assert loss.requires_grad == (only is not None)
        if only is not None:
            go = torch.rand_like(ref) + 0.5
            torch.testing.assert_close(torch.autograd.grad(loss, args[only], go)[0],
                                       torch.autograd.grad(ref, args[only], go)[0])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", [n for n in EMBEDDING if n != "triplet_margin_with_distance_loss"])
def test_legacy_size_average_reduce(device, name):
    f_ours, factory = _calls(fl())[name]
    args = factory(device, torch.float64)
    fn_ours, fn_ref = getattr(fl(), name), getattr(F, name)
    for sa, rd in itertools.product([None, True, False], [None, True, False]):
        legacy = sa is not None or rd is not None
        with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated") if legacy \
                else contextlib.nullcontext():
            out = fn_ours(*args, size_average=sa, reduce=rd, reduction="sum")
        with pytest.warns(UserWarning) if legacy else contextlib.nullcontext():
            ref = fn_ref(*args, size_average=sa, reduce=rd, reduction="sum")
        torch.testing.assert_close(out, ref)
        go = torch.rand_like(ref) + 0.5
        for a, b in zip(torch.autograd.grad(out, diff_of(*args), go), torch.autograd.grad(ref, diff_of(*args), go)):
            torch.testing.assert_close(a, b)


f64, f32, bf16, f16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
MIXED = [
    ("triplet_margin_loss", (f32, f64, f32)), ("triplet_margin_loss", (bf16, f32, bf16)),
    ("triplet_margin_loss", (f16, f16, bf16)),
    ("triplet_margin_with_distance_loss", (f32, f32, f64)),
    ("margin_ranking_loss", (f32, f64, f32)), ("margin_ranking_loss", (bf16, bf16, f32)),
    ("margin_ranking_loss", (f32, f32, torch.int64)), ("margin_ranking_loss", (bf16, bf16, torch.int64)),
    ("margin_ranking_loss", (f32, f32, f64)),
    ("cosine_embedding_loss", (f32, f64, f32)), ("cosine_embedding_loss", (f32, f32, f64)),
    ("cosine_embedding_loss", (bf16, f32, bf16)), ("cosine_embedding_loss", (bf16, bf16, torch.int64)),
    ("cosine_embedding_loss", (f16, f16, torch.int32)),
    ("hinge_embedding_loss", (f32, f64)), ("hinge_embedding_loss", (bf16, f32)),
    ("hinge_embedding_loss", (f32, torch.int64)), ("hinge_embedding_loss", (f16, torch.int32)),
]


DIFFERENTIABLE = {"triplet_margin_loss": 3, "triplet_margin_with_distance_loss": 3, "margin_ranking_loss": 3,
                  "cosine_embedding_loss": 2, "hinge_embedding_loss": 1}  # leading arguments torch differentiates


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name,dtypes", MIXED, ids=str)
def test_mixed_dtypes(device, name, dtypes):
    """Mixed dtypes give torch's result dtype (promotion for triplet / margin_ranking / the cosine
    inputs; hinge keeps the input's dtype; integer targets), torch's values and gradients."""
    _, factory = _calls(fl())[name]
    args = [a.detach().to(dt).requires_grad_(i < DIFFERENTIABLE[name] and dt.is_floating_point)
            for i, (a, dt) in enumerate(zip(factory(device, torch.float64), dtypes))]
    fn_ours, fn_ref = getattr(fl(), name), getattr(F, name)
    for red in REDUCTIONS:
        loss = fn_ours(*args, reduction=red)
        expect = fn_ref(*args, reduction=red)
        assert loss.dtype == expect.dtype, f"{loss.dtype} != torch's {expect.dtype}"
        floating = [d for d in dtypes if d.is_floating_point]
        tol = coarsest(*floating, loss.dtype)
        go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
        ref, ref_grads = torch_ref(lambda *a: fn_ref(*a, reduction=red), args, go)
        assert_close_ref(loss, ref, tol, f"loss {red}")
        diff = diff_of(*args)
        grads = torch.autograd.grad(loss, diff, go.to(loss.dtype))
        for g, a in zip(grads, diff):
            assert g.dtype == a.dtype
        check_grads(grads, ref_grads, tol, 54, red, [f"arg{i}" for i in range(len(diff))])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", EMBEDDING)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_autocast(device, name, reduction):
    """bfloat16 inputs under autocast: the loss has torch's dtype (float32 where torch's autocast runs
    the loss in float32; torch's triplet_margin_with_distance_loss is composite: bfloat16), values
    match the float64 reference, gradients come back in bfloat16."""
    dt = torch.bfloat16
    f_ours, factory = _calls(fl())[name]
    f_ref, _ = _calls(F)[name]
    args = factory(device, dt)
    with torch.autocast(device_type=device, dtype=dt):
        loss = f_ours(*args, reduction=reduction)
        expect = f_ref(*args, reduction=reduction)
    assert loss.dtype == expect.dtype, f"{loss.dtype} != torch's {expect.dtype}"
    go = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref, ref_grads = torch_ref(lambda *a: f_ref(*a, reduction=reduction), args, go)
    assert_close_ref(loss, ref, loss.dtype, "loss")
    diff = diff_of(*args)
    grads = torch.autograd.grad(loss, diff, go.to(loss.dtype))
    for g in grads:
        assert g.dtype == dt
    check_grads(grads, ref_grads, dt, 54, "", [f"arg{i}" for i in range(len(diff))])


# ---------------------------------------------------------------------------------- bad arguments
def _bad_cases(device):
    def r(*shape):
        return torch.randn(*shape, device=device)

    ones = torch.ones(4, device=device)
    same_ndim = "The anchor, positive, and negative tensors are expected to have the same number of dimensions"
    return {
        # name: (callable taking the functional module, exception type, text of our message)
        "triplet margin 0": (lambda m: m.triplet_margin_loss(r(4, 5), r(4, 5), r(4, 5), margin=0.0), ValueError,
                             "margin must be greater than 0"),
        "triplet margin < 0": (lambda m: m.triplet_margin_loss(r(4, 5), r(4, 5), r(4, 5), margin=-1.0), ValueError,
                               "margin must be greater than 0"),
        "triplet ndim": (lambda m: m.triplet_margin_loss(r(4, 5), r(5), r(4, 5)), RuntimeError, same_ndim),
        "triplet ndim negative": (lambda m: m.triplet_margin_loss(r(4, 5), r(4, 5), r(2, 4, 5)), RuntimeError,
                                  same_ndim),
        "triplet D mismatch": (lambda m: m.triplet_margin_loss(r(4, 5), r(4, 6), r(4, 5)), RuntimeError, ""),
        "triplet N mismatch": (lambda m: m.triplet_margin_loss(r(4, 5), r(3, 5), r(4, 5)), RuntimeError, ""),
        "triplet unknown reduction": (lambda m: m.triplet_margin_loss(r(4, 5), r(4, 5), r(4, 5), reduction="avg"),
                                      ValueError, "is not a valid value for reduction"),
        "twd unknown reduction": (lambda m: m.triplet_margin_with_distance_loss(r(4, 5), r(4, 5), r(4, 5),
                                                                                reduction="avg"),
                                  ValueError, "avg is not a valid value for reduction"),
        "twd margin 0": (lambda m: m.triplet_margin_with_distance_loss(r(4, 5), r(4, 5), r(4, 5), margin=0.0),
                         ValueError, "margin must be greater than 0"),
        "twd margin < 0 with function": (lambda m: m.triplet_margin_with_distance_loss(
            r(4, 5), r(4, 5), r(4, 5), margin=-0.5, distance_function=l1_distance), ValueError,
            "margin must be greater than 0"),
        "twd ndim": (lambda m: m.triplet_margin_with_distance_loss(r(4, 5), r(4, 5), r(5)), RuntimeError, same_ndim),
        "twd D mismatch": (lambda m: m.triplet_margin_with_distance_loss(r(4, 5), r(4, 6), r(4, 5)), RuntimeError,
                           ""),
        "margin_ranking ndim": (lambda m: m.margin_ranking_loss(r(4), r(4), r(4, 1)), RuntimeError,
                                "margin_ranking_loss : All input tensors should have same dimension"),
        "margin_ranking ndim inputs": (lambda m: m.margin_ranking_loss(r(4), r(1, 4), ones), RuntimeError,
                                       "margin_ranking_loss : All input tensors should have same dimension"),
        "margin_ranking shapes": (lambda m: m.margin_ranking_loss(r(4), r(3), ones), RuntimeError, ""),
        "margin_ranking unknown reduction": (lambda m: m.margin_ranking_loss(r(4), r(4), ones, reduction="x"),
                                             ValueError, "is not a valid value for reduction"),
        "cosine 2-D target": (lambda m: m.cosine_embedding_loss(r(4, 5), r(4, 5), torch.ones(4, 1, device=device)),
                              RuntimeError, "0D or 1D target tensor expected, multi-target not supported"),
        "cosine 1-D target 1-D inputs": (lambda m: m.cosine_embedding_loss(r(5), r(5), torch.ones(1, device=device)),
                                         RuntimeError, "1D target tensor expects 2D input tensors"),
        "cosine 1-D target 3-D inputs": (lambda m: m.cosine_embedding_loss(r(2, 4, 5), r(2, 4, 5), ones[:2]),
                                         RuntimeError, "1D target tensor expects 2D input tensors"),
        "cosine 0-D target 2-D inputs": (lambda m: m.cosine_embedding_loss(r(4, 5), r(4, 5), ones[0]),
                                         RuntimeError, "0D target tensor expects 1D input tensors"),
        "cosine D mismatch": (lambda m: m.cosine_embedding_loss(r(4, 5), r(4, 6), ones), RuntimeError, ""),
        "cosine N mismatch": (lambda m: m.cosine_embedding_loss(r(4, 5), r(4, 5), ones[:3]), RuntimeError, ""),
        "cosine unknown reduction": (lambda m: m.cosine_embedding_loss(r(4, 5), r(4, 5), ones, reduction="x"),
                                     ValueError, "is not a valid value for reduction"),
        "hinge shapes": (lambda m: m.hinge_embedding_loss(r(4, 5), torch.ones(4, device=device)), RuntimeError, ""),
        "hinge unknown reduction": (lambda m: m.hinge_embedding_loss(r(4), ones, reduction="x"), ValueError,
                                    "is not a valid value for reduction"),
    }


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", list(_bad_cases("cpu")))
def test_bad_arguments(device, case):
    call, exc, text = _bad_cases(device)[case]
    with pytest.raises(exc, match=re.escape(text) if text else None):
        call(fl())
    with pytest.raises(exc):
        call(F)  # torch refuses the same input with the same exception type


@requires_cuda
@pytest.mark.parametrize("name", EMBEDDING)
def test_device_mismatch(name):
    f_ours, factory = _calls(fl())[name]
    args = factory("cuda", torch.float32)
    for i in range(len(args)):
        mixed = [a.detach().cpu() if j == i else a for j, a in enumerate(args)]
        with pytest.raises(RuntimeError):
            f_ours(*mixed)


# ------------------------------------------------------------------------------------------ modules
MODULE_CASES = [
    ("TripletMarginLoss", {}), ("TripletMarginLoss", {"margin": 0.5, "p": 1.0, "swap": True, "reduction": "sum"}),
    ("TripletMarginLoss", {"p": 3.0, "eps": 0.1, "reduction": "none"}), ("TripletMarginLoss", {"size_average": False}),
    ("TripletMarginWithDistanceLoss", {}), ("TripletMarginWithDistanceLoss", {"margin": 2.0, "swap": True}),
    ("TripletMarginWithDistanceLoss", {"distance_function": cosine_distance, "reduction": "none"}),
    ("TripletMarginWithDistanceLoss", {"distance_function": torch.nn.PairwiseDistance(p=1.0), "swap": True}),
    ("MarginRankingLoss", {}), ("MarginRankingLoss", {"margin": 0.2, "reduction": "sum"}),
    ("MarginRankingLoss", {"reduce": False}),
    ("CosineEmbeddingLoss", {}), ("CosineEmbeddingLoss", {"margin": 0.3, "reduction": "none"}),
    ("HingeEmbeddingLoss", {}), ("HingeEmbeddingLoss", {"margin": 2.0, "reduction": "sum"}),
    ("HingeEmbeddingLoss", {"size_average": True}),
]
MODULE_TO_FUNCTION = {"TripletMarginLoss": "triplet_margin_loss",
                      "TripletMarginWithDistanceLoss": "triplet_margin_with_distance_loss",
                      "MarginRankingLoss": "margin_ranking_loss", "CosineEmbeddingLoss": "cosine_embedding_loss",
                      "HingeEmbeddingLoss": "hinge_embedding_loss"}


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("cls,kwargs", MODULE_CASES, ids=str)
def test_modules(device, cls, kwargs):
    mod, ref_mod = module_pair(cls, kwargs, device)
    _, factory = _calls(fl())[MODULE_TO_FUNCTION[cls]]
    args = factory(device, torch.float32)
    out, ref = mod(*args), ref_mod(*args)
    torch.testing.assert_close(out, ref)
    go = torch.rand_like(ref) + 0.5
    for a, b in zip(torch.autograd.grad(out, diff_of(*args), go), torch.autograd.grad(ref, diff_of(*args), go)):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("p", [1, 1.5, 2, 3, INF])
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_triplet(device, p, swap, reduction):
    args = [torch.randn(4, 5, device=device, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda a, b, c: fl().triplet_margin_loss(
        a, b, c, margin=2.0, p=p, eps=0.1, swap=swap, reduction=reduction), args)
    bshape = [torch.randn(s, device=device, dtype=torch.float64, requires_grad=True) for s in [(3, 4), (1, 4), (3, 4)]]
    assert torch.autograd.gradcheck(lambda a, b, c: fl().triplet_margin_with_distance_loss(
        a, b, c, margin=2.0, swap=swap, reduction=reduction), bshape)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_pairs(device, reduction):
    dt = torch.float64
    x1 = torch.randn(4, 5, device=device, dtype=dt, requires_grad=True)
    x2 = torch.randn(4, 5, device=device, dtype=dt, requires_grad=True)
    t = torch.randn(4, 5, device=device, dtype=dt, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: fl().margin_ranking_loss(a, b, c, margin=0.3, reduction=reduction),
                                    (x1, x2, t))
    x2b = torch.randn(1, 5, device=device, dtype=dt, requires_grad=True)
    tb = torch.randn(4, 1, device=device, dtype=dt, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: fl().margin_ranking_loss(a, b, c, reduction=reduction),
                                    (x1, x2b, tb))
    ct = torch.tensor([1, -1, 1, -1], device=device)
    for margin in [-0.5, 0.0, 0.5]:
        assert torch.autograd.gradcheck(
            lambda a, b: fl().cosine_embedding_loss(a, b, ct, margin=margin, reduction=reduction), (x1, x2))
        assert torch.autograd.gradcheck(
            lambda a, b: fl().cosine_embedding_loss(a, b, ct, margin=margin, reduction=reduction), (x1, x2b))
    v1 = torch.randn(6, device=device, dtype=dt, requires_grad=True)
    v2 = torch.randn(6, device=device, dtype=dt, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: fl().cosine_embedding_loss(a, b, torch.tensor(-1, device=device), margin=-0.5,
                                                reduction=reduction), (v1, v2))
    ht = torch.randint(-1, 2, (4, 5), device=device).to(dt)
    for margin in [1.0, 0.5]:
        assert torch.autograd.gradcheck(
            lambda a: fl().hinge_embedding_loss(a, ht, margin=margin, reduction=reduction), (x1,))
