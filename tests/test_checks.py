"""Every configurable class refuses a bad argument in one wording (``mmm.checks``), naming
itself, the argument, what it must be and what it got: the error a user sees for a typo in a
YAML file."""

from __future__ import annotations

from typing import get_args

import pytest

from datamodules import ShardDataModule
from mmm.checks import require_at_least, require_one_of
from mmm.generation import SamplingSettings
from mmm.tokenizers.audio import LogMelSettings
from mmm.tokenizers.base import Crop
from mmm.tokenizers.protein import ProteinTokenizer
from mmm.tokenizers.text import TextTokenizer


def test_a_choice_lists_what_is_allowed_in_the_types_order():
    with pytest.raises(ValueError) as refused:
        require_one_of("ProteinTokenizer", "crop", "middle", get_args(Crop))
    assert str(refused.value) == (
        "ProteinTokenizer: crop must be 'start', 'center' or 'random', got 'middle'"
    )
    require_one_of("ProteinTokenizer", "crop", "center", get_args(Crop))


def test_a_minimum_names_the_first_value_below_it_and_passes_unset_ones():
    with pytest.raises(ValueError, match=r"^Sizes: depth must be >= 1, got 0$"):
        require_at_least("Sizes", 1, width=8, depth=0, heads=-1)
    require_at_least("Sizes", 1, width=8, limit=None)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: TextTokenizer(max_length=2), "TextTokenizer: max_length must be >= 3, got 2"),
        (lambda: ProteinTokenizer(crop="middle"), "ProteinTokenizer: crop must be 'start', "),
        (lambda: SamplingSettings(top_k=0), "SamplingSettings: top_k must be >= 1, got 0"),
        (lambda: LogMelSettings(hop_length=0), "LogMelSettings: hop_length must be >= 1"),
        (
            lambda: ShardDataModule(embedded="python-docs", train_mode="shuffled"),
            "ShardDataModule: train_mode must be 'elastic', 'resampled' or 'exact', got",
        ),
    ],
    ids=["tokenizer", "tokenizer choice", "sampling", "dataclass field", "data"],
)
def test_configurable_classes_refuse_in_that_wording(build, message):
    with pytest.raises(ValueError) as refused:
        build()
    assert str(refused.value).startswith(message)
