"""Labels of labelled shards: the ``label.json`` member of each sample and the ``labels.json``
file beside the shards that says what the labels mean.

A labelled sample is an ordinary mmm sample (the members the tokenizers read: ``png``, ``wav``,
``txt``, ``seq``, ``smi``) plus one member ``label.json`` holding JSON:

- ``classification``: an int class index;
- ``multilabel``: a list of int class indices;
- ``regression``: a float, or a list of floats (several targets);
- ``token_classification``: a list of ints, one per unit of the item (residue, SMILES
  character-token, word), ``-100`` for units without a label.

Writers turn a user's label (a class name, a number, a list) into that value with
``label_value``; readers check a stored member with ``parse_label``. Both raise ``LabelError``
naming the sample (its key, or a manifest's file and line) and what is wrong with the label.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from mmm.data.members import LABEL_MEMBER

#: The file beside labelled shards that describes their labels (``LabelSpec``).
LABELS_FILE = "labels.json"
#: The label value of a token (unit) that has no label; losses ignore it.
IGNORED_UNIT = -100

Task = Literal["classification", "multilabel", "regression", "token_classification"]
TASKS: tuple[str, ...] = get_args(Task)
#: Label value as stored in ``label.json``.
LabelValue = int | float | list[int] | list[float]


class LabelError(ValueError):
    """A sample's label is missing or does not fit the labels' ``LabelSpec``; the message
    names the sample (key, or manifest and line)."""


@dataclass(frozen=True)
class LabelSpec:
    """What the labels of a folder of labelled shards mean (``labels.json`` beside them)."""

    task: Task
    """``classification``, ``multilabel``, ``regression`` or ``token_classification``."""
    classes: tuple[str, ...] = ()
    """Class names by index (classification kinds); empty for regression."""
    modality_member: str = ""
    """The sample member that holds the input (``png``, ``wav``, ``txt``, ``seq``, ``smi``)."""
    num_targets: int = 1
    """Regression targets per sample (a float when 1, else a list of that many floats)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise LabelError(f"LabelSpec: task must be one of {TASKS}, got {self.task!r}")
        object.__setattr__(self, "classes", tuple(str(name) for name in self.classes))
        if self.task == "regression" and self.classes:
            raise LabelError(f"LabelSpec: regression labels have no classes, got {self.classes}")
        if self.task != "regression" and not self.classes:
            raise LabelError(f"LabelSpec: {self.task} labels need their class names")
        if len(set(self.classes)) < len(self.classes):
            raise LabelError(f"LabelSpec: class names repeat: {list(self.classes)}")
        if self.num_targets < 1:
            raise LabelError(f"LabelSpec: num_targets must be >= 1, got {self.num_targets}")

    @property
    def num_labels(self) -> int:
        """Outputs a head needs: the number of classes, or of regression targets."""
        return self.num_targets if self.task == "regression" else len(self.classes)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "task": self.task,
            "classes": list(self.classes),
            "modality_member": self.modality_member,
        }
        if self.task == "regression":
            document["num_targets"] = self.num_targets
        return document

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/labels.json``."""
        path = Path(directory) / LABELS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LabelSpec:
        """Read ``directory/labels.json`` (or the ``labels.json`` file itself).

        Raises:
            FileNotFoundError: when the folder holds no ``labels.json`` (not labelled shards).
            LabelError: naming the file when it is not JSON or its fields are wrong.
        """
        path = Path(directory)
        path = path if path.name == LABELS_FILE else path / LABELS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: {directory} holds no labelled shards (write them with "
                "'mmm shards --modality manifest --label COLUMN' or an embedded '*-labelled' "
                "corpus)"
            )
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise LabelError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(document, dict) or "task" not in document:
            raise LabelError(f"{path}: expected an object with 'task' and 'classes'")
        unknown = set(document) - {"task", "classes", "modality_member", "num_targets"}
        if unknown:
            raise LabelError(f"{path}: unknown fields {sorted(unknown)}")
        classes = document.get("classes", [])
        if not isinstance(classes, list):
            raise LabelError(f"{path}: 'classes' must be a list of names, got {classes!r}")
        try:
            return cls(
                task=document["task"],
                classes=tuple(classes),
                modality_member=str(document.get("modality_member", "")),
                num_targets=int(document.get("num_targets", 1)),
            )
        except LabelError as error:
            raise LabelError(f"{path}: {error}") from error


# ------------------------------------------------------------------ reading stored labels
def parse_label(raw: bytes | str | None, spec: LabelSpec, where: str) -> LabelValue:
    """The label stored in a sample's ``label.json`` member, checked against ``spec``.

    Args:
        raw: the member's bytes (or text); ``None`` when the sample has no such member.
        spec: what the labels mean.
        where: the sample, named in errors (its key and shard).

    Raises:
        LabelError: naming ``where`` for a missing or non-JSON label, a class index out of
            range, a NaN or infinite regression target, a malformed multilabel list, or a
            token-label list that is not ints.
    """
    if raw is None:
        raise LabelError(f"{where}: no {LABEL_MEMBER!r} member (an unlabelled sample)")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelError(f"{where}: {LABEL_MEMBER} is not valid JSON ({error})") from error
    return _CHECKS[spec.task](value, spec, where)


def _class_index(value: Any, spec: LabelSpec, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LabelError(f"{where}: a {spec.task} label is a class index (int), got {value!r}")
    if not 0 <= value < len(spec.classes):
        raise LabelError(
            f"{where}: class index {value} is not in the label set of {len(spec.classes)} "
            f"classes {_listing(spec.classes)}"
        )
    return value


def _check_classification(value: Any, spec: LabelSpec, where: str) -> int:
    return _class_index(value, spec, where)


def _check_multilabel(value: Any, spec: LabelSpec, where: str) -> list[int]:
    if not isinstance(value, list):
        raise LabelError(f"{where}: a multilabel label is a list of class indices, got {value!r}")
    indices = [_class_index(item, spec, where) for item in value]
    if len(set(indices)) < len(indices):
        raise LabelError(f"{where}: a multilabel label repeats a class: {value!r}")
    return sorted(indices)


def _check_regression(value: Any, spec: LabelSpec, where: str) -> float | list[float]:
    targets = value if isinstance(value, list) else [value]
    if len(targets) != spec.num_targets:
        raise LabelError(
            f"{where}: expected {spec.num_targets} regression target(s), got {value!r}"
        )
    checked = [_finite(target, where) for target in targets]
    return checked[0] if spec.num_targets == 1 and not isinstance(value, list) else checked


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LabelError(f"{where}: a regression target is a number, got {value!r}")
    if not math.isfinite(value):
        raise LabelError(f"{where}: regression target {value!r} is not finite")
    return float(value)


def _check_token_classification(value: Any, spec: LabelSpec, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    ):
        raise LabelError(
            f"{where}: token labels are a list of ints (one per unit, {IGNORED_UNIT} for none), "
            f"got {_short(value)}"
        )
    wrong = [item for item in value if item != IGNORED_UNIT and not 0 <= item < len(spec.classes)]
    if wrong:
        raise LabelError(
            f"{where}: token label {wrong[0]} is not a class index of {_listing(spec.classes)} "
            f"nor {IGNORED_UNIT}"
        )
    return list(value)


_CHECKS = {
    "classification": _check_classification,
    "multilabel": _check_multilabel,
    "regression": _check_regression,
    "token_classification": _check_token_classification,
}


# --------------------------------------------------------------- users' labels -> stored
def label_value(raw: Any, spec: LabelSpec, where: str) -> LabelValue:
    """A user's label (a manifest cell or JSON value) as ``label.json`` stores it: a class
    name becomes its index, a numeric text its float, a ``;``-separated text of class names
    (multilabel, CSV) its sorted indices.

    Raises:
        LabelError: naming ``where`` for a missing or empty label, a class not in the label
            set, a non-numeric, NaN or infinite regression target, a malformed multilabel
            list, or token labels that are not ints.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()) or raw == []:
        raise LabelError(f"{where}: the label is missing or empty")
    if spec.task == "classification":
        return _index_of(raw, spec, where)
    if spec.task == "multilabel":
        names = raw.split(";") if isinstance(raw, str) else raw
        if not isinstance(names, list):
            raise LabelError(
                f"{where}: a multilabel label is a list of class names (or 'a;b' in a CSV), "
                f"got {raw!r}"
            )
        return _check_multilabel([_index_of(name, spec, where) for name in names], spec, where)
    if spec.task == "regression":
        targets = raw if isinstance(raw, list) else [raw]
        value = [_number(target, where) for target in targets]
        return _check_regression(value if isinstance(raw, list) else value[0], spec, where)
    if isinstance(raw, str):  # a JSON list in a CSV cell
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise LabelError(
                f"{where}: token labels {raw!r} are not valid JSON ({error})"
            ) from None
    return _check_token_classification(raw, spec, where)


def _index_of(name: Any, spec: LabelSpec, where: str) -> int:
    text = str(name).strip()
    if text not in spec.classes:
        raise LabelError(
            f"{where}: class {text!r} is not in the label set {_listing(spec.classes)}"
        )
    return spec.classes.index(text)


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise LabelError(f"{where}: regression target {value!r} is not a number") from None
    return _finite(value, where)


def encode_label(value: LabelValue) -> bytes:
    """The ``label.json`` member of a checked label value."""
    return json.dumps(value).encode("utf-8")


def class_names(raw_labels: Sequence[Any], task: str) -> tuple[str, ...]:
    """The sorted class names of users' labels (``;``-separated texts or lists for
    multilabel), for a label set collected from the training rows."""
    names: set[str] = set()
    for raw in raw_labels:
        if task == "multilabel":
            names.update(str(n).strip() for n in (raw.split(";") if isinstance(raw, str) else raw))
        else:
            names.add(str(raw).strip())
    return tuple(sorted(names))


def _listing(classes: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(name) for name in classes[:limit])
    return f"[{shown}{', ...' if len(classes) > limit else ''}]"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
