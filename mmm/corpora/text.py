"""English prose that ships with CPython: standard-library docstrings and ``pydoc_data`` topics.

About 1.9M characters of real technical English, present on every Python install, so the text
quickstart needs no download.
"""

from __future__ import annotations

import ast
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from mmm.corpora import Sample, register_corpus
from mmm.shards import sample_key

_SKIPPED_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages"}
_MIN_DOCSTRING_CHARS = 80


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


def stdlib_docstrings() -> Iterator[tuple[str, str]]:
    """(name, docstring) for every module, class and function docstring of 80+ characters in
    the standard library's ``.py`` files, skipping tests and vendored packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _SKIPPED_DIRS.intersection(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or use other encodings
        module = ".".join(relative.with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= _MIN_DOCSTRING_CHARS:
                    yield (
                        f"{module}.{getattr(node, 'name', '__doc__')}.{getattr(node, 'lineno', 0)}",
                        doc,
                    )


def pydoc_topics() -> Iterator[tuple[str, str]]:
    """(topic, text) for the documentation topics that ``help()`` shows."""
    from pydoc_data.topics import topics

    yield from sorted(topics.items())


@register_corpus("python-docs")
def python_docs() -> Iterator[Sample]:
    """Standard-library docstrings and pydoc topics, as ``txt`` samples of at most 80 words."""
    for source, documents in (("doc", stdlib_docstrings()), ("topic", pydoc_topics())):
        for name, text in documents:
            for index, chunk in enumerate(chunk_text(text)):
                key = sample_key(f"{source}-{name}-{index}")
                yield {"__key__": key, "txt": chunk.encode("utf-8")}
