"""Masking strategies: which positions the model must predict.

Everything here works on batched tensors, with no per-position Python loops, so masking can
run on the accelerator inside the training step. The pure functions take a ``maskable``
boolean tensor (``True`` where a position may be hidden: not padding, not a special token)
and an optional ``torch.Generator`` for reproducibility, and return a boolean mask
(``True`` = hidden, to be predicted). The ``Masking`` classes wrap them with configurable,
typed settings that LightningCLI exposes (``--model.masking.ratio 0.3``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mmm.checks import require_at_least


def _uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None):
    return torch.rand(shape, device=device, generator=generator)


#: A masking ratio: one float for the whole batch, or a (B,) float tensor, one per sample
#: (masked diffusion draws one per sample).
Ratio = float | Tensor


def per_sample(ratio: Ratio, batch: int, device: torch.device) -> Tensor:
    """``ratio`` as a (B,) float tensor on ``device``.

    Raises:
        ValueError: when a tensor ratio does not hold one value per sample.
    """
    ratios = torch.as_tensor(ratio, dtype=torch.float, device=device)
    if ratios.ndim == 0:
        return ratios.expand(batch)
    if ratios.shape != (batch,):
        raise ValueError(
            f"a per-sample ratio must have shape ({batch},), got {tuple(ratios.shape)}"
        )
    return ratios


def num_to_mask(count: Tensor, ratio: Ratio) -> Tensor:
    """Per-sample number of positions to hide: ``round(ratio * count)``, at least one when
    ``ratio > 0`` and the sample has a maskable position (a sample with nothing to predict
    contributes nothing to the loss and wastes its slot).

    Args:
        count: (B,) long, maskable positions per sample.
        ratio: a float, or (B,) per-sample ratios.
    """
    ratios = per_sample(ratio, count.shape[0], count.device)  # (B,)
    n = torch.round(count.float() * ratios).long()
    n = torch.where((ratios > 0) & (count > 0), n.clamp_min(1), n)
    return torch.minimum(n, count)


def random_mask(maskable: Tensor, ratio: Ratio, generator: torch.Generator | None = None) -> Tensor:
    """Hide exactly ``num_to_mask(n_maskable, ratio)`` uniformly chosen positions per sample.

    Args:
        maskable: (B, L) bool, positions that may be hidden.
        ratio: fraction of maskable positions to hide: a float, or (B,) per-sample ratios.
        generator: optional RNG for reproducible masks.

    Returns:
        (B, L) bool mask, ``True`` = hidden.
    """
    noise = _uniform(maskable.shape, maskable.device, generator)  # (B, L)
    noise = noise.masked_fill(~maskable, 2.0)  # unmaskable positions rank last
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, L) rank of each position
    budget = num_to_mask(maskable.sum(dim=1), ratio)  # (B,)
    return ranks < budget.unsqueeze(1)


def whole_word_mask(
    word_ids: Tensor, maskable: Tensor, ratio: Ratio, generator: torch.Generator | None = None
) -> Tensor:
    """Hide whole words: every sub-token of a chosen word is hidden together (BERT-wwm).

    Args:
        word_ids: (B, L) long, index of the word each token belongs to; negative for tokens
            that belong to no word (special tokens, padding).
        maskable: (B, L) bool.
        ratio: fraction of words to hide: a float, or (B,) per-sample ratios.

    Returns:
        (B, L) bool mask.
    """
    in_word = maskable & (word_ids >= 0)
    ids = word_ids.clamp(min=0)  # (B, L)
    num_words = int(ids.max().item()) + 1 if ids.numel() else 1
    counts = torch.zeros(word_ids.shape[0], num_words, dtype=torch.long, device=word_ids.device)
    # (B, W) which words occur in each sample; a sum, since positions outside words share slot 0
    present = counts.scatter_add_(1, ids, in_word.long()) > 0
    chosen = random_mask(present, ratio, generator)  # (B, W)
    return chosen.gather(1, ids) & in_word


def span_mask(
    maskable: Tensor,
    ratio: Ratio,
    mean_span_length: float = 3.0,
    max_span_length: int = 10,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hide contiguous spans with geometric lengths (SpanBERT), ``ratio`` of positions on average.

    Each position starts a span with probability ``q``; span lengths are drawn from a geometric
    distribution with mean ``mean_span_length``, clipped to ``max_span_length``; overlapping
    spans merge. ``q`` is set so that the expected covered fraction is ``ratio``:
    coverage ``= 1 - exp(-q * E[len])``, hence ``q = -log(1 - ratio) / E[len]``. Spans never
    cover unmaskable positions (they are cut there). ``ratio`` is a float or (B,) per-sample
    ratios.

    Returns:
        (B, L) bool mask.
    """
    batch, length = maskable.shape
    device = maskable.device
    ratios = per_sample(ratio, batch, device)  # (B,)
    if ((ratios < 0) | (ratios >= 1)).any():
        raise ValueError(f"span_mask needs 0 <= ratio < 1, got {ratio}")
    p = 1.0 / mean_span_length  # geometric success probability, E[len] = 1 / p
    expected_len = sum((1 - p) ** k for k in range(max_span_length))  # mean of the clipped law
    start_prob = (-torch.log1p(-ratios) / expected_len).unsqueeze(1)  # (B, 1)
    starts = _uniform((batch, length), device, generator) < start_prob  # (B, L)
    u = _uniform((batch, length), device, generator).clamp_min(1e-12)
    lengths = (torch.log(u) / math.log(1 - p)).floor().long() + 1 if p < 1 else torch.ones_like(u)
    lengths = lengths.long().clamp(max=max_span_length) * starts  # (B, L), 0 where no span
    # Difference array: +1 where a span starts, -1 just after it ends; a running sum > 0 marks
    # covered positions and merges overlapping spans.
    delta = torch.zeros(batch, length + max_span_length + 1, dtype=torch.long, device=device)
    positions = torch.arange(length, device=device).expand(batch, length)
    delta.scatter_add_(1, positions, starts.long())
    delta.scatter_add_(1, positions + lengths, -starts.long())
    covered = delta.cumsum(dim=1)[:, :length] > 0
    return covered & maskable


def block_mask(
    maskable: Tensor,
    grid: tuple[int, ...],
    ratio: Ratio,
    min_block: int = 4,
    min_aspect: float = 0.3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hide boxes of a grid of any rank (BEiT's block-wise masking on a 2-D grid: rectangles;
    spans on a 1-D one; cuboids on a 3-D one), exactly ``num_to_mask(n_maskable, ratio)``
    positions per sample.

    Each sample draws ``ceil(L / min_block)`` boxes at once with volumes uniform in
    ``[min_block, ratio * L]`` and log-uniform aspect ratios in ``[min_aspect, 1 / min_aspect]``
    between consecutive axes, at random places. Positions are ranked by the first box that
    covers them (random order within a box, uncovered positions last) and the top ``budget``
    are hidden: whole boxes in order, the last one partly. BEiT draws blocks one at a time
    until the budget is reached; ranking all at once gives the same kind of mask without a
    Python loop per sample and with an exact count, so every sample keeps the same number of
    visible positions. On a 2-D grid the draws are BEiT's (area, aspect, top, left).

    Args:
        maskable: (B, L) bool with ``L = prod(grid)``, positions in row-major order.
        grid: the grid's shape, any rank.
        ratio: fraction of maskable positions to hide: a float, or (B,) per-sample ratios.
        min_block: fewest positions in a box.
        min_aspect: most elongated box allowed (extent along one axis / the next).
        generator: optional RNG.

    Returns:
        (B, L) bool mask.
    """
    batch, length = maskable.shape
    rank = _check_grid("block_mask", grid, length)
    if not 0.0 < min_aspect <= 1.0:
        raise ValueError(f"block_mask: min_aspect must lie in (0, 1], got {min_aspect}")
    device = maskable.device
    num_blocks = math.ceil(length / min_block)
    ratios = per_sample(ratio, batch, device)  # (B,)
    box = (batch, num_blocks) + (1,) * rank  # broadcasts against the grid's axes
    max_volume = (ratios * length).clamp_min(float(min_block)).view(batch, *(1,) * (rank + 1))
    # 2 * rank draws per box: its volume, rank - 1 aspect ratios, rank offsets
    u = _uniform((2 * rank, *box), device, generator)
    volume = min_block + u[0] * (max_volume - min_block)
    log_extents = box_log_extents(volume.log(), math.log(min_aspect) * (1 - 2 * u[1:rank]))
    covered = torch.ones(box, dtype=torch.bool, device=device)  # (B, K, 1, ..., 1)
    for axis, size in enumerate(grid):
        extent = log_extents[axis].exp().round().clamp(1, size)  # (B, K, 1, ..., 1)
        offset = (u[rank + axis] * (size - extent + 1)).floor()
        shape = [1] * (rank + 2)
        shape[axis + 2] = size
        coordinate = torch.arange(size, device=device).view(shape)
        covered = covered & (coordinate >= offset) & (coordinate < offset + extent)
    # covered: (B, K, *grid)
    block_ids = torch.arange(num_blocks, device=device, dtype=torch.float).view(1, -1, *(1,) * rank)
    first = torch.where(covered, block_ids, float(num_blocks)).amin(dim=1)  # (B, *grid)
    # random order within a block: a uniform draw in [0, 1) never crosses to the next block
    score = first.reshape(batch, length) + _uniform((batch, length), device, generator)  # (B, L)
    score = score.masked_fill(~maskable, float("inf"))
    ranks = score.argsort(dim=1).argsort(dim=1)  # (B, L)
    return ranks < num_to_mask(maskable.sum(dim=1), ratio).unsqueeze(1)


def box_log_extents(log_volume: Tensor, log_aspects: Tensor) -> list[Tensor]:
    """The log extent of a box along each axis from its log volume and the log aspect ratios
    between consecutive axes: extents multiply to the volume, and on two axes they are
    BEiT's ``sqrt(area * aspect)`` by ``sqrt(area / aspect)``.

    Args:
        log_volume: (...) log volumes.
        log_aspects: (rank - 1, ...) log ratios of axis i's extent to axis i + 1's.

    Returns:
        rank tensors shaped like ``log_volume``.
    """
    rank = log_aspects.shape[0] + 1
    # axis i sits at sum(a_i..a_{rank-2}) above the last axis in log space; centre the offsets
    # so that they sum to zero and the product of the extents is the volume
    above_last = [log_aspects[i:].sum(dim=0) for i in range(rank - 1)] + [log_volume * 0]
    centre = sum(above_last) / rank
    return [log_volume / rank + offset - centre for offset in above_last]


def tube_mask(
    maskable: Tensor,
    grid: tuple[int, ...],
    ratio: Ratio,
    axis: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hide whole tubes: lines of positions along ``axis`` of the grid, all or none (VideoMAE's
    tube masking hides the same spatial patches in every frame, so a patch cannot be copied
    from its neighbour in time). ``num_to_mask(n_tubes, ratio)`` tubes per sample, chosen
    among the tubes that hold a maskable position.

    Args:
        maskable: (B, L) bool with ``L = prod(grid)``, positions in row-major order.
        grid: the grid's shape, rank >= 2 (on a 1-D grid a tube is the whole sample).
        ratio: fraction of tubes to hide: a float, or (B,) per-sample ratios.
        axis: the axis a tube runs along (0: time, the first axis of a video's grid).

    Returns:
        (B, L) bool mask.
    """
    batch, length = maskable.shape
    rank = _check_grid("tube_mask", grid, length)
    if rank < 2 or not 0 <= axis < rank:
        raise ValueError(
            f"tube_mask: need a grid of rank >= 2 and 0 <= axis < rank, got {grid}, {axis}"
        )
    # (B, *grid) -> (B, tubes, positions along the tube)
    along = maskable.view(batch, *grid).movedim(axis + 1, -1).reshape(batch, -1, grid[axis])
    chosen = random_mask(along.any(dim=-1), ratio, generator)  # (B, tubes)
    hidden = chosen.unsqueeze(-1).expand_as(along)  # (B, tubes, grid[axis])
    others = [size for i, size in enumerate(grid) if i != axis]
    hidden = hidden.reshape(batch, *others, grid[axis]).movedim(-1, axis + 1)  # (B, *grid)
    return hidden.reshape(batch, length) & maskable


def last_positions_mask(maskable: Tensor, grid: tuple[int, ...] | None, horizon: int) -> Tensor:
    """Hide the last ``horizon`` steps along the grid's first axis (time) that hold a maskable
    position, every position of those steps (forecasting as masking the future: the encoder
    sees the past only, the decoder predicts what follows).

    Args:
        maskable: (B, L) bool, positions in row-major order of ``grid`` (time outermost).
        grid: the grid's shape, time first; ``None`` for a sequence of time steps.
        horizon: steps to hide (each sample keeps at least its first maskable step visible).

    Returns:
        (B, L) bool mask.
    """
    batch, length = maskable.shape
    shape = tuple(grid) if grid is not None else (length,)
    _check_grid("last_positions_mask", shape, length)
    steps = maskable.view(batch, shape[0], -1)  # (B, T, positions per step)
    real = steps.any(dim=-1)  # (B, T)
    from_end = real.flip(1).cumsum(dim=1).flip(1)  # (B, T): real steps at or after each step
    budget = (real.sum(dim=1, keepdim=True) - 1).clamp(min=0, max=horizon)  # (B, 1)
    hidden = real & (from_end <= budget)  # (B, T)
    return hidden.unsqueeze(-1).expand_as(steps).reshape(batch, length) & maskable


def _check_grid(name: str, grid: tuple[int, ...], length: int) -> int:
    """The grid's rank, after checking it holds ``length`` positions."""
    if not grid or math.prod(grid) != length:
        raise ValueError(f"{name}: grid {tuple(grid)} does not match {length} positions")
    return len(grid)


def corrupt_tokens(
    input_ids: Tensor,
    mask: Tensor,
    mask_token_id: int,
    vocab_size: int,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """BERT's input corruption of hidden positions (Hugging Face ``DataCollatorForLanguageModeling``
    conventions): ``mask_replace_prob`` become the mask token, ``random_replace_prob`` a random
    token, the rest keep their original token. Unhidden positions are untouched.

    Args:
        input_ids: (B, L) long.
        mask: (B, L) bool, hidden positions.

    Returns:
        (B, L) long, corrupted copy of ``input_ids``.
    """
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
        raise ValueError(
            "mask_replace_prob + random_replace_prob must be <= 1, "
            f"got {mask_replace_prob} + {random_replace_prob}"
        )
    u = _uniform(input_ids.shape, input_ids.device, generator)  # (B, L)
    to_mask_token = mask & (u < mask_replace_prob)
    to_random = mask & (u >= mask_replace_prob) & (u < mask_replace_prob + random_replace_prob)
    random_ids = torch.randint(
        vocab_size, input_ids.shape, device=input_ids.device, generator=generator
    )
    corrupted = torch.where(to_mask_token, torch.full_like(input_ids, mask_token_id), input_ids)
    return torch.where(to_random, random_ids, corrupted)


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


def bernoulli_mask(
    maskable: Tensor, ratio: Ratio, generator: torch.Generator | None = None
) -> Tensor:
    """Hide every maskable position independently with probability ``ratio`` (the forward
    process of masked diffusion: the count per sample varies, as the ELBO assumes).

    Args:
        maskable: (B, L) bool.
        ratio: hiding probability: a float, or (B,) per sample.

    Returns:
        (B, L) bool mask.
    """
    ratios = per_sample(ratio, maskable.shape[0], maskable.device)  # (B,)
    return (_uniform(maskable.shape, maskable.device, generator) < ratios.unsqueeze(1)) & maskable


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
        offset = _uniform((1,), device, generator)
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
