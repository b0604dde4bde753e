"""Benchmark cases of the margin_rows family (csrc/*/margin_rows.*): multi_margin_loss and
multilabel_margin_loss on (rows, classes) scores."""
import torch

from ._case import RowsClassesCase


class MarginRowsCase(RowsClassesCase):
    """A margin_rows loss on (rows, classes) standard-normal scores requiring grad. torch's CPU kernels
    take float32/float64 only."""

    def __init__(self, loss, rows, classes, dtype, device, reduction="mean", targets=8, p=1, weight=False):
        super().__init__(loss, rows, classes, dtype, device, reduction)
        self.targets = min(targets, classes)
        self.p, self.weight = p, weight

    def inputs(self):
        g = self.generator()
        x = torch.randn(self.rows, self.classes, device=self.device, dtype=self.dtype, generator=g).requires_grad_()
        w = torch.rand(self.classes, device=self.device, dtype=self.dtype, generator=g) + 0.5 if self.weight else None
        return x, self.target(g), w

    def target_bytes(self):
        raise NotImplementedError

    def min_bytes(self, backward=True):
        """Scores read once [+ their gradient written once] + the targets read (target_bytes) (+ the
        class weights) [+ the per-row loss written (+ its upstream gradient read) for reduction='none']."""
        e, n = self.elem, self.rows * self.classes
        b = n * e * (2 if backward else 1) + self.target_bytes()
        if self.weight:
            b += self.classes * e
        if self.reduction == "none":
            b += self.rows * e * self.none_out_passes(backward)
        return b


class MultiMarginCase(MarginRowsCase):
    """multi_margin_loss: target (rows,) int64 class indices uniform in [0, classes); optional p=2, class
    weights uniform in [0.5, 1.5)."""

    DEFAULT_DIMS = {"cuda": (65536, 1000), "cpu": (4096, 1000)}

    def extras(self):
        return "".join([f" p{self.p}" if self.p != 1 else "", " w" if self.weight else ""])

    def target(self, g):
        return torch.randint(0, self.classes, (self.rows,), device=self.device, generator=g)

    def call(self, fn, x, t, w):
        return fn(x, t, p=self.p, weight=w, reduction=self.reduction)

    def target_bytes(self):
        return self.rows * 8


class MultiLabelMarginCase(MarginRowsCase):
    """multilabel_margin_loss: target (rows, classes) int64: `targets` distinct classes per row, then -1
    (the rest of the row -1 too). O(K C) compute per row (K listed classes)."""

    DEFAULT_DIMS = {"cuda": (65536, 256), "cpu": (4096, 256)}

    def __init__(self, loss, rows, classes, dtype, device, reduction="mean", targets=8, p=1, weight=False):
        if p != 1 or weight:
            raise ValueError("multilabel_margin_loss has no p or weight argument")
        super().__init__(loss, rows, classes, dtype, device, reduction, targets)

    def extras(self):
        return f" K{self.targets}"

    def target(self, g):
        t = torch.full((self.rows, self.classes), -1, dtype=torch.long, device=self.device)
        order = torch.rand(self.rows, self.classes, device=self.device, generator=g).argsort(1)
        t[:, :self.targets] = order[:, :self.targets]
        return t

    def call(self, fn, x, t, w):
        return fn(x, t, reduction=self.reduction)

    def target_bytes(self):
        """Every entry of the rows x classes int64 target is read (range-checked, as torch's CPU kernel)."""
        return self.rows * self.classes * 8


def default_cases(device):
    """The family's typical cases (reduction='mean'), then its reduction='none' variants."""
    fp32, bf16, none = torch.float32, torch.bfloat16, "none"
    if device.type == "cuda":
        return [
            MultiMarginCase("multi_margin_loss", 65536, 1000, fp32, device),
            MultiMarginCase("multi_margin_loss", 65536, 1000, bf16, device, p=2, weight=True),
            MultiMarginCase("multi_margin_loss", 8192, 32000, fp32, device),
            MultiLabelMarginCase("multilabel_margin_loss", 65536, 256, fp32, device),
            MultiLabelMarginCase("multilabel_margin_loss", 8192, 4096, fp32, device, targets=32),
            MultiMarginCase("multi_margin_loss", 65536, 1000, fp32, device, reduction=none),
        ]
    return [
        MultiMarginCase("multi_margin_loss", 4096, 1000, fp32, device),
        MultiMarginCase("multi_margin_loss", 4096, 1000, fp32, device, p=2, weight=True),
        MultiLabelMarginCase("multilabel_margin_loss", 4096, 256, fp32, device),
        MultiMarginCase("multi_margin_loss", 4096, 1000, fp32, device, reduction=none),
    ]
