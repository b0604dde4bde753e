"""Probabilistic / multi-label losses side by side: fastloss, torch eager and torch.compile.

    python benchmarks/bench_probabilistic.py [--device cuda] [--quick] [--no-compile]
        [--loss binary_cross_entropy,...] [--dtype fp32,bf16,fp16,fp64] [--reduction mean,none]
        [--repeats N] [--out FILE]

binary_cross_entropy (probabilities), binary_cross_entropy_with_logits (per-class pos_weight),
poisson_nll_loss (log_input), gaussian_nll_loss (full-shape var requiring grad),
multilabel_soft_margin_loss and sigmoid_focal_loss (torch side: torchvision's formula written in torch
ops, as torchvision does) on (rows, 1024) inputs; the input requires grad, the target does not.
For each case: forward+backward and forward-only medians, the ratio to torch eager, and on CUDA the
bandwidth counting the minimal bytes and its fraction of the measured copy bandwidth.

Minimal bytes (N elements of `elem` bytes; BinaryCase.min_bytes):
  forward+backward, mean/sum: input + target read, input gradient written = 3 N elem
  (gaussian: + var read and its gradient written = 5 N elem); forward only: 2 N elem (gaussian 3).
  reduction='none' adds the loss written and, with backward, the upstream gradient read (per row
  for multilabel_soft_margin: not counted).
Timing lives here, never in a test. The markdown printed is what benchmarks/RESULTS.md pastes.
"""
from fastloss.bench import DTYPES, BinaryCase, side_by_side_main

LOSSES = BinaryCase.losses
C = 1024


def case_specs(device, quick):
    """(loss, shape, dtype name, reduction) for every case, in print order."""
    specs = []
    for loss in LOSSES:
        if device.type == "cuda":
            # 16M elements (the size) and 64M (HBM-bound)
            specs += [(loss, (n // C, C), dt, "mean") for dt in ("fp32", "bf16") for n in (16 * 2**20, 64 * 2**20)]
            specs += [(loss, (16 * 2**20 // C, C), "fp32", "none")]
        elif quick:
            specs += [(loss, (1024, C), "fp32", "mean"), (loss, (1024, C), "fp32", "none")]
        else:
            specs += [(loss, (rows, C), "fp32", "mean") for rows in (1024, 4096)]
            specs += [(loss, (4096, C), "fp32", "none"), (loss, (4096, C), "bf16", "mean")]
    return specs


NOTES = [
    "forward+backward and forward-only (no_grad) medians; input requires grad, target does not",
    "(gaussian: var requires grad); binary_cross_entropy_with_logits with a per-class pos_weight.",
    "sigmoid_focal_loss's torch column is torchvision's formula in torch ops (alpha 0.25, gamma 2).",
    "Minimal bytes: fwd+bwd 3 N elem (gaussian 5), fwd 2 N elem (gaussian 3); 'none' adds the loss",
    "written and its upstream gradient read.",
]


def build(spec, device):
    loss, shape, dtype, reduction = spec[:4]
    return BinaryCase(loss, shape, DTYPES[dtype], device, reduction=reduction)


def main(argv=None):
    side_by_side_main(argv, __doc__, case_specs, build, "probabilistic / multi-label losses", NOTES,
                      "binary_cross_entropy_with_logits,sigmoid_focal_loss")


if __name__ == "__main__":
    main()
