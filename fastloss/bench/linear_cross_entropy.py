"""Benchmark cases of the linear_cross_entropy family: the LM head, cross_entropy(input @ linear_weight.T,
target) on (tokens, hidden) inputs and a (classes, hidden) weight, class-index targets.

The work is three GEMMs (logits, d/dinput, d/dweight): these cases are compute-bound, so the table shows
no bandwidth fraction for them (`bandwidth_bound = False`); benchmarks/bench_linear_cross_entropy.py
compares against the GEMMs alone, torch's chunked path and the peers, with peak memory."""
import torch

from ._case import LossCase


class LinearCrossEntropyCase(LossCase):
    """linear_cross_entropy on (rows, hidden) inputs and a (classes, hidden) weight, no bias; torch's
    side is torch.nn.functional.linear_cross_entropy with options=None (the whole logits)."""

    DEFAULT_DIMS = {"cuda": (8192, 4096, 128256), "cpu": (1024, 256, 8192)}
    SHAPE = ("ROWSxHIDDENxCLASSES", "8192x4096x128256")
    bandwidth_bound = False

    def __init__(self, loss, rows, hidden, classes, dtype, device, reduction="mean"):
        super().__init__(loss, dtype, device, reduction)
        self.rows, self.hidden, self.classes = rows, hidden, classes

    def dims(self):
        return (self.rows, self.hidden, self.classes)

    def shape_label(self):
        return f"{self.rows}x{self.hidden}x{self.classes}"

    def elements(self):
        return self.rows * self.classes  # the logits it never holds whole

    def inputs(self):
        g = self.generator()
        x = torch.randn(self.rows, self.hidden, device=self.device, generator=g).div_(self.hidden**0.5)
        w = torch.randn(self.classes, self.hidden, device=self.device, generator=g)
        t = torch.randint(0, self.classes, (self.rows,), device=self.device, generator=g)
        return x.to(self.dtype).requires_grad_(), w.to(self.dtype).requires_grad_(), t

    def call(self, fn, x, w, t):
        return fn(x, w, t, reduction=self.reduction)

    def min_bytes(self, backward=True):
        """Input and weight read once + int64 targets [+ their gradients written once] [+ the per-row loss
        written (+ its upstream gradient read) for reduction='none']. (The time is the GEMMs' FLOPs.)"""
        e = self.elem
        n = (self.rows + self.classes) * self.hidden * e * (2 if backward else 1) + self.rows * 8
        if self.reduction == "none":
            n += self.rows * e * self.none_out_passes(backward)
        return n


def default_cases(device):
    """The family's typical case (reduction='mean'), then its reduction='none' variant. Only where torch has
    linear_cross_entropy (torch >= 2.14): the comparison is against torch's own."""
    if not hasattr(torch.nn.functional, "linear_cross_entropy"):
        return []
    if device.type == "cuda":
        return [LinearCrossEntropyCase("linear_cross_entropy", 8192, 4096, 128256, torch.bfloat16, device),
                LinearCrossEntropyCase("linear_cross_entropy", 8192, 4096, 32000, torch.bfloat16, device,
                                       reduction="none")]
    return [LinearCrossEntropyCase("linear_cross_entropy", 1024, 256, 8192, torch.float32, device),
            LinearCrossEntropyCase("linear_cross_entropy", 1024, 256, 8192, torch.float32, device, reduction="none")]
