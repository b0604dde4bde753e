"""Fake kernels and autograd for the cross_entropy family (schemas in csrc/ops/cross_entropy.cpp)."""
import math

import torch

from ._common import refuse_double_backward, scale_saved_grad

_ops = torch.ops.fastloss


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_shape(input):
    if input.dim() == 1:
        return ()
    return (input.shape[0], *input.shape[2:])


def _classes_inner(input):
    classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    return classes, math.prod(input.shape[2:])


# ---------------------------------------------------------------------------------------- fake
@torch.library.register_fake("fastloss::cross_entropy")
def _ce_fake(input, target, weight, reduction, ignore_index, label_smoothing, compute_grad, save_lse, out_dtype):
    rows = _row_shape(input)
    loss = input.new_empty(rows if reduction == 0 else (), dtype=out_dtype or input.dtype)
    grad = input.new_empty(input.shape) if compute_grad else input.new_empty((0,))
    lse = input.new_empty((math.prod(rows) if save_lse else 0,), dtype=_acc(input.dtype))
    return loss, grad, lse


@torch.library.register_fake("fastloss::cross_entropy_target_backward")
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


# ------------------------------------------------------------------------------------ autograd
def _ce_setup(ctx, inputs, output):
    input, target, weight, reduction, ignore_index, label_smoothing, compute_grad, save_lse, out_dtype = inputs
    _, grad, lse = output
    # Only the loss output is differentiable in practice: without this, autograd would build zero
    # tensors the size of the gradient (and of lse) for the op's other outputs on every backward.
    ctx.set_materialize_grads(False)
    ctx.compute_grad = compute_grad
    ctx.reduction = reduction
    ctx.label_smoothing = label_smoothing
    ctx.classes, ctx.inner = _classes_inner(input)
    if save_lse:  # probability targets whose target or weight needs a gradient
        ctx.save_for_backward(grad, input, target, lse, weight)
    else:
        ctx.save_for_backward(grad, None, None, None, None)


def _ce_backward(ctx, grad_loss, _grad_of_grad, _grad_of_lse):
    refuse_double_backward("cross_entropy")
    if grad_loss is None:
        return (None,) * 9
    grad, input, target, lse, weight = ctx.saved_tensors
    grad_input = grad_target = grad_weight = None
    if ctx.needs_input_grad[0]:
        if not ctx.compute_grad:
            raise RuntimeError("fastloss.cross_entropy: the input gradient was not computed in forward "
                               "(the op was called with compute_grad=False)")
        grad_input = scale_saved_grad(grad, grad_loss, ctx.classes, ctx.inner)
    if ctx.needs_input_grad[1]:
        grad_target = _ops.cross_entropy_target_backward(grad_loss, input, lse, weight, ctx.reduction,
                                                         ctx.label_smoothing)
    if ctx.needs_input_grad[2]:
        grad_weight = _prob_weight_grad(grad_loss, input, target, lse, ctx)
    return grad_input, grad_target, grad_weight, None, None, None, None, None, None


def _prob_weight_grad(grad_loss, input, target, lse, ctx):
    """d(loss)/d(w_c) for probability targets (torch differentiates weight only there):
    sum over rows of g_r * scale * t'_rc * (lse_r - x_rc). Composed of torch ops (documented): it
    materializes input-sized temporaries, but only in this rare case."""
    classes, inner = ctx.classes, ctx.inner
    x = input.reshape(-1, classes, inner).to(lse.dtype)
    t = target.reshape(-1, classes, inner).to(lse.dtype) * (1 - ctx.label_smoothing) + ctx.label_smoothing / classes
    rows = x.shape[0] * inner
    g = grad_loss.to(lse.dtype).reshape(-1, 1, inner) if grad_loss.numel() > 1 else grad_loss.to(lse.dtype)
    if ctx.reduction == 1:
        g = g / rows if input.numel() else g * float("nan")
    per = t * (lse.reshape(-1, 1, inner) - x) * g
    return per.sum(dim=(0, 2)).to(input.dtype)


torch.library.register_autograd("fastloss::cross_entropy", _ce_backward, setup_context=_ce_setup)


def _nll_setup(ctx, inputs, output):
    input, target, weight, reduction, ignore_index, out_dtype = inputs
    _, total_weight = output
    ctx.set_materialize_grads(False)
    ctx.reduction = reduction
    ctx.ignore_index = ignore_index
    ctx.save_for_backward(input, target, weight, total_weight)


def _nll_backward(ctx, grad_loss, _grad_total_weight):
    refuse_double_backward("nll_loss")
    if grad_loss is None:
        return (None,) * 6
    input, target, weight, total_weight = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        grad_input = _ops.nll_loss_backward(grad_loss, input, target, weight, ctx.reduction, ctx.ignore_index,
                                            total_weight)
    return grad_input, None, None, None, None, None


torch.library.register_autograd("fastloss::nll_loss", _nll_backward, setup_context=_nll_setup)
