"""Every configurable class refuses a bad argument in one wording, naming itself, the
argument, what it must be and what it got (``mmm.checks``): the error a user sees for a typo
in a YAML file."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from datamodules import ShardDataModule
from mmm.generation import SamplingSettings
from mmm.masking import BlockMasking, SpanMasking
from mmm.models.heads import PatchDecoderConfig
from mmm.tokenizers.audio import AudioTokenizer, LogMelSettings
from mmm.tokenizers.protein import ProteinTokenizer
from mmm.tokenizers.text import TextTokenizer
from mmm.tokenizers.timeseries import TimeSeriesTokenizer

REFUSALS: dict[str, tuple[Callable[[], object], str]] = {
    "choice": (
        lambda: TextTokenizer(attention="both"),  # type: ignore[arg-type]
        "TextTokenizer: attention must be 'across' or 'document', got 'both'",
    ),
    "choice from a Literal": (
        lambda: ProteinTokenizer(crop="middle"),  # type: ignore[arg-type]
        "ProteinTokenizer: crop must be 'start', 'center' or 'random', got 'middle'",
    ),
    "minimum": (
        lambda: TimeSeriesTokenizer(patch_length=0),
        "TimeSeriesTokenizer: patch_length must be >= 1, got 0",
    ),
    "minimum other than 1": (
        lambda: TextTokenizer(max_length=2),
        "TextTokenizer: max_length must be >= 3, got 2",
    ),
    "minimum of an optional value": (
        lambda: SamplingSettings(top_k=0),
        "SamplingSettings: top_k must be >= 1, got 0",
    ),
    "dataclass field": (
        lambda: LogMelSettings(hop_length=0),
        "LogMelSettings: hop_length must be >= 1, got 0",
    ),
    "nested settings": (
        lambda: AudioTokenizer(normalize="peak"),  # type: ignore[arg-type]
        "AudioTokenizer: normalize must be 'clip' or 'dataset', got 'peak'",
    ),
    "masking": (
        lambda: SpanMasking(max_span_length=0),
        "SpanMasking: max_span_length must be >= 1, got 0",
    ),
    "masking on a grid": (
        lambda: BlockMasking(min_block=0),
        "BlockMasking: min_block must be >= 1",
    ),
    "decoder": (lambda: PatchDecoderConfig(depth=0), "PatchDecoderConfig: depth must be >= 1"),
    "data": (
        lambda: ShardDataModule(embedded="python-docs", shuffle_buffer=-1),
        "ShardDataModule: shuffle_buffer must be >= 0, got -1",
    ),
    "data choice": (
        lambda: ShardDataModule(embedded="python-docs", train_mode="shuffled"),  # type: ignore[arg-type]
        "ShardDataModule: train_mode must be 'elastic', 'resampled' or 'exact', got 'shuffled'",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_argument_is_refused_naming_class_argument_and_value(case: str) -> None:
    build, message = REFUSALS[case]
    with pytest.raises(ValueError) as refused:
        build()
    assert str(refused.value).startswith(message)


def test_unset_optional_values_and_good_values_pass() -> None:
    assert SamplingSettings(top_k=None).top_k is None
    assert ProteinTokenizer(crop="center").crop == "center"
