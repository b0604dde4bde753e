"""Pieces every loss family's Python layer uses: the autocast rule. (The fused backward and its
autograd live in C++: csrc/autograd/.)"""
import functools

import torch

from .. import _C

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
