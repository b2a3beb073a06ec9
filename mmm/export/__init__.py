"""Leave mmm, and come back: write a trained model as a directory that stock Hugging Face /
timm classes load, and start a model from such a directory.

- ``masked_lm``: text, protein and SMILES models <-> ``EsmForMaskedLM`` (pre-LN trunk) or
  ``BertForMaskedLM`` (post-LN trunk), plus a tokenizer ``AutoTokenizer`` loads with mmm's ids.
- ``vit``: image and audio MAE encoders <-> a timm ``VisionTransformer`` in timm's local format.

Each mapping is exact: the stock model computes what mmm computes (tested in fp32).
"""

from __future__ import annotations

import json
from pathlib import Path

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
from mmm.export.parts import only_modality
from mmm.export.vit import (
    export_timm,
    export_timm_classifier,
    init_from_vit,
    load_timm,
    spectrogram_image,
    timm_kwargs,
    timm_state_dict,
)
from mmm.models.modality import TokenModality
from mmm.module import MaskedModelingModule

__all__ = [
    "classifier_config",
    "classifier_state_dict",
    "export_classifier",
    "export_command",
    "export_masked_lm",
    "export_timm",
    "export_timm_classifier",
    "hf_tokenizer",
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


def init_from(module: MaskedModelingModule, directory: str | Path) -> None:
    """Start ``module``'s embedder, trunk and head from a local directory: a Hugging Face
    masked LM (``config.json`` with ``model_type`` ``esm`` or ``bert``) for a discrete
    modality, a timm ViT (``config.json`` with ``architecture``) for images and audio."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"init_from: {directory} has no config.json (save_pretrained)")
    config = json.loads(path.read_text())
    if isinstance(only_modality(module), TokenModality):
        if "model_type" not in config:
            raise ValueError(f"init_from: {path} is not a Hugging Face masked-LM config")
        init_from_masked_lm(module, directory)
    else:
        if "architecture" not in config:
            raise ValueError(f"init_from: {path} is not a timm model config (no 'architecture')")
        init_from_vit(module, directory)


def export_command(*, checkpoint: str, output: str) -> str:
    """Export a checkpoint written by ``mmm fit`` to a directory stock libraries load.

    Text, protein and SMILES models become ``transformers.EsmForMaskedLM`` (or
    ``BertForMaskedLM`` for a post-LN trunk) plus tokenizer (``AutoModelForMaskedLM`` /
    ``AutoTokenizer`` / ``pipeline("fill-mask")``, no ``trust_remote_code``); image and audio
    MAE encoders become a timm ``VisionTransformer`` (``timm.create_model("local-dir:DIR")``).
    A checkpoint of ``mmm finetune fit`` becomes the family's ``*ForSequenceClassification``
    or ``*ForTokenClassification`` (``AutoModelFor...Classification``), or a timm ViT with
    its classifier head.

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        output: the directory to write.
    """
    from mmm.inference import load_module

    if is_finetuned(checkpoint):
        return _export_finetuned(checkpoint, output)
    module = load_module(checkpoint)
    if isinstance(only_modality(module), TokenModality):
        export_masked_lm(module, output)
        kind = f"transformers {masked_lm_config(module).architectures[0]}"
    else:
        export_timm(module, output)
        kind = "timm VisionTransformer"
    print(f"exported {checkpoint} as {kind} to {output}")
    return output


def is_finetuned(checkpoint: str) -> bool:
    """Whether a checkpoint file was written by ``mmm finetune fit`` (its hyperparameters
    name a task)."""
    from mmm.inference import read_checkpoint

    return "task" in read_checkpoint(checkpoint).get("hyper_parameters", {})


def _export_finetuned(checkpoint: str, output: str) -> str:
    """A fine-tuned checkpoint as the stock classifier of its family, or a timm classifier."""
    from mmm.finetune.predict import load_finetuned

    finetuned = load_finetuned(checkpoint)
    if isinstance(only_modality(finetuned.backbone), TokenModality):
        export_classifier(finetuned, output)
        kind = f"transformers {classifier_config(finetuned).architectures[0]}"
    else:
        export_timm_classifier(finetuned, output)
        kind = "timm VisionTransformer classifier"
    print(f"exported {checkpoint} as {kind} to {output}")
    return output
