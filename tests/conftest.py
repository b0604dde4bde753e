"""Shared test fixtures: devices (CPU always, CUDA when a GPU is visible), dtypes, tolerances."""
import contextlib
import os

import pytest
import torch

import fastloss

HAS_CUDA = torch.cuda.is_available() and fastloss.cuda_built()

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]

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
