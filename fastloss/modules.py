"""Drop-in replacements for torch.nn loss modules. Each subclasses its torch.nn class (same
constructor, same attributes, same state_dict, isinstance checks keep working) and overrides
forward only."""
from torch import Tensor, nn

from . import functional as F

__all__ = ["CrossEntropyLoss", "NLLLoss", "L1Loss", "MSELoss", "SmoothL1Loss", "HuberLoss", "MarginRankingLoss",
           "HingeEmbeddingLoss", "TripletMarginLoss", "TripletMarginWithDistanceLoss", "CosineEmbeddingLoss", "CTCLoss",
           "SoftMarginLoss", "KLDivLoss", "MultiMarginLoss", "MultiLabelMarginLoss"]


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
