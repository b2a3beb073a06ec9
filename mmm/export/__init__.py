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
from functools import partial
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
from mmm.export.parts import MappingError, one_modality_module, only_tokenizer
from mmm.export.vit import (
    export_timm,
    export_timm_classifier,
    init_from_vit,
    load_timm,
    spectrogram_image,
    timm_kwargs,
    timm_state_dict,
)
from mmm.files import replaced_folder, require_empty_folder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import ExportFamily

__all__ = [
    "MappingError",
    "classifier_config",
    "classifier_state_dict",
    "export_classifier",
    "export_command",
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


def export_command(
    *, checkpoint: str, output: str, modality: str | None = None, overwrite: bool = False
) -> str:
    """Export a checkpoint written by ``mmm fit`` to a directory stock libraries load.

    Text, protein and SMILES models become ``transformers.EsmForMaskedLM`` (or
    ``BertForMaskedLM`` for a post-LN trunk) plus tokenizer (``AutoModelForMaskedLM`` /
    ``AutoTokenizer`` / ``pipeline("fill-mask")``, no ``trust_remote_code``); image and audio
    MAE encoders become a timm ``VisionTransformer`` (``timm.create_model("local-dir:DIR")``).
    A checkpoint of ``mmm finetune fit`` becomes the family's ``*ForSequenceClassification``
    or ``*ForTokenClassification`` (``AutoModelFor...Classification``), or a timm ViT with
    its classifier head. The directory is written beside ``output`` and renamed into place
    once complete.

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        output: the directory to write; it must be empty or new unless ``overwrite``.
        modality: for a multimodal model, the modality to export: its embedder and head with
            the shared trunk (its modality embedding folded into the embedder), computing what
            the model computes on samples that carry only this modality.
        overwrite: replace the contents of a non-empty ``output``.
    """
    require_empty_folder(output, overwrite, what="export")
    try:
        write, kind = _writer(checkpoint, modality)
        with replaced_folder(output) as staged:
            write(staged)
    except MappingError as error:
        raise MappingError(f"export {checkpoint}: {error}") from error
    which = f" (modality {modality!r})" if modality else ""
    print(f"exported {checkpoint}{which} as {kind} to {output}")
    return output


def is_finetuned(checkpoint: str) -> bool:
    """Whether a checkpoint file was written by ``mmm finetune fit`` (its hyperparameters
    name a task)."""
    from mmm.inference import read_checkpoint

    return "task" in read_checkpoint(checkpoint).get("hyper_parameters", {})


def _writer(checkpoint: str, modality: str | None) -> tuple[Callable[[Path], object], str]:
    """What writes ``checkpoint``'s export into a folder, and the kind it writes: a masked LM
    or a timm ViT for a pretraining checkpoint, the stock classifier of its family or a timm
    classifier for a fine-tuned one."""
    from mmm.finetune.predict import load_finetuned
    from mmm.inference import load_module

    if is_finetuned(checkpoint):
        finetuned = load_finetuned(checkpoint)
        if export_family(finetuned.backbone) == "masked_lm":
            kind = f"transformers {classifier_config(finetuned).architectures[0]}"
            return partial(export_classifier, finetuned), kind
        return partial(export_timm_classifier, finetuned), "timm VisionTransformer classifier"
    module = one_modality_module(load_module(checkpoint), modality)
    if export_family(module) == "masked_lm":
        kind = f"transformers {masked_lm_config(module).architectures[0]}"
        return partial(export_masked_lm, module), kind
    return partial(export_timm, module), "timm VisionTransformer"
