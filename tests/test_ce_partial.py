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


# ---------------------------------------------------------------------------------------------------
# The fused kernels (csrc/cpu/ce_partial.cpp, csrc/cuda/ce_partial.cu) against a float64 oracle of
# ce_partial_stats / ce_partial_grad written here in torch ops (the contract of ops/ce_partial.h).
from conftest import assert_close_ref, assert_deterministic, call_and_check, device_params, requires_cuda  # noqa: E402


def _stats_oracle(x, target, weight, offset, C, ignore_index, eps, softcap):
    z = x.double()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    R, Cs = z.shape
    m = z.max(1).values if Cs else torch.full((R,), -float("inf"), dtype=torch.float64, device=z.device)
    s = torch.exp(z - torch.where(m == -float("inf"), torch.zeros_like(m), m)[:, None]).sum(1)
    w = weight.double() if weight is not None else None
    zero = torch.zeros_like(m)
    if target.is_floating_point():
        t = target.double() * (1 - eps) + eps / C
        if w is not None:
            t = t * w
        a, b, c = t.sum(1), (t * z).sum(1), zero
    else:
        t = target.long()
        loc = t - offset
        inside = (t != ignore_index) & (loc >= 0) & (loc < Cs)
        li = loc.clamp(0, max(Cs - 1, 0))
        a = torch.where(inside, z.gather(1, li[:, None])[:, 0], zero) if Cs else zero
        b = torch.where(inside, w[li] if w is not None else torch.ones_like(m), zero) if Cs else zero
        c = ((z * w).sum(1) if w is not None else z.sum(1)) if eps > 0 else zero
    return torch.stack([m, s, a, b, c], 1)


def _grad_oracle(x, target, weight, k, offset, ignore_index, softcap):
    z = x.double()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    k = k.double()
    lse, A, B1, B0 = (k[:, i:i + 1] for i in range(4))
    w = weight.double() if weight is not None else torch.ones(z.shape[1], dtype=torch.float64, device=z.device)
    g = torch.exp(z - lse) * A
    if target.is_floating_point():
        g = g - w * (target.double() * B1 + B0)
    else:
        g = g - B1 * w
        t = target.long()
        loc = t - offset
        hit = (torch.arange(z.shape[1], device=z.device)[None, :] == loc[:, None]) & (t != ignore_index)[:, None]
        g = g - torch.where(hit, B0, torch.zeros_like(B0))
        g = torch.where((t != ignore_index)[:, None], g, torch.zeros_like(g))
    if softcap:
        g = g * (1 - (z / softcap) ** 2)
    return g


def _case(R, Cs, dtype, device, prob, weighted, wdtype=None, tdtype=torch.int64, seed=0, C=None, offset=0):
    g = torch.Generator().manual_seed(seed)
    C = C or Cs + offset
    x = (torch.randn(R, Cs, generator=g, dtype=torch.float64) * 4).to(dtype)
    weight = (torch.rand(Cs, generator=g, dtype=torch.float64) + 0.5).to(wdtype or dtype) if weighted else None
    if prob:
        target = torch.rand(R, Cs, generator=g, dtype=torch.float64).softmax(1).to(dtype)
    else:
        hi = min(C, 255) if tdtype == torch.uint8 else C
        target = torch.randint(0, hi, (R,), generator=g).to(tdtype)
        if tdtype != torch.uint8 and R > 2:
            target[1] = -100
    k = torch.randn(R, 4, generator=g, dtype=torch.float64)
    k[:, 0] = k[:, 0] + 6  # an lse above most logits
    kdt = torch.float64 if dtype == torch.float64 else torch.float32
    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    return dev(x), dev(target), dev(weight), k.to(kdt).to(device), C


DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _check(x, target, weight, k, C, offset, eps, softcap, what=""):
    dtype = x.dtype
    ign = -100
    st = call_and_check(lambda: ops.ce_partial_stats(x, target, weight, offset, C, ign, eps, softcap))
    assert st.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref = _stats_oracle(x.cpu(), target.cpu(), None if weight is None else weight.cpu(), offset, C, ign, eps, softcap)
    # stats are accumulated in float32 (float64) from the same logits: float32 tolerances for half types
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    for col in range(5):
        assert_close_ref(st[:, col], ref[:, col], sdt, what=f"loss stats[{col}] {what}", floor=1.0)
    g = ops.ce_partial_grad(x, target, weight, k, offset, ign, softcap)
    assert g.dtype == dtype and g.shape == x.shape
    gref = _grad_oracle(x.cpu(), target.cpu(), None if weight is None else weight.cpu(), k.cpu(), offset, ign,
                        softcap)
    assert_close_ref(g, gref, dtype, what=f"grad {what}")
    g2 = x.clone()
    ops.ce_partial_grad_(g2, target, weight, k, offset, ign, softcap)
    assert torch.equal(g2, g), "in place differs from out of place"


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("eps,softcap", [(0.0, None), (0.1, None), (0.1, 5.0)])
def test_kernels_match_oracle(device, dtype, prob, weighted, eps, softcap):
    for R, Cs, offset in ((9, 37, 0), (5, 300, 40), (3, 1, 7)):
        x, target, weight, k, C = _case(R, Cs, dtype, device, prob, weighted, offset=offset, C=Cs + 50)
        _check(x, target, weight, k, C, offset, eps, softcap, what=f"R={R} Cs={Cs}")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uint8_targets_and_weight_dtype(device, dtype):
    x, target, weight, k, C = _case(6, 70, dtype, device, False, True, wdtype=torch.float64, tdtype=torch.uint8)
    _check(x, target, weight, k, C, 0, 0.1, None)
    x, target, weight, k, C = _case(6, 70, dtype, device, False, True, wdtype=torch.float16, offset=30, C=200)
    _check(x, target, weight, k, C, 30, 0.0, None)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("prob", [False, True])
def test_noncontiguous(device, prob):
    x, target, weight, k, C = _case(8, 50, torch.float32, device, prob, True)
    xt = x.t().contiguous().t()  # column-major
    xs = torch.cat([x, x], 1)[:, ::2]  # strided columns
    xs.copy_(x)
    for v in (xt, xs):
        assert not v.is_contiguous()
        st = ops.ce_partial_stats(v, target, weight, 0, C, -100, 0.1, None)
        assert torch.equal(st, ops.ce_partial_stats(x, target, weight, 0, C, -100, 0.1, None))
        g = ops.ce_partial_grad(v, target, weight, k, 0, -100, 2.0)
        assert torch.equal(g, ops.ce_partial_grad(x, target, weight, k, 0, -100, 2.0))
        v2 = xt.clone() if v is xt else torch.cat([x, x], 1)[:, ::2]
        v2.copy_(x)
        ops.ce_partial_grad_(v2, target, weight, k, 0, -100, 2.0)
        assert torch.equal(v2, g)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("R,Cs", [(0, 10), (4, 0), (0, 0)])
def test_empty(device, R, Cs):
    x = torch.randn(R, Cs, device=device)
    t = torch.zeros(R, dtype=torch.long, device=device)
    st = ops.ce_partial_stats(x, t, None, 0, 10, -100, 0.0, None)
    ref = _stats_oracle(x.cpu(), t.cpu(), None, 0, 10, -100, 0.0, None)
    assert st.shape == (R, 5)
    assert torch.equal(st.cpu().double(), ref)
    k = torch.zeros(R, 4, device=device)
    assert ops.ce_partial_grad(x, t, None, k, 0, -100, None).shape == (R, Cs)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("prob", [False, True])
def test_large_slice(device, dtype, prob):
    """Cs = 70000 + 13: the vector tails of the CPU rows and the block-per-row CUDA path."""
    x, target, weight, k, C = _case(3, 70013, dtype, device, prob, not prob, offset=1000, C=100000)
    if not prob:
        target[0] = 1000 + 70012  # the last class of the slice
    st = ops.ce_partial_stats(x, target, weight, 1000, C, -100, 0.05, None)
    k[:, 0] = (st[:, 0] + st[:, 1].log()).to(k.dtype)  # the slice's own lse: O(1) probabilities
    _check(x, target, weight, k, C, 1000, 0.05, None)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_nonfinite_logits(device, dtype):
    x, target, weight, k, C = _case(6, 40, dtype, device, False, True)
    x[0, 3] = float("inf")
    x[2, :] = -float("inf")
    x[3, 5] = -float("inf")
    x[4, 7] = float("nan")
    target[0], target[2], target[4] = 3, 4, 7
    st = ops.ce_partial_stats(x, target, weight, 0, C, -100, 0.1, None).cpu().double()
    ref = _stats_oracle(x.cpu(), target.cpu(), weight.cpu(), 0, C, -100, 0.1, None)
    # the max skips a NaN (the vector max does), torch's propagates it: compare lse = m + log s instead
    lse, rlse = st[:, 0] + st[:, 1].log(), ref[:, 0] + ref[:, 1].log()
    assert torch.equal(lse.isnan(), rlse.isnan())
    assert torch.equal(lse[rlse.isinf()], rlse[rlse.isinf()])
    assert torch.equal(st[2, :2], torch.tensor([-float("inf"), 0.0], dtype=torch.float64))
    for col in (2, 3, 4):
        assert_close_ref(st[:, col], ref[:, col], torch.float32, what=f"loss stats[{col}]")
    k[:, 0] = torch.where(rlse.isfinite(), rlse, torch.zeros_like(rlse)).to(k.dtype).to(device)
    g = ops.ce_partial_grad(x, target, weight, k, 0, -100, None)
    gref = _grad_oracle(x.cpu(), target.cpu(), weight.cpu(), k.cpu(), 0, -100, None)
    assert_close_ref(g, gref, dtype, what="grad")


@pytest.mark.parametrize("tdtype", [torch.int64, torch.uint8])
def test_bad_target_raises_cpu(tdtype):
    x = torch.randn(5, 8)
    t = torch.tensor([1, 2, 30, 3, 40], dtype=tdtype)
    with pytest.raises(IndexError, match=r"fastloss\.ce_partial_stats: Target 30 is out of bounds.*position 2\)"):
        ops.ce_partial_stats(x, t, None, 8, 20, -100, 0.0, None)
    t = torch.tensor([1, -100, -1, 3, 4])
    with pytest.raises(IndexError, match=r"Target -1 is out of bounds.*position 2\)"):
        ops.ce_partial_stats(x, t, None, 0, 20, -100, 0.0, None)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=requires_cuda)])
def test_bad_target_reported_cuda(device):
    """CUDA: the kernel records the first bad position; the error is raised right after (no host sync)."""
    x = torch.randn(5, 8, device=device)
    t = torch.tensor([1, 2, 30, 3, 40], device=device)
    with pytest.raises(IndexError, match=r"fastloss\.ce_partial_stats: Target 30 is out of bounds.*position 2\)"):
        call_and_check(lambda: ops.ce_partial_stats(x, t, None, 8, 20, -100, 0.0, None))
    # the gradient never reads or writes out of bounds with an unvalidated target
    g = ops.ce_partial_grad(x, t, None, torch.zeros(5, 4, device=device), 8, -100, None)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("prob", [False, True])
def test_opcheck(device, prob):
    x, target, weight, k, C = _case(4, 33, torch.float32, device, prob, True)
    torch.library.opcheck(ops.ce_partial_stats, (x, target, weight, 0, C, -100, 0.1, 3.0))
    torch.library.opcheck(ops.ce_partial_grad, (x, target, weight, k, 0, -100, 3.0))
    torch.library.opcheck(ops.ce_partial_grad_, (x.clone(), target, weight, k, 0, -100, 3.0))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prob", [False, True])
def test_deterministic_threads(device, dtype, prob):
    x, target, weight, k, C = _case(64, 3000, dtype, device, prob, True)

    def run():
        st = ops.ce_partial_stats(x, target, weight, 0, C, -100, 0.1, 2.0)
        g = x.clone()
        ops.ce_partial_grad_(g, target, weight, k, 0, -100, 2.0)
        return st, g
    assert_deterministic(run, device)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("col", [0, 8])  # a full vector lane / the CPU row tail
def test_softcap_accuracy(device, col):
    """z_t = cap * tanh(x_t / cap) (stats column 2) over the whole range, +-inf and NaN, against float64."""
    v = torch.cat([torch.logspace(-30, 4, 300, dtype=torch.float64), torch.tensor([0.0, float("inf")])])
    v = torch.cat([v, -v, torch.tensor([float("nan")], dtype=torch.float64)]).float()
    x = torch.zeros(v.numel(), 9)
    x[:, col] = v
    t = torch.full((v.numel(),), col)
    st = ops.ce_partial_stats(x.to(device), t.to(device), None, 0, 9, -100, 0.0, 7.0)[:, 2].cpu().double()
    ref = 7.0 * torch.tanh(v.double() / 7.0)
    assert torch.equal(st.isnan(), ref.isnan())
    ok = ~ref.isnan()
    torch.testing.assert_close(st[ok], ref[ok], rtol=5e-7, atol=1e-37)


@pytest.mark.parametrize("device", device_params())
def test_grad_unvalidated_targets_stay_in_bounds(device):
    """ce_partial_grad does not validate (stats did): a target outside the slice or outside [0, C) only
    loses its -B0 term, it is never used as an index."""
    x = torch.randn(4, 8, device=device)
    t = torch.tensor([-5, 1000, 8 + 3, -100], device=device)
    k = torch.tensor([[1.0, 0.5, 0.1, 0.7]], device=device).expand(4, 4).contiguous()
    g = ops.ce_partial_grad(x, t, None, k, 8, -100, None).cpu().double()
    ref = _grad_oracle(x.cpu(), t.cpu(), None, k.cpu(), 8, -100, None)
    assert_close_ref(g, ref, torch.float32, what="grad")
    assert (g[3] == 0).all()  # the ignored row
