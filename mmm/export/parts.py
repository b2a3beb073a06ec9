"""The parts of a module that stock classes reproduce, found and checked once for every
export and ``init_from`` mapping."""

from __future__ import annotations

from torch import nn

from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import Tokenizer


def trunk(module: MaskedModelingModule) -> TransformerEncoder:
    """The module's encoder, if it is the Transformer trunk that stock classes reproduce."""
    encoder = module.encoder
    if not isinstance(encoder, TransformerEncoder):
        raise TypeError(
            f"export: only mmm.models.TransformerEncoder trunks map onto stock classes, "
            f"this module has {type(encoder).__name__}"
        )
    return encoder


def only_modality(module: MaskedModelingModule) -> nn.Module:
    """The module's one modality: stock classes hold one embedder and head."""
    try:
        return module.modalities[module.modality_named()]
    except ValueError as error:
        raise ValueError(
            f"export: only one-modality models map onto stock classes; {error}"
        ) from error


def only_tokenizer(module: MaskedModelingModule) -> Tokenizer:
    """The tokenizer of the module's one modality."""
    only_modality(module)  # refuses multimodal modules with the same message
    return module.tokenizers[module.modality_named()]


def layer_norm_eps(*parts: nn.Module) -> float:
    """The one epsilon of the LayerNorms in ``parts`` (stock classes have one)."""
    found = {m.eps for part in parts for m in part.modules() if isinstance(m, nn.LayerNorm)}
    if len(found) != 1:
        raise ValueError(f"export: LayerNorms with several eps {sorted(found)} cannot be mapped")
    return found.pop()


def require_same(directory: object, have: dict[str, object], need: dict[str, object]) -> None:
    """Refuse a source whose settings (``have``) differ from what the module needs, naming
    the first setting that differs and the value the module needs."""
    for name, value in need.items():
        if have.get(name) != value:
            raise ValueError(
                f"init_from: {directory} has {name}={have.get(name)!r}, this model needs "
                f"{value!r} (set the encoder/tokenizer options to match the source)"
            )
