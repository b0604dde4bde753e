"""fastloss: torch.nn losses as fused CPU and CUDA kernels, drop-in and exact.

    import fastloss
    loss = fastloss.CrossEntropyLoss(label_smoothing=0.1)(logits, target)
    loss = fastloss.functional.cross_entropy(logits, target, ignore_index=-100)
"""
import torch

from . import _C  # noqa: F401  (registers every op and kernel)
from ._registrations import grad_scale as _grad_scale_registration  # noqa: F401
from ._registrations import cross_entropy as _cross_entropy_registration  # noqa: F401
from ._registrations import pointwise as _pointwise_registration  # noqa: F401
from ._registrations import embedding as _embedding_registration  # noqa: F401
from ._registrations import ctc as _ctc_registration  # noqa: F401
from ._registrations import margin_rows as _margin_rows_registration  # noqa: F401
from . import functional  # noqa: E402
from .modules import (CrossEntropyLoss, NLLLoss, L1Loss, MSELoss, SmoothL1Loss, HuberLoss,  # noqa: E402
                      MarginRankingLoss, HingeEmbeddingLoss, TripletMarginLoss, TripletMarginWithDistanceLoss,
                      CosineEmbeddingLoss, CTCLoss, SoftMarginLoss, KLDivLoss, BCELoss, BCEWithLogitsLoss,
                      PoissonNLLLoss, GaussianNLLLoss, MultiLabelSoftMarginLoss, FocalLoss, MultiMarginLoss,
                      MultiLabelMarginLoss)
if "LinearCrossEntropyLoss" in modules.__all__:  # torch >= 2.14 has it
    from .modules import LinearCrossEntropyLoss  # noqa: E402,F401
from .patch import patch, unpatch, is_patched  # noqa: E402

__version__ = "0.1.0"

__all__ = ["functional", "CrossEntropyLoss", "NLLLoss", "L1Loss", "MSELoss", "SmoothL1Loss", "HuberLoss",
           "MarginRankingLoss", "HingeEmbeddingLoss", "TripletMarginLoss", "TripletMarginWithDistanceLoss",
           "CosineEmbeddingLoss", "CTCLoss", "SoftMarginLoss", "KLDivLoss", "BCELoss", "BCEWithLogitsLoss",
           "PoissonNLLLoss", "GaussianNLLLoss", "MultiLabelSoftMarginLoss", "FocalLoss", "MultiMarginLoss",
           "MultiLabelMarginLoss", "patch", "unpatch", "is_patched",
           "cuda_built", "set_target_validation"] + (["LinearCrossEntropyLoss"] if "LinearCrossEntropyLoss" in
                                                     modules.__all__ else [])


def cuda_built() -> bool:
    """True when this build contains the CUDA kernels (whether or not a GPU is visible)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastloss::cross_entropy", "CUDA")


def set_target_validation(enabled: bool) -> bool:
    """Check class-index targets on CUDA (default True). The check reads one flag back to the host
    once per call, outside CUDA graph capture. With it off, an out-of-range target gives a NaN loss
    and NaN gradient row instead of an IndexError; nothing is ever read or written out of bounds.
    Returns the previous setting. (CPU targets are always checked; it costs no sync there.)
    Process-wide: one atomic value shared by every thread and device; each call reads it once when
    it starts, so a call already running keeps the setting it started with."""
    return bool(torch.ops.fastloss._set_option("validate_targets", int(bool(enabled))))
