"""Text documents: ``.txt`` files (a document each) and ``.jsonl`` files (a document per line),
either gzipped, and the cutting of documents into sequence-sized pieces."""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from mmm.data.formats.base import Sample, open_text, register_source, sample_key
from mmm.data.members import TEXT_MEMBER

#: The files the text reader takes: plain text and JSON lines, optionally gzipped.
TEXT_EXTENSIONS = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")


def chunk_text(text: str, max_words: int = 80) -> list[str]:
    """Split text into pieces of at most ``max_words`` words, keeping paragraphs together when
    they fit, so that one piece fills a ~128-token sequence without truncation."""
    chunks: list[str] = []
    current: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        words = paragraph.split()
        start = 0  # an offset, not words[room:]: slicing the rest made long lines quadratic
        while start < len(words):
            room = max_words - len(current)
            if room <= 0:
                chunks.append(" ".join(current))
                current, room = [], max_words
            current.extend(words[start : start + room])
            start += room
    if current:
        chunks.append(" ".join(current))
    return chunks


def text_documents(
    paths: Iterable[str | os.PathLike], text_field: str = "text", root: str | None = None
) -> Iterator[tuple[str, str, str]]:
    """(key, text, source) for each document in ``.txt`` files (one document per file) and
    ``.jsonl`` files (one document per line, text under ``text_field``), either gzipped (told
    by their first bytes). Keys are the files' paths below ``root`` (default: their common
    folder), extension included, so that ``a.txt`` and ``a.jsonl``, or same-named files in
    different folders, do not collide; ``source`` names the file (and line).

    Raises:
        ValueError: naming the file (and line) that is not UTF-8 text, not valid gzip, or a
            JSONL record that is not valid JSON or has no string ``text_field``.
    """
    files = [Path(p) for p in paths]
    if not files:
        return
    base = Path(root) if root is not None else Path(os.path.commonpath([f.parent for f in files]))
    for path in files:
        name = str(path.relative_to(base))
        try:
            if path.name.lower().endswith((".jsonl", ".jsonl.gz")):
                yield from _jsonl_documents(path, name, text_field)
            else:
                with open_text(path) as handle:
                    yield sample_key(name), handle.read(), str(path)
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: not readable as UTF-8 text ({error})") from error


def _jsonl_documents(path: Path, name: str, text_field: str) -> Iterator[tuple[str, str, str]]:
    with open_text(path) as lines:
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
            yield sample_key(f"{name}-{number}"), text, f"{path}:{number}"


@register_source("text", per_file=True, extensions=TEXT_EXTENSIONS)
def text_samples(
    paths: list[str],
    text_field: str = "text",
    max_words: int | None = 80,
    root: str | None = None,
) -> Iterator[Sample]:
    """``txt`` samples from ``.txt`` files (a document each) and ``.jsonl`` files (a document
    per line, text under ``text_field``), either gzipped, documents cut into pieces of at most
    ``max_words`` words with paragraphs kept together where they fit (``None``: whole
    documents, as vocabulary training reads them). Keys are the files' paths below ``root``
    (default: their common folder)."""
    for key, text, source in text_documents(paths, text_field=text_field, root=root):
        pieces = [text] if max_words is None else chunk_text(text, max_words=max_words)
        for index, chunk in enumerate(pieces):
            yield {
                "__key__": f"{key}-{index}",
                TEXT_MEMBER: chunk.encode("utf-8"),
                "__source__": source,
            }
