"""Drop-in replacements for torch.nn loss modules. Each subclasses its torch.nn class (same
constructor, same attributes, same state_dict, isinstance checks keep working) and overrides
forward only."""
from torch import Tensor, nn

from . import functional as F

__all__ = ["CrossEntropyLoss", "NLLLoss"]


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
