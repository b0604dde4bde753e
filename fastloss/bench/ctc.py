"""Benchmark cases of the ctc family (csrc/*/ctc.*): ctc_loss."""
import sys

import torch

from ._case import LossCase


class CtcCase(LossCase):
    """ctc_loss, blank 0, on log_probs (T, N, C): the log_softmax over C of standard-normal logits,
    made a leaf that requires grad (the log_softmax is not part of the timed step).
    targets: labels uniform in [1, C) (never the blank), padded (N, S) int64 on log_probs' device;
    target_lengths uniform in [floor(0.8 S), S]; input_lengths all T, or with random_input_lengths
    uniform in [floor(0.8 T), T]; both lengths int64 on the CPU (where torch reads them anyway).
    The integers come from a CPU generator seeded 0 and log_probs from the device's generator seeded 0:
    every implementation and every run gets the same tensors.
    cudnn=True: the inputs torch hands to cuDNN (aten/src/ATen/native/cudnn/LossCTC.cpp,
    _use_cudnn_ctc_loss: log_probs fp32 on CUDA, blank 0, targets 1-D concatenated int32 on the CPU,
    every input length == T, every target length < 256 and <= its input length): targets 1-D int32,
    lengths int32, on the CPU, fed to fastloss and torch alike. On CUDA the first inputs() checks that
    torch's autograd graph holds CudnnCtcLossBackward (a warning on stderr if not); on the CPU the
    case just measures the concatenated int32 format (named 'concat-i32' there).
    A dtype torch's CTC lacks (bf16, fp16): torch (and torch.compile) run on the fp32 log_probs
    that fastloss's are rounded from, fastloss on the dtype itself; the case's name says 'vs torch fp32'."""

    DEFAULT_DIMS = {"cuda": (1000, 64, 64, 200), "cpu": (200, 16, 32, 50)}  # T, N, C, S
    SHAPE = ("TxNxCxS", "200x16x32x50")
    batch_dim = 1  # N
    # aten._ctc_loss's outputs (log_alpha) have a data-dependent shape: torch.compile(fullgraph=True) fails
    # ("Unsupported: Dynamic shape operator"), so it is compiled with a graph break at the op (= eager op).
    compile_fullgraph = False

    def __init__(self, loss, T, N, C, S, dtype, device, reduction="mean", random_input_lengths=False, cudnn=False,
                 zero_infinity=False):
        super().__init__(loss, dtype, device, reduction)
        if C < 2:
            raise ValueError("ctc_loss: C must be >= 2 (blank + one label)")
        if S > (4 * T) // 5:
            raise ValueError(f"ctc_loss: S = {S} too long for T = {T} (S <= 0.8 T leaves frames for repeated labels)")
        if cudnn and random_input_lengths:
            raise ValueError("ctc_loss: cuDNN needs every input length == T (no random_input_lengths)")
        if cudnn and self.device.type == "cuda" and (dtype != torch.float32 or S >= 256):
            raise ValueError("ctc_loss: torch takes cuDNN only for fp32 log_probs and target lengths < 256")
        self.T, self.N, self.C, self.S = T, N, C, S
        self.random_input_lengths, self.cudnn, self.zero_infinity = random_input_lengths, cudnn, zero_infinity
        # torch's CTC kernels are fp32/fp64 only (CPU and CUDA): other dtypes are compared with torch in fp32
        self.torch_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        g = torch.Generator().manual_seed(0)
        self.target_lengths = torch.randint((8 * S) // 10, S + 1, (N,), generator=g)
        self.input_lengths = (torch.randint((8 * T) // 10, T + 1, (N,), generator=g) if random_input_lengths
                              else torch.full((N,), T, dtype=torch.long))
        self.padded_targets = torch.randint(1, C, (N, S), generator=g)
        self._torch_checked = False

    def dims(self):
        return (self.T, self.N, self.C, self.S)

    def shape_label(self):
        return f"T{self.T} N{self.N} C{self.C} S{self.S}"

    def elements(self):
        return self.T * self.N * self.C

    def extras(self):
        fmt = (" cudnn" if self.device.type == "cuda" else " concat-i32") if self.cudnn else ""
        return "".join([" il0.8" if self.random_input_lengths else "", fmt, " zinf" if self.zero_infinity else "",
                        " vs torch fp32" if self.torch_dtype != self.dtype else ""])

    def inputs(self):
        """(log_probs, targets, input_lengths, target_lengths, log_probs for torch or None)."""
        x = torch.randn(self.T, self.N, self.C, device=self.device, dtype=torch.float32, generator=self.generator())
        x = x.log_softmax(-1)
        lp = x.to(self.dtype).requires_grad_()
        ref = x.to(self.torch_dtype).requires_grad_() if self.torch_dtype != self.dtype else None
        del x
        if self.cudnn:
            tg = torch.cat([self.padded_targets[n, :k] for n, k in enumerate(self.target_lengths.tolist())])
            inputs = (lp, tg.int(), self.input_lengths.int(), self.target_lengths.int(), ref)
        else:
            inputs = (lp, self.padded_targets.to(self.device), self.input_lengths, self.target_lengths, ref)
        if self.cudnn and self.device.type == "cuda" and not self._torch_checked:
            self._torch_checked = True
            kernel = self.torch_kernel(inputs)
            if kernel != "cudnn":
                print(f"\nWARNING {self.name()}: torch took its {kernel} CTC kernel, not cuDNN", file=sys.stderr)
        return inputs

    def call(self, fn, log_probs, targets, input_lengths, target_lengths, log_probs_ref=None):
        if log_probs_ref is not None and fn is self.function("torch"):  # torch eager and compiled: the fp32 copy
            log_probs = log_probs_ref
        return fn(log_probs, targets, input_lengths, target_lengths, blank=0, reduction=self.reduction,
                  zero_infinity=self.zero_infinity)

    def torch_kernel(self, inputs):
        """'cudnn' or 'native': which CTC kernel torch's autograd graph holds for these inputs."""
        out = self.call(self.function("torch"), *inputs)
        todo, seen = [out.grad_fn], set()
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            name = type(fn).__name__
            if "CtcLoss" in name:
                return "cudnn" if "Cudnn" in name else "native"
            todo += [f for f, _ in fn.next_functions]
        return "unknown"

    def min_bytes(self, backward=True):
        """log_probs read once [+ its gradient written once] + the targets read (N*S int64 padded;
        sum(target_lengths) int32 concatenated) [+ the per-sample loss written (+ its upstream gradient
        read) for reduction='none']. Lengths (host-side) are not counted. CTC is latency/compute bound
        (a T-step recursion over 2S+1 states), not bandwidth bound: the figure is for comparison only."""
        e = self.elem
        n = self.T * self.N * self.C * e * (2 if backward else 1)
        n += int(self.target_lengths.sum()) * 4 if self.cudnn else self.N * self.S * 8
        if self.reduction == "none":
            n += self.N * e * self.none_out_passes(backward)
        return n




def default_cases(device):
    """The family's typical cases (reduction='mean'), then its reduction='none' variants."""
    fp32, bf16, none = torch.float32, torch.bfloat16, "none"
    if device.type == "cuda":
        return [
            CtcCase("ctc_loss", 1000, 64, 64, 200, fp32, device),
            CtcCase("ctc_loss", 500, 32, 5000, 100, fp32, device),
            CtcCase("ctc_loss", 1000, 64, 64, 200, fp32, device, cudnn=True),  # torch: cuDNN
            CtcCase("ctc_loss", 500, 32, 5000, 100, bf16, device),  # torch: fp32 (no bf16 CTC)
            CtcCase("ctc_loss", 1000, 64, 64, 200, fp32, device, reduction=none),
        ]
    return ([CtcCase("ctc_loss", T, N, C, S, fp32, device)
             for T, N, C, S in ((200, 16, 32, 50), (100, 8, 32, 25), (500, 32, 64, 100))]
            + [CtcCase("ctc_loss", 200, 16, 32, 50, fp32, device, reduction=none)])
