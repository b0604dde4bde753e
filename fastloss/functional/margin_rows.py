"""The margin_rows family (csrc/*/margin_rows.*): multi_margin_loss and multilabel_margin_loss -- wrappers and
fake kernels."""
import torch
from torch import Tensor
from torch.overrides import has_torch_function_variadic

from ._common import (_redirect, FastOps, autocast_enabled, autocast_out_dtype, _transforming, _reduction_enum,
                      _refuse_grad, _weight_dtype_error)

# torch.ops.fastloss's ops of this family, with the eager fast path (_common.FastOps)
_ops = FastOps("multi_margin_loss", "multilabel_margin_loss")


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
    if has_torch_function_variadic(input, target, weight) or _transforming():  # see _redirect
        return _redirect(multi_margin_loss, (input, target, weight), input, target, p=p, margin=margin, weight=weight,
                         size_average=size_average, reduce=reduce, reduction=reduction)
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
    return _ops.multi_margin_loss(input, target, int(p), float(margin), weight, red, autocast_out_dtype(input))


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
    if has_torch_function_variadic(input, target) or _transforming():  # see _redirect
        return _redirect(multilabel_margin_loss, (input, target), input, target, size_average=size_average,
                         reduce=reduce, reduction=reduction)
    red = _reduction_enum(size_average, reduce, reduction)
    return _ops.multilabel_margin_loss(input, target, red, autocast_out_dtype(input))


# ------------------------------------------------------------------------------------ fake kernels
def _rows(x):
    return x.shape[0] if x.dim() == 2 else 1


def _loss(x, reduction, batched, out_dtype):
    shape = (_rows(x),) if reduction == 0 and batched else ()
    return x.new_empty(shape, dtype=out_dtype or x.dtype)


def _grad(x, wanted):
    return x.new_empty(x.shape if wanted else (0,))


@torch.library.register_fake("fastloss::multi_margin_loss")
def _multi_margin_public_fake(self, target, p=1, margin=1.0, weight=None, reduction=1, out_dtype=None):
    return _loss(self, reduction, target.dim() > 0, out_dtype)


@torch.library.register_fake("fastloss::multilabel_margin_loss")
def _multilabel_margin_public_fake(self, target, reduction=1, out_dtype=None):
    return _loss(self, reduction, target.dim() == 2, out_dtype)


@torch.library.register_fake("fastloss::_multi_margin_loss_forward")
def _multi_margin_fake(input, target, p, margin, weight, reduction, grad_now, out_dtype):
    return _loss(input, reduction, target.dim() > 0, out_dtype), _grad(input, grad_now)


@torch.library.register_fake("fastloss::_multi_margin_loss_backward")
def _multi_margin_bwd_fake(grad_loss, input, target, p, margin, weight, reduction):
    return _grad(input, True)


@torch.library.register_fake("fastloss::_multilabel_margin_loss_forward")
def _multilabel_margin_fake(input, target, reduction, grad_now, out_dtype):
    return _loss(input, reduction, target.dim() == 2, out_dtype), _grad(input, grad_now)


@torch.library.register_fake("fastloss::_multilabel_margin_loss_backward")
def _multilabel_margin_bwd_fake(grad_loss, input, target, reduction):
    return _grad(input, True)
