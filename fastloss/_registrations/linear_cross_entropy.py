"""Fake kernels of linear cross-entropy (schemas and semantics in csrc/ops/linear_cross_entropy.{h,cpp}; autograd
in csrc/autograd/linear_cross_entropy.cpp)."""
import torch


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _empty(t):
    return t.new_empty((0,))


@torch.library.register_fake("fastloss::linear_ce_stats")
def _stats_fake(input, linear_weight, linear_bias, target, weight, class_offset, num_classes, ignore_index,
                label_smoothing, softcap, budget):
    return input.new_empty((input.shape[0], 5), dtype=_acc(input.dtype))


@torch.library.register_fake("fastloss::linear_ce_grad")
def _grad_fake(input, linear_weight, linear_bias, target, weight, coef, class_offset, ignore_index, softcap, budget,
               output_mask, acc_weight_grad=True):
    gx = input.new_empty(input.shape) if output_mask[0] else _empty(input)
    gw = input.new_empty(linear_weight.shape) if output_mask[1] else _empty(input)
    gb = input.new_empty(linear_bias.shape) if output_mask[2] and linear_bias is not None else _empty(input)
    return gx, gw, gb


def _row_shape(input, linear_weight):
    return (input.shape[0], *linear_weight.shape[1:-1])


@torch.library.register_fake("fastloss::linear_cross_entropy")
def _lce_fake(input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing, softcap,
              z_loss, budget, row_cap, acc_weight_grad, grad_now):
    rows = _row_shape(input, linear_weight)
    acc = _acc(input.dtype)
    loss = input.new_empty(rows if reduction == 0 else (), dtype=acc)
    lse = input.new_empty(rows, dtype=acc)
    now = [reduction != 0 and g for g in grad_now]
    gx = input.new_empty(input.shape) if now[0] else _empty(input)
    gw = input.new_empty(linear_weight.shape) if now[1] else _empty(input)
    gb = input.new_empty(linear_bias.shape) if now[2] and linear_bias is not None else _empty(input)
    return loss, lse, gx, gw, gb


@torch.library.register_fake("fastloss::linear_cross_entropy_backward")
def _lce_bwd_fake(grad_loss, input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
                  label_smoothing, softcap, z_loss, budget, row_cap, acc_weight_grad, output_mask):
    gx = input.new_empty(input.shape) if output_mask[0] else _empty(input)
    gw = input.new_empty(linear_weight.shape) if output_mask[1] else _empty(input)
    gb = input.new_empty(linear_bias.shape) if output_mask[2] and linear_bias is not None else _empty(input)
    return gx, gw, gb
