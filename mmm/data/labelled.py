"""Labelled samples -> shards with train/val/test splits and label budgets.

One folder holds a labelled set (see ``mmm.data.labels`` for the ``label.json`` member)::

    DIR/labels.json                       what the labels mean (LabelSpec)
    DIR/train-000000.tar ...              the training split
    DIR/train-p10-000000.tar ...          10% of the training labels (stratified, seeded)
    DIR/train-p30-000000.tar ...          30%; p10 is inside p30, p30 inside train
    DIR/val-000000.tar, DIR/test-...      held out, the same whatever the budget

A split's shards are ``DIR/<split>-[0-9]*.tar`` (``split_pattern``): ``train-*.tar`` would
also match the budgets' shards. Splits come from a sample's own ``__split__`` note (a corpus's
own test set, held-out speakers, a manifest's ``split`` column), else from a hash of its key, so
they are the same on every machine and do not move when other samples come or go.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmm.data.formats import SKIPPED, Sample, manifest_samples
from mmm.data.labels import (
    LABEL_MEMBER,
    LABELS_FILE,
    LabelError,
    LabelSpec,
    class_names,
    encode_label,
    label_value,
    parse_label,
)
from mmm.data.shards import SHARD_INDEX_SUFFIX, output_lock, write_shards

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Label budgets: fraction of the training labels -> the shard name prefix of that subset.
BUDGETS: dict[float, str] = {0.1: "train-p10", 0.3: "train-p30", 1.0: "train"}
#: A sample's note naming its split (``train``, ``val`` or ``test``), never written.
SPLIT_NOTE = "__split__"
#: A sample's note holding its label as the user wrote it (manifests), never written.
RAW_LABEL_NOTE = "__label__"
#: Names of splits in users' manifests -> ours.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}
#: Notes of labelled samples that ``write_labelled_shards`` drops (shards keep only strings).
_NOTES = (SPLIT_NOTE, RAW_LABEL_NOTE)
#: Regression targets are stratified by this many quantile bins of the first target.
REGRESSION_STRATA = 5
#: Each split is cut into at least this many shards when it has enough samples, so that even
#: a 10% budget gives every loader worker of a few ranks a shard of its own.
MIN_SHARDS = 8


def split_pattern(directory: str | os.PathLike, prefix: str) -> str:
    """The shards of one split or budget (``prefix``: ``train``, ``train-p10``, ``val``, ...):
    ``train-[0-9]*.tar`` leaves out ``train-p10-*.tar``, which ``train-*.tar`` would match."""
    return os.path.join(os.fspath(directory), f"{prefix}-[0-9]*.tar")


def budget_prefix(label_fraction: float) -> str:
    """The shard prefix of a label budget (``0.1`` -> ``train-p10``).

    Raises:
        ValueError: naming the budgets written when ``label_fraction`` is not one of them.
    """
    for fraction, prefix in BUDGETS.items():
        if math.isclose(label_fraction, fraction):
            return prefix
    raise ValueError(
        f"label_fraction must be one of the label budgets written, {sorted(BUDGETS)}; "
        f"got {label_fraction}"
    )


# ----------------------------------------------------------------------------- splits
def key_fraction(key: str, salt: str = "") -> float:
    """A number in [0, 1) from a hash of ``key`` (and ``salt``): the same on every machine."""
    digest = hashlib.blake2b(f"{salt}{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def hashed_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """``test``, ``val`` or ``train`` for a sample key, by a hash of the key."""
    where = key_fraction(key)
    if where < test_fraction:
        return "test"
    return "val" if where < test_fraction + val_fraction else "train"


def split_of(sample: Sample, val_fraction: float, test_fraction: float) -> str:
    """A sample's split: its own ``__split__`` note when set, else ``hashed_split``.

    Raises:
        LabelError: naming the sample when its own split is not a split name.
    """
    own = sample.get(SPLIT_NOTE)
    if own is None or (isinstance(own, str) and not own.strip()):
        return hashed_split(sample["__key__"], val_fraction, test_fraction)
    name = SPLIT_NAMES.get(str(own).strip().lower())
    if name is None:
        raise LabelError(
            f"{_where(sample)}: split {own!r} is not one of {sorted(SPLIT_NAMES)} (train, val "
            "or test)"
        )
    return name


def parse_fractions(splits: str | Sequence[float]) -> tuple[float, float, float]:
    """Train, val and test fractions from ``"0.8,0.1,0.1"`` (or a list), summing to 1.

    Raises:
        ValueError: naming the value when it is not three non-negative numbers summing to 1.
    """
    try:
        parts = [float(p) for p in (splits.split(",") if isinstance(splits, str) else splits)]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or not math.isclose(sum(parts), 1.0) or parts[0] == 0:
        raise ValueError(
            f"splits must be three fractions train,val,test summing to 1 with some training "
            f"(e.g. 0.8,0.1,0.1), got {splits!r}"
        )
    return parts[0], parts[1], parts[2]


# ---------------------------------------------------------------------------- budgets
def strata(labels: Sequence[Any], task: str) -> list[Any]:
    """What label budgets keep in proportion: the class of each sample (classification),
    its quantile bin of the first target (regression), or one stratum (other tasks)."""
    if task == "classification":
        return list(labels)
    if task == "regression" and labels:
        first = np.array([v[0] if isinstance(v, list) else v for v in labels], dtype=float)
        edges = np.quantile(first, np.linspace(0, 1, REGRESSION_STRATA + 1)[1:-1])
        return np.searchsorted(edges, first, side="right").tolist()
    return [0] * len(labels)


def nested_budgets(
    keys: Sequence[str], groups: Sequence[Any], fractions: Iterable[float], seed: int = 0
) -> dict[float, list[int]]:
    """Indices of the samples each label budget keeps: in each stratum, the samples in a
    seeded order fixed by a hash of their keys, the first ``max(1, round(f * n))`` of them.
    The order is the same for every fraction, so the budgets are nested (p10 within p30
    within the whole), and every stratum keeps at least one sample.

    Args:
        keys: the training samples' keys.
        groups: each sample's stratum (see ``strata``).
        fractions: budgets in (0, 1].
        seed: the order's seed.

    Returns:
        fraction -> ascending indices into ``keys``.
    """
    members: dict[Any, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    for group in members.values():
        group.sort(key=lambda i: key_fraction(keys[i], salt=f"budget-{seed}:"))
    return {
        fraction: sorted(
            i for group in members.values() for i in group[: max(1, round(fraction * len(group)))]
        )
        for fraction in fractions
    }


def select_classes(
    names: Sequence[str],
    *,
    min_count: int,
    max_classes: int | None = None,
    cap: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Which items of a labelled list to keep, so that every class has enough examples for a
    held-out score and none swamps the others.

    Args:
        names: each item's class name.
        min_count: classes with fewer items are left out.
        max_classes: keep only this many of the largest classes (``None``: all).
        cap: keep at most this many items of a class, drawn at random (``None``: all).
        seed: the draw's seed.

    Returns:
        The kept items' indices (ascending), their class numbers, and the class names by
        number (largest class first, ties by name).
    """
    counts = Counter(names)
    ranked = sorted(counts, key=lambda name: (-counts[name], name))
    classes = tuple(name for name in ranked if counts[name] >= min_count)[:max_classes]
    rng = np.random.default_rng(seed)
    everything = np.asarray(names)
    kept = []
    for name in classes:
        members = np.flatnonzero(everything == name)
        if cap is not None and len(members) > cap:
            members = rng.choice(members, size=cap, replace=False)
        kept.append(members)
    index = np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
    number = {name: i for i, name in enumerate(classes)}
    return index, np.array([number[names[i]] for i in index], dtype=np.int64), classes


# ---------------------------------------------------------------------------- writing
@dataclass
class LabelledSummary:
    """What writing a labelled folder produced."""

    directory: Path
    spec: LabelSpec
    counts: dict[str, int] = field(default_factory=dict)
    """Samples per split and budget (``train``, ``train-p10``, ``val``, ...)."""
    skipped: int = 0
    """Manifest lines left out for a bad label or line (``on_error="skip"``)."""

    def __str__(self) -> str:
        parts = ", ".join(f"{name} {count}" for name, count in self.counts.items())
        classes = f"{len(self.spec.classes)} classes" if self.spec.classes else "no classes"
        return (
            f"wrote labelled shards to {self.directory} ({self.spec.task}, {classes}): {parts}; "
            f"skipped {self.skipped} (a bad label or line)"
        )


def write_labelled_shards(
    samples: Iterable[Sample],
    directory: str | os.PathLike,
    spec: LabelSpec,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    samples_per_shard: int = 256,
    seed: int = 0,
) -> LabelledSummary:
    """Write labelled samples (each with a ``label.json`` member, and optionally its own
    ``__split__``) as split and budget shards plus ``labels.json`` in ``directory``.

    Raises:
        LabelError: naming the sample whose label does not fit ``spec`` (checked with
            ``parse_label`` before anything is written).
        ValueError: when a split other than val or test would be empty.
    """
    out = Path(directory)
    by_split: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    for sample in samples:
        split = split_of(sample, val_fraction, test_fraction)
        by_split[split].append({k: v for k, v in sample.items() if k not in _NOTES})
    if not by_split["train"]:
        raise ValueError(f"no training sample for {out} (every sample is in val or test)")
    train = by_split["train"]
    labels = [parse_label(s.get(LABEL_MEMBER), spec, _where(s)) for s in train]
    for sample in by_split["val"] + by_split["test"]:
        parse_label(sample.get(LABEL_MEMBER), spec, _where(sample))
    budgets = nested_budgets(
        [s["__key__"] for s in train], strata(labels, spec.task), list(BUDGETS), seed=seed
    )
    parts = {prefix: [train[i] for i in budgets[fraction]] for fraction, prefix in BUDGETS.items()}
    parts.update(val=by_split["val"], test=by_split["test"])
    counts = {}
    for prefix in ("train", "train-p30", "train-p10", "val", "test"):
        chosen = parts[prefix]
        if chosen:
            size = max(1, min(samples_per_shard, math.ceil(len(chosen) / MIN_SHARDS)))
            write_shards(chosen, str(out / f"{prefix}-%06d.tar"), max_count=size)
        counts[prefix] = len(chosen)
    spec.save(out)
    return LabelledSummary(directory=out, spec=spec, counts=counts)


def _where(sample: Sample) -> str:
    """How errors name a sample: its source (manifest and line) or key."""
    return str(sample.get("__source__") or f"sample {sample['__key__']!r}")


# ------------------------------------------------------------------ labelled manifests
OnError = Literal["skip", "raise"]


def labelled_manifest_shards(
    paths: list[str],
    directory: str,
    *,
    label: str,
    task: str = "classification",
    splits: str | Sequence[float] = "0.8,0.1,0.1",
    split_column: str = "split",
    classes: str | Sequence[str] | None = None,
    on_error: OnError = "raise",
    max_count: int = 256,
    overwrite: bool = False,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    allow_outside: bool = False,
) -> LabelledSummary:
    """Labelled manifests (JSONL or CSV, see ``manifest_samples``) -> a labelled folder.

    Each line's ``label`` field is its label: a class name (``classification``), class names
    as a list or ``a;b`` text (``multilabel``), a number or list of numbers (``regression``),
    or a list of ints (``token_classification``). A line's own ``split_column`` value
    (``train``/``val``/``test``) wins; other lines are split by a hash of their key.

    Args:
        paths: manifest files.
        directory: the output folder.
        label: the field holding each line's label.
        task: what the labels are (see ``mmm.data.labels.TASKS``).
        splits: train, val and test fractions for lines without their own split.
        split_column: the field that names a line's split, where present.
        classes: the label set (``a,b,c`` or a list), in index order; default: the sorted
            names found in the training lines (classification kinds). Token labels need it.
        on_error: ``raise`` stops at the first bad label (or bad line, see
            ``manifest_samples``) with an error naming the manifest and line; ``skip`` leaves
            such lines out, logs them and counts them.
        max_count: most samples per shard.
        overwrite: replace a labelled folder already at ``directory``.
        seed: the label budgets' seed.
        options: more ``manifest_samples`` options (``key_field``, ``file_fields``, ...).
        allow_outside: read files the manifests name outside their folders.

    Raises:
        OutputBusyError: when another run writes ``directory``.
        FileExistsError: when ``directory`` holds labelled shards and not ``overwrite``.
        LabelError: for a bad label (``raise``) or a bad split name, naming manifest and line.
        ValueError: for bad ``splits``, a task with classes but none given or found, or
            when no line is left.
    """
    _, val_fraction, test_fraction = parse_fractions(splits)
    with output_lock(directory):
        return _write_labelled_manifests(
            paths,
            Path(directory),
            label=label,
            task=task,
            fractions=(val_fraction, test_fraction),
            split_column=split_column,
            classes=classes,
            on_error=on_error,
            max_count=max_count,
            overwrite=overwrite,
            seed=seed,
            options={**(options or {}), "allow_outside": allow_outside, "on_error": on_error},
        )


def _write_labelled_manifests(
    paths: list[str],
    out: Path,
    *,
    label: str,
    task: str,
    fractions: tuple[float, float],
    split_column: str,
    classes: str | Sequence[str] | None,
    on_error: OnError,
    max_count: int,
    overwrite: bool,
    seed: int,
    options: dict[str, Any],
) -> LabelledSummary:
    """``labelled_manifest_shards`` once it holds the output's lock."""
    _clear_labelled_folder(out, overwrite)
    samples = manifest_samples(paths, **options, label_field=label, split_field=split_column)
    rows, skipped = [], 0
    for sample in samples:
        if SKIPPED in sample:  # a line the manifest reader left out (on_error=skip)
            skipped += 1
        else:
            rows.append(sample)
    val_fraction, test_fraction = fractions
    for row in rows:
        row[SPLIT_NOTE] = split_of(row, val_fraction, test_fraction)
    spec = LabelSpec(
        task=task,  # type: ignore[arg-type]  # checked by LabelSpec
        classes=_label_set(rows, task, classes),
        modality_member=_input_member(rows),
    )
    kept, bad = _with_labels(rows, spec, on_error)
    skipped += bad
    if not kept:
        raise ValueError(f"no labelled line left of {len(rows)} in {paths} ({skipped} skipped)")
    summary = write_labelled_shards(
        kept,
        out,
        spec,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        samples_per_shard=max_count,
        seed=seed,
    )
    summary.skipped = skipped
    return summary


def _with_labels(
    rows: list[Sample], spec: LabelSpec, on_error: OnError
) -> tuple[list[Sample], int]:
    """The rows with their label as ``label.json``, and how many were left out for a bad
    label (``skip``; the first 10 logged).

    Raises:
        LabelError: naming the manifest and line of the first bad label (``raise``).
    """
    kept, skipped = [], 0
    for row in rows:
        try:
            value = label_value(row.pop(RAW_LABEL_NOTE), spec, _where(row))
        except LabelError as error:
            if on_error == "raise":
                raise
            skipped += 1
            if skipped <= 10:
                log.warning("skipping %s", error)
            continue
        kept.append({**row, LABEL_MEMBER: encode_label(value)})
    return kept, skipped


def _label_set(rows: list[Sample], task: str, given: str | Sequence[str] | None) -> tuple[str, ...]:
    """The classes given, or those of the training rows (none for regression)."""
    if given is not None:
        names = given.split(",") if isinstance(given, str) else list(given)
        return tuple(name.strip() for name in names if name.strip())
    if task == "regression":
        return ()
    if task == "token_classification":
        raise ValueError("token_classification labels are class indices: name the classes")
    raw = [
        row[RAW_LABEL_NOTE]
        for row in rows
        if row[SPLIT_NOTE] == "train" and row.get(RAW_LABEL_NOTE) not in (None, "", [])
    ]
    found = class_names(raw, task)
    if not found:
        raise ValueError(f"no {task} label in the training lines to collect classes from")
    return found


def _input_member(rows: list[Sample]) -> str:
    """The member most samples carry besides notes and metadata: the input's."""
    members = Counter(
        name for row in rows for name in row if not name.startswith("__") and name != "json"
    )
    return members.most_common(1)[0][0] if members else ""


def _clear_labelled_folder(out: Path, overwrite: bool) -> None:
    """Refuse, or with ``overwrite`` remove, the shards, indices and ``labels.json`` of a
    labelled folder already at ``out`` (nothing else in it)."""
    old = [
        path
        for prefix in ("train", "train-p10", "train-p30", "val", "test")
        for pattern in (f"{prefix}-[0-9]*.tar", f"{prefix}{SHARD_INDEX_SUFFIX}")
        for path in out.glob(pattern)
    ] + ([out / LABELS_FILE] if (out / LABELS_FILE).exists() else [])
    if old and not overwrite:
        raise FileExistsError(f"{out} holds labelled shards ({len(old)} files); set overwrite")
    for path in old:
        path.unlink()
