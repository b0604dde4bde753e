"""Benchmark cases of the cross_entropy family: cross_entropy and nll_loss on (rows, classes) inputs with
class-index targets."""
import torch

from ._case import RowsClassesCase


class CrossEntropyCase(RowsClassesCase):
    """cross_entropy on (rows, classes) logits, class-index targets; optional class weights, a fraction
    of ignored (-100) targets, label smoothing."""

    DEFAULT_DIMS = {"cuda": (8192, 32000), "cpu": (1024, 32000)}

    def __init__(self, loss, rows, classes, dtype, device, weight=False, ignore_frac=0.0, label_smoothing=0.0,
                 reduction="mean"):
        super().__init__(loss, rows, classes, dtype, device, reduction)
        self.weight, self.ignore_frac, self.label_smoothing = weight, ignore_frac, label_smoothing

    def extras(self):
        return "".join([" w" if self.weight else "", f" ign{self.ignore_frac:g}" if self.ignore_frac else "",
                        f" ls{self.label_smoothing:g}" if self.label_smoothing else ""])

    def scores(self, g):
        """The (rows, classes) input: standard-normal logits."""
        return torch.randn(self.rows, self.classes, device=self.device, dtype=self.dtype, generator=g)

    def inputs(self):
        g = self.generator()
        x = self.scores(g)
        t = torch.randint(0, self.classes, (self.rows,), device=self.device, generator=g)
        if self.ignore_frac:
            t[torch.rand(self.rows, device=self.device, generator=g) < self.ignore_frac] = -100
        w = torch.rand(self.classes, device=self.device, dtype=self.dtype, generator=g) if self.weight else None
        return x.requires_grad_(), t, w

    def call(self, fn, x, t, w):
        return fn(x, t, weight=w, reduction=self.reduction, label_smoothing=self.label_smoothing)

    def min_bytes(self, backward=True):
        """Logits read once + int64 targets (+ weights) [+ gradient written once] [+ the per-row
        loss written (+ its upstream gradient read) for reduction='none']."""
        e = self.elem
        n = self.rows * self.classes * e + self.rows * 8 + (self.classes * e if self.weight else 0)
        if backward:
            n += self.rows * self.classes * e
        if self.reduction == "none":
            n += self.rows * e * self.none_out_passes(backward)
        return n


class NllCase(CrossEntropyCase):
    """nll_loss on (rows, classes) log-probabilities (the log_softmax of standard-normal logits); no
    label smoothing."""

    def scores(self, g):
        return super().scores(g).float().log_softmax(1).to(self.dtype)

    def call(self, fn, x, t, w):
        return fn(x, t, weight=w, reduction=self.reduction)


def default_cases(device):
    """The family's typical cases (reduction='mean'), then its reduction='none' variants."""
    fp32, bf16, none = torch.float32, torch.bfloat16, "none"
    if device.type == "cuda":
        return [
            CrossEntropyCase("cross_entropy", 8192, 128256, bf16, device),
            CrossEntropyCase("cross_entropy", 16384, 32000, fp32, device),
            CrossEntropyCase("cross_entropy", 8192, 128256, bf16, device, weight=True, ignore_frac=0.1,
                             label_smoothing=0.1),
            CrossEntropyCase("cross_entropy", 32768, 50257, bf16, device),
            CrossEntropyCase("cross_entropy", 65536, 128, fp32, device),
            NllCase("nll_loss", 16384, 32000, fp32, device),
            CrossEntropyCase("cross_entropy", 16384, 32000, fp32, device, reduction=none),
            NllCase("nll_loss", 16384, 32000, fp32, device, reduction=none),
        ]
    return [
        CrossEntropyCase("cross_entropy", 1024, 32000, fp32, device),
        CrossEntropyCase("cross_entropy", 1024, 32000, fp32, device, weight=True, ignore_frac=0.1, label_smoothing=0.1),
        CrossEntropyCase("cross_entropy", 256, 32000, bf16, device),
        CrossEntropyCase("cross_entropy", 8192, 100, fp32, device),
        NllCase("nll_loss", 1024, 32000, fp32, device),  # issue 19: log-probabilities 1024x32000
        CrossEntropyCase("cross_entropy", 1024, 32000, fp32, device, reduction=none),
        NllCase("nll_loss", 1024, 32000, fp32, device, reduction=none),
    ]
