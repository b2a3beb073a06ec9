"""One expander for every place a user names data: shard specifications and input files.

A specification is one or more patterns (a list, or joined by ``::``), each brace-expanded
(``train-{000000..000009}.tar``) and then glob-expanded (``*.jsonl``). Shards may also be listed
in ``.txt``/``.list`` files, one pattern per line, and may be remote (``pipe:`` commands,
``http(s)://``, ``s3://``, ``gs://``), which pass as given. Input files (``mmm shards``,
``mmm score``, vocabulary sources) may be folders, read recursively; a ``.txt`` input is a
document, never a list.

Files named directly are the user's choice; files found inside a folder or by a glob must
resolve inside that folder (the glob's fixed part), so that a link someone else left in a data
folder (``secret.txt -> /etc/passwd``) is refused unless the user allows it (``allow_outside``).
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
_OPT_IN = "name the file directly, or (mmm shards) set --allow_outside true to follow such links"
_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")


class OutsideDataError(ValueError):
    """A path found inside data (a manifest field, a link in an input folder) that resolves
    outside the folder it was found in, which the user did not allow."""


def resolves_inside(path: str | os.PathLike, roots: list[Path]) -> bool:
    """Whether ``path``, links followed, lies below one of ``roots`` (resolved folders)."""
    real = Path(path).resolve()
    return any(real.is_relative_to(root) for root in roots)


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


def expand_inputs(spec: str | list[str], allow_outside: bool = False) -> list[str]:
    """Input files of a specification, in the order given (each glob and folder sorted), each
    once; folders are read recursively.

    Args:
        spec: patterns, folders or files.
        allow_outside: take files found in a folder or by a glob that resolve (through a link)
            outside that folder; by default they are refused.

    Raises:
        FileNotFoundError: naming the pattern that matches no file or folder.
        OutsideDataError: naming the link and where it leads, unless ``allow_outside``.
    """
    return _expand(spec, kind="files", allow_outside=allow_outside)


def _expand(spec: str | list[str], kind: PatternKind, allow_outside: bool = False) -> list[str]:
    patterns = [spec] if isinstance(spec, str) else spec
    urls: list[str] = []
    for pattern in (part for joined in patterns for part in joined.split("::")):
        for url in braceexpand(pattern):
            if is_remote(url):
                urls.append(url)
            elif kind == "shards" and url.endswith(_LIST_SUFFIXES) and os.path.isfile(url):
                urls.extend(_expand(read_pattern_list(url), kind))
            else:
                urls.extend(_local_matches(url, spec, kind, allow_outside))
    return list(dict.fromkeys(urls))


def _local_matches(
    url: str, spec: str | list[str], kind: PatternKind, allow_outside: bool = False
) -> list[str]:
    """The files one local pattern matches (folders read recursively for ``files``); for
    ``files``, those found by a glob or in a folder must resolve inside it."""
    magic = glob.has_magic(url)
    matches = sorted(glob.glob(url)) if magic else [url]
    confine = kind == "files" and not allow_outside
    found: list[str] = []
    for match in matches:
        if os.path.isfile(match):
            if magic and confine:
                _refuse_outside([match], _fixed_folder(url), "the folder of the pattern")
            found.append(match)
        elif kind == "files" and os.path.isdir(match):
            files = [str(p) for p in sorted(Path(match).rglob("*")) if p.is_file()]
            if confine:
                _refuse_outside(files, _fixed_folder(url) if magic else match, "the input folder")
            found.extend(files)
    if not found:
        what = "shard file" if kind == "shards" else "file"
        raise FileNotFoundError(f"no {what} matches {url!r} (from {spec!r})")
    return found


def _fixed_folder(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard (``data/*/a.txt`` ->
    ``data``): what the pattern reads from."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return str(Path(*parts[:fixed])) if fixed else "."


def _refuse_outside(paths: list[str], folder: str, what: str) -> None:
    """Refuse the first of ``paths``, found in ``folder``, that resolves (through links)
    outside it.

    Raises:
        OutsideDataError: naming the path, where it leads, and the folder.
    """
    root = [Path(folder).resolve()]
    for path in paths:
        if not resolves_inside(path, root):
            raise OutsideDataError(
                f"{path} leads to {Path(path).resolve()}, outside {what} {folder}; {_OPT_IN}"
            )
