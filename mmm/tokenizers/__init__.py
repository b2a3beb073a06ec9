"""Tokenizers: what each modality does with its samples (decode, collate, spec, vocabulary), one
file per modality. Files, shards and corpora are read and written in ``mmm.data``."""

from mmm.tokenizers.audio import AudioTokenizer, LogMelSettings
from mmm.tokenizers.base import (
    ContinuousSpec,
    DiscreteSpec,
    DiscreteTokenizer,
    SampleError,
    Tokenizer,
)
from mmm.tokenizers.image import ImageTokenizer
from mmm.tokenizers.protein import ProteinTokenizer
from mmm.tokenizers.smiles import SmilesTokenizer
from mmm.tokenizers.text import TextTokenizer, train_tokenizer
from mmm.tokenizers.timeseries import TimeSeriesTokenizer

__all__ = [
    "AudioTokenizer",
    "ContinuousSpec",
    "DiscreteSpec",
    "DiscreteTokenizer",
    "ImageTokenizer",
    "LogMelSettings",
    "ProteinTokenizer",
    "SampleError",
    "SmilesTokenizer",
    "TextTokenizer",
    "TimeSeriesTokenizer",
    "Tokenizer",
    "train_tokenizer",
]
