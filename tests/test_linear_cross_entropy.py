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


# ------------------------------------------------------------------ the C++ op: budgets, extras, slices
ops = torch.ops.fastloss


def _plan(x, w, b, t, budget, mask=(True, True, True), row_cap=0, acc=True):
    return ops._linear_ce_plan(x, w, b, t, budget, row_cap, acc, list(mask))


def _budget_for(x, w, b, t, class_chunks):
    """The smallest budget whose plan takes row chunks of all classes (class_chunks False) or splits the classes."""
    N, C = x.shape[0], w.shape[0]

    def ok(bb):  # monotone in bb: feasible (class chunks), or all classes in row chunks of > 1 row (rows)
        try:
            rows, classes = _plan(x, w, b, t, bb)[:2]
        except RuntimeError:
            return False
        return True if class_chunks else classes == C and rows > 1

    lo, hi = 64, 1 << 34
    assert ok(hi)
    while lo < hi:  # the smallest bb with ok(bb)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    rows, classes = _plan(x, w, b, t, lo)[:2]
    if class_chunks:
        assert classes < C, "the smallest feasible budget takes all classes at once"
    else:
        assert rows < N, "the smallest budget with row chunks takes every row"
    return lo


def _reference_extras(x, w, b, t, wt, reduction, ignore_index, eps, softcap, z_loss, prob):
    """Whole logits in float64: torch's linear + cross_entropy, softcap and z-loss composed in torch; also lse."""
    C, out = w.shape[0], w.shape[1:-1]
    z = F.linear(x, w.reshape(-1, w.shape[-1]), None if b is None else b.reshape(-1))
    z = z.reshape(*x.shape[:-1], C, *out)
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    kw = {} if prob else {"ignore_index": ignore_index}
    loss = F.cross_entropy(z, t, wt, reduction=reduction, label_smoothing=eps, **kw)
    lse = torch.logsumexp(z, 1 if x.dim() == 2 else 0)
    if z_loss:
        valid = torch.ones_like(lse, dtype=torch.bool) if prob else t != ignore_index
        zt = torch.where(valid, z_loss * lse * lse, torch.zeros_like(lse))
        loss = loss + {"none": zt, "sum": zt.sum(), "mean": zt.sum() / valid.sum()}[reduction]
    return loss, lse.detach()


def _extras_case(dtype, N, H, C, K, prob, weighted, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, H, generator=g, dtype=torch.float64)
    w = torch.randn(C, *K, H, generator=g, dtype=torch.float64) / H ** 0.5 * 3
    b = torch.randn(C, *K, generator=g, dtype=torch.float64) if bias else None
    if prob:
        t = torch.rand(N, C, *K, generator=g, dtype=torch.float64).softmax(1)
    else:
        t = torch.randint(0, C, (N, *K), generator=g)
        t.view(-1)[1::4] = -100
    wt = torch.rand(C, generator=g, dtype=torch.float64) + 0.3 if weighted else None
    return [None if v is None else (v.to(dtype) if v.is_floating_point() else v) for v in (x, w, b, t, wt)]


def _check_extras(dtype, N, H, C, K, prob, weighted, bias, reduction, eps, softcap, z_loss, budget_kind):
    x, w, b, t, wt = _extras_case(dtype, N, H, C, K, prob, weighted, bias)
    budget = None if budget_kind is None else _budget_for(x, w, b, t, budget_kind == "classes")
    ins = [v.clone().requires_grad_() for v in (x, w, b) if v is not None]
    xi, wi, bi = ins[0], ins[1], ins[2] if bias else None
    loss, lse = FL.linear_cross_entropy(xi, wi, t, linear_bias=bi, weight=wt, reduction=reduction,
                                        label_smoothing=eps, softcap=softcap, z_loss=z_loss, return_lse=True,
                                        memory_budget=budget)
    assert loss.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    refs = [v.detach().double().requires_grad_() for v in ins]
    xr, wr, br = refs[0], refs[1], refs[2] if bias else None
    ref, ref_lse = _reference_extras(xr, wr, br, t.double() if prob else t, None if wt is None else wt.double(),
                                     reduction, -100, eps, softcap, z_loss, prob)
    what = f"{reduction} eps {eps} cap {softcap} z {z_loss} budget {budget_kind}"
    assert_close_ref(loss, ref, dtype, "loss " + what)
    assert_close_ref(lse, ref_lse, dtype, "lse " + what)
    go = torch.rand(ref.shape, dtype=torch.float64) + 0.5
    got = torch.autograd.grad(loss, ins, go.to(dtype))
    want = torch.autograd.grad(ref, refs, go)
    for gg, ww, name in zip(got, want, ["input", "linear_weight", "linear_bias"]):
        assert_close_ref(gg, ww, dtype, f"grad {name} " + what)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_extras_under_torch_func(dtype, prob, reduction):
    """Under a torch.func transform the extras are composed of torch ops: the loss, lse (its dtype too) and the
    gradients of input, linear weight and bias are the eager call's."""
    x, w, b, t, wt = _extras_case(dtype, 6, 5, 9, (), prob, True, True, seed=3)
    kw = dict(weight=wt, reduction=reduction, label_smoothing=0.1, softcap=2.0, z_loss=1e-2, return_lse=True)

    def f(xi, wi, bi):
        loss, lse = FL.linear_cross_entropy(xi, wi, t, linear_bias=bi, **kw)
        return loss.float().sum(), (loss, lse)

    grads, (loss, lse) = torch.func.grad(f, argnums=(0, 1, 2), has_aux=True)(x, w, b)
    ins = [v.clone().requires_grad_() for v in (x, w, b)]
    e_loss, e_lse = FL.linear_cross_entropy(ins[0], ins[1], t, linear_bias=ins[2], **kw)
    want = torch.autograd.grad(e_loss.float().sum(), ins)
    assert (loss.dtype, lse.dtype) == (e_loss.dtype, e_lse.dtype)
    tol = {} if dtype == torch.float64 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(loss, e_loss.detach(), **tol)
    torch.testing.assert_close(lse, e_lse, **tol)
    for got, exp, name in zip(grads, want, ["input", "linear_weight", "linear_bias"]):
        torch.testing.assert_close(got, exp, **tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("prob,weighted", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("eps,softcap,z_loss", [(0.0, None, 0.0), (0.1, 2.0, 0.0), (0.0, None, 1e-2),
                                                (0.2, 1.5, 1e-2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("budget_kind", [None, "rows", "classes"])
def test_every_combination_float64(prob, weighted, eps, softcap, z_loss, reduction, budget_kind):
    """Every argument at once, against the whole logits in float64: one pass (default budget), row chunks,
    class chunks (a budget below one row block of all the classes)."""
    _check_extras(torch.float64, 11, 5, 13, (), prob, weighted, True, reduction, eps, softcap, z_loss, budget_kind)


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("budget_kind", [None, "classes"])
def test_extras_dtypes(dtype, prob, budget_kind):
    for reduction in ("mean", "none"):
        _check_extras(dtype, 9, 16, 21, (), prob, True, True, reduction, 0.1, 3.0, 1e-3, budget_kind)


@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("budget_kind", [None, "rows", "classes"])
def test_k_dim_chunked(prob, budget_kind):
    """K-dimensional linear_weight (C, d1, d2, H): the d positions are another chunk dimension."""
    for reduction in ("mean", "none"):
        _check_extras(torch.float64, 5, 4, 7, (2, 3), prob, True, True, reduction, 0.1, 2.0, 1e-2, budget_kind)


def test_uint8_targets_and_unbatched():
    x, w, b, t, wt = _extras_case(torch.float64, 6, 4, 9, (), False, True, True)
    t = t.clamp(min=0)
    got = FL.linear_cross_entropy(x, w, t.to(torch.uint8), linear_bias=b, weight=wt)
    torch.testing.assert_close(got, F.linear_cross_entropy(x, w, t, linear_bias=b, weight=wt))
    loss, lse = FL.linear_cross_entropy(x[2], w, t[2], linear_bias=b, reduction="none", return_lse=True, z_loss=0.1)
    ref, ref_lse = _reference_extras(x[2], w, b, t[2], None, "none", -100, 0.0, None, 0.1, False)
    assert loss.shape == () and lse.shape == ()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(lse, ref_lse)


def test_autocast_cpu():
    """Under autocast: the GEMMs in bfloat16, the loss math and the loss in float32, as torch's."""
    x, w, b, t, _ = _extras_case(torch.float32, 12, 16, 10, (), False, False, True)
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        budget = _budget_for(x.bfloat16(), w.bfloat16(), b.bfloat16(), t, False)  # the GEMMs' dtype
        got = FL.linear_cross_entropy(x, w, t, linear_bias=b, memory_budget=budget)
        want = F.linear_cross_entropy(x, w, t, linear_bias=b)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    gx, = torch.autograd.grad(got, x)
    assert gx.dtype == torch.float32
    torch.testing.assert_close(gx, torch.autograd.grad(want, x)[0], rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("prob", [False, True])
def test_gradcheck_small_budget(reduction, prob):
    x, w, b, t, wt = _extras_case(torch.float64, 6, 3, 7, (), prob, True, True)
    budget = _budget_for(x, w, b, t, True)
    x, w, b = (v.requires_grad_() for v in (x, w, b))
    fn = lambda x, w, b: FL.linear_cross_entropy(x, w, t, linear_bias=b, weight=wt, reduction=reduction,  # noqa: E731
                                                 label_smoothing=0.1, softcap=2.0, z_loss=0.05, memory_budget=budget)
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("budget_kind", [None, "rows", "classes"])
def test_deterministic_budgets(dtype, budget_kind):
    x, w, b, t, wt = _extras_case(dtype, 33, 16, 40, (), False, True, True)
    budget = None if budget_kind is None else _budget_for(x, w, b, t, budget_kind == "classes")
    x, w, b = (v.requires_grad_() for v in (x, w, b))

    def run():
        loss, lse = FL.linear_cross_entropy(x, w, t, linear_bias=b, weight=wt, label_smoothing=0.1, softcap=5.0,
                                            z_loss=1e-3, return_lse=True, memory_budget=budget)
        return [loss, lse, *torch.autograd.grad(loss, (x, w, b))]

    assert_deterministic(run, "cpu")


@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("half", [False, True])
def test_plan_within_budget(prob, half):
    """The plan's counted bytes never pass the budget, whatever the budget; small budgets chunk rows, then
    classes; the float32 weight-gradient accumulator is used only when there are several row chunks."""
    dtype = torch.bfloat16 if half else torch.float32
    x, w, b, t, _ = _extras_case(dtype, 300, 64, 500, (), prob, False, True)
    seen = set()
    for budget in [1 << 30, 1 << 24, 1 << 21, 1 << 19, 1 << 17, 40000, 32000, 30000, 28000, 20000]:
        for mask in [(True, True, True), (False, False, False), (True, False, False)]:
            try:
                rows, classes, nbytes, used_budget, acc = _plan(x, w, b, t, budget, mask)
            except RuntimeError as e:
                assert "too small" in str(e)
                continue
            assert used_budget == budget and 0 < nbytes <= budget, (budget, mask, nbytes)
            assert 1 <= rows <= 300 and 1 <= classes <= 500
            assert not acc or (half and mask[1] and rows < 300)
            seen.add((rows == 300, classes == 500))
    assert {(True, True), (False, True), (False, False)} <= seen  # one chunk, row chunks, class chunks
    assert _plan(x, w, b, t, 1 << 24, row_cap=7)[0] == 7  # options.batch_chunk_size caps the rows


def test_process_wide_budget():
    x, w, b, t, _ = _extras_case(torch.float32, 300, 64, 500, (), False, False, True)
    previous = fastloss.set_linear_ce_memory_budget(1 << 19)
    try:
        assert previous == 256 << 20
        assert _plan(x, w, b, t, 0)[3] == 1 << 19
        assert fastloss.set_linear_ce_memory_budget(1 << 20) == 1 << 19
    finally:
        fastloss.set_linear_ce_memory_budget(previous)
    assert _plan(x, w, b, t, 0)[3] == 256 << 20
    with pytest.raises(ValueError):
        fastloss.set_linear_ce_memory_budget(0)


@pytest.mark.skipif(not torch.cuda.is_available() or not fastloss.cuda_built(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("budget", [1 << 20, 8 << 20])
def test_cuda_peak_memory_within_budget(budget):
    """Measured: peak CUDA memory beyond the inputs and their gradients stays within the budget."""
    dev = "cuda"
    x, w, b, t, wt = (v.to(dev) if v is not None else None
                      for v in _extras_case(torch.bfloat16, 2048, 256, 8192, (), False, True, True))
    x, w, b = (v.requires_grad_() for v in (x, w, b))
    torch.cuda.synchronize()
    grads = [torch.empty_like(v) for v in (x, w, b)]  # what the gradients will take
    base = torch.cuda.memory_allocated() + 512 * 8  # the loss and small scalars' slack
    del grads
    torch.cuda.reset_peak_memory_stats()
    loss = FL.linear_cross_entropy(x, w, t, linear_bias=b, weight=wt, label_smoothing=0.1, z_loss=1e-4,
                                   memory_budget=budget)
    loss.backward()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= budget


def _slices_case(prob, weighted):
    x, w, b, t, wt = _extras_case(torch.float64, 9, 5, 17, (), prob, weighted, True, seed=3)
    return x, w, b, t, wt


@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_slice_ops_match_partial_steps(prob, weighted):
    """linear_ce_stats / linear_ce_grad over class slices (with a budget splitting each slice) equal the
    ce_partial steps over the whole logits; grad_input adds up over slices."""
    x, w, b, t, wt = _slices_case(prob, weighted)
    C = w.shape[0]
    logits = F.linear(x, w, b)
    ref_stats = ops.ce_partial_stats(logits, t, wt, 0, C, -100, 0.1, 2.0)
    coef = torch.rand(x.shape[0], 4, dtype=torch.float64) + 0.1
    ref_g = ops.ce_partial_grad(logits, t, wt, coef, 0, -100, 2.0)
    stats, gx = None, torch.zeros_like(x)
    for lo, hi in [(0, 6), (6, 7), (7, 17)]:
        sl = slice(lo, hi)
        tt = t[:, sl] if prob else t
        ww = None if wt is None else wt[sl]
        small = _budget_for(x, w[sl], b[sl], tt, True) if hi - lo > 1 else 1 << 20  # splits the slice's classes
        for budget in (1 << 20, small):
            s = ops.linear_ce_stats(x, w[sl], b[sl], tt, ww, lo, C, -100, 0.1, 2.0, budget)
            gi, gw, gb = ops.linear_ce_grad(x, w[sl], b[sl], tt, ww, coef, lo, -100, 2.0, budget, [True, True, True])
            torch.testing.assert_close(s, ops.ce_partial_stats(logits[:, sl], tt, ww, lo, C, -100, 0.1, 2.0))
            torch.testing.assert_close(gw, ref_g[:, sl].t() @ x)
            torch.testing.assert_close(gb, ref_g[:, sl].sum(0))
        stats = s if stats is None else ops.ce_partial_merge(stats, s)
        gx += gi
    torch.testing.assert_close(stats, ref_stats)
    torch.testing.assert_close(gx, ref_g @ w)


def test_opcheck_ops():
    x, w, b, t, wt = _extras_case(torch.float32, 7, 4, 9, (), False, True, True)
    p = _extras_case(torch.float32, 7, 4, 9, (), True, False, False)[3]
    coef = torch.rand(7, 4)
    small = _budget_for(x, w, None, p, True)  # class chunks
    cases = [
        (ops.linear_ce_stats.default, (x, w, b, t, wt, 0, 9, -100, 0.1, 2.0, 1 << 20)),
        (ops.linear_ce_stats.default, (x, w, None, p, None, 0, 9, -100, 0.0, None, small)),
        (ops.linear_ce_grad.default, (x, w, b, t, wt, coef, 0, -100, 2.0, 1 << 20, [True, True, True])),
        (ops.linear_ce_grad.default, (x, w, None, p, None, coef, 0, -100, None, small, [True, False, False])),
        (ops._linear_cross_entropy_forward.default, (x, w, b, t, wt, 1, -100, 0.1, 2.0, 1e-2, 0, 0, True,
                                            [True, True, True])),
        (ops._linear_cross_entropy_forward.default, (x, w, None, p, None, 0, -100, 0.0, None, 0.0, small, 3, True,
                                            [False, False, False])),
        (ops._linear_cross_entropy_backward.default, (torch.rand(7), x, w, b, t, wt, 0, -100, 0.1, 2.0, 1e-2, 0, 0,
                                                     True, [True, True, True])),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
    # the autograd registration: through the public op with inputs requiring grad
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    torch.library.opcheck(ops._linear_cross_entropy_forward.default,
                          (xg, wg, b, t, wt, 2, -100, 0.1, 2.0, 1e-2, 0, 0, True, [False, False, False]),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_compile_fullgraph_extras():
    x, w, b, t, _ = _extras_case(torch.float32, 9, 8, 12, (), False, False, True)
    x.requires_grad_()
    budget = _budget_for(x, w, b, t, True)
    fn = lambda x: FL.linear_cross_entropy(x, w, t, linear_bias=b, softcap=3.0, z_loss=1e-2,  # noqa: E731
                                           memory_budget=budget)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    want = fn(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


def test_bad_extras():
    x, w, b, t, _ = _extras_case(torch.float32, 5, 4, 6, (), False, False, True)
    with pytest.raises(RuntimeError, match="memory_budget of 8 bytes is too small"):
        FL.linear_cross_entropy(x, w, t, memory_budget=8)
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="memory_budget"):
            FL.linear_cross_entropy(x, w, t, memory_budget=bad)
    with pytest.raises(ValueError, match="softcap"):
        FL.linear_cross_entropy(x, w, t, softcap=-1.0)
    p = torch.rand(5, 6).softmax(1).requires_grad_()
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'target'"):
        FL.linear_cross_entropy(x, w, p)
    with pytest.raises(RuntimeError, match="weight of the input's dtype|expected scalar type"):
        FL.linear_cross_entropy(x, w, t, weight=torch.ones(6, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="linear_ce_stats: expected the slice"):
        ops.linear_ce_stats(x, w, None, t, None, 3, 6, -100, 0.0, None, 0)


def test_module_extras():
    m = fastloss.LinearCrossEntropyLoss(6, 5, bias=True, z_loss=1e-2, softcap=4.0, return_lse=True,
                                        memory_budget=1 << 16)
    x, t = torch.randn(7, 6, dtype=torch.float64), torch.randint(0, 5, (7,))
    m = m.double()
    loss, lse = m(x, t)
    ref, ref_lse = _reference_extras(x, m.linear.weight, m.linear.bias, t, None, "mean", -100, 0.0, 4.0, 1e-2, False)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(lse, ref_lse)


def _cpu_peak_bytes(fn):
    """Peak of the CPU bytes allocated (running sum of the profiler's allocation / free records, in order)
    while fn() runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                     key=lambda e: e.start_ns())
    cur = peak = 0
    for e in records:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def _gemm_scratch(R, C, H, dtype):
    """The most the three chunk GEMMs (logits, grad_input, grad_weight) allocate for themselves on the CPU: the
    library's packing buffers (oneDNN for half/bfloat16), which the budget leaves out (ops/linear_cross_entropy.cpp)."""
    x, w, g = torch.randn(R, H, dtype=dtype), torch.randn(C, H, dtype=dtype), torch.randn(R, C, dtype=dtype)
    gx, gw = torch.zeros(R, H, dtype=dtype), torch.zeros(C, H, dtype=dtype)
    peaks = [_cpu_peak_bytes(f) for f in (lambda: torch.mm(x, w.t(), out=g), lambda: gx.addmm_(g, w),
                                         lambda: gw.addmm_(g.t(), x))]
    return max(peaks)


@pytest.mark.parametrize("dtype,prob,reduction,extras,kind", [
    (torch.float32, False, "mean", False, "rows"),
    # bfloat16 with a bias: the CPU bias gradient's float32 column sums (once an uncounted whole-chunk copy)
    (torch.bfloat16, False, "sum", True, "rows"),
    (torch.float16, False, "mean", False, "rows"),
    (torch.float32, True, "none", True, "rows"),
])
def test_cpu_peak_memory_within_budget(dtype, prob, reduction, extras, kind):
    """Measured (CPU allocations, profiler): forward + backward allocate at most the budget beyond the
    gradients they return (and the GEMM library's own scratch, measured alone at the chunk's shapes), for budgets
    far below the whole logits (N*C*4 = 8 MB here). (Class-chunk budgets
    are checked through the plan only: their thousands of small chunks make the profiler's record huge.)"""
    x, w, b, t, wt = _extras_case(dtype, 512, 64, 4000, (), prob, not prob, True)
    budget = _budget_for(x, w, b, t, kind == "classes") * (1 if kind == "classes" else 4)
    assert 4 * 512 * 4000 > 4 * budget
    x, w, b = (v.requires_grad_() for v in (x, w, b))
    kw = dict(softcap=20.0, z_loss=1e-4, label_smoothing=0.1) if extras else {}

    def step():
        loss = FL.linear_cross_entropy(x, w, t, linear_bias=b, weight=wt, reduction=reduction,
                                       memory_budget=budget, **kw)
        loss.sum().backward()

    peak = _cpu_peak_bytes(step)
    grads = sum(v.numel() * v.element_size() for v in (x, w, b))
    rows, classes = _plan(x, w, b, t, budget)[:2]
    scratch = _gemm_scratch(rows, classes, x.shape[1], dtype)
    assert x.grad is not None and peak > grads  # the measurement sees the call
    assert peak - grads <= budget + scratch, (peak, grads, budget, scratch)
