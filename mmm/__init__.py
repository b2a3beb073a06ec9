"""mmm: multimodal masked modeling on PyTorch Lightning.

One objective (hide positions, encode the rest, predict what was hidden) for text, images,
audio, proteins, SMILES and time series, on a shared Transformer encoder.

The names below are imported on first use (PEP 562), so that importing a part of mmm, such as
``mmm.data``, does not import the models and every modality with it.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmm.modalities import MODALITIES

#: Public name -> the module that defines it.
_EXPORTS = {
    "BlockMasking": "mmm.masking",
    "DiffusionMasking": "mmm.masking",
    "ForecastMasking": "mmm.masking",
    "HFEncoder": "mmm.models",
    "MaskedModelingModule": "mmm.module",
    "ModalityConfig": "mmm.module",
    "MultimodalBatcher": "mmm.tokenizers.multimodal",
    "Masking": "mmm.masking",
    "PatchDecoderConfig": "mmm.models",
    "RandomMasking": "mmm.masking",
    "SpanMasking": "mmm.masking",
    "TimmEncoder": "mmm.models",
    "TokenBudgets": "mmm.cross_modal_masking",
    "TubeMasking": "mmm.masking",
    "TransformerEncoder": "mmm.models",
    "WholeWordMasking": "mmm.masking",
}

#: Each modality's tokenizer, from the one table of modalities (``mmm.modalities``).
_EXPORTS.update({info.tokenizer_name: info.tokenizer_module for info in MODALITIES.values()})

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``mmm.<name>`` for the public names, imported from their module when first asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mmm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
