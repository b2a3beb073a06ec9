"""Masking strategies: the configurable classes that choose what a model must predict.

Each ``Masking`` wraps a mask function (``mmm.masking.functions``) with typed settings that
LightningCLI exposes (``--model.masking.ratio 0.3``): a ratio and its schedule, and, for token
inputs, BERT's replacement split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmm.checks import require_at_least
from mmm.masking.functions import (
    block_mask,
    last_positions_mask,
    random_mask,
    span_mask,
    tube_mask,
    whole_word_mask,
)


@dataclass(frozen=True)
class MaskedPositions:
    """The outcome of masking a batch.

    Attributes:
        mask: (B, L) bool, ``True`` where a position is hidden and must be predicted.
        ratio: (B,) float, each sample's masking ratio (it may follow a schedule, or be drawn
            per sample as in masked diffusion).
        weight: (B,) float, the loss weight of every hidden position of a sample, or ``None``.
            ``None``: hidden positions count alike and the loss is their mean (BERT, MAE).
            Set: the loss is ``sum_b weight_b * (sum of sample b's hidden-position losses)``
            divided by the number of maskable positions in the batch, a per-token loss
            (masked diffusion's ELBO weights make it a bound on the NLL per token).
        mask_only: (B,) bool, samples whose hidden positions all show the mask token (no
            random or original tokens: a whole dropped modality or a 4M target must not leak
            into its own prediction), or ``None``.
        left_out: (B, L) bool, positions neither shown to the encoder nor predicted (4M's
            token budgets leave most positions out), or ``None``.
    """

    mask: Tensor
    ratio: Tensor
    weight: Tensor | None = None
    mask_only: Tensor | None = None
    left_out: Tensor | None = None

    def position_weights(self, maskable: Tensor) -> Tensor | None:
        """The loss weight of each hidden position, (N,) in row-major order of ``mask``, such
        that the loss is the weighted sum of the positions' losses; ``None`` for a plain mean.

        Args:
            maskable: (B, L) bool, the batch's maskable positions (the per-token denominator).
        """
        if self.weight is None:
            return None
        per_position = self.weight.unsqueeze(1).expand_as(self.mask)[self.mask]  # (N,)
        return per_position / maskable.sum().clamp_min(1)

    def loss_count(self, maskable: Tensor) -> int:
        """How many positions the loss is a mean over (a batch's weight in an epoch mean):
        the hidden ones, or every maskable one when the loss is per token."""
        return int((self.mask if self.weight is None else maskable).sum())


class Masking:
    """Base of the masking strategies: a ratio, an optional linear ratio schedule, and BERT's
    replacement split for discrete inputs.

    Args:
        ratio: fraction of maskable positions hidden (15% is BERT's default, 40% was found
            better for larger models in "Should You Mask 15% in MLM?"; MAE uses 75%).
        final_ratio: if set, the ratio moves linearly from ``ratio`` to ``final_ratio`` over
            ``schedule_steps`` optimizer steps and stays there ("Dynamic Masking Rate
            Schedules for MLM Pretraining": 0.30 -> 0.15).
        schedule_steps: length of the schedule in optimizer steps.
        mask_replace_prob: for discrete inputs, fraction of hidden positions shown as the mask
            token.
        random_replace_prob: for discrete inputs, fraction of hidden positions shown as a
            random token; the rest show the original token.
    """

    def __init__(
        self,
        ratio: float = 0.15,
        final_ratio: float | None = None,
        schedule_steps: int = 0,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
    ) -> None:
        for name, value in (("ratio", ratio), ("final_ratio", final_ratio)):
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"Masking: {name} must lie in (0, 1), got {value}")
        if final_ratio is not None and schedule_steps <= 0:
            raise ValueError("Masking: final_ratio needs schedule_steps > 0")
        for name, value in (
            ("mask_replace_prob", mask_replace_prob),
            ("random_replace_prob", random_replace_prob),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Masking: {name} must lie in [0, 1], got {value}")
        if mask_replace_prob + random_replace_prob > 1.0:
            raise ValueError(
                "Masking: mask_replace_prob + random_replace_prob must be <= 1, got "
                f"{mask_replace_prob} + {random_replace_prob}"
            )
        self.ratio = ratio
        self.final_ratio = final_ratio
        self.schedule_steps = schedule_steps
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob

    def ratio_at(self, step: int) -> float:
        """The masking ratio at optimizer step ``step``."""
        if self.final_ratio is None:
            return self.ratio
        progress = min(max(step, 0) / self.schedule_steps, 1.0)
        return self.ratio + (self.final_ratio - self.ratio) * progress

    def __call__(
        self,
        maskable: Tensor,
        step: int = 0,
        word_ids: Tensor | None = None,
        generator: torch.Generator | None = None,
        grid: tuple[int, ...] | None = None,
    ) -> MaskedPositions:
        """Choose the hidden positions of a batch.

        Args:
            maskable: (B, L) bool, ``False`` at padding and special positions.
            step: the optimizer step, for ratio schedules.
            word_ids: (B, L) long word index per token (negative outside words), used by
                whole-word masking and ignored by the other strategies.
            generator: optional RNG.
            grid: the positions' grid shape (any rank) when they form a grid, used by block,
                tube and forecast masking and ignored by the other strategies.
        """
        ratio, weight = self.sample_ratios(maskable.shape[0], step, maskable.device, generator)
        mask = self.select(maskable, ratio, word_ids, grid, generator)
        return MaskedPositions(mask, ratio, weight)

    def sample_ratios(
        self, batch_size: int, step: int, device: torch.device, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        """Per-sample masking ratios, (B,), and per-sample loss weights of hidden positions,
        (B,) or ``None`` (see ``MaskedPositions``). Here: the scheduled ratio for every sample,
        no weights."""
        return torch.full((batch_size,), self.ratio_at(step), device=device), None

    def select(
        self,
        maskable: Tensor,
        ratio: Tensor,
        word_ids: Tensor | None,
        grid: tuple[int, ...] | None,
        generator: torch.Generator | None,
    ) -> Tensor:
        """The strategy itself: (B, L) bool hidden positions at the (B,) per-sample ``ratio``."""
        raise NotImplementedError

    def evaluation_masks(
        self,
        maskable: Tensor,
        step: int = 0,
        word_ids: Tensor | None = None,
        grid: tuple[int, ...] | None = None,
    ) -> list[MaskedPositions]:
        """The masks a held-out batch is scored under (its losses are averaged): one draw of
        the training masking here; masked diffusion scores a fixed set of noise levels."""
        return [self(maskable, step=step, word_ids=word_ids, grid=grid)]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class RandomMasking(Masking):
    """Hide a uniformly random subset of positions, the exact ratio in every sample."""

    def select(self, maskable, ratio, word_ids, grid, generator):
        return random_mask(maskable, ratio, generator)


class WholeWordMasking(Masking):
    """Hide whole words (all sub-tokens of a word together); the ratio counts words.

    Needs ``word_ids`` in the batch (``TextTokenizer`` provides them).
    """

    def select(self, maskable, ratio, word_ids, grid, generator):
        if word_ids is None:
            raise ValueError(
                "WholeWordMasking needs word_ids in the batch; this tokenizer gives none "
                "(use RandomMasking or SpanMasking for it)"
            )
        return whole_word_mask(word_ids, maskable, ratio, generator)


class SpanMasking(Masking):
    """Hide contiguous spans with geometric lengths (SpanBERT); ratio is the expected fraction.

    Args:
        mean_span_length: mean of the geometric span-length law before clipping.
        max_span_length: longest span.
        **kwargs: the ``Masking`` settings.
    """

    def __init__(self, mean_span_length: float = 3.0, max_span_length: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        require_at_least(
            "SpanMasking", 1, mean_span_length=mean_span_length, max_span_length=max_span_length
        )
        self.mean_span_length = mean_span_length
        self.max_span_length = max_span_length

    def select(self, maskable, ratio, word_ids, grid, generator):
        return span_mask(
            maskable,
            ratio,
            mean_span_length=self.mean_span_length,
            max_span_length=self.max_span_length,
            generator=generator,
        )


class BlockMasking(Masking):
    """Hide boxes of patches (BEiT's block-wise masking: rectangles on a 2-D grid, spans on a
    1-D one, cuboids on a 3-D one), the exact ratio in every sample; needs positions laid out
    on a grid (the tokenizer's ``spec.grid``).

    Args:
        ratio: fraction of patches hidden (MAE-style default; BEiT uses 0.4).
        min_block: fewest patches in a block (BEiT: 16 of a 14x14 grid).
        min_aspect: most elongated block shape (height / width), BEiT: 0.3.
        **kwargs: the ``Masking`` settings.
    """

    def __init__(
        self, ratio: float = 0.75, min_block: int = 4, min_aspect: float = 0.3, **kwargs
    ) -> None:
        super().__init__(ratio=ratio, **kwargs)
        require_at_least("BlockMasking", 1, min_block=min_block)
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"BlockMasking: min_aspect must lie in (0, 1], got {min_aspect}")
        self.min_block = min_block
        self.min_aspect = min_aspect

    def select(self, maskable, ratio, word_ids, grid, generator):
        if grid is None:
            raise ValueError(
                "BlockMasking needs positions on a grid; this tokenizer's spec has no grid "
                "(use RandomMasking for it)"
            )
        return block_mask(
            maskable,
            grid,
            ratio,
            min_block=self.min_block,
            min_aspect=self.min_aspect,
            generator=generator,
        )


class TubeMasking(Masking):
    """Hide whole tubes of a grid (VideoMAE: the same spatial patches in every frame, 90% of
    them), the exact ratio of tubes in every sample; needs a grid of rank >= 2.

    Args:
        ratio: fraction of tubes hidden (VideoMAE: 0.9).
        axis: the grid axis a tube runs along (0: time, the first axis of a video's grid; on
            a time series' (time, channel) grid, ``1`` hides every channel of a time step).
        **kwargs: the ``Masking`` settings.
    """

    def __init__(self, ratio: float = 0.9, axis: int = 0, **kwargs) -> None:
        super().__init__(ratio=ratio, **kwargs)
        if axis < 0:
            raise ValueError(f"TubeMasking: axis must be >= 0, got {axis}")
        self.axis = axis

    def select(self, maskable, ratio, word_ids, grid, generator):
        if grid is None or len(grid) <= self.axis or len(grid) < 2:
            raise ValueError(
                f"TubeMasking(axis={self.axis}) needs positions on a grid of rank >= 2 with that "
                f"axis; this tokenizer's spec has grid {grid} (use RandomMasking for it)"
            )
        return tube_mask(maskable, grid, ratio, axis=self.axis, generator=generator)


class ForecastMasking(Masking):
    """Forecasting as masking the future: hide the last ``horizon`` time steps of every sample
    (the grid's first axis; every channel of them), so that the encoder sees the past and
    the decoder predicts what follows (PatchTST's and MOMENT's forecasting read as a masked
    reconstruction). Deterministic: the same positions are hidden in training and held-out
    batches. ``ratio`` settings do not apply; the reported ratio is the hidden fraction.

    Args:
        horizon: time steps hidden at the end of each sample (patches of a time series).
    """

    def __init__(self, horizon: int = 1) -> None:
        super().__init__()
        if horizon < 1:
            raise ValueError(f"ForecastMasking: horizon must be >= 1, got {horizon}")
        self.horizon = horizon

    def __call__(self, maskable, step=0, word_ids=None, generator=None, grid=None):
        mask = last_positions_mask(maskable, grid, self.horizon)
        hidden = mask.sum(dim=1).float() / maskable.sum(dim=1).clamp_min(1)  # (B,)
        return MaskedPositions(mask, hidden)

    def select(self, maskable, ratio, word_ids, grid, generator):
        return last_positions_mask(maskable, grid, self.horizon)
