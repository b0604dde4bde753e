"""Calls from several Python threads at once give the results of the same calls made one after another.

fastloss releases the GIL inside its kernels (as torch.ops does), so Python threads really overlap in
the C++ code: forward ops, the backward ops and the in-place gradient scaling of backward. Each call owns
its buffers; the only process-wide state is read-only after import (op handles, the CPU vector table)
or an atomic switch (fastloss.set_target_validation, torch.ops.fastloss._set_option), read once per call.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import fastloss
from conftest import device_params

Fl = fastloss.functional


def _cases(device):
    """(name, closure) pairs: each closure makes its own inputs from its own seed and returns the loss and
    the gradients of every differentiated input (backward included: it runs in the calling thread)."""
    def ce(seed, **kw):
        def run():
            g = torch.Generator(device=device).manual_seed(seed)
            x = torch.randn(64, 1000, generator=g, device=device, requires_grad=True)
            t = torch.randint(0, 1000, (64,), generator=g, device=device)
            t[::7] = -100
            loss = Fl.cross_entropy(x, t, **kw)
            loss.sum().backward()
            return loss.detach(), x.grad
        return run

    def nll(seed):
        def run():
            g = torch.Generator(device=device).manual_seed(seed)
            x = torch.randn(64, 1000, generator=g, device=device).log_softmax(1).requires_grad_()
            t = torch.randint(0, 1000, (64,), generator=g, device=device)
            loss = Fl.nll_loss(x, t, reduction="none")
            loss.backward(torch.rand(64, generator=g, device=device))
            return loss.detach(), x.grad
        return run

    def pointwise(seed, name, **kw):
        def run():
            g = torch.Generator(device=device).manual_seed(seed)
            x = torch.randn(100_000, generator=g, device=device, requires_grad=True)
            y = torch.randn(100_000, generator=g, device=device, requires_grad=True)
            loss = getattr(Fl, name)(x, y, **kw)
            (loss.sum() if loss.dim() else loss).backward()
            return loss.detach(), x.grad, y.grad
        return run

    def triplet(seed):
        def run():
            g = torch.Generator(device=device).manual_seed(seed)
            a, p, n = (torch.randn(512, 128, generator=g, device=device, requires_grad=True) for _ in range(3))
            loss = Fl.triplet_margin_loss(a, p, n, swap=True)
            loss.backward()
            return loss.detach(), a.grad, p.grad, n.grad
        return run

    def ctc(seed):
        def run():
            g = torch.Generator(device=device).manual_seed(seed)
            lp = torch.randn(50, 8, 20, generator=g, device=device).log_softmax(2).requires_grad_()
            tg = torch.randint(1, 20, (8, 15), generator=g, device=device)
            loss = Fl.ctc_loss(lp, tg, [50] * 8, [15] * 8)
            loss.backward()
            return loss.detach(), lp.grad
        return run

    def multi_margin(seed):
        def run():
            g = torch.Generator(device=device).manual_seed(seed)
            x = torch.randn(256, 100, generator=g, device=device, requires_grad=True)
            t = torch.randint(0, 100, (256,), generator=g, device=device)
            loss = Fl.multi_margin_loss(x, t, p=2, reduction="none")
            loss.sum().backward()
            return loss.detach(), x.grad
        return run

    return ([("ce_mean_ls", ce(1, label_smoothing=0.1)), ("ce_none", ce(2, reduction="none")), ("nll", nll(3)),
             ("mse_none", pointwise(4, "mse_loss", reduction="none")), ("smooth_l1", pointwise(5, "smooth_l1_loss")),
             ("bce_logits", pointwise(6, "binary_cross_entropy_with_logits")), ("triplet", triplet(7)),
             ("ctc", ctc(8)), ("multi_margin", multi_margin(9))])


@pytest.mark.parametrize("device", device_params())
def test_threads_match_sequential(device):
    cases = _cases(device) * 3  # every case several times, in flight together
    sequential = [run() for _, run in cases]
    for _ in range(2):
        barrier = threading.Barrier(4)

        def together(run):  # the first four calls start at the same moment, one per worker thread
            barrier.wait(timeout=60)
            return run()

        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(together, run) if i < 4 else pool.submit(run) for i, (_, run) in enumerate(cases)]
            threaded = [f.result(timeout=300) for f in futures]
        for (name, _), seq, par in zip(cases, sequential, threaded):
            assert len(seq) == len(par)
            for a, b in zip(seq, par):
                assert torch.equal(a, b), f"{name}: a threaded call differs from the sequential one"


def test_switch_is_process_wide_and_returns_previous():
    """set_target_validation changes one process-wide value (seen by every thread) and returns the previous one."""
    old = fastloss.set_target_validation(False)
    try:
        seen = []
        th = threading.Thread(target=lambda: seen.append(fastloss.set_target_validation(False)))
        th.start()
        th.join()
        assert seen == ["off"]  # the other thread saw this thread's setting
        assert fastloss.set_target_validation(True) == "off"
        assert torch.ops.fastloss._set_option("validate_targets", 1) == 1
    finally:
        fastloss.set_target_validation(old)
