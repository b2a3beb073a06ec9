"""Tokenizers: what each modality does with its samples (decode, collate, spec, vocabulary), one
file per modality. Files, shards and corpora are read and written in ``mmm.data``.

The protocol (``Tokenizer``, ``DiscreteTokenizer``, the specs, ``SampleError``) is defined in
``base``. The tokenizer classes are not listed here: they are the modality table's
(``mmm.modalities.MODALITIES``), each imported on first use (PEP 562), so that a modality added
to the table, or registered by a plug-in, is ``mmm.tokenizers.<ItsTokenizer>`` (what configs
name as ``class_path``) with no edit here, and importing one tokenizer does not import the
others' libraries.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmm.modalities import MODALITIES
from mmm.tokenizers.base import ContinuousSpec as ContinuousSpec
from mmm.tokenizers.base import DiscreteSpec as DiscreteSpec
from mmm.tokenizers.base import DiscreteTokenizer as DiscreteTokenizer
from mmm.tokenizers.base import SampleError as SampleError
from mmm.tokenizers.base import Tokenizer as Tokenizer

#: The protocol's names, defined in ``base``.
_PROTOCOL = ["ContinuousSpec", "DiscreteSpec", "DiscreteTokenizer", "SampleError", "Tokenizer"]


def _tokenizer_modules() -> dict[str, str]:
    """Tokenizer class name -> its module, for every row of the modality table now (plug-ins
    registered since import included)."""
    return {info.tokenizer_name: info.tokenizer_module for info in MODALITIES.values()}


def __getattr__(name: str) -> Any:
    """``mmm.tokenizers.<Tokenizer>`` for each modality's tokenizer, imported when first
    asked for."""
    modules = _tokenizer_modules()
    if name not in modules:
        raise AttributeError(f"module 'mmm.tokenizers' has no attribute {name!r}")
    return getattr(importlib.import_module(modules[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_tokenizer_modules()])


__all__ = sorted([*_PROTOCOL, *_tokenizer_modules()])
