"""Commands on trained models: export one to stock classes, probe its frozen encoder (the
probe mode of fine-tuning), predict with a fine-tuned one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

from mmm.export import export_family
from mmm.export.masked_lm import (
    classifier_config,
    export_classifier,
    export_masked_lm,
    masked_lm_config,
)
from mmm.export.parts import MappingError, one_modality_module
from mmm.export.vit import (
    export_timm,
    export_timm_classifier,
)
from mmm.files import replaced_folder, require_empty_folder
from mmm.finetune.predict import input_samples, load_finetuned, predict_samples, write_predictions
from mmm.finetune.probe import ProbeReport, ProbeSettings, linear_probe


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


def consolidate_command(*, checkpoint: str, output: str | None = None) -> str:
    """Gather a sharded checkpoint folder (``mmm fit --trainer.strategy fsdp2`` writes one
    shard per rank) into one ``.ckpt`` file, which ``mmm export``, the other tools,
    ``load_module`` and a run without sharding (``--ckpt_path``) read. Resuming a sharded
    run needs no conversion: ``--ckpt_path FOLDER`` reads the folder.

    Args:
        checkpoint: the folder, e.g. ``lightning_logs/version_0/checkpoints/epoch=0-step=800.ckpt``.
        output: the file to write; default: the folder's path plus ``.consolidated``.
    """
    from mmm.sharding import consolidate

    path = consolidate(checkpoint, output)
    print(f"consolidated {checkpoint} into {path}")
    return str(path)


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


def probe_command(
    *,
    checkpoint: str,
    data: str,
    modality: str | None = None,
    steps: int = 200,
    lr: float = 1e-2,
    batch_size: int = 64,
    label_fraction: float = 1.0,
    seed: int = 0,
    data_dir: str = "data",
    source_dir: str | None = None,
    num_workers: int = 0,
) -> ProbeReport:
    """Linear probe of a checkpoint's frozen encoder on labelled data: the ``probe`` mode of
    ``FineTuningModule`` (mean pooling, one linear layer), trained on the training split and
    scored on the test split, for the checkpoint's encoder and for the same architecture
    randomly initialized (the control), with the same data, steps and seed.

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        data: a labelled corpus (``digits-labelled``, ``amp-labelled``, ``freesolv-labelled``,
            ``docstrings-labelled``, ``fsdd-labelled``, ...; the ``-labelled`` may be left
            off) or a folder of labelled shards (``mmm shards --modality manifest``).
        modality: the modality of a multimodal model to probe (default: the one that reads
            the data's inputs).
        steps: training steps of each probe's linear head.
        lr: the head's peak learning rate (AdamW, cosine decay).
        batch_size: labelled samples per step.
        label_fraction: the label budget trained on (``1.0``, ``0.3``, ``0.1``).
        seed: seeds the shard order, the heads and the control's random weights.
        data_dir: where labelled corpora are written on first use.
        source_dir: the dataset folder a corpus reads (``fsdd-labelled``: an FSDD clone).
        num_workers: loader worker processes.

    Prints and returns each encoder's test metrics.
    """
    settings = ProbeSettings(steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    settings = replace(settings, label_fraction=label_fraction, num_workers=num_workers)
    report = linear_probe(
        checkpoint, data, modality, settings=settings, data_dir=data_dir, source_dir=source_dir
    )
    print(
        f"{data}: {report.modality} modality, linear probe of the frozen encoder "
        f"({steps} steps), test split, {report.headline} first"
    )
    for encoder, scores in report.scores.items():
        others = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if k != report.headline)
        print(f"  {encoder:<20} {scores[report.headline]:.3f}  ({others})")
    return report


def predict_command(
    *,
    checkpoint: str,
    inputs: str | list[str],
    output: str,
    batch_size: int = 32,
    modality: str | None = None,
) -> str:
    """Predict with a fine-tuned checkpoint and write one CSV row per input.

    Columns: ``input`` (file, and record for sequence files), ``prediction`` (the class name;
    the classes above 0.5 joined by ``;`` for multilabel; the value(s) for regression; the
    class of each unit for token classification) and ``p_<class>``, the probability of each
    class (classification kinds).

    Args:
        checkpoint: a checkpoint written by ``mmm finetune fit``.
        inputs: files, folders or glob/brace patterns: FASTA / ``.smi`` / one sequence a line
            for text, proteins and SMILES; one ``.png`` / ``.wav`` / ... file per image or clip.
        output: the CSV file to write.
        batch_size: inputs per forward pass.
        modality: the modality the inputs are (default: the one the model was fine-tuned on,
            or its only one).
    """
    from mmm.data.patterns import expand_inputs

    if batch_size < 1:
        raise ValueError(f"predict: batch_size must be >= 1, got {batch_size}")
    module = load_finetuned(checkpoint)
    name = module.backbone.modality_named(modality or module.modality)
    tokenizer = module.batcher.tokenizers[name]
    member = module.batcher.members.get(name, tokenizer.sample_keys[0])
    samples = input_samples(expand_inputs(inputs), tokenizer, member)
    if not samples:
        raise ValueError(f"predict: no input in {inputs}")
    rows = predict_samples(module, samples, name, batch_size)
    classes = module.hparams.get("classes") or [str(i) for i in range(module.hparams.num_labels)]
    write_predictions(output, rows, classes)
    print(f"predicted {len(rows)} inputs with {checkpoint} into {output}")
    return output
