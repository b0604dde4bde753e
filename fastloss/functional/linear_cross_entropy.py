"""linear_cross_entropy (csrc/*/linear_cross_entropy.*) -- wrapper and fake kernels."""
import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from .cross_entropy import _torch_cross_entropy_extras
from ._common import autocast_enabled, _transforming, _TORCH, _as, _refuse_grad, _check_weight


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
        from .. import _vocab_parallel
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
    loss, lse = torch.ops.fastloss.linear_cross_entropy(  # its C++ autograd decides the gradients
        x, w, b, target, weight, red, ignore_index, float(label_smoothing),
        None if softcap is None else float(softcap), float(z_loss), int(memory_budget or 0), row_cap, acc_weight_grad)
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
    """The extras composed of torch ops (under torch.func transforms, where fastloss's ops are not used): the
    whole logits, then cross_entropy's composition (probability targets take no ignore_index: torch's default)."""
    C, out_features = linear_weight.shape[0], linear_weight.shape[1:-1]
    w2 = linear_weight.reshape(-1, linear_weight.shape[-1])
    b2 = linear_bias.reshape(-1) if linear_bias is not None else None
    z = torch.nn.functional.linear(input, w2, b2).reshape(*input.shape[:-1], C, *out_features)
    return _torch_cross_entropy_extras(z, target, weight, None, -100 if probabilities else ignore_index, None,
                                       reduction, label_smoothing, softcap, z_loss, return_lse)


# ------------------------------------------------------------------------------------ fake kernels
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
def _lce_public_fake(input, linear_weight, linear_bias, target, weight, reduction, ignore_index, label_smoothing,
                     softcap, z_loss, budget, row_cap, acc_weight_grad):
    rows = _row_shape(input, linear_weight)
    acc = _acc(input.dtype)
    return input.new_empty(rows if reduction == 0 else (), dtype=acc), input.new_empty(rows, dtype=acc)


@torch.library.register_fake("fastloss::_linear_cross_entropy_forward")
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


@torch.library.register_fake("fastloss::_linear_cross_entropy_backward")
def _lce_bwd_fake(grad_loss, input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
                  label_smoothing, softcap, z_loss, budget, row_cap, acc_weight_grad, output_mask):
    gx = input.new_empty(input.shape) if output_mask[0] else _empty(input)
    gw = input.new_empty(linear_weight.shape) if output_mask[1] else _empty(input)
    gb = input.new_empty(linear_bias.shape) if output_mask[2] and linear_bias is not None else _empty(input)
    return gx, gw, gb
