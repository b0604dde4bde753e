"""Pieces every loss family's registration uses: the fused backward and the autocast rule."""
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


def _keep_graph():
    """True when autograd may run this node again (retain_graph=True): the saved gradient must stay
    intact. Unknown (an older torch without the query) counts as True."""
    query = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if query is None:
        return True
    try:
        return bool(query())
    except RuntimeError:
        return True


def _eager():
    """Plain eager execution: no tracing (torch.compile, make_fx, fake or functional tensors). Traced
    graphs take the out-of-place op; the compiler decides about buffer reuse there."""
    return torch._C._len_torch_dispatch_stack() == 0 and not torch.compiler.is_compiling()


def scale_saved_grad(grad, grad_loss, classes, inner):
    """The forward already wrote d(loss)/d(input) into `grad`; backward multiplies by grad_output.
    In eager mode, when the graph is not kept, this happens in place (and a factor of 1 is skipped on
    the device), so the returned gradient is the forward's buffer: no second gradient-sized
    allocation."""
    if type(grad) is not torch.Tensor or not _eager() or _keep_graph():
        return torch.ops.fastloss.scale_grad(grad, grad_loss, classes, inner)
    torch.ops.fastloss.scale_grad_(grad, grad_loss, classes, inner)
    return grad


def refuse_double_backward(name):
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"fastloss.{name}: double backward (create_graph=True) is not supported: the first derivative "
            f"comes from a fused kernel. Use torch.nn.functional.{name} where second derivatives are needed.")


def refuse_weight_grad(ctx, index, name):
    if ctx.needs_input_grad[index]:
        raise RuntimeError(f"fastloss.{name}: the derivative for 'weight' is not implemented (as in torch)")
