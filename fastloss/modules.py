"""Drop-in replacements for torch.nn loss modules. Each subclasses its torch.nn class (same
constructor, same attributes, same state_dict, isinstance checks keep working) and overrides
forward only."""
from torch import Tensor, nn

from . import _losses
from . import functional as F

# every module of the table (fastloss/_losses.py) that this torch has (LinearCrossEntropyLoss: torch >= 2.14,
# defined at the end only there)
__all__ = _losses.module_names()


def _and_torch_doc(doc, torch_cls):
    """A module's __doc__: fastloss's docstring, then torch's documentation of the class it replaces
    (help() shows both; the API reference is built from fastloss's part). None under python -OO."""
    if doc and torch_cls.__doc__:
        return f"{doc}\ntorch's documentation of torch.nn.{torch_cls.__name__}:\n{torch_cls.__doc__}"
    return doc or torch_cls.__doc__


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Drop-in `torch.nn.CrossEntropyLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.cross_entropy][fastloss.functional.cross_entropy.cross_entropy], the fused
    cross-entropy: one pass over the logits computes the loss and, when they require grad, their gradient.
    """
    __doc__ = _and_torch_doc(__doc__, nn.CrossEntropyLoss)
    # class defaults: fastloss.patch() swaps the class of modules built by torch, without __init__
    process_group = None
    softcap, z_loss, return_lse = None, 0.0, False

    def __init__(self, weight: Tensor | None = None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0, *, softcap: float | None = None,
                 z_loss: float = 0.0, return_lse: bool = False, process_group=None) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        # plain attributes, not buffers: the state_dict stays torch's
        self.softcap, self.z_loss, self.return_lse = softcap, z_loss, return_lse
        self.process_group = process_group  # vocab-parallel: the input is this rank's slice of the classes

    def extra_repr(self) -> str:
        extras = [f"{k}={v}" for k, v, d in (("softcap", self.softcap, None), ("z_loss", self.z_loss, 0.0),
                                              ("return_lse", self.return_lse, False)) if v != d]
        return ", ".join(extras)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               softcap=self.softcap, z_loss=self.z_loss, return_lse=self.return_lse,
                               process_group=self.process_group)


class NLLLoss(nn.NLLLoss):
    """Drop-in `torch.nn.NLLLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.nll_loss][], the forward gathers the target entries only; backward
    writes the gradient in one pass.
    """
    __doc__ = _and_torch_doc(__doc__, nn.NLLLoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class L1Loss(nn.L1Loss):
    """Drop-in `torch.nn.L1Loss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.l1_loss][], one fused pass computes the loss and, for mean/sum, the
    gradient.
    """
    __doc__ = _and_torch_doc(__doc__, nn.L1Loss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class MSELoss(nn.MSELoss):
    """Drop-in `torch.nn.MSELoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.mse_loss][], one fused pass computes the loss and, for mean/sum, the
    gradient.
    """
    __doc__ = _and_torch_doc(__doc__, nn.MSELoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(nn.SmoothL1Loss):
    """Drop-in `torch.nn.SmoothL1Loss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.smooth_l1_loss][], one fused pass; `beta=0` is exactly L1 (no NaN
    gradient).
    """
    __doc__ = _and_torch_doc(__doc__, nn.SmoothL1Loss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(nn.HuberLoss):
    """Drop-in `torch.nn.HuberLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.huber_loss][], one fused pass computes the loss and, for mean/sum, the
    gradient.
    """
    __doc__ = _and_torch_doc(__doc__, nn.HuberLoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class MarginRankingLoss(nn.MarginRankingLoss):
    """Drop-in `torch.nn.MarginRankingLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.margin_ranking_loss][], one fused pass, gradients for both inputs and
    the target.
    """
    __doc__ = _and_torch_doc(__doc__, nn.MarginRankingLoss)

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return F.margin_ranking_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)


class HingeEmbeddingLoss(nn.HingeEmbeddingLoss):
    """Drop-in `torch.nn.HingeEmbeddingLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.hinge_embedding_loss][], one fused pass; no gradient at exactly the
    hinge, as torch.
    """
    __doc__ = _and_torch_doc(__doc__, nn.HingeEmbeddingLoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.hinge_embedding_loss(input, target, margin=self.margin, reduction=self.reduction)


class TripletMarginLoss(nn.TripletMarginLoss):
    """Drop-in `torch.nn.TripletMarginLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.triplet_margin_loss][], one kernel reads anchor, positive and negative
    once per row and writes their gradients.
    """
    __doc__ = _and_torch_doc(__doc__, nn.TripletMarginLoss)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p, eps=self.eps,
                                     swap=self.swap, reduction=self.reduction)


class TripletMarginWithDistanceLoss(nn.TripletMarginWithDistanceLoss):
    """Drop-in `torch.nn.TripletMarginWithDistanceLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.triplet_margin_with_distance_loss][], the default distance (None or
    nn.PairwiseDistance) is the fused triplet kernel; a user distance_function runs torch's composition.
    """
    __doc__ = _and_torch_doc(__doc__, nn.TripletMarginWithDistanceLoss)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        # torch's module stores nn.PairwiseDistance() when given None: functional fuses that one too
        return F.triplet_margin_with_distance_loss(anchor, positive, negative,
                                                   distance_function=self.distance_function, margin=self.margin,
                                                   swap=self.swap, reduction=self.reduction)


class CosineEmbeddingLoss(nn.CosineEmbeddingLoss):
    """Drop-in `torch.nn.CosineEmbeddingLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.cosine_embedding_loss][], one sweep per row for the dot product and
    norms, a second for the gradient.
    """
    __doc__ = _and_torch_doc(__doc__, nn.CosineEmbeddingLoss)

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return F.cosine_embedding_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)


class CTCLoss(nn.CTCLoss):
    """Drop-in `torch.nn.CTCLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.ctc_loss][], alpha/beta recursions and the gradient in the forward;
    float16/bfloat16 accepted; bad labels and lengths raise.
    """
    __doc__ = _and_torch_doc(__doc__, nn.CTCLoss)

    def forward(self, log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
        return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=self.blank,
                          reduction=self.reduction, zero_infinity=self.zero_infinity)


class SoftMarginLoss(nn.SoftMarginLoss):
    """Drop-in `torch.nn.SoftMarginLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.soft_margin_loss][], a kind of the fused pointwise op (torch's formula
    as written).
    """
    __doc__ = _and_torch_doc(__doc__, nn.SoftMarginLoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.soft_margin_loss(input, target, reduction=self.reduction)


class KLDivLoss(nn.KLDivLoss):
    """Drop-in `torch.nn.KLDivLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.kl_div][], a kind of the fused pointwise op; `batchmean` is the fused
    sum over the batch size.
    """
    __doc__ = _and_torch_doc(__doc__, nn.KLDivLoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class BCELoss(nn.BCELoss):
    """Drop-in `torch.nn.BCELoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.binary_cross_entropy][], one fused pass; inputs or targets outside [0,
    1] raise on CPU and CUDA alike.
    """
    __doc__ = _and_torch_doc(__doc__, nn.BCELoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """Drop-in `torch.nn.BCEWithLogitsLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.binary_cross_entropy_with_logits][], one fused, stable pass; a broadcast
    `pos_weight` is read in place.
    """
    __doc__ = _and_torch_doc(__doc__, nn.BCEWithLogitsLoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class PoissonNLLLoss(nn.PoissonNLLLoss):
    """Drop-in `torch.nn.PoissonNLLLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.poisson_nll_loss][], one fused pass, gradients for input and target.
    """
    __doc__ = _and_torch_doc(__doc__, nn.PoissonNLLLoss)

    def forward(self, log_input: Tensor, target: Tensor) -> Tensor:
        return F.poisson_nll_loss(log_input, target, log_input=self.log_input, full=self.full, eps=self.eps,
                                  reduction=self.reduction)


class GaussianNLLLoss(nn.GaussianNLLLoss):
    """Drop-in `torch.nn.GaussianNLLLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.gaussian_nll_loss][], one fused pass, gradients for input, target and
    var.
    """
    __doc__ = _and_torch_doc(__doc__, nn.GaussianNLLLoss)

    def forward(self, input: Tensor, target: Tensor, var: Tensor | float) -> Tensor:
        return F.gaussian_nll_loss(input, target, var, full=self.full, eps=self.eps, reduction=self.reduction)


class MultiLabelSoftMarginLoss(nn.MultiLabelSoftMarginLoss):
    """Drop-in `torch.nn.MultiLabelSoftMarginLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.multilabel_soft_margin_loss][], the fused BCE-with-logits kernel, summed
    over the classes.
    """
    __doc__ = _and_torch_doc(__doc__, nn.MultiLabelSoftMarginLoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multilabel_soft_margin_loss(input, target, weight=self.weight, reduction=self.reduction)


class FocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., 2017) as a module: fastloss.functional.sigmoid_focal_loss with
    torchvision.ops.sigmoid_focal_loss's semantics. torch.nn has no focal loss; unlike torchvision's
    function (default reduction 'none'), the module defaults to 'mean' like every torch.nn loss.

    Args:
        alpha: weight of the positive class in [0, 1]; a negative value disables the alpha term.
        gamma: focusing exponent (0 gives binary_cross_entropy_with_logits).
        reduction: 'none' | 'mean' | 'sum'.
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"{reduction} is not a valid value for reduction")
        self.alpha = alpha
        self.gamma = gamma
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.sigmoid_focal_loss(input, target, alpha=self.alpha, gamma=self.gamma, reduction=self.reduction)


# ------------------------------------------------------------------------------------ margin_rows
class MultiMarginLoss(nn.MultiMarginLoss):
    """Drop-in `torch.nn.MultiMarginLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.multi_margin_loss][], one pass over each row; bad targets raise on CPU
    and CUDA alike.
    """
    __doc__ = _and_torch_doc(__doc__, nn.MultiMarginLoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multi_margin_loss(input, target, p=self.p, margin=self.margin, weight=self.weight,
                                   reduction=self.reduction)


class MultiLabelMarginLoss(nn.MultiLabelMarginLoss):
    """Drop-in `torch.nn.MultiLabelMarginLoss`: subclasses it (same constructor, attributes and state_dict).

    forward: [fastloss.functional.multilabel_margin_loss][], one read of each row's scores and targets;
    bad targets raise on CPU and CUDA alike.
    """
    __doc__ = _and_torch_doc(__doc__, nn.MultiLabelMarginLoss)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multilabel_margin_loss(input, target, reduction=self.reduction)



if hasattr(nn, "LinearCrossEntropyLoss"):  # torch >= 2.14 (torch 2.11 would fail on the base class's name)
    class LinearCrossEntropyLoss(nn.LinearCrossEntropyLoss):
        """Drop-in `torch.nn.LinearCrossEntropyLoss`: subclasses it (same constructor, attributes and state_dict).

        forward:
        [fastloss.functional.linear_cross_entropy][fastloss.functional.linear_cross_entropy.linear_cross_entropy]:
        the whole logits never exist, extra memory stays within a budget (torch >= 2.14). Keyword-only extras
        after torch's arguments, passed to it: `softcap=None`, `z_loss=0.0`, `return_lse=False` (forward returns
        (loss, lse)), `memory_budget=None`.
        """
        __doc__ = _and_torch_doc(__doc__, nn.LinearCrossEntropyLoss)
        # class defaults: fastloss.patch() swaps the class of modules built by torch, without __init__
        process_group = None
        softcap, z_loss, return_lse, memory_budget = None, 0.0, False, None

        def __init__(self, in_features: int, num_classes: int, *, out_features: tuple[int, ...] = (),
                     bias: bool = False, device=None, dtype=None, reduction: str = "mean", weight: Tensor | None = None,
                     ignore_index: int | None = None, label_smoothing: float = 0.0, options=None,
                     softcap: float | None = None, z_loss: float = 0.0, return_lse: bool = False,
                     memory_budget: int | None = None, process_group=None) -> None:
            super().__init__(in_features, num_classes, out_features=out_features, bias=bias, device=device,
                             dtype=dtype, reduction=reduction, weight=weight, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, options=options)
            self.softcap, self.z_loss, self.return_lse, self.memory_budget = softcap, z_loss, return_lse, memory_budget
            # vocab-parallel: num_classes (the linear layer's rows, the weight) is this rank's slice
            self.process_group = process_group

        def forward(self, input: Tensor, target: Tensor) -> Tensor:
            linear_weight = self.linear.weight.reshape((self.num_classes, *self.out_features,
                                                        self.linear.in_features))
            linear_bias = (self.linear.bias.reshape((self.num_classes, *self.out_features))
                           if self.linear.bias is not None else None)
            return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
                                          reduction=self.reduction, ignore_index=self.ignore_index,
                                          label_smoothing=self.label_smoothing, options=self.options,
                                          softcap=self.softcap, z_loss=self.z_loss, return_lse=self.return_lse,
                                          memory_budget=self.memory_budget,
                                          process_group=self.process_group)
