"""Multivariate time series: per-series instance normalization, then patches of time steps.

``TimeSeriesTokenizer`` reads one ``npy`` member per sample, a (channels, time steps) array,
crops it to ``length`` steps (shorter series are padded, the padding marked unreal), and
normalizes each channel of each series by its own mean and standard deviation over its real
steps (RevIN, Kim et al. 2022; PatchTST and MOMENT do the same): the model and its loss see
normalized values, and ``denormalize`` maps predictions back to the series' own units with
the ``mean`` and ``std`` the batch carries. Patches are ``patch_length`` consecutive steps:

- ``patching: channel`` (PatchTST): one position per channel per patch, positions on a
  (time, channel) grid, time first; each position's vector is one channel's ``patch_length``
  values, so one embedder serves every channel. (PatchTST also keeps channels in separate
  sequences; here they share one, so attention can mix them.)
- ``patching: across``: one position per patch holding every channel's values
  (``channels * patch_length``), positions on a 1-D time grid.

Either way the grid's first axis is time, so ``ForecastMasking`` hides the last patches (every
channel of them) and ``TubeMasking(axis=1)`` hides whole time steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

from mmm.checks import require_at_least, require_one_of
from mmm.data.formats.timeseries import decode_series
from mmm.data.members import SERIES_MEMBER
from mmm.tokenizers.base import (
    ContinuousSpec,
    Crop,
    SampleError,
    Tokenizer,
    copy_with,
    crop_window,
    leading_real_positions,
)

Patching = Literal["channel", "across"]


@dataclass(frozen=True)
class SeriesItem:
    """One decoded series, what ``collate`` batches.

    Attributes:
        features: (channels, length) normalized values, zero after the real steps.
        real_steps: how many leading steps come from the series.
        mean: (channels,) each channel's mean over its real steps (0 without normalization).
        std: (channels,) each channel's standard deviation (1 without normalization).
    """

    features: Tensor
    real_steps: int
    mean: Tensor
    std: Tensor


class TimeSeriesTokenizer(Tokenizer):
    """Series -> instance-normalized values -> patches of time steps, fixed length, padding
    marked.

    Args:
        channels: variables per series; a series with another count is refused.
        length: time steps per sample; longer series are cropped, shorter ones padded.
        patch_length: time steps per patch; must divide ``length``.
        patching: ``channel`` (one position per channel and patch, PatchTST) or ``across``
            (one position per patch holding every channel).
        instance_norm: normalize each channel of each series by its own mean and std over
            its real steps (RevIN); ``False`` keeps raw values.
        crop: which window of a longer series is kept: ``start``, ``center`` or ``random``
            (a new window each time: augmentation; evaluation uses ``center``).
        min_std: the smallest std a channel is divided by (a constant channel becomes zeros
            rather than infinities).
        statistics_horizon: patches at the end of each series left out of its instance
            statistics. Set it to ``ForecastMasking``'s ``horizon`` when training to forecast:
            the statistics then come from the lookback window alone, as at forecast time;
            with 0 the hidden future shifts and scales the visible input, a leak the model
            learns to read (measured in docs/timeseries.md).
    """

    modality_name = "timeseries"
    sample_keys = (SERIES_MEMBER,)

    def __init__(
        self,
        channels: int = 1,
        length: int = 128,
        patch_length: int = 16,
        patching: Patching = "channel",
        instance_norm: bool = True,
        crop: Crop = "start",
        min_std: float = 1e-5,
        statistics_horizon: int = 0,
    ) -> None:
        require_at_least(
            "TimeSeriesTokenizer", 1, channels=channels, length=length, patch_length=patch_length
        )
        if length % patch_length:
            raise ValueError(
                f"TimeSeriesTokenizer: patch_length={patch_length} must divide length={length}"
            )
        require_one_of("TimeSeriesTokenizer", "patching", patching, get_args(Patching))
        require_one_of("TimeSeriesTokenizer", "crop", crop, get_args(Crop))
        if not 0 <= statistics_horizon < length // patch_length:
            raise ValueError(
                f"TimeSeriesTokenizer: statistics_horizon must lie in [0, {length // patch_length})"
                f" (patches per sample), got {statistics_horizon}"
            )
        if min_std <= 0:
            raise ValueError(f"TimeSeriesTokenizer: min_std must be > 0, got {min_std}")
        self.channels = channels
        self.length = length
        self.patch_length = patch_length
        self.patching = patching
        self.instance_norm = instance_norm
        self.crop = crop
        self.min_std = min_std
        self.statistics_horizon = statistics_horizon

    # ---------------------------------------------------------------------- geometry
    @property
    def grid(self) -> tuple[int, ...]:
        """(time patches, channels) with per-channel patches, else (time patches,)."""
        steps = self.length // self.patch_length
        return (steps, self.channels) if self.patching == "channel" else (steps,)

    @property
    def spec(self) -> ContinuousSpec:
        across = self.patching == "across"
        return ContinuousSpec(
            input_dim=self.patch_length * (self.channels if across else 1),
            max_length=math.prod(self.grid),
            grid=self.grid,
        )

    # ---------------------------------------------------------------------- decoding
    def series(self, sample: dict[str, Any]) -> Tensor:
        """The sample's series, (channels, time steps) float32, uncropped. Raises
        ``SampleError`` naming the sample when it is missing, unreadable, of another channel
        count, shorter than one patch, or holds missing values."""
        key, url = sample.get("__key__"), sample.get("__url__")
        if SERIES_MEMBER not in sample:
            found = sorted(k for k in sample if not k.startswith("__"))
            raise SampleError(f"no {SERIES_MEMBER!r} member (members: {found})", key, url)
        try:
            values = decode_series(sample[SERIES_MEMBER])
        except (ValueError, OSError) as error:
            raise SampleError(f"cannot read {SERIES_MEMBER!r}: {error}", key, url) from error
        channels, steps = values.shape
        if channels != self.channels:
            raise SampleError(
                f"series has {channels} channels, the tokenizer's channels={self.channels}",
                key,
                url,
            )
        if steps < self.patch_length:
            raise SampleError(
                f"series of {steps} steps is shorter than one patch "
                f"(patch_length={self.patch_length})",
                key,
                url,
            )
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise SampleError(f"series holds {bad} missing or infinite values", key, url)
        return torch.from_numpy(np.array(values))

    def decode_sample(self, sample: dict[str, Any]) -> SeriesItem:
        values = crop_window(self.series(sample), self.length, self.crop)  # (C, T_real)
        real_steps = values.shape[1]
        mean, std = self.statistics(values[:, : self.lookback_steps(real_steps)])
        normalized = (values - mean[:, None]) / std[:, None]
        padded = torch.nn.functional.pad(normalized, (0, self.length - real_steps))  # (C, T)
        return SeriesItem(padded, real_steps, mean, std)

    def lookback_steps(self, real_steps: int) -> int:
        """The leading steps of a series of ``real_steps`` that its statistics come from: all
        but its last ``statistics_horizon`` patches (a partial last patch counts as one), at
        least one patch, as ``ForecastMasking`` hides them."""
        patches = -(-real_steps // self.patch_length)  # ceil
        kept = max(patches - self.statistics_horizon, 1)
        return min(kept * self.patch_length, real_steps)

    def statistics(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """Each channel's (mean, std) over the steps of (C, T) ``values``; (0, 1) without
        instance normalization."""
        if not self.instance_norm:
            return torch.zeros(values.shape[0]), torch.ones(values.shape[0])
        mean = values.mean(dim=1)  # (C,)
        std = values.std(dim=1, unbiased=False).clamp_min(self.min_std)
        return mean, std

    def for_evaluation(self) -> TimeSeriesTokenizer:
        """The same settings with the middle window of long series instead of a random one."""
        return self if self.crop != "random" else copy_with(self, crop="center")

    # ---------------------------------------------------------------------- batching
    def collate(self, items: list[SeriesItem]) -> dict[str, Tensor]:
        """Stack series and cut them into patches.

        Returns:
            ``patches`` (B, L, input_dim) normalized, ``attention_mask`` and ``maskable``
            (B, L) bool (``False`` at patches made only of padding), ``values`` (B, C, T)
            normalized series, ``real_steps`` (B,) long, ``mean`` and ``std`` (B, C).
        """
        values = torch.stack([item.features for item in items])  # (B, C, T)
        real_steps = torch.tensor([item.real_steps for item in items], dtype=torch.long)
        return {
            "patches": self.patchify(values),
            **self.position_masks(real_steps),
            "values": values,
            "real_steps": real_steps,
            "mean": torch.stack([item.mean for item in items]),
            "std": torch.stack([item.std for item in items]),
        }

    def patchify(self, values: Tensor) -> Tensor:
        """(B, C, length) series -> (B, L, input_dim) positions, time-major."""
        if self.patching == "channel":
            # (B, C, N * P) -> (B, N * C, P): time patches outer, channels inner
            return rearrange(values, "b c (n p) -> b (n c) p", p=self.patch_length)
        # (B, C, N * P) -> (B, N, C * P)
        return rearrange(values, "b c (n p) -> b n (c p)", p=self.patch_length)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, L, input_dim) positions -> (B, C, length) series."""
        if self.patching == "channel":
            # (B, N * C, P) -> (B, C, N * P)
            return rearrange(patches, "b (n c) p -> b c (n p)", c=self.channels)
        # (B, N, C * P) -> (B, C, N * P)
        return rearrange(patches, "b n (c p) -> b c (n p)", c=self.channels)

    def denormalize(self, values: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """(B, C, T) normalized values -> the series' own units, with the batch's ``mean``
        and ``std`` (B, C): how forecasts are read back."""
        return values * batch["std"][..., None] + batch["mean"][..., None]

    def normalize_on(self, batch: dict[str, Tensor], steps: Tensor) -> dict[str, Tensor]:
        """The batch re-normalized by each channel's mean and std over ``steps`` (B, T) bool
        alone: the lookback window of a forecast, so that the hidden future does not reach the
        input through the statistics (``decode_sample`` uses every real step). Padding stays
        zero; without instance normalization the batch is returned as it is."""
        if not self.instance_norm:
            return batch
        values = self.denormalize(batch["values"].float(), batch)  # (B, C, T)
        weight = steps.unsqueeze(1).float()  # (B, 1, T)
        count = weight.sum(dim=-1).clamp_min(1)  # (B, 1)
        mean = (values * weight).sum(dim=-1) / count  # (B, C)
        centred = values - mean.unsqueeze(-1)
        std = ((centred.pow(2) * weight).sum(dim=-1) / count).sqrt().clamp_min(self.min_std)
        real = torch.arange(self.length) < batch["real_steps"].unsqueeze(1)  # (B, T)
        normalized = centred / std.unsqueeze(-1) * real.unsqueeze(1)  # (B, C, T)
        patches = self.patchify(normalized)
        return {**batch, "values": normalized, "patches": patches, "mean": mean, "std": std}

    def position_masks(self, real_steps: Tensor) -> dict[str, Tensor]:
        """``attention_mask`` and ``maskable`` (B, L): a patch is real when it holds at least
        one step of the series."""
        per_step = self.channels if self.patching == "channel" else 1
        steps = self.length // self.patch_length
        return leading_real_positions(real_steps, self.patch_length, steps, repeat=per_step)

    def __repr__(self) -> str:
        return (
            f"TimeSeriesTokenizer(channels={self.channels}, length={self.length}, "
            f"patch_length={self.patch_length}, patching={self.patching!r}, "
            f"instance_norm={self.instance_norm}, statistics_horizon={self.statistics_horizon})"
        )
