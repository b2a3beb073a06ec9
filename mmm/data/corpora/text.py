"""English prose that ships with CPython: standard-library docstrings and ``pydoc_data`` topics.

About 1.9M characters of real technical English, present on every Python install, so the text
quickstart needs no download.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from mmm.data.corpora import register_corpus
from mmm.data.formats import Sample, chunk_text, sample_key

_SKIPPED_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages"}
_MIN_DOCSTRING_CHARS = 80


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
