"""Regression losses side by side: fastloss, torch eager and torch.compile.

    python benchmarks/bench_regression.py [--device cuda] [--quick] [--no-compile]
        [--loss l1,mse,smooth_l1,huber] [--dtype fp32,bf16,fp16,fp64] [--reduction mean,none]
        [--repeats N] [--out FILE]

l1_loss, mse_loss, smooth_l1_loss (beta=1) and huber_loss (delta=1) on a 1-D input that requires
grad and a target that does not. For each case: forward+backward and forward-only (no_grad) medians,
the ratio to torch eager, and on CUDA the bandwidth counting the minimal bytes and its fraction of
the device's measured copy bandwidth, and the peak extra memory of forward+backward.

Minimal bytes (N elements of `elem` bytes; RegressionCase.min_bytes):
  forward+backward, mean/sum:  input read + target read + input gradient written     = 3 N elem
  forward only,     mean/sum:  input read + target read                               = 2 N elem
  reduction='none' adds the loss written (N elem) and, with backward, the upstream gradient read
  (N elem): 5 N elem and 3 N elem.
Liger-Kernel has no counterpart of these losses, so no peer column. Timing lives here, never in a test.
The markdown printed is what benchmarks/RESULTS.md pastes.
"""
import argparse
import sys

import torch

from fastloss.bench import (DTYPES, RegressionCase, copy_bandwidth, loss_name, measure_impls,
                            side_by_side_markdown, torch_compiled)

LOSSES = RegressionCase.losses
M = 2**20


def case_specs(device, quick):
    """(loss, numel, dtype name, reduction) for every case, in print order."""
    specs = []
    for loss in LOSSES:
        if device.type == "cuda":
            # sizes: launch-bound (1M), L2-sized-ish (16M fp32 = 64 MB), HBM-bound (64M, 256M)
            specs += [(loss, n, dt, "mean") for dt in ("fp32", "bf16") for n in (1 * M, 16 * M, 64 * M, 256 * M)]
            specs += [(loss, 64 * M, dt, "mean") for dt in ("fp16", "fp64")]
            specs += [(loss, 64 * M, dt, "none") for dt in ("fp32", "bf16")]
        elif quick:
            specs += [(loss, 1 * M, "fp32", "mean"), (loss, 1 * M, "fp32", "none")]
            specs += [(loss, 1 * M, dt, "mean") for dt in ("bf16", "fp16", "fp64")]
        else:
            specs += [(loss, n, "fp32", "mean") for n in (1 * M, 4 * M)]
            specs += [(loss, 4 * M, "fp32", "none")]
            specs += [(loss, 4 * M, dt, "mean") for dt in ("bf16", "fp16", "fp64")]
    return specs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and few repeats (CPU smoke test); torch.compile on each loss's first case only")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compile time is long)")
    ap.add_argument("--loss", help="comma-separated subset, e.g. mse,smooth_l1")
    ap.add_argument("--dtype", help="comma-separated subset of fp32,bf16,fp16,fp64")
    ap.add_argument("--reduction", help="comma-separated subset of mean,none")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    try:
        losses = [loss_name(s) for s in args.loss.split(",")] if args.loss else LOSSES
    except ValueError as e:
        ap.error(str(e))
    dtypes = args.dtype.split(",") if args.dtype else list(DTYPES)
    reductions = args.reduction.split(",") if args.reduction else ["mean", "none"]
    specs = [s for s in case_specs(dev, args.quick) if s[0] in losses and s[2] in dtypes and s[3] in reductions]
    if not specs:
        ap.error("no case left after the filters")
    if dev.type == "cuda":
        repeats, min_seconds = args.repeats or (10 if args.quick else 30), 0.0
    else:  # CPU times vary run to run: interleave, and give cheap cases more rounds
        repeats, min_seconds = args.repeats or (3 if args.quick else 7), (0.2 if args.quick else 0.5)

    bw = copy_bandwidth(dev) if dev.type == "cuda" else None
    results, compiled_losses = [], set()
    for i, (loss, n, dt, red) in enumerate(specs):
        case = RegressionCase(loss, n, DTYPES[dt], dev, reduction=red)
        if case.function("fastloss") is None:
            print(f"skipping {case.name()}: fastloss.functional has no {loss}", file=sys.stderr)
            continue
        impls = {"fastloss": case.bound(case.function("fastloss")), "torch": case.bound(case.function("torch"))}
        if not args.no_compile and (not args.quick or loss not in compiled_losses):
            impls["torch.compile"] = torch_compiled(case)
            compiled_losses.add(loss)
        print(f"\r[{i + 1}/{len(specs)}] {case.name()} ...".ljust(80), end="", file=sys.stderr, flush=True)
        results.append((case, measure_impls(case, impls, repeats, min_seconds)))
    print("\r".ljust(82) + "\r", end="", file=sys.stderr)

    notes = [
        "forward+backward and forward-only (no_grad) medians; input requires grad, target does not;",
        "smooth_l1 beta=1, huber delta=1; inputs and targets standard normal (both branches taken).",
        "Minimal bytes: fwd+bwd 3 N elem (input, target read; gradient written), fwd 2 N elem;",
        "reduction='none' adds the loss written and, in backward, its upstream gradient read (5 and 3 N elem).",
    ]
    if args.quick and not args.no_compile:
        notes.append("--quick: torch.compile measured on each loss's first case only.")
    text = side_by_side_markdown("regression losses (l1, mse, smooth_l1, huber)", dev, bw, results, notes)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
