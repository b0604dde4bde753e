"""The pointwise family (csrc/*/pointwise.*): l1, mse, smooth_l1, huber, margin_ranking, hinge_embedding,
soft_margin, kl_div, binary_cross_entropy[_with_logits], poisson_nll, gaussian_nll, sigmoid_focal (and
multilabel_soft_margin, composed over binary_cross_entropy_with_logits) -- wrappers and fake kernels."""
import warnings

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from ._common import (_redirect, FastOps, autocast_enabled, autocast_out_dtype, _transforming, _TORCH, _TYPE_NAMES,
                      _reduction_enum, _as, _refuse_grad, _floating_common)

# torch.ops.fastloss's ops of this family, with the eager fast path (_common.FastOps)
_ops = FastOps("l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "margin_ranking_loss", "hinge_embedding_loss",
               "soft_margin_loss", "kl_div", "binary_cross_entropy", "binary_cross_entropy_with_logits",
               "poisson_nll_loss", "gaussian_nll_loss", "sigmoid_focal_loss")


# ------------------------------------------------------------------------------------ pointwise
# Each loss calls its own op, fastloss::<name> (csrc/ops/pointwise.cpp), with torch's typed arguments on
# inputs broadcast to one shape; the ops share one engine, and the C++ autograd decides which gradients
# the forward writes (csrc/autograd/pointwise.cpp).
_INT_NAMES = {torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
              torch.bool: "Bool"}


def _warn_size(input, target):
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=4,  # _warn_size <- _regression <- l1_loss/... <- the caller, as torch's points at it
        )


def _pointwise(op, tensors, *args, autocast=True, out_dtype=None):
    """op(*tensors, *args, out_dtype): one fused call of a pointwise loss's op. The tensors (None = not
    given) are broadcast to one shape first, as torch's losses broadcast them."""
    shape = tensors[0].shape
    for t in tensors:  # a plain loop: any(generator) costs a small loss's microsecond
        if t is not None and t.shape != shape:
            it = iter(torch.broadcast_tensors(*(t for t in tensors if t is not None)))
            tensors = tuple(None if t is None else next(it) for t in tensors)
            break
    if out_dtype is None and autocast:
        out_dtype = autocast_out_dtype(tensors[0])
    return op(*tensors, *args, out_dtype)


def _regression(name, op, input, target, weight, red, *param, huber=False):
    """l1, mse (op(input, target, weight, reduction, out_dtype)), smooth_l1 (weight None: op(input, target,
    reduction, beta, out_dtype)), huber (op(input, target, weight, reduction, delta, out_dtype))."""
    _warn_size(input, target)
    if weight is not None and weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    tensors = lambda i, t, w: (i, t) if op is _ops.smooth_l1_loss else (i, t, w)  # noqa: E731
    if huber:  # huber keeps the input's dtype (torch casts the target to it)
        dtype = _floating_common(name, input)
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
    else:
        dtype = _floating_common(name, input, target, weight)
    input, target = _as(input, dtype), _as(target, dtype)
    weight = _as(weight, dtype) if weight is not None else None
    if (weight is not None and red == 1 and not huber
            and weight.shape != torch.broadcast_shapes(input.shape, target.shape)):
        # torch divides by the sum of the weight as given, not of its broadcast: the fused sum over
        # the broadcast shape, then that one division (rare: the input itself was broadcast)
        return _pointwise(op, tensors(input, target, weight), 2, *param, autocast=False) / weight.sum()
    # torch's weighted l1/mse are plain tensor ops, which autocast leaves in the input's dtype
    return _pointwise(op, tensors(input, target, weight), red, *param, autocast=weight is None or huber)


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """torch.nn.functional.l1_loss, fused: one pass reads input and target and, for mean/sum, also
    writes the gradient; no loss-sized temporary."""
    if has_torch_function_variadic(input, target, weight) or _transforming():  # see _redirect
        return _redirect(l1_loss, (input, target, weight), input, target, size_average=size_average, reduce=reduce,
                         reduction=reduction, weight=weight)
    red = _reduction_enum(size_average, reduce, reduction)
    return _regression("l1_loss", _ops.l1_loss, input, target, weight, red)


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """torch.nn.functional.mse_loss, fused (see l1_loss)."""
    if has_torch_function_variadic(input, target, weight) or _transforming():  # see _redirect
        return _redirect(mse_loss, (input, target, weight), input, target, size_average=size_average, reduce=reduce,
                         reduction=reduction, weight=weight)
    red = _reduction_enum(size_average, reduce, reduction)
    return _regression("mse_loss", _ops.mse_loss, input, target, weight, red)


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    """torch.nn.functional.smooth_l1_loss, fused (see l1_loss). beta == 0 is exactly l1_loss."""
    if has_torch_function_variadic(input, target) or _transforming():  # see _redirect
        return _redirect(smooth_l1_loss, (input, target), input, target, size_average=size_average, reduce=reduce,
                         reduction=reduction, beta=beta)
    red = _reduction_enum(size_average, reduce, reduction)
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    return _regression("smooth_l1_loss", _ops.smooth_l1_loss, input, target, None, red, float(beta))


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """torch.nn.functional.huber_loss, fused (see l1_loss). With a weight, 'mean' is mean(w * l)."""
    if has_torch_function_variadic(input, target, weight) or _transforming():  # see _redirect
        return _redirect(huber_loss, (input, target, weight), input, target, reduction=reduction, delta=delta,
                         weight=weight)
    red = _Reduction.get_enum(reduction)
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    return _regression("huber_loss", _ops.huber_loss, input, target, weight, red, float(delta), huber=True)


def margin_ranking_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.margin_ranking_loss, fused: max(0, -target * (input1 - input2) + margin)
    and its gradients (target's too) in one pass."""
    if has_torch_function_variadic(input1, input2, target) or _transforming():  # see _redirect
        return _redirect(margin_ranking_loss, (input1, input2, target), input1, input2, target, margin=margin,
                         size_average=size_average, reduce=reduce, reduction=reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    if input1.dim() != input2.dim() or input1.dim() != target.dim():
        raise RuntimeError(
            f"margin_ranking_loss : All input tensors should have same dimension but got sizes: "
            f"input1: {input1.size()}, input2: {input2.size()}, target: {target.size()} "
        )
    dtype = _floating_common("margin_ranking_loss", input1, input2, target)
    return _pointwise(_ops.margin_ranking_loss, (_as(input1, dtype), _as(input2, dtype), _as(target, dtype)),
                      float(margin), red)


def hinge_embedding_loss(
    input: Tensor,
    target: Tensor,
    margin: float = 1.0,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.hinge_embedding_loss, fused. Where target != 1 the loss adds
    max(0, margin - input), where target != -1 it adds input (both for any other value)."""
    if has_torch_function_variadic(input, target) or _transforming():  # see _redirect
        return _redirect(hinge_embedding_loss, (input, target), input, target, margin=margin, size_average=size_average,
                         reduce=reduce, reduction=reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    dtype = _floating_common("hinge_embedding_loss", input)
    target = target.detach()  # only compared with +-1: no gradient, as in torch
    if target.dtype != dtype:
        # keep exactly what torch compares: 1, -1, or anything else (0 here)
        target = (target == 1).to(dtype) - (target == -1).to(dtype)
    return _pointwise(_ops.hinge_embedding_loss, (input, target), float(margin), red)


def soft_margin_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.soft_margin_loss, fused: log(1 + exp(-target * input)) and its gradient in
    one pass (torch's formula as written: it overflows where torch's does). The target is cast to the
    input's dtype and broadcast, as torch does; it has no gradient."""
    if has_torch_function_variadic(input, target) or _transforming():  # see _redirect
        return _redirect(soft_margin_loss, (input, target), input, target, size_average=size_average, reduce=reduce,
                         reduction=reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    _refuse_grad("soft_margin_loss", target, "target")
    dtype = _floating_common("soft_margin_loss", input)
    shape = torch.broadcast_shapes(input.shape, target.shape)
    if shape != input.shape:  # torch writes the loss in the input's shape
        raise RuntimeError(f"fastloss.soft_margin_loss: output with shape {list(input.shape)} doesn't match the "
                           f"broadcast shape {list(shape)}")
    if autocast_out_dtype(input) is not None:
        # torch's autocast runs soft_margin_loss in float32: the target is not rounded to the input's dtype
        input, dtype = input.float(), torch.float32
    return _pointwise(_ops.soft_margin_loss, (input, _as(target, dtype)), red)


def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """torch.nn.functional.kl_div, fused: target * (log(target) - input) (0 where target == 0), or
    exp(target) * (target - input) with log_target, and the gradients of input and target in one pass.
    'batchmean' is the fused sum divided by the batch size, as torch composes it."""
    if has_torch_function_variadic(input, target) or _transforming():  # see _redirect
        return _redirect(kl_div, (input, target), input, target, size_average=size_average, reduce=reduce,
                         reduction=reduction, log_target=log_target)
    if size_average is not None or reduce is not None:
        red = _Reduction.legacy_get_enum(size_average, reduce)
    else:
        if reduction == "mean":
            warnings.warn(
                "reduction: 'mean' divides the total loss by both the batch size and the support size."
                "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
                "'mean' will be changed to behave the same as 'batchmean' in the next major release.",
                stacklevel=2,
            )
        red = _Reduction.get_enum("sum" if reduction == "batchmean" else reduction)
    if not input.is_floating_point() or not target.is_floating_point():
        raise RuntimeError("fastloss.kl_div: Integral inputs not supported (as torch.kl_div).")
    dtype = _floating_common("kl_div", input, target)
    loss = _pointwise(_ops.kl_div, (_as(input, dtype), _as(target, dtype)), red, bool(log_target))
    if reduction == "batchmean" and input.dim() != 0:
        loss = loss / input.size()[0]
    return loss


def _legacy_reduction_string(size_average, reduce, reduction):
    if size_average is not None or reduce is not None:
        return _Reduction.legacy_get_string(size_average, reduce)
    return reduction


def _expand_to(name, t, shape):
    """weight / pos_weight broadcast to the loss's shape; torch applies them in place on the loss, so
    they may not enlarge it (same error text as torch's)."""
    if t is None or t.shape == shape:
        return t
    if torch.broadcast_shapes(t.shape, shape) != shape:
        raise RuntimeError(f"fastloss.{name}: output with shape {list(shape)} doesn't match the broadcast shape "
                           f"{list(torch.broadcast_shapes(t.shape, shape))}")
    return t.expand(shape)


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.binary_cross_entropy, fused: the loss (log terms clamped at -100, as torch)
    and, for mean/sum, the gradients of input and target in one pass. Input and target outside [0, 1]
    raise torch's error on CPU, and on CUDA without a host sync (reported by the next fastloss CUDA call
    or fastloss.check_errors(); torch's CUDA kernel asserts)."""
    if has_torch_function_variadic(input, target, weight) or _transforming():  # see _redirect
        return _redirect(binary_cross_entropy, (input, target, weight), input, target, weight=weight,
                         size_average=size_average, reduce=reduce, reduction=reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    if target.size() != input.size():
        raise ValueError(f"Using a target size ({target.size()}) that is different to the input size "
                         f"({input.size()}) is deprecated. Please ensure they have the same size.")
    if input.is_cuda and torch.is_autocast_enabled("cuda"):
        raise RuntimeError(
            "torch.nn.functional.binary_cross_entropy and torch.nn.BCELoss are unsafe to autocast.\n"
            "Many models use a sigmoid layer right before the binary cross entropy layer.\n"
            "In this case, combine the two layers using torch.nn.functional.binary_cross_entropy_with_logits\n"
            "or torch.nn.BCEWithLogitsLoss.  binary_cross_entropy_with_logits and BCEWithLogits are\n"
            "safe to autocast.")
    _floating_common("binary_cross_entropy", input)
    if (autocast_enabled(input) and _HALF_TYPES.intersection((input.dtype, target.dtype))
            and (input.dtype != target.dtype or weight is not None)):
        # autocast computes in float32: half data is read as is only when nothing else needs rounding
        input, target = input.float(), target.float()
    if target.dtype != input.dtype:
        raise RuntimeError(f"fastloss.binary_cross_entropy: Found dtype {_TYPE_NAMES.get(target.dtype, target.dtype)} "
                           f"but expected {_TYPE_NAMES.get(input.dtype, input.dtype)} (target must have the input's "
                           f"dtype, as in torch)")
    _refuse_grad("binary_cross_entropy", weight, "weight")
    if weight is not None:
        weight = _expand_to("binary_cross_entropy", weight.to(input.dtype), input.shape)
    return _pointwise(_ops.binary_cross_entropy, (input, target, weight), red)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """torch.nn.functional.binary_cross_entropy_with_logits, fused: (1 - t) x + (1 + (pos_weight - 1) t)
    softplus(-x) from one exp and one log1p per element (stable for any |x|), times weight, and the
    gradients of input and target in the same pass. weight and pos_weight broadcast to the input
    (pos_weight typically over the last, class, dimension); neither is differentiable, as in torch."""
    if has_torch_function_variadic(input, target, weight, pos_weight) or _transforming():  # see _redirect
        return _redirect(binary_cross_entropy_with_logits, (input, target, weight, pos_weight), input, target,
                         weight=weight, size_average=size_average, reduce=reduce, reduction=reduction,
                         pos_weight=pos_weight)
    red = _reduction_enum(size_average, reduce, reduction)
    if not (target.size() == input.size()):
        raise ValueError(f"Target size ({target.size()}) must be the same as input size ({input.size()})")
    name = "binary_cross_entropy_with_logits"
    if not target.is_floating_point():
        raise RuntimeError(f"fastloss.{name}: result type Float can't be cast to the desired output type "
                           f"{_INT_NAMES.get(target.dtype, target.dtype)} (target must be floating point, as in torch)")
    _floating_common(name, input)
    dtype = target.dtype  # torch computes the loss in place in the target's dtype
    if autocast_enabled(input) and _HALF_TYPES.intersection((input.dtype, target.dtype)):
        # autocast computes in float32: half data is read as is when both share it (the loss is written
        # in float32), else everything is float32
        same = input.dtype == target.dtype and weight is None and pos_weight is None
        dtype = input.dtype if same else torch.float32
    _refuse_grad(name, weight, "weight")
    _refuse_grad(name, pos_weight, "pos_weight")
    weight = _expand_to(name, _as(weight, dtype), input.shape) if weight is not None else None
    pos_weight = _expand_to(name, _as(pos_weight, dtype), input.shape) if pos_weight is not None else None
    return _pointwise(_ops.binary_cross_entropy_with_logits,
                      (_as(input, dtype), _as(target, dtype), weight, pos_weight), red)


_HALF_TYPES = frozenset((torch.float16, torch.bfloat16))


def poisson_nll_loss(
    input: Tensor,
    target: Tensor,
    log_input: bool = True,
    full: bool = False,
    size_average: bool | None = None,
    eps: float = 1e-8,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.poisson_nll_loss, fused: exp(x) - t x (log_input) or x - t log(x + eps),
    plus with `full` the Stirling term t log t - t + log(2 pi t) / 2 where t > 1, and the gradients of
    input and target, in one pass."""
    if has_torch_function_variadic(input, target) or _transforming():  # see _redirect
        return _redirect(poisson_nll_loss, (input, target), input, target, log_input=log_input, full=full,
                         size_average=size_average, eps=eps, reduce=reduce, reduction=reduction)
    reduction = _legacy_reduction_string(size_average, reduce, reduction)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(reduction + " is not a valid value for reduction")
    dtype = torch.promote_types(input.dtype, target.dtype)
    if not dtype.is_floating_point:  # torch's exp / log of integers give the default float dtype
        dtype = torch.get_default_dtype()
    dtype = _floating_common("poisson_nll_loss", _as(input, dtype), target)
    return _pointwise(_ops.poisson_nll_loss, (_as(input, dtype), _as(target, dtype)), bool(log_input), bool(full),
                      float(eps), _Reduction.get_enum(reduction))


def gaussian_nll_loss(
    input: Tensor,
    target: Tensor,
    var: Tensor | float,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.gaussian_nll_loss, fused: (log(max(var, eps)) + (x - t)^2 / max(var, eps)) / 2
    (+ log(2 pi) / 2 with `full`) and the gradients of input, target and var in one pass; var broadcasts
    as torch allows (same shape, one dimension short, or one dimension of size 1). Like torch, the
    clamp at eps passes the var gradient unchanged, and a negative var raises (one host sync, as torch)."""
    if has_torch_function_variadic(input, target, var) or _transforming():  # see _redirect
        return _redirect(gaussian_nll_loss, (input, target, var), input, target, var, full=full, eps=eps,
                         reduction=reduction)
    if isinstance(var, float):
        if var < 0:
            raise ValueError("var has negative entry/entries")
        var = input.new_full((), var).expand(input.shape)
    elif torch.any(var < 0):
        raise ValueError("var has negative entry/entries")
    if not var.is_floating_point():  # torch clamps var in place
        raise RuntimeError(f"fastloss.gaussian_nll_loss: result type Float can't be cast to the desired output type "
                           f"{_INT_NAMES.get(var.dtype, var.dtype)} (var must be floating point, as in torch)")
    if var.size() != input.size():
        if input.size()[:-1] == var.size():
            var = torch.unsqueeze(var, -1)
        elif input.ndim == var.ndim and sum(y for x, y in zip(input.size(), var.size(), strict=True) if x != y) == 1:
            pass
        else:
            raise ValueError("var is of incorrect size")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(reduction + " is not valid")
    dtype = _floating_common("gaussian_nll_loss", input, target, var)
    # composed of plain tensor ops in torch, which autocast leaves in the inputs' dtype
    return _pointwise(_ops.gaussian_nll_loss, (_as(input, dtype), _as(target, dtype), _as(var, dtype)), bool(full),
                      float(eps), _Reduction.get_enum(reduction), autocast=False)


def multilabel_soft_margin_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.multilabel_soft_margin_loss: -(t log sigmoid(x) + (1 - t) log sigmoid(-x)) * weight,
    summed over the last (class) dimension and divided by C. That per-element loss is the fused
    binary_cross_entropy_with_logits kernel, so mean and sum are one fused pass (total / numel, total / C).
    reduction='none' (one loss per row) is that kernel's per-element loss summed over C by torch's sum
    (documented composition). The weight is differentiable, as in torch's composite."""
    if has_torch_function_variadic(input, target, weight) or _transforming():  # see _redirect
        return _redirect(multilabel_soft_margin_loss, (input, target, weight), input, target, weight=weight,
                         size_average=size_average, reduce=reduce, reduction=reduction)
    reduction = _legacy_reduction_string(size_average, reduce, reduction)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(reduction + " is not valid")
    class_dim = input.dim() - 1
    C = input.size(class_dim)
    dtype = _floating_common("multilabel_soft_margin_loss", input, target, weight)
    x, t = _as(input, dtype), _as(target, dtype)
    w = _as(weight, dtype) if weight is not None else None
    shape = torch.broadcast_shapes(x.shape, t.shape, *(() if w is None else (w.shape,)))
    if reduction == "none" or shape != input.shape:
        # one loss per row, or a weight/target that adds leading dimensions (torch still sums over
        # input.dim() - 1): the fused per-element loss, then torch's sum and mean as torch composes them
        loss = _pointwise(_ops.binary_cross_entropy_with_logits, (x, t, w, None), 0, autocast=False)
        loss = loss.sum(dim=class_dim) / C
        return loss if reduction == "none" else loss.mean() if reduction == "mean" else loss.sum()
    if reduction == "sum" and dtype in (torch.float16, torch.bfloat16):
        # the total of all N*C terms leaves the kernel in float32 and is divided by C there: stored in
        # float16 first it overflows where torch's per-row sums (each divided by C) do not
        loss = _pointwise(_ops.binary_cross_entropy_with_logits, (x, t, w, None), 2, autocast=False,
                          out_dtype=torch.float32)
        return (loss / C).to(dtype)
    loss = _pointwise(_ops.binary_cross_entropy_with_logits, (x, t, w, None), _Reduction.get_enum(reduction),
                      autocast=False)
    return loss / C if reduction == "sum" else loss


def sigmoid_focal_loss(
    inputs: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
) -> Tensor:
    """Focal loss (Lin et al., 2017) with torchvision.ops.sigmoid_focal_loss's semantics and signature:
    ce * (1 - p_t) ** gamma, times alpha_t = alpha t + (1 - alpha) (1 - t) when alpha >= 0, where
    p = sigmoid(inputs), ce = binary_cross_entropy_with_logits(inputs, targets), p_t = p t + (1 - p)(1 - t).
    Fused: one pass computes the loss and the gradients of inputs and targets (torchvision composes
    about ten tensor ops)."""
    if has_torch_function_variadic(inputs, targets):
        return handle_torch_function(sigmoid_focal_loss, (inputs, targets), inputs, targets, alpha=alpha, gamma=gamma,
                                     reduction=reduction)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"Invalid Value for arg 'reduction': '{reduction} \n Supported reduction modes: 'none', "
                         f"'mean', 'sum'")
    if targets.size() != inputs.size():
        raise ValueError(f"Target size ({targets.size()}) must be the same as input size ({inputs.size()})")
    if _transforming():  # torch.func: the formula in torch ops (the table's reference)
        return _TORCH["sigmoid_focal_loss"](inputs, targets, alpha, gamma, reduction)
    dtype = _floating_common("sigmoid_focal_loss", inputs, targets)
    return _pointwise(_ops.sigmoid_focal_loss, (_as(inputs, dtype), _as(targets, dtype)), float(alpha), float(gamma),
                      _Reduction.get_enum(reduction))


# ------------------------------------------------------------------------------------ fake kernels
# The public ops (one per loss; csrc/ops/pointwise.cpp): the loss, shaped like the input ('none') or a scalar.
def _loss_fake(a, reduction, out_dtype):
    return a.new_empty(a.shape if reduction == 0 else (), dtype=out_dtype or a.dtype)


for _name in ("l1_loss", "mse_loss", "binary_cross_entropy"):
    torch.library.register_fake(f"fastloss::{_name}")(
        lambda self, target, weight=None, reduction=1, out_dtype=None: _loss_fake(self, reduction, out_dtype))


@torch.library.register_fake("fastloss::smooth_l1_loss")
def _smooth_l1_fake(self, target, reduction=1, beta=1.0, out_dtype=None):
    return _loss_fake(self, reduction, out_dtype)


@torch.library.register_fake("fastloss::huber_loss")
def _huber_fake(self, target, weight=None, reduction=1, delta=1.0, out_dtype=None):
    return _loss_fake(self, reduction, out_dtype)


@torch.library.register_fake("fastloss::margin_ranking_loss")
def _margin_ranking_fake(input1, input2, target, margin=0.0, reduction=1, out_dtype=None):
    return _loss_fake(input1, reduction, out_dtype)


@torch.library.register_fake("fastloss::hinge_embedding_loss")
def _hinge_fake(self, target, margin=1.0, reduction=1, out_dtype=None):
    return _loss_fake(self, reduction, out_dtype)


@torch.library.register_fake("fastloss::soft_margin_loss")
def _soft_margin_fake(self, target, reduction=1, out_dtype=None):
    return _loss_fake(self, reduction, out_dtype)


@torch.library.register_fake("fastloss::kl_div")
def _kl_div_fake(self, target, reduction=1, log_target=False, out_dtype=None):
    return _loss_fake(self, reduction, out_dtype)


@torch.library.register_fake("fastloss::binary_cross_entropy_with_logits")
def _bce_logits_fake(self, target, weight=None, pos_weight=None, reduction=1, out_dtype=None):
    return _loss_fake(self, reduction, out_dtype)


@torch.library.register_fake("fastloss::poisson_nll_loss")
def _poisson_fake(input, target, log_input=True, full=False, eps=1e-8, reduction=1, out_dtype=None):
    return _loss_fake(input, reduction, out_dtype)


@torch.library.register_fake("fastloss::gaussian_nll_loss")
def _gaussian_fake(input, target, var, full=False, eps=1e-6, reduction=1, out_dtype=None):
    return _loss_fake(input, reduction, out_dtype)


@torch.library.register_fake("fastloss::sigmoid_focal_loss")
def _focal_fake(inputs, targets, alpha=0.25, gamma=2.0, reduction=0, out_dtype=None):
    return _loss_fake(inputs, reduction, out_dtype)


# The internal engine ops (called by the C++ autograd only).
def _grad(a, wanted):
    return a.new_empty(a.shape if wanted else (0,))


@torch.library.register_fake("fastloss::_pointwise_forward")
def _pointwise_fake(a, b, c, kind, param, reduction, grad_now, out_dtype, d=None, param2=0.0):
    return _loss_fake(a, reduction, out_dtype), _grad(a, grad_now[0]), _grad(a, grad_now[1]), \
        _grad(a, grad_now[2] and c is not None)


@torch.library.register_fake("fastloss::_pointwise_backward")
def _pointwise_bwd_fake(grad_loss, a, b, c, kind, param, reduction, loss, output_mask, d=None, param2=0.0):
    return _grad(a, output_mask[0]), _grad(a, output_mask[1]), _grad(a, output_mask[2] and c is not None)

