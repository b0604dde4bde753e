"""The checks every loss shares, written once and parametrized over the table of losses (fastloss._losses.LOSSES,
those this torch has) with each loss's sample calls (conftest.SAMPLES): every loss in the table
has samples, no silent fallback to torch's own loss (torch's function poisoned, its aten op absent from the
profile, the loss's own op present; values and gradients as torch's), no-grad paths (no_grad, inference_mode,
detached inputs), patch() and patch(module), double backward refused with a clear error, torch.compile
(fullgraph, one graph per family; Inductor on a few losses) and bitwise determinism. The family files
(tests/pointwise/, test_<family>.py) hold what is particular to each loss."""
import inspect

import pytest
import torch

import fastloss
from fastloss._losses import available
from conftest import (assert_compiled_matches, assert_deterministic, bf16, device_params, f32, f64, LOSSES,
                      poison_torch_losses, REDUCTIONS, sample_leaves, SAMPLES, torch_function)

# the losses this torch has (linear_cross_entropy: torch >= 2.14; torch's is the reference)
_LOSSES = LOSSES  # the whole table
LOSSES = tuple(loss for loss in _LOSSES if available(loss))
NAMES = [loss.name for loss in LOSSES]


def test_every_loss_has_samples():
    """Each loss of the table has a sample builder in conftest.SAMPLES (and no builder is left over), whose
    calls run (on the losses this torch has) and give a loss that requires grad."""
    every = [loss.name for loss in _LOSSES]
    assert sorted(SAMPLES) == sorted(every), set(SAMPLES) ^ set(every)
    for name in NAMES:
        samples = SAMPLES[name]("cpu", f64)
        assert samples
        for args, kwargs in samples:
            assert getattr(fastloss.functional, name)(*args, **kwargs).requires_grad


def _aten_stem(name):
    """The part of torch's aten op name that names this loss ("mse_loss" -> "mse": aten::mse_loss,
    aten::mse_loss_backward)."""
    return name[:-len("_loss")] if name.endswith("_loss") else name


F = torch.nn.functional
_BINARY = ({"binary_cross_entropy", "sigmoid", "softplus", "soft_margin"},
           {"exp", "log", "log1p", "pow", "clamp", "clamp_min", "maximum", "rsub"})
_POISSON_GAUSSIAN = ({"poisson", "gaussian"},
                     {"exp", "log", "pow", "clamp", "clamp_", "masked_fill", "masked_fill_", "mean", "xlogy"})
# What the fused kernel computes besides the loss's own aten op, which must not run either: (substrings of aten
# op names, whole aten op names without "aten::").
FORBIDDEN_ATEN = {
    "binary_cross_entropy": _BINARY, "binary_cross_entropy_with_logits": _BINARY,
    "multilabel_soft_margin_loss": _BINARY, "sigmoid_focal_loss": _BINARY,
    "kl_div": ({"kl_div", "xlogy"}, {"exp", "log"}),
    "poisson_nll_loss": _POISSON_GAUSSIAN, "gaussian_nll_loss": _POISSON_GAUSSIAN,
    "soft_margin_loss": ({"soft_margin"}, {"exp", "log1p"}),
    "multi_margin_loss": ({"margin"}, set()), "multilabel_margin_loss": ({"margin"}, set()),
}
# Further torch functions a loss's kernel replaces, poisoned in Python too: (namespace, name).
_BINARY_PY = [(F, "binary_cross_entropy"), (F, "binary_cross_entropy_with_logits"), (F, "multilabel_soft_margin_loss"),
              (F, "logsigmoid"), (F, "sigmoid"), (F, "softplus"), (torch, "binary_cross_entropy_with_logits"),
              (torch, "sigmoid"), (torch._C._nn, "binary_cross_entropy")]
ALSO_POISONED = {
    "binary_cross_entropy": _BINARY_PY, "binary_cross_entropy_with_logits": _BINARY_PY,
    "multilabel_soft_margin_loss": _BINARY_PY, "sigmoid_focal_loss": _BINARY_PY,
    "kl_div": [(torch, "xlogy")],
}


def _module_calls(loss, samples):
    """fastloss.<module> of each sample it can express: the sample's arguments its constructor takes go there,
    the others (in the functional's order) to forward. A sample with an argument neither takes (a weight of
    l1_loss, a module-free extra) or a module whose constructor needs more (LinearCrossEntropyLoss owns its
    weight) is left out."""
    if loss.module is None:
        return []
    cls, fn = getattr(fastloss, loss.module), getattr(fastloss.functional, loss.name)
    init = inspect.signature(cls.__init__).parameters
    fwd = [p for p in inspect.signature(cls.forward).parameters.values() if p.name != "self"]
    out = []
    for args, kwargs in samples:
        bound = inspect.signature(fn).bind(*args, **kwargs).arguments
        ctor = {k: v for k, v in bound.items() if k in init}
        rest = [v for k, v in bound.items() if k not in init]
        required = {k for k, p in init.items() if k != "self" and p.default is p.empty}
        if len(rest) <= len(fwd) and required <= set(ctor):
            out.append(cls(**ctor)(*rest))
    return out


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: loss.name)
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")  # kl_div's 'mean', as torch
def test_no_torch_fallback(loss, monkeypatch):
    """No silent fallback: with torch's function of this loss (the losses and distance helpers they use, and
    the functions its kernel fuses) poisoned in Python, the fastloss function (every reduction) and module run
    forward and backward, give torch's values and finite gradients, and the profiler (C++ calls included) sees
    no aten op of the loss nor of what its kernel fuses, and the loss's own op (the table's)."""
    name = loss.name
    samples = [(args, dict(kwargs, **({} if red is None else {"reduction": red})))
               for args, kwargs in SAMPLES[name]("cpu", f64) for red in [None] + REDUCTIONS]
    expect = [torch_function(name)(*args, **kwargs).detach() for args, kwargs in samples]

    def boom(*a, **k):
        raise AssertionError(f"fastloss called a torch function that {name} fuses")

    poison_torch_losses(monkeypatch)
    for namespace in (F, torch, torch._C._nn):
        if hasattr(namespace, name):
            monkeypatch.setattr(namespace, name, boom)
    for namespace, fn_name in ALSO_POISONED.get(name, []):
        monkeypatch.setattr(namespace, fn_name, boom)
    fn = getattr(fastloss.functional, name)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = [fn(*args, **kwargs) for args, kwargs in samples]
        mods = _module_calls(loss, samples)
        sum(g.sum() for g in got + mods).backward()
    for g, e in zip(got, expect):
        torch.testing.assert_close(g.detach(), e)
    for args, kwargs in samples:
        for leaf in sample_leaves(args, kwargs):
            assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
    parts, whole = FORBIDDEN_ATEN.get(name, (set(), set()))
    parts = parts | {_aten_stem(name)}
    events = {e.name for e in prof.events()}
    bad = sorted(n for n in events if n.startswith("aten::") and (n[6:] in whole or any(p in n for p in parts)))
    assert not bad
    assert mods or loss.module in (None, "LinearCrossEntropyLoss"), "no sample fits the module"
    assert loss.op in events, f"profiler saw no {loss.op} (the check is void): {sorted(events)}"


class _Claimed(torch.Tensor):
    """A tensor subclass whose __torch_function__ claims fastloss's losses: it records the call and runs it
    again on plain tensors, so the result shows what the override received."""
    calls = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", "").startswith("fastloss.functional"):
            cls.calls.append(func)
            plain = lambda v: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v  # noqa: E731
            return func(*map(plain, args), **{k: plain(v) for k, v in kwargs.items()})
        return super().__torch_function__(func, types, args, kwargs)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: loss.name)
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")  # kl_div's 'mean', as torch
def test_overrides_and_transforms_get_every_argument(loss):
    """The two ways a call leaves fastloss's kernels keep its arguments: a __torch_function__ override on an
    argument gets the function and every argument (its rerun on plain tensors gives the direct call's value),
    and under a torch.func transform torch's own loss gives torch's value and gradient (every sample and
    reduction)."""
    name = loss.name
    fn, ref_fn = getattr(fastloss.functional, name), torch_function(name)
    for args, kwargs in SAMPLES[name]("cpu", f64):
        for red in REDUCTIONS:
            kw = dict(kwargs, reduction=red)
            direct = fn(*args, **kw)
            _Claimed.calls.clear()
            got = fn(args[0].detach().as_subclass(_Claimed), *args[1:], **kw)
            assert _Claimed.calls == [fn], (name, _Claimed.calls)
            torch.testing.assert_close(got, direct.detach(), msg=lambda m: f"{name} {red} override: {m}")
            x0 = args[0].detach()
            grad, value = torch.func.grad_and_value(lambda x: fn(x, *args[1:], **kw).sum())(x0)
            x = x0.clone().requires_grad_()
            ref = ref_fn(x, *args[1:], **kw).sum()
            ref.backward()
            torch.testing.assert_close(value, ref.detach(), msg=lambda m: f"{name} {red} transform: {m}")
            torch.testing.assert_close(grad, x.grad, msg=lambda m: f"{name} {red} transform gradient: {m}")


def _detached(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides the total loss")  # kl_div's 'mean', as torch
def test_no_grad_paths(device, name):
    """no_grad, inference_mode, and inputs that don't require grad: torch's value (every reduction), and
    no graph."""
    fn, ref_fn = getattr(fastloss.functional, name), torch_function(name)
    for args, kwargs in SAMPLES[name](device, f32):
        for red in REDUCTIONS:
            kw = dict(kwargs, reduction=red)
            ref = ref_fn(*args, **kw).detach()
            with torch.no_grad():
                out = fn(*args, **kw)
            assert not out.requires_grad
            torch.testing.assert_close(out, ref)
            with torch.inference_mode():
                torch.testing.assert_close(fn(*args, **kw), ref)
            out = fn(*map(_detached, args), **{k: _detached(v) for k, v in kw.items()})
            assert not out.requires_grad
            torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("loss", [loss for loss in LOSSES if loss.module and hasattr(torch.nn, loss.module)],
                         ids=lambda loss: loss.name)
def test_patch_swaps(loss):
    """fastloss.patch(module) turns torch's module (built with each sample's settings) into fastloss's in
    place, settings and buffers kept; patch() makes torch.nn.functional's name and the torch.nn class
    resolve to fastloss, unpatch() gives torch's back."""
    torch_cls, ours_cls = getattr(torch.nn, loss.module), getattr(fastloss, loss.module)
    init = inspect.signature(torch_cls.__init__).parameters
    for args, kwargs in SAMPLES[loss.name]("cpu", f32):
        bound = inspect.signature(getattr(fastloss.functional, loss.name)).bind(*args, **kwargs).arguments
        ctor = {k: _detached(v) for k, v in bound.items() if k in init}
        if {k for k, p in init.items() if k != "self" and p.default is p.empty} - set(ctor):
            continue  # a module owning its parameters (LinearCrossEntropyLoss): its own file patches it
        mod = torch_cls(**ctor)
        settings, state = {k: v for k, v in vars(mod).items() if not k.startswith("_")}, mod.state_dict()
        assert fastloss.patch(mod) is mod and type(mod) is ours_cls
        assert {k: v for k, v in vars(mod).items() if not k.startswith("_")} == settings
        assert mod.state_dict().keys() == state.keys()
        assert all(torch.equal(mod.state_dict()[k], v) for k, v in state.items())
    torch_fn = getattr(torch.nn.functional, loss.name)
    try:
        fastloss.patch()
        assert getattr(torch.nn.functional, loss.name) is getattr(fastloss.functional, loss.name)
        assert getattr(torch.nn, loss.module) is ours_cls
    finally:
        fastloss.unpatch()
    assert getattr(torch.nn.functional, loss.name) is torch_fn and getattr(torch.nn, loss.module) is torch_cls


@pytest.mark.parametrize("name", NAMES)
def test_double_backward_refused(name):
    """Documented deviation of the fused ops: a gradient taken with create_graph=True cannot be
    differentiated again; the error says so (at the first or the second backward)."""
    fn = getattr(fastloss.functional, name)
    for args, kwargs in SAMPLES[name]("cpu", f64):
        leaves = sample_leaves(args, kwargs)
        with pytest.raises(RuntimeError, match="double backward"):
            grads = torch.autograd.grad(fn(*args, **kwargs).sum(), leaves, create_graph=True)
            torch.autograd.grad(sum(g.sum() for g in grads), leaves)


# ------------------------------------------------------------------------------------------ torch.compile
# One aot_eager graph per family (not per loss: compile time is CI's budget). cross_entropy's and
# linear_cross_entropy's compile tests are in test_cross_entropy_extras.py / test_linear_cross_entropy.py.
COMPILED_FAMILIES = sorted({loss.family for loss in LOSSES} - {"cross_entropy", "linear_cross_entropy"})
# Inductor (slow: marker `compile`): one graph per family for these losses' first sample.
INDUCTOR = {"pointwise": ["binary_cross_entropy_with_logits"], "ctc": ["ctc_loss"],
            "margin_rows": ["multi_margin_loss", "multilabel_margin_loss"]}


def _traces_fullgraph(name, args):
    """A tensor var of gaussian_nll_loss needs torch's data-dependent sign check, a graph break (as in torch's
    own trace): tests/pointwise/test_poisson_gaussian.py compiles it without fullgraph."""
    return not (name == "gaussian_nll_loss" and isinstance(args[2], torch.Tensor))


def _compile_check(device, calls, **compile_kw):
    """The sum of every call (name, args, kwargs) compiled with fullgraph against torch eager: the value and
    the gradient of every leaf."""
    def step(fn_of):
        return sum(fn_of(name)(*args, **kwargs).sum() for name, args, kwargs in calls)

    leaves = list({id(t): t for _, args, kwargs in calls for t in sample_leaves(args, kwargs)}.values())
    compiled = torch.compile(lambda: step(lambda n: getattr(fastloss.functional, n)), fullgraph=True, **compile_kw)
    assert_compiled_matches(compiled, lambda: step(torch_function), (), leaves, atol=1e-4, grad_atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("family", COMPILED_FAMILIES)
def test_compile_fullgraph_aot_eager(device, family):
    """Every loss of the family traces (fake kernels, C++ autograd, the Python argument checks) in one graph
    with no graph break; torch's values and gradients."""
    calls = [(loss.name, args, kwargs) for loss in LOSSES if loss.family == family
             for args, kwargs in SAMPLES[loss.name](device, f32) if _traces_fullgraph(loss.name, args)]
    _compile_check(device, calls, backend="aot_eager")


@pytest.mark.compile
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("family", sorted(INDUCTOR))
def test_compile_fullgraph_inductor(device, family):
    _compile_check(device, [(name, *SAMPLES[name](device, f32)[0]) for name in INDUCTOR[family]])


# -------------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [f32, bf16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_deterministic(device, dtype, name):
    """Two runs give bitwise equal losses and gradients (fixed-order reductions, no float atomics), each sample
    as given and with reduction='none' (a random upstream gradient); on CPU also with one thread."""
    fn = getattr(fastloss.functional, name)
    for args, kwargs in SAMPLES[name](device, dtype, big=True):
        for kw in (kwargs, dict(kwargs, reduction="none")):
            leaves = sample_leaves(args, kw)
            go = torch.rand(fn(*args, **kw).shape, device=device).to(dtype)

            def run():
                loss = fn(*args, **kw)
                return [loss.detach()] + list(torch.autograd.grad(loss, leaves, go))

            assert_deterministic(run, device)
