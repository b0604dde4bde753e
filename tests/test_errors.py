"""Bad input raises a clear error (the same exception type torch raises), on CPU and CUDA alike;
never a crash, a device-side assert or silent garbage."""
import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import call_and_check, device_params, requires_cuda

CE = fastloss.functional.cross_entropy
NLL = fastloss.functional.nll_loss


def _cases(device):
    x = torch.randn(4, 5, device=device)
    t = torch.tensor([0, 1, 2, 3], device=device)
    return {
        # name: (callable, exception type torch raises too, text our message contains)
        "target too large": (lambda f: f(x, torch.tensor([0, 1, 2, 5], device=device)), IndexError,
                             "Target 5 is out of bounds"),
        "negative target": (lambda f: f(x, torch.tensor([0, -1, 2, 3], device=device)), IndexError,
                            "Target -1 is out of bounds"),
        "batch mismatch": (lambda f: f(x, t[:3]), ValueError, "batch_size"),
        "K-dim target shape": (lambda f: f(torch.randn(2, 5, 3, device=device),
                                           torch.zeros(2, 4, dtype=torch.long, device=device)), RuntimeError,
                               "Expected target size"),
        "weight length": (lambda f: f(x, t, weight=torch.rand(4, device=device)), RuntimeError,
                          "weight tensor should be defined either for all 5 classes"),
        "weight dtype": (lambda f: f(x, t, weight=torch.rand(5, device=device, dtype=torch.float64)), RuntimeError,
                         "expected scalar type Float but found Double"),
        "unknown reduction": (lambda f: f(x, t, reduction="average"), ValueError, "is not a valid value for reduction"),
        "int32 target": (lambda f: f(x, t.int()), RuntimeError, "expected target dtype to be Long or Byte"),
        "float target of wrong shape": (lambda f: f(x, t.float()), RuntimeError, "Long or Byte"),
        "0-dim input": (lambda f: f(torch.tensor(1.0, device=device), t[0]), (ValueError, RuntimeError),
                        "dimension"),
        "2-D target for 2-D input": (lambda f: f(x, torch.zeros(4, 3, dtype=torch.long, device=device)),
                                     RuntimeError, "Expected target size"),
    }


CE_ONLY = {
    "label_smoothing > 1": (lambda x, t, q: CE(x, t, label_smoothing=1.5), RuntimeError,
                            "label_smoothing must be between 0.0 and 1.0"),
    "prob target with ignore_index": (lambda x, t, q: CE(x, q, ignore_index=1), RuntimeError,
                                      "ignore_index is not supported for floating point target"),
    "integer prob target": (lambda x, t, q: CE(x, q.long()), RuntimeError, "Expected floating point type"),
    "integer input": (lambda x, t, q: CE(x.long(), t), RuntimeError, "must be float64, float32, float16 or bfloat16"),
    "weight requires grad": (lambda x, t, q: CE(x, t, weight=torch.rand(5, device=x.device, requires_grad=True)),
                             RuntimeError, "not differentiable with respect to argument 'weight'"),
}


def _torch_fn(fn):
    return F.cross_entropy if fn is CE else F.nll_loss


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("fn", [CE, NLL], ids=["cross_entropy", "nll_loss"])
@pytest.mark.parametrize("name", list(_cases("cpu")))
def test_bad_input(device, fn, name):
    call, exc, text = _cases(device)[name]
    with pytest.raises(exc, match=text):
        call_and_check(lambda: call(fn))
    if device == "cuda" and exc is IndexError:
        return  # torch's CUDA kernels reject bad targets with a device-side assert, which kills the context
    with pytest.raises(exc if isinstance(exc, tuple) else (exc, RuntimeError)):
        call(_torch_fn(fn))  # torch refuses the same input


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("name", list(CE_ONLY))
def test_bad_input_cross_entropy(device, name):
    x = torch.randn(4, 5, device=device)
    t = torch.tensor([0, 1, 2, 3], device=device)
    q = torch.rand(4, 5, device=device)
    call, exc, text = CE_ONLY[name]
    with pytest.raises(exc, match=text):
        call(x, t, q)


def test_negative_label_smoothing_refused():
    """Documented deviation: torch silently treats label_smoothing < 0 as 0; fastloss refuses it."""
    with pytest.raises(RuntimeError, match="label_smoothing must be between 0.0 and 1.0"):
        CE(torch.randn(3, 4), torch.tensor([0, 1, 2]), label_smoothing=-0.1)


@requires_cuda
def test_device_mismatch():
    x = torch.randn(4, 5, device="cuda")
    with pytest.raises(RuntimeError, match="same device"):
        CE(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(RuntimeError, match="same device"):
        CE(x, torch.tensor([0, 1, 2, 3], device="cuda"), weight=torch.rand(5))


@requires_cuda
def test_cuda_error_leaves_context_usable():
    """An out-of-range target on CUDA raises IndexError (no device-side assert): CUDA keeps working."""
    x = torch.randn(64, 1000, device="cuda")
    with pytest.raises(IndexError, match="Target 1000 is out of bounds"):
        call_and_check(lambda: CE(x, torch.full((64,), 1000, device="cuda")))
    torch.testing.assert_close(CE(x, torch.zeros(64, dtype=torch.long, device="cuda")),
                               F.cross_entropy(x, torch.zeros(64, dtype=torch.long, device="cuda")))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("op", ["scale_grad", "scale_grad_"])
@pytest.mark.parametrize("classes,inner,rows", [(4, 1, 2), (3, 2, 2), (0, 1, 1), (4, 0, 2)])
def test_scale_grad_refuses_partial_rows(device, op, classes, inner, rows):
    """The ops index the factor by element / (classes * inner): a grad that is not whole rows must raise,
    not read past the factor (called directly; the library's own calls are always whole rows)."""
    g = torch.randn(10, device=device)
    with pytest.raises(RuntimeError, match="not a multiple of classes \\* inner"):
        getattr(torch.ops.fastloss, op)(g, torch.rand(rows, device=device), classes, inner)
