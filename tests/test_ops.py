"""The registered ops themselves: float64 gradcheck, torch.library.opcheck, torch.compile
(fullgraph), bitwise determinism, and the documented torch-op compositions."""
import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import assert_compiled_matches, device_params, make_class_target, requires_cuda

CE = fastloss.functional.cross_entropy


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 2), (6,)])
def test_gradcheck_class_targets(device, reduction, weighted, label_smoothing, shape):
    C = shape[0] if len(shape) == 1 else shape[1]
    x = torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)
    t = make_class_target(shape, device, ignore_frac=0.25)
    w = torch.rand(C, device=device, dtype=torch.float64) + 0.1 if weighted else None
    assert torch.autograd.gradcheck(
        lambda inp: CE(inp, t, weight=w, reduction=reduction, label_smoothing=label_smoothing), (x,))
    assert torch.autograd.gradcheck(lambda inp: fastloss.functional.nll_loss(inp, t, weight=w, reduction=reduction),
                                    (x,))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3)])
def test_gradcheck_probability_targets(device, reduction, shape):
    x = torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)
    q = torch.rand(shape, device=device, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(shape[1], device=device, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: CE(a, b, weight=c, reduction=reduction, label_smoothing=0.2),
                                    (x, q, w))


def _op_cases(device):
    x = torch.randn(6, 11, device=device, requires_grad=True)
    xk = torch.randn(3, 5, 4, device=device, dtype=torch.float64, requires_grad=True)
    t = make_class_target((6, 11), device)
    tk = make_class_target((3, 5, 4), device)
    q = torch.randn(6, 11, device=device).softmax(1).requires_grad_()
    w = torch.rand(11, device=device)
    ops = torch.ops.fastloss
    return [
        (ops._cross_entropy_forward.default, (x, t, None, 1, -100, 0.0, True, False, None)),
        (ops._cross_entropy_forward.default, (x, t, w, 0, -100, 0.2, True, False, None)),
        (ops._cross_entropy_forward.default, (x.bfloat16().detach().requires_grad_(), t, None, 2, -100, 0.1, True,
                                              False, torch.float32)),
        (ops._cross_entropy_forward.default, (xk, tk, None, 1, -100, 0.0, True, False, None)),
        (ops._cross_entropy_forward.default, (x, q, w, 1, -100, 0.1, True, True, None)),
        (ops.nll_loss.default, (x, t, w, 1, -100, None)),
        (ops.nll_loss.default, (xk, tk, None, 0, -100, None)),
        (ops.scale_grad.default, (torch.randn(6, 11, device=device), torch.rand(6, device=device), 11, 1)),
        (ops.scale_grad_.default, (torch.randn(6, 11, device=device), torch.rand((), device=device), 11, 1)),
    ]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", range(9))
def test_opcheck(device, case):
    op, args = _op_cases(device)[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", device_params())
def test_compile_fullgraph_aot_eager(device):
    """The ops trace (fake kernels, autograd, autocast rule) with no graph break."""
    def step(x, t, q, w):
        a = CE(x, t, weight=w, label_smoothing=0.1)
        b = CE(x, q, reduction="sum")
        c = fastloss.functional.nll_loss(x.log_softmax(-1), t, reduction="none").sum()
        return a + b + c

    x = torch.randn(8, 33, device=device, requires_grad=True)
    t = make_class_target((8, 33), device)
    q = torch.randn(8, 33, device=device).softmax(1)
    w = torch.rand(33, device=device)
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    assert_compiled_matches(compiled, lambda x, t, q, w: F.cross_entropy(x, t, weight=w, label_smoothing=0.1)
                            + F.cross_entropy(x, q, reduction="sum")
                            + F.nll_loss(x.log_softmax(-1), t, reduction="none").sum(), (x, t, q, w), [x])


@pytest.mark.compile
@pytest.mark.parametrize("device", device_params())
def test_compile_fullgraph_inductor(device):
    def step(x, t):
        return CE(x * 2.0, t, label_smoothing=0.1)

    x = torch.randn(16, 50, device=device, requires_grad=True)
    t = make_class_target((16, 50), device)
    compiled = torch.compile(step, fullgraph=True)
    assert_compiled_matches(compiled, lambda x, t: F.cross_entropy(x * 2.0, t, label_smoothing=0.1), (x, t), [x])


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(257, 3001), (64, 9, 40)])
def test_deterministic(device, dtype, shape):
    """Two runs give bitwise equal losses and gradients (fixed-order reductions, no float atomics)."""
    x = (torch.randn(shape, device=device) * 4).to(dtype)
    t = make_class_target(shape, device)
    w = torch.rand(shape[1], device=device).to(dtype)
    outs = []
    for _ in range(2):
        xi = x.clone().requires_grad_()
        loss = CE(xi, t, weight=w, label_smoothing=0.1)
        g, = torch.autograd.grad(loss, xi)
        outs.append((loss, g))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


def test_no_torch_loss_is_called(monkeypatch):
    """No silent fallback: with torch's own losses and (log_)softmax poisoned, fastloss still works.
    The documented torch-op composition (weight gradient for probability targets) uses neither."""
    def boom(*a, **k):
        raise AssertionError("fastloss called a torch loss")

    for name in ["cross_entropy", "nll_loss", "log_softmax", "softmax"]:
        monkeypatch.setattr(F, name, boom)
    monkeypatch.setattr(torch, "log_softmax", boom)
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    q = torch.rand(5, 7, dtype=torch.float64)
    w = torch.rand(7, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 7, (5,))
    CE(x, t, label_smoothing=0.1).backward()
    CE(x, q, weight=w).backward()
    fastloss.functional.nll_loss(x, t).backward()
    assert x.grad is not None and w.grad is not None


def test_pointwise_losses_call_no_torch_loss(monkeypatch):
    """Every torch.nn.functional loss fastloss implements, torch's binary / Poisson aten functions and
    log_sigmoid / sigmoid poisoned: the pointwise losses (incl. focal) still run forward and backward.
    (multilabel_soft_margin 'none' uses torch's sum, a documented composition, not a loss.)"""
    def boom(*a, **k):
        raise AssertionError("fastloss called a torch loss")

    from fastloss.patch import PATCHED_FUNCTIONS
    for name in list(PATCHED_FUNCTIONS) + ["logsigmoid", "sigmoid"]:
        monkeypatch.setattr(F, name, boom)
    for name in ["binary_cross_entropy_with_logits", "poisson_nll_loss", "sigmoid", "log_sigmoid", "kl_div"]:
        monkeypatch.setattr(torch, name, boom, raising=False)
    monkeypatch.setattr(torch._C._nn, "binary_cross_entropy", boom)
    Fl = fastloss.functional
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.rand(6, 5, dtype=torch.float64)
    w = torch.rand(5, dtype=torch.float64)
    v = torch.rand(6, 1, dtype=torch.float64, requires_grad=True)
    p = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
    for red in ["mean", "none"]:
        for loss in [Fl.binary_cross_entropy(p, t, weight=w, reduction=red),
                     Fl.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=w + 1, reduction=red),
                     Fl.poisson_nll_loss(x, t, full=True, reduction=red),
                     Fl.gaussian_nll_loss(x, t, v, reduction=red),
                     Fl.multilabel_soft_margin_loss(x, t, weight=w, reduction=red),
                     Fl.sigmoid_focal_loss(x, t, reduction=red)]:
            loss.sum().backward()
    assert x.grad is not None and v.grad is not None and p.grad is not None


def _pointwise_and_row_op_cases(device):
    """The regression / embedding ops, forward with and without gradients in the forward, and their
    backward ops (which autograd calls for reduction='none')."""
    ops = torch.ops.fastloss
    x, y, w = (torch.randn(5, 7, device=device, requires_grad=True) for _ in range(3))
    xb = torch.randn(33, device=device, dtype=torch.bfloat16)
    a, p, n = (torch.randn(6, 9, device=device, dtype=torch.float64, requires_grad=True) for _ in range(3))
    t = torch.tensor([1.0, -1.0, 0.0, 1.0, -1.0, 1.0], device=device, dtype=torch.float64)
    g = torch.rand(5, 7, device=device)
    xd, yd, wd, ad, pd, nd = (v.detach() for v in (x, y, w, a, p, n))  # the backward ops are not differentiable
    return [
        (ops._pointwise_forward.default, (x, y, None, 1, 0.0, 1, [True, True, False], None)),
        (ops._pointwise_forward.default, (x, y, w, 3, 0.5, 2, [True, False, True], None)),
        (ops._pointwise_forward.default, (x, y, None, 2, 0.7, 0, [False, False, False], None)),
        (ops._pointwise_forward.default, (xb, xb.flip(0), None, 0, 0.0, 1, [False, False, False], torch.float32)),
        (ops._pointwise_forward.default, (x, y, torch.sign(w.detach()), 4, 0.2, 1, [True, True, True], None)),
        (ops._pointwise_backward.default, (g[0, 0], xd, yd, wd, 0, 0.0, 1, torch.tensor(0.5, device=device),
                                               [True, True, True])),
        (ops._pointwise_backward.default, (g, xd, yd, None, 5, 1.0, 0, g, [True, False, False])),
        (ops._triplet_margin_forward.default, (a, p, n, 1.0, 2.0, 1e-6, False, 1, [True, True, True], None)),
        (ops._triplet_margin_forward.default, (a, p, n, 0.5, 3.0, 1e-6, True, 0, [False, False, False], None)),
        (ops._triplet_margin_backward.default, (torch.rand(6, device=device, dtype=torch.float64), ad, pd, nd, 1.0,
                                               float("inf"), 1e-6, True, 0, [True, False, True])),
        (ops._cosine_embedding_forward.default, (a, p, t, 0.1, 2, [True, True], None)),
        (ops._cosine_embedding_backward.default, (torch.rand(6, device=device, dtype=torch.float64), ad, pd, t, 0.1,
                                                 0, [True, True])),
    ]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", range(12))
def test_opcheck_regression_embedding(device, case):
    op, args = _pointwise_and_row_op_cases(device)[case]
    torch.library.opcheck(op, args)


def _ctc_op_cases(device):
    """ctc_loss: padded / concatenated (CPU int32) targets, every reduction, zero_infinity with an
    impossible sample, bfloat16, and the no-gradient form (grad_now False: an empty grad)."""
    ops = torch.ops.fastloss
    lp = torch.randn(7, 3, 5, device=device).log_softmax(-1).requires_grad_()
    lp64 = torch.randn(6, 2, 4, device=device, dtype=torch.float64).log_softmax(-1).requires_grad_()
    lpb = torch.randn(7, 3, 5, device=device).log_softmax(-1).bfloat16().requires_grad_()
    padded = torch.tensor([[1, 2, 2], [3, 4, 1], [1, 1, 1]], device=device)
    concat = torch.tensor([1, 2, 2, 3, 4, 1], dtype=torch.int32)
    il, tl = torch.tensor([7, 6, 4]), torch.tensor([3, 2, 1])
    return [
        (ops._ctc_loss_forward.default, (lp, padded, il, tl, 0, 1, False, True)),
        (ops._ctc_loss_forward.default, (lp, concat, il, tl, 0, 0, False, True)),
        (ops._ctc_loss_forward.default, (lp64, torch.tensor([[1, 1], [2, 0]], device=device), torch.tensor([6, 1]),
                                torch.tensor([2, 2]), 3, 2, True, True)),  # sample 1 cannot align: 0
        (ops._ctc_loss_forward.default, (lpb, padded, il, torch.tensor([3, 0, 1], dtype=torch.int32), 0, 2, False,
                                         True)),
        (ops._ctc_loss_forward.default, (lp.detach(), padded, il, tl, 0, 1, False, False)),
    ]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", range(5))
def test_opcheck_ctc(device, case):
    op, args = _ctc_op_cases(device)[case]
    torch.library.opcheck(op, args)


def test_no_device_function_called_from_host():
    """nvcc compiles a host call of a __device__-only function inside a template without a word, and
    gives it a host stub that calls exit(1): the process would end silently the first time that CUDA
    path ran (aligned16 in the pointwise and embedding launchers did). The library must not import
    exit at all."""
    import shutil
    import subprocess

    if not fastloss.cuda_built():
        pytest.skip("no CUDA kernels in this build")
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not available")
    out = subprocess.run(["nm", "-D", "--undefined-only", fastloss._C.__file__], capture_output=True, text=True,
                         check=True).stdout
    imported = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    assert "cudaMalloc" in imported or "cudaLaunchKernel" in imported or len(imported) > 50, "nm output unreadable"
    assert "exit" not in imported, "a host stub of a __device__ function (exit(1)) is in the library"


# A third/fourth tensor of the pointwise op that is a broadcast view (pos_weight (C,), var (N, 1), a
# scalar var, a weight (C, 1) of a 3-D input) is read through its small source (PwBcast), never
# materialized. (shape, source shape, view of the source broadcast to shape); the last two are
# layouts that are not one dense block (fallback: made contiguous).
BCAST_CASES = [
    ((2000, 37), (37,), lambda s, shape: s.expand(shape)),              # rep 1, per C: chunk and tile ends
    ((2000, 37), (2000, 1), lambda s, shape: s.expand(shape)),          # rep C, per N
    ((2000, 37), (), lambda s, shape: s.expand(shape)),                 # scalar: per 1
    ((3, 5, 7), (5, 1), lambda s, shape: s.expand(shape)),              # rep 7, per 5, outer broadcast
    ((3, 5, 7), (1, 5, 1), lambda s, shape: s.expand(shape)),
    ((4, 1, 6), (1, 6), lambda s, shape: s.expand(shape)),              # size-1 dims inside
    ((9, 1001), (1001,), lambda s, shape: s[::1].expand(shape)),
    ((3, 5, 7), (3, 1, 7), lambda s, shape: s.expand(shape)),           # fallback: two blocks
    ((6, 8), (8, 6), lambda s, shape: s.t()),                           # fallback: transposed
]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", range(len(BCAST_CASES)))
@pytest.mark.parametrize("kind", ["bce_logits", "gaussian", "l1_sum", "l1_mean"])
def test_pointwise_broadcast_third_tensor(device, dtype, case, kind):
    shape, src_shape, view = BCAST_CASES[case]
    g = torch.Generator().manual_seed(case)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)
    t = torch.rand(shape, generator=g, dtype=torch.float64).to(device, dtype)
    src = (torch.rand(src_shape, generator=g, dtype=torch.float64) + 0.5).to(device, dtype)
    c = view(src, shape)
    assert c.shape == shape and (case >= len(BCAST_CASES) - 2 or not c.is_contiguous())
    op = torch.ops.fastloss._pointwise_forward
    # (kind, param, reduction, c, d, param2): c and d each broadcast
    calls = {"bce_logits": [(9, 1.0, 2, c, c, 0.0), (9, 1.0, 0, None, c, 0.0), (9, 0.0, 1, c, None, 0.0)],
             "gaussian": [(11, 1e-6, 1, c, None, 1.0), (11, 1e-6, 0, c, None, 0.0)],
             "l1_sum": [(0, 0.0, 2, c, None, 0.0)],
             "l1_mean": [(0, 0.0, 1, c, None, 0.0)]}[kind]
    for k, param, red, cc, dd, param2 in calls:
        fused = red != 0 and not (k == 0 and red == 1)  # weighted-mean l1: its gradients in the backward only
        grad_now = [fused, fused, fused and cc is not None]
        got = op(x, t, cc, k, param, red, grad_now, None, dd, param2)
        dense = lambda u: None if u is None else u.contiguous()
        want = op(x, t, dense(cc), k, param, red, grad_now, None, dense(dd), param2)
        for a, b in zip(got, want):  # the same arithmetic on the same values: bitwise equal
            assert a.shape == b.shape
            assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num())
        if red != 0:
            back = torch.ops.fastloss._pointwise_backward
            gl = torch.tensor(0.75, device=device, dtype=dtype)
            mask = [True, True, cc is not None]
            for a, b in zip(back(gl, x, t, cc, k, param, red, got[0], mask, dd, param2),
                            back(gl, x, t, dense(cc), k, param, red, got[0], mask, dense(dd), param2)):
                assert torch.equal(a, b)


@pytest.mark.parametrize("device", device_params())
# (float64's accumulate type is float64: no separate accumulate-type grad there)
@pytest.mark.parametrize("dtype,grad_in_acc", [(torch.float64, False), (torch.float32, False), (torch.float32, True),
                                               (torch.bfloat16, False), (torch.bfloat16, True)])
def test_pointwise_broadcast_grad_output(device, dtype, grad_in_acc):
    """reduction='none' backward with grad_output a broadcast view (the grad of loss.sum() / loss.mean(), of
    a per-row sum, of a per-class weighting): read through its source, bitwise equal to the dense one;
    grad_output in the input's dtype or in the accumulate type (autocast's float32 loss)."""
    shape = (300, 37)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)
    t = torch.rand(shape, generator=g, dtype=torch.float64).to(device, dtype)
    var = (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5).to(device, dtype)
    gdt = torch.float32 if grad_in_acc else dtype
    back = torch.ops.fastloss._pointwise_backward
    none_loss = torch.empty(0, device=device, dtype=dtype)  # only weighted-mean l1/mse read it
    for src_shape in [(), (300, 1), (37,), (1, 37)]:
        gl = torch.rand(src_shape, generator=g, dtype=torch.float64).to(device, gdt).expand(shape)
        for k, c, param, param2 in [(9, None, 0.0, 0.0), (11, var, 1e-6, 1.0), (0, var, 0.0, 0.0)]:
            mask = [True, True, c is not None]
            got = back(gl, x, t, c, k, param, 0, none_loss, mask, None, param2)
            want = back(gl.contiguous(), x, t, c, k, param, 0, none_loss, mask, None, param2)
            for a, b in zip(got, want):
                assert a.shape == b.shape and torch.equal(a, b), (src_shape, k)


def test_pointwise_broadcast_is_not_materialized():
    """BCEWithLogitsLoss(pos_weight=(C,)) and gaussian_nll_loss with var (N, 1): no full-size copy; nor in
    the backward of loss.sum() / loss.mean() / a row sum of a reduction='none' loss (an expanded grad)."""
    x = torch.randn(64, 33, requires_grad=True)
    t = torch.rand(64, 33)
    pw, var = torch.rand(33) + 0.5, torch.rand(64, 1) + 0.5
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fastloss.functional.binary_cross_entropy_with_logits(x, t, pos_weight=pw, weight=pw)
        fastloss.functional.gaussian_nll_loss(x, t, var)
        fastloss.functional.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none").sum().backward()
        fastloss.functional.l1_loss(x, t, reduction="none").mean().backward()
        fastloss.functional.multilabel_soft_margin_loss(x, t, reduction="none").sum().backward()
    events = prof.events()
    assert sum(e.name == "fastloss::_pointwise_forward" for e in events) == 5
    assert sum(e.name == "fastloss::_pointwise_backward" for e in events) == 3
    copies = [(e.name, e.input_shapes) for e in events if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")
              and any(list(s) == [64, 33] for s in e.input_shapes)]  # (gaussian's var check copies a scalar)
    assert not copies, copies


@requires_cuda
@pytest.mark.parametrize("case", ["l1_mean", "bce_logits_pos_weight_sum", "bce_none", "focal_mean",
                                  "triplet_mean", "cosine_none", "multi_margin_mean", "multilabel_margin_sum"])
def test_cuda_graph_capture(case):
    """No host sync in the fused paths (validation skips itself inside capture): forward and backward of
    each family capture into a CUDA graph; replayed on new input values they match eager. (gaussian_nll_loss
    is not capturable: like torch's, it checks var >= 0 on the host; ctc_loss refuses capture.)"""
    Fl = fastloss.functional
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, 40, device="cuda", generator=g)
    t = torch.rand(64, 40, device="cuda", generator=g)
    p, n = torch.randn(64, 40, device="cuda", generator=g), torch.randn(64, 40, device="cuda", generator=g)
    pw = torch.rand(40, device="cuda", generator=g) + 0.5
    y = torch.randint(0, 40, (64,), device="cuda", generator=g)
    ml = torch.randint(0, 40, (64, 40), device="cuda", generator=g)
    ml[:, 5] = -1
    sign = torch.randint(0, 2, (64,), device="cuda", generator=g) * 2 - 1
    fns = {
        "l1_mean": lambda v: Fl.l1_loss(v, t),
        "bce_logits_pos_weight_sum":
            lambda v: Fl.binary_cross_entropy_with_logits(v, t, pos_weight=pw, reduction="sum"),
        "bce_none": lambda v: Fl.binary_cross_entropy(v.sigmoid(), t, reduction="none"),
        "focal_mean": lambda v: Fl.sigmoid_focal_loss(v, t, reduction="mean"),
        "triplet_mean": lambda v: Fl.triplet_margin_loss(v, p, n),
        "cosine_none": lambda v: Fl.cosine_embedding_loss(v, p, sign, reduction="none"),
        "multi_margin_mean": lambda v: Fl.multi_margin_loss(v, y),
        "multilabel_margin_sum": lambda v: Fl.multilabel_margin_loss(v, ml, reduction="sum"),
    }
    fn = fns[case]
    xs = x.clone().requires_grad_()

    def step():
        loss = fn(xs)
        grad, = torch.autograd.grad(loss, xs, torch.ones_like(loss))
        return loss, grad

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up outside the capture
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, grad = step()
    xs.data.copy_(torch.randn(64, 40, device="cuda", generator=g))
    graph.replay()
    torch.cuda.synchronize()
    ref_loss, ref_grad = step()
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


def _every_loss(x):
    """name -> a call of that fastloss.functional loss on x (4, 5) (the differentiated input; the other
    arguments take its device and dtype)."""
    dev, dt = (x.device, x.dtype) if x is not None else ("cpu", torch.float64)
    g = torch.Generator().manual_seed(3)
    y, z, prob = (torch.randn(4, 5, generator=g, dtype=torch.float64).to(dev, dt),
                  torch.randn(4, 5, generator=g, dtype=torch.float64).to(dev, dt),
                  torch.rand(4, 5, generator=g, dtype=torch.float64).to(dev, dt))
    sign = torch.where(prob > 0.5, 1.0, -1.0).to(dt)
    t = torch.tensor([0, 3, 1, 4], device=dev)
    Fl = fastloss.functional
    return {
        "cross_entropy": lambda: Fl.cross_entropy(x, t, weight=prob[0] + 0.5, label_smoothing=0.1),
        "nll_loss": lambda: Fl.nll_loss(x, t),
        "l1_loss": lambda: Fl.l1_loss(x, y),
        "mse_loss": lambda: Fl.mse_loss(x, y),
        "smooth_l1_loss": lambda: Fl.smooth_l1_loss(x, y, beta=0.5),
        "huber_loss": lambda: Fl.huber_loss(x, y, delta=0.5),
        "margin_ranking_loss": lambda: Fl.margin_ranking_loss(x, y, sign, margin=0.2),
        "hinge_embedding_loss": lambda: Fl.hinge_embedding_loss(x, sign),
        "soft_margin_loss": lambda: Fl.soft_margin_loss(x, sign),
        "kl_div": lambda: Fl.kl_div(x, prob, reduction="batchmean"),
        "binary_cross_entropy": lambda: Fl.binary_cross_entropy(x.sigmoid(), prob),
        "binary_cross_entropy_with_logits": lambda: Fl.binary_cross_entropy_with_logits(x, prob, pos_weight=prob[0]),
        "poisson_nll_loss": lambda: Fl.poisson_nll_loss(x, prob),
        "gaussian_nll_loss": lambda: Fl.gaussian_nll_loss(x, y, prob + 0.1),
        "multilabel_soft_margin_loss": lambda: Fl.multilabel_soft_margin_loss(x, (prob > 0.5).to(dt)),
        "sigmoid_focal_loss": lambda: Fl.sigmoid_focal_loss(x, (prob > 0.5).to(dt), reduction="mean"),
        "triplet_margin_loss": lambda: Fl.triplet_margin_loss(x, y, z),
        "triplet_margin_with_distance_loss": lambda: Fl.triplet_margin_with_distance_loss(x, y, z, swap=True),
        "cosine_embedding_loss": lambda: Fl.cosine_embedding_loss(x, y, sign[:, 0]),
        "ctc_loss": lambda: Fl.ctc_loss(x.unsqueeze(1).log_softmax(-1), torch.tensor([[1, 2]], device=dev), [4], [2]),
        "multi_margin_loss": lambda: Fl.multi_margin_loss(x, t, p=2),
        "multilabel_margin_loss": lambda: Fl.multilabel_margin_loss(x, torch.tensor([[1, 2, -1, 0, 0]] * 4,
                                                                                    device=dev)),
    } | ({} if "linear_cross_entropy" not in Fl.__all__ else {  # torch >= 2.14
        # the chunked path (options given): 2 chunks of the 4 rows
        "linear_cross_entropy": lambda: Fl.linear_cross_entropy(
            x, torch.cat([y, z[:1]]), t, linear_bias=prob[0], label_smoothing=0.1,
            options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=2)),
    })


def _one_call_per_family(x):
    """A fastloss call of every family on x (4, 5): pointwise, cross_entropy, nll, triplet, cosine,
    multi_margin, multilabel_margin, ctc."""
    calls = _every_loss(x)
    return [calls[name]() for name in ("mse_loss", "cross_entropy", "nll_loss", "triplet_margin_loss",
                                       "cosine_embedding_loss", "multi_margin_loss", "multilabel_margin_loss",
                                       "ctc_loss")]


def test_calls_without_graph_skip_autograd_but_match():
    """With no graph to record (no_grad, or no input requiring grad) the ops run below autograd (no
    Function context: ~10 us less host time); the values are those of the recorded call."""
    x = torch.randn(4, 5)
    recorded = _one_call_per_family(x.clone().requires_grad_())
    assert all(r.grad_fn is not None for r in recorded)
    with torch.no_grad():
        plain = _one_call_per_family(x.clone().requires_grad_())
    for r, p in zip(recorded, plain):
        assert p.grad_fn is None and not p.requires_grad
        assert torch.equal(r.detach(), p)
    for r, p in zip(recorded, _one_call_per_family(x)):
        assert p.grad_fn is None and torch.equal(r.detach(), p)


def test_op_aux_outputs_are_untracked():
    """The op's outputs besides the loss (gradients written by the forward, lse, total_weight) leave the
    autograd Function untracked: no grad_fn, no requires_grad, as a non-differentiable output would."""
    x = torch.randn(4, 5, requires_grad=True)
    loss, grad, lse = torch.ops.fastloss._cross_entropy_forward(x, torch.arange(4), None, 1, -100, 0.0, True, True,
                                                                 None)
    assert loss.grad_fn is not None
    for aux in (grad, lse):
        assert aux.grad_fn is None and not aux.requires_grad
    # reduction 1 = mean: d(loss)/d(x) = (softmax - one_hot) / rows
    torch.testing.assert_close(grad, (torch.softmax(x.detach(), 1) - torch.eye(5)[:4]) / 4, atol=1e-6, rtol=1e-5)


@pytest.mark.compile
def test_compiled_autograd_over_eager_forward():
    """Backward of every family under compiled autograd, the forward eager: the gradients of the plain
    backward, also when the kept graph runs a second time (saved tensors reused). (Marking the Functions' extra outputs
    non-differentiable made torch's CppNode fail here: an internal assert on compiled autograd's path.)"""
    from torch._dynamo import compiled_autograd

    def total(x):
        losses = _one_call_per_family(x)
        none = fastloss.functional.mse_loss(x, torch.ones(4, 5), reduction="none")  # backward op path
        return sum(losses) + (none * torch.arange(5.0)).sum()

    x = torch.randn(4, 5, requires_grad=True)
    total(x).backward()
    ref = x.grad.clone()
    x.grad = None
    torch._dynamo.reset()
    with compiled_autograd._enable(torch.compile(backend="eager")):
        loss = total(x)
        loss.backward(retain_graph=True)
        torch.testing.assert_close(x.grad, ref)
        x.grad = None  # the same graph again (no accumulation): the cached compiled backward, no recompile
        loss.backward()
    torch.testing.assert_close(x.grad, ref)


@pytest.mark.parametrize("device", device_params())
def test_torch_func_transforms_run_torch(monkeypatch, device):
    """Under a torch.func transform every loss is torch's own (documented): torch.func refuses C++ autograd
    Functions, and vmap would loop over a fastloss op. Counted per loss: once under grad, never outside; the
    gradient is the one fastloss's own kernels give outside the transform."""
    import fastloss.functional as Fl
    assert sorted(_every_loss(None)) == sorted(Fl.__all__)
    calls = dict.fromkeys(Fl._TORCH, 0)
    for name, fn in list(Fl._TORCH.items()):
        def counted(*a, _name=name, _fn=fn, **k):
            calls[_name] += 1
            return _fn(*a, **k)
        monkeypatch.setitem(Fl._TORCH, name, counted)
    x0 = torch.randn(4, 5, dtype=torch.float64, device=device)
    for name in Fl.__all__:
        x = x0.clone().requires_grad_()
        (ours,) = torch.autograd.grad(_every_loss(x)[name](), x)
        assert sum(calls.values()) == 0, name  # outside a transform: fastloss's kernels
        theirs = torch.func.grad(lambda v, _n=name: _every_loss(v)[_n]())(x0)
        assert calls[name] == 1, name
        calls.update(dict.fromkeys(calls, 0))
        torch.testing.assert_close(theirs, ours, msg=name)


def test_torch_func_per_sample_gradients_and_jacobian():
    """What torch.func users do with a loss: per-sample gradients (vmap of grad), a Jacobian (jacrev) of a
    'none' loss, a module called through functional_call -- also after fastloss.patch(), where
    torch.nn.functional's names lead back to fastloss (the transform path must reach torch's originals)."""
    x, t = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 0])
    rows = torch.func.vmap(torch.func.grad(lambda xi, ti: CE(xi[None], ti[None])))(x, t)
    xr = x.clone().requires_grad_()
    CE(xr, t, reduction="sum").backward()
    torch.testing.assert_close(rows, xr.grad)
    jac = torch.func.jacrev(lambda v: fastloss.functional.mse_loss(v, torch.ones(6, 5), reduction="none"))(x)
    # d loss[i, j] / d x[k, l] = 2 (x[i, j] - 1) where (i, j) == (k, l), else 0
    torch.testing.assert_close(jac, torch.diag(2 * (x - 1).flatten()).reshape(6, 5, 6, 5))
    model = torch.nn.Linear(5, 5).double()
    loss_fn = fastloss.CrossEntropyLoss(label_smoothing=0.1)
    params = dict(model.named_parameters())
    grads = torch.func.grad(lambda p: loss_fn(torch.func.functional_call(model, p, (x,)), t))(params)
    loss_fn(model(x), t).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad)
    fastloss.patch()
    try:
        patched = torch.func.grad(lambda v: F.cross_entropy(v, t))(x)
    finally:
        fastloss.unpatch()
    torch.testing.assert_close(patched, xr.grad / 6)


def test_second_order_through_torch_func():
    """create_graph=True raises (documented), and the error points to torch.func, where second derivatives
    work because fastloss calls torch's loss there: a Hessian and a MAML-style gradient through an inner
    gradient step equal torch's."""
    x, t = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 3, 1, 4])
    xr = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="torch.func"):
        torch.autograd.grad(CE(xr, t), xr, create_graph=True)
    y = torch.randn(4, 5, dtype=torch.float64)
    for fl, th, arg in [(CE, F.cross_entropy, t), (fastloss.functional.huber_loss, F.huber_loss, y)]:
        torch.testing.assert_close(torch.func.hessian(lambda v: fl(v, arg))(x),
                                   torch.func.hessian(lambda v: th(v, arg))(x))

    w0, data = torch.randn(5, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)

    def outer(loss, w):  # one inner SGD step, then the loss at the stepped weights
        inner = torch.func.grad(lambda v: loss(data @ v, t))(w)
        return loss(data @ (w - 0.1 * inner), t)

    torch.testing.assert_close(torch.func.grad(lambda w: outer(CE, w))(w0),
                               torch.func.grad(lambda w: outer(F.cross_entropy, w))(w0))


def test_vectorized_jacobian_runs_fastloss():
    """torch.autograd.functional.jacobian(vectorize=True) / autograd.grad(is_grads_batched=True) run the forward
    plainly (fastloss's kernels) and vmap the backward: the saved gradient is then scaled by torch ops (vmap
    has no rule for fastloss's scale ops; the in-place one it cannot run at all). Same Jacobian as the
    unvectorized one, for every loss and for 'none' reductions (whose backward ops vmap runs per entry)."""
    x0 = torch.randn(4, 5, dtype=torch.float64)
    Fl = fastloss.functional
    y, t = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 3, 1, 4])
    calls = {name: (lambda v, _n=name: _every_loss(v)[_n]()) for name in Fl.__all__}
    calls.update({
        "cross_entropy none": lambda v: Fl.cross_entropy(v.view(2, 5, 2), t.view(2, 2) % 5, reduction="none"),
        "mse_loss none": lambda v: Fl.mse_loss(v, y, reduction="none"),
        "ctc_loss none": lambda v: Fl.ctc_loss(v.view(2, 2, 5).log_softmax(-1), torch.tensor([[1], [2]]), [2, 2],
                                               [1, 1], reduction="none"),
        "multi_margin_loss none": lambda v: Fl.multi_margin_loss(v, t, reduction="none"),
    })
    for name, f in calls.items():
        ref = torch.autograd.functional.jacobian(f, x0)
        assert ref.abs().sum() > 0, name
        torch.testing.assert_close(torch.autograd.functional.jacobian(f, x0, vectorize=True), ref, msg=name)
    x = x0.clone().requires_grad_()
    loss = Fl.cross_entropy(x, t, reduction="sum")
    (both,) = torch.autograd.grad(loss, x, torch.tensor([1.0, 2.0], dtype=torch.float64), is_grads_batched=True)
    one = torch.softmax(x0, 1) - torch.eye(5, dtype=torch.float64)[t]  # d(sum of CE)/dx
    torch.testing.assert_close(both, torch.stack([one, 2 * one]))


@pytest.mark.compile
@pytest.mark.parametrize("strict", [False, True])
def test_export_keeps_fastloss_ops(strict):
    """torch.export of a model with a fastloss loss module: the graph calls the fastloss op (no torch
    cross-entropy pieces), and the exported module gives the eager loss."""
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.loss = torch.nn.Linear(5, 5), fastloss.CrossEntropyLoss(label_smoothing=0.1)

        def forward(self, x, t):
            return self.loss(self.lin(x), t)

    m, x, t = Model(), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    ep = torch.export.export(m, (x, t), strict=strict)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any(s.startswith("fastloss.cross_entropy") for s in targets), targets
    assert not any("log_softmax" in s or "cross_entropy_loss" in s for s in targets), targets
    torch.testing.assert_close(ep.module()(x, t), m(x, t))


@pytest.mark.parametrize("no_grad", [False, True])
def test_forward_ad_refused(no_grad):
    """Forward-mode AD (a dual input) is refused by the autograd Function (no jvp), also under no_grad:
    the no-graph shortcut must not drop the tangent silently."""
    import torch.autograd.forward_ad as fwAD
    x = torch.randn(4, 5)
    with fwAD.dual_level(), torch.set_grad_enabled(not no_grad):
        xd = fwAD.make_dual(x, torch.randn(4, 5))
        for fn in (lambda v: fastloss.functional.mse_loss(v, torch.ones(4, 5)),
                   lambda v: fastloss.functional.cross_entropy(v, torch.arange(4)),
                   lambda v: fastloss.functional.multi_margin_loss(v, torch.arange(4))):
            with pytest.raises(RuntimeError, match="jvp is not implemented"):
                fn(xd)


# --------------------------------------------------------------------------------- eager fast path
# fastloss.functional calls its ops through fastloss._C._fast_call (csrc/module.cpp): the dispatcher
# call torch.ops makes, without torch.ops' Python argument matching; anything it does not take goes to
# the handle's fallback (torch.ops.fastloss.<op>).
def _counting_handle(name):
    """A fresh handle whose fallback is torch.ops.fastloss.<name> behind a call counter."""
    from fastloss import _C
    calls = []

    def fallback(*args):
        calls.append(args)
        return getattr(torch.ops.fastloss, name)(*args)

    return _C._fast_handle("fastloss::" + name, fallback), calls


def test_fast_call_matches_torch_ops():
    """Same results as torch.ops, bitwise, for every argument form the fast path takes (Tensor?, int,
    float, bool, bool[3], ScalarType? given as dtype, int or None, trailing defaults), gradients included;
    none of them reaches the fallback."""
    from fastloss import _C
    ce, ce_calls = _counting_handle("_cross_entropy_forward")
    pw, pw_calls = _counting_handle("_pointwise_forward")
    x = torch.randn(6, 5, requires_grad=True)
    t = torch.randint(0, 5, (6,))
    w = torch.rand(5) + 0.5
    b = torch.randn(6, 5)
    for args in [(x, t, None, 1, -100, 0.0, True, False, None), (x, t, w, 2, 3, 0.25, True, False, torch.float64),
                 (x.detach(), t, w, 0, -100, 0.5, False, False, None)]:
        got, want = _C._fast_call(ce, *args), torch.ops.fastloss._cross_entropy_forward(*args)
        assert isinstance(got, tuple) and len(got) == 3
        assert got[0].dtype == want[0].dtype and torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        if args[0].requires_grad:
            (g_got,) = torch.autograd.grad(got[0].sum(), x)
            (g_want,) = torch.autograd.grad(want[0].sum(), x)
            assert torch.equal(g_got, g_want)
    for args in [(x, b, None, 1, 0.0, 1, [True, False, False], None),  # d and param2 from the schema's defaults
                 (x, b, w.expand(6, 5), 3, 0.7, 2, (True, False, True), 6, None, 0.0)]:  # ScalarType as its number
        got, want = _C._fast_call(pw, *args), torch.ops.fastloss._pointwise_forward(*args)
        assert all(torch.equal(g, h) for g, h in zip(got, want))
    assert ce_calls == [] and pw_calls == []


@pytest.mark.parametrize("case", ["numpy_int", "int_as_float", "subclass", "too_many", "missing"])
def test_fast_call_falls_back_to_torch_ops(case):
    """An argument the fast path does not convert goes to the fallback with the arguments unchanged, which
    answers (or refuses) it exactly as torch.ops does."""
    import numpy as np
    from fastloss import _C

    class Sub(torch.Tensor):
        pass

    h, calls = _counting_handle("_cross_entropy_forward")
    x = torch.randn(6, 5)
    t = torch.randint(0, 5, (6,))
    args = [x, t, None, 1, -100, 0.0, False, False, None]
    if case == "numpy_int":
        args[4] = np.int64(-100)
    elif case == "int_as_float":
        args[5] = 0
    elif case == "subclass":
        args[0] = x.as_subclass(Sub)
    elif case == "too_many":
        args.append(None)
    elif case == "missing":
        args = args[:5]
    if case in ("too_many", "missing"):
        with pytest.raises((RuntimeError, TypeError)):
            _C._fast_call(h, *args)
    else:
        got = _C._fast_call(h, *args)
        assert torch.equal(got[0], torch.ops.fastloss._cross_entropy_forward(x, t, None, 1, -100, 0.0, False, False,
                                                                                  None)[0])
    assert len(calls) == 1 and all(a is b for a, b in zip(calls[0], args))
    # a bool[3] of the wrong length: refused by torch.ops, reached through the fallback
    h2, calls2 = _counting_handle("_pointwise_forward")
    with pytest.raises(RuntimeError):
        _C._fast_call(h2, x, x, None, 1, 0.0, 1, [True, False], None)
    assert len(calls2) == 1


def test_fast_call_errors_and_handles():
    """Kernel errors keep torch.ops' Python exception types and messages; a bad handle is refused."""
    from fastloss import _C
    h, calls = _counting_handle("_cross_entropy_forward")
    x = torch.randn(4, 5)
    bad = torch.tensor([0, 1, 7, 2])
    with pytest.raises(IndexError) as fast:
        _C._fast_call(h, x, bad, None, 1, -100, 0.0, False, False, None)
    with pytest.raises(IndexError) as slow:
        torch.ops.fastloss._cross_entropy_forward(x, bad, None, 1, -100, 0.0, False, False, None)
    assert str(fast.value).splitlines()[0] == str(slow.value).splitlines()[0] and calls == []
    with pytest.raises(ValueError, match="unknown handle"):
        _C._fast_call(10**6, x)
    with pytest.raises(RuntimeError, match="does not convert"):
        _C._fast_handle("fastloss::_set_option", print)  # str argument, int return


def test_fast_call_seen_by_dispatch_modes_and_profiler():
    """The fast path is a dispatcher call: a TorchDispatchMode sees the fastloss op (so make_fx, fake
    tensors and friends work), and the profiler records it under its name."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x = torch.randn(4, 5, requires_grad=True)
    t = torch.arange(4)
    with Record() as rec:
        loss = CE(x, t)
        fastloss.functional.mse_loss(x, torch.zeros(4, 5))
    # a dispatch mode sits below autograd: it sees the internal op the public op's autograd calls
    assert "fastloss._cross_entropy_forward.default" in rec.ops and "fastloss._pointwise_forward.default" in rec.ops
    loss.backward()
    with torch.autograd.profiler.profile() as prof:
        CE(x, t)
    assert any(e.name == "fastloss::cross_entropy" for e in prof.function_events)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        fake = CE(torch.empty(4, 5), torch.zeros(4, dtype=torch.long), reduction="none")
    assert fake.shape == (4,)


# ------------------------------------------------------------------------------------ named public ops
# Every loss has its own public op, fastloss::<functional name>, with torch-like typed arguments and no
# gradient flags; those (grad_now, compute_grad, save_lse, output_mask) and the pointwise engine's
# kind / param packing live only on internal ops (names starting with "_"), which the C++ autograd calls.
_COMPOSED = {  # losses with no op of their own: composed over another loss's op (the same kernels)
    "multilabel_soft_margin_loss": "binary_cross_entropy_with_logits",
    "triplet_margin_with_distance_loss": "triplet_margin_loss",
}
_FLAGS = {"grad_now", "compute_grad", "save_lse", "output_mask", "kind", "param", "param2"}


def _public_op_cases(device):
    """name -> (fastloss::<name>, arguments) with differentiable inputs that require grad (float64)."""
    ops, f64 = torch.ops.fastloss, torch.float64
    g = torch.Generator().manual_seed(5)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=f64).to(device)  # noqa: E731
    x, y, z = (rnd(4, 5).requires_grad_() for _ in range(3))
    prob = torch.rand(4, 5, generator=g, dtype=f64).to(device)
    w, sign = prob + 0.5, torch.where(prob > 0.5, 1.0, -1.0).to(f64)
    xp = (prob * 0.8 + 0.1).requires_grad_()  # in (0, 1): binary_cross_entropy's input
    var = (prob + 0.1).requires_grad_()
    t = torch.tensor([0, 3, 1, 4], device=device)
    lp = rnd(6, 2, 5).log_softmax(-1).detach().requires_grad_()
    cases = {
        "cross_entropy": (ops.cross_entropy.default, (x, t, w[0], 1, -100, 0.1, None)),
        "nll_loss": (ops.nll_loss.default, (x, t, None, 2, -100, None)),
        "l1_loss": (ops.l1_loss.default, (x, y, w, 1, None)),
        "mse_loss": (ops.mse_loss.default, (x, y, None, 2, None)),
        "smooth_l1_loss": (ops.smooth_l1_loss.default, (x, y, 0, 0.5, None)),
        "huber_loss": (ops.huber_loss.default, (x, y, w, 1, 0.7, None)),
        "margin_ranking_loss": (ops.margin_ranking_loss.default, (x, y, sign, 0.2, 1, None)),
        "hinge_embedding_loss": (ops.hinge_embedding_loss.default, (x, sign, 1.0, 2, None)),
        "soft_margin_loss": (ops.soft_margin_loss.default, (x, sign, 1, None)),
        "kl_div": (ops.kl_div.default, (x, prob, 2, False, None)),
        "binary_cross_entropy": (ops.binary_cross_entropy.default, (xp, prob, w, 1, None)),
        "binary_cross_entropy_with_logits": (ops.binary_cross_entropy_with_logits.default, (x, prob, w, w, 1, None)),
        "poisson_nll_loss": (ops.poisson_nll_loss.default, (x, prob, True, True, 1e-8, 1, None)),
        "gaussian_nll_loss": (ops.gaussian_nll_loss.default, (x, y, var, True, 1e-6, 2, None)),
        "sigmoid_focal_loss": (ops.sigmoid_focal_loss.default, (x, (prob > 0.5).to(f64), 0.25, 2.0, 1, None)),
        "triplet_margin_loss": (ops.triplet_margin_loss.default, (x, y, z, 1.0, 2.0, 1e-6, True, 1, None)),
        "cosine_embedding_loss": (ops.cosine_embedding_loss.default, (x, y, sign[:, 0], 0.1, 0, None)),
        "ctc_loss": (ops.ctc_loss.default, (lp, torch.tensor([[1, 2], [3, 0]], device=device), torch.tensor([6, 5]),
                                            torch.tensor([2, 1]), 0, 1, False)),
        "multi_margin_loss": (ops.multi_margin_loss.default, (x, t, 2, 0.5, w[0], 1, None)),
        "multilabel_margin_loss": (ops.multilabel_margin_loss.default,
                                   (x, torch.tensor([[1, 2, -1, 0, 0]] * 4, device=device), 1, None)),
    }
    if "linear_cross_entropy" in fastloss.functional.__all__:
        cases["linear_cross_entropy"] = (ops.linear_cross_entropy.default,
                                         (x, rnd(7, 5).requires_grad_(), rnd(7), t, None, 1, -100, 0.1, None, 0.0, 0, 0,
                                          True))
    return cases


_PUBLIC = sorted(n for n in fastloss.functional.__all__ if n not in _COMPOSED)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", _PUBLIC)
def test_opcheck_public_ops(device, name):
    op, args = _public_op_cases(device)[name]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("name", _PUBLIC)
def test_every_loss_has_its_named_op(name):
    """fastloss::<name> for every loss with a kernel: CPU (and CUDA where built) and autograd kernels, and
    no gradient flag in its schema; the flags are on internal ops only."""
    qual = "fastloss::" + name
    keys = ["CPU", "AutogradCPU"] + (["CUDA", "AutogradCUDA"] if fastloss.cuda_built() else [])
    for key in keys:
        assert torch._C._dispatch_has_computed_kernel_for_dispatch_key(qual, key), (qual, key)
    args = {a.name for a in getattr(torch.ops.fastloss, name).default._schema.arguments}
    assert not args & _FLAGS, (qual, args & _FLAGS)
    assert _public_op_cases("cpu").keys() >= set(_PUBLIC)


def test_gradient_flags_only_on_internal_ops():
    """Every op of the namespace whose schema takes a gradient flag is internal (its name starts with "_")."""
    flagged = set()
    for schema in torch._C._jit_get_all_schemas():
        if schema.name.startswith("fastloss::") and {a.name for a in schema.arguments} & _FLAGS:
            flagged.add(schema.name)
    assert "fastloss::_pointwise_forward" in flagged and "fastloss::_cross_entropy_forward" in flagged  # not void
    # linear_ce_grad: a step of linear_cross_entropy and vocab-parallel cross_entropy (their Python / C++
    # autograd call it), never a loss's entry point
    assert all(n.split("::")[1].startswith("_") for n in flagged - {"fastloss::linear_ce_grad"}), sorted(flagged)


def test_profiler_shows_each_loss_by_name():
    """fastloss.functional.<name>, forward and backward: the profiler records fastloss::<name> (the loss's
    own op, not a shared engine's)."""
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    for name, call in _every_loss(x).items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            call().sum().backward()
        names = {e.name for e in prof.events()}
        assert "fastloss::" + _COMPOSED.get(name, name) in names, (name, sorted(n for n in names if "fastloss" in n))


@pytest.mark.compile
def test_export_shows_each_pointwise_loss_by_name():
    """torch.export keeps the public op of each pointwise loss (not the shared engine op)."""
    class Model(torch.nn.Module):
        def forward(self, x, y):
            return (fastloss.functional.smooth_l1_loss(x, y, beta=0.5)
                    + fastloss.functional.binary_cross_entropy_with_logits(x, y.sigmoid()))

    x, y = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
    ep = torch.export.export(Model(), (x, y))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"fastloss.smooth_l1_loss.default", "fastloss.binary_cross_entropy_with_logits.default"} <= targets, targets
    assert not any("_pointwise_forward" in s for s in targets), targets
    torch.testing.assert_close(ep.module()(x, y), Model()(x, y))
