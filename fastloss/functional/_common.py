"""What every family's wrappers share: torch's argument rules (reduction, legacy size_average/reduce,
dtypes, weight), the autocast rule, the torch.func fallback (_transforming, _TORCH) and FastOps, the
eager fast path of the op calls. (The fused backward and its autograd live in C++: csrc/autograd/.)"""
import functools

import torch
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from .. import _C, _losses

# Under a torch.func transform (grad, vjp, jacrev, vmap, ...) every loss is torch's own: torch.func refuses
# C++ autograd Functions (fastloss's autograd) under grad-type transforms, and under vmap a fastloss op,
# which has no batching rule, would run once per batch entry. torch's losses compose with every
# transform, nesting and higher orders included. Documented in the README; counted by
# tests/test_ops.py::test_torch_func_transforms_run_torch. _TORCH: torch's function by name, from the table of
# losses (fastloss/_losses.py), taken before any fastloss.patch(); a loss torch.nn lacks (sigmoid_focal_loss)
# maps to the table's reference, its formula in torch ops.
_transforming = torch._C._are_functorch_transforms_active
_TORCH = _losses.torch_functions()



def _redirect(fn, tensors, *args, **kwargs):
    """A call that is not fastloss's to run, given the function's own arguments once: a __torch_function__
    override among `tensors` gets it, else (a torch.func transform is active) torch's loss of the same name.
    Each wrapper asks `has_torch_function_variadic(*tensors) or _transforming()` first, inline: two C calls on
    the fast path."""
    if has_torch_function_variadic(*tensors):
        return handle_torch_function(fn, tensors, *args, **kwargs)
    return _TORCH[fn.__name__](*args, **kwargs)


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



_FP32_UNDER_AUTOCAST = (torch.float16, torch.bfloat16)


def device_type(t):
    """t.device.type without building a torch.device (~1 us of a small loss's host time)."""
    return "cuda" if t.is_cuda else "cpu" if t.is_cpu else t.device.type


def autocast_enabled(t):
    """torch.is_autocast_enabled for t's device."""
    return torch.is_autocast_enabled(device_type(t))


def autocast_out_dtype(*tensors):
    """torch runs losses under autocast in float32 (fp32 policy): half/bfloat16 inputs give a float32
    loss. fastloss reads the half/bfloat16 data as is (it accumulates in float32 anyway) and only
    writes the loss in float32, so no float32 copy of the input is ever made."""
    t = tensors[0]
    if t.dtype in _FP32_UNDER_AUTOCAST and autocast_enabled(t):
        return torch.float32
    return None


def _fast_op(name):
    """torch.ops.fastloss.<name>, called in eager mode through fastloss._C._fast_call: the same dispatcher
    call (autograd, autocast, dispatch modes, fake tensors and the profiler see no difference) without
    torch.ops' ~10 us of Python argument matching. Arguments the fast path does not take (a tensor
    subclass, a numpy scalar ...) go to torch.ops itself, from C. Under torch.compile the call is
    torch.ops' (_fast_call_traced). A partial: no Python frame between the loss and the C call."""
    op = getattr(torch.ops.fastloss, name)
    handle = _C._fast_handle("fastloss::" + name, op)
    _FALLBACK[handle] = op
    return functools.partial(_C._fast_call, handle)


_FALLBACK = {}  # handle -> torch.ops.fastloss.<op>


@torch.compiler.substitute_in_graph(_C._fast_call, skip_signature_check=True)
def _fast_call_traced(handle, *args):
    """What dynamo traces in place of _C._fast_call (a C function it cannot see into): the op itself."""
    return _FALLBACK[handle](*args)


class FastOps:
    """`ops.<name>`: the _fast_op of torch.ops.fastloss.<name>, for each name given. Made at import:
    dynamo must never see _C._fast_handle (a first use could come under torch.compile)."""

    def __init__(self, *names):
        for name in names:
            setattr(self, name, _fast_op(name))
