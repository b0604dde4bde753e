"""margin_rows losses side by side: fastloss, torch eager and torch.compile.

    python benchmarks/bench_margin_rows.py [--device cuda] [--quick] [--no-compile]
        [--loss multi_margin,multilabel_margin] [--dtype fp32,bf16] [--reduction mean,none]
        [--repeats N] [--out FILE]

multi_margin_loss (p=1 margin 1; also p=2 with class weights) on (N, C) scores, target (N,) uniform
class indices; multilabel_margin_loss on (N, C) scores with K distinct listed classes per row, then -1.
The scores require grad. For each case: forward+backward and forward-only (no_grad) medians, the ratio
to torch eager, and on CUDA the bandwidth counting the minimal bytes and its fraction of the device's
measured copy bandwidth, and the peak extra memory of forward+backward.

Minimal bytes (MarginRowsCase.min_bytes; elem = bytes per element):
  multi_margin:       fwd+bwd N C elem read + N C elem gradient written + N int64 targets; fwd N C elem + 8 N
  multilabel_margin:  fwd+bwd 2 N C elem + 8 N C (the int64 target rows: torch checks every entry); fwd N C elem + 8 N C
  reduction='none' adds the per-row loss written and, with backward, its upstream gradient read.
multilabel is also O(K C) compute per row (as torch's kernels). torch's CPU kernels take float32/float64
only, so the CPU cases are float32. Timing lives here, never in a test. The markdown printed is what
benchmarks/RESULTS.md pastes.
"""
from fastloss.bench import DTYPES, MarginRowsCase, side_by_side_main

MM, ML = "multi_margin_loss", "multilabel_margin_loss"


def case_specs(device, quick):
    """(loss, (N, C), dtype name, reduction, options) for every case, in print order."""
    if device.type == "cuda":
        return [
            (MM, (65536, 1000), "fp32", "mean", {}), (MM, (65536, 1000), "fp32", "none", {}),
            (MM, (65536, 1000), "bf16", "mean", {}), (MM, (65536, 1000), "fp32", "mean", {"p": 2, "weight": True}),
            (MM, (8192, 32000), "fp32", "mean", {}), (MM, (8192, 32000), "bf16", "mean", {}),
            (ML, (65536, 256), "fp32", "mean", {}), (ML, (65536, 256), "fp32", "none", {}),
            (ML, (65536, 256), "bf16", "mean", {}), (ML, (8192, 4096), "fp32", "mean", {"targets": 32}),
            (ML, (1024, 30000), "fp32", "mean", {"targets": 8}),
        ]
    mm, ml = ((1024, 1000), (1024, 256)) if quick else ((4096, 1000), (4096, 256))
    return [
        (MM, mm, "fp32", "mean", {}), (MM, mm, "fp32", "none", {}), (MM, mm, "fp32", "mean", {"p": 2, "weight": True}),
        (MM, mm, "fp64", "mean", {}),
        (ML, ml, "fp32", "mean", {}), (ML, ml, "fp32", "none", {}), (ML, ml, "fp32", "mean", {"targets": 32}),
        (ML, ml, "fp64", "mean", {}),
    ]


NOTES = [
    "forward+backward and forward-only (no_grad) medians; the scores (standard normal) require grad;",
    "multi_margin p=1 margin 1 unless named (p2 w: p=2 with class weights in [0.5, 1.5));",
    "multilabel: K distinct listed classes per row, then -1 to the end of the row.",
    "Minimal bytes: scores read once, their gradient written once, targets read once (fwd: reads only);",
    "reduction='none' adds the per-row loss written and, in backward, its upstream gradient read.",
]


def build(spec, device):
    loss, (rows, classes), dtype, reduction, opts = spec
    return MarginRowsCase(loss, rows, classes, DTYPES[dtype], device, reduction=reduction, **opts)


def main(argv=None):
    side_by_side_main(argv, __doc__, case_specs, build, "margin_rows losses (multi_margin, multilabel_margin)", NOTES,
                      "multi_margin,multilabel_margin")


if __name__ == "__main__":
    main()
