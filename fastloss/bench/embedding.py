"""Benchmark cases of the embedding family (csrc/*/embedding.*): row losses on (N, D) embeddings."""
import torch

from ._case import ShapedCase


class EmbeddingCase(ShapedCase):
    """A row loss on (N, D) inputs, all standard normal and requiring grad; an optional margin."""

    DEFAULT_DIMS = {"cuda": (65536, 512), "cpu": (4096, 512)}
    differentiable_inputs = 0  # (N, D) inputs, each read once and its gradient written once

    def __init__(self, loss, shape, dtype, device, reduction="mean", margin=None):
        super().__init__(loss, shape, dtype, device, reduction)
        if len(self.shape) != 2:
            raise ValueError(f"{loss}: shape must be NxD, got {self.shape}")
        self.margin = margin

    def extras(self):
        return f" margin{self.margin:g}" if self.margin is not None else ""

    def randn(self, g, shape=None):
        return torch.randn(shape or self.shape, device=self.device, dtype=self.dtype, generator=g).requires_grad_()

    def options(self):
        """The keyword arguments of the call besides reduction."""
        return {"margin": self.margin} if self.margin is not None else {}

    def call(self, fn, *inputs):
        return fn(*inputs, reduction=self.reduction, **self.options())

    def target_bytes(self):
        return 0

    def min_bytes(self, backward=True):
        """Each (N, D) input read once [+ its gradient written once] (+ the target) [+ the per-row loss
        written (+ its upstream gradient read) for reduction='none'; scalar outputs are not counted]:
          triplet:  3 reads of N*D [+ 3 gradient writes of N*D]      (+ none: N [+ N])
          cosine:   2 reads of N*D + target N [+ 2 gradient writes]  (+ none: N [+ N])
        Targets have the inputs' dtype here (elem bytes each)."""
        rows, d = self.shape
        e = self.elem
        n = self.differentiable_inputs * rows * d * e * (2 if backward else 1) + self.target_bytes()
        if self.reduction == "none":
            n += rows * e * self.none_out_passes(backward)
        return n


class TripletCase(EmbeddingCase):
    """triplet_margin_loss, triplet_margin_with_distance_loss (default distance): anchor, positive,
    negative (N, D); swap, and p for triplet_margin_loss."""

    differentiable_inputs = 3

    def __init__(self, loss, shape, dtype, device, reduction="mean", swap=False, margin=None, p=2.0):
        super().__init__(loss, shape, dtype, device, reduction, margin=margin)
        if p != 2.0 and loss != "triplet_margin_loss":
            raise ValueError(f"{loss} has no p argument")
        self.swap, self.p = swap, p

    @classmethod
    def from_dims(cls, loss, dims, dtype, device, reduction="mean", swap=False):
        return cls(loss, dims, dtype, device, reduction=reduction, swap=swap)

    def extras(self):
        return "".join([f" p{self.p:g}" if self.p != 2.0 else "", " swap" if self.swap else "", super().extras()])

    def inputs(self):
        g = self.generator()
        return self.randn(g), self.randn(g), self.randn(g)

    def options(self):
        kw = {**super().options(), "swap": self.swap}
        if self.p != 2.0:
            kw["p"] = self.p
        return kw


class CosineCase(EmbeddingCase):
    """cosine_embedding_loss: input1, input2 (N, D), target (N,) +-1 (half each) of the inputs' dtype."""

    differentiable_inputs = 2

    def inputs(self):
        g = self.generator()
        x1, x2 = self.randn(g), self.randn(g)
        t = (torch.randint(0, 2, self.shape[:1], device=self.device, generator=g) * 2 - 1).to(self.dtype)
        return x1, x2, t

    def target_bytes(self):
        return self.shape[0] * self.elem


def default_cases(device):
    """The family's typical cases (reduction='mean'), then its reduction='none' variants."""
    fp32, none = torch.float32, "none"
    if device.type == "cuda":
        return [
            TripletCase("triplet_margin_loss", (65536, 512), fp32, device),
            TripletCase("triplet_margin_loss", (65536, 512), fp32, device, swap=True),
            CosineCase("cosine_embedding_loss", (65536, 512), fp32, device),
            TripletCase("triplet_margin_loss", (65536, 512), fp32, device, reduction=none),
        ]
    return [
        TripletCase("triplet_margin_loss", (4096, 512), fp32, device),
        CosineCase("cosine_embedding_loss", (4096, 512), fp32, device),
        TripletCase("triplet_margin_loss", (4096, 512), fp32, device, reduction=none),
    ]
