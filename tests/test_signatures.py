"""Every fastloss function and module has exactly torch.nn's signature (names, order, kinds,
defaults), so swapping one for the other never changes a call."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import fastloss

FUNCTIONS = sorted(fastloss.functional.__all__)
MODULES = sorted(n for n in fastloss.__all__ if n[0].isupper())


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_every_public_name_is_a_torch_name():
    assert FUNCTIONS and MODULES
    for name in FUNCTIONS:
        assert hasattr(F, name), name
    for name in MODULES:
        assert issubclass(getattr(fastloss, name), getattr(torch.nn, name)), name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_functional_signature(name):
    assert _params(getattr(fastloss.functional, name)) == _params(getattr(F, name))


@pytest.mark.parametrize("name", MODULES)
def test_module_signature(name):
    ours, ref = getattr(fastloss, name), getattr(torch.nn, name)
    assert _params(ours.__init__) == _params(ref.__init__)
    assert _params(ours.forward) == _params(ref.forward)
    assert "forward" in vars(ours), f"{name} must override forward"
