"""Writing WebDataset shards, and turning users' own files into samples for them."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import webdataset as wds

Sample = dict[str, Any]
#: Reads input files of one modality and yields WebDataset samples (``__key__`` + members).
SampleSource = Callable[..., Iterator[Sample]]

_SOURCES: dict[str, SampleSource] = {}


def register_source(name: str) -> Callable[[SampleSource], SampleSource]:
    """Register ``fn(paths: list[str], **options) -> Iterator[sample]`` as the reader that
    ``mmm shards --modality NAME`` uses for input files of that modality."""

    def decorator(fn: SampleSource) -> SampleSource:
        _SOURCES[name] = fn
        return fn

    return decorator


def sample_source(name: str) -> SampleSource:
    """The registered reader of modality ``name``."""
    import mmm.tokenizers  # noqa: F401  (tokenizer modules register their readers)

    if name not in _SOURCES:
        raise ValueError(f"no shard reader for modality {name!r}; available: {sorted(_SOURCES)}")
    return _SOURCES[name]


@dataclass
class ShardSummary:
    """What a shard-writing run produced."""

    shards: list[str]
    samples: int
    bytes: int
    skipped: int = 0

    def __str__(self) -> str:
        return (
            f"wrote {self.samples} samples in {len(self.shards)} shards "
            f"({self.bytes / 1e6:.1f} MB), skipped {self.skipped}"
        )


def write_shards(
    samples: Iterable[dict[str, Any]],
    pattern: str,
    max_count: int = 10_000,
    max_size: float = 1e9,
) -> ShardSummary:
    """Write samples to tar shards named by ``pattern`` (e.g. ``out/train-%06d.tar``), starting a
    new shard after ``max_count`` samples or ``max_size`` bytes, whichever comes first."""
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, verbose=0) as writer:
        for sample in samples:
            writer.write(sample)
            count += 1
        shards = [pattern % i for i in range(writer.shard)] if count else []
    size = sum(os.path.getsize(s) for s in shards)
    return ShardSummary(shards=shards, samples=count, bytes=size)


def sample_key(text: str) -> str:
    """A WebDataset-safe key: letters, digits, ``_`` and ``-`` only (a dot would split the key
    from the file extension inside the tar)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def text_documents(
    paths: Iterable[str | os.PathLike], text_field: str = "text"
) -> Iterator[tuple[str, str]]:
    """(key, text) for each document in ``.txt`` files (one document per file) and ``.jsonl``
    files (one document per line, text under ``text_field``).

    Raises:
        ValueError: naming the file and line of a JSONL record that is not valid JSON or has no
            string ``text_field``.
    """
    for path in map(Path, paths):
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[text_field]
                    except (json.JSONDecodeError, KeyError, TypeError) as error:
                        raise ValueError(
                            f"{path}:{number}: expected a JSON object with a string "
                            f"{text_field!r} field ({error!r})"
                        ) from error
                    if not isinstance(text, str):
                        raise ValueError(f"{path}:{number}: {text_field!r} is not a string")
                    yield sample_key(f"{path.stem}-{number}"), text
        else:
            yield sample_key(path.stem), path.read_text(encoding="utf-8")
