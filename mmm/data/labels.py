"""Labels of fine-tuning data: the ``label.json`` member of a sample, and the ``labels.json``
file beside the shards that says what the labels mean.

A labelled sample is an ordinary mmm WebDataset sample plus one member ``label.json``:

- ``classification``: an int class index;
- ``multilabel``: a list of int class indices;
- ``regression``: a float, or a list of floats for several targets;
- ``token_classification``: a list of ints, one per unit of the item (residue, SMILES token),
  ``-100`` for unlabelled units.

Beside the shards, ``labels.json`` holds ``{"task": ..., "classes": [...],
"modality_member": ...}`` (``LabelSpec``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: The sample member that holds a sample's label.
LABEL_MEMBER = "label.json"
#: The file beside the shards that describes the labels.
LABELS_FILE = "labels.json"
#: The tasks a label can serve.
TASKS = ("classification", "multilabel", "regression", "token_classification")


@dataclass(frozen=True)
class LabelSpec:
    """What the labels of a labelled shard folder mean."""

    task: str
    """``classification``, ``multilabel``, ``regression`` or ``token_classification``."""
    classes: tuple[str, ...] = ()
    """Class names by class index (classification kinds; empty for regression)."""
    modality_member: str | None = None
    """The sample member that holds the input (``png``, ``seq``, ``smi``, ...)."""
    num_targets: int = 1
    """Regression targets per sample."""
    extra: dict = field(default_factory=dict, compare=False)
    """Other fields of the file, kept as they are."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"LabelSpec: task must be one of {TASKS}, got {self.task!r}")
        if self.task != "regression" and not self.classes:
            raise ValueError(f"LabelSpec: a {self.task} task needs its class names (classes)")
        object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def num_labels(self) -> int:
        """Outputs a model needs: the classes, or the regression targets."""
        return self.num_targets if self.task == "regression" else len(self.classes)

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/labels.json``."""
        path = Path(directory) / LABELS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {k: v for k, v in asdict(self).items() if k != "extra"}
        fields["classes"] = list(self.classes)
        path.write_text(json.dumps({**self.extra, **fields}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> LabelSpec:
        """Read ``directory/labels.json`` (or the file itself).

        Raises:
            FileNotFoundError: naming the path when there is no such file.
            ValueError: naming the path when it is not valid JSON or lacks ``task``.
        """
        path = Path(directory)
        path = path if path.suffix == ".json" else path / LABELS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {LABELS_FILE} at {path} (it names the task and classes)")
        try:
            fields = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(fields, dict) or "task" not in fields:
            raise ValueError(f"{path} must be a JSON object with a 'task' field")
        known = {"task", "classes", "modality_member", "num_targets"}
        try:
            return cls(
                task=fields["task"],
                classes=tuple(fields.get("classes", ())),
                modality_member=fields.get("modality_member"),
                num_targets=int(fields.get("num_targets", 1)),
                extra={k: v for k, v in fields.items() if k not in known},
            )
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
