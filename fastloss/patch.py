"""Swap torch.nn losses for fastloss ones: in one module tree (`patch(model)`), or process-wide for
code that calls torch.nn.functional / constructs torch.nn losses itself (`patch()`, undone by
`unpatch()`)."""
import sys
import threading

import torch
from torch import nn

from . import _losses
from . import functional as _fl_functional
from . import modules as _fl_modules

__all__ = ["patch", "unpatch", "is_patched", "PATCHED_FUNCTIONS", "PATCHED_MODULES"]

# From the table (fastloss/_losses.py): the torch.nn.functional names with a fastloss implementation
# (same signature) and the torch.nn loss classes with a fastloss subclass that overrides forward only;
# fastloss's own extras (sigmoid_focal_loss, FocalLoss) have no torch name to patch.
PATCHED_FUNCTIONS = _losses.patched_functions()
PATCHED_MODULES = _losses.patched_modules()

# The torch originals, captured when fastloss is imported (before any patch).
_TORCH_FUNCTIONS = {name: _losses.by_name(name).torch_function for name in PATCHED_FUNCTIONS}
_TORCH_MODULES = {name: getattr(nn, name) for name in PATCHED_MODULES}
_FASTLOSS_FOR = {_TORCH_MODULES[name]: getattr(_fl_modules, name) for name in PATCHED_MODULES}
# Namespaces where code finds the loss classes: nn.X, nn.modules.X, nn.modules.loss.X, and
# nn.modules.linear_cross_entropy.X (torch >= 2.14 defines LinearCrossEntropyLoss there).
_CLASS_NAMESPACES = (nn, nn.modules, nn.modules.loss) + tuple(
    sys.modules[m] for m in ("torch.nn.modules.linear_cross_entropy",) if m in sys.modules)

_lock = threading.Lock()
_patched = False


def _swap_tree(module):
    """Give every exact torch.nn loss instance in the tree its fastloss class, in place: the object,
    its settings, buffers (weight, pos_weight ...), hooks and state_dict stay as they are; only its
    forward becomes fastloss's. Subclasses of torch losses (user code may override forward) are left
    alone. Returns how many modules were swapped."""
    swapped = 0
    for sub in module.modules():
        fast = _FASTLOSS_FOR.get(type(sub))
        if fast is not None:
            sub.__class__ = fast
            swapped += 1
    return swapped


def patch(module=None):
    """patch(module): replace, in place, every torch.nn loss submodule of `module` (and `module`
    itself if it is one) by its fastloss equivalent, keeping its settings and buffers; returns
    `module`.

    patch(): for the whole process, make torch.nn.functional's loss functions and the torch.nn loss classes
    (nn.X, nn.modules.X and the module torch defines each in) resolve to fastloss, so third-party training
    code runs fastloss's kernels; loss modules that already exist keep their class, but the torch ones call
    torch.nn.functional at run time and so reach fastloss too. Code that bound a function before the patch
    (`from torch.nn.functional import cross_entropy`) keeps torch's. Undo with unpatch().
    Returns None."""
    global _patched
    if module is not None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"fastloss.patch: expected a torch.nn.Module or no argument, got {type(module).__name__}")
        _swap_tree(module)
        return module
    with _lock:
        for name in PATCHED_FUNCTIONS:
            setattr(torch.nn.functional, name, getattr(_fl_functional, name))
        for name in PATCHED_MODULES:
            for ns in _CLASS_NAMESPACES:
                if getattr(ns, name, None) is _TORCH_MODULES[name]:
                    setattr(ns, name, getattr(_fl_modules, name))
        _patched = True
    return None


def unpatch():
    """Undo patch(): torch.nn.functional and the torch.nn loss classes are torch's again. (Module trees
    patched with patch(module) keep their fastloss modules.)"""
    global _patched
    with _lock:
        for name, fn in _TORCH_FUNCTIONS.items():
            setattr(torch.nn.functional, name, fn)
        for name, cls in _TORCH_MODULES.items():
            for ns in _CLASS_NAMESPACES:
                if getattr(ns, name, None) is getattr(_fl_modules, name):
                    setattr(ns, name, cls)
        _patched = False


def is_patched():
    """True between patch() and unpatch()."""
    return _patched
