"""Forecasting error of a time series checkpoint on held-out series, against the naive
last-value, lookback-mean and seasonal-naive forecasts of the same hidden steps.

The last ``--horizon`` patches of every validation series are hidden (``ForecastMasking``), the
model predicts them from the visible past, and the predictions are read back in each series'
own units (its instance-normalization statistics). MSE and MAE are reported in those units and
in normalized units (each error divided by its channel's std, the scale the model is trained
on, comparable across series of different scales). The seasonal-naive forecast repeats the
last ``--season`` visible steps (default: the horizon's length in steps); series with fewer
visible steps are left out of every row of the seasonal comparison and counted.

    python scripts/forecast_eval.py CKPT [--embedded ucr-univariate] [--horizon 2]
        [--season STEPS] [--batch_size 64]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from datamodules import ShardDataModule
from mmm.forecasting import (
    errors,
    forecast,
    has_season,
    mean_forecast,
    naive_forecast,
    seasonal_naive_forecast,
)
from mmm.inference import load_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--embedded", default="ucr-univariate", help="the embedded data set")
    parser.add_argument("--horizon", type=int, default=2, help="patches hidden at the end")
    parser.add_argument("--season", type=int, default=None, help="seasonal-naive period, steps")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    module = load_module(args.checkpoint)
    name = module.modality_named()
    patch_length = getattr(module.tokenizers[name], "patch_length", 1)
    season = args.season or args.horizon * patch_length
    data = ShardDataModule(
        embedded=args.embedded, batch_size=args.batch_size, num_workers=0, batcher=module.batcher
    )
    data.prepare_data()
    data.setup("validate")
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    series = seasonal = 0
    for batch in data.val_dataloader():
        result = forecast(module, batch, args.horizon, name)
        rows = has_season(result.hidden, season)
        series, seasonal = series + rows.numel(), seasonal + int(rows.sum())
        candidates = {
            "model": result.predicted,
            "naive (last value)": naive_forecast(result.actual, result.hidden),
            "mean of the lookback": mean_forecast(result.actual, result.hidden),
            f"seasonal naive ({season} steps)": seasonal_naive_forecast(
                result.actual, result.hidden, season
            ),
        }
        for label, predicted in candidates.items():
            for subset, keep in (("all", None), ("seasonal", rows)):
                for key, value in errors(result, predicted, keep).items():
                    totals[(label, subset)][key] += value
    print(
        f"{args.checkpoint}: {series} held-out series of {args.embedded}, last {args.horizon} "
        f"patches hidden; {seasonal} have {season} visible steps for the seasonal forecast"
    )
    for (label, subset), sums in totals.items():
        if subset == "all" and label.startswith("seasonal"):
            continue
        count = max(sums["count"], 1.0)
        print(
            f"  {label:<28} on {subset:<8} series: MSE {sums['mse'] / count:.4f}  "
            f"MAE {sums['mae'] / count:.4f}  normalized MSE {sums['nmse'] / count:.4f}  "
            f"normalized MAE {sums['nmae'] / count:.4f}"
        )


if __name__ == "__main__":
    main()
