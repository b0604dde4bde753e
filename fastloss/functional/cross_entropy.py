"""The cross_entropy family (csrc/*/cross_entropy.*): cross_entropy and nll_loss -- wrappers and fake kernels."""
import math

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from ._common import (_redirect, FastOps, autocast_enabled, autocast_out_dtype, _transforming, _TORCH, _reduction_enum,
                      _check_weight)

# torch.ops.fastloss's ops of this family, with the eager fast path (_common.FastOps)
_ops = FastOps("cross_entropy", "nll_loss")


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    softcap: float | None = None,
    z_loss: float = 0.0,
    return_lse: bool = False,
    process_group=None,
) -> Tensor | tuple[Tensor, Tensor]:
    """torch.nn.functional.cross_entropy, fused: one pass over the logits computes the loss and, when
    the input requires grad, its gradient (backward only scales it by grad_output).

    Keyword-only extras (defaults: torch's exact behaviour, on the unchanged fused path):
    softcap: logits z = softcap * tanh(input / softcap) before the softmax (Gemma 2), differentiated.
    z_loss: adds z_loss * lse**2 per non-ignored row (PaLM), lse the log-sum-exp of the (capped) logits;
        reduced like the loss but never weighted ('mean' divides it by the number of non-ignored rows).
    return_lse: return (loss, lse), lse per row (the 'none' loss's shape) in float32 (float64 for a
        float64 input), not differentiated.
    process_group (torch.distributed): vocab-parallel, the input holds this rank's slice of the classes
    (fastloss/_vocab_parallel.py, docs/guides/vocab-parallel.md).
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(cross_entropy, (input, target, weight), input, target, weight=weight,
                                     size_average=size_average, ignore_index=ignore_index, reduce=reduce,
                                     reduction=reduction, label_smoothing=label_smoothing, softcap=softcap,
                                     z_loss=z_loss, return_lse=return_lse,
                                     process_group=process_group)
    extras = softcap is not None or z_loss != 0.0 or return_lse
    if process_group is not None:  # vocab-parallel
        from .. import _vocab_parallel
        return _vocab_parallel.cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction,
                                             label_smoothing, softcap=softcap, z_loss=z_loss, return_lse=return_lse,
                                             process_group=process_group)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        if extras:
            return _torch_cross_entropy_extras(input, target, weight, size_average, ignore_index, reduce, reduction,
                                               label_smoothing, softcap, z_loss, return_lse)
        return _TORCH["cross_entropy"](input, target, weight, size_average, ignore_index, reduce, reduction,
                                       label_smoothing)
    red = _reduction_enum(size_average, reduce, reduction)
    autocast = autocast_enabled(input)
    prob = target.is_floating_point() and input.dim() >= 1 and input.shape == target.shape
    if prob and target.dtype != input.dtype and input.is_floating_point():
        # torch multiplies log_softmax(input) by target with type promotion (float32 under autocast):
        # compute in that dtype.
        common = torch.promote_types(input.dtype, target.dtype)
        if autocast and common in (torch.float16, torch.bfloat16):
            common = torch.float32
        input, target = input.to(common), target.to(common)
    out_dtype = autocast_out_dtype(input)
    _check_weight("cross_entropy", input, weight, autocast, differentiable=prob)
    if extras:  # fastloss::cross_entropy_ext (csrc/autograd/cross_entropy_extras.cpp) decides its gradients
        # torch.ops (not the fast handle: it does not convert float?); only this path pays for it
        loss, lse = torch.ops.fastloss.cross_entropy_ext(input, target, weight, red, ignore_index,
                                                         float(label_smoothing),
                                                         None if softcap is None else float(softcap),
                                                         float(z_loss), out_dtype)
        return (loss, lse) if return_lse else loss
    # the op's C++ autograd decides what the forward computes for backward (csrc/autograd/cross_entropy.cpp)
    return _ops.cross_entropy(input, target, weight, red, ignore_index, float(label_smoothing), out_dtype)


def _torch_cross_entropy_extras(input, target, weight, size_average, ignore_index, reduce, reduction,
                                label_smoothing, softcap, z_loss, return_lse):
    """The extras composed of torch ops (under torch.func transforms, which fastloss's ops refuse); also
    linear_cross_entropy's, on its logits. lse in the accumulate dtype (float32 for half/bfloat16), as the ops
    return it; the loss in torch's dtype."""
    if softcap is not None:
        input = softcap * torch.tanh(input / softcap)
    loss = _TORCH["cross_entropy"](input, target, weight, size_average, ignore_index, reduce, reduction,
                                   label_smoothing)
    low = input.dtype in (torch.float16, torch.bfloat16)
    lse = torch.logsumexp(input.float() if low else input, dim=0 if input.dim() == 1 else 1)
    if z_loss:
        prob = target.is_floating_point() and input.shape == target.shape
        valid = torch.ones_like(lse, dtype=torch.bool) if prob else target != ignore_index
        zt = torch.where(valid, z_loss * lse.square(), 0)
        red = _Reduction.legacy_get_string(size_average, reduce) if size_average is not None or \
            reduce is not None else reduction
        loss = loss + {"none": zt, "sum": zt.sum(), "mean": zt.sum() / valid.sum()}[red].to(loss.dtype)
    return (loss, lse.detach()) if return_lse else loss


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.nll_loss. Forward gathers only the target entries; backward writes the
    gradient (zeros but one entry per row) in one pass."""
    if has_torch_function_variadic(input, target, weight) or _transforming():  # see _redirect
        return _redirect(nll_loss, (input, target, weight), input, target, weight=weight, size_average=size_average,
                         ignore_index=ignore_index, reduce=reduce, reduction=reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    autocast = autocast_enabled(input)
    _check_weight("nll_loss", input, weight, autocast, differentiable=False)
    loss, _ = _ops.nll_loss(input, target, weight, red, ignore_index, autocast_out_dtype(input))
    return loss


# ------------------------------------------------------------------------------------ fake kernels
def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_shape(input):
    if input.dim() == 1:
        return ()
    return (input.shape[0], *input.shape[2:])


# ---------------------------------------------------------------------------------------- fake
@torch.library.register_fake("fastloss::cross_entropy")
def _ce_public_fake(input, target, weight=None, reduction=1, ignore_index=-100, label_smoothing=0.0, out_dtype=None):
    return input.new_empty(_row_shape(input) if reduction == 0 else (), dtype=out_dtype or input.dtype)


@torch.library.register_fake("fastloss::_cross_entropy_forward")
def _ce_fake(input, target, weight, reduction, ignore_index, label_smoothing, compute_grad, save_lse, out_dtype):
    rows = _row_shape(input)
    loss = input.new_empty(rows if reduction == 0 else (), dtype=out_dtype or input.dtype)
    grad = input.new_empty(input.shape) if compute_grad else input.new_empty((0,))
    lse = input.new_empty((math.prod(rows) if save_lse else 0,), dtype=_acc(input.dtype))
    return loss, grad, lse


@torch.library.register_fake("fastloss::cross_entropy_ext")
def _ce_ext_fake(input, target, weight, reduction, ignore_index, label_smoothing, softcap, z_loss, out_dtype):
    rows = _row_shape(input)
    loss = input.new_empty(rows if reduction == 0 else (), dtype=out_dtype or input.dtype)
    return loss, input.new_empty(rows, dtype=_acc(input.dtype))


@torch.library.register_fake("fastloss::_cross_entropy_target_backward")
def _ce_target_bwd_fake(grad_loss, input, lse, weight, reduction, label_smoothing):
    return input.new_empty(input.shape)


@torch.library.register_fake("fastloss::nll_loss")
def _nll_fake(input, target, weight, reduction, ignore_index, out_dtype):
    rows = _row_shape(input)
    loss = input.new_empty(rows if reduction == 0 else (), dtype=out_dtype or input.dtype)
    return loss, input.new_empty((), dtype=_acc(input.dtype))


@torch.library.register_fake("fastloss::nll_loss_backward")
def _nll_bwd_fake(grad_loss, input, target, weight, reduction, ignore_index, total_weight):
    return input.new_empty(input.shape)
