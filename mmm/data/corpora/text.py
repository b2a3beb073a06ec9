"""English prose that ships with CPython: standard-library docstrings and ``pydoc_data`` topics.

About 1.9M characters of real technical English, present on every Python install, so the text
quickstart needs no download. ``docstrings-labelled`` labels docstrings by the package that
holds them, for fine-tuning.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmm.data.corpora import (
    LabelledCorpus,
    labelled_samples,
    register_corpus,
    register_labelled_corpus,
)
from mmm.data.formats import Sample, chunk_text, sample_key
from mmm.data.labelled import select_classes
from mmm.data.labels import LabelSpec
from mmm.data.members import TEXT_MEMBER

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
                yield {"__key__": key, TEXT_MEMBER: chunk.encode("utf-8")}


#: ``docstrings``: the largest top-level packages with at least this many docstrings ...
DOCSTRINGS_MIN_PER_CLASS = 100
#: ... at most this many of them ...
DOCSTRINGS_MAX_CLASSES = 10
#: ... and at most this many docstrings of each, drawn at random, so that classes balance.
DOCSTRINGS_CAP_PER_CLASS = 150


@functools.cache
def package_docstrings() -> tuple[list[tuple[str, str]], np.ndarray, tuple[str, ...]]:
    """The standard library's docstrings (``stdlib_docstrings``) labelled by the top-level
    package or module that holds them (``asyncio``, ``email``, ``tkinter``, ...): the
    ``DOCSTRINGS_MAX_CLASSES`` largest with at least ``DOCSTRINGS_MIN_PER_CLASS`` docstrings,
    each capped at ``DOCSTRINGS_CAP_PER_CLASS`` drawn with seed 0. Which packages qualify
    depends on the Python version (3.11: 9 classes, 1,294 docstrings). Parsing the standard
    library takes seconds, so this is computed once per process.

    Returns:
        The kept (name, docstring) pairs, their class numbers, and the class names by number.
    """
    documents = list(stdlib_docstrings())
    families = [name.split(".")[0] for name, _ in documents]
    index, labels, classes = select_classes(
        families,
        min_count=DOCSTRINGS_MIN_PER_CLASS,
        max_classes=DOCSTRINGS_MAX_CLASSES,
        cap=DOCSTRINGS_CAP_PER_CLASS,
    )
    return [documents[i] for i in index], labels, classes


@register_labelled_corpus("docstrings-labelled")
def docstrings_labelled() -> LabelledCorpus:
    """``package_docstrings`` as ``txt`` samples (whole docstrings) keyed by their place
    (``module.name.line``); val and test are 10% each by a hash of the key."""
    documents, labels, classes = package_docstrings()
    samples = labelled_samples(
        keys=(sample_key(name) for name, _ in documents),
        member=TEXT_MEMBER,
        inputs=(text.encode("utf-8") for _, text in documents),
        labels=(int(label) for label in labels),
    )
    return LabelledCorpus(spec=LabelSpec("classification", classes, TEXT_MEMBER), samples=samples)
