"""The parts of a module that stock classes reproduce, found and checked once for every
export and ``init_from`` mapping."""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import nn

from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule, ModalityConfig
from mmm.tokenizers.base import Tokenizer

PartType = TypeVar("PartType")


class MappingError(ValueError):
    """A module that stock classes cannot hold, or a directory that does not map onto a
    module. The message says what does not map, not which command asked:
    ``export_command`` and ``init_from`` put theirs in front (``export CHECKPOINT: ...``,
    ``init_from DIRECTORY: ...``), so that ``mmm fit --model.init_from`` never says export."""


def trunk(module: MaskedModelingModule) -> TransformerEncoder:
    """The module's encoder, if it is the Transformer trunk that stock classes reproduce."""
    encoder = module.encoder
    if not isinstance(encoder, TransformerEncoder):
        raise MappingError(
            f"only mmm.models.TransformerEncoder trunks map onto stock classes, "
            f"this module has {type(encoder).__name__}"
        )
    return encoder


def only_modality(module: MaskedModelingModule) -> nn.Module:
    """The module's one modality: stock classes hold one embedder and head."""
    if len(module.modalities) != 1:
        raise MappingError(
            f"stock classes hold one modality; this model has {list(module.modalities)}"
        )
    return next(iter(module.modalities.values()))


def one_modality_module(module: MaskedModelingModule, name: str | None) -> MaskedModelingModule:
    """``module`` as stock classes hold it: itself when it has one modality; else a
    one-modality copy of modality ``name``, its embedder and head around a copy of the shared
    trunk, the modality embedding folded into the embedder (``add_to_embeddings``). The copy
    computes what ``module`` computes on samples that carry ``name`` alone.

    Raises:
        MappingError: for a multimodal module and no ``name``, or a name it lacks, listing
            its modalities.
    """
    names = list(module.modalities)
    if name is not None and name not in names:
        raise MappingError(f"no modality {name!r} in this model; it has {names}")
    if len(names) == 1:
        return module
    if name is None:
        raise MappingError(
            f"this model has the modalities {names}; stock classes hold one: name it with "
            f"--modality (e.g. --modality {names[0]}) to export its embedder and head with the "
            "shared trunk"
        )
    config = ModalityConfig(module.tokenizers[name], module.maskings[name])
    single = MaskedModelingModule(modalities={name: config}, encoder=copy.deepcopy(module.encoder))
    single.modalities[name] = copy.deepcopy(module.modalities[name])
    offset = module.modality_embeddings[list(module.modalities).index(name)].detach()  # (D,)
    single.modalities[name].add_to_embeddings(offset)
    return single.to(module.device).eval()


def only_tokenizer(module: MaskedModelingModule) -> Tokenizer:
    """The tokenizer of the module's one modality."""
    only_modality(module)  # refuses multimodal modules with the same message
    return module.tokenizers[module.modality_named()]


def require_part(
    module: MaskedModelingModule, part: PartType, kind: type[PartType], need: str
) -> PartType:
    """``part`` of ``module``'s one modality, if it is a ``kind``; else a ``MappingError``
    that says what the converter ``need``s and names the modality. A type guard, not a kind
    switch: which converter runs is the tokenizer's ``export_family``; this catches a
    modality that claims a family without the part its converter maps."""
    if not isinstance(part, kind):
        tokenizer = only_tokenizer(module)
        raise MappingError(
            f"{need}; the {tokenizer.modality_name} modality ({type(tokenizer).__name__}) has "
            f"a {type(part).__name__}"
        )
    return part


def layer_norm_eps(*parts: nn.Module) -> float:
    """The one epsilon of the LayerNorms in ``parts`` (stock classes have one)."""
    found = {m.eps for part in parts for m in part.modules() if isinstance(m, nn.LayerNorm)}
    if len(found) != 1:
        raise MappingError(f"LayerNorms with several eps {sorted(found)} cannot be mapped")
    return found.pop()


def require_same(directory: object, have: dict[str, object], need: dict[str, object]) -> None:
    """Refuse a source whose settings (``have``) differ from what the module needs, naming
    the first setting that differs and the value the module needs."""
    for name, value in need.items():
        if have.get(name) != value:
            raise MappingError(
                f"it has {name}={have.get(name)!r}, this model needs "
                f"{value!r} (set the encoder/tokenizer options to match the source)"
            )
