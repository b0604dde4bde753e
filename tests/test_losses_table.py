"""The table of losses (fastloss/_losses.py) agrees with the code: every functional, module class, torch
function, csrc family, public op and benchmark case it names exists; the lists derived from it
(__all__, patch()'s lists, the torch.func fallback table) are what it says; and its differentiable
arguments are the ones that get gradients, in fastloss as in torch."""
import inspect
import pathlib
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastloss
import fastloss.functional as Fl
import fastloss.modules as Fm
from fastloss import _losses, bench
from fastloss.patch import PATCHED_FUNCTIONS, PATCHED_MODULES

ROWS = [pytest.param(loss, id=loss.name) for loss in _losses.LOSSES]
AVAILABLE = [pytest.param(loss, id=loss.name) for loss in _losses.LOSSES if _losses.available(loss)]
CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"


def test_table_shape():
    names = [loss.name for loss in _losses.LOSSES]
    assert len(set(names)) == len(names)
    modules = [loss.module for loss in _losses.LOSSES if loss.module]
    assert len(set(modules)) == len(modules)
    # every loss belongs to exactly one family, and the families partition the table
    assert sorted(n for f in _losses.FAMILIES for n in (loss.name for loss in _losses.family(f))) == sorted(names)
    assert all(_losses.family(f) for f in _losses.FAMILIES)
    assert _losses.FAMILIES == tuple(dict.fromkeys(loss.family for loss in _losses.LOSSES))  # in table order
    assert _losses.by_name("smooth_l1_loss").family == "pointwise"
    with pytest.raises(KeyError):
        _losses.by_name("no_such_loss")
    with pytest.raises(KeyError):
        _losses.family("regression")


@pytest.mark.parametrize("loss", ROWS)
def test_row_names(loss):
    assert loss.family in _losses.FAMILIES
    # each loss its own op, except the two that run another loss's (the table says which)
    shared = {"triplet_margin_with_distance_loss": "triplet_margin_loss",
              "multilabel_soft_margin_loss": "binary_cross_entropy_with_logits"}
    assert loss.op == f"fastloss::{shared.get(loss.name, loss.name)}"
    # patch() sets torch.nn.functional.<torch_name> to fastloss.functional.<name>: the same name
    assert loss.torch_name in (None, loss.name)
    assert loss.differentiable and len(set(loss.differentiable)) == len(loss.differentiable)
    assert (loss.torch_name is None) == (loss.reference is not None)  # a reference exactly where torch has none


@pytest.mark.parametrize("loss", AVAILABLE)
def test_row_resolves(loss):
    fn = getattr(Fl, loss.name)
    assert callable(fn)
    params = inspect.signature(fn).parameters
    assert set(loss.differentiable) <= set(params), f"{loss.name}: not arguments of the function"
    if loss.torch_name is not None:
        torch_fn = getattr(F, loss.torch_name)
        assert loss.torch_function is torch_fn  # taken before any patch()
        assert set(loss.differentiable) <= set(inspect.signature(torch_fn).parameters)
    if loss.module is not None:
        cls = getattr(Fm, loss.module)
        assert issubclass(cls, nn.Module)
        if hasattr(nn, loss.module):
            assert issubclass(cls, getattr(nn, loss.module)) and loss.torch_module == loss.module
        else:
            assert loss.torch_module is None


@pytest.mark.parametrize("family", _losses.FAMILIES)
def test_family_is_a_csrc_family(family):
    """The family names follow csrc: csrc/ops/<family>.cpp and csrc/autograd/<family>.cpp exist."""
    if not CSRC.is_dir():
        pytest.skip("no csrc/ next to the tests (an installed package)")
    assert (CSRC / "ops" / f"{family}.cpp").is_file()
    assert (CSRC / "autograd" / f"{family}.cpp").is_file()


@pytest.mark.parametrize("loss", AVAILABLE)
def test_public_op(loss):
    """The public named op of the loss is registered, with kernels for this build's devices."""
    namespace, name = loss.op.split("::")
    assert hasattr(getattr(torch.ops, namespace), name), loss.op
    assert callable(getattr(getattr(torch.ops, namespace), name))
    # the public op's kernels: its C++ autograd, and either the device-generic one that calls the internal op
    # (which holds the CPU / CUDA kernels) or its own kernels for this build's devices (nll_loss, no flags to
    # hide); no Python-side composite
    has = lambda key: torch._C._dispatch_has_kernel_for_dispatch_key(loss.op, key)  # noqa: E731
    assert has("Autograd")
    devices = ["CPU"] + (["CUDA"] if fastloss.cuda_built() else [])
    assert has("CompositeExplicitAutograd") or all(has(d) for d in devices), loss.op
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(loss.op, "CompositeImplicitAutograd")


def test_derived_lists():
    available = [loss for loss in _losses.LOSSES if _losses.available(loss)]
    assert sorted(Fl.__all__) == sorted(loss.name for loss in available)
    assert len(set(Fl.__all__)) == len(Fl.__all__)
    assert Fm.__all__ == [loss.module for loss in available if loss.module]
    loss_modules = [n for n in fastloss.__all__ if n[0].isupper()]
    assert loss_modules == Fm.__all__
    assert all(hasattr(fastloss, n) for n in fastloss.__all__)
    # linear_cross_entropy only where torch has it
    assert ("LinearCrossEntropyLoss" in fastloss.__all__) == hasattr(nn, "LinearCrossEntropyLoss")
    assert ("linear_cross_entropy" in Fl.__all__) == hasattr(F, "linear_cross_entropy")
    # patch()'s lists: every fastloss function / module class that torch also has (the rule they had as
    # hand-kept lists), and nothing else
    assert sorted(PATCHED_FUNCTIONS) == sorted(n for n in Fl.__all__ if hasattr(F, n))
    assert sorted(PATCHED_MODULES) == sorted(n for n in Fm.__all__ if hasattr(nn, n))


def test_torch_func_fallback_table():
    """functional._TORCH (what fastloss runs under torch.func transforms): torch's own function for every
    patched name, taken before any patch(), plus the focal loss's formula in torch ops."""
    assert set(Fl._TORCH) == set(PATCHED_FUNCTIONS) | {"sigmoid_focal_loss"}
    for name in PATCHED_FUNCTIONS:
        assert Fl._TORCH[name] is _losses.torch_functions()[name]
        assert Fl._TORCH[name].__module__.startswith("torch")
    fastloss.patch()
    try:
        assert F.mse_loss is Fl.mse_loss
        assert _losses.torch_functions()["mse_loss"] is Fl._TORCH["mse_loss"] is not Fl.mse_loss
    finally:
        fastloss.unpatch()
    assert F.mse_loss is Fl._TORCH["mse_loss"]


def test_bench_cases_from_the_table():
    """Each loss with a bench case in the table has that case class, in its family's module; the
    benchmark's families are csrc families."""
    assert set(bench.FAMILIES) <= set(_losses.FAMILIES)
    with_case = [loss for loss in _losses.LOSSES if loss.bench is not None]
    assert list(bench.LOSS_FAMILY) == [loss.name for loss in with_case]
    for loss in with_case:
        cls = bench.LOSS_FAMILY[loss.name]
        assert cls.__name__ == loss.bench and cls.__module__ == f"fastloss.bench.{loss.family}"
        assert cls.family == loss.family  # the class too (tools/gpu_check_report.py reads it there)
        case = bench.make_case(loss.name, None, torch.float32, "cpu")
        assert type(case) is cls and case.family == loss.family and case.name().startswith(loss.name + " ")
    for case in bench.default_cases("cpu") + bench.default_cases("cuda"):
        assert case.family == _losses.by_name(case.loss).family
        assert case.family in bench.FAMILIES


def test_focal_reference_matches_fastloss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, dtype=torch.float64, generator=g)
    t = torch.rand(64, 8, dtype=torch.float64, generator=g)
    ref = _losses.by_name("sigmoid_focal_loss").reference
    for kw in ({}, {"alpha": -1.0, "gamma": 0.5, "reduction": "mean"}, {"alpha": 0.4, "reduction": "sum"}):
        torch.testing.assert_close(Fl.sigmoid_focal_loss(x, t, **kw), ref(x, t, **kw))


def _sample(name):
    """Small float64 arguments of each loss (keyword -> tensor), every floating tensor argument given."""
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, dtype=torch.float64, generator=g)

    def u(*s):  # in (0.1, 0.9): probabilities, variances, targets of the binary losses
        return torch.rand(*s, dtype=torch.float64, generator=g) * 0.8 + 0.1

    def sign(*s):
        return (torch.randint(0, 2, s, generator=g) * 2 - 1).double()

    def idx(n, c):
        return torch.randint(0, c, (n,), generator=g)

    return {
        "cross_entropy": dict(input=r(4, 5), target=u(4, 5).softmax(1), weight=u(5)),  # probability targets
        "nll_loss": dict(input=r(4, 5), target=idx(4, 5), weight=u(5)),
        "l1_loss": dict(input=r(6), target=r(6), weight=u(6)),
        "mse_loss": dict(input=r(6), target=r(6), weight=u(6)),
        "smooth_l1_loss": dict(input=r(6), target=r(6)),
        "huber_loss": dict(input=r(6), target=r(6), weight=u(6)),
        "margin_ranking_loss": dict(input1=r(6), input2=r(6), target=sign(6)),
        "hinge_embedding_loss": dict(input=r(6), target=sign(6)),
        "triplet_margin_loss": dict(anchor=r(3, 4), positive=r(3, 4), negative=r(3, 4)),
        "triplet_margin_with_distance_loss": dict(anchor=r(3, 4), positive=r(3, 4), negative=r(3, 4)),
        "cosine_embedding_loss": dict(input1=r(3, 4), input2=r(3, 4), target=sign(3)),
        "soft_margin_loss": dict(input=r(6), target=sign(6)),
        "kl_div": dict(input=r(6), target=u(6), reduction="batchmean"),
        "binary_cross_entropy": dict(input=u(6), target=u(6), weight=u(6)),
        "binary_cross_entropy_with_logits": dict(input=r(6), target=u(6), weight=u(6), pos_weight=u(6)),
        "poisson_nll_loss": dict(input=r(6), target=u(6)),
        "gaussian_nll_loss": dict(input=r(6), target=r(6), var=u(6)),
        "multilabel_soft_margin_loss": dict(input=r(3, 4), target=u(3, 4).round(), weight=u(4)),
        "sigmoid_focal_loss": dict(inputs=r(6), targets=u(6), reduction="mean"),
        "ctc_loss": dict(log_probs=r(10, 2, 5).log_softmax(2), targets=torch.randint(1, 5, (2, 3), generator=g),
                         input_lengths=torch.tensor([10, 10]), target_lengths=torch.tensor([3, 3])),
        "multi_margin_loss": dict(input=r(3, 4), target=idx(3, 4), weight=u(4)),
        "multilabel_margin_loss": dict(input=r(3, 4), target=torch.tensor([[1, 2, -1, 0]] * 3)),
        "linear_cross_entropy": dict(input=r(3, 4), linear_weight=r(5, 4), target=idx(3, 5), linear_bias=r(5),
                                     weight=u(5)),
    }[name]


def _gets_gradient(fn, kwargs, arg):
    """Whether `arg` of fn(**kwargs) gets a gradient when it alone requires grad: True, or False when the
    call refuses it (torch's "not differentiable" error) or the loss does not depend on it."""
    kw = {k: (v.detach().clone().requires_grad_(k == arg) if isinstance(v, torch.Tensor) else v)
          for k, v in kwargs.items()}
    try:
        loss = fn(**kw)
    except RuntimeError as e:
        assert "differentiable" in str(e), e
        return False
    if not loss.requires_grad:
        return False
    grad = torch.autograd.grad(loss.sum(), kw[arg], allow_unused=True)[0]
    return grad is not None


@pytest.mark.parametrize("loss", AVAILABLE)
def test_differentiable_arguments(loss):
    """The table's differentiable arguments are exactly the floating tensor arguments that get a gradient,
    in fastloss and in torch (or the reference)."""
    kwargs = _sample(loss.name)
    floating = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert set(loss.differentiable) <= set(floating), "the sample misses an argument"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for impl, fn in (("fastloss", getattr(Fl, loss.name)), ("torch", loss.torch_function)):
            got = {arg for arg in floating if _gets_gradient(fn, kwargs, arg)}
            assert got == set(loss.differentiable), impl


def test_functional_reference_page_lists_the_table():
    """docs/reference/functional.md names what it renders (the static docs build cannot evaluate the computed
    __all__): every loss of the table, in table order."""
    page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "reference" / "functional.md"
    if not page.is_file():
        pytest.skip("no docs/ next to the tests (an installed package)")
    listed = re.findall(r"^(?: {8}- (\w+)|::: fastloss\.functional\.\w+\.(\w+))$", page.read_text(), flags=re.M)
    listed = [a or b for a, b in listed]
    assert listed == [loss.name for loss in _losses.LOSSES]
