"""The embedding family (csrc/*/embedding.*): triplet_margin_loss, triplet_margin_with_distance_loss and
cosine_embedding_loss, row-wise over the last dimension -- wrappers and fake kernels."""
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction
from torch.overrides import has_torch_function_variadic

from ._common import _redirect, FastOps, autocast_out_dtype, _transforming, _reduction_enum, _as, _floating_common

# torch.ops.fastloss's ops of this family, with the eager fast path (_common.FastOps)
_ops = FastOps("triplet_margin_loss", "cosine_embedding_loss")


def _check_same_ndim(anchor, positive, negative):
    a_dim, p_dim, n_dim = anchor.ndim, positive.ndim, negative.ndim
    if not (a_dim == p_dim and p_dim == n_dim):
        raise RuntimeError(
            f"The anchor, positive, and negative tensors are expected to have "
            f"the same number of dimensions, but got: anchor {a_dim}D, "
            f"positive {p_dim}D, and negative {n_dim}D inputs"
        )


def _triplet(anchor, positive, negative, margin, p, eps, swap, red, autocast=True):
    """The fused triplet op on broadcast inputs of one floating dtype (rows = all but the last dim)."""
    _check_same_ndim(anchor, positive, negative)
    dtype = _floating_common("triplet_margin_loss", anchor, positive, negative)
    a, pos, neg = _as(anchor, dtype), _as(positive, dtype), _as(negative, dtype)
    if not (a.shape == pos.shape == neg.shape):
        a, pos, neg = torch.broadcast_tensors(a, pos, neg)
    return _ops.triplet_margin_loss(a, pos, neg, float(margin), float(p), float(eps), bool(swap), red,
                                    autocast_out_dtype(a) if autocast else None)


def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2,
    eps: float = 1e-6,
    swap: bool = False,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.triplet_margin_loss, fused: one kernel reads anchor, positive and negative
    once, computes d(a,p), d(a,n) (and d(p,n) with swap) and the hinge, and -- for mean/sum -- writes
    all three gradients in the same sweep over each row."""
    if has_torch_function_variadic(anchor, positive, negative) or _transforming():  # see _redirect
        return _redirect(triplet_margin_loss, (anchor, positive, negative), anchor, positive, negative, margin=margin,
                         p=p, eps=eps, swap=swap, size_average=size_average, reduce=reduce, reduction=reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    return _triplet(anchor, positive, negative, margin, p, eps, swap, red)


def triplet_margin_with_distance_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    distance_function: Callable[[Tensor, Tensor], Tensor] | None = None,
    margin: float = 1.0,
    swap: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.triplet_margin_with_distance_loss. Without a distance_function (torch's
    default, pairwise_distance with p=2, eps=1e-6) it is the fused triplet kernel; a user-supplied
    distance_function runs as ordinary torch code, exactly as torch does (documented)."""
    if has_torch_function_variadic(anchor, positive, negative) or _transforming():  # see _redirect
        return _redirect(triplet_margin_with_distance_loss, (anchor, positive, negative), anchor, positive, negative,
                         distance_function=distance_function, margin=margin, swap=swap, reduction=reduction)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if margin <= 0:
        raise ValueError(f"margin must be greater than 0, got {margin}")
    _check_same_ndim(anchor, positive, negative)
    red = _Reduction.get_enum(reduction)
    if distance_function is None:
        # torch composes pairwise_distance etc., which autocast does not upcast
        return _triplet(anchor, positive, negative, margin, 2.0, 1e-6, swap, red, autocast=False)
    if type(distance_function) is torch.nn.PairwiseDistance and not distance_function.keepdim:
        # what nn.TripletMarginWithDistanceLoss holds by default: the same p-norm distance, fused
        return _triplet(anchor, positive, negative, margin, distance_function.norm, distance_function.eps, swap, red,
                        autocast=False)
    # the documented torch-code path: the user's distance, then torch's own composition
    dist_pos = distance_function(anchor, positive)
    dist_neg = distance_function(anchor, negative)
    if swap:
        dist_neg = torch.minimum(dist_neg, distance_function(positive, negative))
    loss = torch.clamp_min(margin + dist_pos - dist_neg, 0)
    if red == 2:
        return torch.sum(loss)
    if red == 1:
        return torch.mean(loss)
    return loss


def cosine_embedding_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.cosine_embedding_loss, fused: one sweep per row computes <x1,x2>, |x1|^2
    and |x2|^2 (1e-12 added inside the norms, as torch), the loss and -- for mean/sum -- both
    gradients."""
    if has_torch_function_variadic(input1, input2, target) or _transforming():  # see _redirect
        return _redirect(cosine_embedding_loss, (input1, input2, target), input1, input2, target, margin=margin,
                         size_average=size_average, reduce=reduce, reduction=reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    targ_dim = target.dim()
    if targ_dim not in (0, 1):
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    if targ_dim == 1 and not (input1.dim() == 2 and input2.dim() == 2):
        raise RuntimeError(f"1D target tensor expects 2D input tensors, but found inputs with sizes "
                           f"{list(input1.size())} and {list(input2.size())}.")
    if targ_dim == 0 and not (input1.dim() == 1 and input2.dim() == 1):
        raise RuntimeError(f"0D target tensor expects 1D input tensors, but found inputs with sizes "
                           f"{list(input1.size())} and {list(input2.size())}.")
    dtype = _floating_common("cosine_embedding_loss", input1, input2)
    x1, x2 = _as(input1, dtype), _as(input2, dtype)
    if x1.shape != x2.shape:
        x1, x2 = torch.broadcast_tensors(x1, x2)
    target = target.detach()
    if targ_dim == 1 and target.shape[0] != x1.shape[0]:  # target and rows broadcast, as in torch
        rows = torch.broadcast_shapes(target.shape, x1.shape[:1])
        x1, x2 = x1.expand(rows[0], x1.shape[1]), x2.expand(rows[0], x2.shape[1])
        target = target.expand(rows)
    if target.dtype != dtype:
        # only 1, -1 or anything else matter: keep exactly those in the input's dtype
        target = (target == 1).to(dtype) - (target == -1).to(dtype)
    return _ops.cosine_embedding_loss(x1, x2, target, float(margin), red, autocast_out_dtype(x1))


# ------------------------------------------------------------------------------------ fake kernels
def _loss(x, reduction, out_dtype):
    return x.new_empty(tuple(x.shape[:-1]) if reduction == 0 else (), dtype=out_dtype or x.dtype)


def _grad(x, wanted):
    return x.new_empty(x.shape if wanted else (0,))


@torch.library.register_fake("fastloss::triplet_margin_loss")
def _triplet_public_fake(anchor, positive, negative, margin=1.0, p=2.0, eps=1e-6, swap=False, reduction=1,
                         out_dtype=None):
    return _loss(anchor, reduction, out_dtype)


@torch.library.register_fake("fastloss::cosine_embedding_loss")
def _cosine_public_fake(input1, input2, target, margin=0.0, reduction=1, out_dtype=None):
    return _loss(input1, reduction, out_dtype)


@torch.library.register_fake("fastloss::_triplet_margin_forward")
def _triplet_fake(anchor, positive, negative, margin, p, eps, swap, reduction, grad_now, out_dtype):
    return (_loss(anchor, reduction, out_dtype), *(_grad(anchor, g) for g in grad_now))


@torch.library.register_fake("fastloss::_triplet_margin_backward")
def _triplet_bwd_fake(grad_loss, anchor, positive, negative, margin, p, eps, swap, reduction, output_mask):
    return tuple(_grad(anchor, g) for g in output_mask)


@torch.library.register_fake("fastloss::_cosine_embedding_forward")
def _cosine_fake(input1, input2, target, margin, reduction, grad_now, out_dtype):
    return (_loss(input1, reduction, out_dtype), *(_grad(input1, g) for g in grad_now))


@torch.library.register_fake("fastloss::_cosine_embedding_backward")
def _cosine_bwd_fake(grad_loss, input1, input2, target, margin, reduction, output_mask):
    return tuple(_grad(input1, g) for g in output_mask)
