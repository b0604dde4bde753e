"""Vocab-parallel cross-entropy (fastloss/_vocab_parallel.py): 2 and 3 gloo ranks on the CPU, each holding a
slice of the classes (unequal slices, one of a single class), against torch's cross_entropy on the whole
logits in float64 (softcap and z-loss composed in torch). One spawned world runs every configuration (spawning
costs seconds; the configurations milliseconds)."""
import datetime
import gc
import os
import tempfile
import weakref

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import fastloss
import fastloss.functional as FF
from fastloss import _vocab_parallel

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo")

CUTS = {2: [0, 1, 11], 3: [0, 4, 5, 11]}  # slice boundaries of C = 11 classes: rank 0 / rank 1 hold one class
REDUCTIONS = ("mean", "sum", "none")


def _reference(logits, target, weight, ignore_index, eps, softcap, z_loss, reduction, cdim=1):
    """torch on the whole (capped) logits, plus the z-loss: (loss, lse) with the logits' gradient."""
    z = softcap * torch.tanh(logits / softcap) if softcap else logits
    prob = target.is_floating_point()
    kw = {} if prob else {"ignore_index": ignore_index}
    loss = F.cross_entropy(z, target, weight, reduction=reduction, label_smoothing=eps, **kw)
    lse = torch.logsumexp(z, cdim)
    if z_loss:
        valid = torch.ones_like(lse, dtype=torch.bool) if prob else target != ignore_index
        zt = torch.where(valid, z_loss * lse * lse, torch.zeros_like(lse))
        loss = loss + {"none": zt, "sum": zt.sum(), "mean": zt.sum() / valid.sum()}[reduction]
    return loss, lse.detach()


def _slice(t, dim, a, b):
    return t.narrow(dim, a, b - a).detach().clone()


def _check_ce(rank, world, g, shape, prob, weighted, eps, softcap, z_loss, reduction, cdim=1, cuts=None):
    C = 11
    cuts = cuts or CUTS[world]
    a, b = cuts[rank], cuts[rank + 1]
    full = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    weight = torch.rand(C, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    rows = shape[:cdim] + shape[cdim + 1:]
    if prob:
        target = torch.rand(shape, generator=g, dtype=torch.float64).softmax(cdim)
    else:
        target = torch.randint(0, C, rows, generator=g)
        if target.dim():
            target.view(-1)[0] = -100
    v = torch.randn(rows, generator=g, dtype=torch.float64)  # grad_output of 'none'
    x = full.clone().requires_grad_()
    ref, ref_lse = _reference(x, target, weight, -100, eps, softcap, z_loss, reduction, cdim)
    (ref * v if reduction == "none" else ref).sum().backward()
    xs = _slice(full, cdim, a, b).requires_grad_()
    ts = _slice(target, cdim, a, b) if prob else target
    ws = weight[a:b] if weighted else None
    loss, lse = FF.cross_entropy(xs, ts, ws, reduction=reduction, label_smoothing=eps, softcap=softcap,
                                 z_loss=z_loss, return_lse=True, process_group=dist.group.WORLD)
    (loss * v if reduction == "none" else loss).sum().backward()
    where = f"rank {rank}/{world} shape={shape} prob={prob} weighted={weighted} eps={eps} softcap={softcap} " \
            f"z_loss={z_loss} reduction={reduction}"
    torch.testing.assert_close(loss, ref.detach(), msg=lambda m: f"loss, {where}: {m}")
    torch.testing.assert_close(lse, ref_lse, msg=lambda m: f"lse, {where}: {m}")
    torch.testing.assert_close(xs.grad, _slice(x.grad, cdim, a, b), msg=lambda m: f"grad, {where}: {m}")


def _check_linear(rank, world, g, batched, prob, bias, weighted, eps, softcap, z_loss, reduction, cuts=None):
    C, N, H = 11, 6, 5
    cuts = cuts or CUTS[world]
    a, b = cuts[rank], cuts[rank + 1]
    x0 = torch.randn(N if batched else 1, H, generator=g, dtype=torch.float64)
    W0 = torch.randn(C, H, generator=g, dtype=torch.float64)
    b0 = torch.randn(C, generator=g, dtype=torch.float64) if bias else None
    weight = torch.rand(C, generator=g, dtype=torch.float64) + 0.5 if weighted else None
    if prob:
        target = torch.rand(x0.shape[0], C, generator=g, dtype=torch.float64).softmax(1)
    else:
        target = torch.randint(0, C, (x0.shape[0],), generator=g)
        if batched:
            target[1] = -100
    v = torch.randn(x0.shape[0], generator=g, dtype=torch.float64)
    if not batched:
        x0, target, v = x0[0], target[0], v[0]
    x, W = x0.clone().requires_grad_(), W0.clone().requires_grad_()
    bb = b0.clone().requires_grad_() if bias else None
    ref, ref_lse = _reference(F.linear(x, W, bb), target, weight, -100, eps, softcap, z_loss, reduction,
                              1 if batched else 0)
    (ref * v if reduction == "none" else ref).sum().backward()
    xs = x0.clone().requires_grad_()
    Ws = W0[a:b].clone().requires_grad_()
    bs = b0[a:b].clone().requires_grad_() if bias else None
    ts = _slice(target, target.dim() - 1, a, b) if prob else target
    loss, lse = FF.linear_cross_entropy(xs, Ws, ts, linear_bias=bs, weight=weight[a:b] if weighted else None,
                                        reduction=reduction, label_smoothing=eps, softcap=softcap, z_loss=z_loss,
                                        return_lse=True, process_group=dist.group.WORLD)
    (loss * v if reduction == "none" else loss).sum().backward()
    where = f"linear rank {rank}/{world} batched={batched} prob={prob} bias={bias} weighted={weighted} eps={eps} " \
            f"softcap={softcap} z_loss={z_loss} reduction={reduction}"
    torch.testing.assert_close(loss, ref.detach(), msg=lambda m: f"loss, {where}: {m}")
    torch.testing.assert_close(lse, ref_lse, msg=lambda m: f"lse, {where}: {m}")
    torch.testing.assert_close(xs.grad, x.grad, msg=lambda m: f"grad input, {where}: {m}")
    torch.testing.assert_close(Ws.grad, W.grad[a:b], msg=lambda m: f"grad weight, {where}: {m}")
    if bias:
        torch.testing.assert_close(bs.grad, bb.grad[a:b], msg=lambda m: f"grad bias, {where}: {m}")


def _check_communication(rank, world):
    """Every all-reduce carries O(N) values (N rows), never the N*C logits, except linear CE's N*H input
    gradient."""
    N, C, H = 4, 600, 3
    a, b = rank * C // world, (rank + 1) * C // world
    sizes = []
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        sizes.append(tensor.numel())
        return real(tensor, *args, **kwargs)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, C, generator=g, dtype=torch.float64)
    t = torch.randint(0, C, (N,), generator=g)
    w = torch.rand(C, generator=g, dtype=torch.float64)
    dist.all_reduce = counting
    try:
        for red in REDUCTIONS:
            xs = x[:, a:b].clone().requires_grad_()
            loss = FF.cross_entropy(xs, t, w[a:b], reduction=red, label_smoothing=0.1, z_loss=1e-3,
                                    process_group=dist.group.WORLD)
            loss.sum().backward()
        assert sizes and max(sizes) <= 4 * N + 1, sizes
        sizes.clear()
        xin = torch.randn(N, H, generator=g, dtype=torch.float64, requires_grad=True)
        Wl = torch.randn(C, H, generator=g, dtype=torch.float64)[a:b].requires_grad_()
        for red in REDUCTIONS:
            FF.linear_cross_entropy(xin, Wl, t, reduction=red, process_group=dist.group.WORLD).sum().backward()
        with torch.no_grad():  # no gradient made, none all-reduced (needs_input_grad holds under no_grad)
            FF.linear_cross_entropy(xin, Wl, t, process_group=dist.group.WORLD)
        small = [s for s in sizes if s != N * H]
        assert small and max(small) <= 4 * N + 1, sizes
        assert sizes.count(N * H) == len(REDUCTIONS), sizes  # one input-gradient all-reduce per call
    finally:
        dist.all_reduce = real


def _check_errors(rank, world):
    a, b = CUTS[world][rank], CUTS[world][rank + 1]
    xs = torch.randn(3, b - a, dtype=torch.float64)
    for bad in (11, -1):
        with pytest.raises(IndexError, match=r"\[0, 11\)"):
            FF.cross_entropy(xs, torch.tensor([0, bad, 2]), process_group=dist.group.WORLD)
    with pytest.raises(ValueError, match="weight"):
        FF.cross_entropy(xs, torch.tensor([0, 1, 2]), torch.ones(11, dtype=torch.float64),
                         process_group=dist.group.WORLD)


def _check_modules(rank, world):
    """The modules' process_group= gives the functional result (the weight and the linear rows: this rank's)."""
    a, b = CUTS[world][rank], CUTS[world][rank + 1]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 11, generator=g, dtype=torch.float64)
    t = torch.randint(0, 11, (4,), generator=g)
    w = torch.rand(11, generator=g, dtype=torch.float64)
    pg = dist.group.WORLD
    m = fastloss.CrossEntropyLoss(weight=w[a:b], label_smoothing=0.1, process_group=pg)
    torch.testing.assert_close(m(x[:, a:b], t), F.cross_entropy(x, t, w, label_smoothing=0.1))
    if not hasattr(fastloss, "LinearCrossEntropyLoss"):  # torch >= 2.14 (its base class is torch's)
        return
    lin = fastloss.LinearCrossEntropyLoss(3, b - a, bias=True, dtype=torch.float64, process_group=pg)
    W = torch.randn(11, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(11, generator=g, dtype=torch.float64)
    with torch.no_grad():
        lin.linear.weight.copy_(W[a:b])
        lin.linear.bias.copy_(bias[a:b])
    h = torch.randn(4, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(lin(h, t), F.cross_entropy(F.linear(h, W, bias), t))


def _all_ce(rank, world, g):
    for prob in (False, True):
        for weighted in (False, True):
            for eps in (0.0, 0.1):
                for softcap in (None, 3.0):
                    for z_loss in (0.0, 1e-2):
                        for red in REDUCTIONS:
                            _check_ce(rank, world, g, (7, 11), prob, weighted, eps, softcap, z_loss, red)
    for red in REDUCTIONS:  # K-D and unbatched, class-index and probability targets
        for prob in (False, True):
            _check_ce(rank, world, g, (3, 11, 2, 2), prob, True, 0.1, 2.0, 1e-2, red)
            _check_ce(rank, world, g, (11,), prob, True, 0.1, None, 1e-2, red, cdim=0)


def _all_linear(rank, world, g):
    for prob in (False, True):
        for bias in (False, True):
            for weighted in (False, True):
                for eps, softcap, z_loss in ((0.0, None, 0.0), (0.1, 3.0, 1e-2)):
                    for red in REDUCTIONS:
                        _check_linear(rank, world, g, True, prob, bias, weighted, eps, softcap, z_loss, red)
    for red in REDUCTIONS:
        _check_linear(rank, world, g, False, False, True, True, 0.1, 3.0, 1e-2, red)


def _worker(rank, world, init_file):
    """Every check in one world (spawning costs seconds, a check milliseconds)."""
    # a bounded wait: a collective one rank misses fails the test instead of hanging it
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(1234)  # the same stream on every rank: the same whole inputs
        _all_ce(rank, world, g)
        _all_linear(rank, world, g)
        _check_errors(rank, world)
        _check_modules(rank, world)
        _check_communication(rank, world)
        empty = [0, 0] + CUTS[world][2:]  # rank 0 holds no classes
        # the slice sizes change: every rank forgets the cached offsets (documented; a rank whose size did not
        # change would otherwise skip the all_gather its peers enter)
        _vocab_parallel.clear_layout_cache()
        for prob in (False, True):
            for red in REDUCTIONS:
                _check_ce(rank, world, g, (5, 11), prob, True, 0.1, 3.0, 1e-2, red, cuts=empty)
                _check_linear(rank, world, g, True, prob, True, True, 0.1, 3.0, 1e-2, red, cuts=empty)
        dist.barrier()  # a rank that tears gloo down while a peer still finishes its last all-reduce aborts it
        world_group = weakref.ref(dist.group.WORLD)
    finally:
        dist.destroy_process_group()
    # fastloss keeps no reference to the group: one kept (the layout cache did) outlives destroy_process_group,
    # and gloo's threads then die at interpreter exit, which aborted a rank now and then (SIGABRT)
    gc.collect()
    assert world_group() is None, "the process group outlived destroy_process_group(): something holds it"


@pytest.mark.parametrize("world", [2, 3])
def test_vocab_parallel(world):
    with tempfile.TemporaryDirectory() as d:
        torch.multiprocessing.spawn(_worker, args=(world, os.path.join(d, "init")), nprocs=world)
