"""Loading a distillation teacher and starting its student from it.

A student's ``distillation.teacher`` names an mmm checkpoint or a local Hugging Face
masked-LM directory; either way the teacher becomes a ``MaskedModelingModule``, so that it
reads the student's batches as they are (packed rows, per-document attention, the student's
masks). A Hugging Face directory is converted by the masked-LM converter of ``mmm export``
(``BertForMaskedLM`` onto a post-LN trunk, ``EsmForMaskedLM`` onto a pre-LN one), which
maps it exactly. These converters live outside the module (``mmm.export`` imports
``mmm.module``), so the module records the setting and ``mmm fit`` applies it here, as it
applies ``init_from``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from mmm.distillation import even_layers
from mmm.inference import load_module
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule


def load_teacher(source: str, student: MaskedModelingModule) -> MaskedModelingModule:
    """The teacher ``source`` names, in eval mode: an mmm checkpoint file, or a Hugging Face
    masked-LM directory read with the student's tokenizer.

    Raises:
        FileNotFoundError: when ``source`` is neither a file nor a directory.
    """
    path = Path(source)
    if path.is_dir():
        return masked_lm_teacher(path, student)
    if path.is_file():
        return load_module(str(path), distillation=None)
    raise FileNotFoundError(
        f"--model.distillation.teacher {source}: no checkpoint file or Hugging Face directory there"
    )


def masked_lm_teacher(directory: Path, student: MaskedModelingModule) -> MaskedModelingModule:
    """A Hugging Face ``BertForMaskedLM``/``EsmForMaskedLM`` directory as an mmm module with
    the student's tokenizer (of its one discrete modality), sized by the directory's
    ``config.json``; the converter refuses a vocabulary or layout that does not map."""
    from mmm.export import init_from

    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"--model.distillation.teacher {directory}: no config.json in it (a Hugging Face "
            "masked-LM directory, as save_pretrained or mmm export write it)"
        )
    config = json.loads(config_file.read_text())
    width = config["hidden_size"]
    encoder = TransformerEncoder(
        dim=width,
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_ratio=config["intermediate_size"] / width,
        norm_first=config.get("model_type") == "esm",  # ESM is pre-LN, BERT post-LN
        layer_norm_eps=config.get("layer_norm_eps", 1e-12),
    )
    tokenizer = student.tokenizers[student.modality_named(discrete=True)]
    teacher = MaskedModelingModule(tokenizer=tokenizer, encoder=encoder)
    return init_from(teacher, directory).eval()


def init_student_from_teacher(
    student: MaskedModelingModule, teacher: MaskedModelingModule
) -> list[int]:
    """Copy the teacher's modality embedders and heads, final norm, modality embeddings and
    the blocks ``even_layers`` picks (every other one at half the depth: DistilBERT) into
    the student, whose width must be the teacher's; returns the teacher blocks copied.

    Raises:
        ValueError: for trunks that differ in their norm placement or block shapes.
    """
    mine, theirs = student.encoder, teacher.encoder
    if mine.norm_first != theirs.norm_first:
        raise ValueError(
            f"Distillation: the student's trunk has norm_first={mine.norm_first}, the "
            f"teacher's {theirs.norm_first}: set --model.encoder.norm_first="
            f"{str(theirs.norm_first).lower()} to start the student from the teacher"
        )
    layers = even_layers(len(theirs.blocks), len(mine.blocks))
    pairs: list[tuple[str, nn.Module, nn.Module]] = [
        (f"block {layer}", mine.blocks[index], theirs.blocks[layer])
        for index, layer in enumerate(layers)
    ]
    pairs.append(("final norm", mine.norm, theirs.norm))
    for name, modality in student.modalities.items():
        if name in teacher.modalities:
            pairs.append((f"{name} embedder and head", modality, teacher.modalities[name]))
    for what, target, source in pairs:
        try:
            target.load_state_dict(source.state_dict())
        except RuntimeError as error:
            raise ValueError(
                f"Distillation: cannot start the student's {what} from the teacher's (set "
                f"init_from_teacher: false, or match its heads and feed-forward width): {error}"
            ) from error
    own, given = student.modality_embeddings, teacher.modality_embeddings
    if own is not None and given is not None and own.shape == given.shape:
        own.data.copy_(given.data)
    return layers


def apply_teacher(model: nn.Module) -> None:
    """Load and attach the teacher of every distilling ``MaskedModelingModule`` in ``model``
    that has none yet, starting the student from it first when ``init_from_teacher`` and
    the widths match (``mmm fit`` calls this before training)."""
    for student in model.modules():
        if not isinstance(student, MaskedModelingModule):
            continue
        terms = student.distillation
        if terms is None or terms.teacher is not None:
            continue
        teacher = load_teacher(terms.settings.teacher, student)
        if terms.settings.init_from_teacher and student.encoder.dim == teacher.encoder.dim:
            if student.initialized_from is not None:
                raise ValueError(
                    "Distillation: both init_from and distillation.init_from_teacher start the "
                    "student; set --model.distillation.init_from_teacher false or drop init_from"
                )
            layers = init_student_from_teacher(student, teacher)
            rank_zero_info(f"distillation: the student starts from teacher blocks {layers}")
        terms.attach(teacher, student)
