"""CTC loss side by side: fastloss, torch eager and torch.compile.

    python benchmarks/bench_ctc.py [--device cuda] [--quick] [--no-compile]
        [--dtype fp32,bf16,fp64] [--reduction mean,none] [--repeats N] [--out FILE]

ctc_loss (blank 0) on log_probs (T, N, C), the log_softmax of standard-normal logits made a leaf that
requires grad: the timed step is ctc_loss forward + backward into log_probs (the log_softmax is not
timed). Targets: labels uniform in [1, C), padded (N, S) int64 on log_probs' device; target_lengths
uniform in [floor(0.8 S), S]; input_lengths all T ('il0.8': uniform in [floor(0.8 T), T]); lengths int64
on the CPU. Fixed seeds (fastloss.bench.CtcCase): every implementation gets the same tensors.
  'cudnn' (CUDA): the inputs torch sends to cuDNN (fp32, blank 0, targets 1-D concatenated int32 on the
      CPU, int32 lengths on the CPU, every input length T, target lengths < 256); fastloss gets the same
      tensors. The script warns on stderr if torch's autograd graph does not show the cuDNN kernel.
  'concat-i32' (CPU): the same 1-D int32 format on the CPU (torch's native kernel).
  'vs torch fp32': torch has no bf16/fp16 CTC; fastloss runs the dtype named, torch and torch.compile
      an fp32 copy of the same log_probs.
For each case: forward+backward and forward-only (no_grad) medians, the ratio to torch eager, and on
CUDA the bandwidth counting the minimal bytes, its fraction of the device's measured copy bandwidth,
and the peak extra memory of forward+backward.

Minimal bytes (CtcCase.min_bytes; elem = bytes per element of log_probs):
  forward+backward:  log_probs read + gradient written = 2 T N C elem, + targets (N S int64 padded,
                     sum(target_lengths) int32 concatenated)
  forward only:      T N C elem + targets
  reduction='none' adds the per-sample loss written and, with backward, its upstream gradient read.
CTC is latency/compute bound (a T-step recursion over 2 S + 1 states per sample), not bandwidth
bound: the GB/s column is there for comparison with the other families, not as a roofline.
torch.compile: fullgraph=True fails for ctc_loss (aten._ctc_loss has a data-dependent output
shape); it is compiled without fullgraph, dynamo breaks the graph at the op and runs torch's eager
kernel, so that column is torch eager plus dynamo's guard overhead.
Timing lives here, never in a test. The markdown printed is what benchmarks/RESULTS.md pastes.
"""
from fastloss.bench import DTYPES, CtcCase, side_by_side_main

CTC = "ctc_loss"


def case_specs(device, quick):
    """(loss, (T, N, C, S), dtype name, reduction, options) for every case, in print order."""
    plain, il, cudnn = {}, {"random_input_lengths": True}, {"cudnn": True}
    if device.type == "cuda":
        return [
            # the CUDA targets (fastloss >= 3x torch), then variants
            (CTC, (1000, 64, 64, 200), "fp32", "mean", plain),
            (CTC, (500, 32, 5000, 100), "fp32", "mean", plain),
            (CTC, (1000, 64, 64, 200), "fp32", "mean", cudnn),  # torch: cuDNN
            (CTC, (500, 32, 5000, 100), "fp32", "mean", cudnn),  # torch: cuDNN, large C
            (CTC, (500, 32, 5000, 100), "bf16", "mean", plain),  # vs torch fp32
            (CTC, (1000, 64, 64, 200), "bf16", "mean", plain),  # vs torch fp32
            (CTC, (1000, 64, 64, 200), "fp32", "none", plain),
            (CTC, (1000, 64, 64, 200), "fp32", "mean", il),
            (CTC, (1000, 64, 64, 200), "fp64", "mean", plain),
            (CTC, (200, 16, 32, 50), "fp32", "mean", plain),  # small: launch/latency bound
            (CTC, (800, 256, 128, 150), "fp32", "mean", plain),  # large batch
        ]
    if quick:
        return [
            (CTC, (100, 8, 32, 25), "fp32", "mean", plain),
            (CTC, (100, 8, 32, 25), "fp32", "none", plain),
            (CTC, (100, 8, 32, 25), "fp32", "mean", il),
            (CTC, (100, 8, 32, 25), "fp32", "mean", cudnn),
            (CTC, (100, 8, 32, 25), "fp64", "mean", plain),
            (CTC, (100, 8, 32, 25), "bf16", "mean", plain),
            (CTC, (200, 16, 32, 50), "fp32", "mean", plain),
        ]
    return [
        (CTC, (200, 16, 32, 50), "fp32", "mean", plain),  # the CPU target (fastloss >= 1.5x torch)
        (CTC, (100, 8, 32, 25), "fp32", "mean", plain),
        (CTC, (500, 32, 64, 100), "fp32", "mean", plain),
        (CTC, (200, 16, 1000, 50), "fp32", "mean", plain),  # large C: the dense gradient dominates
        (CTC, (200, 16, 32, 50), "fp32", "none", plain),
        (CTC, (200, 16, 32, 50), "fp32", "mean", il),
        (CTC, (200, 16, 32, 50), "fp32", "mean", cudnn),
        (CTC, (200, 16, 32, 50), "fp64", "mean", plain),
        (CTC, (200, 16, 32, 50), "bf16", "mean", plain),  # vs torch fp32
    ]


NOTES = [
    "forward+backward and forward-only (no_grad) medians; log_probs (T, N, C) = log_softmax of standard normal",
    "logits, a leaf requiring grad (log_softmax not timed); blank 0; labels uniform in [1, C), padded (N, S)",
    "int64 on the device; target lengths uniform in [0.8 S, S]; input lengths T ('il0.8': uniform in",
    "[0.8 T, T]); lengths int64 on the CPU. 'cudnn': 1-D concatenated int32 targets and int32 lengths on",
    "the CPU, the inputs torch sends to cuDNN (both implementations get them); 'concat-i32': that format on",
    "the CPU. 'vs torch fp32': torch has no bf16 CTC, so torch runs an fp32 copy of log_probs.",
    "Minimal bytes: fwd+bwd 2 T N C elem + targets (log_probs read, gradient written), fwd T N C elem +",
    "targets; CTC is latency/compute bound, the GB/s figure is for comparison only.",
    "torch.compile: fullgraph fails (aten._ctc_loss has a data-dependent output shape); compiled with a",
    "graph break, it runs torch's eager kernel.",
]


def build(spec, device):
    loss, (T, N, C, S), dtype, reduction, options = spec
    return CtcCase(loss, T, N, C, S, DTYPES[dtype], device, reduction=reduction, **options)


def main(argv=None):
    side_by_side_main(argv, __doc__, case_specs, build, "CTC loss (ctc_loss)", NOTES, "ctc_loss")


if __name__ == "__main__":
    main()
