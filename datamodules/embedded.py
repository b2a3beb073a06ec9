"""Embedded corpora as shards: written under ``data_dir`` on first use, read like any other."""

from __future__ import annotations

import os
from pathlib import Path

from mmm.data.corpora import ensure_embedded_shards

#: Samples per shard of embedded corpora: small shards so that even the small embedded sets
#: give every reader of a few ranks and workers a shard of its own.
EMBEDDED_SAMPLES_PER_SHARD = 256


def prepare_embedded(
    name: str, data_dir: str | os.PathLike = "data", source_dir: str | None = None
) -> Path:
    """The directory of embedded corpus ``name`` under ``data_dir``, its ``train-*.tar`` and
    ``val-*.tar`` shards written on first use, sized as ``ShardDataModule.prepare_data``
    writes them (whoever comes first, later readers see the same shards). ``source_dir``:
    the user's copy of a corpus read from a folder (FSDD)."""
    return ensure_embedded_shards(
        name,
        os.path.join(data_dir, name),
        samples_per_shard=EMBEDDED_SAMPLES_PER_SHARD,
        source_dir=source_dir,
    )


def embedded_shards(name: str, split: str, data_dir: str | os.PathLike = "data") -> list[str]:
    """Sorted ``split`` (``train`` or ``val``) shards of embedded corpus ``name``, written
    under ``data_dir`` first if they are not there yet: for code that reads the shards
    without a ``ShardDataModule`` (a fresh checkout has no ``data/``)."""
    if split not in ("train", "val"):
        raise ValueError(f"embedded_shards: split must be 'train' or 'val', got {split!r}")
    return sorted(
        str(path) for path in prepare_embedded(name, data_dir).glob(f"{split}-[0-9]*.tar")
    )
