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
from fastloss.bench import DTYPES, RegressionCase, side_by_side_main

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


NOTES = [
    "forward+backward and forward-only (no_grad) medians; input requires grad, target does not;",
    "smooth_l1 beta=1, huber delta=1; inputs and targets standard normal (both branches taken).",
    "Minimal bytes: fwd+bwd 3 N elem (input, target read; gradient written), fwd 2 N elem;",
    "reduction='none' adds the loss written and, in backward, its upstream gradient read (5 and 3 N elem).",
]


def build(spec, device):
    loss, shape, dtype, reduction = spec[:4]
    return RegressionCase(loss, shape, DTYPES[dtype], device, reduction=reduction)


def main(argv=None):
    side_by_side_main(argv, __doc__, case_specs, build, "regression losses (l1, mse, smooth_l1, huber)", NOTES,
                      "mse,smooth_l1")


if __name__ == "__main__":
    main()
