"""Fake kernels of the internal ops that are no loss family of their own: the shared gradient scaling
(csrc/ops/grad_scale.cpp) and the class-slice cross-entropy steps of linear_cross_entropy and vocab-parallel
cross_entropy (csrc/ops/ce_partial.{h,cpp})."""
import torch


@torch.library.register_fake("fastloss::scale_grad")
def _scale_grad_fake(grad, grad_loss, classes, inner):
    return torch.empty_like(grad)


@torch.library.register_fake("fastloss::scale_grad_")
def _scale_grad_inplace_fake(grad, grad_loss, classes, inner):
    return None


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastloss::ce_partial_stats")
def _stats_fake(logits, target, weight, class_offset, num_classes, ignore_index, label_smoothing, softcap):
    return logits.new_empty((logits.shape[0], 5), dtype=_acc(logits.dtype))


@torch.library.register_fake("fastloss::ce_partial_finish")
def _finish_fake(stats, target, W, num_classes, ignore_index, label_smoothing, z_loss):
    R = stats.shape[0]
    return stats.new_empty((R,)), stats.new_empty((R,)), stats.new_empty((R, 5))


@torch.library.register_fake("fastloss::ce_partial_merge")
def _merge_fake(a, b):
    return a.new_empty(a.shape)


@torch.library.register_fake("fastloss::ce_partial_grad_coef")
def _grad_coef_fake(coef, s_ce, s_z):
    return coef.new_empty((coef.shape[0], 4))


@torch.library.register_fake("fastloss::ce_partial_grad")
def _grad_fake(logits, target, weight, coef, class_offset, ignore_index, softcap):
    return torch.empty_like(logits)


@torch.library.register_fake("fastloss::ce_partial_grad_")
def _grad_inplace_fake(logits, target, weight, coef, class_offset, ignore_index, softcap):
    return None
