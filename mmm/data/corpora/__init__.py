"""Small real datasets that ship inside installed packages, written to shards on first use.

These let ``mmm fit --config configs/<x>.yaml`` run on a fresh machine with no download. Each
corpus is a generator of WebDataset samples (``{"__key__": ..., "<ext>": bytes}``) registered
under a name; ``ensure_embedded_shards`` writes it once to ``train-*.tar`` / ``val-*.tar``
shards, so the embedded data flows through exactly the code path users' own shards take.

Labelled corpora (``register_labelled_corpus``, named ``*-labelled``) give samples with a
``label.json`` member and a ``LabelSpec``; they are written as train/val/test splits with label
budgets (``mmm.data.labelled``). A few read a public dataset the user has cloned (FSDD): their
folder is the ``source_dir`` argument.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmm.data.cache import build_once
from mmm.data.formats import Sample
from mmm.data.labelled import key_fraction, write_labelled_shards
from mmm.data.labels import LABEL_MEMBER, LabelSpec, LabelValue, encode_label
from mmm.data.shards import write_shards

CorpusFactory = Callable[[], Iterator[Sample]]

_CORPORA: dict[str, CorpusFactory] = {}


@dataclass(frozen=True)
class LabelledCorpus:
    """A labelled corpus: its samples (each with ``label.json``, and a ``__split__`` note
    where the corpus has its own split) and what the labels mean."""

    spec: LabelSpec
    samples: Iterable[Sample]
    val_fraction: float = 0.1
    """Share of the samples without their own split that validation takes (by key hash)."""
    test_fraction: float = 0.1
    """Share of the samples without their own split that the test split takes."""


def labelled_samples(
    keys: Iterable[str], member: str, inputs: Iterable[bytes], labels: Iterable[LabelValue]
) -> Iterator[Sample]:
    """Samples of a labelled corpus: each key with its input under ``member`` and its label
    as ``label.json``."""
    for key, content, label in zip(keys, inputs, labels, strict=True):
        yield {"__key__": key, member: content, LABEL_MEMBER: encode_label(label)}


#: Makes a labelled corpus; those registered with ``reads_folder`` take the folder as argument.
LabelledFactory = Callable[..., LabelledCorpus]

_LABELLED: dict[str, LabelledFactory] = {}
_READS_FOLDER: set[str] = set()


def register_corpus(name: str) -> Callable[[CorpusFactory], CorpusFactory]:
    """Register a generator of samples as an embedded corpus called ``name``."""

    def decorator(factory: CorpusFactory) -> CorpusFactory:
        _CORPORA[name] = factory
        return factory

    return decorator


def register_labelled_corpus(
    name: str, reads_folder: bool = False
) -> Callable[[LabelledFactory], LabelledFactory]:
    """Register a labelled corpus called ``name``; with ``reads_folder``, its factory takes
    the folder of the user's copy of the dataset (``source_dir``)."""

    def decorator(factory: LabelledFactory) -> LabelledFactory:
        _LABELLED[name] = factory
        if reads_folder:
            _READS_FOLDER.add(name)
        return factory

    return decorator


def corpus_names() -> list[str]:
    _import_builtin_corpora()
    return sorted([*_CORPORA, *_LABELLED])


def is_labelled_corpus(name: str) -> bool:
    """Whether ``name`` is a labelled corpus (written with splits, budgets, ``labels.json``)."""
    _import_builtin_corpora()
    return name in _LABELLED


def reads_folder(name: str) -> bool:
    """Whether corpus ``name`` reads a folder the user names (``source_dir``)."""
    _import_builtin_corpora()
    return name in _READS_FOLDER


def labelled_corpus(name: str, source_dir: str | os.PathLike | None = None) -> LabelledCorpus:
    """The labelled corpus ``name``; ``source_dir`` goes to corpora that read a folder."""
    _import_builtin_corpora()
    if name not in _LABELLED:
        raise ValueError(f"unknown labelled corpus {name!r}; available: {sorted(_LABELLED)}")
    factory = _LABELLED[name]
    return factory(source_dir) if name in _READS_FOLDER else factory()


def iter_corpus(name: str) -> Iterator[Sample]:
    """Samples of the embedded corpus ``name``."""
    _import_builtin_corpora()
    if name in _LABELLED:  # one that reads a folder says how to name it
        return iter(labelled_corpus(name).samples)
    if name not in _CORPORA:
        raise ValueError(f"unknown embedded corpus {name!r}; available: {corpus_names()}")
    return _CORPORA[name]()


def is_validation_key(key: str, val_fraction: float) -> bool:
    """Deterministic train/validation split by a hash of the sample key."""
    return key_fraction(key) < val_fraction


def ensure_embedded_shards(
    name: str,
    out_dir: str | os.PathLike,
    samples_per_shard: int = 2000,
    val_fraction: float = 0.05,
    source_dir: str | os.PathLike | None = None,
) -> Path:
    """Write corpus ``name`` as ``out_dir/train-NNNNNN.tar`` and ``out_dir/val-NNNNNN.tar`` once
    (a labelled corpus: its splits, label budgets and ``labels.json``, see
    ``mmm.data.labelled``; ``source_dir`` is the folder of one that reads the user's copy).

    Safe to call from several processes (DDP ranks): a file lock serializes writers and a
    ``.complete`` marker makes later calls return at once.
    """
    out = Path(out_dir)

    def write_labelled() -> None:
        corpus = labelled_corpus(name, source_dir)
        summary = write_labelled_shards(
            corpus.samples,
            out,
            corpus.spec,
            val_fraction=corpus.val_fraction,
            test_fraction=corpus.test_fraction,
            samples_per_shard=samples_per_shard,
        )
        (out / ".complete").write_text(f"{name}: {summary}\n")

    def write() -> None:
        samples = list(iter_corpus(name))
        val = [s for s in samples if is_validation_key(s["__key__"], val_fraction)]
        train = [s for s in samples if not is_validation_key(s["__key__"], val_fraction)]
        write_shards(train, str(out / "train-%06d.tar"), max_count=samples_per_shard)
        write_shards(val, str(out / "val-%06d.tar"), max_count=samples_per_shard)
        (out / ".complete").write_text(f"{name}: {len(train)} train, {len(val)} val samples\n")

    build_once(
        out / ".complete",
        is_built=Path.exists,
        build=write_labelled if is_labelled_corpus(name) else write,
    )
    return out


def _import_builtin_corpora() -> None:
    """Import the modules that register the built-in corpora (kept lazy: some read many files)."""
    from mmm.data.corpora import (  # noqa: F401
        audio,
        image,
        moses,
        protein,
        smiles,
        text,
        timeseries,
    )
