"""Sharpness-aware optimizers: SAM, ASAM and CA-SAM, plus the batch-norm helper for their second pass.

    from casam.optim import SAM, ASAM, CASAM, frozen_bn_stats
"""

from casam.optim.bn import frozen_bn_stats
from casam.optim.casam import CASAM
from casam.optim.sam import ASAM, SAM

__all__ = ["SAM", "ASAM", "CASAM", "frozen_bn_stats"]
