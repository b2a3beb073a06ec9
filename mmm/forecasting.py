"""Forecasts read back from a masked model, and the naive forecasts they must beat.

Forecasting is masking the future (``ForecastMasking``): the last ``horizon`` patches of every
series are hidden, the encoder sees the rest, the decoder predicts them. ``forecast`` runs that
on a batch and maps the predictions back to each series' own units with the statistics its
tokenizer normalized it by (``denormalize``); ``naive_forecast`` and ``seasonal_naive_forecast``
fill the same hidden steps from the visible past, so the errors compare on the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmm.masking import ForecastMasking
from mmm.module import MaskedModelingModule


@dataclass(frozen=True)
class Forecast:
    """A batch's series and their forecast.

    Attributes:
        actual: (B, C, T) the series in their own units.
        predicted: (B, C, T) the model's predictions at hidden steps, the series elsewhere.
        hidden: (B, T) bool, the forecast steps (real steps inside hidden patches).
        scale: (B, C) each channel's std, to report errors in normalized units too.
    """

    actual: Tensor
    predicted: Tensor
    hidden: Tensor
    scale: Tensor


@torch.no_grad()
def forecast(
    module: MaskedModelingModule, batch: dict, horizon: int, name: str | None = None
) -> Forecast:
    """Hide the last ``horizon`` patches of every series of ``batch`` and predict them.

    Raises:
        ValueError: naming the modality when its tokenizer cannot map values back to a
            series (no ``unpatchify``/``denormalize``: not a time series), or when the model
            regresses per-patch-normalized targets (``decoder.norm_pix_loss``), whose values
            cannot be read back without the hidden patch's own mean and std.
    """
    name = module.modality_named(name)
    tokenizer, modality = module.tokenizers[name], module.modalities[name]
    if not (hasattr(tokenizer, "denormalize") and hasattr(tokenizer, "unpatchify")):
        raise ValueError(
            f"forecasting is not supported for the {name} modality ({type(tokenizer).__name__} "
            "cannot map predictions back to a series); it needs a time series tokenizer"
        )
    if getattr(modality, "norm_pix_loss", False):
        raise ValueError(
            "forecasting needs a model trained with decoder.norm_pix_loss: false; its "
            "predictions are normalized per hidden patch and cannot be read back"
        )
    sub = module.modality_batch(batch)[name]
    masked = ForecastMasking(horizon)(sub["maskable"], grid=tokenizer.spec.grid)
    hidden = forecast_steps(tokenizer, sub, masked.mask)  # (B, T)
    real = torch.arange(hidden.shape[1]) < sub["real_steps"].unsqueeze(1)  # (B, T)
    sub = tokenizer.normalize_on(sub, real & ~hidden)  # statistics of the lookback only
    part = module.forward_masked({name: sub}, {name: masked})[name]
    patches = modality.reconstruct(sub, masked.mask, part.pred)  # (B, L, P)
    predicted = tokenizer.denormalize(tokenizer.unpatchify(patches), sub)  # (B, C, T)
    actual = tokenizer.denormalize(sub["values"].float(), sub)
    predicted = torch.where(hidden.unsqueeze(1), predicted, actual)  # padding: not a forecast
    return Forecast(actual, predicted, hidden, sub["std"].float())


def forecast_steps(tokenizer, batch: dict, mask: Tensor) -> Tensor:
    """(B, T) bool: the real time steps inside the hidden patches ``mask`` (B, L)."""
    spread = mask.unsqueeze(-1).expand_as(batch["patches"]).float()  # (B, L, P)
    steps = torch.arange(batch["values"].shape[-1])
    real = steps < batch["real_steps"].unsqueeze(1)  # (B, T)
    return (tokenizer.unpatchify(spread) > 0).any(dim=1) & real


def first_hidden_step(hidden: Tensor) -> Tensor:
    """(B,) the first forecast step of each series (its length where none is hidden)."""
    steps = torch.arange(hidden.shape[1]).expand_as(hidden)
    return torch.where(hidden, steps, hidden.shape[1]).amin(dim=1)


def naive_forecast(actual: Tensor, hidden: Tensor) -> Tensor:
    """The last visible value of each channel repeated over the hidden steps: (B, C, T)."""
    start = first_hidden_step(hidden).clamp_min(1)  # (B,)
    last = actual.gather(2, (start - 1).view(-1, 1, 1).expand(-1, actual.shape[1], 1))  # (B,C,1)
    return torch.where(hidden.unsqueeze(1), last, actual)


def mean_forecast(actual: Tensor, hidden: Tensor) -> Tensor:
    """Each channel's mean over its visible steps, over the hidden steps: (B, C, T). (What a
    model predicting zeros in lookback-normalized units forecasts.)"""
    visible = torch.arange(hidden.shape[1]) < first_hidden_step(hidden).unsqueeze(1)  # (B, T)
    weight = visible.unsqueeze(1).float()  # (B, 1, T)
    mean = (actual * weight).sum(dim=-1, keepdim=True) / weight.sum(dim=-1, keepdim=True).clamp_min(
        1
    )
    return torch.where(hidden.unsqueeze(1), mean.expand_as(actual), actual)


def seasonal_naive_forecast(actual: Tensor, hidden: Tensor, season: int) -> Tensor:
    """Each hidden step takes the value one season before, from the visible past
    (``y[s + h] = y[s - season + h mod season]`` with ``s`` the first hidden step): (B, C, T).
    Series with fewer than ``season`` visible steps are left as they are (see
    ``has_season``)."""
    start = first_hidden_step(hidden)  # (B,)
    steps = torch.arange(actual.shape[-1]).expand_as(hidden)  # (B, T)
    source = start.unsqueeze(1) - season + (steps - start.unsqueeze(1)).remainder(season)
    source = torch.where(hidden & has_season(hidden, season).unsqueeze(1), source, steps)
    return actual.gather(2, source.unsqueeze(1).expand_as(actual))


def has_season(hidden: Tensor, season: int) -> Tensor:
    """(B,) bool: series with at least ``season`` visible steps before the forecast."""
    return first_hidden_step(hidden) >= season


def errors(forecast: Forecast, predicted: Tensor, rows: Tensor | None = None) -> dict[str, float]:
    """Sums for MSE and MAE over the hidden steps of the selected series, in the series' units
    (``mse``, ``mae``) and divided by each channel's std (``nmse``, ``nmae``: the
    instance-normalized scale, comparable across series), with ``count`` of values."""
    keep = forecast.hidden.unsqueeze(1).expand_as(predicted)  # (B, C, T)
    if rows is not None:
        keep = keep & rows.view(-1, 1, 1)
    error = (predicted - forecast.actual)[keep]
    scaled = ((predicted - forecast.actual) / forecast.scale.unsqueeze(-1))[keep]
    return {
        "mse": float(error.pow(2).sum()),
        "mae": float(error.abs().sum()),
        "nmse": float(scaled.pow(2).sum()),
        "nmae": float(scaled.abs().sum()),
        "count": float(error.numel()),
    }
