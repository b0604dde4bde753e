"""Drop-in replacements for torch.nn.functional losses: same names, same signatures, same results.

Each function validates its arguments exactly where torch does (reduction strings, legacy
size_average/reduce, dtype rules), then calls its loss's op in the `fastloss` namespace (torch.ops.fastloss.<name>).
One module per csrc family holds its wrappers and fake kernels: pointwise, cross_entropy, embedding, margin_rows, ctc,
linear_cross_entropy; _common the shared rules, _internal the fake kernels of the internal shared ops.
"""
from .. import _losses
from ._common import _TORCH, _transforming  # noqa: F401  (the torch.func fallback; patch.py reads _TORCH)
from . import _internal  # noqa: F401  (fake kernels of the shared internal ops)
# the import surface: each loss's function (F401: __all__ below is computed from the table)
from .cross_entropy import cross_entropy, nll_loss  # noqa: F401
from .linear_cross_entropy import linear_cross_entropy  # noqa: F401  (in __all__ where torch has it)
from .pointwise import (  # noqa: F401
    l1_loss, mse_loss, smooth_l1_loss, huber_loss, margin_ranking_loss, hinge_embedding_loss, soft_margin_loss, kl_div,
    binary_cross_entropy, binary_cross_entropy_with_logits, poisson_nll_loss, gaussian_nll_loss,
    multilabel_soft_margin_loss, sigmoid_focal_loss)
from .embedding import triplet_margin_loss, triplet_margin_with_distance_loss, cosine_embedding_loss  # noqa: F401
from .ctc import ctc_loss  # noqa: F401
from .margin_rows import multi_margin_loss, multilabel_margin_loss  # noqa: F401

# the losses of the table (fastloss/_losses.py) this torch has (linear_cross_entropy: torch >= 2.14)
__all__ = _losses.functional_names()
