"""One expander for every place a user names data: shard specifications and input files.

A specification is one or more patterns (a list, or joined by ``::``), each brace-expanded
(``train-{000000..000009}.tar``) and then glob-expanded (``*.jsonl``). Shards may also be listed
in ``.txt``/``.list`` files, one pattern per line, and may be remote (``pipe:`` commands,
``http(s)://``, ``s3://``, ``gs://``), which pass as given. Input files (``mmm shards``,
``mmm score``, vocabulary sources) may be folders, read recursively; a ``.txt`` input is a
document, never a list.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Literal

from braceexpand import braceexpand

#: ``shards``: list files are read, folders are not expanded; ``files``: folders are read
#: recursively and ``.txt`` files are data.
PatternKind = Literal["shards", "files"]

_LIST_SUFFIXES = (".txt", ".list")
_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")


def is_remote(url: str) -> bool:
    """Whether ``url`` names data that is not a local path (read by a command or a client)."""
    return url.startswith(_REMOTE_PREFIXES)


def read_pattern_list(path: str) -> list[str]:
    """Patterns listed in a text file, one per line; blank lines and lines starting with ``#``
    are skipped, and relative local paths are taken relative to the list file's folder (so a
    list travels with its shards)."""
    folder = Path(path).parent
    patterns = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            relative = not is_remote(line) and not os.path.isabs(line)
            patterns.append(str(folder / line) if relative else line)
    return patterns


def expand_shards(spec: str | list[str]) -> list[str]:
    """Shard URLs of a shard specification, in the order given (each glob sorted), each once.

    A local ``.txt``/``.list`` file is read as a list of further patterns.

    Raises:
        FileNotFoundError: naming the pattern that matches no local file.
    """
    return _expand(spec, kind="shards")


def expand_inputs(spec: str | list[str]) -> list[str]:
    """Input files of a specification, in the order given (each glob and folder sorted), each
    once; folders are read recursively.

    Raises:
        FileNotFoundError: naming the pattern that matches no file or folder.
    """
    return _expand(spec, kind="files")


def _expand(spec: str | list[str], kind: PatternKind) -> list[str]:
    patterns = [spec] if isinstance(spec, str) else spec
    urls: list[str] = []
    for pattern in (part for joined in patterns for part in joined.split("::")):
        for url in braceexpand(pattern):
            if is_remote(url):
                urls.append(url)
            elif kind == "shards" and url.endswith(_LIST_SUFFIXES) and os.path.isfile(url):
                urls.extend(_expand(read_pattern_list(url), kind))
            else:
                urls.extend(_local_matches(url, spec, kind))
    return list(dict.fromkeys(urls))


def _local_matches(url: str, spec: str | list[str], kind: PatternKind) -> list[str]:
    """The files one local pattern matches (folders read recursively for ``files``)."""
    matches = sorted(glob.glob(url)) if glob.has_magic(url) else [url]
    found: list[str] = []
    for match in matches:
        if os.path.isfile(match):
            found.append(match)
        elif kind == "files" and os.path.isdir(match):
            found.extend(str(p) for p in sorted(Path(match).rglob("*")) if p.is_file())
    if not found:
        what = "shard file" if kind == "shards" else "file"
        raise FileNotFoundError(f"no {what} matches {url!r} (from {spec!r})")
    return found
