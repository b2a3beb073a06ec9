"""Every modality mmm knows, in one table: its name, its tokenizer (the processing), the
reader that turns users' files into shard samples, the sample members it reads, and whether
its positions are discrete token ids or continuous vectors.

The table is the one list the rest derives from: ``mmm``'s public names, the contract tests
(``tests/test_tokenizer_contract.py`` checks each row against its tokenizer and reader), and
``tokenizer_class``. What a modality *does* (export, probe, render) its tokenizer answers
through protocol methods (``mmm.tokenizers.base.Tokenizer``); this table says what it *is*.
Adding a modality: its tokenizer file, its format reader, one row here (or
``register_modality`` from outside mmm), a YAML, one case in the contract tests. See
``docs/modalities.md``.

Importing this module imports no tokenizer (rows name classes by import path), so that
``import mmm`` stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmm.data.formats.audio import AUDIO_EXTENSIONS
from mmm.data.formats.image import IMAGE_EXTENSIONS
from mmm.data.members import PROTEIN_MEMBER, SERIES_MEMBER, SMILES_MEMBER, TEXT_MEMBER

if TYPE_CHECKING:
    from mmm.tokenizers.base import Tokenizer


@dataclass(frozen=True)
class ModalityInfo:
    """One modality.

    Attributes:
        name: the modality's name: its tokenizer's ``modality_name`` and the reader's
            ``mmm shards --modality`` name.
        tokenizer: the tokenizer class as ``module:Class``.
        members: the sample members (file extensions inside a shard) the tokenizer reads.
        discrete: positions are token ids (``DiscreteSpec``), else real-valued vectors.
        reader: the format reader registered for ``mmm shards --modality``, or ``None``
            when shards of this modality are written another way.
    """

    name: str
    tokenizer: str
    members: tuple[str, ...]
    discrete: bool
    reader: str | None = None

    def __post_init__(self) -> None:
        if ":" not in self.tokenizer:
            raise ValueError(
                f"ModalityInfo {self.name!r}: tokenizer must be 'module:Class', "
                f"got {self.tokenizer!r}"
            )
        if not self.members:
            raise ValueError(f"ModalityInfo {self.name!r}: members must name at least one")

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer's class name."""
        return self.tokenizer.split(":")[1]

    @property
    def tokenizer_module(self) -> str:
        """The module that defines the tokenizer."""
        return self.tokenizer.split(":")[0]


#: The modalities mmm ships, by name.
MODALITIES: dict[str, ModalityInfo] = {
    info.name: info
    for info in (
        ModalityInfo("text", "mmm.tokenizers.text:TextTokenizer", (TEXT_MEMBER,), True, "text"),
        ModalityInfo(
            "protein", "mmm.tokenizers.protein:ProteinTokenizer", (PROTEIN_MEMBER,), True, "protein"
        ),
        ModalityInfo(
            "smiles", "mmm.tokenizers.smiles:SmilesTokenizer", (SMILES_MEMBER,), True, "smiles"
        ),
        ModalityInfo(
            "image", "mmm.tokenizers.image:ImageTokenizer", IMAGE_EXTENSIONS, False, "image"
        ),
        ModalityInfo(
            "audio", "mmm.tokenizers.audio:AudioTokenizer", AUDIO_EXTENSIONS, False, "audio"
        ),
        ModalityInfo(
            "timeseries",
            "mmm.tokenizers.timeseries:TimeSeriesTokenizer",
            (SERIES_MEMBER,),
            False,
            "timeseries",
        ),
    )
}


def register_modality(info: ModalityInfo) -> ModalityInfo:
    """Add a modality defined outside mmm to the table (a plug-in: its tokenizer class lives
    in its own package).

    Raises:
        ValueError: naming the modality, when the name is taken by another row.
    """
    known = MODALITIES.get(info.name)
    if known is not None and known != info:
        raise ValueError(f"modality {info.name!r} is registered already ({known.tokenizer})")
    MODALITIES[info.name] = info
    return info


def modality(name: str) -> ModalityInfo:
    """The row of modality ``name``.

    Raises:
        KeyError: naming the modality and the known ones.
    """
    if name not in MODALITIES:
        raise KeyError(f"no modality {name!r}; known: {sorted(MODALITIES)}")
    return MODALITIES[name]


def tokenizer_class(name: str) -> type[Tokenizer]:
    """The tokenizer class of modality ``name``, imported on first use."""
    info = modality(name)
    return getattr(importlib.import_module(info.tokenizer_module), info.tokenizer_name)
