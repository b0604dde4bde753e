"""cross_entropy and nll_loss (the cross_entropy family in csrc) against torch.nn.functional: values and
gradients over the whole argument space, every dtype, contiguous and strided inputs, upstream gradients other
than 1."""
import contextlib
import itertools

import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import assert_close_ref, device_params, DTYPES, make_class_target, requires_cuda

SHAPES = [(7,), (1, 1), (5, 2), (9, 33), (4, 130), (3, 1000), (2, 4099), (3, 5, 4), (2, 4, 3, 2)]
REDUCTIONS = ["none", "mean", "sum"]


def _layouts(shape):
    if len(shape) == 2:
        return ["contig", "slice", "transpose"]
    if len(shape) > 2:
        return ["contig", "permute"]
    return ["contig"]


def make_input(shape, dtype, device, layout, scale=3.0):
    """Random logits in the requested memory layout (same values whatever the layout)."""
    if layout == "slice":  # rows read in place with a row stride > C, rows not 16-byte aligned
        big = (torch.randn(shape[0], shape[1] + 3, device=device) * scale).to(dtype)
        return big[:, 1:shape[1] + 1]
    if layout == "transpose":
        return (torch.randn(shape[1], shape[0], device=device) * scale).to(dtype).t()
    if layout == "permute":
        perm = [0] + list(range(2, len(shape))) + [1]
        base = torch.randn([shape[i] for i in perm], device=device) * scale
        inv = [perm.index(i) for i in range(len(shape))]
        return base.to(dtype).permute(inv)
    return (torch.randn(shape, device=device) * scale).to(dtype)


def reference(x, target, weight, reduction, label_smoothing, ignore_index=-100, grad_out=None, prob=False):
    """torch's cross_entropy in float64 on upcast inputs; returns loss, d/dx, d/dtarget (prob)."""
    x64 = x.detach().double().requires_grad_()
    t64 = target.detach().double().requires_grad_() if prob else target
    w64 = weight.double() if weight is not None else None
    loss = F.cross_entropy(x64, t64, weight=w64, reduction=reduction, label_smoothing=label_smoothing,
                           ignore_index=ignore_index)
    go = torch.ones_like(loss) if grad_out is None else grad_out.double()
    grads = torch.autograd.grad(loss, [x64, t64] if prob else [x64], go, allow_unused=True)
    return loss, grads[0], grads[1] if prob else None


CASES = [
    (shape, kind, red, weighted, ls, layout)
    for shape, kind, red, weighted, ls in itertools.product(SHAPES, ["class", "prob"], REDUCTIONS, [False, True],
                                                            [0.0, 0.25])
    for layout in _layouts(shape)
    if not (layout != "contig" and (weighted or red == "sum"))  # layouts: a thinner slice of the product
]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,kind,reduction,weighted,label_smoothing,layout", CASES)
def test_matches_torch(device, dtype, shape, kind, reduction, weighted, label_smoothing, layout):
    C = shape[0] if len(shape) == 1 else shape[1]
    x = make_input(shape, dtype, device, layout).requires_grad_()
    prob = kind == "prob"
    if prob:
        target = torch.randn(shape, device=device).softmax(0 if len(shape) == 1 else 1).to(dtype).requires_grad_()
    else:
        target = make_class_target(shape, device)
    weight = (torch.rand(C, device=device) + 0.2).to(dtype) if weighted else None

    loss = fastloss.functional.cross_entropy(x, target, weight=weight, reduction=reduction,
                                             label_smoothing=label_smoothing)
    # a random upstream gradient (per element for 'none'), never exactly 1
    grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5
    ref_loss, ref_gx, ref_gt = reference(x, target, weight, reduction, label_smoothing, grad_out=grad_out, prob=prob)
    assert loss.dtype == dtype and loss.device.type == device
    assert_close_ref(loss, ref_loss, dtype, "loss")
    grads = torch.autograd.grad(loss, [x, target] if prob else [x], grad_out.to(loss.dtype))
    assert grads[0].dtype == dtype and grads[0].shape == x.shape
    assert_close_ref(grads[0], ref_gx, dtype, "grad input")
    if prob:
        assert_close_ref(grads[1], ref_gt, dtype, "grad target")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_backward_grad_output_one(device, reduction):
    """loss.backward() (grad_output exactly 1): the in-place path that skips the scaling pass."""
    x = torch.randn(6, 300, device=device, requires_grad=True)
    t = make_class_target((6, 300), device)
    loss = fastloss.functional.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1)
    loss.backward(torch.ones_like(loss))
    x2 = x.detach().clone().requires_grad_()
    F.cross_entropy(x2, t, reduction=reduction, label_smoothing=0.1).backward(torch.ones_like(loss))
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", device_params())
def test_retain_graph_twice(device):
    """With retain_graph the saved gradient must survive: two backward calls give twice the grad."""
    x = torch.randn(5, 40, device=device, requires_grad=True)
    t = make_class_target((5, 40), device)
    loss = fastloss.functional.cross_entropy(x, t) * 3.0
    loss.backward(retain_graph=True)
    loss.backward()
    x2 = x.detach().clone().requires_grad_()
    l2 = F.cross_entropy(x2, t) * 3.0
    l2.backward(retain_graph=True)
    l2.backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-7)
    g1, = torch.autograd.grad(fastloss.functional.cross_entropy(x, t, reduction="sum"), x, retain_graph=False)
    g2, = torch.autograd.grad(F.cross_entropy(x2, t, reduction="sum"), x2)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


# (a uint8 target cannot hold a negative ignore_index, in torch neither: those pairs are not listed)
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("ignore_index,target_dtype",
                         [(i, torch.long) for i in (-100, -1, 0, 3)] + [(i, torch.uint8) for i in (0, 3)], ids=str)
def test_ignore_index_and_target_dtypes(device, ignore_index, target_dtype):
    shape = (11, 7)
    x = make_input(shape, torch.float64, device, "contig").requires_grad_()
    t = make_class_target(shape, device, ignore_index=ignore_index, ignore_frac=0.3, dtype=target_dtype)
    w = torch.rand(7, device=device, dtype=torch.float64)
    for red, ls in itertools.product(REDUCTIONS, [0.0, 0.3]):
        ours = fastloss.functional.cross_entropy(x, t, weight=w, ignore_index=ignore_index, reduction=red,
                                                 label_smoothing=ls)
        # (torch itself fails on uint8 targets with weights and smoothing: its reference uses int64)
        ref = F.cross_entropy(x, t.long(), weight=w, ignore_index=ignore_index, reduction=red, label_smoothing=ls)
        torch.testing.assert_close(ours, ref)
        g1, = torch.autograd.grad(ours.sum(), x)
        g2, = torch.autograd.grad(ref.sum(), x)
        torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2, 1.0])
def test_all_ignored_and_empty(device, reduction, label_smoothing):
    """Mean over all-ignored targets is NaN (0/0), as torch; gradients stay 0. Empty batches too."""
    x = torch.randn(4, 6, device=device, dtype=torch.float64, requires_grad=True)
    t = torch.full((4,), -100, device=device)
    for inp, tgt in [(x, t), (x[:0], t[:0]), (x[:0], x[:0].detach().softmax(1))]:
        ours = fastloss.functional.cross_entropy(inp, tgt, reduction=reduction, label_smoothing=label_smoothing)
        ref = F.cross_entropy(inp, tgt, reduction=reduction, label_smoothing=label_smoothing)
        torch.testing.assert_close(ours, ref, equal_nan=True)
        if ours.numel():
            g1, = torch.autograd.grad(ours.sum(), x)
            g2, = torch.autograd.grad(ref.sum(), x)
            torch.testing.assert_close(g1, g2, equal_nan=True)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extreme_values(device, dtype):
    """-inf logits (masked vocabulary), huge logits, a fully masked row: torch's inf/NaN pattern."""
    x = torch.randn(5, 40, device=device, dtype=torch.float64) * 3
    x[0, 5:] = float("-inf")  # masked tail, target inside the unmasked part
    x[1] = 1e4 * torch.sign(x[1])  # far beyond exp's range
    x[2, :] = float("-inf")  # fully masked row: NaN in torch
    x[3, 7] = float("-inf")  # target sits on a masked logit: loss inf
    t = torch.tensor([2, 3, 1, 7, 9], device=device)
    x = x.to(dtype).requires_grad_()
    ours = fastloss.functional.cross_entropy(x, t, reduction="none")
    ref, gref, _ = reference(x, t, None, "none", 0.0, grad_out=torch.ones(5, dtype=torch.float64, device=device))
    assert_close_ref(ours, ref, dtype, "loss")
    g, = torch.autograd.grad(ours.sum(), x)
    finite_rows = torch.tensor([0, 1, 4])
    assert_close_ref(g[finite_rows], gref[finite_rows], dtype, "grad")
    assert torch.isnan(g[2]).all() == torch.isnan(gref[2]).all()


@pytest.mark.parametrize("device", device_params())
def test_unbatched_and_legacy_args(device):
    x = torch.randn(9, device=device, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(4, device=device)
    for red in REDUCTIONS:
        torch.testing.assert_close(fastloss.functional.cross_entropy(x, t, reduction=red),
                                   F.cross_entropy(x, t, reduction=red))
    xb = torch.randn(6, 5, device=device, dtype=torch.float64)
    tb = torch.randint(0, 5, (6,), device=device)
    for sa, rd in itertools.product([None, True, False], [None, True, False]):
        with pytest.warns(UserWarning) if (sa is not None or rd is not None) else contextlib.nullcontext():
            ours = fastloss.functional.cross_entropy(xb, tb, size_average=sa, reduce=rd)
        with pytest.warns(UserWarning) if (sa is not None or rd is not None) else contextlib.nullcontext():
            ref = F.cross_entropy(xb, tb, size_average=sa, reduce=rd)
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("device", device_params())
def test_mixed_dtype_probability_targets(device):
    """torch promotes log_softmax(input) * target: a bfloat16 input with float32 targets gives a
    float32 loss. fastloss computes in the promoted dtype (torch rounds log_softmax to bfloat16 first,
    so torch is the less precise of the two: both are checked against float64)."""
    x = torch.randn(4, 10, device=device).bfloat16().requires_grad_()
    q = torch.randn(4, 10, device=device).softmax(1)
    ours = fastloss.functional.cross_entropy(x, q)
    ref = F.cross_entropy(x, q)
    assert ours.dtype == ref.dtype == torch.float32
    exact, gexact, _ = reference(x, q, None, "mean", 0.0, prob=True)
    assert_close_ref(ours, exact, torch.float32, "loss")
    torch.testing.assert_close(ours, ref, rtol=1e-2, atol=1e-2)
    g1, = torch.autograd.grad(ours, x)
    assert g1.dtype == torch.bfloat16
    assert_close_ref(g1, gexact, torch.bfloat16, "grad")


@pytest.mark.parametrize("device", device_params())
def test_probability_target_weight_gradient(device):
    """torch differentiates the class weight only for probability targets (documented torch-op path)."""
    x = torch.randn(5, 6, 2, device=device, dtype=torch.float64, requires_grad=True)
    q = torch.randn(5, 6, 2, device=device, dtype=torch.float64).softmax(1).requires_grad_()
    w = (torch.rand(6, device=device, dtype=torch.float64) + 0.5).requires_grad_()
    for red in REDUCTIONS:
        ours = fastloss.functional.cross_entropy(x, q, weight=w, reduction=red, label_smoothing=0.1)
        ref = F.cross_entropy(x, q, weight=w, reduction=red, label_smoothing=0.1)
        go = torch.rand_like(ref)
        for a, b in zip(torch.autograd.grad(ours, [x, q, w], go), torch.autograd.grad(ref, [x, q, w], go)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", device_params())
def test_no_grad_paths(device):
    """Without grad (no_grad, inference_mode, input not requiring grad) only the loss is computed."""
    x = torch.randn(8, 50, device=device)
    t = make_class_target((8, 50), device)
    ref = F.cross_entropy(x, t)
    with torch.no_grad():
        torch.testing.assert_close(fastloss.functional.cross_entropy(x.requires_grad_(), t), ref)
    with torch.inference_mode():
        torch.testing.assert_close(fastloss.functional.cross_entropy(x, t), ref)
    loss, grad, lse = torch.ops.fastloss._cross_entropy_forward(x.detach(), t, None, 1, -100, 0.0, False, False, None)
    assert grad.numel() == 0 and lse.numel() == 0
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("device", device_params())
def test_autocast(device):
    """Under autocast torch returns float32 losses (fp32 policy) and gradients in the logits' dtype;
    fastloss matches that without a float32 copy of the logits. Values: on CPU torch upcasts the
    whole loss; on CUDA it rounds log_softmax to bfloat16 first (log_softmax keeps an explicit dtype),
    so there torch is the less precise one: both are checked against float64."""
    dt = torch.bfloat16
    x = torch.randn(6, 100, device=device).to(dt).requires_grad_()
    t = make_class_target((6, 100), device)
    w = torch.rand(100, device=device)  # float32 weight: allowed under autocast, as in torch
    with torch.autocast(device_type=device, dtype=dt):
        ours = fastloss.functional.cross_entropy(x, t, weight=w, label_smoothing=0.1)
        ref = F.cross_entropy(x, t, weight=w, label_smoothing=0.1)
        ours_n = fastloss.functional.nll_loss(x.log_softmax(1), t)
        ref_n = F.nll_loss(x.log_softmax(1), t)
    assert ours.dtype == ref.dtype == torch.float32
    assert ours_n.dtype == ref_n.dtype
    exact, gexact, _ = reference(x, t, w, "mean", 0.1)
    assert_close_ref(ours, exact, torch.float32, "loss")
    torch.testing.assert_close(ours, ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours_n, ref_n, rtol=1e-2, atol=1e-2)
    g1, = torch.autograd.grad(ours, x)
    g2, = torch.autograd.grad(ref, x)
    assert g1.dtype == g2.dtype == dt
    assert_close_ref(g1, gexact, dt, "grad")


@pytest.mark.parametrize("device", device_params())
def test_modules(device):
    w = torch.rand(12, device=device)
    ours = fastloss.CrossEntropyLoss(weight=w, ignore_index=3, reduction="sum", label_smoothing=0.05).to(device)
    ref = torch.nn.CrossEntropyLoss(weight=w, ignore_index=3, reduction="sum", label_smoothing=0.05).to(device)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(7, 12, device=device)
    t = torch.randint(0, 12, (7,), device=device)
    torch.testing.assert_close(ours(x, t), ref(x, t))
    nll, nll_ref = fastloss.NLLLoss(weight=w), torch.nn.NLLLoss(weight=w)
    torch.testing.assert_close(nll(x.log_softmax(1), t), nll_ref(x.log_softmax(1), t))


# ------------------------------------------------------------------------------ CUDA kernel paths
# float64 rows of 40000 in the warp kernel are left out (slow there; float32 covers that path)
KERNEL_PATHS = [
    (config, cap, dtype, C)
    for config, cap in [(0, -1), (1, -1), (1, 0), (1, 1), (2, -1), (2, 0), (2, 2), (3, -1), (3, 1)]
    for dtype in DTYPES
    for C in [1, 3, 8, 129, 1000, 5003, 40000]
    if not (C > 5003 and config == 0 and dtype == torch.float64)
]


@requires_cuda
@pytest.mark.parametrize("config,smem_cap,dtype,C", KERNEL_PATHS, ids=str)
@pytest.mark.parametrize("kind", ["class", "prob"])
def test_cuda_row_kernel_paths(config, smem_cap, dtype, C, kind):
    """Each row kernel configuration (a warp per row; 256-thread blocks two per SM; 1024-thread blocks;
    2-block clusters sharing a row, sm_90) with its register, shared-memory and re-read tiers, on
    aligned and misaligned rows."""
    old_c = torch.ops.fastloss._set_option("ce_config", config)
    old_s = torch.ops.fastloss._set_option("ce_smem_vecs", smem_cap)
    try:
        for layout in ["contig", "slice"]:
            shape = (3, C)
            x = make_input(shape, dtype, "cuda", layout).requires_grad_()
            prob = kind == "prob"
            target = (torch.randn(shape, device="cuda").softmax(1).to(dtype) if prob
                      else make_class_target(shape, "cuda", ignore_frac=0.0))
            w = torch.rand(C, device="cuda").to(dtype) + 0.5
            loss = fastloss.functional.cross_entropy(x, target, weight=w, reduction="none", label_smoothing=0.1)
            go = torch.rand(3, device="cuda", dtype=torch.float64) + 0.5
            ref, gref, _ = reference(x, target, w, "none", 0.1, grad_out=go, prob=prob)
            assert_close_ref(loss, ref, dtype, f"loss {layout}")
            g, = torch.autograd.grad(loss, x, go.to(loss.dtype))
            assert_close_ref(g, gref, dtype, f"grad {layout}")
    finally:
        torch.ops.fastloss._set_option("ce_config", old_c)
        torch.ops.fastloss._set_option("ce_smem_vecs", old_s)


@requires_cuda
def test_cuda_large_rows_bf16():
    """An LLM-sized row (128256 classes, bfloat16), with the rows' tail re-read path too."""
    x = (torch.randn(4, 128256, device="cuda") * 2).bfloat16().requires_grad_()
    t = torch.randint(0, 128256, (4,), device="cuda")
    t[1] = -100
    loss = fastloss.functional.cross_entropy(x, t, label_smoothing=0.1)
    ref, gref, _ = reference(x, t, None, "mean", 0.1)
    assert_close_ref(loss, ref, torch.bfloat16, "loss")
    g, = torch.autograd.grad(loss, x)
    assert_close_ref(g, gref, torch.bfloat16, "grad")
    assert (g[1] == 0).all()


@requires_cuda
@pytest.mark.parametrize("config", [1, 2, 3])
def test_cuda_ignored_row_of_2_31_minus_65_classes(config):
    """The longest row the host check allows (2^31 - 65 classes, bfloat16: 4 GiB) with its target ignored:
    loss 0 and a gradient of zeros, the logits never read. Each block kernel (256 / 1024 threads, 2-block
    clusters) steps its fill by 256 to 1024 classes past the last one: a 32-bit counter wrapped there and
    wrote out of bounds."""
    C = 2 ** 31 - 65
    if torch.cuda.get_device_properties(0).total_memory < 16 * 2 ** 30:
        pytest.skip("needs about 13 GiB of GPU memory")
    old_c = torch.ops.fastloss._set_option("ce_config", config)
    try:
        x = torch.empty(1, C, device="cuda", dtype=torch.bfloat16).requires_grad_()  # never read
        t = torch.full((1,), -100, device="cuda")
        loss = fastloss.functional.cross_entropy(x, t, reduction="sum")
        g, = torch.autograd.grad(loss, x)
        torch.cuda.synchronize()
        assert loss.item() == 0
        assert g.shape == x.shape and torch.count_nonzero(g).item() == 0
    finally:
        torch.ops.fastloss._set_option("ce_config", old_c)
        x = g = None
        torch.cuda.empty_cache()


@requires_cuda
def test_cuda_other_device_and_stream():
    x = torch.randn(16, 300, device="cuda", requires_grad=True)
    t = make_class_target((16, 300), "cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        loss = fastloss.functional.cross_entropy(x, t)
        g, = torch.autograd.grad(loss, x)
    s.synchronize()
    ref, gref, _ = reference(x, t, None, "mean", 0.0)
    assert_close_ref(loss, ref, torch.float32, "loss")
    assert_close_ref(g, gref, torch.float32, "grad")
    if torch.cuda.device_count() > 1:
        x1 = x.detach().to("cuda:1").requires_grad_()
        l1 = fastloss.functional.cross_entropy(x1, t.to("cuda:1"))
        assert l1.device == torch.device("cuda:1")
        torch.testing.assert_close(l1.cpu(), loss.detach().cpu())


@requires_cuda
def test_cuda_graph_capture():
    """No host sync in the fused path: forward and backward capture into a CUDA graph and replay."""
    x = torch.randn(32, 1000, device="cuda", requires_grad=True)
    t = make_class_target((32, 1000), "cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up
        for _ in range(2):
            fastloss.functional.cross_entropy(x, t).backward()
    torch.cuda.current_stream().wait_stream(s)
    x.grad = None
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        loss = fastloss.functional.cross_entropy(x, t, label_smoothing=0.1)
        grad, = torch.autograd.grad(loss, x)
    x.data.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    ref, gref, _ = reference(x, t, None, "mean", 0.1)
    assert_close_ref(loss, ref, torch.float32, "loss")
    assert_close_ref(grad, gref, torch.float32, "grad")


@requires_cuda
def test_cuda_bad_target_without_validation_is_nan_not_oob():
    x = torch.randn(4, 10, device="cuda", requires_grad=True)
    t = torch.tensor([1, 10, -5, 2], device="cuda")
    old = fastloss.set_target_validation(False)
    try:
        loss = fastloss.functional.cross_entropy(x, t, reduction="none")
        g, = torch.autograd.grad(loss.sum(), x)
    finally:
        fastloss.set_target_validation(old)
    assert torch.isnan(loss[1]) and torch.isnan(loss[2]) and torch.isfinite(loss[[0, 3]]).all()
    assert torch.isnan(g[1]).all() and torch.isfinite(g[0]).all()


@requires_cuda
def test_cuda_peak_memory_one_gradient_buffer():
    """Forward + backward allocate no more than one gradient-sized buffer beyond inputs."""
    N, C = 64, 32000
    x = torch.randn(N, C, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, C, (N,), device="cuda")
    fastloss.functional.cross_entropy(x, t).backward()  # warm up (allocator, kernels)
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fastloss.functional.cross_entropy(x, t).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= x.numel() * x.element_size() + (1 << 20), extra


@pytest.mark.parametrize("device", device_params())
def test_forward_gradient_buffer_becomes_input_grad(device):
    """The fused path: backward scales the forward's gradient in place and hands that very buffer to
    autograd (no copy, no second gradient-sized allocation); with retain_graph it must not."""
    x = torch.randn(16, 300, device=device, requires_grad=True)
    t = make_class_target((16, 300), device)
    loss, grad, _ = torch.ops.fastloss._cross_entropy_forward(x, t, None, 1, -100, 0.0, True, False, None)
    ptr = grad.data_ptr()
    del grad  # a live reference would make autograd copy instead of taking the buffer
    (loss * 2.0).backward()
    assert x.grad.data_ptr() == ptr
    x.grad = None
    loss, grad, _ = torch.ops.fastloss._cross_entropy_forward(x, t, None, 1, -100, 0.0, True, False, None)
    ptr = grad.data_ptr()
    del grad
    loss.backward(retain_graph=True)
    assert x.grad.data_ptr() != ptr  # the saved gradient stays intact for a second backward


@pytest.mark.parametrize("prob", [False, True])
def test_cpu_every_row_tail(prob):
    """Rows of 1..40 classes: every length of the vector loops' padded tail (0..15 after 16-wide
    blocks), with a -inf logit in some rows, against torch in float64."""
    for C in range(1, 41):
        x = torch.randn(7, C) * 4
        if C > 2:
            x[1, C - 1] = float("-inf")
            x[3, C // 2] = float("-inf")
        x.requires_grad_()
        t = torch.randn(7, C).softmax(1) if prob else torch.randint(0, C, (7,))
        if not prob and C > 2:
            t[1], t[3] = 0, (C // 2 + 1) % C  # targets on finite logits
        go = torch.rand(7)
        got = fastloss.functional.cross_entropy(x, t, label_smoothing=0.0 if prob else 0.1, reduction="none")
        (g,) = torch.autograd.grad(got, x, go)
        x64 = x.detach().double().requires_grad_()
        t64 = t.double() if prob else t
        want = F.cross_entropy(x64, t64, label_smoothing=0.0 if prob else 0.1, reduction="none")
        (g64,) = torch.autograd.grad(want, x64, go.double())
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=f"C={C}")
        torch.testing.assert_close(g.double(), g64, rtol=1e-5, atol=1e-6, msg=f"C={C}")


# ====================================================================== nll_loss
NLL_SHAPES = [(7,), (1, 1), (5, 2), (9, 33), (3, 1000), (3, 5, 4), (2, 4, 3, 2)]

NLL_CASES = list(itertools.product(NLL_SHAPES, ["none", "mean", "sum"], [False, True], [-100, 1]))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,reduction,weighted,ignore_index", NLL_CASES)
def test_nll_matches_torch(device, dtype, shape, reduction, weighted, ignore_index):
    C = shape[0] if len(shape) == 1 else shape[1]
    layout = "permute" if len(shape) > 2 else ("transpose" if len(shape) == 2 else "contig")
    x = make_input(shape, dtype, device, layout).requires_grad_()
    t = make_class_target(shape, device, ignore_index=ignore_index)
    w = (torch.rand(C, device=device) + 0.2).to(dtype) if weighted else None
    loss = fastloss.functional.nll_loss(x, t, weight=w, reduction=reduction, ignore_index=ignore_index)
    grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5

    x64 = x.detach().double().contiguous().requires_grad_()  # torch's nll_loss2d backward needs contiguous
    ref = F.nll_loss(x64, t, weight=w.double() if weighted else None, reduction=reduction, ignore_index=ignore_index)
    gref, = torch.autograd.grad(ref, x64, grad_out)
    assert loss.dtype == dtype
    assert_close_ref(loss, ref, dtype, "loss")
    g, = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
    assert_close_ref(g, gref, dtype, "grad")


@pytest.mark.parametrize("device", device_params())
def test_nll_all_ignored_and_uint8(device):
    x = torch.randn(4, 6, device=device, dtype=torch.float64, requires_grad=True)
    for t in [torch.full((4,), -100, device=device), torch.tensor([1, 2, 5, 0], device=device, dtype=torch.uint8)]:
        for red in ["none", "mean", "sum"]:
            ours = fastloss.functional.nll_loss(x, t, reduction=red)
            ref = F.nll_loss(x, t, reduction=red)
            torch.testing.assert_close(ours, ref, equal_nan=True)
            g1, = torch.autograd.grad(ours.sum(), x)
            g2, = torch.autograd.grad(ref.sum(), x)
            torch.testing.assert_close(g1, g2, equal_nan=True)


