"""Model parts: the shared encoder, and each modality's embedder/head pair."""

from mmm.models.embedders import TokenEmbedder
from mmm.models.encoder import Encoder, HFEncoder, TransformerEncoder
from mmm.models.heads import TokenHead
from mmm.models.modality import Modality, TokenModality, build_modality

__all__ = [
    "Encoder",
    "HFEncoder",
    "Modality",
    "TokenEmbedder",
    "TokenHead",
    "TokenModality",
    "TransformerEncoder",
    "build_modality",
]
