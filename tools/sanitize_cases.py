"""Small cases that reach every CUDA kernel of fastloss, for compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python tools/sanitize_cases.py
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck python tools/sanitize_cases.py

Row kernels (warp / block256 / block512, each shared-memory tier), misaligned rows, the strided
K-D kernel, probability targets, nll_loss, scale_grad(_) in place and out of place, target checks;
the pointwise, row, CTC and margin_rows kernels.
"""
import sys

import torch

import fastloss

CE = fastloss.functional.cross_entropy
ops = torch.ops.fastloss


def run():
    dev = "cuda"
    n = 0
    for dtype in [torch.float32, torch.bfloat16, torch.float16, torch.float64]:
        for config, cap in [(0, -1), (1, -1), (1, 1), (2, -1), (2, 0), (2, 1), (3, -1), (3, 1)]:
            ops._set_option("ce_config", config)
            ops._set_option("ce_smem_vecs", cap)
            for C in [5, 131, 3001]:
                for offset in [0, 1]:  # offset 1: rows not 16-byte aligned
                    big = torch.randn(3, C + 1, device=dev, dtype=dtype)
                    x = big[:, offset:offset + C].requires_grad_()
                    t = torch.randint(0, C, (3,), device=dev)
                    t[1] = -100
                    w = torch.rand(C, device=dev, dtype=dtype)
                    loss = CE(x, t, weight=w, label_smoothing=0.1, reduction="none")
                    loss.backward(torch.rand_like(loss))
                    q = torch.rand(3, C, device=dev, dtype=dtype, requires_grad=True)
                    CE(x.detach().requires_grad_(), q).backward()
                    n += 2
    ops._set_option("ce_config", -1)
    ops._set_option("ce_smem_vecs", -1)
    for dtype in [torch.float32, torch.bfloat16]:
        x = torch.randn(2, 7, 3, 5, device=dev, dtype=dtype, requires_grad=True)
        t = torch.randint(0, 7, (2, 3, 5), device=dev)
        CE(x, t, label_smoothing=0.2).backward()
        CE(x, x.detach().softmax(1)).backward()
        fastloss.functional.nll_loss(x, t, reduction="sum").backward()
        fastloss.functional.nll_loss(x[:, :, 0, 0], t[:, 0, 0]).backward()
        n += 4
    x = torch.randn(4, 1000, device=dev, requires_grad=True)
    t = torch.randint(0, 1000, (4,), device=dev)
    loss = CE(x, t)
    loss.backward(retain_graph=True)  # out-of-place scale
    loss.backward()  # in place, factor 1: skipped on the device
    try:
        CE(x, torch.tensor([0, 1, 1000, 2], device=dev))
        raise SystemExit("an out-of-range target was accepted")
    except IndexError:
        pass
    fastloss.set_target_validation(False)
    CE(x, torch.tensor([0, -7, 1000, 2], device=dev), reduction="none").sum().backward()
    fastloss.set_target_validation(True)
    for cases in (pointwise_and_row_cases, broadcast_cases, ctc_cases, margin_rows_cases):
        print(f"sanitize: {cases.__name__} ...", file=sys.stderr, flush=True)  # a timeout still shows how far it got
        n += cases(dev)
    torch.cuda.synchronize()
    print(f"sanitize cases done: {n + 4} calls", file=sys.stderr)


def pointwise_and_row_cases(dev):
    """Every pointwise kind and both row losses: aligned and misaligned (offset 1) data, odd sizes
    (vector tails, trailing empty blocks), reductions, fused-forward and backward-op gradients."""
    Fl = fastloss.functional
    n = 0
    for dtype in [torch.float32, torch.bfloat16, torch.float16, torch.float64]:
        for size, offset in [(1, 0), (37, 0), (37, 1), (4099, 0), (4099, 1)]:
            base = torch.randn(3, size + 1, device=dev, dtype=dtype)
            x = base[0, offset:offset + size].detach().requires_grad_()
            y = base[1, offset:offset + size].detach().requires_grad_()
            w = base[2, offset:offset + size].abs().detach().requires_grad_()
            s = torch.sign(base[2, :size]).detach()
            for red in ["none", "mean", "sum"]:
                for loss in [Fl.l1_loss(x, y, reduction=red), Fl.mse_loss(x, y, reduction=red, weight=w),
                             Fl.smooth_l1_loss(x, y, reduction=red, beta=0.5),
                             Fl.huber_loss(x, y, reduction=red, delta=0.7, weight=w),
                             Fl.margin_ranking_loss(x, y, s, margin=0.1, reduction=red),
                             Fl.hinge_embedding_loss(x, s, reduction=red),
                             Fl.soft_margin_loss(x, s, reduction=red),
                             Fl.kl_div(x, w, reduction="batchmean" if red == "mean" else red),
                             Fl.binary_cross_entropy(torch.sigmoid(x), torch.sigmoid(y.detach()), weight=w.detach(),
                                                     reduction=red),
                             Fl.binary_cross_entropy_with_logits(x, torch.sigmoid(y), weight=w.detach(),
                                                                 pos_weight=w.detach() + 0.5, reduction=red),
                             Fl.binary_cross_entropy_with_logits(x, torch.sigmoid(y), reduction=red),
                             Fl.poisson_nll_loss(x, w, full=True, reduction=red),
                             Fl.poisson_nll_loss(w, y, log_input=False, reduction=red),
                             Fl.gaussian_nll_loss(x, y, w, full=True, reduction=red),
                             Fl.sigmoid_focal_loss(x, torch.sigmoid(y), reduction=red),
                             Fl.sigmoid_focal_loss(x, torch.sigmoid(y), alpha=-1, gamma=1.5, reduction=red)]:
                    loss.backward(torch.rand_like(loss))
                    n += 1
        for rows, D in [(1, 1), (5, 33), (9, 512), (3, 2050)]:
            a, p, q = (torch.randn(rows, D, device=dev, dtype=dtype, requires_grad=True) for _ in range(3))
            for red in ["none", "mean"]:
                for pn, swap in [(2.0, False), (1.0, True), (float("inf"), True), (1.5, False)]:
                    loss = Fl.triplet_margin_loss(a, p, q, p=pn, swap=swap, reduction=red)
                    loss.backward(torch.rand_like(loss))
                    n += 1
                t = torch.tensor([1.0, -1.0, 0.0] * rows, device=dev)[:rows]
                loss = Fl.cosine_embedding_loss(a, p, t, margin=0.1, reduction=red)
                loss.backward(torch.rand_like(loss))
                n += 1
    # binary_cross_entropy's domain check on the device: reported, and skipped without reading past n
    bad = torch.full((4099,), 0.5, device=dev)
    bad[4000] = 1.5
    try:
        Fl.binary_cross_entropy(bad, torch.full_like(bad, 0.5))
        raise AssertionError("binary_cross_entropy accepted an input of 1.5")
    except RuntimeError as e:
        assert "between 0 and 1" in str(e), e
    fastloss.set_target_validation(False)
    Fl.binary_cross_entropy(bad, torch.full_like(bad, 0.5))
    fastloss.set_target_validation(True)
    return n + 2


def broadcast_cases(dev):
    """Pointwise third/fourth tensors that broadcast, read through their small source (PwBcast, never
    materialized): weight and pos_weight (C,), var (N, 1); odd C (vector tails), a misaligned source."""
    Fl = fastloss.functional
    n = 0
    for dtype in [torch.float32, torch.bfloat16, torch.float16, torch.float64]:
        for N, C in [(1, 1), (37, 5), (129, 37), (64, 1001)]:
            x = torch.randn(N, C, device=dev, dtype=dtype, requires_grad=True)
            t = torch.rand(N, C, device=dev, dtype=dtype)
            src = torch.rand(N + C + 1, device=dev, dtype=dtype) + 0.5
            pw = src[1:C + 1]  # offset 1: not 16-byte aligned
            var = src[1:N + 1].unsqueeze(1).detach().requires_grad_()
            for red in ["none", "mean", "sum"]:
                for loss in [Fl.binary_cross_entropy_with_logits(x, t, weight=pw, pos_weight=pw, reduction=red),
                             Fl.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction=red),
                             Fl.gaussian_nll_loss(x, t, var, reduction=red)]:
                    loss.backward(torch.rand_like(loss))
                    n += 1
    return n


def ctc_cases(dev):
    """ctc_loss: every dtype, padded and concatenated targets, repeats, target length 0, input length 0,
    impossible samples, K = 1 and K = 2 states per thread (2S+1 > 1024), and a bad device target
    (checked, then unchecked: NaN, no out-of-bounds read)."""
    ctc = fastloss.functional.ctc_loss
    n = 0
    for dtype in [torch.float32, torch.bfloat16, torch.float16, torch.float64]:
        # S 600, 1500, 3500: K = 2, 4, 8 states per thread; 3500 also needs > 48 KB of (opt-in) shared memory
        for T, N, C, S in [(1, 1, 2, 1), (7, 3, 5, 3), (40, 4, 33, 12), (20, 2, 7, 600), (30, 2, 5, 1500),
                           (20, 2, 5, 3500)]:
            lp = torch.randn(T, N, C, device=dev, dtype=torch.float32).log_softmax(-1).to(dtype).requires_grad_()
            tg = torch.randint(1, C, (N, S), device=dev)
            tg[0, 1:] = tg[0, :-1].clone()  # repeats
            il = torch.randint(0, T + 1, (N,))
            tl = torch.randint(0, S + 1, (N,))
            il[0], tl[-1] = T, 0
            for red in ["none", "mean", "sum"]:
                for zi in [False, True]:
                    loss = ctc(lp, tg, il, tl, reduction=red, zero_infinity=zi)
                    loss.backward(torch.rand_like(loss))
                    flat = torch.cat([tg[i, :tl[i]] for i in range(N)])
                    ctc(lp, flat, il.to(dev), tl.to(dev), reduction=red, zero_infinity=zi).sum().backward()
                    n += 2
    lp = torch.randn(5, 2, 4, device=dev).log_softmax(-1).requires_grad_()
    bad = torch.tensor([[1, 9], [0, 2]], device=dev)
    try:
        ctc(lp, bad, [5, 5], [2, 2])
        raise SystemExit("an out-of-range CTC target was accepted")
    except IndexError:
        pass
    fastloss.set_target_validation(False)
    ctc(lp, bad, [5, 5], [2, 2]).backward()
    fastloss.set_target_validation(True)
    return n + 2


def margin_rows_cases(dev):
    """multi_margin (warp and block rows, aligned and misaligned, p 1/2, weights) and multilabel_margin
    (warp rows, block rows in default and opt-in shared memory, global-scratch rows; lists with -1
    anywhere, duplicates, none), every reduction (fused forward gradient and backward ops), and bad
    targets (checked, then unchecked: NaN rows, no out-of-bounds access)."""
    Fl = fastloss.functional
    n = 0
    for dtype in [torch.float32, torch.bfloat16, torch.float16, torch.float64]:
        for rows, C in [(1, 1), (9, 33), (5, 2048), (3, 2051), (2, 4096)]:
            for offset in [0, 1]:
                base = torch.randn(rows, C + 1, device=dev, dtype=dtype)
                x = base[:, offset:offset + C].detach().requires_grad_()
                t = torch.randint(0, C, (rows,), device=dev)
                w = torch.rand(C, device=dev, dtype=dtype)
                for red in ["none", "mean", "sum"]:
                    for p, weight in [(1, None), (2, w)]:
                        loss = Fl.multi_margin_loss(x, t, p=p, margin=0.5, weight=weight, reduction=red)
                        loss.backward(torch.rand_like(loss))
                        n += 1
        for rows, C in [(1, 1), (9, 33), (10, 400), (3, 600), (2, 5000), (2, 30000)]:
            x = torch.randn(rows, C, device=dev, dtype=dtype, requires_grad=True)
            t = torch.randint(0, C, (rows, C), device=dev)
            t[0, min(3, C - 1)] = -1
            if rows > 2:
                t[1, 0] = -1
                t[2, :min(4, C)] = t[2, 0]  # duplicates
            for red in ["none", "mean", "sum"]:
                loss = Fl.multilabel_margin_loss(x, t, reduction=red)
                loss.backward(torch.rand_like(loss))
                n += 1
    x = torch.randn(4, 50, device=dev, requires_grad=True)
    bad_mm = torch.tensor([0, 50, 2, -1], device=dev)
    bad_ml = torch.randint(0, 50, (4, 50), device=dev)
    bad_ml[1, 7] = 50
    bad_ml[2, 0], bad_ml[2, 9] = -1, -3  # after the list's end: still refused
    for f, t in [(Fl.multi_margin_loss, bad_mm), (Fl.multilabel_margin_loss, bad_ml)]:
        try:
            f(x, t)
            raise SystemExit("an out-of-range margin target was accepted")
        except RuntimeError as e:
            if "out of range" not in str(e):
                raise
        fastloss.set_target_validation(False)
        f(x, t, reduction="none").sum().backward()
        f(x, t).backward()
        fastloss.set_target_validation(True)
        n += 3
    return n


if __name__ == "__main__":
    run()
