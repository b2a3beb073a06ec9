"""Writing outputs so that a failure never leaves a half-written file or folder behind: write
beside the target, then put the result in place with one rename.

A tool that fails midway (a malformed row, a full disk, Ctrl-C) leaves the target as it was,
whether it held the user's input (``mmm score --output dms.csv``) or an earlier output.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_atomically(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write in the block; when the block ends without an
    error it replaces ``path`` in one rename (``os.replace``), else it is removed and
    ``path`` is left as it was.

    The file is in the same folder as ``path`` so that the rename stays on one file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    staged = Path(staged)
    try:
        yield staged
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def require_empty_folder(path: str | Path, overwrite: bool, what: str) -> None:
    """Refuse to write into a folder that holds files, unless ``overwrite``.

    Raises:
        FileExistsError: naming the folder, a few of its files and ``--overwrite true``.
        NotADirectoryError: when ``path`` is a file.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what}: {path} is a file, not a folder")
    held = sorted(entry.name for entry in path.iterdir()) if path.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise FileExistsError(
            f"{what}: {path} is not empty ({shown}); choose an empty or new folder, or set "
            "--overwrite true to replace its contents"
        )


@contextmanager
def replaced_folder(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill in the block; when the block ends without an
    error it takes the place of ``path`` (whose old contents are removed only then), else it
    is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    retired = staged.with_suffix(".old")
    try:
        yield staged
        if path.exists():
            os.replace(path, retired)  # the complete new folder exists: the old one may go
        os.replace(staged, path)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
