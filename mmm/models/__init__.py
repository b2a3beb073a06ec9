"""Model parts: the shared encoder, and each modality's embedder/head pair."""

from mmm.models.embedders import PatchEmbedder, TokenEmbedder
from mmm.models.encoder import Encoder, HFEncoder, TimmEncoder, TransformerEncoder
from mmm.models.heads import PatchDecoder, PatchDecoderConfig, TokenHead
from mmm.models.modality import ContinuousModality, DiscreteModality, Modality, build_modality

__all__ = [
    "Encoder",
    "HFEncoder",
    "Modality",
    "PatchDecoder",
    "PatchDecoderConfig",
    "PatchEmbedder",
    "ContinuousModality",
    "TokenEmbedder",
    "TokenHead",
    "TimmEncoder",
    "DiscreteModality",
    "TransformerEncoder",
    "build_modality",
]
