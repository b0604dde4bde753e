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


def test_every_public_name_is_a_torch_name():
    assert FUNCTIONS and MODULES
    for name in FUNCTIONS:
        assert hasattr(F, name), name
    for name in MODULES:
        assert issubclass(getattr(fastloss, name), getattr(torch.nn, name)), name


# fastloss's keyword-only extras after torch's arguments (torch's signature is an exact prefix)
_KW = inspect.Parameter.KEYWORD_ONLY
FUNCTION_EXTRAS = {
    "cross_entropy": [("softcap", _KW, None), ("z_loss", _KW, 0.0), ("return_lse", _KW, False),
                      ("process_group", _KW, None)],
    "linear_cross_entropy": [("softcap", _KW, None), ("z_loss", _KW, 0.0), ("return_lse", _KW, False),
                             ("memory_budget", _KW, 0), ("process_group", _KW, None)],
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functional_signature(name):
    assert _params(getattr(fastloss.functional, name)) == _params(getattr(F, name)) + FUNCTION_EXTRAS.get(name, [])


MODULE_EXTRAS = {"CrossEntropyLoss": [("process_group", _KW, None)],
                 "LinearCrossEntropyLoss": [("process_group", _KW, None)]}


@pytest.mark.parametrize("name", MODULES)
def test_module_signature(name):
    ours, ref = getattr(fastloss, name), getattr(torch.nn, name)
    assert _params(ours.__init__) == _params(ref.__init__) + MODULE_EXTRAS.get(name, [])
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
