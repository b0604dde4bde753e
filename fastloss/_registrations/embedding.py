"""Fake kernels of the row-wise embedding losses (schemas in csrc/ops/embedding.cpp; autograd in
csrc/autograd/embedding.cpp). Rows are all but the last dimension."""
import torch


def _loss(x, reduction, out_dtype):
    return x.new_empty(tuple(x.shape[:-1]) if reduction == 0 else (), dtype=out_dtype or x.dtype)


def _grad(x, wanted):
    return x.new_empty(x.shape if wanted else (0,))


@torch.library.register_fake("fastloss::triplet_margin")
def _triplet_fake(anchor, positive, negative, margin, p, eps, swap, reduction, grad_now, out_dtype):
    return (_loss(anchor, reduction, out_dtype), *(_grad(anchor, g) for g in grad_now))


@torch.library.register_fake("fastloss::triplet_margin_backward")
def _triplet_bwd_fake(grad_loss, anchor, positive, negative, margin, p, eps, swap, reduction, output_mask):
    return tuple(_grad(anchor, g) for g in output_mask)


@torch.library.register_fake("fastloss::cosine_embedding")
def _cosine_fake(input1, input2, target, margin, reduction, grad_now, out_dtype):
    return (_loss(input1, reduction, out_dtype), *(_grad(input1, g) for g in grad_now))


@torch.library.register_fake("fastloss::cosine_embedding_backward")
def _cosine_bwd_fake(grad_loss, input1, input2, target, margin, reduction, output_mask):
    return tuple(_grad(input1, g) for g in output_mask)
