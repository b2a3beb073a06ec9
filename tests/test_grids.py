"""Grids of any rank: 1-D patched series, 2-D images, 3-D video tubelets.

The spec's grid decides the rank of the position codes, the embedder and decoder tables, and
of block, tube and forecast masking; nothing assumes two axes.
"""

from __future__ import annotations

import math

import pytest
import torch

from mmm.masking import (
    BlockMasking,
    ForecastMasking,
    TubeMasking,
    block_mask,
    box_log_extents,
    last_positions_mask,
    tube_mask,
)
from mmm.models.embedders import PatchEmbedder, sincos_positions
from mmm.models.heads import PatchDecoder, PatchDecoderConfig
from mmm.tokenizers.base import ContinuousSpec

GRIDS = [(12,), (4, 6), (2, 3, 4)]


@pytest.mark.parametrize("grid", GRIDS, ids=["rank1", "rank2", "rank3"])
def test_block_mask_hides_the_exact_count_in_boxes_of_the_grids_rank(grid):
    length = math.prod(grid)
    maskable = torch.ones(64, length, dtype=torch.bool)
    maskable[:, -2:] = False  # unmaskable tail positions are never hidden
    mask = block_mask(maskable, grid, 0.5, min_block=2, generator=torch.Generator().manual_seed(0))
    expected = round((length - 2) * 0.5)
    assert mask.sum(1).eq(expected).all()
    assert not (mask & ~maskable).any()


def test_block_mask_on_a_2d_grid_draws_beits_rectangles():
    """Two axes: the extents are sqrt(area * aspect) by sqrt(area / aspect), as before ranks."""
    area, aspect = torch.tensor([12.0]), torch.tensor([[math.log(3.0)]])
    rows, cols = (e.exp() for e in box_log_extents(area.log(), aspect))
    assert rows.item() == pytest.approx(math.sqrt(36.0))
    assert cols.item() == pytest.approx(math.sqrt(4.0))


def test_box_extents_multiply_to_the_volume_at_rank_3():
    volume, aspects = torch.tensor([24.0]), torch.tensor([[0.4], [-0.9]])
    extents = [e.exp() for e in box_log_extents(volume.log(), aspects)]
    assert math.prod(e.item() for e in extents) == pytest.approx(24.0)
    assert (extents[0] / extents[1]).log().item() == pytest.approx(0.4)


def test_a_3d_tube_mask_hides_whole_tubes():
    grid = (4, 3, 5)  # (frames, rows, cols)
    maskable = torch.ones(32, math.prod(grid), dtype=torch.bool)
    mask = tube_mask(maskable, grid, 0.6, generator=torch.Generator().manual_seed(0))
    frames = mask.view(32, *grid)
    assert torch.equal(frames, frames[:, :1].expand_as(frames)), "a tube is hidden in every frame"
    assert frames[:, 0].flatten(1).sum(1).eq(round(15 * 0.6)).all()


def test_tube_masking_runs_along_the_named_axis_and_needs_rank_2():
    grid = (6, 3)  # a time series: (time, channel)
    maskable = torch.ones(8, 18, dtype=torch.bool)
    mask = TubeMasking(ratio=0.5, axis=1)(maskable, grid=grid).mask.view(8, *grid)
    assert torch.equal(mask, mask[:, :, :1].expand_as(mask)), "every channel of a step together"
    with pytest.raises(ValueError, match="rank >= 2"):
        TubeMasking()(torch.ones(2, 6, dtype=torch.bool), grid=(6,))


@pytest.mark.parametrize("grid", [None, (6,), (6, 2)], ids=["sequence", "rank1", "rank2"])
def test_forecast_masking_hides_the_last_real_steps(grid):
    steps, per_step = 6, 1 if grid is None or len(grid) == 1 else 2
    real_steps = torch.tensor([6, 4, 1])
    real = (torch.arange(steps) < real_steps[:, None]).repeat_interleave(per_step, dim=1)
    mask = ForecastMasking(horizon=2)(real, grid=grid).mask.view(3, steps, per_step)
    hidden_steps = mask.all(dim=2)
    assert torch.equal(hidden_steps[0], torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.bool))
    assert torch.equal(hidden_steps[1], torch.tensor([0, 0, 1, 1, 0, 0], dtype=torch.bool))
    assert not mask[2].any(), "a one-step sample keeps its only step visible"
    assert torch.equal(mask.any(dim=2), hidden_steps), "all channels of a hidden step"


def test_forecast_masking_is_deterministic_and_rejects_no_horizon():
    maskable = torch.ones(2, 10, dtype=torch.bool)
    assert torch.equal(last_positions_mask(maskable, (10,), 3), ForecastMasking(3)(maskable).mask)
    with pytest.raises(ValueError, match="horizon"):
        ForecastMasking(horizon=0)


def test_block_masking_reports_a_missing_grid():
    with pytest.raises(ValueError, match="needs positions on a grid"):
        BlockMasking()(torch.ones(2, 8, dtype=torch.bool))


@pytest.mark.parametrize("grid", GRIDS, ids=["rank1", "rank2", "rank3"])
def test_sincos_positions_code_every_axis_and_fill_odd_widths(grid):
    codes = sincos_positions(grid, 32)  # 32 is not a multiple of 6 at rank 3
    assert codes.shape == (math.prod(grid), 32)
    assert torch.unique(codes, dim=0).shape[0] == math.prod(grid), "every position distinct"
    if len(grid) == 3:
        assert codes[:, 30:].eq(0).all(), "the two spare channels are zero"


@pytest.mark.parametrize("grid", GRIDS, ids=["rank1", "rank2", "rank3"])
def test_patch_embedder_and_decoder_round_trip_shapes_at_any_rank(grid):
    spec = ContinuousSpec(input_dim=10, max_length=math.prod(grid), grid=grid)
    torch.manual_seed(0)
    embedder = PatchEmbedder(spec.input_dim, 24, spec.max_length, spec.grid)
    decoder = PatchDecoder(
        24, spec.input_dim, spec.max_length, spec.grid, PatchDecoderConfig(16, 1, 2)
    )
    patches = torch.randn(3, spec.max_length, spec.input_dim)
    hidden = embedder(patches)  # (B, L, D)
    assert hidden.shape == (3, spec.max_length, 24)
    real = torch.ones(3, spec.max_length, dtype=torch.bool)
    mask = BlockMasking(ratio=0.5, min_block=2)(real, grid=spec.grid).mask
    pred = decoder(hidden, mask, ~mask, real)
    assert pred.shape == (int(mask.sum()), spec.input_dim)
    pred.sum().backward()
    assert embedder.proj.weight.grad is not None


def test_a_grid_that_does_not_hold_max_length_is_refused():
    with pytest.raises(ValueError, match="holds 6 positions"):
        ContinuousSpec(input_dim=4, max_length=8, grid=(2, 3))
