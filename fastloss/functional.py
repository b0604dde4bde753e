"""Drop-in replacements for torch.nn.functional losses: same names, same signatures, same results.

Each function validates its arguments exactly where torch does (reduction strings, legacy
size_average/reduce, dtype rules), then calls one fused op in the `fastloss` namespace.
"""
import math
import operator
import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from ._registrations._common import FastOps, autocast_enabled, autocast_out_dtype

__all__ = ["cross_entropy", "nll_loss", "l1_loss", "mse_loss", "smooth_l1_loss", "huber_loss", "margin_ranking_loss",
           "hinge_embedding_loss", "triplet_margin_loss", "triplet_margin_with_distance_loss", "cosine_embedding_loss",
           "ctc_loss", "soft_margin_loss", "kl_div", "binary_cross_entropy", "binary_cross_entropy_with_logits",
           "poisson_nll_loss", "gaussian_nll_loss", "multilabel_soft_margin_loss", "sigmoid_focal_loss",
           "multi_margin_loss", "multilabel_margin_loss"]
if hasattr(torch.nn.functional, "linear_cross_entropy"):  # torch >= 2.14
    __all__.append("linear_cross_entropy")

# torch.ops.fastloss's forward ops, with the eager fast path (_registrations/_common.py)
_ops = FastOps("cross_entropy", "nll_loss", "pointwise_loss", "triplet_margin", "cosine_embedding", "ctc_loss",
               "multi_margin_loss", "multilabel_margin_loss")

# Under a torch.func transform (grad, vjp, jacrev, vmap, ...) every loss is torch's own: torch.func refuses
# C++ autograd Functions (fastloss's autograd) under grad-type transforms, and under vmap a fastloss op,
# which has no batching rule, would run once per batch entry. torch's losses compose with every
# transform, nesting and higher orders included. Documented in the README; counted by
# tests/test_ops.py::test_torch_func_transforms_run_torch. The originals are taken at import, before any
# fastloss.patch() (patch.py uses this table to undo itself).
_transforming = torch._C._are_functorch_transforms_active
from ._losses import torch_functions as _torch_functions  # noqa: E402 - the table of losses
_TORCH = _torch_functions()


_TYPE_NAMES = {torch.float64: "Double", torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16"}


def _reduction_enum(size_average, reduce, reduction):
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    return _Reduction.get_enum(reduction)  # ValueError for an unknown string, as torch


def _as(t, dtype):
    """t in dtype; the tensor itself when it already is (Tensor.to costs a few microseconds even then)."""
    return t if t.dtype == dtype else t.to(dtype)


def _refuse_grad(name, t, arg):
    """torch's error for an argument its loss does not differentiate, when it requires grad."""
    if t is not None and t.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"fastloss.{name}: The function '{name}' is not differentiable with respect to argument "
                           f"'{arg}'. This input cannot have requires_grad True.")


def _weight_dtype_error(name, input_dtype, weight_dtype):
    return RuntimeError(f"fastloss.{name}: expected scalar type {_TYPE_NAMES.get(input_dtype, input_dtype)} but "
                        f"found {_TYPE_NAMES.get(weight_dtype, weight_dtype)} (weight must have the input's dtype, "
                        f"as in torch)")


def _check_weight(name, input, weight, autocast, differentiable):
    """torch's rules for `weight`: the input's dtype outside autocast (autocast casts both to
    float32), and no requires_grad where torch's loss does not differentiate it."""
    if weight is None:
        return
    if not autocast and weight.dtype != input.dtype and weight.is_floating_point():
        raise _weight_dtype_error(name, input.dtype, weight.dtype)
    if not differentiable:
        _refuse_grad(name, weight, "weight")


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    softcap: float | None = None,
    z_loss: float = 0.0,
    return_lse: bool = False,
    process_group=None,
) -> Tensor | tuple[Tensor, Tensor]:
    """torch.nn.functional.cross_entropy, fused: one pass over the logits computes the loss and, when
    the input requires grad, its gradient (backward only scales it by grad_output).

    Keyword-only extras (defaults: torch's exact behaviour, on the unchanged fused path):
    softcap: logits z = softcap * tanh(input / softcap) before the softmax (Gemma 2), differentiated.
    z_loss: adds z_loss * lse**2 per non-ignored row (PaLM), lse the log-sum-exp of the (capped) logits;
        reduced like the loss but never weighted ('mean' divides it by the number of non-ignored rows).
    return_lse: return (loss, lse), lse per row (the 'none' loss's shape) in float32 (float64 for a
        float64 input), not differentiated.
    process_group (torch.distributed): vocab-parallel, the input holds this rank's slice of the classes
    (fastloss/_vocab_parallel.py, docs/guides/vocab-parallel.md).
    """
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(cross_entropy, (input, target, weight), input, target, weight=weight,
                                     size_average=size_average, ignore_index=ignore_index, reduce=reduce,
                                     reduction=reduction, label_smoothing=label_smoothing, softcap=softcap,
                                     z_loss=z_loss, return_lse=return_lse,
                                     process_group=process_group)
    extras = softcap is not None or z_loss != 0.0 or return_lse
    if process_group is not None:  # vocab-parallel
        from . import _vocab_parallel
        return _vocab_parallel.cross_entropy(input, target, weight, size_average, ignore_index, reduce, reduction,
                                             label_smoothing, softcap=softcap, z_loss=z_loss, return_lse=return_lse,
                                             process_group=process_group)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        if extras:
            return _torch_cross_entropy_extras(input, target, weight, size_average, ignore_index, reduce, reduction,
                                               label_smoothing, softcap, z_loss, return_lse)
        return _TORCH["cross_entropy"](input, target, weight, size_average, ignore_index, reduce, reduction,
                                       label_smoothing)
    red = _reduction_enum(size_average, reduce, reduction)
    autocast = autocast_enabled(input)
    prob = target.is_floating_point() and input.dim() >= 1 and input.shape == target.shape
    if prob and target.dtype != input.dtype and input.is_floating_point():
        # torch multiplies log_softmax(input) by target with type promotion (float32 under autocast):
        # compute in that dtype.
        common = torch.promote_types(input.dtype, target.dtype)
        if autocast and common in (torch.float16, torch.bfloat16):
            common = torch.float32
        input, target = input.to(common), target.to(common)
    out_dtype = autocast_out_dtype(input)
    _check_weight("cross_entropy", input, weight, autocast, differentiable=prob)
    if extras:  # fastloss::cross_entropy_ext (csrc/autograd/cross_entropy_extras.cpp) decides its gradients
        # torch.ops (not the fast handle: it does not convert float?); only this path pays for it
        loss, lse = torch.ops.fastloss.cross_entropy_ext(input, target, weight, red, ignore_index,
                                                         float(label_smoothing),
                                                         None if softcap is None else float(softcap),
                                                         float(z_loss), out_dtype)
        return (loss, lse) if return_lse else loss
    grad_mode = torch.is_grad_enabled()
    compute_grad = grad_mode and input.requires_grad
    save_lse = prob and grad_mode and (target.requires_grad or (weight is not None and weight.requires_grad))
    loss, _, _ = _ops.cross_entropy(input, target, weight, red, ignore_index, float(label_smoothing), compute_grad,
                                    save_lse, out_dtype)
    return loss


def _torch_cross_entropy_extras(input, target, weight, size_average, ignore_index, reduce, reduction,
                                label_smoothing, softcap, z_loss, return_lse):
    """The extras composed of torch ops (under torch.func transforms, which fastloss's ops refuse)."""
    if softcap is not None:
        input = softcap * torch.tanh(input / softcap)
    loss = _TORCH["cross_entropy"](input, target, weight, size_average, ignore_index, reduce, reduction,
                                   label_smoothing)
    lse = torch.logsumexp(input, dim=0 if input.dim() == 1 else 1)
    if z_loss:
        prob = target.is_floating_point() and input.shape == target.shape
        valid = torch.ones_like(lse, dtype=torch.bool) if prob else target != ignore_index
        zt = torch.where(valid, z_loss * lse.square(), 0)
        red = _Reduction.legacy_get_string(size_average, reduce) if size_average is not None or \
            reduce is not None else reduction
        loss = loss + {"none": zt, "sum": zt.sum(), "mean": zt.sum() / valid.sum()}[red]
    return (loss, lse.detach()) if return_lse else loss


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
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["nll_loss"](input, target, weight, size_average, ignore_index, reduce, reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    autocast = autocast_enabled(input)
    _check_weight("nll_loss", input, weight, autocast, differentiable=False)
    loss, _ = _ops.nll_loss(input, target, weight, red, ignore_index, autocast_out_dtype(input))
    return loss


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options=None,
    softcap: float | None = None,
    z_loss: float = 0.0,
    return_lse: bool = False,
    memory_budget: int | None = None,
    process_group=None,
) -> Tensor:
    """torch.nn.functional.linear_cross_entropy: cross_entropy(linear(input, linear_weight, linear_bias)),
    without ever making the whole (N, C) logits, on every path (``options=None`` included): the C++ op
    fastloss::linear_cross_entropy takes the rows (and, when one row block of all the classes would not fit,
    the classes) in chunks; per chunk one GEMM makes the logits, the fused cross-entropy steps turn them into
    the loss and d/dlogits in place, and two GEMMs fold that into d/dinput and d/dweight. Extra memory beyond
    the inputs and their gradients stays within ``memory_budget`` bytes (default: the process-wide value,
    :func:`fastloss.set_linear_ce_memory_budget`, 256 MiB).

    ``options`` (torch.nn.LinearCrossEntropyOptions): ``batch_chunk_size`` (or the size its
    ``chunking_method`` picks) caps the rows per chunk; ``acc_policy="compact"`` accumulates half/bfloat16
    weight gradients in their own dtype instead of float32 (the default, "auto" and "accurate"); the other
    fields have no counterpart here (the budget covers them) and are ignored without a warning.

    Extras (keyword-only; the defaults give torch's exact result): ``softcap`` -- the logits become
    ``softcap * tanh(logits / softcap)`` before the softmax; ``z_loss`` -- adds ``z_loss * lse**2`` per
    non-ignored token (never weighted by class weights; 'mean' divides it by the number of non-ignored
    tokens); ``return_lse`` -- also return the per-token log-sum-exp of the (capped) logits, float32 (float64
    for float64 input), not differentiated."""
    if has_torch_function_variadic(input, linear_weight, target, linear_bias, weight):
        return handle_torch_function(linear_cross_entropy, (input, linear_weight, target, linear_bias, weight), input,
                                     linear_weight, target, linear_bias=linear_bias, weight=weight, reduction=reduction,
                                     ignore_index=ignore_index, label_smoothing=label_smoothing, options=options,
                                     softcap=softcap, z_loss=z_loss, return_lse=return_lse,
                                     memory_budget=memory_budget, process_group=process_group)
    if process_group is not None:  # vocab-parallel: linear_weight / linear_bias hold this rank's rows
        from . import _vocab_parallel
        return _vocab_parallel.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias,
                                                    weight=weight, reduction=reduction, ignore_index=ignore_index,
                                                    label_smoothing=label_smoothing, softcap=softcap, z_loss=z_loss,
                                                    return_lse=return_lse, memory_budget=memory_budget or 0,
                                                    process_group=process_group)
    extras = softcap is not None or z_loss != 0.0 or return_lse
    if _transforming() and not extras:  # torch.func: torch's loss (see _TORCH)
        return _TORCH["linear_cross_entropy"](input, linear_weight, target, linear_bias=linear_bias, weight=weight,
                                              reduction=reduction, ignore_index=ignore_index,
                                              label_smoothing=label_smoothing, options=options)
    # torch's checks, with torch's words
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() < 2:
        raise RuntimeError(f"expected linear_weight with dimensionality at least 2, got {linear_weight.dim()}")
    num_batches, in_features = input.shape[:-1], input.shape[-1]
    if in_features != linear_weight.shape[-1]:
        raise RuntimeError("expected equal input and linear_weight last dimensions (in_features), "
                           f"got {input.shape[-1]} and {linear_weight.shape[-1]}, respectively")
    num_classes, out_features = linear_weight.shape[0], linear_weight.shape[1:-1]
    if linear_bias is not None and tuple(linear_bias.shape) != (num_classes, *out_features):
        raise RuntimeError(f"expected linear_bias shape {(num_classes, *out_features)}, got {tuple(linear_bias.shape)}")
    if len(out_features) > 0 and len(num_batches) == 0:
        raise RuntimeError(f"K-dimensional loss defined by linear_weight shape {tuple(linear_weight.shape)} requires"
                           f" batched input, (N, {in_features}), got unbatched input with shape {tuple(input.shape)}")
    logits_shape = (*num_batches, num_classes, *out_features)
    probabilities = target.shape == logits_shape  # torch's test (cross_entropy's shape rule)
    if probabilities and ignore_index is not None:
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")
    ignore_index = ignore_index if ignore_index is not None else -100
    red = _Reduction.get_enum(reduction)
    if softcap is not None and not softcap > 0:
        raise ValueError(f"fastloss.linear_cross_entropy: softcap must be a positive number or None, got {softcap}")
    if memory_budget is not None and (isinstance(memory_budget, bool) or int(memory_budget) <= 0):
        raise ValueError(f"fastloss.linear_cross_entropy: memory_budget must be a positive number of bytes or None, "
                         f"got {memory_budget}")
    if _transforming():  # torch.func with the extras: composed of torch ops (the whole logits)
        return _torch_linear_ce_extras(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                                       label_smoothing, probabilities, softcap, z_loss, return_lse)
    autocast = autocast_enabled(input)
    if autocast:  # torch: linear in the autocast dtype, cross_entropy in float32
        dtype = torch.get_autocast_dtype(input.device.type)
    else:
        dtype = torch.promote_types(input.dtype, linear_weight.dtype)
        if linear_bias is not None:
            dtype = torch.promote_types(dtype, linear_bias.dtype)
    if not dtype.is_floating_point:
        raise RuntimeError(f"fastloss.linear_cross_entropy: expected floating-point input and weights, got {dtype}")
    x, w = _as(input, dtype), _as(linear_weight, dtype)
    b = _as(linear_bias, dtype) if linear_bias is not None else None
    _check_weight("linear_cross_entropy", x, weight, autocast, differentiable=False)
    if probabilities:
        _refuse_grad("linear_cross_entropy", target, "target")
    batched = len(num_batches) == 1
    if not batched:
        x, target = x.unsqueeze(0), target.unsqueeze(0)
    rows = target.shape[0] if target.dim() else 0
    if rows != x.shape[0]:
        raise ValueError(f"Expected input batch_size ({x.shape[0]}) to match target batch_size ({rows}).")
    row_cap, acc_weight_grad = 0, True
    if options is not None:
        row_cap, acc_weight_grad = _lce_options(options, x, in_features, num_classes, dtype, probabilities)
    loss, lse, *_ = torch.ops.fastloss.linear_cross_entropy(
        x, w, b, target, weight, red, ignore_index, float(label_smoothing),
        None if softcap is None else float(softcap), float(z_loss), int(memory_budget or 0), row_cap, acc_weight_grad,
        [False, False, False])  # the gradient flags are decided by the op's autograd (C++)
    if not batched:
        lse = lse.squeeze(0)
        if red == 0:
            loss = loss.squeeze(0)
    if not autocast:
        loss = _as(loss, dtype)  # torch's loss has the input's dtype (computed in float32 for half/bfloat16)
    return (loss, lse) if return_lse else loss


def _lce_options(options, x, in_features, num_classes, dtype, probabilities):
    """torch.nn.LinearCrossEntropyOptions -> (row cap, float32 weight-gradient accumulation)."""
    chunk = options.batch_chunk_size
    if chunk is None:
        try:  # the size torch's chunking_method picks
            chunk = options._adjust(num_batches=x.shape[0], in_features=in_features, num_classes=num_classes,
                                    dtype=dtype, device=x.device, prob_target=probabilities).batch_chunk_size
        except Exception:  # noqa: BLE001 -- a configuration torch's chunked path refuses: the budget decides
            chunk = None
    return max(0, int(chunk or 0)), getattr(options, "acc_policy", "auto") != "compact"


def _torch_linear_ce_extras(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                            label_smoothing, probabilities, softcap, z_loss, return_lse):
    """The extras composed of torch ops (under torch.func transforms, where fastloss's ops are not used)."""
    C, out_features = linear_weight.shape[0], linear_weight.shape[1:-1]
    w2 = linear_weight.reshape(-1, linear_weight.shape[-1])
    b2 = linear_bias.reshape(-1) if linear_bias is not None else None
    z = torch.nn.functional.linear(input, w2, b2).reshape(*input.shape[:-1], C, *out_features)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    kw = {} if probabilities else {"ignore_index": ignore_index}
    loss = torch.nn.functional.cross_entropy(z, target, weight, reduction=reduction,
                                             label_smoothing=label_smoothing, **kw)
    cdim = 1 if input.dim() == 2 else 0
    lse = torch.logsumexp(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, cdim)
    if z_loss:
        valid = torch.ones_like(lse, dtype=torch.bool) if probabilities else target != ignore_index
        zt = torch.where(valid, z_loss * lse * lse, torch.zeros_like(lse))
        zt = {"none": zt, "sum": zt.sum(), "mean": zt.sum() / valid.sum()}[reduction]
        loss = loss + zt.to(loss.dtype)
    return (loss, lse.detach()) if return_lse else loss


# ------------------------------------------------------------------------------------ pointwise
# l1, mse, smooth_l1, huber, margin_ranking and hinge_embedding share one fused op,
# fastloss::pointwise_loss(a, b, c, kind, param, reduction, grad_now, out_dtype); kinds as in
# csrc/ops/pointwise.h.
(_L1, _MSE, _SMOOTH_L1, _HUBER, _MARGIN_RANKING, _HINGE, _SOFT_MARGIN, _KL_DIV, _BCE, _BCE_LOGITS, _POISSON, _GAUSSIAN,
 _FOCAL) = range(13)
# kinds whose gradient has no useful bound (1/x, exp(x), pos_weight ...): not fused in float16
_UNBOUNDED_GRAD = (_BCE, _BCE_LOGITS, _POISSON, _GAUSSIAN, _FOCAL)
_INT_NAMES = {torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
              torch.bool: "Bool"}


def _floating_common(name, *tensors):
    """torch's type promotion over the given tensors (None skipped); integer results are refused."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t is not None and t.dtype != dtype:  # promote_types only where dtypes differ (~0.5 us a call)
            dtype = torch.promote_types(dtype, t.dtype)
    if dtype not in _TYPE_NAMES:
        raise RuntimeError(f"fastloss.{name}: expected floating point inputs (float64, float32, float16 or "
                           f"bfloat16), got {', '.join(str(t.dtype) for t in tensors if t is not None)}")
    return dtype


def _warn_size(input, target):
    if target.size() != input.size():
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=4,  # _warn_size <- _regression <- l1_loss/... <- the caller, as torch's points at it
        )


def _pointwise(kind, a, b, c, param, red, autocast=True, d=None, param2=0.0, out_dtype=None):
    """One fused call. With mean/sum the forward also writes the gradients that will be needed (the
    backward then only scales them), except for l1/mse with a weight under 'mean', whose denominator
    sum(weight) is known only at the end of the pass. d (pos_weight) is never differentiated."""
    if a.shape != b.shape or (c is not None and c.shape != a.shape) or (d is not None and d.shape != a.shape):
        given = [t for t in (a, b, c, d) if t is not None]
        it = iter(torch.broadcast_tensors(*given))
        a, b = next(it), next(it)
        c = next(it) if c is not None else None
        d = next(it) if d is not None else None
    grad_mode = torch.is_grad_enabled()
    fused = red != 0 and not (c is not None and kind in (_L1, _MSE) and red == 1)
    if a.dtype == torch.float16 and kind in _UNBOUNDED_GRAD:
        # the fused gradient is stored before grad_output scales it: float16 could overflow there
        # (e.g. BCE's 1 / (x (1 - x)) at x ~ 1e-5) where torch's one expression stays finite
        fused = False
    fused = fused and grad_mode
    grad_now = [fused and a.requires_grad, fused and b.requires_grad, fused and c is not None and c.requires_grad]
    if out_dtype is None and autocast:
        out_dtype = autocast_out_dtype(a)
    return _ops.pointwise_loss(a, b, c, kind, float(param), red, grad_now, out_dtype, d, float(param2))[0]


def _regression(name, kind, input, target, weight, param, red):
    _warn_size(input, target)
    if weight is not None and weight.size() != input.size():
        raise ValueError("Weights and input must have the same size.")
    if kind == _HUBER:  # huber keeps the input's dtype (torch casts the target to it)
        dtype = _floating_common(name, input)
        if weight is not None:
            dtype = torch.promote_types(dtype, weight.dtype)
    else:
        dtype = _floating_common(name, input, target, weight)
    input, target = _as(input, dtype), _as(target, dtype)
    weight = _as(weight, dtype) if weight is not None else None
    if (weight is not None and red == 1 and kind in (_L1, _MSE)
            and weight.shape != torch.broadcast_shapes(input.shape, target.shape)):
        # torch divides by the sum of the weight as given, not of its broadcast: the fused sum over
        # the broadcast shape, then that one division (rare: the input itself was broadcast)
        return _pointwise(kind, input, target, weight, param, 2, autocast=False) / weight.sum()
    # torch's weighted l1/mse are plain tensor ops, which autocast leaves in the input's dtype
    return _pointwise(kind, input, target, weight, param, red, autocast=weight is None or kind == _HUBER)


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
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(l1_loss, (input, target, weight), input, target, size_average=size_average,
                                     reduce=reduce, reduction=reduction, weight=weight)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["l1_loss"](input, target, size_average, reduce, reduction, weight=weight)
    red = _reduction_enum(size_average, reduce, reduction)
    return _regression("l1_loss", _L1, input, target, weight, 0.0, red)


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """torch.nn.functional.mse_loss, fused (see l1_loss)."""
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(mse_loss, (input, target, weight), input, target, size_average=size_average,
                                     reduce=reduce, reduction=reduction, weight=weight)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["mse_loss"](input, target, size_average, reduce, reduction, weight=weight)
    red = _reduction_enum(size_average, reduce, reduction)
    return _regression("mse_loss", _MSE, input, target, weight, 0.0, red)


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    """torch.nn.functional.smooth_l1_loss, fused (see l1_loss). beta == 0 is exactly l1_loss."""
    if has_torch_function_variadic(input, target):
        return handle_torch_function(smooth_l1_loss, (input, target), input, target, size_average=size_average,
                                     reduce=reduce, reduction=reduction, beta=beta)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["smooth_l1_loss"](input, target, size_average, reduce, reduction, beta)
    red = _reduction_enum(size_average, reduce, reduction)
    if beta < 0:
        raise RuntimeError("smooth_l1_loss does not support negative values for beta.")
    kind = _L1 if beta == 0.0 else _SMOOTH_L1
    return _regression("smooth_l1_loss", kind, input, target, None, beta, red)


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """torch.nn.functional.huber_loss, fused (see l1_loss). With a weight, 'mean' is mean(w * l)."""
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(huber_loss, (input, target, weight), input, target, reduction=reduction,
                                     delta=delta, weight=weight)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["huber_loss"](input, target, reduction, delta, weight=weight)
    red = _Reduction.get_enum(reduction)
    if delta <= 0:
        raise RuntimeError("huber_loss does not support non-positive values for delta.")
    return _regression("huber_loss", _HUBER, input, target, weight, delta, red)


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
    if has_torch_function_variadic(input1, input2, target):
        return handle_torch_function(margin_ranking_loss, (input1, input2, target), input1, input2, target,
                                     margin=margin, size_average=size_average, reduce=reduce, reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["margin_ranking_loss"](input1, input2, target, margin, size_average, reduce, reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    if input1.dim() != input2.dim() or input1.dim() != target.dim():
        raise RuntimeError(
            f"margin_ranking_loss : All input tensors should have same dimension but got sizes: "
            f"input1: {input1.size()}, input2: {input2.size()}, target: {target.size()} "
        )
    dtype = _floating_common("margin_ranking_loss", input1, input2, target)
    return _pointwise(_MARGIN_RANKING, _as(input1, dtype), _as(input2, dtype), _as(target, dtype), margin, red)


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
    if has_torch_function_variadic(input, target):
        return handle_torch_function(hinge_embedding_loss, (input, target), input, target, margin=margin,
                                     size_average=size_average, reduce=reduce, reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["hinge_embedding_loss"](input, target, margin, size_average, reduce, reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    dtype = _floating_common("hinge_embedding_loss", input)
    target = target.detach()  # only compared with +-1: no gradient, as in torch
    if target.dtype != dtype:
        # keep exactly what torch compares: 1, -1, or anything else (0 here)
        target = (target == 1).to(dtype) - (target == -1).to(dtype)
    return _pointwise(_HINGE, input, target, None, margin, red)


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
    if has_torch_function_variadic(input, target):
        return handle_torch_function(soft_margin_loss, (input, target), input, target, size_average=size_average,
                                     reduce=reduce, reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["soft_margin_loss"](input, target, size_average, reduce, reduction)
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
    return _pointwise(_SOFT_MARGIN, input, _as(target, dtype), None, 0.0, red)


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
    if has_torch_function_variadic(input, target):
        return handle_torch_function(kl_div, (input, target), input, target, size_average=size_average,
                                     reduce=reduce, reduction=reduction, log_target=log_target)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["kl_div"](input, target, size_average, reduce, reduction, log_target)
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
    loss = _pointwise(_KL_DIV, _as(input, dtype), _as(target, dtype), None, 1.0 if log_target else 0.0, red)
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
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(binary_cross_entropy, (input, target, weight), input, target, weight=weight,
                                     size_average=size_average, reduce=reduce, reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["binary_cross_entropy"](input, target, weight, size_average, reduce, reduction)
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
    return _pointwise(_BCE, input, target, weight, 0.0, red)


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
    if has_torch_function_variadic(input, target, weight, pos_weight):
        return handle_torch_function(binary_cross_entropy_with_logits, (input, target, weight, pos_weight), input,
                                     target, weight=weight, size_average=size_average, reduce=reduce,
                                     reduction=reduction, pos_weight=pos_weight)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["binary_cross_entropy_with_logits"](input, target, weight, size_average, reduce, reduction,
                                                          pos_weight)
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
    return _pointwise(_BCE_LOGITS, _as(input, dtype), _as(target, dtype), weight,
                      1.0 if pos_weight is not None else 0.0, red, d=pos_weight)


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
    if has_torch_function_variadic(input, target):
        return handle_torch_function(poisson_nll_loss, (input, target), input, target, log_input=log_input,
                                     full=full, size_average=size_average, eps=eps, reduce=reduce,
                                     reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["poisson_nll_loss"](input, target, log_input, full, size_average, eps, reduce, reduction)
    reduction = _legacy_reduction_string(size_average, reduce, reduction)
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(reduction + " is not a valid value for reduction")
    dtype = torch.promote_types(input.dtype, target.dtype)
    if not dtype.is_floating_point:  # torch's exp / log of integers give the default float dtype
        dtype = torch.get_default_dtype()
    dtype = _floating_common("poisson_nll_loss", _as(input, dtype), target)
    flags = (1 if log_input else 0) + (2 if full else 0)
    return _pointwise(_POISSON, _as(input, dtype), _as(target, dtype), None, float(eps), _Reduction.get_enum(reduction),
                      param2=flags)


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
    if has_torch_function_variadic(input, target, var):
        return handle_torch_function(gaussian_nll_loss, (input, target, var), input, target, var, full=full, eps=eps,
                                     reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["gaussian_nll_loss"](input, target, var, full, eps, reduction)
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
    return _pointwise(_GAUSSIAN, _as(input, dtype), _as(target, dtype), _as(var, dtype), float(eps),
                      _Reduction.get_enum(reduction), autocast=False, param2=1.0 if full else 0.0)


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
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(multilabel_soft_margin_loss, (input, target, weight), input, target,
                                     weight=weight, size_average=size_average, reduce=reduce, reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["multilabel_soft_margin_loss"](input, target, weight, size_average, reduce, reduction)
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
        loss = _pointwise(_BCE_LOGITS, x, t, w, 0.0, 0, autocast=False).sum(dim=class_dim) / C
        return loss if reduction == "none" else loss.mean() if reduction == "mean" else loss.sum()
    if reduction == "sum" and dtype in (torch.float16, torch.bfloat16):
        # the total of all N*C terms leaves the kernel in float32 and is divided by C there: stored in
        # float16 first it overflows where torch's per-row sums (each divided by C) do not
        loss = _pointwise(_BCE_LOGITS, x, t, w, 0.0, 2, autocast=False, out_dtype=torch.float32)
        return (loss / C).to(dtype)
    loss = _pointwise(_BCE_LOGITS, x, t, w, 0.0, _Reduction.get_enum(reduction), autocast=False)
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
    if _transforming():  # torch.func: the formula in torch ops (see _TORCH)
        return _TORCH["sigmoid_focal_loss"](inputs, targets, alpha, gamma, reduction)
    dtype = _floating_common("sigmoid_focal_loss", inputs, targets)
    return _pointwise(_FOCAL, _as(inputs, dtype), _as(targets, dtype), None, float(alpha),
                      _Reduction.get_enum(reduction), param2=float(gamma))


def _sigmoid_focal_loss_composed(inputs, targets, alpha, gamma, reduction):
    """sigmoid_focal_loss's formula in torch ops (torch.nn has no focal loss to defer to): what runs under a
    torch.func transform. The arguments are already checked."""
    p = torch.sigmoid(inputs)
    loss = _TORCH["binary_cross_entropy_with_logits"](inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = loss * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss if reduction == "none" else loss.mean() if reduction == "mean" else loss.sum()


_TORCH["sigmoid_focal_loss"] = _sigmoid_focal_loss_composed


# ------------------------------------------------------------------------------------ row-wise
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
    grad_mode = torch.is_grad_enabled() and red != 0
    grad_now = [grad_mode and t.requires_grad for t in (a, pos, neg)]
    return _ops.triplet_margin(a, pos, neg, float(margin), float(p), float(eps), bool(swap), red, grad_now,
                               autocast_out_dtype(a) if autocast else None)[0]


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
    if has_torch_function_variadic(anchor, positive, negative):
        return handle_torch_function(triplet_margin_loss, (anchor, positive, negative), anchor, positive, negative,
                                     margin=margin, p=p, eps=eps, swap=swap, size_average=size_average,
                                     reduce=reduce, reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["triplet_margin_loss"](anchor, positive, negative, margin, p, eps, swap, size_average, reduce,
                                             reduction)
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
    if has_torch_function_variadic(anchor, positive, negative):
        return handle_torch_function(triplet_margin_with_distance_loss, (anchor, positive, negative), anchor,
                                     positive, negative, distance_function=distance_function, margin=margin,
                                     swap=swap, reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["triplet_margin_with_distance_loss"](anchor, positive, negative,
                                                           distance_function=distance_function, margin=margin,
                                                           swap=swap, reduction=reduction)
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
    if has_torch_function_variadic(input1, input2, target):
        return handle_torch_function(cosine_embedding_loss, (input1, input2, target), input1, input2, target,
                                     margin=margin, size_average=size_average, reduce=reduce, reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["cosine_embedding_loss"](input1, input2, target, margin, size_average, reduce, reduction)
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
    grad_mode = torch.is_grad_enabled() and red != 0
    grad_now = [grad_mode and x1.requires_grad, grad_mode and x2.requires_grad]
    return _ops.cosine_embedding(x1, x2, target, float(margin), red, grad_now, autocast_out_dtype(x1))[0]


def _lengths(x, name):
    """input_lengths / target_lengths as torch takes them (list, tuple or integer tensor, on any
    device; an int for one sample; numpy integers too): an integer tensor; values are read on the host
    by the op."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (list, tuple)):
        try:
            return torch.tensor([int(v) if isinstance(v, Tensor) and v.numel() == 1 else operator.index(v)
                                 for v in x], dtype=torch.int64)
        except TypeError:
            raise TypeError(f"fastloss.ctc_loss: {name} must be a list/tuple of ints or an integer tensor, "
                            f"got {x!r}") from None
    try:
        return torch.tensor([operator.index(x)], dtype=torch.int64)
    except TypeError:
        raise TypeError(f"fastloss.ctc_loss: {name} must be a list/tuple of ints or an integer tensor, "
                        f"got {type(x).__name__}") from None


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths,
    target_lengths,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    """torch.nn.functional.ctc_loss, fused: one op computes the alpha recursion, the loss and, when
    log_probs requires grad, the beta recursion and the gradient (backward only scales it). Also takes
    bfloat16/float16 log_probs (accumulated in float32), and refuses illegal targets and lengths."""
    if has_torch_function_variadic(log_probs, targets, input_lengths, target_lengths):
        return handle_torch_function(ctc_loss, (log_probs, targets, input_lengths, target_lengths), log_probs,
                                     targets, input_lengths, target_lengths, blank=blank, reduction=reduction,
                                     zero_infinity=zero_infinity)
    if _transforming():  # torch.func: torch's loss (see _TORCH), lengths as tensors (torch's list form fails there)
        return _TORCH["ctc_loss"](log_probs, targets, _lengths(input_lengths, "input_lengths"),
                                  _lengths(target_lengths, "target_lengths"), blank, reduction, zero_infinity)
    red = _Reduction.get_enum(reduction)
    batched = log_probs.dim() == 3
    if log_probs.dim() == 2:  # unbatched (T, C), one length each
        log_probs = log_probs.unsqueeze(1)
        # targets as torch reads them there: (S,) the one sample's labels (concatenated form: exactly
        # target_length of them), or (1, S) padded
        if not (targets.dim() == 1 or (targets.dim() == 2 and targets.size(0) == 1)):
            raise RuntimeError(f"fastloss.ctc_loss: unbatched log_probs (T, C) take targets (S,) or (1, S), got "
                               f"shape {tuple(targets.shape)}")
    il = _lengths(input_lengths, "input_lengths")
    tl = _lengths(target_lengths, "target_lengths")
    if autocast_out_dtype(log_probs) is not None:
        log_probs = log_probs.float()  # torch's autocast policy for ctc_loss: computed and returned in float32
    grad_now = torch.is_grad_enabled() and log_probs.requires_grad
    loss, _ = _ops.ctc_loss(log_probs, targets, il, tl, blank, red, zero_infinity, grad_now)
    if not batched and red == 0:
        loss = loss.squeeze(0)
    return loss


# ------------------------------------------------------------------------------------ margin_rows
# multi_margin_loss and multilabel_margin_loss: one fused op each over rows of class scores
# (csrc/ops/margin_rows.h). torch's Python-level checks (p, weight's dimension) are repeated here with
# torch's words; shapes, dtypes and target values are checked by the op, for both devices alike.
def _autocast_dtype(t, autocast):
    """The dtype torch computes t in: float32 for half/bfloat16 under autocast (fp32 policy)."""
    return torch.float32 if autocast and t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def multi_margin_loss(
    input: Tensor,
    target: Tensor,
    p: int = 1,
    margin: float = 1.0,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.multi_margin_loss, fused: one pass over each row reads x[y] and the row,
    sums w[y] * max(0, margin - x[y] + x[i])^p / C over i != y and -- for mean/sum -- writes the input
    gradient in the same pass (backward only scales it by grad_output). half/bfloat16 inputs, which
    torch's CPU kernel refuses, are accumulated in float32."""
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(multi_margin_loss, (input, target, weight), input, target, p=p, margin=margin,
                                     weight=weight, size_average=size_average, reduce=reduce, reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["multi_margin_loss"](input, target, p, margin, weight, size_average, reduce, reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    if p != 1 and p != 2:
        raise ValueError("only p == 1 and p == 2 supported")
    autocast = autocast_enabled(input)
    if weight is not None:
        if weight.dim() != 1:
            raise ValueError("weight must be one-dimensional")
        # torch: the input's dtype (autocast casts half/bfloat16 inputs and weights to float32 alike)
        wdt, xdt = _autocast_dtype(weight, autocast), _autocast_dtype(input, autocast)
        if wdt != xdt:
            raise _weight_dtype_error("multi_margin_loss", xdt, wdt)
        _refuse_grad("multi_margin_loss", weight, "weight")
    grad_now = red != 0 and torch.is_grad_enabled() and input.requires_grad
    return _ops.multi_margin_loss(input, target, int(p), float(margin), weight, red, grad_now,
                                  autocast_out_dtype(input))[0]


def multilabel_margin_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """torch.nn.functional.multilabel_margin_loss, fused: per row, one read of the scores and of the
    target list (which ends at the first -1; every entry is range-checked, as torch's CPU kernel does),
    sum over listed targets j and non-target classes i of max(0, 1 - x[j] + x[i]) / C, and -- for
    mean/sum -- the input gradient in the same pass. Duplicated targets count once per occurrence, as
    in torch. half/bfloat16 inputs, which torch's CPU kernel refuses, are accumulated in float32."""
    if has_torch_function_variadic(input, target):
        return handle_torch_function(multilabel_margin_loss, (input, target), input, target,
                                     size_average=size_average, reduce=reduce, reduction=reduction)
    if _transforming():  # torch.func: torch's loss (see _TORCH)
        return _TORCH["multilabel_margin_loss"](input, target, size_average, reduce, reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    grad_now = red != 0 and torch.is_grad_enabled() and input.requires_grad
    return _ops.multilabel_margin_loss(input, target, red, grad_now, autocast_out_dtype(input))[0]
