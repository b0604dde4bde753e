"""Fake kernels of the margin_rows family: multi_margin_loss and multilabel_margin_loss (schemas in
csrc/ops/margin_rows.cpp; autograd in csrc/autograd/margin_rows.cpp). The input is 0-d, (C,) or
(N, C); 'none' gives (N,) or, as torch, a 0-d loss for a 0-d multi_margin target / a 0-d or 1-D
multilabel target."""
import torch


def _rows(x):
    return x.shape[0] if x.dim() == 2 else 1


def _loss(x, reduction, batched, out_dtype):
    shape = (_rows(x),) if reduction == 0 and batched else ()
    return x.new_empty(shape, dtype=out_dtype or x.dtype)


def _grad(x, wanted):
    return x.new_empty(x.shape if wanted else (0,))


@torch.library.register_fake("fastloss::multi_margin_loss")
def _multi_margin_fake(input, target, p, margin, weight, reduction, grad_now, out_dtype):
    return _loss(input, reduction, target.dim() > 0, out_dtype), _grad(input, grad_now)


@torch.library.register_fake("fastloss::multi_margin_loss_backward")
def _multi_margin_bwd_fake(grad_loss, input, target, p, margin, weight, reduction):
    return _grad(input, True)


@torch.library.register_fake("fastloss::multilabel_margin_loss")
def _multilabel_margin_fake(input, target, reduction, grad_now, out_dtype):
    return _loss(input, reduction, target.dim() == 2, out_dtype), _grad(input, grad_now)


@torch.library.register_fake("fastloss::multilabel_margin_loss_backward")
def _multilabel_margin_bwd_fake(grad_loss, input, target, reduction):
    return _grad(input, True)
