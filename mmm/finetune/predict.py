"""``mmm predict``: a fine-tuned checkpoint's predictions for new inputs, as a CSV.

Inputs are read as ``mmm embed`` reads them for sequence modalities (FASTA, ``.smi``, one
sequence a line; ``mmm.inference.read_sequences``), and one file per item for the others
(``.png``, ``.wav``, ...). Every input becomes a raw sample that the model's tokenizer decodes
as it decodes shard samples, without augmentation, so a prediction sees what validation saw.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmm.finetune.module import FineTuningModule, predictions
from mmm.tokenizers.base import SampleError, Tokenizer
from mmm.tokenizers.multimodal import MultimodalBatcher


@dataclass(frozen=True)
class Prediction:
    """One input's prediction: the class name(s) or value(s), and class probabilities."""

    name: str
    prediction: str
    probabilities: list[float]


def load_finetuned(checkpoint: str, map_location: str = "cpu") -> FineTuningModule:
    """A fine-tuned module in eval mode, from a checkpoint of ``mmm finetune fit``.

    Raises:
        FileNotFoundError / ValueError: naming the file when it is missing, no checkpoint,
            or a pretraining checkpoint (``mmm embed`` serves those).
    """
    from mmm.inference import read_checkpoint

    hyperparameters = read_checkpoint(checkpoint).get("hyper_parameters", {})
    if "task" not in hyperparameters:
        raise ValueError(
            f"{checkpoint} is not a fine-tuned checkpoint (written by mmm finetune fit); for "
            "a pretraining checkpoint's embeddings use mmm embed"
        )
    if hyperparameters.get("backbone") is None and hyperparameters.get("checkpoint") is None:
        raise ValueError(
            f"{checkpoint} was written by a FineTuningModule built in Python, whose backbone "
            "is not in the checkpoint: load it with FineTuningModule.load_from_checkpoint("
            "path, backbone=...)"
        )
    module = FineTuningModule.load_from_checkpoint(
        checkpoint, map_location=map_location, weights_only=True
    )
    return module.eval()


def input_samples(paths: list[str], tokenizer: Tokenizer, member: str) -> list[dict[str, Any]]:
    """Raw samples of the input files: one per record of a sequence file (a discrete
    modality: its text goes to ``member``), else one per file, its bytes under its suffix.

    Raises:
        ValueError: naming a file whose suffix the modality does not read.
    """
    from mmm.inference import read_sequences

    samples = []
    for path in paths:
        if tokenizer.discrete:  # sequences: records of text files
            for name, sequence in read_sequences(path):
                samples.append({"__key__": f"{path}: {name}", member: sequence.encode()})
            continue
        suffix = Path(path).suffix.lower().lstrip(".")
        if suffix not in tokenizer.sample_keys:
            raise ValueError(
                f"{path}: the {tokenizer.modality_name} modality reads files ending in "
                f"{list(tokenizer.sample_keys)}, not {suffix!r}"
            )
        samples.append({"__key__": path, suffix: Path(path).read_bytes()})
    return samples


def input_batcher(module: FineTuningModule, name: str) -> MultimodalBatcher:
    """The backbone's evaluation batcher with every modality but ``name`` optional: new
    inputs carry one modality."""
    batcher = module.batcher
    optional = frozenset(batcher.tokenizers) - {name}
    return MultimodalBatcher(batcher.tokenizers, optional, batcher.members).for_evaluation()


@torch.no_grad()
def predict_samples(
    module: FineTuningModule, samples: list[dict[str, Any]], name: str, batch_size: int = 32
) -> list[Prediction]:
    """Predictions for raw samples of modality ``name``, in order.

    Raises:
        ValueError: naming the input that cannot be decoded.
    """
    batcher, results = input_batcher(module, name), []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        items = []
        for sample in chunk:
            try:
                items.append(batcher.decode_sample(sample))
            except SampleError as error:
                raise ValueError(f"input {sample['__key__']}: {error}") from error
        batch = _to(batcher.collate(items), module.device)
        outputs = predictions(module.task, module(batch))
        results += _rows(module, [sample["__key__"] for sample in chunk], outputs, batch, name)
    return results


def _to(batch: dict, device: torch.device) -> dict:
    return {key: {k: v.to(device) for k, v in sub.items()} for key, sub in batch.items()}


def _rows(
    module: FineTuningModule,
    names: list[str],
    outputs: dict[str, torch.Tensor],
    batch: dict,
    modality: str,
) -> list[Prediction]:
    """One ``Prediction`` per input: the arg-max class, the classes above 0.5 (multilabel),
    the values (regression), or the class of each unit (token classification)."""
    classes = module.hparams.get("classes") or [str(i) for i in range(module.hparams.num_labels)]
    if module.task == "regression":
        values = outputs["values"].cpu()  # (B, T)
        return [
            Prediction(n, " ".join(f"{v:.6g}" for v in row.tolist()), [])
            for n, row in zip(names, values, strict=True)
        ]
    probabilities = outputs["probabilities"].cpu()
    if module.task == "token_classification":
        units = module.batcher.tokenizers[modality].unit_positions(batch[modality]).cpu()
        labels = probabilities.argmax(dim=-1)  # (B, L)
        return [
            Prediction(n, " ".join(classes[i] for i in row[real].tolist()), [])
            for n, row, real in zip(names, labels, units, strict=True)
        ]
    rows = []
    for name, row in zip(names, probabilities, strict=True):
        if module.task == "multilabel":
            chosen = ";".join(c for c, p in zip(classes, row.tolist(), strict=True) if p > 0.5)
        else:
            chosen = classes[int(row.argmax())]
        rows.append(Prediction(name, chosen, row.tolist()))
    return rows


def write_predictions(path: str | Path, rows: list[Prediction], classes: list[str]) -> None:
    """A CSV: ``input``, ``prediction``, and ``p_<class>`` per class when there are
    probabilities."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with_probabilities = any(row.probabilities for row in rows)
    header = ["input", "prediction"] + ([f"p_{c}" for c in classes] if with_probabilities else [])
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            probabilities = [f"{p:.6f}" for p in row.probabilities]
            writer.writerow([row.name, row.prediction, *probabilities])
