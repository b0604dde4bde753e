"""ctc_loss (csrc/*/ctc.*) -- wrapper and fake kernel."""
import operator

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from ._common import FastOps, autocast_out_dtype, _transforming, _TORCH

# torch.ops.fastloss's ops of this family, with the eager fast path (_common.FastOps)
_ops = FastOps("ctc_loss")


def _lengths(x, name):
    """input_lengths / target_lengths as torch takes them (list, tuple or integer tensor, on any
    device; an int for one sample; numpy integers too): an integer tensor; values are read on the host
    by the op."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (list, tuple)):
        try:
            return torch.tensor([int(v) if isinstance(v, Tensor) and v.numel() == 1 else operator.index(v)
                                 for v in x], dtype=torch.int64)
        except TypeError:
            raise TypeError(f"fastloss.ctc_loss: {name} must be a list/tuple of ints or an integer tensor, "
                            f"got {x!r}") from None
    try:
        return torch.tensor([operator.index(x)], dtype=torch.int64)
    except TypeError:
        raise TypeError(f"fastloss.ctc_loss: {name} must be a list/tuple of ints or an integer tensor, "
                        f"got {type(x).__name__}") from None


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths,
    target_lengths,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """torch.nn.functional.ctc_loss, fused: one op computes the alpha recursion, the loss and, when
    log_probs requires grad, the beta recursion and the gradient (backward only scales it). Also takes
    bfloat16/float16 log_probs (accumulated in float32), and refuses illegal targets and lengths."""
    if has_torch_function_variadic(log_probs, targets, input_lengths, target_lengths):
        return handle_torch_function(ctc_loss, (log_probs, targets, input_lengths, target_lengths), log_probs,
                                     targets, input_lengths, target_lengths, blank=blank, reduction=reduction,
                                     zero_infinity=zero_infinity)
    if _transforming():  # torch.func: torch's loss (see _TORCH), lengths as tensors (torch's list form fails there)
        return _TORCH["ctc_loss"](log_probs, targets, _lengths(input_lengths, "input_lengths"),
                                  _lengths(target_lengths, "target_lengths"), blank, reduction, zero_infinity)
    red = _Reduction.get_enum(reduction)
    batched = log_probs.dim() == 3
    if log_probs.dim() == 2:  # unbatched (T, C), one length each
        log_probs = log_probs.unsqueeze(1)
        # targets as torch reads them there: (S,) the one sample's labels (concatenated form: exactly
        # target_length of them), or (1, S) padded
        if not (targets.dim() == 1 or (targets.dim() == 2 and targets.size(0) == 1)):
            raise RuntimeError(f"fastloss.ctc_loss: unbatched log_probs (T, C) take targets (S,) or (1, S), got "
                               f"shape {tuple(targets.shape)}")
    il = _lengths(input_lengths, "input_lengths")
    tl = _lengths(target_lengths, "target_lengths")
    if autocast_out_dtype(log_probs) is not None:
        log_probs = log_probs.float()  # torch's autocast policy for ctc_loss: computed and returned in float32
    loss = _ops.ctc_loss(log_probs, targets, il, tl, blank, red, zero_infinity)  # gradient flags: the C++ autograd's
    if not batched and red == 0:
        loss = loss.squeeze(0)
    return loss


# ------------------------------------------------------------------------------------ fake kernels
@torch.library.register_fake("fastloss::ctc_loss")
def _ctc_public_fake(log_probs, targets, input_lengths, target_lengths, blank=0, reduction=1, zero_infinity=False):
    return log_probs.new_empty((log_probs.shape[1],) if reduction == 0 else ())


@torch.library.register_fake("fastloss::_ctc_loss_forward")
def _ctc_fake(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, grad_now):
    n = log_probs.shape[1]
    loss = log_probs.new_empty((n,) if reduction == 0 else ())
    grad = log_probs.new_empty(log_probs.shape if grad_now else (0,))
    return loss, grad
