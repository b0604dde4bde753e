"""Fake kernels of the pointwise family (schemas in csrc/ops/pointwise.cpp; autograd in
csrc/autograd/pointwise.cpp)."""
import torch


def _grad(a, wanted):
    return a.new_empty(a.shape if wanted else (0,))


@torch.library.register_fake("fastloss::pointwise_loss")
def _pointwise_fake(a, b, c, kind, param, reduction, grad_now, out_dtype, d=None, param2=0.0):
    loss = a.new_empty(a.shape if reduction == 0 else (), dtype=out_dtype or a.dtype)
    return loss, _grad(a, grad_now[0]), _grad(a, grad_now[1]), _grad(a, grad_now[2] and c is not None)


@torch.library.register_fake("fastloss::pointwise_loss_backward")
def _pointwise_bwd_fake(grad_loss, a, b, c, kind, param, reduction, loss, output_mask, d=None, param2=0.0):
    return _grad(a, output_mask[0]), _grad(a, output_mask[1]), _grad(a, output_mask[2] and c is not None)
