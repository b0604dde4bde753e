"""The one table of fastloss's losses: each loss's functional name, csrc family, module class, torch
function, public op, differentiable arguments, reference and benchmark case.

Everything that lists losses is derived from it: fastloss.__all__, fastloss.functional's fallback
table under torch.func (`torch_functions()`), fastloss.modules.__all__, patch()'s PATCHED_FUNCTIONS /
PATCHED_MODULES, the benchmark's families and cases (fastloss/bench/), and the cross-family tests
(tests/test_losses_table.py checks the table against the code). Adding a loss starts with a row here.

Imports torch only: fastloss/__init__ imports it before any fastloss module, so the torch functions
it records are torch's own, taken before any fastloss.patch().
"""
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as _F

__all__ = ["Loss", "LOSSES", "FAMILIES", "by_name", "family", "available", "torch_functions", "functional_names",
           "module_names", "patched_functions", "patched_modules"]

# The csrc families (csrc/{ops,cpu,cuda,autograd}/<family>.*), in the order of LOSSES.
FAMILIES = ("cross_entropy", "pointwise", "embedding", "ctc", "margin_rows", "linear_cross_entropy")

# torch's binary_cross_entropy_with_logits as imported before any patch(): the focal reference below must
# not reach fastloss's own op through a patched torch.nn.functional.
_torch_bce_with_logits = _F.binary_cross_entropy_with_logits


def sigmoid_focal_loss_reference(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss's formula written with torch ops (torch.nn has no focal loss):
    the torch side of the benchmark, and what fastloss runs under a torch.func transform."""
    p = torch.sigmoid(inputs)
    ce = _torch_bce_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


@dataclass(frozen=True)
class Loss:
    name: str  # functional name: "smooth_l1_loss" (fastloss.functional.<name>)
    family: str  # csrc family: "pointwise"
    module: str | None  # module class in fastloss.modules: "SmoothL1Loss" (None if none)
    torch_name: str | None  # name in torch.nn.functional (None: torch has none, e.g. sigmoid_focal_loss)
    op: str  # public named op: "fastloss::smooth_l1_loss"; two losses run another loss's op (the triplet
    # with a distance function None: triplet_margin_loss's; multilabel_soft_margin: binary_cross_entropy_with_logits)
    differentiable: tuple[str, ...]  # tensor arguments that can get gradients (in some call), as in torch
    reference: Callable | None = None  # the loss in torch ops where torch.nn.functional has none
    bench: str | None = None  # the case class in fastloss.bench that benchmarks it (None: no bench case)

    @property
    def torch_function(self) -> Callable | None:
        """torch's function (taken before any patch()), else the reference; None when neither exists (a
        loss of a newer torch)."""
        return _TORCH_ORIGINALS.get(self.name, self.reference)

    @property
    def torch_module(self) -> str | None:
        """The torch.nn class fastloss's module replaces (its name), None for fastloss's extras."""
        return self.module if self.module and hasattr(torch.nn, self.module) else None


def _loss(name, family, module, differentiable, torch_name=..., op=None, **kw):
    """A row; torch_name defaults to the functional name and op to fastloss::<name>."""
    return Loss(name, family, module, name if torch_name is ... else torch_name, op or f"fastloss::{name}",
                tuple(differentiable), **kw)


# Every loss, in the README's order. differentiable: cross_entropy's target and weight only with
# probability targets (class indices: input only), as torch.
LOSSES: tuple[Loss, ...] = (
    _loss("cross_entropy", "cross_entropy", "CrossEntropyLoss", ("input", "target", "weight"),
          bench="CrossEntropyCase"),
    _loss("nll_loss", "cross_entropy", "NLLLoss", ("input",), bench="NllCase"),
    _loss("l1_loss", "pointwise", "L1Loss", ("input", "target", "weight"), bench="RegressionCase"),
    _loss("mse_loss", "pointwise", "MSELoss", ("input", "target", "weight"), bench="RegressionCase"),
    _loss("smooth_l1_loss", "pointwise", "SmoothL1Loss", ("input", "target"), bench="SmoothL1Case"),
    _loss("huber_loss", "pointwise", "HuberLoss", ("input", "target", "weight"), bench="HuberCase"),
    _loss("margin_ranking_loss", "pointwise", "MarginRankingLoss", ("input1", "input2", "target"),
          bench="MarginRankingCase"),
    _loss("hinge_embedding_loss", "pointwise", "HingeEmbeddingLoss", ("input",), bench="HingeEmbeddingCase"),
    _loss("triplet_margin_loss", "embedding", "TripletMarginLoss", ("anchor", "positive", "negative"),
          bench="TripletCase"),
    _loss("triplet_margin_with_distance_loss", "embedding", "TripletMarginWithDistanceLoss",
          ("anchor", "positive", "negative"), op="fastloss::triplet_margin_loss", bench="TripletCase"),
    _loss("cosine_embedding_loss", "embedding", "CosineEmbeddingLoss", ("input1", "input2"), bench="CosineCase"),
    _loss("soft_margin_loss", "pointwise", "SoftMarginLoss", ("input",), bench="SoftMarginCase"),
    _loss("kl_div", "pointwise", "KLDivLoss", ("input", "target"), bench="KLDivCase"),
    _loss("binary_cross_entropy", "pointwise", "BCELoss", ("input", "target"), bench="BCECase"),
    _loss("binary_cross_entropy_with_logits", "pointwise", "BCEWithLogitsLoss", ("input", "target"),
          bench="BCEWithLogitsCase"),
    _loss("poisson_nll_loss", "pointwise", "PoissonNLLLoss", ("input", "target"), bench="PoissonCase"),
    _loss("gaussian_nll_loss", "pointwise", "GaussianNLLLoss", ("input", "target", "var"), bench="GaussianCase"),
    _loss("multilabel_soft_margin_loss", "pointwise", "MultiLabelSoftMarginLoss", ("input", "target", "weight"),
          op="fastloss::binary_cross_entropy_with_logits", bench="MultiLabelSoftMarginCase"),
    _loss("sigmoid_focal_loss", "pointwise", "FocalLoss", ("inputs", "targets"), torch_name=None,
          reference=sigmoid_focal_loss_reference, bench="BinaryCase"),
    _loss("ctc_loss", "ctc", "CTCLoss", ("log_probs",), bench="CtcCase"),
    _loss("multi_margin_loss", "margin_rows", "MultiMarginLoss", ("input",), bench="MultiMarginCase"),
    _loss("multilabel_margin_loss", "margin_rows", "MultiLabelMarginLoss", ("input",), bench="MultiLabelMarginCase"),
    _loss("linear_cross_entropy", "linear_cross_entropy", "LinearCrossEntropyLoss",
          ("input", "linear_weight", "linear_bias"), bench="LinearCrossEntropyCase"),
)

_BY_NAME = {loss.name: loss for loss in LOSSES}

# torch.nn.functional's losses as imported now, before any fastloss.patch() (patch.py restores these).
_TORCH_ORIGINALS = {loss.name: getattr(_F, loss.torch_name) for loss in LOSSES
                    if loss.torch_name is not None and hasattr(_F, loss.torch_name)}


def by_name(name: str) -> Loss:
    """The row of the loss named `name` (its functional name); KeyError for an unknown one."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"fastloss: no loss named {name!r}; known: {', '.join(_BY_NAME)}") from None


def family(name: str) -> tuple[Loss, ...]:
    """The rows of one csrc family, in table order."""
    if name not in FAMILIES:
        raise KeyError(f"fastloss: no family {name!r}; known: {', '.join(FAMILIES)}")
    return tuple(loss for loss in LOSSES if loss.family == name)


def available(loss: Loss) -> bool:
    """Whether this torch has the loss fastloss replaces: a loss of a newer torch (linear_cross_entropy:
    torch >= 2.14) is left out of fastloss's API on older ones; fastloss's extras (no torch name) always
    count."""
    return loss.torch_name is None or hasattr(_F, loss.torch_name)


def functional_names() -> list[str]:
    """fastloss.functional's losses on this torch, in table order."""
    return [loss.name for loss in LOSSES if available(loss)]


def module_names() -> list[str]:
    """fastloss.modules' classes on this torch, in table order."""
    return [loss.module for loss in LOSSES if loss.module and available(loss)]


def patched_functions() -> tuple[str, ...]:
    """The torch.nn.functional names patch() replaces: every available loss that torch has."""
    return tuple(loss.torch_name for loss in LOSSES if loss.name in _TORCH_ORIGINALS)


def patched_modules() -> tuple[str, ...]:
    """The torch.nn classes patch() replaces: every available module that torch has."""
    return tuple(loss.module for loss in LOSSES if available(loss) and loss.torch_module)


def torch_functions() -> dict[str, Callable]:
    """functional name -> torch's own function (taken before any patch()), or the reference where torch.nn
    has none (sigmoid_focal_loss): fastloss.functional's fallback under torch.func transforms."""
    return {loss.name: loss.torch_function for loss in LOSSES if loss.torch_function is not None}
