"""What every format reader shares: the sample type, keys, text files, and the registry that
maps a modality name (``mmm shards --modality NAME``) to its reader."""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

#: A WebDataset sample: ``__key__``, bytes per member extension, and optional notes such as
#: ``__source__`` (its file, line or record, named in errors and never written).
Sample = dict[str, Any]
#: The member of the note a reader yields, instead of a sample, for an input it left out.
SKIPPED = "__skipped__"
#: Reads input files of one modality and yields WebDataset samples (``__key__`` + members).
SampleSource = Callable[..., Iterator[Sample]]

_SOURCES: dict[str, SampleSource] = {}
_PER_FILE: set[str] = set()
_EXTENSIONS: dict[str, tuple[str, ...]] = {}


def register_source(
    name: str, per_file: bool = False, extensions: tuple[str, ...] = ()
) -> Callable[[SampleSource], SampleSource]:
    """Register ``fn(paths: list[str], **options) -> Iterator[sample]`` as the reader that
    ``mmm shards --modality NAME`` uses for input files of that modality.

    Args:
        name: the modality name.
        per_file: the samples of a file depend on that file alone (not on the other files
            in ``paths``, e.g. for class indices). Then ``mmm shards`` may read parts of the
            file list in parallel worker processes, and in ``skip`` mode skip a file that
            fails and go on with the next. A per-file reader that takes a ``root`` option
            gets the inputs' common folder, so its keys stay relative to it.
        extensions: the file name endings the reader takes (e.g. ``(".txt", ".jsonl")``);
            ``mmm shards`` leaves other files out and says how many of each it left out.
    """

    def decorator(fn: SampleSource) -> SampleSource:
        _SOURCES[name] = fn
        if per_file:
            _PER_FILE.add(name)
        if extensions:
            _EXTENSIONS[name] = extensions
        return fn

    return decorator


def sample_source(name: str) -> SampleSource:
    """The registered reader of modality ``name`` (``mmm.data.formats`` registers them all
    when imported, which importing this module implies)."""
    if name not in _SOURCES:
        raise ValueError(f"no shard reader for modality {name!r}; available: {sorted(_SOURCES)}")
    return _SOURCES[name]


def reads_per_file(name: str) -> bool:
    """Whether the reader of ``name`` was registered with ``per_file=True``."""
    sample_source(name)
    return name in _PER_FILE


def reader_extensions(name: str) -> tuple[str, ...] | None:
    """The file name endings the reader of ``name`` takes, or ``None`` when it takes any."""
    return _EXTENSIONS.get(name)


def sample_key(text: str) -> str:
    """A WebDataset-safe key: letters and digits of any script, ``_`` and ``-``; anything else
    (a dot would split the key from the file extension inside the tar) becomes ``_``."""
    return re.sub(r"[^\w-]", "_", text)


def open_text(path: str | Path) -> TextIO:
    """Open a UTF-8 text file for reading, gunzipping it when its first bytes say it is gzip
    (whatever its name)."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")
