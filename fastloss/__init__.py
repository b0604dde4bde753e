"""fastloss: torch.nn losses as fused CPU and CUDA kernels, drop-in and exact.

    import fastloss
    loss = fastloss.CrossEntropyLoss(label_smoothing=0.1)(logits, target)
    loss = fastloss.functional.cross_entropy(logits, target, ignore_index=-100)
"""
import torch

from . import _C  # noqa: F401  (registers every op and kernel)
# fastloss.functional's family modules register the fake kernels at import
from . import functional  # noqa: E402
from . import modules  # noqa: E402
from .modules import *  # noqa: E402,F401,F403 - every module class of the table (_losses.py) this torch has
from .patch import patch, unpatch, is_patched  # noqa: E402

__version__ = "0.1.0"

# the losses' entries come from the table (fastloss/_losses.py) through modules.__all__
__all__ = ["functional", *modules.__all__, "patch", "unpatch", "is_patched", "cuda_built", "set_target_validation",
           "check_errors", "set_linear_ce_memory_budget"]


def cuda_built() -> bool:
    """True when this build contains the CUDA kernels (whether or not a GPU is visible)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastloss::_cross_entropy_forward", "CUDA")


_VALIDATION_MODES = ("off", "async", "strict")


def set_target_validation(mode) -> str:
    """How CUDA kernels report bad targets and inputs (a class index out of range, a CTC label equal to
    blank, a multilabel entry below -1, a binary_cross_entropy input outside [0, 1]). Returns the
    previous mode's name, so ``fastloss.set_target_validation(previous)`` restores it.

    - ``"async"`` or ``True`` (the default): no host synchronization. The kernel records the first bad
      position on the device; the loss row is NaN (nothing is read or written out of bounds). The error
      -- the op, the bad value and its position -- is raised by the next fastloss CUDA call (forward or
      backward) issued after the device has run the checking kernel, or by :func:`check_errors`.
      Works inside CUDA graph capture and ``torch.compile(mode="reduce-overhead")``: a replay that
      meets a bad target records it the same way.
    - ``"strict"``: each call waits for its own check (one stream synchronization) and raises before
      it returns, as torch's CPU kernels do -- for debugging. Inside graph capture it acts as "async".
    - ``"off"`` or ``False``: no check; a bad target only gives NaN loss and gradient rows.

    CPU calls always check their inputs at once (it costs no synchronization there).
    Process-wide: one atomic value shared by every thread and device; each call reads it once when it
    starts, so a call already running keeps the mode it started with."""
    if isinstance(mode, bool):
        mode = "async" if mode else "off"
    if mode not in _VALIDATION_MODES:
        raise ValueError(f"fastloss.set_target_validation: mode must be one of {_VALIDATION_MODES} or a bool, "
                         f"got {mode!r}")
    previous = torch.ops.fastloss._set_option("validate_targets", _VALIDATION_MODES.index(mode))
    return _VALIDATION_MODES[previous] if 0 <= previous < len(_VALIDATION_MODES) else "async"


def set_linear_ce_memory_budget(nbytes: int) -> int:
    """The process-wide memory budget of :func:`fastloss.functional.linear_cross_entropy` (bytes; default
    256 MiB): the extra memory it may use beyond its inputs and their gradients, when a call gives no
    ``memory_budget=``. Returns the previous value. One atomic value shared by every thread and device."""
    if isinstance(nbytes, bool) or int(nbytes) != nbytes or nbytes <= 0:
        raise ValueError(f"fastloss.set_linear_ce_memory_budget: expected a positive number of bytes, got {nbytes!r}")
    return torch.ops.fastloss._set_option("linear_ce_budget", int(nbytes))


def check_errors(wait: bool = True) -> None:
    """Raise the first error a fastloss CUDA kernel recorded that no call has raised yet (see
    :func:`set_target_validation`). ``wait=True`` first synchronizes every device that fastloss has
    reported on (so every queued check is done); ``wait=False`` only looks. A no-op without CUDA."""
    torch.ops.fastloss._check_errors(wait)
