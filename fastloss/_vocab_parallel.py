"""Vocab-parallel cross-entropy over torch.distributed (`process_group=` of cross_entropy and
linear_cross_entropy; docs/guides/vocab-parallel.md).

Each rank holds a contiguous slice of the classes, ranks in order (slices may differ in size, a rank may
hold a single class). The partial cross-entropy steps (csrc/ops/ce_partial.h) make this exact:

  1. ce_partial_stats on the rank's slice (class_offset = the sizes of the earlier ranks' slices) -> (R, 5)
  2. merge across ranks with two all-reduces of O(R) data (ce_partial_merge's math):
       MAX of column 0 (the row max m), then SUM of [s * exp(m_rank - m), z_t / w_t / sum w z] plus one element,
       the rank's sum of class weights (W, the smoothing term's total).
  3. ce_partial_finish / the reduction's factors / ce_partial_grad_coef: O(R), identical on every rank
  4. ce_partial_grad on the rank's slice: the gradient of the rank's own logits, no communication.

The logits are never communicated. Linear CE does the same through linear_ce_stats / linear_ce_grad
(the logits are made chunk by chunk from input @ linear_weight_slice^T); its input gradient is the sum of
every slice's contribution, one more all-reduce of N*H (the only one that is not O(N)).

Collectives are issued in the same order on every rank; what decides them (the reduction, whether the input
requires grad, the backward of a 'none' linear loss) must agree across ranks, as for any collective code.
"""
import math
import weakref

import torch
import torch.distributed as dist
from torch.nn import _reduction as _Reduction

_ops = torch.ops.fastloss

# group -> {this rank's slice size: (class_offset, num_classes)}. Filled by one all_gather of the slice sizes
# (world_size int64 values, and a host sync to read them) the first time a (group, Cs) is seen; later calls
# communicate nothing for it. Valid while each rank keeps its slice size for a group (the usual case: fixed
# vocabulary shards); a program that changes the slice sizes must call clear_layout_cache() on every rank
# (a rank whose own size did not change would skip the all_gather its peers enter: a hang).
# Weak on the group: a strong reference kept the process group alive past destroy_process_group(), so gloo's
# threads were torn down at interpreter exit instead, which aborted the process (SIGABRT) now and then.
_layout_cache = weakref.WeakKeyDictionary()


def clear_layout_cache():
    """Forget the cached class offsets (call on every rank after changing the slice sizes)."""
    _layout_cache.clear()


def _group(process_group):
    return None if process_group is dist.GroupMember.WORLD else process_group


def _layout(process_group, Cs, device):
    """(class_offset, num_classes) of this rank's slice of Cs classes."""
    per_size = _layout_cache.setdefault(process_group, {})
    hit = per_size.get(Cs)
    if hit is not None:
        return hit
    group = _group(process_group)
    n = dist.get_world_size(group)
    mine = torch.tensor([Cs], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(mine) for _ in range(n)]
    dist.all_gather(sizes, mine, group=group)
    sizes = torch.cat(sizes).tolist()
    rank = dist.get_rank(group)
    out = (sum(sizes[:rank]), sum(sizes))
    per_size[Cs] = out
    return out


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_targets(target, ignore_index, num_classes, name):
    """Class-index targets outside [0, num_classes) (ignore_index aside) raise on every rank: on the CPU at
    once, on an accelerator through an asynchronous device assert (no host sync)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    msg = f"fastloss.{name}: target out of bounds: class-index targets must lie in [0, {num_classes}) (the " \
          f"global number of classes, all ranks' slices) or equal ignore_index ({ignore_index})"
    if target.device.type == "cpu":
        if bool(bad.any()):
            raise IndexError(f"{msg}; got {int(target[bad].reshape(-1)[0])}")
    else:
        torch._assert_async(~bad.any(), msg)


def _slice_stats(logits_or_rows, dtype):
    """The stats of a rank holding no classes: max -inf, nothing else (the merge takes nothing from it). Made here,
    not by the ops, which expect at least one class."""
    R = logits_or_rows.shape[0]
    stats = torch.zeros(R, 5, dtype=_acc(dtype), device=logits_or_rows.device)
    stats[:, 0] = float("-inf")
    return stats


def _merge(stats, weight, num_classes, process_group):
    """Stats of this rank's slice -> the stats of all classes and W (the sum of all class weights), identical
    on every rank. Two all-reduces: R values (MAX), then 4 R + 1 values (SUM)."""
    group = _group(process_group)
    m_local = stats[:, 0]
    m = m_local.clone()  # a copy (contiguous() may return the view itself): the all-reduce writes in place
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    # rows whose max is -inf everywhere add s = 0; m_safe avoids -inf - -inf (ce_partial_merge's rule)
    m_safe = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    buf = torch.empty(stats.shape[0] * 4 + 1, dtype=stats.dtype, device=stats.device)
    rows = buf[:-1].view(-1, 4)
    rows[:, 0] = stats[:, 1] * torch.exp(m_local - m_safe)
    rows[:, 1:] = stats[:, 2:]
    if weight is not None:
        buf[-1] = weight.sum(dtype=stats.dtype)
    else:
        buf[-1] = 0  # W = num_classes below
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    merged = torch.cat([m.unsqueeze(1), rows], 1)
    W = buf[-1] if weight is not None else torch.tensor(float(num_classes), dtype=stats.dtype, device=stats.device)
    return merged, W


def _finish(merged, target, W, num_classes, ignore_index, eps, z_loss, red, prob):
    """Loss (reduced, acc dtype), lse (R,), coef (R, 5), and the reduction's factors (s_ce, s_z) for mean/sum."""
    ce, zt, coef = _ops.ce_partial_finish(merged, target, W, num_classes, ignore_index, eps, z_loss)
    R = merged.shape[0]
    one = torch.ones((), dtype=merged.dtype, device=merged.device)
    if red == 0:
        loss = ce + zt if z_loss else ce
        return loss, coef, one, one
    if red == 2:
        loss = ce.sum() + zt.sum() if z_loss else ce.sum()
        return loss, coef, one, one
    # mean: the CE by the weights of the non-ignored targets (R rows for probability targets, as torch), the
    # z-term by the non-ignored rows. Loss NaN where nothing counts (torch's 0/0); the gradient factor 0 there
    # (torch's gradient is 0).
    denom = one * R if prob else merged[:, 3].sum()
    s_ce = torch.where(denom != 0, 1 / denom, torch.zeros_like(denom))
    loss = ce.sum() / denom
    s_z = torch.zeros_like(one)
    if z_loss:
        count = one * R if prob else (target != ignore_index).sum().to(merged.dtype)
        loss = loss + zt.sum() / count
        s_z = torch.where(count != 0, 1 / count, torch.zeros_like(count))
    return loss, coef, s_ce, s_z


class _VocabParallelCE(torch.autograd.Function):
    """x2 (R, Cs) rows of this rank's logits slice; t2 (R,) global class indices or (R, Cs) probabilities.
    Returns (loss, lse (R,)): loss reduced, or (R,) for 'none'."""

    @staticmethod
    def forward(ctx, x2, t2, weight, red, ignore_index, eps, softcap, z_loss, offset, num_classes, process_group,
                grad_mode):
        prob = t2.is_floating_point()
        if x2.shape[1]:
            stats = _ops.ce_partial_stats(x2, t2, weight, offset, num_classes, ignore_index, eps, softcap)
        else:
            stats = _slice_stats(x2, x2.dtype)
        merged, W = _merge(stats, weight, num_classes, process_group)
        loss, coef, s_ce, s_z = _finish(merged, t2, W, num_classes, ignore_index, eps, z_loss, red, prob)
        ctx.red, ctx.args = red, (offset, ignore_index, softcap)
        lse = coef[:, 0]
        ctx.mark_non_differentiable(lse)
        ctx.want = grad_mode and ctx.needs_input_grad[0]  # needs_input_grad holds under no_grad too
        if not ctx.want:
            return loss, lse
        if red == 0:  # the gradient depends on grad_output per row: made in backward (no communication)
            ctx.save_for_backward(x2, t2, weight, coef)
        else:  # the gradient of the reduced loss, made now; backward scales it
            k4 = _ops.ce_partial_grad_coef(coef, s_ce, s_z)
            ctx.save_for_backward(_ops.ce_partial_grad(x2, t2, weight, k4, offset, ignore_index, softcap)
                                  if x2.shape[1] else torch.zeros_like(x2))
        return loss, lse

    @staticmethod
    def backward(ctx, grad_loss, _grad_lse):
        if not ctx.want:
            return (None,) * 12
        if ctx.red == 0:
            x2, t2, weight, coef = ctx.saved_tensors
            g = grad_loss.to(coef.dtype)
            k4 = _ops.ce_partial_grad_coef(coef, g, g)
            grad = _ops.ce_partial_grad(x2, t2, weight, k4, *ctx.args) if x2.shape[1] else torch.zeros_like(x2)
        else:
            (grad,) = ctx.saved_tensors
            grad = grad * grad_loss.to(grad.dtype)
        return (grad,) + (None,) * 11


def _red_enum(size_average, reduce, reduction):
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    return _Reduction.get_enum(reduction)


def _check_extras(name, label_smoothing, softcap, z_loss):
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"fastloss.{name}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"fastloss.{name}: softcap must be None or > 0, got {softcap}")
    if not z_loss >= 0:
        raise ValueError(f"fastloss.{name}: z_loss must be >= 0, got {z_loss}")


def _check_weight(name, weight, Cs, dtype):
    if weight is None:
        return
    if weight.shape != (Cs,):
        raise ValueError(f"fastloss.{name}: with process_group, weight must be this rank's slice of the class "
                         f"weights, shape ({Cs},), got {tuple(weight.shape)}")
    if weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"fastloss.{name}: with process_group, the loss is not differentiable with respect to "
                           f"'weight'")


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                  label_smoothing=0.0, *, softcap=None, z_loss=0.0, return_lse=False, process_group):
    """fastloss.functional.cross_entropy with process_group: input holds this rank's slice of the classes
    (dim 1; dim 0 unbatched). The gradient flows to the input (this rank's slice); probability targets and
    class weights are slices too and are not differentiated."""
    name = "cross_entropy"
    red = _red_enum(size_average, reduce, reduction)
    _check_extras(name, label_smoothing, softcap, z_loss)
    if input.dim() < 1:
        raise ValueError(f"fastloss.{name}: expected input with at least 1 dimension (the class slice), got 0")
    cdim = 0 if input.dim() == 1 else 1
    Cs = input.shape[cdim]
    prob = target.is_floating_point() and target.shape == input.shape
    if target.is_floating_point() and not prob:
        raise ValueError(f"fastloss.{name}: with process_group, probability targets must have the input's shape "
                         f"(this rank's slice of the classes) {tuple(input.shape)}, got {tuple(target.shape)}")
    row_shape = input.shape[:cdim] + input.shape[cdim + 1:]
    if not prob and target.shape != row_shape:
        raise ValueError(f"fastloss.{name}: expected target of shape {tuple(row_shape)} (input's shape without the "
                         f"class dim {cdim}), got {tuple(target.shape)}")
    if prob and target.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"fastloss.{name}: with process_group, the loss is not differentiable with respect to "
                           f"'target'")
    _check_weight(name, weight, Cs, input.dtype)
    offset, C = _layout(process_group, Cs, input.device)
    # rows (R, Cs), contiguous in the classes: K-D inputs are moved (a copy), the gradient moved back by autograd
    x2 = input.unsqueeze(0) if cdim == 0 else input.movedim(1, -1)
    R = math.prod(row_shape)  # not reshape(-1, Cs): a rank may hold 0 classes
    x2 = x2.reshape(R, Cs).contiguous()
    if prob:
        t2 = (target.unsqueeze(0) if cdim == 0 else target.movedim(1, -1)).reshape(R, Cs).to(input.dtype)
        t2 = t2.contiguous()
    else:
        t2 = target.reshape(-1).long()
        _check_targets(t2, ignore_index, C, name)
    loss, lse = _VocabParallelCE.apply(x2, t2, weight, red, ignore_index, float(label_smoothing), softcap,
                                       float(z_loss), offset, C, process_group, torch.is_grad_enabled())
    if red == 0:
        loss = loss.reshape(row_shape)
    loss = loss.to(input.dtype)
    return (loss, lse.reshape(row_shape)) if return_lse else loss


# ------------------------------------------------------------------------------------------------- linear CE
def _linear_stats(x, w, b, t, weight, offset, C, ignore_index, eps, softcap, budget):
    if w.shape[0] == 0:
        return _slice_stats(x, x.dtype)
    return _ops.linear_ce_stats(x, w, b, t, weight, offset, C, ignore_index, eps, softcap, budget)


def _linear_grad(x, w, b, t, weight, k4, offset, ignore_index, softcap, budget, mask):
    if w.shape[0] == 0:  # a rank holding no classes adds nothing to the input's gradient
        return torch.zeros_like(x), torch.zeros_like(w), w.new_zeros(0)
    return _ops.linear_ce_grad(x, w, b, t, weight, k4, offset, ignore_index, softcap, budget, mask)


class _VocabParallelLinearCE(torch.autograd.Function):
    """x (N, H) whole on every rank, w (Cs, H) / b (Cs,) this rank's rows. Returns (loss, lse (N,))."""

    @staticmethod
    def forward(ctx, x, w, b, t, weight, red, ignore_index, eps, softcap, z_loss, offset, num_classes, budget,
                process_group, grad_mode):
        prob = t.is_floating_point()
        stats = _linear_stats(x, w, b, t, weight, offset, num_classes, ignore_index, eps, softcap, budget)
        merged, W = _merge(stats, weight, num_classes, process_group)
        loss, coef, s_ce, s_z = _finish(merged, t, W, num_classes, ignore_index, eps, z_loss, red, prob)
        lse = coef[:, 0]
        ctx.mark_non_differentiable(lse)
        need = ctx.needs_input_grad  # set under no_grad too: grad_mode decides
        mask = [grad_mode and need[0], grad_mode and need[1], grad_mode and b is not None and need[2]]
        ctx.red, ctx.mask, ctx.group = red, mask, process_group
        ctx.args = (offset, ignore_index, softcap, budget)
        if not any(mask):
            return loss, lse
        if red == 0:  # recomputed in backward with the coefficients scaled by grad_output per row
            ctx.save_for_backward(x, w, b, t, weight, coef)
            return loss, lse
        k4 = _ops.ce_partial_grad_coef(coef, s_ce, s_z)
        grads = _VocabParallelLinearCE._grads(x, w, b, t, weight, k4, ctx.args, mask, process_group)
        ctx.save_for_backward(*grads)
        return loss, lse

    @staticmethod
    def _grads(x, w, b, t, weight, k4, args, mask, process_group):
        offset, ignore_index, softcap, budget = args
        gx, gw, gb = _linear_grad(x, w, b, t, weight, k4, offset, ignore_index, softcap, budget, mask)
        if mask[0]:  # every slice adds to d/d(input): the documented N*H all-reduce
            gx = gx.contiguous()
            dist.all_reduce(gx, op=dist.ReduceOp.SUM, group=_group(process_group))
        return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None)

    @staticmethod
    def backward(ctx, grad_loss, _grad_lse):
        if not any(ctx.mask):
            grads = (None, None, None)
        elif ctx.red == 0:
            x, w, b, t, weight, coef = ctx.saved_tensors
            g = grad_loss.to(coef.dtype)
            k4 = _ops.ce_partial_grad_coef(coef, g, g)
            grads = _VocabParallelLinearCE._grads(x, w, b, t, weight, k4, ctx.args, ctx.mask, ctx.group)
        else:
            grads = tuple(g * grad_loss.to(g.dtype) if g is not None else None for g in ctx.saved_tensors)
        return grads + (None,) * 12


def linear_cross_entropy(input, linear_weight, target, *, linear_bias=None, weight=None, reduction="mean",
                         ignore_index=None, label_smoothing=0.0, softcap=None, z_loss=0.0, return_lse=False,
                         memory_budget=0, process_group):
    """fastloss.functional.linear_cross_entropy with process_group: linear_weight (Cs, H) / linear_bias (Cs,)
    hold this rank's rows of the classes, input (N, H) or (H,) is whole on every rank. Gradients: input (the
    full gradient, all-reduced), linear_weight and linear_bias (this rank's rows)."""
    name = "linear_cross_entropy"
    red = _Reduction.get_enum(reduction)
    _check_extras(name, label_smoothing, softcap, z_loss)
    if input.dim() < 1 or input.dim() > 2:
        raise RuntimeError(f"expected input with dimensionality 1 or 2, got {input.dim()}")
    if linear_weight.dim() != 2:
        raise ValueError(f"fastloss.{name}: with process_group, linear_weight must be 2-D (this rank's rows, "
                         f"(Cs, in_features)), got shape {tuple(linear_weight.shape)}")
    H = input.shape[-1]
    Cs = linear_weight.shape[0]
    if linear_weight.shape[1] != H:
        raise RuntimeError("expected equal input and linear_weight last dimensions (in_features), "
                           f"got {H} and {linear_weight.shape[1]}, respectively")
    if linear_bias is not None and tuple(linear_bias.shape) != (Cs,):
        raise RuntimeError(f"expected linear_bias shape {(Cs,)}, got {tuple(linear_bias.shape)}")
    batched = input.dim() == 2
    prob = target.is_floating_point() and target.shape == (*input.shape[:-1], Cs)
    if prob and ignore_index is not None:
        raise RuntimeError("ignore_index cannot be specified when target contains probabilities")
    ignore_index = -100 if ignore_index is None else ignore_index
    dtype = torch.promote_types(input.dtype, linear_weight.dtype)
    if linear_bias is not None:
        dtype = torch.promote_types(dtype, linear_bias.dtype)
    if not dtype.is_floating_point:
        raise RuntimeError(f"fastloss.{name}: expected floating-point input and weights, got {dtype}")
    x = input.to(dtype) if batched else input.to(dtype).unsqueeze(0)
    w = linear_weight.to(dtype)
    b = linear_bias.to(dtype) if linear_bias is not None else None
    if prob:
        if target.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"fastloss.{name}: with process_group, the loss is not differentiable with respect "
                               f"to 'target'")
        t = (target if batched else target.unsqueeze(0)).to(dtype).contiguous()
    else:
        if target.is_floating_point() or target.shape != input.shape[:-1]:
            raise ValueError(f"fastloss.{name}: expected class-index target of shape {tuple(input.shape[:-1])} or "
                             f"probabilities of shape {(*input.shape[:-1], Cs)} (this rank's slice), got "
                             f"{tuple(target.shape)} {target.dtype}")
        t = target.reshape(-1).long()
    _check_weight(name, weight, Cs, dtype)
    offset, C = _layout(process_group, Cs, input.device)
    if not prob:
        _check_targets(t, ignore_index, C, name)
    loss, lse = _VocabParallelLinearCE.apply(x, w, b, t, weight, red, ignore_index, float(label_smoothing), softcap,
                                             float(z_loss), offset, C, int(memory_budget), process_group,
                                             torch.is_grad_enabled())
    if red == 0 and not batched:
        loss = loss.squeeze(0)
    if not batched:
        lse = lse.squeeze(0)
    loss = loss.to(dtype)
    return (loss, lse) if return_lse else loss
