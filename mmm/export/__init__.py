"""Leave mmm, and come back: write a trained model as a directory that stock Hugging Face /
timm classes load, and start a model from such a directory.

- ``masked_lm``: text, protein and SMILES models <-> ``EsmForMaskedLM`` (pre-LN trunk) or
  ``BertForMaskedLM`` (post-LN trunk), plus a tokenizer ``AutoTokenizer`` loads with mmm's ids.
- ``vit``: image and audio MAE encoders <-> a timm ``VisionTransformer`` in timm's local format.

Each mapping is exact: the stock model computes what mmm computes (tested in fp32).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from mmm.export.masked_lm import (
    classifier_config,
    classifier_state_dict,
    export_classifier,
    export_masked_lm,
    hf_tokenizer,
    init_from_masked_lm,
    masked_lm_config,
    masked_lm_state_dict,
    to_classifier,
    to_masked_lm,
)
from mmm.export.parts import MappingError, only_tokenizer
from mmm.export.vit import (
    export_timm,
    export_timm_classifier,
    init_from_vit,
    load_timm,
    spectrogram_image,
    timm_kwargs,
    timm_state_dict,
)
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import ExportFamily

__all__ = [
    "MappingError",
    "classifier_config",
    "classifier_state_dict",
    "export_classifier",
    "export_family",
    "export_masked_lm",
    "export_timm",
    "export_timm_classifier",
    "hf_tokenizer",
    "apply_init_from",
    "init_from",
    "init_from_masked_lm",
    "init_from_vit",
    "load_timm",
    "masked_lm_config",
    "masked_lm_state_dict",
    "spectrogram_image",
    "timm_kwargs",
    "timm_state_dict",
    "to_classifier",
    "to_masked_lm",
]


def init_from(module: MaskedModelingModule, directory: str | Path) -> MaskedModelingModule:
    """Start ``module``'s embedder, trunk and head from a local directory (and return it): a
    Hugging Face masked LM (``config.json`` with ``model_type`` ``esm`` or ``bert``) for a
    modality of the ``masked_lm`` family, a timm ViT (``config.json`` with ``architecture``)
    for the ``vit`` family. The converter lives here, outside the module: its caller applies
    it (``mmm fit --model.init_from`` through ``apply_init_from``; in Python, call it on a
    new module before training).

    Raises:
        MappingError: starting ``init_from DIRECTORY:``, for a directory without a readable
            ``config.json``, with weights that cannot be read (a truncated
            ``model.safetensors``), or whose model does not map onto ``module``.
    """
    try:
        config = _read_config(Path(directory))
        family = export_family(module)
        if family == "masked_lm" and "model_type" not in config:
            raise MappingError("its config.json is not a Hugging Face masked-LM config")
        if family == "vit" and "architecture" not in config:
            raise MappingError("its config.json is not a timm model config (no 'architecture')")
        with _named_weights(Path(directory)):
            INIT_FROM[family](module, directory)
    except MappingError as error:
        raise MappingError(f"init_from {directory}: {error}") from error
    module.initialized_from = str(directory)
    return module


def apply_init_from(model: nn.Module) -> None:
    """Apply the ``init_from`` setting of every ``MaskedModelingModule`` in ``model`` (the
    model itself, or a fine-tuning module's backbone) that has not been applied yet: what
    the CLI does after building the model from its configuration, before it runs."""
    for part in model.modules():
        if isinstance(part, MaskedModelingModule) and part.pending_init_from() is not None:
            init_from(part, part.pending_init_from())


#: Each export family's mapping from a saved directory onto a module (``init_from``).
INIT_FROM: dict[ExportFamily, Callable[[MaskedModelingModule, str | Path], None]] = {
    "masked_lm": init_from_masked_lm,
    "vit": init_from_vit,
}


def export_family(module: MaskedModelingModule) -> ExportFamily:
    """The stock family a one-modality module maps onto, as its modality says
    (``Tokenizer.export_family``).

    Raises:
        MappingError: for a modality that maps onto none.
    """
    tokenizer = only_tokenizer(module)
    if tokenizer.export_family is None:
        raise MappingError(str(tokenizer.not_supported("export to a stock family")))
    return tokenizer.export_family


def _read_config(directory: Path) -> dict:
    """The ``config.json`` of a saved model, or a MappingError saying what is wrong with it."""
    path = directory / "config.json"
    if not directory.is_dir():
        raise MappingError("no such folder")
    if not path.is_file():
        raise MappingError("no config.json in it (write one with save_pretrained or mmm export)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MappingError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise MappingError(f"{path} holds a {type(config).__name__}, not a JSON object")
    return config


#: Weight files a saved model may hold, as ``_named_weights`` names them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


@contextmanager
def _named_weights(directory: Path) -> Iterator[None]:
    """Turn what transformers and timm raise on unreadable weights (safetensors' own error for
    a truncated file, ``OSError`` for a missing one) into a MappingError naming the files."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError, EOFError) as error:
        files = [name for name in WEIGHT_FILES if (directory / name).is_file()]
        held = ", ".join(f"{name} ({(directory / name).stat().st_size} bytes)" for name in files)
        raise MappingError(
            f"its weights cannot be read ({held or 'no weight file'}; truncated or not a "
            f"weight file?): {type(error).__name__}: {error}"
        ) from error
