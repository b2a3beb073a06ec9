"""Files built once and then shared by every process that needs them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def build_once(path: Path, is_built: Callable[[Path], bool], build: Callable[[], object]) -> None:
    """Run ``build`` (which writes ``path``) unless ``is_built(path)``, under a file lock
    beside ``path``: DDP ranks and loader processes that start together build it once, the
    first to take the lock, while the others wait and then find it built."""
    if is_built(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not is_built(path):
            build()
