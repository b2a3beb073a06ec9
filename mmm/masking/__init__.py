"""Masking: which positions the model must predict.

One concept per file:

- ``functions``: the pure mask functions on batched tensors (random, whole-word, span, block,
  tube, last-positions, Bernoulli) and BERT's token corruption;
- ``strategies``: the configurable ``Masking`` classes a config names
  (``mmm.masking.RandomMasking``), and ``MaskedPositions``, what they return;
- ``diffusion``: masked diffusion's noise schedules and ``DiffusionMasking``.
"""

from mmm.masking.diffusion import (
    NOISE_SCHEDULES,
    CosineSchedule,
    DiffusionMasking,
    LinearSchedule,
    LogLinearSchedule,
    NoiseSchedule,
    ScheduleName,
)
from mmm.masking.functions import (
    Ratio,
    bernoulli_mask,
    block_mask,
    box_log_extents,
    corrupt_tokens,
    last_positions_mask,
    num_to_mask,
    per_sample,
    random_mask,
    span_mask,
    tube_mask,
    whole_word_mask,
)
from mmm.masking.strategies import (
    BlockMasking,
    ForecastMasking,
    MaskedPositions,
    Masking,
    RandomMasking,
    SpanMasking,
    TubeMasking,
    WholeWordMasking,
)

__all__ = [
    "NOISE_SCHEDULES",
    "BlockMasking",
    "CosineSchedule",
    "DiffusionMasking",
    "ForecastMasking",
    "LinearSchedule",
    "LogLinearSchedule",
    "MaskedPositions",
    "Masking",
    "NoiseSchedule",
    "RandomMasking",
    "Ratio",
    "ScheduleName",
    "SpanMasking",
    "TubeMasking",
    "WholeWordMasking",
    "bernoulli_mask",
    "block_mask",
    "box_log_extents",
    "corrupt_tokens",
    "last_positions_mask",
    "num_to_mask",
    "per_sample",
    "random_mask",
    "span_mask",
    "tube_mask",
    "whole_word_mask",
]
