"""Small real datasets that ship inside installed packages, written to shards on first use.

These let ``mmm fit --config configs/<x>.yaml`` run on a fresh machine with no download. Each
corpus is a generator of WebDataset samples (``{"__key__": ..., "<ext>": bytes}``) registered
under a name; ``ensure_embedded_shards`` writes it once to ``train-*.tar`` / ``val-*.tar``
shards, so the embedded data flows through exactly the code path users' own shards take.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from mmm.data.cache import build_once
from mmm.data.formats import Sample
from mmm.data.shards import write_shards

CorpusFactory = Callable[[], Iterator[Sample]]

_CORPORA: dict[str, CorpusFactory] = {}


def register_corpus(name: str) -> Callable[[CorpusFactory], CorpusFactory]:
    """Register a generator of samples as an embedded corpus called ``name``."""

    def decorator(factory: CorpusFactory) -> CorpusFactory:
        _CORPORA[name] = factory
        return factory

    return decorator


def corpus_names() -> list[str]:
    _import_builtin_corpora()
    return sorted(_CORPORA)


def iter_corpus(name: str) -> Iterator[Sample]:
    """Samples of the embedded corpus ``name``."""
    _import_builtin_corpora()
    if name not in _CORPORA:
        raise ValueError(f"unknown embedded corpus {name!r}; available: {sorted(_CORPORA)}")
    return _CORPORA[name]()


def is_validation_key(key: str, val_fraction: float) -> bool:
    """Deterministic train/validation split by a hash of the sample key."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


def ensure_embedded_shards(
    name: str, out_dir: str | os.PathLike, samples_per_shard: int = 2000, val_fraction: float = 0.05
) -> Path:
    """Write corpus ``name`` as ``out_dir/train-NNNNNN.tar`` and ``out_dir/val-NNNNNN.tar`` once.

    Safe to call from several processes (DDP ranks): a file lock serializes writers and a
    ``.complete`` marker makes later calls return at once.
    """
    out = Path(out_dir)

    def write() -> None:
        samples = list(iter_corpus(name))
        val = [s for s in samples if is_validation_key(s["__key__"], val_fraction)]
        train = [s for s in samples if not is_validation_key(s["__key__"], val_fraction)]
        write_shards(train, str(out / "train-%06d.tar"), max_count=samples_per_shard)
        write_shards(val, str(out / "val-%06d.tar"), max_count=samples_per_shard)
        (out / ".complete").write_text(f"{name}: {len(train)} train, {len(val)} val samples\n")

    build_once(out / ".complete", is_built=Path.exists, build=write)
    return out


def _import_builtin_corpora() -> None:
    """Import the modules that register the built-in corpora (kept lazy: some read many files)."""
    from mmm.data.corpora import audio, image, moses, protein, smiles, text  # noqa: F401
