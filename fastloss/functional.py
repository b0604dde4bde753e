"""Drop-in replacements for torch.nn.functional losses: same names, same signatures, same results.

Each function validates its arguments exactly where torch does (reduction strings, legacy
size_average/reduce, dtype rules), then calls one fused op in the `fastloss` namespace.
"""
import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from ._registrations._common import autocast_out_dtype

__all__ = ["cross_entropy", "nll_loss"]

_ops = torch.ops.fastloss

_TYPE_NAMES = {torch.float64: "Double", torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16"}


def _reduction_enum(size_average, reduce, reduction):
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    return _Reduction.get_enum(reduction)  # ValueError for an unknown string, as torch


def _check_weight(name, input, weight, autocast, differentiable):
    """torch's rules for `weight`: the input's dtype outside autocast (autocast casts both to
    float32), and no requires_grad where torch's loss does not differentiate it."""
    if weight is None:
        return
    if not autocast and weight.dtype != input.dtype and weight.is_floating_point():
        raise RuntimeError(f"fastloss.{name}: expected scalar type {_TYPE_NAMES.get(input.dtype, input.dtype)} "
                           f"but found {_TYPE_NAMES.get(weight.dtype, weight.dtype)} (weight must have the "
                           f"input's dtype, as in torch)")
    if weight.requires_grad and torch.is_grad_enabled() and not differentiable:
        raise RuntimeError(f"fastloss.{name}: The function is not differentiable with respect to argument "
                           f"'weight' (as torch's nll_loss). This input cannot have requires_grad True.")


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """torch.nn.functional.cross_entropy, fused: one pass over the logits computes the loss and, when
    the input requires grad, its gradient (backward only scales it by grad_output)."""
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(cross_entropy, (input, target, weight), input, target, weight=weight,
                                     size_average=size_average, ignore_index=ignore_index, reduce=reduce,
                                     reduction=reduction, label_smoothing=label_smoothing)
    red = _reduction_enum(size_average, reduce, reduction)
    autocast = torch.is_autocast_enabled(input.device.type)
    prob = input.dim() >= 1 and input.shape == target.shape and target.is_floating_point()
    if prob and target.dtype != input.dtype and input.is_floating_point():
        # torch multiplies log_softmax(input) by target with type promotion (float32 under autocast):
        # compute in that dtype.
        common = torch.promote_types(input.dtype, target.dtype)
        if autocast and common in (torch.float16, torch.bfloat16):
            common = torch.float32
        input, target = input.to(common), target.to(common)
    out_dtype = autocast_out_dtype(input)
    _check_weight("cross_entropy", input, weight, autocast, differentiable=prob)
    grad_mode = torch.is_grad_enabled()
    compute_grad = grad_mode and input.requires_grad
    save_lse = prob and grad_mode and (target.requires_grad or (weight is not None and weight.requires_grad))
    loss, _, _ = _ops.cross_entropy(input, target, weight, red, ignore_index, float(label_smoothing), compute_grad,
                                    save_lse, out_dtype)
    return loss


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
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(nll_loss, (input, target, weight), input, target, weight=weight,
                                     size_average=size_average, ignore_index=ignore_index, reduce=reduce,
                                     reduction=reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    autocast = torch.is_autocast_enabled(input.device.type)
    _check_weight("nll_loss", input, weight, autocast, differentiable=False)
    loss, _ = _ops.nll_loss(input, target, weight, red, ignore_index, autocast_out_dtype(input))
    return loss
