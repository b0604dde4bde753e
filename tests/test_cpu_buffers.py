"""The CPU's large-buffer fast path gives the same bits as the plain one.

Gradients and 'none' losses of 4 MB and more are allocated with transparent huge pages advised
(csrc/common/alloc.h; torch.ops.fastloss._set_option("cpu_huge_pages", 0) turns it off), and rows
that a backward writes are split across threads by elements written, not by rows (nll_loss's
1024 x 32000 gradient used to be zero-filled on one thread). Neither may change a value: these sizes
take both paths, compared bitwise with each other, with one thread and two, and (nll_loss, whose
gradient torch writes with the same single product) with torch.
"""
import pytest
import torch
import torch.nn.functional as F

import fastloss

Fl = fastloss.functional


def _with(huge, threads, fn):
    old_opt = torch.ops.fastloss._set_option("cpu_huge_pages", int(huge))
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(old_threads)
        torch.ops.fastloss._set_option("cpu_huge_pages", old_opt)


def _nll(reduction, upstream):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 32000, generator=g).log_softmax(1).requires_grad_()
    t = torch.randint(0, 32000, (1024,), generator=g)
    t[::9] = -100
    go = torch.rand(1024, generator=g)

    def run(fn):
        x.grad = None
        loss = fn(x, t, reduction=reduction)
        if reduction != "none":
            loss.backward()
        elif upstream == "sum":
            loss.sum().backward()
        else:
            loss.backward(go)
        return loss.detach(), x.grad
    return run


def _ce_none_sum():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 32000, generator=g, requires_grad=True)
    t = torch.randint(0, 32000, (256,), generator=g)

    def run(fn):
        x.grad = None
        loss = fn(x, t, reduction="none", label_smoothing=0.1)
        loss.sum().backward()
        return loss.detach(), x.grad
    return run


def _smooth_l1(upstream):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2**21 + 5, generator=g, requires_grad=True)  # 8 MB: advised
    y = torch.randn(2**21 + 5, generator=g)
    go = torch.rand(2**21 + 5, generator=g)

    def run(fn):
        x.grad = None
        loss = fn(x, y, reduction="none", beta=0.5)
        loss.sum().backward() if upstream == "sum" else loss.backward(go)
        return loss.detach(), x.grad
    return run


CASES = {
    "nll_mean": lambda: (_nll("mean", None), Fl.nll_loss, None),
    "nll_sum": lambda: (_nll("sum", None), Fl.nll_loss, F.nll_loss),
    "nll_none_sum": lambda: (_nll("none", "sum"), Fl.nll_loss, F.nll_loss),
    "nll_none_dense": lambda: (_nll("none", "dense"), Fl.nll_loss, F.nll_loss),
    "ce_none_sum": lambda: (_ce_none_sum(), Fl.cross_entropy, None),
    "smooth_l1_none_sum": lambda: (_smooth_l1("sum"), Fl.smooth_l1_loss, None),
    "smooth_l1_none_dense": lambda: (_smooth_l1("dense"), Fl.smooth_l1_loss, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_large_buffer_paths_same_bits(case):
    run, fn, torch_fn = CASES[case]()
    plain = _with(False, 1, lambda: run(fn))
    for huge, threads in [(True, 1), (True, 2), (False, 2)]:
        other = _with(huge, threads, lambda: run(fn))
        for a, b in zip(plain, other):
            assert torch.equal(a, b), f"{case}: huge pages {huge}, {threads} threads"
    if torch_fn is not None:  # -w * grad_output, one product: torch's bits
        ref = run(torch_fn)
        assert torch.equal(plain[1], ref[1]), f"{case}: gradient differs from torch's"
