"""Time series: instance normalization, patches per channel or across channels, the format
reader, the UCR corpora, and forecasts read back in the series' own units."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from mmm.data.formats.timeseries import (
    SERIES_MEMBER,
    encode_series,
    read_series_file,
    timeseries_samples,
)
from mmm.forecasting import (
    errors,
    forecast,
    mean_forecast,
    naive_forecast,
    seasonal_naive_forecast,
)
from mmm.masking import ForecastMasking, RandomMasking
from mmm.models.encoder import TransformerEncoder
from mmm.models.heads import PatchDecoderConfig
from mmm.module import MaskedModelingModule
from mmm.tokenizers import ImageTokenizer, SampleError, TimeSeriesTokenizer


def _sample(values: np.ndarray, key: str = "s0") -> dict:
    return {"__key__": key, "__url__": "ts-000000.tar", SERIES_MEMBER: encode_series(values)}


def _batch(tokenizer: TimeSeriesTokenizer, series: list[np.ndarray]) -> dict:
    return tokenizer.collate(
        [tokenizer.decode_sample(_sample(s, f"s{i}")) for i, s in enumerate(series)]
    )


def _walks(channels: int, lengths: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [5.0 + 3.0 * rng.normal(size=(channels, n)).cumsum(axis=1) for n in lengths]


@pytest.mark.parametrize("patching", ["channel", "across"])
def test_patches_round_trip_and_the_grid_puts_time_first(patching):
    tokenizer = TimeSeriesTokenizer(channels=3, length=24, patch_length=6, patching=patching)
    batch = _batch(tokenizer, _walks(3, (24, 30)))
    assert torch.equal(tokenizer.unpatchify(batch["patches"]), batch["values"])
    spec = tokenizer.spec
    assert spec.grid == ((4, 3) if patching == "channel" else (4,))
    assert batch["patches"].shape == (2, spec.max_length, spec.input_dim)
    assert spec.input_dim == (6 if patching == "channel" else 18)


def test_instance_normalization_is_per_series_and_channel_and_reads_back():
    tokenizer = TimeSeriesTokenizer(channels=2, length=32, patch_length=8)
    series = _walks(2, (32, 20))
    batch = _batch(tokenizer, series)
    first = batch["values"][0]
    assert torch.allclose(first.mean(dim=1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(first.std(dim=1, unbiased=False), torch.ones(2), atol=1e-4)
    restored = tokenizer.denormalize(batch["values"], batch)
    assert torch.allclose(restored[1, :, :20], torch.from_numpy(series[1]).float(), atol=1e-4)
    assert batch["values"][1, :, 20:].eq(0).all(), "padding is zero after normalization"
    assert batch["attention_mask"].view(2, 4, 2)[1].all(dim=1).tolist() == [1, 1, 1, 0]


def test_without_instance_normalization_values_stay_raw():
    tokenizer = TimeSeriesTokenizer(length=8, patch_length=4, instance_norm=False)
    batch = _batch(tokenizer, [np.arange(8.0)])
    assert batch["values"][0, 0].tolist() == list(range(8))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.zeros((2, 16)), "2 channels, the tokenizer's channels=1"),
        (np.zeros((1, 3)), "shorter than one patch"),
        (np.array([[1.0, np.nan, 2.0, 3.0, 4.0]]), "1 missing or infinite"),
    ],
)
def test_unusable_series_name_the_sample(values, message):
    tokenizer = TimeSeriesTokenizer(channels=1, length=8, patch_length=4)
    with pytest.raises(SampleError, match=rf"ts-000000.tar.*'bad'.*{message}"):
        tokenizer.decode_sample(_sample(values, "bad"))


def test_settings_are_checked_in_the_constructor():
    with pytest.raises(ValueError, match="patch_length=5 must divide length=16"):
        TimeSeriesTokenizer(length=16, patch_length=5)
    with pytest.raises(ValueError, match="patching"):
        TimeSeriesTokenizer(patching="both")


def test_lookback_statistics_keep_the_future_out_of_the_input():
    tokenizer = TimeSeriesTokenizer(length=16, patch_length=4)
    past = np.sin(np.arange(12.0))
    calm, wild = (np.concatenate([past, future]) for future in (np.zeros(4), np.full(4, 50.0)))
    lookback = torch.arange(16) < 12
    seen = [
        tokenizer.normalize_on(_batch(tokenizer, [s]), lookback.unsqueeze(0))["patches"][0, :3]
        for s in (calm, wild)
    ]
    assert torch.allclose(seen[0], seen[1], atol=1e-5), "the hidden future changed the input"


def test_the_reader_takes_npy_csv_and_ts_files_and_skips_missing_values(tmp_path):
    pytest.importorskip("aeon", reason="reading .ts files needs aeon: pip install mmm[timeseries]")
    np.save(tmp_path / "set.npy", np.arange(24.0).reshape(2, 3, 4))  # (N, C, T)
    (tmp_path / "one.csv").write_text("a,b\n1,10\n2,20\n3,30\n")
    (tmp_path / "two.ts").write_text(
        "@problemName two\n@timeStamps false\n@missing true\n@univariate true\n"
        "@equalLength false\n@classLabel true x y\n@data\n1.0,2.0,3.0:x\n4.0,?,6.0,7.0:y\n"
    )
    assert [a.shape for a in read_series_file(tmp_path / "set.npy")] == [(3, 4), (3, 4)]
    [csv] = read_series_file(tmp_path / "one.csv")
    assert csv.tolist() == [[1, 2, 3], [10, 20, 30]]
    paths = [str(tmp_path / name) for name in ("set.npy", "one.csv", "two.ts")]
    samples = list(timeseries_samples(paths))
    kept = [s for s in samples if "__key__" in s]
    assert [s["__key__"] for s in kept] == ["set-000000", "set-000001", "one-000000", "two-000000"]
    [skipped] = [s["__skipped__"] for s in samples if "__skipped__" in s]
    assert "two.ts: series 1 holds 1 missing" in skipped
    with pytest.raises(ValueError, match="not a time series file"):
        read_series_file(tmp_path / "notes.txt")


def test_ucr_labelled_corpus_keeps_its_own_test_split():
    pytest.importorskip("aeon")
    from mmm.data.corpora import labelled_corpus

    corpus = labelled_corpus("ucr-basicmotions-labelled")
    samples = list(corpus.samples)
    assert corpus.spec.classes == ("badminton", "running", "standing", "walking")
    assert len(samples) == 80
    assert sum(s["__split__"] == "test" for s in samples) == 40
    assert TimeSeriesTokenizer(channels=6, length=100, patch_length=10).decode_sample(samples[0])


def test_naive_forecasts_fill_the_hidden_steps_from_the_past():
    actual = torch.arange(10.0).view(1, 1, 10)
    hidden = torch.arange(10).unsqueeze(0) >= 7  # steps 7, 8, 9
    assert naive_forecast(actual, hidden)[0, 0, 7:].tolist() == [6, 6, 6]
    assert mean_forecast(actual, hidden)[0, 0, 7:].tolist() == [3, 3, 3]
    assert seasonal_naive_forecast(actual, hidden, 2)[0, 0, 7:].tolist() == [5, 6, 5]
    assert seasonal_naive_forecast(actual, hidden, 2)[0, 0, :7].tolist() == list(range(7))


def _module(tokenizer, norm_pix_loss: bool = False) -> MaskedModelingModule:
    torch.manual_seed(0)
    return MaskedModelingModule(
        tokenizer=tokenizer,
        encoder=TransformerEncoder(dim=16, depth=1, num_heads=2),
        masking=RandomMasking(ratio=0.4),
        decoder=PatchDecoderConfig(dim=16, depth=1, num_heads=2, norm_pix_loss=norm_pix_loss),
    ).eval()


@pytest.mark.parametrize("patching", ["channel", "across"])
def test_forecast_predicts_the_last_patches_in_the_series_units(patching):
    tokenizer = TimeSeriesTokenizer(channels=2, length=24, patch_length=4, patching=patching)
    batch = _batch(tokenizer, _walks(2, (24, 14)))
    result = forecast(_module(tokenizer), batch, horizon=2)
    assert result.hidden.sum(1).tolist() == [8, 6], "2 patches; the short series' last is partial"
    assert result.hidden[1, 8:14].all() and not result.hidden[1, 14:].any()
    visible = ~result.hidden.unsqueeze(1).expand_as(result.actual)
    assert torch.allclose(result.predicted[visible], result.actual[visible], atol=1e-4)
    assert not torch.allclose(result.predicted, result.actual)
    sums = errors(result, result.predicted)
    assert sums["count"] == 2 * 14 and sums["mse"] > 0


def test_forecast_refuses_what_it_cannot_read_back():
    tokenizer = TimeSeriesTokenizer(length=16, patch_length=4)
    batch = _batch(tokenizer, _walks(1, (16,)))
    with pytest.raises(ValueError, match="norm_pix_loss: false"):
        forecast(_module(tokenizer, norm_pix_loss=True), batch, horizon=1)
    image = ImageTokenizer(image_size=8, patch_size=4)
    with pytest.raises(ValueError, match="not supported for the image modality"):
        forecast(_module(image), {"patches": torch.zeros(1, 4, 48)}, horizon=1)


def test_forecast_masking_trains_a_series_model():
    tokenizer = TimeSeriesTokenizer(channels=2, length=16, patch_length=4)
    module = _module(tokenizer).train()
    module.maskings["timeseries"] = ForecastMasking(horizon=1)
    out = module.forward_masked(_batch(tokenizer, _walks(2, (16, 16))))
    assert out["timeseries"].mask.view(2, 4, 2)[:, 3].all()
    out.loss.backward()


def test_import_mmm_does_not_need_aeon():
    code = (
        "import sys; sys.modules['aeon'] = None\n"
        "import mmm.tokenizers, mmm.data.formats, mmm.data.corpora\n"
        "from mmm.data.corpora import iter_corpus\n"
        "from mmm.optional import MissingDependencyError\n"
        "from mmm.data.formats.timeseries import read_ts_file\n"
        "try:\n    read_ts_file('x.ts')\nexcept MissingDependencyError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pip install mmm[timeseries]" in result.stdout


def test_statistics_horizon_takes_the_statistics_from_the_lookback_window():
    """Trained with it, the model's input is normalized as forecast() normalizes it."""
    tokenizer = TimeSeriesTokenizer(length=16, patch_length=4, statistics_horizon=1)
    series = np.concatenate([np.sin(np.arange(10.0)), np.full(4, 50.0)])  # 14 steps, 4 patches
    assert tokenizer.lookback_steps(14) == 12
    batch = _batch(tokenizer, [series])
    hidden = torch.arange(16).unsqueeze(0) >= 12
    again = tokenizer.normalize_on(batch, (torch.arange(16) < 14) & ~hidden)
    assert torch.allclose(batch["values"], again["values"], atol=1e-5)
    with pytest.raises(ValueError, match="statistics_horizon"):
        TimeSeriesTokenizer(length=16, patch_length=4, statistics_horizon=4)
