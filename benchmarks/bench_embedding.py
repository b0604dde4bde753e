"""Embedding losses side by side: fastloss, torch eager and torch.compile.

    python benchmarks/bench_embedding.py [--device cuda] [--quick] [--no-compile]
        [--loss triplet_margin,cosine_embedding,...] [--dtype fp32,bf16] [--reduction mean,none]
        [--repeats N] [--out FILE]

triplet_margin_loss (p=2, also swap=True), triplet_margin_with_distance_loss (default distance),
cosine_embedding_loss (margin 0) on (N, D) rows; margin_ranking_loss (margin 0) and
hinge_embedding_loss (margin 1) on N elements. Every input requires grad except the +-1 targets
(which have the inputs' dtype). For each case: forward+backward and forward-only (no_grad)
medians, the ratio to torch eager, and on CUDA the bandwidth counting the minimal bytes and its
fraction of the device's measured copy bandwidth, and the peak extra memory of forward+backward.

Minimal bytes (EmbeddingCase.min_bytes, SignTargetCase.min_bytes for margin_ranking and hinge: pointwise
losses in csrc; elem = bytes per element):
  triplet (anchor, positive, negative: N x D):  fwd+bwd 3 reads + 3 gradient writes = 6 N D elem; fwd 3 N D elem
  cosine (input1, input2: N x D, target: N):    fwd+bwd 4 N D elem + N elem;          fwd 2 N D elem + N elem
  margin_ranking (input1, input2, target: N):   fwd+bwd 3 reads + 2 writes = 5 N elem; fwd 3 N elem
  hinge (input, target: N):                      fwd+bwd 2 reads + 1 write  = 3 N elem; fwd 2 N elem
  reduction='none' adds the per-sample loss written and, with backward, its upstream gradient read.
Liger-Kernel has no counterpart of these losses, so no peer column. Timing lives here, never in a test.
The markdown printed is what benchmarks/RESULTS.md pastes.
"""
from fastloss.bench import DTYPES, LOSS_FAMILY, side_by_side_main

M = 2**20
TRIPLET, TRIPLET_D = "triplet_margin_loss", "triplet_margin_with_distance_loss"
COSINE, RANKING, HINGE = "cosine_embedding_loss", "margin_ranking_loss", "hinge_embedding_loss"


def case_specs(device, quick):
    """(loss, shape, dtype name, reduction, swap) for every case, in print order."""
    if device.type == "cuda":
        rows = (65536, 512)  # 128 MB per fp32 input
        return [
            (TRIPLET, rows, "fp32", "mean", False), (TRIPLET, rows, "fp32", "mean", True),
            (TRIPLET, rows, "fp32", "none", False), (TRIPLET, rows, "bf16", "mean", False),
            (TRIPLET, rows, "bf16", "mean", True), (TRIPLET, (16384, 4096), "fp32", "mean", False),
            (TRIPLET, (1048576, 64), "fp32", "mean", False), (TRIPLET, (16384, 4096), "bf16", "mean", False),
            (TRIPLET_D, rows, "fp32", "mean", False), (TRIPLET_D, rows, "bf16", "mean", False),
            (COSINE, rows, "fp32", "mean", False), (COSINE, rows, "fp32", "none", False),
            (COSINE, rows, "bf16", "mean", False), (COSINE, (16384, 4096), "fp32", "mean", False),
            (COSINE, (1048576, 64), "fp32", "mean", False),
            (RANKING, (16 * M,), "fp32", "mean", False), (RANKING, (16 * M,), "fp32", "none", False),
            (RANKING, (16 * M,), "bf16", "mean", False), (RANKING, (64 * M,), "fp32", "mean", False),
            (HINGE, (16 * M,), "fp32", "mean", False), (HINGE, (16 * M,), "fp32", "none", False),
            (HINGE, (16 * M,), "bf16", "mean", False), (HINGE, (64 * M,), "fp32", "mean", False),
        ]
    rows, n = ((1024, 256), (256 * 1024,)) if quick else ((4096, 512), (M,))
    return [
        (TRIPLET, rows, "fp32", "mean", False), (TRIPLET, rows, "fp32", "mean", True),
        (TRIPLET, rows, "fp32", "none", False), (TRIPLET, rows, "bf16", "mean", False),
        (TRIPLET_D, rows, "fp32", "mean", False),
        (COSINE, rows, "fp32", "mean", False), (COSINE, rows, "fp32", "none", False),
        (COSINE, rows, "bf16", "mean", False),
        (RANKING, n, "fp32", "mean", False), (RANKING, n, "fp32", "none", False), (RANKING, n, "bf16", "mean", False),
        (HINGE, n, "fp32", "mean", False), (HINGE, n, "fp32", "none", False), (HINGE, n, "bf16", "mean", False),
    ]


NOTES = [
    "forward+backward and forward-only (no_grad) medians; every input requires grad except the +-1 targets;",
    "triplet p=2 margin 1 (swap where named), triplet_with_distance default distance, cosine margin 0,",
    "margin_ranking margin 0, hinge margin 1 on inputs in [0, 2). Inputs standard normal.",
    "Minimal bytes: each input read once, each input gradient written once (fwd: reads only);",
    "reduction='none' adds the per-sample loss written and, in backward, its upstream gradient read.",
]


def build(spec, device):
    loss, shape, dtype, reduction = spec[:4]
    return LOSS_FAMILY[loss].from_dims(loss, shape, DTYPES[dtype], device, reduction=reduction, swap=spec[4])


def main(argv=None):
    side_by_side_main(argv, __doc__, case_specs, build,
                      "embedding losses (triplet_margin, cosine_embedding, margin_ranking, hinge_embedding)", NOTES,
                      "triplet_margin,hinge_embedding")


if __name__ == "__main__":
    main()
