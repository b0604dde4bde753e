"""nll_loss against torch.nn.functional.nll_loss."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import fastloss
from conftest import DTYPES, assert_close_ref, device_params
from test_cross_entropy import make_class_target, make_input

SHAPES = [(7,), (1, 1), (5, 2), (9, 33), (3, 1000), (3, 5, 4), (2, 4, 3, 2)]

CASES = list(itertools.product(SHAPES, ["none", "mean", "sum"], [False, True], [-100, 1]))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,reduction,weighted,ignore_index", CASES)
def test_matches_torch(device, dtype, shape, reduction, weighted, ignore_index):
    C = shape[0] if len(shape) == 1 else shape[1]
    layout = "permute" if len(shape) > 2 else ("transpose" if len(shape) == 2 else "contig")
    x = make_input(shape, dtype, device, layout).requires_grad_()
    t = make_class_target(shape, device, ignore_index=ignore_index)
    w = (torch.rand(C, device=device) + 0.2).to(dtype) if weighted else None
    loss = fastloss.functional.nll_loss(x, t, weight=w, reduction=reduction, ignore_index=ignore_index)
    grad_out = torch.rand(loss.shape, device=device, dtype=torch.float64) + 0.5

    x64 = x.detach().double().contiguous().requires_grad_()  # torch's nll_loss2d backward needs contiguous
    ref = F.nll_loss(x64, t, weight=w.double() if weighted else None, reduction=reduction, ignore_index=ignore_index)
    gref, = torch.autograd.grad(ref, x64, grad_out)
    assert loss.dtype == dtype
    assert_close_ref(loss, ref, dtype, "loss")
    g, = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
    assert_close_ref(g, gref, dtype, "grad")


@pytest.mark.parametrize("device", device_params())
def test_all_ignored_and_uint8(device):
    x = torch.randn(4, 6, device=device, dtype=torch.float64, requires_grad=True)
    for t in [torch.full((4,), -100, device=device), torch.tensor([1, 2, 5, 0], device=device, dtype=torch.uint8)]:
        for red in ["none", "mean", "sum"]:
            ours = fastloss.functional.nll_loss(x, t, reduction=red)
            ref = F.nll_loss(x, t, reduction=red)
            torch.testing.assert_close(ours, ref, equal_nan=True)
            g1, = torch.autograd.grad(ours.sum(), x)
            g2, = torch.autograd.grad(ref.sum(), x)
            torch.testing.assert_close(g1, g2, equal_nan=True)


def test_nll_double_backward_refused():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = fastloss.functional.nll_loss(x, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)
