"""Shared test fixtures and helpers: devices (CPU always, CUDA when a GPU is visible), dtypes, tolerances,
input makers, comparisons against torch's float64 reference, the sample inputs of every loss (SAMPLES, for
tests/test_all_losses.py). Test files import helpers from here only, never from one another."""
import contextlib
import os
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastloss
from fastloss._losses import LOSSES  # noqa: F401  (the shared tests' parameters)

HAS_CUDA = torch.cuda.is_available() and fastloss.cuda_built()

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
f64, f32, bf16, f16 = torch.float64, torch.float32, torch.bfloat16, torch.float16
REDUCTIONS = ["none", "mean", "sum"]

def pytest_collection_modifyitems(config, items):
    """Tests marked `large` (tests/test_large.py: tensors past 2^31 elements, 8-10 GiB) run only with
    FASTLOSS_LARGE=1: `FASTLOSS_LARGE=1 python -m pytest -m large tests/test_large.py`."""
    if os.environ.get("FASTLOSS_LARGE") == "1":
        return
    skip = pytest.mark.skip(reason="large-tensor test: set FASTLOSS_LARGE=1 to run it")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of fastloss")


def call_and_check(fn):
    """fn(), then fastloss.check_errors(): an error a CUDA kernel finds (a bad target, a BCE input outside
    [0, 1]) is raised by the call itself on the CPU, and right after it on CUDA, whose default
    validation reports from the device without a host sync."""
    out = fn()
    fastloss.check_errors()
    return out


@pytest.fixture(autouse=True)
def _no_unreported_cuda_errors():
    """A test must raise every error its CUDA calls recorded: one left over would be raised by the next
    test's first call instead."""
    yield
    if HAS_CUDA:
        try:
            fastloss.check_errors()
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"the test left an unreported CUDA error: {e}")


def device_params():
    """CUDA cases are always listed, and skip where there is no GPU."""
    return ["cpu", pytest.param("cuda", marks=requires_cuda)]


# torch < 2.14 passes a gradient exactly at a hinge's kink (the clamped argument == 0: margin_ranking,
# hinge_embedding, the triplet boundary); torch 2.14 and fastloss pass none. Under an older torch (the
# GPU machine has 2.11) the gradient entries a kink reaches are left out of the comparison.
TORCH_KINK_GRADIENT = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 14)


def drop_kinks(grads, ref_grads, kink):
    """(grads, ref_grads) with the entries that `kink` (a bool tensor over the broadcast shape: the
    hinge's argument is exactly 0) reaches set to 0 in both, only where torch < 2.14 is the reference."""
    if not TORCH_KINK_GRADIENT or not bool(kink.any()):
        return list(grads), list(ref_grads)
    out_g, out_r = [], []
    for g, r in zip(grads, ref_grads):
        k = kink.to(g.device)
        m = k if k.shape == g.shape else k.double().sum_to_size(g.shape) > 0  # a broadcast input: any element
        out_g.append(torch.where(m, torch.zeros((), dtype=g.dtype, device=g.device), g))
        out_r.append(torch.where(m.to(r.device), torch.zeros((), dtype=r.dtype, device=r.device), r))
    return out_g, out_r


# Tolerances against a float64 reference computed by torch on upcast inputs:
# (rtol, atol relative to the reference's largest magnitude).
TOL = {
    torch.float64: (1e-9, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.float16: (4e-3, 2e-3),
    torch.bfloat16: (3e-2, 1.6e-2),
}


def assert_close_ref(actual, ref, dtype, what="", floor=None):
    """actual (any dtype) against a float64 reference: elementwise, with atol scaled by max |ref|
    (at least `floor`: 1 for losses, whose exact zeros come from O(1) terms; 0.1 for gradients)."""
    if floor is None:
        floor = 1.0 if what.startswith("loss") else 0.1
    assert actual.shape == ref.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    rtol, atol = TOL[dtype]
    a = actual.detach().to("cpu", torch.float64)
    r = ref.detach().to("cpu", torch.float64)
    finite = torch.isfinite(r)
    assert torch.equal(torch.isnan(a), torch.isnan(r)), f"{what}: NaN pattern differs"
    assert torch.equal(a[~finite & ~torch.isnan(r)], r[~finite & ~torch.isnan(r)]), f"{what}: inf differs"
    scale = r[finite].abs().max().item() if finite.any() else 0.0
    torch.testing.assert_close(a[finite], r[finite], rtol=rtol, atol=atol * max(scale, floor),
                               msg=lambda m: f"{what} ({dtype}): {m}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _tensors(x):
    """The tensors of a result, nested lists/tuples flattened in order."""
    if isinstance(x, (list, tuple)):
        return [t for item in x for t in _tensors(item)]
    return [x]


def assert_deterministic(run, device):
    """run() twice gives bitwise-equal tensors; on the CPU a third run with one thread must too (the
    fixed-order reductions do not depend on the thread count)."""
    first, second = _tensors(run()), _tensors(run())
    third = second
    if device == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            third = _tensors(run())
        finally:
            torch.set_num_threads(threads)
    assert len(first) == len(second) == len(third)
    for a, b, c in zip(first, second, third):
        assert torch.equal(a, b)
        assert torch.equal(a, c), "result depends on the thread count"


def assert_profile_clean(prof, is_torch_op, fastloss_op):
    """No aten op for which is_torch_op(name) holds ran under the profiler (C++ calls included), and the
    fastloss op did (else the check would be void)."""
    names = {e.name for e in prof.events()}
    bad = {n for n in names if n.startswith("aten::") and is_torch_op(n)}
    assert not bad, sorted(bad)
    assert any(fastloss_op in n for n in names), "profiler saw no fastloss op (the check is void)"


def module_pair(cls, kwargs, device):
    """fastloss.<cls>(**kwargs) and torch.nn.<cls>(**kwargs) on device (legacy size_average / reduce must
    warn, as torch's), after checking the fastloss module is the torch class's subclass overriding forward
    only, with the same state_dict keys and reduction."""
    legacy = "size_average" in kwargs or "reduce" in kwargs
    with pytest.warns(UserWarning) if legacy else contextlib.nullcontext():
        mod = getattr(fastloss, cls)(**kwargs).to(device)
    with pytest.warns(UserWarning) if legacy else contextlib.nullcontext():
        ref_mod = getattr(torch.nn, cls)(**kwargs).to(device)
    assert isinstance(mod, getattr(torch.nn, cls)) and type(mod) is getattr(fastloss, cls)
    assert "forward" in vars(getattr(fastloss, cls))
    assert mod.state_dict().keys() == ref_mod.state_dict().keys()
    assert mod.reduction == ref_mod.reduction
    return mod, ref_mod


def laid_out(base, shape, layout):
    """base(shape) in a memory layout: 'transpose' (2-D), 'slice' (1-D: every other element; 2-D: columns
    1..C of a wider tensor), 'permute' (K-D, reversed dims), 'expand' (stride 0 along the first dim, a
    broadcast view of the full size); 'contig' (or anything else): base(shape) itself."""
    if layout == "transpose":
        return base(shape[::-1]).t()
    if layout == "slice":
        if len(shape) == 1:
            return base((2 * shape[0],))[::2]
        return base((shape[0], shape[1] + 3))[:, 1:shape[1] + 1]
    if layout == "permute":
        return base(shape[::-1]).permute(*reversed(range(len(shape))))
    if layout == "expand":
        return base((1, *shape[1:])).expand(shape)
    return base(shape)


def assert_matches_with_grads(out, ref, inputs):
    """out against torch's ref: shape, dtype and values, then the gradients of inputs for a random upstream
    gradient in [0.5, 1.5)."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref)
    go = torch.rand_like(ref) + 0.5
    for a, b in zip(torch.autograd.grad(out, inputs, go), torch.autograd.grad(ref, inputs, go)):
        torch.testing.assert_close(a, b)


def assert_legacy_matches(ours_call, ref_call, inputs):
    """ours_call() and torch's ref_call() (legacy size_average / reduce given) both warn that those are
    deprecated, and agree: values and the gradients of inputs."""
    with pytest.warns(UserWarning, match="deprecated"):
        out = ours_call()
    with pytest.warns(UserWarning, match="deprecated"):
        ref = ref_call()
    assert_matches_with_grads(out, ref, inputs)


def assert_compiled_matches(compiled, ref_fn, args, inputs, atol=1e-5, grad_atol=1e-6, rtol=1e-5):
    """compiled(*args) against ref_fn(*args) (eager torch): the values, and the gradients of inputs."""
    got = compiled(*args)
    g_got = torch.autograd.grad(got, inputs)
    ref = ref_fn(*args)
    g_ref = torch.autograd.grad(ref, inputs)
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=grad_atol)


def opcheck_test(op_cases, n_cases):
    """A test_opcheck(device, case): torch.library.opcheck of each (op, args) of op_cases(device), which
    must list n_cases of them (the count is needed at collection time, before any device exists)."""
    @pytest.mark.parametrize("device", device_params())
    @pytest.mark.parametrize("case", range(n_cases))
    def test_opcheck(device, case):
        cases = op_cases(device)
        assert len(cases) == n_cases
        op, args = cases[case]
        torch.library.opcheck(op, args)
    return test_opcheck


# ============================================================ inputs and float64 references (pointwise tests)
def make(shape, dtype, device, layout="contig", scale=2.0, positive=False):
    """Random values in the requested memory layout: 'transpose' (2-D), 'slice' (1-D: every other
    element; 2-D: columns 1..C of a wider tensor), 'permute' (K-D, reversed dims), 'expand' (stride 0
    along the first dim, a broadcast view of the full size)."""
    def base(s):
        t = torch.rand(s, device=device) + 0.2 if positive else torch.randn(s, device=device) * scale
        return t.to(dtype)

    return laid_out(base, shape, layout)


def layouts(shape):
    if 0 in shape:
        return ["contig"]
    if len(shape) == 2:
        return ["contig", "transpose", "slice", "expand"]
    if len(shape) == 1:
        return ["contig", "slice"]
    if len(shape) > 2:
        return ["contig", "permute"]
    return ["contig"]


def torch_ref(fn, tensors, grad_out):
    """fn (torch code) on float64 copies of the tensors (integer ones too: same values), with
    requires_grad as the originals; returns the loss and the gradients of those that require grad."""
    up = [None if a is None else a.detach().double().requires_grad_(a.requires_grad) for a in tensors]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = fn(*up)
    diff = [a for a in up if a is not None and a.requires_grad]
    grads = list(torch.autograd.grad(loss, diff, grad_out.double())) if diff and grad_out is not None else []
    return loss, grads


def assert_close_to_ref(loss, ref_fn, tensors, diff, names, tol, what, n=None):
    """loss, and the gradients of `diff` for a random upstream gradient in [0.5, 1.5), against ref_fn (torch)
    on float64 copies of `tensors` (torch_ref), within assert_close_ref's bounds for `tol`; the gradients'
    floor is gfloor over n elements (default: the first tensor's). Returns the gradients, for the caller's own
    checks (dtypes, shapes, finiteness)."""
    grad_out = torch.rand(loss.shape, device=loss.device, dtype=torch.float64) + 0.5
    ref, ref_grads = torch_ref(ref_fn, tensors, grad_out)
    assert_close_ref(loss, ref, tol, f"loss {what}")
    grads = torch.autograd.grad(loss, diff, grad_out.to(loss.dtype))
    floor = gfloor(tol, tensors[0].numel() if n is None else n)
    for g, r, name in zip(grads, ref_grads, names):
        assert_close_ref(g, r, tol, f"grad {name} {what}", floor=floor)
    return grads


def diff_of(*tensors):
    return [a for a in tensors if a is not None and a.requires_grad]


def gfloor(dtype, n):
    """assert_close_ref floor for gradients of a loss over n elements: a mean's gradients are O(1/n),
    so the default floor (0.1) would hide errors in them; float16 gradients below 6.1e-5 are
    subnormal (spacing 6e-8), which the floor allows for."""
    f = min(4.0 / max(n, 1), 1.0)
    return max(f, 6e-5) if dtype == torch.float16 else f


def coarsest(*dtypes):
    """The least precise of the dtypes (for tolerances of mixed-dtype computations)."""
    return max(dtypes, key=lambda d: TOL[d][0])


POISONED_F = ["l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "triplet_margin_loss", "margin_ranking_loss",
              "cosine_embedding_loss", "hinge_embedding_loss", "pairwise_distance", "cosine_similarity"]


POISONED_TORCH = ["pairwise_distance", "triplet_margin_loss", "margin_ranking_loss", "cosine_embedding_loss",
                  "hinge_embedding_loss", "norm"]


POISONED_NN = ["l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss"]


def poison_torch_losses(monkeypatch):
    """Make torch's own losses (and the distance helpers they use) raise when called."""
    def boom(*a, **k):
        raise AssertionError("fastloss called a torch loss")

    for name in POISONED_F:
        monkeypatch.setattr(F, name, boom)
    for name in POISONED_TORCH:
        monkeypatch.setattr(torch, name, boom)
    for name in POISONED_NN:
        monkeypatch.setattr(torch._C._nn, name, boom)


# =================================== comparison helpers of the pointwise tests (binary, poisson / gaussian)
# BIG spans two of the CPU engine's 16384-element chunks and a tail (vector tails, partial sums added in
# order) while staying below torch's own parallel grain (32768): on this 2-core machine torch's threaded
# elementwise ops in the reference and the comparisons are slow
BIG = (32001,)
LAYOUT_SHAPES = [(), (7,), (0,), (5, 4), (4, 0, 3), (3, 1000), BIG, (2, 3, 4, 5)]


LEGACY = [(True, None), (False, None), (None, True), (None, False), (True, False), (False, True), (True, True),
          (False, False)]


def rounded(ref, dtype):
    """The float64 reference rounded to dtype (where a value overflows the dtype, fastloss's can only be
    inf)."""
    return ref.detach().to(dtype).to(f64)


def check(ours_fn, ref_fn, tensors, names, dtype, out_dtype=None, no_warning=True, round_ref=False,
          grad_out_dtype=None):
    """ours_fn(*tensors) against ref_fn (torch) on float64 copies of the same values: the loss (of dtype
    out_dtype or dtype) and, for a random grad_output (never exactly 1), the gradient of every tensor that
    requires grad, each of its own dtype and shape; tolerances of the coarsest dtype involved."""
    if no_warning:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss = ours_fn(*tensors)
    else:
        loss = ours_fn(*tensors)
    dtypes = [t.dtype for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    tol = coarsest(*dtypes, loss.dtype)
    grad_out = (torch.rand(loss.shape, device=loss.device, dtype=f64) + 0.5).to(grad_out_dtype or loss.dtype)
    ref, rgrads = torch_ref(ref_fn, tensors, grad_out)
    assert loss.dtype == (out_dtype or dtype), (loss.dtype, out_dtype or dtype)
    assert loss.shape == ref.shape, (loss.shape, ref.shape)
    assert loss.device == tensors[0].device
    assert_close_ref(loss, rounded(ref, loss.dtype) if round_ref else ref, tol, "loss")
    diff = [(t, n) for t, n in zip(tensors, names) if isinstance(t, torch.Tensor) and t.requires_grad]
    assert loss.requires_grad == bool(diff)
    if diff:
        grads = torch.autograd.grad(loss, [t for t, _ in diff], grad_out.to(loss.dtype))
        numel = max(t.numel() for t, _ in diff)
        for g, r, (t, name) in zip(grads, rgrads, diff):
            assert g.dtype == t.dtype and g.shape == t.shape, (name, g.dtype, g.shape)
            assert_close_ref(g, rounded(r, g.dtype) if round_ref else r, tol, f"grad {name}",
                             floor=gfloor(tol, numel))
    return loss


def layout_cases(contig, strided, shapes=LAYOUT_SHAPES):
    """(shape, *case, layout) for every shape: each case of contig(shape) contiguous, then, for each further
    memory layout of the shape (layouts), each case of strided(shape) in it."""
    out = []
    for shape in shapes:
        out += [(shape, *case, "contig") for case in contig(shape)]
        for layout in layouts(shape)[1:]:
            out += [(shape, *case, layout) for case in strided(shape)]
    return out


def raises_like(torch_call, our_call, exc=None, match=None):
    """torch's call raises; ours raises the same exception type, whose message contains `match` (a regex,
    checked against torch's message too)."""
    with pytest.raises(Exception) as ref_info:
        torch_call()
    with pytest.raises(Exception) as info:
        call_and_check(our_call)
    assert type(info.value) is type(ref_info.value), (type(info.value), type(ref_info.value), str(info.value))
    if exc is not None:
        assert type(ref_info.value) is exc
    if match is not None:
        assert re.search(match, str(ref_info.value)), f"torch's message: {ref_info.value}"
        assert re.search(match, str(info.value)), f"ours: {info.value} (torch's: {ref_info.value})"


def check_requires_grad_subsets(ours_of, ref_of, tensors, names, subsets):
    """For each subset of names, on fresh copies of the tensors of which only those named require grad
    (None stays None), ours_of(reduction) against torch's ref_of(reduction) for every reduction (check:
    the value and those gradients; an empty subset: no graph)."""
    for sub in subsets:
        ts = [None if a is None else a.detach().clone().requires_grad_(n in sub) for a, n in zip(tensors, names)]
        for red in REDUCTIONS:
            check(ours_of(red), ref_of(red), ts, names, f64)


def check_backward_plain_and_retain_graph(ours_of, ref_of, reduction, tensors, names, diff_names, device):
    """ours_of(reduction) against torch's ref_of(reduction) on fresh leaves (those named in diff_names
    requiring grad; None tensors stay None): loss.backward() (grad_output exactly 1), retain_graph twice
    (twice the gradient), and two upstream gradients on one graph."""
    def leaves():
        return [a.detach().clone().requires_grad_(n in diff_names) if a is not None else None
                for a, n in zip(tensors, names)]

    mine, theirs = leaves(), leaves()
    pairs = [(ours_of(reduction), mine), (ref_of(reduction), theirs)]
    for fn, args in pairs:
        loss = fn(*args)
        loss.backward(torch.ones_like(loss)) if reduction == "none" else loss.backward()
    for a, b in zip(mine, theirs):
        if a is not None and a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
            a.grad = b.grad = None
    for fn, args in pairs:
        loss = fn(*args).sum() * 3.0
        loss.backward(retain_graph=True)
        loss.backward()
    for a, b in zip(mine, theirs):
        if a is not None and a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    loss, loss2 = ours_of(reduction)(*mine), ref_of(reduction)(*theirs)
    d1 = [a for a in mine if a is not None and a.requires_grad]
    d2 = [a for a in theirs if a is not None and a.requires_grad]
    go1, go2 = (torch.rand(loss.shape, device=device) + 0.5 for _ in range(2))
    got = torch.autograd.grad(loss, d1, go1, retain_graph=True) + torch.autograd.grad(loss, d1, go2)
    exp = torch.autograd.grad(loss2, d2, go1, retain_graph=True) + torch.autograd.grad(loss2, d2, go2)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def check_autocast(ours_of, ref_of, tensors, names, device, ac):
    """For every reduction, ours_of(reduction) under torch.autocast(dtype=ac) against torch's ref_of: the
    loss's dtype is torch's, its values the float64 reference's at the result dtype's accuracy, and the
    gradient of each tensor that requires grad has that tensor's dtype and shape and the reference's
    values."""
    diff = [(a, n) for a, n in zip(tensors, names) if a is not None and a.requires_grad]
    for red in REDUCTIONS:
        with torch.autocast(device_type=device, dtype=ac):
            expect = ref_of(red)(*tensors)
            loss = ours_of(red)(*tensors)
        assert loss.dtype == expect.dtype, (loss.dtype, expect.dtype)
        grad_out = (torch.rand(loss.shape, device=device, dtype=f64) + 0.5).to(loss.dtype)
        ref, rgrads = torch_ref(ref_of(red), tensors, grad_out)
        tol = coarsest(loss.dtype, f32)
        assert_close_ref(loss, ref, tol, f"loss {red}")
        grads = torch.autograd.grad(loss, [a for a, _ in diff], grad_out)
        for g, r, (a, n) in zip(grads, rgrads, diff):
            assert g.dtype == a.dtype and g.shape == a.shape
            tol = coarsest(a.dtype, loss.dtype)
            assert_close_ref(g, r, tol, f"grad {n} {red}", floor=gfloor(tol, tensors[0].numel()))


# ===================================================================== class-index targets (cross_entropy)
def make_class_target(shape, device, ignore_index=-100, ignore_frac=0.2, dtype=torch.long):
    C = shape[0] if len(shape) == 1 else shape[1]
    tshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    t = torch.randint(0, C, tshape, device=device)
    if ignore_frac and t.numel() > 1:
        t[torch.rand(tshape, device=device) < ignore_frac] = ignore_index
    return t.to(dtype)


# ============================================== +-1 targets, gradient lists (embedding, margin_ranking, hinge)
def check_grads(grads, ref_grads, dtype, n, what, names):
    """Each gradient against its float64 reference (assert_close_ref, the floor of a loss over n elements)."""
    for g, r, name in zip(grads, ref_grads, names):
        assert_close_ref(g, r, dtype, f"grad {name} {what}", floor=gfloor(dtype, n))


def make_sign_target(kind, shape, dtype, device):
    """+-1 targets ('pm1'), with zeros ('pm1_0'), other values ('other'), int64 +-1 ('int'),
    float64 +-1 with zeros ('f64')."""
    if kind == "other":
        return torch.tensor([1.0, -1.0, 0.0, 3.0, 0.5, -2.0], device=device)[
            torch.randint(0, 6, shape, device=device)].to(dtype)
    if kind == "pm1_0" or kind == "f64":
        t = torch.randint(-1, 2, shape, device=device)
        return t.double() if kind == "f64" else t.to(dtype)
    t = torch.randint(0, 2, shape, device=device) * 2 - 1
    return t if kind == "int" else t.to(dtype)


# ================================================================ every loss: the table and sample inputs
# The losses, in README order: LOSSES, the table (fastloss/_losses.py), imported above.


def _leaf(t, grad=True):
    return t.detach().requires_grad_(grad)


def _size(big):
    """(rows, columns) of a sample: small, or big enough for several CPU chunks and threads (determinism)."""
    return (257, 3001) if big else (5, 7)


def _randn(shape, device, dtype, scale=1.0, grad=True):
    return _leaf((torch.randn(shape, device=device) * scale).to(dtype), grad)


def _target01(shape, device, dtype):
    return _leaf((torch.rand(shape, device=device) * 0.9 + 0.05).to(dtype))


def _classes(n, c, device, ignored=0.0):
    t = torch.randint(0, c, (n,), device=device)
    return torch.where(torch.rand(n, device=device) < ignored, -100, t)


def _samples_cross_entropy(device, dtype, big=False):
    n, c = _size(big)
    x = _randn((n, c), device, dtype)
    return [((x, _classes(n, c, device, 0.2)), {}),
            ((x, _leaf(torch.randn(n, c, device=device).softmax(-1).to(dtype))), {"reduction": "sum"})]


def _samples_nll(device, dtype, big=False):
    n, c = _size(big)
    x = _leaf(torch.randn(n, c, device=device).log_softmax(-1).to(dtype))
    return [((x, _classes(n, c, device, 0.2)), {"reduction": "sum"}),
            ((x, _classes(n, c, device)), {"weight": (torch.rand(c, device=device) + 0.2).to(dtype)})]


def _samples_regression(weighted, **kw):
    def build(device, dtype, big=False):
        shape = _size(big)
        x, t = _randn(shape, device, dtype), _randn(shape, device, dtype)
        out = [((x, t), dict(kw)), ((x, t), dict(kw, reduction="sum"))]
        if weighted:
            out.append(((x, t), dict(kw, weight=_leaf((torch.rand(shape, device=device) + 0.2).to(dtype)))))
        return out
    return build


def _pm1(shape, device, dtype):
    return (torch.randint(0, 2, shape, device=device) * 2 - 1).to(dtype)


def _samples_margin_ranking(device, dtype, big=False):
    shape = _size(big)
    return [((_randn(shape, device, dtype), _randn(shape, device, dtype), _pm1(shape, device, dtype)),
             {"margin": 0.3})]


def _samples_hinge(device, dtype, big=False):
    shape = _size(big)
    return [((_randn(shape, device, dtype), torch.randint(-1, 2, shape, device=device).to(dtype)), {"margin": 0.7})]


def _triplet_inputs(device, dtype, big):
    n, d = (257, 3001) if big else (6, 9)
    return tuple(_randn((n, d), device, dtype) for _ in range(3)), (30.0 if big else 1.5)


def _samples_triplet(device, dtype, big=False):
    a, margin = _triplet_inputs(device, dtype, big)
    return [(a, {"margin": margin}), (a, {"margin": margin, "p": 1.5, "swap": True, "reduction": "sum"})]


def _samples_twd(device, dtype, big=False):
    a, margin = _triplet_inputs(device, dtype, big)
    return [(a, {"margin": margin, "swap": True})]


def _samples_cosine(device, dtype, big=False):
    n, d = (257, 3001) if big else (6, 9)
    return [((_randn((n, d), device, dtype), _randn((n, d), device, dtype), _pm1((n,), device, dtype)),
             {"margin": 0.2})]


def _samples_soft_margin(device, dtype, big=False):
    shape = _size(big)
    x, t = _randn(shape, device, dtype), _pm1(shape, device, dtype)
    return [((x, t), {}), ((x, t), {"reduction": "sum"})]


def _samples_kl(device, dtype, big=False):
    shape = _size(big)
    x = _leaf(torch.randn(shape, device=device).log_softmax(-1).to(dtype))
    t = _leaf(torch.randn(shape, device=device).softmax(-1).to(dtype))
    lt = _leaf(torch.randn(shape, device=device).log_softmax(-1).to(dtype))
    return [((x, t), {"reduction": "batchmean"}), ((x, lt), {"reduction": "sum", "log_target": True})]


def _samples_bce(device, dtype, big=False):
    shape = _size(big)
    p = _target01(shape, device, dtype)
    w = (torch.rand(shape[-1], device=device) + 0.25).to(dtype)
    return [((p, _target01(shape, device, dtype)), {}), ((p, _target01(shape, device, dtype), w), {"reduction": "sum"})]


def _samples_bce_logits(device, dtype, big=False):
    shape = _size(big)
    x = _randn(shape, device, dtype, 3.0)
    w, pw = ((torch.rand(s, device=device) + 0.25).to(dtype) for s in ((shape[0], 1), shape[-1:]))
    return [((x, _target01(shape, device, dtype)), {}),
            ((x, _target01(shape, device, dtype)), {"weight": w, "pos_weight": pw, "reduction": "sum"})]


def _samples_poisson(device, dtype, big=False):
    shape = _size(big)
    x = _randn(shape, device, dtype)
    r = _leaf((torch.rand(shape, device=device) + 0.1).to(dtype))
    t = _leaf((torch.poisson(torch.rand(shape, device=device) * 4) + 1).to(dtype))  # >= 1: finite target gradients
    return [((x, t), {}), ((r, t), {"log_input": False, "full": True, "reduction": "sum"})]


def _samples_gaussian(device, dtype, big=False):
    shape = _size(big)
    x, t = _randn(shape, device, dtype), _randn(shape, device, dtype)
    v = _leaf((torch.rand(shape, device=device) + 0.1).to(dtype))
    return [((x, t, 0.7), {}), ((x, t, v), {}), ((x, t, v), {"full": True, "reduction": "sum"})]


def _samples_mlsm(device, dtype, big=False):
    shape = _size(big)
    x = _randn(shape, device, dtype, 2.0)
    w = _leaf((torch.rand(shape[-1], device=device) + 0.25).to(dtype))
    return [((x, _target01(shape, device, dtype)), {}), ((x, _target01(shape, device, dtype)), {"weight": w})]


def _samples_focal(device, dtype, big=False):
    shape = _size(big)
    x = _randn(shape, device, dtype, 2.0)
    return [((x, _target01(shape, device, dtype)), {"alpha": 0.25, "gamma": 2.0, "reduction": "mean"}),
            ((x, _target01(shape, device, dtype)), {"alpha": -1.0, "gamma": 0.5, "reduction": "sum"})]


def _samples_ctc(device, dtype, big=False):
    T, N, C, S = (300, 16, 40, 60) if big else (9, 3, 5, 3)
    lp = _leaf(torch.randn(T, N, C, device=device).log_softmax(-1).to(dtype))
    targets = torch.randint(1, C, (N, S), device=device)
    il = torch.randint(T - 2 if big else 7, T + 1, (N,)).tolist()
    tl = torch.randint(S // 2, S + 1, (N,)).tolist()
    cat = torch.cat([targets[i, :tl[i]] for i in range(N)])
    return [((lp, targets, il, tl), {}),
            ((lp, cat, torch.tensor(il), torch.tensor(tl)), {"reduction": "sum", "zero_infinity": True})]


def _samples_multi_margin(device, dtype, big=False):
    n, c = _size(big)
    x = _randn((n, c), device, dtype, 0.3 if big else 1.0)
    t = torch.randint(0, c, (n,), device=device)
    w = (torch.rand(c, device=device) + 0.2).to(dtype)
    return [((x, t), {}), ((x, t), {"p": 2, "margin": 0.5, "weight": w, "reduction": "sum"})]


def _samples_multilabel_margin(device, dtype, big=False):
    n, c = (300, 700) if big else (6, 5)
    x = _randn((n, c), device, dtype, 0.3 if big else 1.0)
    t = torch.randint(0, c, (n, c), device=device)
    t[torch.arange(n), torch.randint(0, c, (n,))] = -1  # each row's labels end at a -1 (some rows: none before it)
    return [((x, t), {}), ((x, t), {"reduction": "none"})]


def _samples_lce(device, dtype, big=False):
    n, d, v = (257, 64, 3001) if big else (6, 8, 11)
    x, w, b = _randn((n, d), device, dtype), _randn((v, d), device, dtype, 0.3), _randn((v,), device, dtype)
    t = _classes(n, v, device, 0.2)
    return [((x, w, t), {}), ((x, w, t), {"linear_bias": b, "reduction": "sum"})]


def focal_ref(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, as written there (torch ops only): torch.nn has no focal loss."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        pass
    elif reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    else:
        raise ValueError(f"Invalid Value for arg 'reduction': '{reduction} \n Supported reduction modes: 'none', "
                         f"'mean', 'sum'")
    return loss


def torch_function(name):
    """torch's function for the loss named `name` (the focal loss: torchvision's formula, focal_ref)."""
    return focal_ref if name == "sigmoid_focal_loss" else getattr(F, name)


# name -> builder(device, dtype, big=False) -> [(args, kwargs), ...]: calls of fastloss.functional.<name> (and of
# torch's function, on the same tensors) over the loss's main optional arguments; the floating-point tensors that
# get gradients are leaves requiring grad. Small, or with big=True large enough for several CPU chunks / threads
# and CUDA blocks (determinism). The shared tests of tests/test_all_losses.py run them all.
SAMPLES = {
    "cross_entropy": _samples_cross_entropy,
    "nll_loss": _samples_nll,
    "l1_loss": _samples_regression(True),
    "mse_loss": _samples_regression(True),
    "smooth_l1_loss": _samples_regression(False, beta=0.5),
    "huber_loss": _samples_regression(True, delta=2.0),
    "margin_ranking_loss": _samples_margin_ranking,
    "hinge_embedding_loss": _samples_hinge,
    "triplet_margin_loss": _samples_triplet,
    "triplet_margin_with_distance_loss": _samples_twd,
    "cosine_embedding_loss": _samples_cosine,
    "soft_margin_loss": _samples_soft_margin,
    "kl_div": _samples_kl,
    "binary_cross_entropy": _samples_bce,
    "binary_cross_entropy_with_logits": _samples_bce_logits,
    "poisson_nll_loss": _samples_poisson,
    "gaussian_nll_loss": _samples_gaussian,
    "multilabel_soft_margin_loss": _samples_mlsm,
    "sigmoid_focal_loss": _samples_focal,
    "ctc_loss": _samples_ctc,
    "multi_margin_loss": _samples_multi_margin,
    "multilabel_margin_loss": _samples_multilabel_margin,
    "linear_cross_entropy": _samples_lce,
}


def sample_leaves(args, kwargs):
    """The tensors of a sample that require grad, in argument order."""
    return [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and a.requires_grad]
