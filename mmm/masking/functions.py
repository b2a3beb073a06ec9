"""Mask functions: which positions of a batch to hide, as pure functions on batched tensors.

Each takes a ``maskable`` boolean tensor (``True`` where a position may be hidden: not
padding, not a special token) and an optional ``torch.Generator`` for reproducibility, and
returns a boolean mask (``True`` = hidden, to be predicted), with no per-position Python
loops, so that masking can run on the accelerator inside the training step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
