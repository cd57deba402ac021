"""E-step: draws of the random effects given the network output and the variances.

See :mod:`gmenn_formula.estep.sampler` for the sampler and
:mod:`gmenn_formula.estep.precondition` for the per-level whitening.
"""

from gmenn_formula.estep.precondition import (
    BlockWhitening,
    build_whitening,
    level_precision,
    linear_predictor,
    prior_precision_block,
    whitened_logdensity,
    whitening_from_precision,
)
from gmenn_formula.estep.sampler import (
    EpochInfo,
    SamplerConfig,
    SamplerState,
    default_initial_step_size,
    init,
    sample_epoch,
)

__all__ = [
    "BlockWhitening",
    "EpochInfo",
    "SamplerConfig",
    "SamplerState",
    "build_whitening",
    "default_initial_step_size",
    "init",
    "level_precision",
    "linear_predictor",
    "prior_precision_block",
    "sample_epoch",
    "whitened_logdensity",
    "whitening_from_precision",
]
