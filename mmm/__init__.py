"""mmm: multimodal masked modeling on PyTorch Lightning.

One objective (hide positions, encode the rest, predict what was hidden) for text, images,
audio, proteins and SMILES, on a shared Transformer encoder.
"""

from mmm.masking import (
    BlockMasking,
    DiffusionMasking,
    Masking,
    RandomMasking,
    SpanMasking,
    WholeWordMasking,
)
from mmm.models import HFEncoder, PatchDecoderConfig, TimmEncoder, TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers import (
    AudioTokenizer,
    ImageTokenizer,
    ProteinTokenizer,
    SmilesTokenizer,
    TextTokenizer,
)

__all__ = [
    "AudioTokenizer",
    "BlockMasking",
    "DiffusionMasking",
    "HFEncoder",
    "ImageTokenizer",
    "MaskedModelingModule",
    "Masking",
    "PatchDecoderConfig",
    "ProteinTokenizer",
    "RandomMasking",
    "SmilesTokenizer",
    "SpanMasking",
    "TextTokenizer",
    "TimmEncoder",
    "TransformerEncoder",
    "WholeWordMasking",
]
__version__ = "0.1.0"
