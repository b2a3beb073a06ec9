"""Tokenizers: the data side of each modality, one file per modality."""

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
    "Tokenizer",
    "train_tokenizer",
]
