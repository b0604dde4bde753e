"""Tensors past 2^31 elements on the CPU, checked at the far end (64-bit indexing everywhere).

Marked `large` and skipped unless FASTLOSS_LARGE=1 (each test needs 8-9 GiB of memory and tens of
seconds on 2 cores):  FASTLOSS_LARGE=1 python -m pytest -m large tests/test_large.py
bfloat16 keeps 2^31 elements at 4 GiB. The inputs are a repeated random block with distinct random
values written at the far end, where an index that wrapped at 2^31 would read or write the wrong
place; the reference is torch on those last rows / elements (and, for the sums, a float64 sum over
chunks of the whole tensor).
"""
import pytest
import torch
import torch.nn.functional as F

import fastloss

Fl = fastloss.functional
pytestmark = pytest.mark.large

C = 32768
N = 2**31 // C + 3  # N * C = 2^31 + 3 * 32768 elements
TAIL = 5  # rows written with their own values at the far end


def _avail_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def _need(gib):
    if _avail_gib() < gib:
        pytest.skip(f"needs {gib} GiB of free memory, {_avail_gib():.1f} GiB available")


def _logits(log_probs=False):
    """(N, C) bfloat16: a repeated 512-row random block, then TAIL rows of their own at the end."""
    g = torch.Generator().manual_seed(0)
    block = torch.randn(512, C, generator=g)
    if log_probs:
        block = block.log_softmax(1)
    block = block.to(torch.bfloat16)
    x = torch.empty(N, C, dtype=torch.bfloat16)
    full = (N - TAIL) // 512 * 512
    x[:full].view(-1, 512, C).copy_(block.expand(full // 512, 512, C))
    x[full:N - TAIL] = block[:N - TAIL - full]
    tail = torch.randn(TAIL, C, generator=g)
    x[N - TAIL:] = (tail.log_softmax(1) if log_probs else tail).to(torch.bfloat16)
    t = torch.randint(0, C, (N,), generator=g)
    t[-1] = C - 1  # the very last element of the tensor is a target
    t[-2] = 0
    return x, t


def test_cross_entropy_past_2g_elements():
    assert N * C > 2**31
    _need(10)
    x, t = _logits()
    x.requires_grad_()
    loss = Fl.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    go = torch.rand(N, generator=torch.Generator().manual_seed(1))
    loss.backward(go.to(loss.dtype))
    # the far end, against torch in float32 on the same values
    xt = x.detach()[-TAIL:].float().requires_grad_()
    ref = F.cross_entropy(xt, t[-TAIL:], reduction="none", label_smoothing=0.1)
    ref.backward(go[-TAIL:].to(torch.bfloat16).float())
    torch.testing.assert_close(loss[-TAIL:].float(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(x.grad[-TAIL:].float(), xt.grad, rtol=2e-2, atol=1e-4)
    # rows just below and at 2^31 / C (the first row whose elements pass 2^31) and the block's rows
    for r in (2**31 // C - 1, 2**31 // C, 0, 511):
        xr = x.detach()[r:r + 1].float().requires_grad_()
        F.cross_entropy(xr, t[r:r + 1], reduction="none", label_smoothing=0.1).backward(
            go[r:r + 1].to(torch.bfloat16).float())
        torch.testing.assert_close(x.grad[r:r + 1].float(), xr.grad, rtol=2e-2, atol=1e-4, msg=f"row {r}")
    assert loss.isfinite().all()


def test_nll_loss_past_2g_elements():
    _need(10)
    x, t = _logits(log_probs=True)
    x.requires_grad_()
    loss = Fl.nll_loss(x, t, reduction="sum")
    loss.backward()
    ref = -x.detach().gather(1, t[:, None]).double().sum()
    torch.testing.assert_close(loss.double(), ref, rtol=2**-8, atol=0)  # the bfloat16 result's rounding
    grad = x.grad
    assert grad.view(-1)[-1].item() == -1.0  # the last element of the tensor is the last row's target
    xt = x.detach()[-TAIL:].float().requires_grad_()
    F.nll_loss(xt, t[-TAIL:], reduction="sum").backward()
    assert torch.equal(grad[-TAIL:].float(), xt.grad)
    # exactly one nonzero per row: nothing written past a row, nor a wrapped index
    assert grad.count_nonzero().item() == N


def test_pointwise_past_2g_elements():
    """smooth_l1 between two overlapping views of one buffer (input = buf[1:], target = buf[:-1]): more
    than 2^31 elements each with two tensors of memory (buffer and gradient)."""
    n = 2**31 + 1000
    _need(9)
    g = torch.Generator().manual_seed(0)
    buf = torch.empty(n + 1, dtype=torch.bfloat16)
    block = torch.randn(1 << 20, generator=g).to(torch.bfloat16)
    full = (n + 1) // block.numel() * block.numel()
    buf[:full].view(-1, block.numel()).copy_(block.expand(full // block.numel(), -1))
    buf[full:] = torch.randn(n + 1 - full, generator=g).to(torch.bfloat16)  # the far end: values of its own
    x = buf[1:].detach().requires_grad_()  # a leaf view of buf
    y = buf[:-1]
    loss = Fl.smooth_l1_loss(x, y, reduction="sum", beta=0.5)
    loss.backward()
    # the sum against a float64 sum over chunks of the whole tensors
    ref = 0.0
    step = 1 << 24  # float64 chunks of 128 MB: the reference adds little to the peak
    for s in range(0, n, step):
        ref += F.smooth_l1_loss(x.detach()[s:s + step].double(), y[s:s + step].double(), reduction="sum",
                                beta=0.5).item()
    torch.testing.assert_close(loss.double().item(), ref, rtol=2**-8, atol=0)  # the bfloat16 result's rounding
    # the gradient at the far end and around 2^31
    for s in (n - 3000, 2**31 - 1000, 0):
        xs = x.detach()[s:s + 3000].float().requires_grad_()
        F.smooth_l1_loss(xs, y[s:s + 3000].float(), reduction="sum", beta=0.5).backward()
        torch.testing.assert_close(x.grad[s:s + 3000].float(), xs.grad, rtol=1e-2, atol=1e-2, msg=f"from {s}")
