"""Labelled samples -> batches: the backbone's modality batch plus ``labels``.

``LabelledBatcher`` wraps a ``MultimodalBatcher`` (the backbone's data side) and reads the
``label.json`` member of each sample beside it (``mmm.data.labels``). It runs in the loader
workers, so bad labels are found there and raised as ``SampleError`` naming the shard and
sample key (the datamodule skips and counts them, or stops, per ``data.on_error``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mmm.data.labels import IGNORED_UNIT, LABEL_MEMBER, LabelError, LabelSpec, parse_label
from mmm.tokenizers.base import SampleError
from mmm.tokenizers.multimodal import ModalityBatch, MultimodalBatcher

Task = Literal["classification", "multilabel", "regression", "token_classification"]
#: The label of a unit that has none (PyTorch's ``ignore_index``).
IGNORE = IGNORED_UNIT


@dataclass(frozen=True)
class LabelledItem:
    """One decoded sample: its modalities' items and its parsed label."""

    inputs: dict[str, Any]
    label: int | float | list[int] | list[float]


@functools.cache
def label_spec(task: Task, num_labels: int, classes: tuple[str, ...] | None = None) -> LabelSpec:
    """The ``LabelSpec`` a module of ``task`` with ``num_labels`` outputs reads labels with:
    its class names (``"0"``, ``"1"``, ... when not known), or ``num_labels`` regression
    targets."""
    if task == "regression":
        return LabelSpec(task, (), num_targets=num_labels)
    return LabelSpec(task, tuple(classes or (str(index) for index in range(num_labels))))


def parse_sample_label(sample: dict[str, Any], spec: LabelSpec) -> Any:
    """The checked ``label.json`` of a raw sample (``mmm.data.labels.parse_label``).

    Raises:
        SampleError: naming the shard and key, when the member is missing, not JSON, or not a
            usable label of ``spec`` (a class outside the label set, a NaN target, ...).
    """
    key, url = sample.get("__key__"), sample.get("__url__")
    try:
        return parse_label(sample.get(LABEL_MEMBER), spec, where=LABEL_MEMBER)
    except LabelError as error:
        raise SampleError(str(error), key, url) from error


class LabelledBatcher(MultimodalBatcher):
    """The backbone's batcher plus labels: the data side of a ``FineTuningModule``. A
    ``MultimodalBatcher`` itself (of the backbone's modalities), so that the datamodule
    takes it wherever it takes the backbone's.

    Args:
        batcher: the backbone's ``MultimodalBatcher``.
        task: how labels read and batch (see ``mmm.data.labels``).
        num_labels: classes (or regression targets); class indices beyond are refused. May be
            set later (``FineTuningModule.setup`` reads it from ``labels.json``).
        modality: the modality whose positions token-level labels lie on.
    """

    def __init__(
        self,
        batcher: MultimodalBatcher,
        task: Task,
        num_labels: int | None = None,
        modality: str | None = None,
    ) -> None:
        super().__init__(batcher.tokenizers, batcher.optional, batcher.members)
        self.task = task
        self.num_labels = num_labels
        self.modality = modality
        if task == "token_classification" and modality not in self.tokenizers:
            raise ValueError(
                f"LabelledBatcher: token-level labels need the modality they lie on, one of "
                f"{list(self.tokenizers)}; got {modality!r}"
            )

    @property
    def sample_keys(self) -> tuple[str, ...]:
        """The backbone's members and ``label.json``."""
        return (*super().sample_keys, LABEL_MEMBER)

    def decode_sample(self, sample: dict[str, Any]) -> LabelledItem:
        """The backbone's items of ``sample`` and its checked label.

        Raises:
            SampleError: naming the sample, for unusable inputs or labels, and for token-level
                labels whose count differs from the units the model sees of the item.
        """
        inputs = super().decode_sample(sample)
        if self.num_labels is None:
            raise RuntimeError(
                "LabelledBatcher: num_labels is not set yet (FineTuningModule.setup sets it "
                "from the data's labels.json)"
            )
        label = parse_sample_label(sample, label_spec(self.task, self.num_labels))
        if self.task == "token_classification":
            self._check_units(sample, inputs, label)
        return LabelledItem(inputs, label)

    def _check_units(self, sample: dict[str, Any], inputs: dict[str, Any], label: list) -> None:
        name = self.modality
        if name not in inputs:
            raise SampleError(
                f"has token-level labels but no {name} modality", sample.get("__key__")
            )
        tokenizer = self.tokenizers[name]
        units = int(tokenizer.unit_positions(tokenizer.collate([inputs[name]])).sum())
        if units != len(label):
            raise SampleError(
                f"{LABEL_MEMBER!r} holds {len(label)} token-level labels, but the model sees "
                f"{units} units of its {name} item (a longer item is cropped or truncated to "
                "the tokenizer's max_length: raise it, or label the kept window)",
                sample.get("__key__"),
                sample.get("__url__"),
            )

    def collate(self, items: list[LabelledItem]) -> ModalityBatch:
        """The backbone's batch (one sample per row) plus ``labels``: (B,) long classes,
        (B, C) float multi-hot, (B,) or (B, T) float targets, or (B_m, L_m) long classes at
        the modality's unit positions (``-100`` elsewhere)."""
        batch = super().collate([item.inputs for item in items])
        batch["labels"] = self.label_tensor(items, batch)
        return batch

    collate_stream = collate  # one sample per row: texts are never packed for labels

    def label_tensor(self, items: list[LabelledItem], batch: ModalityBatch) -> Tensor:
        """The labels of ``items`` as one tensor (see ``collate``)."""
        labels = [item.label for item in items]
        if self.task == "classification":
            return torch.tensor(labels, dtype=torch.long)  # (B,)
        if self.task == "multilabel":
            hot = torch.zeros(len(items), self.num_labels or 0)  # (B, C)
            for row, classes in enumerate(labels):
                hot[row, classes] = 1.0
            return hot
        if self.task == "regression":
            return torch.tensor(labels, dtype=torch.float)  # (B,) or (B, T)
        return self._token_labels(items, batch[self.modality])

    def _token_labels(self, items: list[LabelledItem], sub: dict[str, Tensor]) -> Tensor:
        units = self.tokenizers[self.modality].unit_positions(sub)  # (B_m, L_m)
        rows = sub.get("rows")
        carriers = rows.tolist() if rows is not None else range(len(items))
        out = torch.full(units.shape, IGNORE, dtype=torch.long)  # (B_m, L_m)
        values = [torch.tensor(items[row].label, dtype=torch.long) for row in carriers]
        out[units] = torch.cat(values)  # row-major: each row's units take its labels in order
        return out

    def for_evaluation(self) -> LabelledBatcher:
        """The backbone's evaluation batcher (no augmentation), same labels."""
        return LabelledBatcher(super().for_evaluation(), self.task, self.num_labels, self.modality)

    def __repr__(self) -> str:
        return f"LabelledBatcher({super().__repr__()}, task={self.task!r})"
