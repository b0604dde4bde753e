"""linear_cross_entropy's chunked path (used when `options` is given, as torch's chunked path is).

Rows of the input are taken `chunk` at a time: logits = linear(x_chunk) (a GEMM), then fastloss's fused
cross-entropy op on that chunk computes its loss and d(loss)/d(logits) in one pass, and two more GEMMs
fold that into d/dx and d/dW (and a row sum into d/db). Only one chunk's logits and their gradient
exist at a time, never the (N, C) matrix. mean/sum: the gradients are made in forward (backward
multiplies them by grad_output); 'none': forward keeps only the losses, backward recomputes each
chunk's logits (the gradient depends on grad_output per row).
"""
import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as _tF


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mean_scale(target, weight, ignore_index, num_classes, acc):
    """1 / (the mean's denominator): the weights of the non-ignored targets (their count without a
    weight), as torch's cross_entropy divides. 0 where nothing counts (all ignored: the gradients are
    0 there, and torch's loss is NaN, which loss_sum / 0 gives). Out-of-range targets are clamped here
    only so the gather cannot fault: the cross-entropy op refuses them with its own error."""
    valid = target != ignore_index
    if weight is None:
        denom = valid.sum(dtype=acc)
    else:
        picked = weight.to(acc)[target.clamp(0, max(num_classes - 1, 0))]
        denom = torch.where(valid, picked, torch.zeros((), dtype=acc, device=picked.device)).sum()
    return denom, torch.where(denom != 0, 1 / denom, torch.zeros((), dtype=acc, device=denom.device))


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    # x (N, H), w (C, H), b (C,) or None, target (N,) class indices; red 0 none / 1 mean / 2 sum
    @staticmethod
    def forward(ctx, x, w, b, target, weight, red, ignore_index, label_smoothing, chunk, acc_weight_grad, ce):
        N, C = x.shape[0], w.shape[0]
        acc = _acc_dtype(x.dtype)
        out_dtype = acc if acc != x.dtype else None  # chunk sums kept in float32 for half/bfloat16
        ctx.red, ctx.ignore_index, ctx.label_smoothing, ctx.chunk = red, ignore_index, label_smoothing, chunk
        ctx.acc_weight_grad, ctx.ce = acc_weight_grad, ce
        ctx.has_bias = b is not None
        if red == 0:
            loss = x.new_empty(N)
            for s in range(0, N, chunk):
                e = min(N, s + chunk)
                loss[s:e] = ce(_tF.linear(x[s:e], w, b), target[s:e], weight, 0, ignore_index, label_smoothing,
                               False, False, None)[0]
            ctx.save_for_backward(x, w, b, target, weight)
            return loss
        want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2])
        denom = scale = None
        if red == 1:
            denom, scale = _mean_scale(target, weight, ignore_index, C, acc)
        total = []
        gx, gw, gb = _chunks(x, w, b, target, weight, 2, ignore_index, label_smoothing, chunk, acc_weight_grad, ce,
                             want, lambda s, e: scale, out_dtype, total)
        loss = torch.stack(total).sum() if total else torch.zeros((), dtype=acc, device=x.device)
        if denom is not None:
            loss = loss / denom
        ctx.save_for_backward(gx, gw, gb)
        return loss.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        if ctx.red == 0:
            x, w, b, target, weight = ctx.saved_tensors
            want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
            gx, gw, gb = _chunks(x, w, b, target, weight, 0, ctx.ignore_index, ctx.label_smoothing, ctx.chunk,
                                 ctx.acc_weight_grad, ctx.ce, want, lambda s, e: grad_loss[s:e, None], None, None)
        else:
            gx, gw, gb = (g * grad_loss if g is not None else None for g in ctx.saved_tensors)
        return gx, gw, gb, None, None, None, None, None, None, None, None


def _chunks(x, w, b, target, weight, red, ignore_index, label_smoothing, chunk, acc_weight_grad, ce, want, factor,
            out_dtype, loss_out):
    """One pass over the row chunks: logits, the fused cross-entropy op (red 2: loss sums into loss_out and
    the gradient of the sum; red 0: the gradient per row), the gradient times factor(s, e) (1 / the mean's
    denominator, or grad_output's rows for 'none'; None: 1), then the two GEMMs and the bias sum.
    d/dW accumulates in float32 for half/bfloat16 when acc_weight_grad (torch's 'accurate' policy, and
    on CPU, whose half GEMMs are slow), else in W's dtype through addmm_ (cuBLAS accumulates in float32
    within each chunk)."""
    N, C = x.shape[0], w.shape[0]
    acc = _acc_dtype(x.dtype)
    gx = torch.empty_like(x) if want[0] else None
    wdt = acc if acc_weight_grad else w.dtype
    gw = torch.zeros(w.shape, dtype=wdt, device=w.device) if want[1] else None
    gb = torch.zeros(C, dtype=acc, device=w.device) if want[2] else None
    need_grad = any(want)
    for s in range(0, N, chunk):
        e = min(N, s + chunk)
        xc = x[s:e]
        loss, g, _ = ce(_tF.linear(xc, w, b), target[s:e], weight, red, ignore_index, label_smoothing, need_grad,
                        False, out_dtype)
        if loss_out is not None:
            loss_out.append(loss.to(acc))
        if not need_grad:
            continue
        f = factor(s, e)
        if f is not None:  # the loss family's shared row scaling, in place: one pass, one rounding
            torch.ops.fastloss.scale_grad_(g, f, C, 1)
        if want[0]:
            torch.mm(g, w, out=gx[s:e])
        if want[1]:
            if wdt == w.dtype:
                gw.addmm_(g.t(), xc)
            else:
                gw.addmm_(g.t().to(wdt), xc.to(wdt))
        if want[2]:
            gb += g.sum(0, dtype=acc)
    return gx, None if gw is None else gw.to(w.dtype), None if gb is None else gb.to(b.dtype)
