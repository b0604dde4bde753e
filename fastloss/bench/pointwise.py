"""Benchmark cases of the pointwise family (csrc/*/pointwise.*): every loss elementwise over same-shaped
tensors, then a reduction.
  RegressionCase and its subclasses: l1, mse, smooth_l1, huber, soft_margin, kl_div on one shape
      (input requires grad; the target does not).
  MarginRankingCase, HingeEmbeddingCase: +-1 targets, one shape.
  BinaryCase and its subclasses: binary_cross_entropy[_with_logits], poisson_nll, gaussian_nll,
      multilabel_soft_margin, sigmoid_focal on (rows, classes).
"""
import torch

from ._case import ShapedCase

M = 2**20


class RegressionCase(ShapedCase):
    """l1_loss / mse_loss (and, through subclasses, smooth_l1, huber, soft_margin, kl_div): input (requires
    grad) and target (does not), same shape, both standard normal (|x - y| ~ 1.1: both branches)."""

    DEFAULT_DIMS = {"cuda": (64 * M,), "cpu": (4 * M,)}

    def inputs(self):
        g = self.generator()
        x = torch.randn(self.shape, device=self.device, dtype=self.dtype, generator=g)
        y = torch.randn(self.shape, device=self.device, dtype=self.dtype, generator=g)
        return x.requires_grad_(), self.target(y, g)

    def target(self, y, g):
        """The target, from the standard-normal y drawn after the input (g: the case's generator)."""
        return y

    def call(self, fn, x, y):
        return fn(x, y, reduction=self.reduction)

    def min_bytes(self, backward=True):
        """mean/sum: input read + target read [+ input gradient written] = (2 [+1]) * N * elem.
        none: + loss written [+ upstream gradient read] = (3 [+2]) * N * elem (none.sum: [+1], .sum()'s
        upstream gradient is one scalar; see none_out_passes).
        (With backward a separate pass, something must be re-read there; this lower bound counts
        each tensor once, the convention of every table.)"""
        n, e = self.numel, self.elem
        out = self.none_out_passes(backward) if self.reduction == "none" else 0
        return n * e * (2 + (1 if backward else 0) + out)


class SmoothL1Case(RegressionCase):
    def __init__(self, loss, shape, dtype, device, reduction="mean", beta=1.0):
        super().__init__(loss, shape, dtype, device, reduction)
        self.beta = beta

    def extras(self):
        return f" beta{self.beta:g}" if self.beta != 1.0 else ""

    def call(self, fn, x, y):
        return fn(x, y, reduction=self.reduction, beta=self.beta)


class HuberCase(RegressionCase):
    def __init__(self, loss, shape, dtype, device, reduction="mean", delta=1.0):
        super().__init__(loss, shape, dtype, device, reduction)
        self.delta = delta

    def extras(self):
        return f" delta{self.delta:g}" if self.delta != 1.0 else ""

    def call(self, fn, x, y):
        return fn(x, y, reduction=self.reduction, delta=self.delta)


class SoftMarginCase(RegressionCase):
    """soft_margin_loss: targets +-1."""

    def target(self, y, g):
        return torch.sign(y)


class KLDivCase(RegressionCase):
    """kl_div: target probabilities uniform in [0, 1); 'mean' is timed as 'batchmean' (what kl_div's
    'mean' warning asks for)."""

    def target(self, y, g):
        return torch.rand(self.shape, device=self.device, dtype=self.dtype, generator=g)

    def call(self, fn, x, y):
        return fn(x, y, reduction="batchmean" if self.reduction == "mean" else self.reduction)


class SignTargetCase(ShapedCase):
    """A loss of one shape with +-1 targets (half each) of the inputs' dtype and an optional margin."""

    DEFAULT_DIMS = {"cuda": (16 * M,), "cpu": (M,)}
    differentiable_inputs = 1  # inputs of the shape that require grad (the target does not)

    def __init__(self, loss, shape, dtype, device, reduction="mean", margin=None):
        super().__init__(loss, shape, dtype, device, reduction)
        self.margin = margin

    def extras(self):
        return f" margin{self.margin:g}" if self.margin is not None else ""

    def sign(self, g):
        return (torch.randint(0, 2, self.shape, device=self.device, generator=g) * 2 - 1).to(self.dtype)

    def call(self, fn, *inputs):
        kw = {"reduction": self.reduction}
        if self.margin is not None:
            kw["margin"] = self.margin
        return fn(*inputs, **kw)

    def min_bytes(self, backward=True):
        """Each differentiable input read [+ its gradient written] + the target read (elem bytes: the
        inputs' dtype), all N elements [+ the loss written (+ its upstream gradient read) for 'none']."""
        k = self.differentiable_inputs
        n = (k * (2 if backward else 1) + 1) * self.numel * self.elem
        if self.reduction == "none":
            n += self.numel * self.elem * self.none_out_passes(backward)
        return n


class MarginRankingCase(SignTargetCase):
    """margin_ranking_loss: input1, input2 standard normal, requiring grad; target +-1."""

    differentiable_inputs = 2

    def inputs(self):
        g = self.generator()
        x1 = torch.randn(self.shape, device=self.device, dtype=self.dtype, generator=g).requires_grad_()
        x2 = torch.randn(self.shape, device=self.device, dtype=self.dtype, generator=g).requires_grad_()
        return x1, x2, self.sign(g)


class HingeEmbeddingCase(SignTargetCase):
    """hinge_embedding_loss: input distances uniform in [0, 2) (margin 1 is active for about half the -1
    targets), requiring grad; target +-1."""

    def inputs(self):
        g = self.generator()
        x = (2 * torch.rand(self.shape, device=self.device, dtype=self.dtype, generator=g)).requires_grad_()
        return x, self.sign(g)


class BinaryCase(ShapedCase):
    """The binary / multi-label losses on (rows, classes) inputs (an element count is rows of CLASSES):
    input standard normal, requiring grad; target uniform in [0, 1). This class: sigmoid_focal_loss
    (torch side: torchvision's formula in torch ops, the table's reference); subclasses: the others."""

    DEFAULT_DIMS = {"cuda": (16384, 1024), "cpu": (1024, 1024)}  # the 16M elements on CUDA
    CLASSES = 1024  # last dimension when the shape is given as an element count
    extra_tensors = 0  # full-shape tensors read besides input and target (each differentiable)
    loss_per_element = True  # reduction='none' writes one loss per element (else per row: not counted)

    def __init__(self, loss, shape, dtype, device, reduction="mean"):
        if len(shape) == 1 and shape[0] % self.CLASSES == 0:
            shape = (shape[0] // self.CLASSES, self.CLASSES)
        super().__init__(loss, shape, dtype, device, reduction)

    def inputs(self):
        g = self.generator()
        x = torch.randn(self.shape, generator=g, device=self.device, dtype=self.dtype)
        t = torch.rand(self.shape, generator=g, device=self.device, dtype=self.dtype)
        return self.complete(x, t, g)

    def complete(self, x, t, g):
        """The inputs from the drawn x and t (g: the case's generator, for anything more)."""
        return x.requires_grad_(), t

    def call(self, fn, x, t):
        return fn(x, t, reduction=self.reduction)

    def min_bytes(self, backward=True):
        """input + target read [+ input gradient written]; gaussian also reads var [and writes its
        gradient]; 'none' adds the loss written [and the upstream gradient read] (per row for
        multilabel_soft_margin: negligible). pos_weight (one row) is not counted."""
        tensors = 2 + (1 if backward else 0) + self.extra_tensors * (2 if backward else 1)
        if self.reduction == "none" and self.loss_per_element:
            tensors += self.none_out_passes(backward)
        return self.numel * self.elem * tensors


class BCECase(BinaryCase):
    """binary_cross_entropy: the input is sigmoid(standard normal), probabilities."""

    def complete(self, x, t, g):
        return torch.sigmoid(x).requires_grad_(), t


class BCEWithLogitsCase(BinaryCase):
    """binary_cross_entropy_with_logits with a per-class pos_weight uniform in [0, 3)."""

    def complete(self, x, t, g):
        pw = torch.rand(self.shape[-1:], generator=g, device=self.device, dtype=self.dtype) * 3
        return x.requires_grad_(), t, pw

    def extras(self):
        return " pos_weight"

    def call(self, fn, x, t, pos_weight):
        return fn(x, t, pos_weight=pos_weight, reduction=self.reduction)


class PoissonCase(BinaryCase):
    """poisson_nll_loss: target counts Poisson(4 u), u uniform in [0, 1)."""

    def complete(self, x, t, g):
        t = torch.poisson(torch.rand(self.shape, generator=g, device=self.device) * 4).to(self.dtype)
        return x.requires_grad_(), t


class GaussianCase(BinaryCase):
    """gaussian_nll_loss with a full-shape var uniform in [0.1, 1.1), requiring grad."""

    compile_fullgraph = False  # F.gaussian_nll_loss branches on torch.any(var < 0): no full graph
    extra_tensors = 1

    def complete(self, x, t, g):
        v = (torch.rand(self.shape, generator=g, device=self.device, dtype=self.dtype) + 0.1).requires_grad_()
        return x.requires_grad_(), t, v

    def call(self, fn, x, t, var):
        return fn(x, t, var, reduction=self.reduction)


class MultiLabelSoftMarginCase(BinaryCase):
    """multilabel_soft_margin_loss: soft targets in [0, 1); the loss is per row."""

    loss_per_element = False


def default_cases(device):
    """The family's typical cases (reduction='mean'), then its reduction='none' variants."""
    fp32, bf16, none = torch.float32, torch.bfloat16, "none"
    regression = ("smooth_l1_loss", "mse_loss", "l1_loss", "huber_loss")
    binary = BinaryCase.losses
    if device.type == "cuda":
        n = 64 * M
        return ([RegressionCase(loss, n, dtype, device) for dtype in (fp32, bf16) for loss in regression]
                + [RegressionCase(loss, 16 * M, fp32, device) for loss in ("soft_margin_loss", "kl_div")]
                + [MarginRankingCase("margin_ranking_loss", 16 * M, fp32, device),
                   HingeEmbeddingCase("hinge_embedding_loss", 16 * M, fp32, device)]
                + [BinaryCase(loss, (16384, 1024), dtype, device) for dtype in (fp32, bf16) for loss in binary]
                + [RegressionCase(loss, n, fp32, device, reduction=none) for loss in ("smooth_l1_loss", "mse_loss")]
                + [MarginRankingCase("margin_ranking_loss", 16 * M, fp32, device, reduction=none)]
                + [BinaryCase(loss, (16384, 1024), fp32, device, reduction=none)
                   for loss in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss")])
    return ([RegressionCase(loss, 4 * M, fp32, device) for loss in regression + ("soft_margin_loss", "kl_div")]
            + [MarginRankingCase("margin_ranking_loss", M, fp32, device),
               HingeEmbeddingCase("hinge_embedding_loss", M, fp32, device)]
            + [BinaryCase(loss, (1024, 1024), fp32, device) for loss in binary]
            # issue 19: smooth_l1_loss(reduction='none').sum().backward() at 4M elements
            + [RegressionCase(loss, 4 * M, fp32, device, reduction=none) for loss in ("smooth_l1_loss", "mse_loss")]
            + [MarginRankingCase("margin_ranking_loss", M, fp32, device, reduction=none)]
            + [BinaryCase(loss, (1024, 1024), fp32, device, reduction=none)
               for loss in ("binary_cross_entropy_with_logits", "sigmoid_focal_loss")])
