"""Drop-in replacements for torch.nn loss modules. Each subclasses its torch.nn class (same
constructor, same attributes, same state_dict, isinstance checks keep working) and overrides
forward only."""
from torch import Tensor, nn

from . import functional as F

__all__ = ["CrossEntropyLoss", "NLLLoss", "L1Loss", "MSELoss", "SmoothL1Loss", "HuberLoss", "MarginRankingLoss",
           "HingeEmbeddingLoss", "TripletMarginLoss", "TripletMarginWithDistanceLoss", "CosineEmbeddingLoss", "CTCLoss",
           "SoftMarginLoss", "KLDivLoss", "BCELoss", "BCEWithLogitsLoss", "PoissonNLLLoss", "GaussianNLLLoss",
           "MultiLabelSoftMarginLoss", "FocalLoss", "MultiMarginLoss", "MultiLabelMarginLoss"]
if hasattr(nn, "LinearCrossEntropyLoss"):  # torch >= 2.14: defined at the end
    __all__.append("LinearCrossEntropyLoss")


class CrossEntropyLoss(nn.CrossEntropyLoss):
    __doc__ = nn.CrossEntropyLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class NLLLoss(nn.NLLLoss):
    __doc__ = nn.NLLLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class L1Loss(nn.L1Loss):
    __doc__ = nn.L1Loss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class MSELoss(nn.MSELoss):
    __doc__ = nn.MSELoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(nn.SmoothL1Loss):
    __doc__ = nn.SmoothL1Loss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(nn.HuberLoss):
    __doc__ = nn.HuberLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class MarginRankingLoss(nn.MarginRankingLoss):
    __doc__ = nn.MarginRankingLoss.__doc__

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return F.margin_ranking_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)


class HingeEmbeddingLoss(nn.HingeEmbeddingLoss):
    __doc__ = nn.HingeEmbeddingLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.hinge_embedding_loss(input, target, margin=self.margin, reduction=self.reduction)


class TripletMarginLoss(nn.TripletMarginLoss):
    __doc__ = nn.TripletMarginLoss.__doc__

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return F.triplet_margin_loss(anchor, positive, negative, margin=self.margin, p=self.p, eps=self.eps,
                                     swap=self.swap, reduction=self.reduction)


class TripletMarginWithDistanceLoss(nn.TripletMarginWithDistanceLoss):
    __doc__ = nn.TripletMarginWithDistanceLoss.__doc__

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        # torch's module stores nn.PairwiseDistance() when given None: functional fuses that one too
        return F.triplet_margin_with_distance_loss(anchor, positive, negative,
                                                   distance_function=self.distance_function, margin=self.margin,
                                                   swap=self.swap, reduction=self.reduction)


class CosineEmbeddingLoss(nn.CosineEmbeddingLoss):
    __doc__ = nn.CosineEmbeddingLoss.__doc__

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return F.cosine_embedding_loss(input1, input2, target, margin=self.margin, reduction=self.reduction)


class CTCLoss(nn.CTCLoss):
    __doc__ = nn.CTCLoss.__doc__

    def forward(self, log_probs: Tensor, targets: Tensor, input_lengths: Tensor, target_lengths: Tensor) -> Tensor:
        return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=self.blank,
                          reduction=self.reduction, zero_infinity=self.zero_infinity)


class SoftMarginLoss(nn.SoftMarginLoss):
    __doc__ = nn.SoftMarginLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.soft_margin_loss(input, target, reduction=self.reduction)


class KLDivLoss(nn.KLDivLoss):
    __doc__ = nn.KLDivLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class BCELoss(nn.BCELoss):
    __doc__ = nn.BCELoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    __doc__ = nn.BCEWithLogitsLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self.weight, pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class PoissonNLLLoss(nn.PoissonNLLLoss):
    __doc__ = nn.PoissonNLLLoss.__doc__

    def forward(self, log_input: Tensor, target: Tensor) -> Tensor:
        return F.poisson_nll_loss(log_input, target, log_input=self.log_input, full=self.full, eps=self.eps,
                                  reduction=self.reduction)


class GaussianNLLLoss(nn.GaussianNLLLoss):
    __doc__ = nn.GaussianNLLLoss.__doc__

    def forward(self, input: Tensor, target: Tensor, var: Tensor | float) -> Tensor:
        return F.gaussian_nll_loss(input, target, var, full=self.full, eps=self.eps, reduction=self.reduction)


class MultiLabelSoftMarginLoss(nn.MultiLabelSoftMarginLoss):
    __doc__ = nn.MultiLabelSoftMarginLoss.__doc__

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
    __doc__ = nn.MultiMarginLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multi_margin_loss(input, target, p=self.p, margin=self.margin, weight=self.weight,
                                   reduction=self.reduction)


class MultiLabelMarginLoss(nn.MultiLabelMarginLoss):
    __doc__ = nn.MultiLabelMarginLoss.__doc__

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.multilabel_margin_loss(input, target, reduction=self.reduction)



if hasattr(nn, "LinearCrossEntropyLoss"):  # torch >= 2.14 (torch 2.11 would fail on the base class's name)
    class LinearCrossEntropyLoss(nn.LinearCrossEntropyLoss):
        __doc__ = nn.LinearCrossEntropyLoss.__doc__

        def forward(self, input: Tensor, target: Tensor) -> Tensor:
            linear_weight = self.linear.weight.reshape((self.num_classes, *self.out_features,
                                                        self.linear.in_features))
            linear_bias = (self.linear.bias.reshape((self.num_classes, *self.out_features))
                           if self.linear.bias is not None else None)
            return F.linear_cross_entropy(input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
                                          reduction=self.reduction, ignore_index=self.ignore_index,
                                          label_smoothing=self.label_smoothing, options=self.options)
