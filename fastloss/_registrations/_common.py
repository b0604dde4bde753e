"""Pieces every loss family's Python layer uses: the autocast rule. (The fused backward and its
autograd live in C++: csrc/autograd/.)"""
import torch

_FP32_UNDER_AUTOCAST = (torch.float16, torch.bfloat16)


def autocast_out_dtype(*tensors):
    """torch runs losses under autocast in float32 (fp32 policy): half/bfloat16 inputs give a float32
    loss. fastloss reads the half/bfloat16 data as is (it accumulates in float32 anyway) and only
    writes the loss in float32, so no float32 copy of the input is ever made."""
    t = tensors[0]
    if t.dtype in _FP32_UNDER_AUTOCAST and torch.is_autocast_enabled(t.device.type):
        return torch.float32
    return None
