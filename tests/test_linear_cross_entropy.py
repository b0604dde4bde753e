"""linear_cross_entropy / LinearCrossEntropyLoss (torch >= 2.14): against torch's reference
(cross_entropy(linear(...))) in float64; the chunked path (options given) never makes the whole logits,
runs fastloss's cross-entropy op, and takes every reduction, weight, ignore_index and smoothing."""
import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import DTYPES, assert_close_ref, assert_deterministic, assert_profile_clean, device_params

pytestmark = pytest.mark.skipif(not hasattr(F, "linear_cross_entropy"), reason="torch has no linear_cross_entropy")
FL = fastloss.functional


def _opts(chunk):
    return None if chunk is None else torch.nn.LinearCrossEntropyOptions(batch_chunk_size=chunk)


def _case(device, dtype, N, H, C, bias, weighted, ignore, smoothing):
    g = torch.Generator().manual_seed(sum(N) * 131 + C)
    x = torch.randn(*N, H, generator=g, dtype=torch.float64).to(device, dtype)
    w = (torch.randn(C, H, generator=g, dtype=torch.float64) / H ** 0.5).to(device, dtype)
    b = torch.randn(C, generator=g, dtype=torch.float64).to(device, dtype) if bias else None
    t = torch.randint(0, C, N, generator=g).to(device)
    if ignore is not None and t.numel():
        t.view(-1)[::3] = ignore
    wt = (torch.rand(C, generator=g, dtype=torch.float64) + 0.2).to(device, dtype) if weighted else None
    return x, w, b, t, wt


def _check(device, dtype, N, H, C, reduction, chunk, bias=True, weighted=False, ignore=None, smoothing=0.0):
    x, w, b, t, wt = _case(device, dtype, N, H, C, bias, weighted, ignore, smoothing)
    kw = dict(reduction=reduction, label_smoothing=smoothing, **({} if ignore is None else {"ignore_index": ignore}))
    inputs = [v.requires_grad_() for v in (x, w, b) if v is not None]
    loss = FL.linear_cross_entropy(x, w, t, linear_bias=b, weight=wt, options=_opts(chunk), **kw)
    assert loss.dtype == dtype and loss.device == x.device
    ref_in = [v.detach().cpu().double().requires_grad_() for v in inputs]
    xr, wr, br = ref_in[0], ref_in[1], ref_in[2] if bias else None
    ref = F.linear_cross_entropy(xr, wr, t.cpu(), linear_bias=br, weight=None if wt is None else wt.cpu().double(),
                                 **kw)
    assert_close_ref(loss, ref, dtype, f"loss {reduction} chunk {chunk}")
    go = torch.rand(ref.shape, dtype=torch.float64) + 0.5
    grads = torch.autograd.grad(loss, inputs, go.to(device, dtype))
    refs = torch.autograd.grad(ref, ref_in, go)
    for got, want, what in zip(grads, refs, ["input", "linear_weight", "linear_bias"]):
        assert_close_ref(got, want, dtype, f"grad {what} {reduction} chunk {chunk}")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [None, 1, 5, 64])
def test_matches_torch(device, dtype, reduction, chunk):
    """Whole logits (options=None) and chunks of 1, 5 (17 rows: a partial last chunk) and more than N."""
    _check(device, dtype, (17,), 12, 23, reduction, chunk)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted,ignore,smoothing", [(True, None, 0.0), (False, 3, 0.0), (True, 3, 0.2),
                                                       (False, -100, 0.1), (True, None, 1.0)])
def test_weights_ignore_index_smoothing(device, dtype, reduction, weighted, ignore, smoothing):
    """Class weights, ignore_index (also the default -100), label_smoothing, on the chunked path (torch's own
    chunked path refuses smoothing; fastloss chunks it too) and the whole-logits path."""
    for chunk in (None, 4):
        _check(device, dtype, (19,), 8, 11, reduction, chunk, weighted=weighted, ignore=ignore, smoothing=smoothing)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_unbatched_no_bias_and_empty(device, reduction):
    for chunk in (None, 3):
        _check(device, torch.float64, (), 6, 9, reduction, chunk, bias=False)
        _check(device, torch.float64, (0,), 6, 9, reduction, chunk)  # mean of nothing: NaN, as torch


@pytest.mark.parametrize("device", device_params())
def test_all_ignored_mean(device):
    """Every target ignored: the mean is NaN and the gradients 0, as torch's."""
    x, w, b, t, _ = _case(device, torch.float64, (5,), 4, 6, True, False, None, 0.0)
    t.fill_(-100)
    for chunk in (None, 2):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = FL.linear_cross_entropy(xs, ws, t, linear_bias=b, options=_opts(chunk))
        loss.backward()
        assert loss.isnan() and torch.equal(xs.grad, torch.zeros_like(x)) and torch.equal(ws.grad, torch.zeros_like(w))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("chunk", [None, 6])
def test_chunks_only_never_whole_logits(device, chunk):
    """Every GEMM sees a row chunk (6 rows: batch_chunk_size, or a budget that fits 6 rows of all classes) --
    never the 20 rows at once -- in forward and in 'none''s backward; no aten cross-entropy / log_softmax."""
    x, w, b, t, _ = _case(device, torch.float32, (20,), 8, 30, True, False, None, 0.0)
    budget = None
    if chunk is None:  # the budget alone: find one whose plan is 6 rows of all 30 classes
        budget = next(bb for bb in range(1900, 1 << 20, 16)
                      if torch.ops.fastloss._linear_ce_plan(x, w, b, t, bb, 0, True, [True] * 3)[0] == 6)
    for reduction in ("mean", "none"):
        xs = x.clone().requires_grad_()
        with torch.profiler.profile(record_shapes=True) as prof:
            loss = FL.linear_cross_entropy(xs, w, t, linear_bias=b, reduction=reduction, options=_opts(chunk),
                                           memory_budget=budget)
            loss.sum().backward()
        gemms = [e for e in prof.events() if e.name in ("aten::mm", "aten::addmm", "aten::addmm_")]
        assert len(gemms) >= (4 if reduction == "mean" else 8)  # 4 row chunks: logits (+ recomputed) + 2 grads
        for e in gemms:
            assert all(20 not in shape for shape in e.input_shapes), (e.name, e.input_shapes)
        assert_profile_clean(prof, lambda n: "cross_entropy" in n or "log_softmax" in n or "nll_loss" in n,
                             "fastloss::linear_cross_entropy")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_chunked(device, reduction):
    x, w, b, t, wt = _case(device, torch.float64, (7,), 5, 6, True, True, 2, 0.1)
    x, w, b = (v.requires_grad_() for v in (x, w, b))
    fn = lambda x, w, b: FL.linear_cross_entropy(x, w, t, linear_bias=b, weight=wt, reduction=reduction,  # noqa: E731
                                                 ignore_index=2, label_smoothing=0.1, options=_opts(3))
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("device", device_params())
def test_probabilities_and_k_dim_chunked(device):
    """Probability targets and K-dimensional weights take the chunked op too (no fallback, no warning)."""
    x = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(5, 6, dtype=torch.float64, device=device, requires_grad=True)
    p = torch.rand(4, 5, dtype=torch.float64, device=device).softmax(-1)
    got = FL.linear_cross_entropy(x, w, p, options=_opts(2))
    torch.testing.assert_close(got, F.linear_cross_entropy(x, w, p))
    wk = torch.randn(5, 3, 6, dtype=torch.float64, device=device)
    tk = torch.randint(0, 5, (4, 3), device=device)
    got = FL.linear_cross_entropy(x, wk, tk, reduction="none", options=_opts(2))
    torch.testing.assert_close(got, F.linear_cross_entropy(x, wk, tk, reduction="none"))


def test_bad_inputs_as_torch():
    x, w, t = torch.randn(4, 6), torch.randn(5, 6), torch.tensor([0, 1, 2, 3])
    bad = [
        ((torch.randn(2, 3, 6), w, t), {}),
        ((x, torch.randn(6), t), {}),
        ((x, torch.randn(5, 7), t), {}),
        ((x, w, t), {"linear_bias": torch.randn(4)}),
        ((torch.randn(6), torch.randn(5, 2, 6), torch.tensor(1)), {}),
        ((x, w, torch.rand(4, 5)), {"ignore_index": 1}),
    ]
    for args, kw in bad:
        with pytest.raises(RuntimeError) as ref:
            F.linear_cross_entropy(*args, **kw)
        with pytest.raises(RuntimeError) as got:
            FL.linear_cross_entropy(*args, **kw)
        assert str(got.value) == str(ref.value)
    for chunk in (None, 2):
        with pytest.raises(IndexError, match="Target 5 is out of bounds"):  # the cross-entropy op's (torch's type)
            FL.linear_cross_entropy(x, w, torch.tensor([0, 1, 5, 3]), options=_opts(chunk))
        with pytest.raises(ValueError):
            FL.linear_cross_entropy(x, w, t, reduction="bogus", options=_opts(chunk))


def test_module_and_double_backward():
    """fastloss.LinearCrossEntropyLoss: torch's constructor and state_dict, forward through fastloss; second
    derivatives are refused (as on torch's chunked path)."""
    kw = dict(bias=True, reduction="sum", label_smoothing=0.1, options=_opts(3))
    ours, ref = fastloss.LinearCrossEntropyLoss(6, 5, **kw), torch.nn.LinearCrossEntropyLoss(6, 5, **kw)
    assert isinstance(ours, torch.nn.LinearCrossEntropyLoss)
    ref.load_state_dict(ours.state_dict())
    x, t = torch.randn(7, 6, requires_grad=True), torch.randint(0, 5, (7,))
    with pytest.warns(UserWarning):  # torch's chunked path refuses smoothing and warns
        want = ref(x, t)
    torch.testing.assert_close(ours(x, t), want)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(ours(x, t), x, create_graph=True)


@pytest.mark.parametrize("device", device_params())
def test_deterministic(device):
    x, w, b, t, wt = _case(device, torch.float32, (33,), 16, 40, True, True, 1, 0.1)
    x, w, b = (v.requires_grad_() for v in (x, w, b))

    def run():
        loss = FL.linear_cross_entropy(x, w, t, linear_bias=b, weight=wt, ignore_index=1, label_smoothing=0.1,
                                       options=_opts(8))
        return [loss, *torch.autograd.grad(loss, (x, w, b))]

    assert_deterministic(run, device)


def test_compile_fullgraph():
    x, w, b, t, _ = _case("cpu", torch.float32, (9,), 8, 12, True, False, None, 0.0)
    x.requires_grad_()
    fn = lambda x: FL.linear_cross_entropy(x, w, t, linear_bias=b, options=_opts(4))  # noqa: E731
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    g, = torch.autograd.grad(got, x)
    want = fn(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g, torch.autograd.grad(want, x)[0])
