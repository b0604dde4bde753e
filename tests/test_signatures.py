"""Every fastloss function and module has exactly torch.nn's signature (names, order, kinds,
defaults), so swapping one for the other never changes a call."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import fastloss

# fastloss's own losses (no torch.nn counterpart) and the signature each copies
EXTRA_FUNCTIONS = {"sigmoid_focal_loss": [("inputs", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
                                          ("targets", "POSITIONAL_OR_KEYWORD", inspect.Parameter.empty),
                                          ("alpha", "POSITIONAL_OR_KEYWORD", 0.25),
                                          ("gamma", "POSITIONAL_OR_KEYWORD", 2),
                                          ("reduction", "POSITIONAL_OR_KEYWORD", "none")]}  # torchvision.ops'
EXTRA_MODULES = {"FocalLoss"}
FUNCTIONS = sorted(n for n in fastloss.functional.__all__ if n not in EXTRA_FUNCTIONS)
MODULES = sorted(n for n in fastloss.__all__ if n[0].isupper() and n not in EXTRA_MODULES)


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _assert_torch_prefix(ours, ref):
    """torch's parameters exactly, then only keyword-only extras with defaults (fastloss's extras, e.g.
    linear_cross_entropy's softcap / z_loss / return_lse / memory_budget): every torch call means the same."""
    assert ours[:len(ref)] == ref
    for name, kind, default in ours[len(ref):]:
        assert kind == inspect.Parameter.KEYWORD_ONLY and default is not inspect.Parameter.empty, name


def test_every_public_name_is_a_torch_name():
    assert FUNCTIONS and MODULES
    for name in FUNCTIONS:
        assert hasattr(F, name), name
    for name in MODULES:
        assert issubclass(getattr(fastloss, name), getattr(torch.nn, name)), name


# fastloss's keyword-only extras after torch's own arguments (issue 17), per function / module constructor
KW = "KEYWORD_ONLY"
EXTRA_KWARGS = {"cross_entropy": [("softcap", KW, None), ("z_loss", KW, 0.0), ("return_lse", KW, False),
                                  ("process_group", KW, None)],
                "CrossEntropyLoss": [("softcap", KW, None), ("z_loss", KW, 0.0), ("return_lse", KW, False),
                                     ("process_group", KW, None)],
                "linear_cross_entropy": [("softcap", KW, None), ("z_loss", KW, 0.0), ("return_lse", KW, False),
                                         ("memory_budget", KW, None), ("process_group", KW, None)],
                "LinearCrossEntropyLoss": [("softcap", KW, None), ("z_loss", KW, 0.0), ("return_lse", KW, False),
                                           ("memory_budget", KW, None), ("process_group", KW, None)]}


def _torch_prefix_and_extras(ours, ref, name):
    """torch's signature is an exact prefix of ours; what follows is exactly EXTRA_KWARGS[name]."""
    got, want = _params(ours), _params(ref)
    assert got[:len(want)] == want
    assert [(n, k.name, d) for n, k, d in got[len(want):]] == EXTRA_KWARGS.get(name, [])


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functional_signature(name):
    _torch_prefix_and_extras(getattr(fastloss.functional, name), getattr(F, name), name)


@pytest.mark.parametrize("name", MODULES)
def test_module_signature(name):
    ours, ref = getattr(fastloss, name), getattr(torch.nn, name)
    _torch_prefix_and_extras(ours.__init__, ref.__init__, name)
    assert _params(ours.forward) == _params(ref.forward)
    assert "forward" in vars(ours), f"{name} must override forward"


def test_extras_are_exported_and_not_torch_names():
    for name in EXTRA_FUNCTIONS:
        assert name in fastloss.functional.__all__ and not hasattr(F, name)
    for name in EXTRA_MODULES:
        assert name in fastloss.__all__ and not hasattr(torch.nn, name)
        assert issubclass(getattr(fastloss, name), torch.nn.Module)


@pytest.mark.parametrize("name", sorted(EXTRA_FUNCTIONS))
def test_extra_function_signature(name):
    got = [(n, k.name, d) for n, k, d in _params(getattr(fastloss.functional, name))]
    assert got == EXTRA_FUNCTIONS[name]
