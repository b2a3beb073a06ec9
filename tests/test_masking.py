"""Masking statistics and invariants on large batches."""

from __future__ import annotations

import pytest
import torch

from mmm.masking import (
    DiffusionMasking,
    RandomMasking,
    SpanMasking,
    WholeWordMasking,
    bernoulli_mask,
    block_mask,
    corrupt_tokens,
    num_to_mask,
    random_mask,
    span_mask,
    whole_word_mask,
)
from mmm.models.sequences import visible_indices


def _maskable(batch: int = 256, length: int = 128, seed: int = 0) -> torch.Tensor:
    """Rows of varying real length with [CLS] at 0 and [SEP] at the end, padding after."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, length + 1, (batch,), generator=g)
    positions = torch.arange(length)
    real = positions < lengths[:, None]
    special = (positions == 0) | (positions == (lengths[:, None] - 1))
    return real & ~special


@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.4, 0.75])
def test_random_mask_exact_count_per_sample(ratio):
    maskable = _maskable()
    mask = random_mask(maskable, ratio, torch.Generator().manual_seed(1))
    expected = torch.round(maskable.sum(1).float() * ratio).long().clamp(min=1)
    assert torch.equal(mask.sum(1), expected)
    assert not (mask & ~maskable).any(), "special or pad position masked"


def test_random_mask_is_uniform_over_positions():
    maskable = torch.ones(4000, 20, dtype=torch.bool)
    mask = random_mask(maskable, 0.25, torch.Generator().manual_seed(0))
    per_position = mask.float().mean(0)
    assert torch.allclose(per_position, torch.full((20,), 0.25), atol=0.03)


def test_masks_are_reproducible_with_a_seed():
    maskable = _maskable()
    first = random_mask(maskable, 0.15, torch.Generator().manual_seed(7))
    second = random_mask(maskable, 0.15, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


def test_corruption_split_matches_configuration():
    ids = torch.randint(10, 1000, (512, 128))
    mask = random_mask(
        torch.ones_like(ids, dtype=torch.bool), 0.5, torch.Generator().manual_seed(0)
    )
    corrupted = corrupt_tokens(
        ids,
        mask,
        mask_token_id=3,
        vocab_size=1000,
        mask_replace_prob=0.7,
        random_replace_prob=0.2,
        generator=torch.Generator().manual_seed(1),
    )
    hidden = mask.sum().item()
    as_mask = (corrupted[mask] == 3).sum().item() / hidden
    unchanged = (corrupted[mask] == ids[mask]).sum().item() / hidden
    assert as_mask == pytest.approx(0.7, abs=0.01)
    # random tokens equal the original 1/1000 of the time
    assert unchanged == pytest.approx(0.1 + 0.2 / 1000, abs=0.01)
    assert torch.equal(corrupted[~mask], ids[~mask]), "visible positions must be untouched"


def test_whole_word_masking_masks_whole_words():
    # words of 1-3 sub-tokens; -1 marks special/pad positions
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(128):
        sizes = torch.randint(1, 4, (100,), generator=g)
        ids = torch.repeat_interleave(torch.arange(100), sizes)[:100]
        rows.append(torch.cat([torch.tensor([-1]), ids, torch.full((27,), -1)]))
    word_ids = torch.stack(rows)  # (B, 128)
    maskable = word_ids >= 0
    mask = whole_word_mask(word_ids, maskable, 0.3, torch.Generator().manual_seed(1))
    for row_ids, row_mask in zip(word_ids, mask, strict=True):
        for word in row_ids[row_ids >= 0].unique():
            tokens = row_mask[row_ids == word]
            assert tokens.all() or not tokens.any(), "a word was partly masked"
    assert not (mask & ~maskable).any()
    words = torch.tensor([len(r[r >= 0].unique()) for r in word_ids])
    masked_words = torch.tensor([len(r[m].unique()) for r, m in zip(word_ids, mask, strict=True)])
    assert torch.equal(masked_words, torch.round(words * 0.3).long())


@pytest.mark.parametrize(("ratio", "mean_span"), [(0.15, 3.0), (0.3, 3.0), (0.5, 5.0)])
def test_span_masking_ratio_and_contiguity(ratio, mean_span):
    maskable = torch.ones(512, 256, dtype=torch.bool)
    mask = span_mask(
        maskable,
        ratio,
        mean_span_length=mean_span,
        max_span_length=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert mask.float().mean().item() == pytest.approx(ratio, abs=0.02)
    # runs of masked positions are longer than independent masking would give
    starts = mask[:, 1:] & ~mask[:, :-1]
    mean_run = mask.sum().item() / max(starts.sum().item() + mask[:, 0].sum().item(), 1)
    assert mean_run > 1.0 / (1.0 - ratio) + 0.5


def test_span_masking_never_touches_unmaskable_positions():
    maskable = _maskable()
    mask = span_mask(maskable, 0.3, generator=torch.Generator().manual_seed(0))
    assert not (mask & ~maskable).any()


def test_ratio_schedule_moves_linearly():
    masking = RandomMasking(ratio=0.3, final_ratio=0.15, schedule_steps=100)
    assert masking.ratio_at(0) == pytest.approx(0.3)
    assert masking.ratio_at(50) == pytest.approx(0.225)
    assert masking.ratio_at(1000) == pytest.approx(0.15)
    out = masking(torch.ones(8, 100, dtype=torch.bool), step=50)
    assert out.ratio.tolist() == pytest.approx([0.225] * 8)
    assert torch.equal(out.mask.sum(1), torch.full((8,), 22))


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (RandomMasking, {"ratio": 1.5}, "ratio"),
        (RandomMasking, {"mask_replace_prob": 0.8, "random_replace_prob": 0.3}, "<= 1"),
        (RandomMasking, {"final_ratio": 0.1}, "schedule_steps"),
        (SpanMasking, {"mean_span_length": 0.5}, "mean_span_length"),
    ],
)
def test_invalid_settings_name_the_argument(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_whole_word_masking_without_word_ids_is_an_error():
    with pytest.raises(ValueError, match="word_ids"):
        WholeWordMasking()(torch.ones(2, 8, dtype=torch.bool))


def test_visible_indices_pack_visible_positions_first():
    visible = torch.tensor([[True, False, True, True], [False, True, False, False]])
    ids_keep, keep_valid = visible_indices(visible)
    assert ids_keep[0].tolist() == [0, 2, 3]
    assert ids_keep[1, 0].item() == 1
    assert keep_valid.tolist() == [[True, True, True], [True, False, False]]


def test_per_sample_ratios_give_each_sample_its_own_count():
    maskable = _maskable(batch=6)
    ratios = torch.tensor([0.1, 0.2, 0.4, 0.6, 0.8, 0.95])
    mask = random_mask(maskable, ratios, torch.Generator().manual_seed(0))
    expected = torch.round(maskable.sum(1).float() * ratios).long().clamp(min=1)
    assert torch.equal(mask.sum(1), expected)
    assert torch.equal(num_to_mask(maskable.sum(1), ratios), expected)
    assert torch.equal(num_to_mask(torch.tensor([5, 0]), torch.tensor([0.0, 0.5])), torch.zeros(2))


@pytest.mark.parametrize("strategy", ["span", "block", "whole_word"])
def test_every_strategy_takes_per_sample_ratios(strategy):
    maskable = torch.ones(400, 64, dtype=torch.bool)
    ratios = torch.tensor([0.1, 0.5]).repeat(200)  # (B,) alternating
    g = torch.Generator().manual_seed(0)
    if strategy == "span":
        mask = span_mask(maskable, ratios, generator=g)
    elif strategy == "block":
        mask = block_mask(maskable, (8, 8), ratios, generator=g)
    else:
        word_ids = torch.arange(64).expand(400, 64) // 2  # two tokens per word
        mask = whole_word_mask(word_ids, maskable, ratios, generator=g)
    shares = mask.float().mean(1)
    assert shares[0::2].mean().item() == pytest.approx(0.1, abs=0.03)
    assert shares[1::2].mean().item() == pytest.approx(0.5, abs=0.03)


def test_a_per_sample_ratio_of_the_wrong_shape_is_an_error():
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        random_mask(torch.ones(4, 8, dtype=torch.bool), torch.tensor([0.1, 0.2]))


def test_bernoulli_mask_hides_each_position_with_its_sample_probability():
    maskable = _maskable(batch=2000, length=32)
    ratios = torch.tensor([0.2, 0.7]).repeat(1000)
    mask = bernoulli_mask(maskable, ratios, torch.Generator().manual_seed(0))
    assert not (mask & ~maskable).any()
    share = mask.sum(1).float() / maskable.sum(1)
    assert share[0::2].mean().item() == pytest.approx(0.2, abs=0.01)
    assert share[1::2].mean().item() == pytest.approx(0.7, abs=0.01)
    counts = mask[0::2].sum(1).float()
    assert counts.var() > 1.0, "counts vary per sample (independent positions), not exact"


def test_diffusion_masking_settings_are_validated():
    with pytest.raises(ValueError, match="schedule"):
        DiffusionMasking(schedule="square")
    with pytest.raises(ValueError, match="min_t"):
        DiffusionMasking(min_t=0.0)
    with pytest.raises(ValueError, match="eval_times"):
        DiffusionMasking(eval_times=0)
