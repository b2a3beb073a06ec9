"""Masked diffusion (MDLM): noise schedules, and the masking that draws each sample's
ratio from one and weights its loss into a bound on the NLL.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

from mmm.checks import require_at_least
from mmm.masking.functions import bernoulli_mask
from mmm.masking.strategies import MaskedPositions, Masking


class NoiseSchedule(ABC):
    """How much of a sequence masked diffusion hides at time ``t`` in (0, 1], and how the
    loss at ``t`` is weighted so that its integral over ``t`` bounds the NLL (MDLM, eq. 10):
    with ``alpha(t)`` the probability that a token is still visible,
    ``mask_probability(t) = 1 - alpha(t)`` and ``elbo_weight(t) = -alpha'(t) / (1 - alpha(t))``.
    ``alpha(0) = 1`` for every schedule, so the reverse process unmasks everything by t = 0.
    """

    @abstractmethod
    def mask_probability(self, t: Tensor) -> Tensor:
        """``1 - alpha(t)``, elementwise."""

    @abstractmethod
    def elbo_weight(self, t: Tensor) -> Tensor:
        """``-alpha'(t) / (1 - alpha(t))``, elementwise, for ``t`` in (0, 1]."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearSchedule(NoiseSchedule):
    """``alpha(t) = 1 - t``: a fraction ``t`` hidden, weight ``1 / t``."""

    def mask_probability(self, t: Tensor) -> Tensor:
        return t

    def elbo_weight(self, t: Tensor) -> Tensor:
        return 1.0 / t


class LogLinearSchedule(NoiseSchedule):
    """MDLM's default, ``alpha(t) = 1 - (1 - eps) t`` (total noise ``-log(1 - (1 - eps) t)``
    is log-linear): as linear, but a token stays visible with probability ``eps`` at t = 1.
    Weight ``1 / t``."""

    def __init__(self, eps: float = 1e-3) -> None:
        self.eps = eps

    def mask_probability(self, t: Tensor) -> Tensor:
        return (1.0 - self.eps) * t

    def elbo_weight(self, t: Tensor) -> Tensor:
        return 1.0 / t


class CosineSchedule(NoiseSchedule):
    """``alpha(t) = 1 - sin(pi t / 2)`` (MaskGIT's cosine mask ratio, MD4): more of a
    sequence hidden early, weight ``(pi / 2) cos(pi t / 2) / sin(pi t / 2)``."""

    def mask_probability(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def elbo_weight(self, t: Tensor) -> Tensor:
        angle = 0.5 * math.pi * t
        # cos(pi/2) is -4e-8 in float32, not 0: clamp so the weight at t = 1 is never negative
        return (0.5 * math.pi * torch.cos(angle) / torch.sin(angle)).clamp_min(0.0)


NOISE_SCHEDULES: dict[str, NoiseSchedule] = {
    "linear": LinearSchedule(),
    "loglinear": LogLinearSchedule(),
    "cosine": CosineSchedule(),
}
ScheduleName = Literal["linear", "loglinear", "cosine"]


class DiffusionMasking(Masking):
    """Masked diffusion (MDLM, Sahoo et al. 2024): the masking of a discrete diffusion model.

    Each sample draws a time ``t`` in ``[min_t, 1]`` (stratified across the batch: one draw in
    each of ``B`` equal bins, MDLM's low-discrepancy sampler), every maskable token is hidden
    independently with probability ``mask_probability(t)``, hidden tokens are shown as the
    mask token only (the absorbing state; no 80/10/10), and each hidden token's cross-entropy
    is weighted by ``elbo_weight(t)`` (``1 / t`` for the linear schedule), summed and divided
    by the number of maskable tokens: the loss is an upper bound on the NLL per token. The
    model is the usual masked-token model, so ``mmm generate`` samples from it.

    Held-out batches are scored at ``eval_times`` fixed times (midpoints of equal bins of
    ``[min_t, 1]``) with masks from a generator seeded with ``eval_seed`` for each batch, and
    the losses averaged: ``val/loss`` is a deterministic estimate of the NLL bound per token,
    ``val/<modality>/perplexity`` its exponential, comparable across runs.

    The fixed-ratio settings of ``Masking`` (``ratio``, ``final_ratio``, ``schedule_steps``)
    do not apply: the noise schedule sets each sample's ratio.

    Args:
        schedule: the noise schedule, ``linear`` (``alpha = 1 - t``), ``loglinear`` (MDLM's
            default) or ``cosine``.
        min_t: smallest training time (MDLM's ``sampling_eps``); it bounds the weight
            ``1 / t`` at ``1 / min_t``.
        eval_times: how many fixed times each held-out batch is scored at.
        eval_seed: seed of the held-out masks.
    """

    def __init__(
        self,
        schedule: ScheduleName = "linear",
        min_t: float = 1e-3,
        eval_times: int = 8,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(mask_replace_prob=1.0, random_replace_prob=0.0)
        if schedule not in NOISE_SCHEDULES:
            raise ValueError(
                f"DiffusionMasking: schedule must be one of {sorted(NOISE_SCHEDULES)}, "
                f"got {schedule!r}"
            )
        if not 0.0 < min_t < 1.0:
            raise ValueError(f"DiffusionMasking: min_t must lie in (0, 1), got {min_t}")
        require_at_least("DiffusionMasking", 1, eval_times=eval_times)
        self.schedule = schedule
        self.min_t = min_t
        self.eval_times = eval_times
        self.eval_seed = eval_seed

    @property
    def noise(self) -> NoiseSchedule:
        return NOISE_SCHEDULES[self.schedule]

    def noise_levels(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Masking ratios and loss weights at times ``t``, both shaped like ``t``."""
        return self.noise.mask_probability(t), self.noise.elbo_weight(t)

    def sample_ratios(self, batch_size, step, device, generator):
        offset = torch.rand((1,), device=device, generator=generator)
        strata = torch.arange(batch_size, device=device) / batch_size  # (B,)
        t = self.min_t + (1.0 - self.min_t) * ((offset + strata) % 1.0)  # (B,) one per bin
        return self.noise_levels(t)

    def select(self, maskable, ratio, word_ids, grid, generator):
        return bernoulli_mask(maskable, ratio, generator)

    def evaluation_times(self) -> Tensor:
        """The fixed held-out times, (eval_times,): midpoints of equal bins of [min_t, 1]."""
        midpoints = (torch.arange(self.eval_times, dtype=torch.float) + 0.5) / self.eval_times
        return self.min_t + (1.0 - self.min_t) * midpoints

    def evaluation_masks(self, maskable, step=0, word_ids=None, grid=None):
        batch, device = maskable.shape[0], maskable.device
        generator = torch.Generator(device=device).manual_seed(self.eval_seed)
        masks = []
        for t in self.evaluation_times().tolist():
            ratio, weight = self.noise_levels(torch.full((batch,), t, device=device))
            masks.append(MaskedPositions(bernoulli_mask(maskable, ratio, generator), ratio, weight))
        return masks
