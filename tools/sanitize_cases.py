"""Small cases that reach every CUDA kernel variant of fastloss, for compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python tools/sanitize_cases.py
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck python tools/sanitize_cases.py --racecheck
    python tools/sanitize_cases.py --device cpu      (the same calls on the CPU kernels: checks this script)

memcheck (default): every group below, every dtype. --racecheck: the kernels that share memory between
threads (cross-entropy block and cluster rows with their shared-memory row cache, CTC's recursion,
margin_rows' block rows and multilabel counters, the block reductions), fewer dtypes and sizes:
racecheck instruments every shared-memory access and is much slower than memcheck.
--groups picks groups by name (comma-separated). The groups whose kernels never ran come first.

Groups: pointwise (every pointwise kind, aligned and misaligned, odd sizes, reductions, fused and
backward-op gradients; BCE's domain check), broadcast (weights / pos_weight / var read through their
small source), embedding (triplet and cosine rows), margin_rows (multi_margin warp / block rows;
multilabel warp, block, opt-in shared memory and global-scratch rows), ctc (K = 1, 2, 4, 8 states
per thread, > 48 KB of shared memory, padded and concatenated targets), cross_entropy (every row
configuration and shared-memory cache cap, C small and large, misaligned rows, K-D, probability
targets, uint8 targets, nll_loss, scale_grad(_)), validation (bad targets checked, then unchecked:
NaN rows, nothing read out of bounds).

Each group runs in its own try/except: a failing group is reported (exit code 1) and the next runs.
"""
import argparse
import sys
import traceback

import torch

import fastloss

CE = fastloss.functional.cross_entropy
Fl = fastloss.functional
ops = torch.ops.fastloss
ALL_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def set_option(name, value):
    try:
        return ops._set_option(name, value)
    except Exception:  # noqa: BLE001 - an option this build lacks
        return None


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def expect_error(dev, fn, what):
    """fn() must be refused: at the call, or (deferred validation) at fastloss.check_errors() / the next
    fastloss call once the device has finished."""
    try:
        fn()
        sync(dev)
        if hasattr(fastloss, "check_errors"):
            fastloss.check_errors()
        CE(torch.randn(2, 3, device=dev), torch.tensor([0, 1], device=dev))
        sync(dev)
    except (RuntimeError, IndexError, ValueError) as e:
        if "CUDA error" in str(e):
            raise
        return
    raise SystemExit(f"{what} was accepted")


def unchecked(dev, fn):
    """fn() with target validation off (CUDA: NaN rows, no error, nothing out of bounds)."""
    if dev != "cuda":
        return 0  # CPU targets are always checked
    prev = set_option("validate_targets", 0)
    try:
        fn()
        sync(dev)
    finally:
        if prev is not None:
            set_option("validate_targets", prev)
    return 1


def cross_entropy_cases(dev, dtypes, race):
    n = 0
    # (config, cap on the cached vectors): -1 auto; 0 warp; 1 block256 x2/SM; 2 block1024; 3 two-block
    # cluster (sm_90). Rows of 40000 classes use the shared-memory cache in every block configuration
    # (3001 does only in float64), and a cap of 1 leaves part of the row in global memory.
    if race:
        configs = [(1, -1), (1, 1), (2, -1), (2, 1), (3, -1), (3, 1)]
        shapes = [(131, 0), (40000, 1)]
    else:
        configs = [(-1, -1), (0, -1), (1, -1), (1, 0), (1, 1), (2, -1), (2, 0), (2, 1), (3, -1), (3, 1)]
        shapes = [(5, 1), (131, 0), (3001, 1), (40000, 0), (40000, 1)]
    try:
        for dtype in dtypes:
            for config, cap in configs:
                set_option("ce_config", config)
                set_option("ce_smem_vecs", cap)
                for C, offset in shapes:
                    if cap >= 0 and C != 40000 and not race:
                        continue  # a cap matters only where the row is cached
                    big = torch.randn(3, C + 1, device=dev, dtype=dtype)
                    x = big[:, offset:offset + C].requires_grad_()  # offset 1: rows not 16-byte aligned
                    t = torch.randint(0, C, (3,), device=dev)
                    t[1] = -100
                    w = torch.rand(C, device=dev, dtype=dtype)
                    loss = CE(x, t, weight=w, label_smoothing=0.1, reduction="none")
                    loss.backward(torch.rand_like(loss))
                    n += 1
                    if C in (131, 40000):
                        q = torch.rand(3, C, device=dev, dtype=dtype, requires_grad=True)
                        CE(x.detach().requires_grad_(), q).backward()
                        n += 1
    finally:
        set_option("ce_config", -1)
        set_option("ce_smem_vecs", -1)
    if race:
        return n
    for dtype in dtypes:
        x = torch.randn(2, 7, 3, 5, device=dev, dtype=dtype, requires_grad=True)
        t = torch.randint(0, 7, (2, 3, 5), device=dev)
        CE(x, t, label_smoothing=0.2).backward()
        CE(x, x.detach().softmax(1)).backward()
        q = x.detach().softmax(1).requires_grad_()  # the probability target's own gradient
        CE(x, q).backward()
        Fl.nll_loss(x, t, reduction="sum").backward()
        Fl.nll_loss(x[:, :, 0, 0], t[:, 0, 0]).backward()
        xu = torch.randn(5, 300, device=dev, dtype=dtype, requires_grad=True)
        CE(xu, torch.randint(0, 255, (5,), device=dev, dtype=torch.uint8)).backward()  # uint8 targets
        n += 6
    x = torch.randn(4, 1000, device=dev, requires_grad=True)
    t = torch.randint(0, 1000, (4,), device=dev)
    loss = CE(x, t)
    loss.backward(retain_graph=True)  # out-of-place scale
    loss.backward()  # in place, factor 1: skipped on the device
    for dtype in dtypes:  # scale_grad(_) directly: one factor, one per (outer, inner) row, misaligned
        g = torch.empty(3 * 37 * 5 + 1, device=dev, dtype=dtype)[1:].view(3, 37, 5).normal_()
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        ops.scale_grad(g, torch.rand(15, device=dev, dtype=acc), 37, 5)
        ops.scale_grad_(g, torch.rand(15, device=dev, dtype=acc), 37, 5)
        ops.scale_grad_(g, torch.full((), 1.5, device=dev, dtype=acc), 37, 5)
        n += 3
    return n + 2


def pointwise_cases(dev, dtypes, race):
    """Every pointwise kind and both row losses: aligned and misaligned (offset 1) data, odd sizes
    (vector tails, trailing empty blocks), reductions, fused-forward and backward-op gradients."""
    n = 0
    sizes = [(4099, 0)] if race else [(1, 0), (37, 0), (37, 1), (4099, 0), (4099, 1)]
    reds = ["mean"] if race else ["none", "mean", "sum"]
    for dtype in dtypes:
        for size, offset in sizes:
            base = torch.randn(3, size + 1, device=dev, dtype=dtype)
            x = base[0, offset:offset + size].detach().requires_grad_()
            y = base[1, offset:offset + size].detach().requires_grad_()
            w = base[2, offset:offset + size].abs().detach().requires_grad_()
            s = torch.sign(base[2, :size]).detach()
            for red in reds:
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
    if race:
        return n
    # binary_cross_entropy's domain check on the device: reported, and skipped without reading past n
    bad = torch.full((4099,), 0.5, device=dev)
    bad[4000] = 1.5
    expect_error(dev, lambda: Fl.binary_cross_entropy(bad, torch.full_like(bad, 0.5)),
                 "binary_cross_entropy of an input 1.5")
    n += 1 + unchecked(dev, lambda: Fl.binary_cross_entropy(bad, torch.full_like(bad, 0.5)))
    return n


def embedding_cases(dev, dtypes, race):
    n = 0
    shapes = [(9, 512)] if race else [(1, 1), (5, 33), (9, 512), (3, 2050)]
    for dtype in dtypes:
        for rows, D in shapes:
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
    return n


def broadcast_cases(dev, dtypes, race):
    """Pointwise third/fourth tensors that broadcast, read through their small source (PwBcast, never
    materialized): weight and pos_weight (C,), var (N, 1); odd C (vector tails), a misaligned source."""
    n = 0
    for dtype in dtypes:
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


def ctc_cases(dev, dtypes, race):
    """ctc_loss: padded and concatenated targets, repeats, target length 0, input length 0, impossible
    samples, K = 1, 2, 4, 8 states per thread (2S+1 > 1024, 2048, 4096), > 48 KB of shared memory."""
    ctc = fastloss.functional.ctc_loss
    n = 0
    # S 600, 1500, 3500: K = 2, 4, 8; 3500 needs > 48 KB of (opt-in) shared memory; 3060 (float32) and
    # 1525 (float64) fill the default 48 KB with the dynamic rows alone (the static part on top)
    shapes = [(1, 1, 2, 1), (7, 3, 5, 3), (40, 4, 33, 12), (20, 2, 7, 600), (30, 2, 5, 1500), (20, 2, 5, 3500)]
    if race:
        shapes = [(40, 4, 33, 12), (20, 2, 7, 600), (20, 2, 5, 3500)]
    for dtype in dtypes:
        edge = [(12, 2, 5, 1525 if dtype == torch.float64 else 3060)]
        for T, N, C, S in shapes + edge:
            lp = torch.randn(T, N, C, device=dev, dtype=torch.float32).log_softmax(-1).to(dtype).requires_grad_()
            tg = torch.randint(1, C, (N, S), device=dev)
            tg[0, 1:] = tg[0, :-1].clone()  # repeats
            il = torch.randint(0, T + 1, (N,))
            tl = torch.randint(0, S + 1, (N,))
            il[0], tl[-1] = T, 0
            for red in (["mean"] if race else ["none", "mean", "sum"]):
                for zi in ([True] if race else [False, True]):
                    loss = ctc(lp, tg, il, tl, reduction=red, zero_infinity=zi)
                    loss.backward(torch.rand_like(loss))
                    flat = torch.cat([tg[i, :tl[i]] for i in range(N)])
                    ctc(lp, flat, il.to(dev), tl.to(dev), reduction=red, zero_infinity=zi).sum().backward()
                    n += 2
    return n


def margin_rows_cases(dev, dtypes, race):
    """multi_margin (warp and block rows, aligned and misaligned, p 1/2, weights) and multilabel_margin
    (warp rows, block rows in default and opt-in shared memory, global-scratch rows; lists with -1
    anywhere, duplicates, none), every reduction (fused forward gradient and backward ops)."""
    n = 0
    reds = ["mean"] if race else ["none", "mean", "sum"]
    for dtype in dtypes:
        for rows, C in ([(9, 33), (3, 2051)] if race else [(1, 1), (9, 33), (5, 2048), (3, 2051), (2, 4096)]):
            for offset in [0, 1]:
                base = torch.randn(rows, C + 1, device=dev, dtype=dtype)
                x = base[:, offset:offset + C].detach().requires_grad_()
                t = torch.randint(0, C, (rows,), device=dev)
                w = torch.rand(C, device=dev, dtype=dtype)
                for red in reds:
                    for p, weight in [(1, None), (2, w)]:
                        loss = Fl.multi_margin_loss(x, t, p=p, margin=0.5, weight=weight, reduction=red)
                        loss.backward(torch.rand_like(loss))
                        n += 1
        # tiers, for 4-byte accumulators (float64: 8 + 8 bytes a class, lower limits): a warp per row up to
        # C = 500, a block with the row in the default 48 KB up to ~4000, opt-in shared memory up to
        # ~19000 on an H100, global scratch beyond. A list without -1 costs O(C^2) (one sweep per listed
        # class): only short rows get one; long rows list a few classes and end early.
        for rows, C in [(1, 1), (9, 33), (10, 400), (3, 600), (2, 5000), (2, 20000)]:
            x = torch.randn(rows, C, device=dev, dtype=dtype, requires_grad=True)
            t = torch.randint(0, C, (rows, C), device=dev)
            if C > 600:
                t[:, 8:] = -1
                t[1, 3] = -1
                t[1, 4:8] = t[1, 0]  # junk after the end of the list
            else:
                t[0, min(3, C - 1)] = -1
                if rows > 2:
                    t[1, 0] = -1
                    t[2, :min(4, C)] = t[2, 0]  # duplicates; row 3 on: no -1
            for red in reds:
                loss = Fl.multilabel_margin_loss(x, t, reduction=red)
                loss.backward(torch.rand_like(loss))
                n += 1
    return n


def validation_cases(dev, dtypes, race):
    """Out-of-range targets: refused with validation on; with it off, NaN rows and nothing read or
    written out of bounds."""
    n = 0
    x = torch.randn(4, 1000, device=dev, requires_grad=True)
    expect_error(dev, lambda: CE(x, torch.tensor([0, 1, 1000, 2], device=dev)), "an out-of-range target")
    bad = torch.tensor([0, -7, 1000, 2], device=dev)
    n += 1 + unchecked(dev, lambda: CE(x, bad, reduction="none").sum().backward())
    lp = torch.randn(5, 2, 4, device=dev).log_softmax(-1).requires_grad_()
    bad = torch.tensor([[1, 9], [0, 2]], device=dev)
    expect_error(dev, lambda: fastloss.functional.ctc_loss(lp, bad, [5, 5], [2, 2]), "an out-of-range CTC target")
    n += 1 + unchecked(dev, lambda: fastloss.functional.ctc_loss(lp, bad, [5, 5], [2, 2]).backward())
    x = torch.randn(4, 50, device=dev, requires_grad=True)
    bad_mm = torch.tensor([0, 50, 2, -1], device=dev)
    bad_ml = torch.randint(0, 50, (4, 50), device=dev)
    bad_ml[1, 7] = 50
    bad_ml[2, 0], bad_ml[2, 9] = -1, -3  # after the list's end: still refused
    for f, t in [(Fl.multi_margin_loss, bad_mm), (Fl.multilabel_margin_loss, bad_ml)]:
        expect_error(dev, lambda: f(x, t), f"an out-of-range {f.__name__} target")

        def both():
            f(x, t, reduction="none").sum().backward()
            f(x, t).backward()
        n += 1 + unchecked(dev, both)
    return n


GROUPS = {"pointwise": pointwise_cases, "broadcast": broadcast_cases, "embedding": embedding_cases,
          "margin_rows": margin_rows_cases, "ctc": ctc_cases, "cross_entropy": cross_entropy_cases,
          "validation": validation_cases}
RACE_GROUPS = ["cross_entropy", "ctc", "margin_rows", "pointwise", "embedding"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--racecheck", action="store_true",
                    help="the shared-memory kernels only, fewer sizes; float32 and float64")
    ap.add_argument("--groups", help=f"comma-separated subset of {','.join(GROUPS)}")
    args = ap.parse_args(argv)
    dev = args.device
    if dev == "cuda" and not (torch.cuda.is_available() and fastloss.cuda_built()):
        sys.exit("sanitize_cases: --device cuda needs a GPU and a CUDA build of fastloss")
    groups = args.groups.split(",") if args.groups else (RACE_GROUPS if args.racecheck else list(GROUPS))
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        ap.error(f"unknown groups {unknown}; known: {list(GROUPS)}")
    dtypes = [torch.float32, torch.float64] if args.racecheck else ALL_DTYPES
    torch.manual_seed(0)
    n, failed = 0, []
    for g in groups:
        print(f"sanitize: {g} ...", file=sys.stderr, flush=True)  # a time-out still shows how far it got
        try:
            n += GROUPS[g](dev, dtypes, args.racecheck)
            sync(dev)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - reported; the next group still runs
            failed.append(g)
            print(f"sanitize: {g} FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            traceback.print_exc()
            if dev == "cuda":
                try:
                    torch.cuda.synchronize()
                except Exception:  # noqa: BLE001 - the context is gone: nothing more can run
                    print("sanitize: CUDA context lost; stopping", file=sys.stderr)
                    break
    print(f"sanitize cases done: {n} calls" + (f", FAILED groups: {','.join(failed)}" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
