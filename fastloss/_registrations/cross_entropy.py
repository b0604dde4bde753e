"""Fake kernels of the cross_entropy family (schemas in csrc/ops/cross_entropy.cpp; autograd in
csrc/autograd/cross_entropy.cpp)."""
import math

import torch


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _row_shape(input):
    if input.dim() == 1:
        return ()
    return (input.shape[0], *input.shape[2:])


# ---------------------------------------------------------------------------------------- fake
@torch.library.register_fake("fastloss::cross_entropy")
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
