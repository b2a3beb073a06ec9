"""Audio files (wav, flac, mp3, ogg), stored in samples as the files' bytes, undecoded."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from mmm.data.formats.base import Sample, register_source, sample_key

log = logging.getLogger(__name__)

#: Extensions of the audio members read from shards and of the files ``mmm shards`` packs.
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg")


@register_source("audio")
def audio_samples(paths: list[str], root: str | None = None) -> Iterator[Sample]:
    """Samples from audio files (wav, flac, mp3, ogg; other files are skipped with a warning),
    the file's bytes unchanged under its extension, and a ``json`` member with ``label`` (the
    name of the folder holding the file, e.g. ``dog/001.wav`` -> ``dog``) and ``path``.

    Args:
        paths: audio files (``mmm shards`` expands folders recursively).
        root: the keys and recorded paths are relative to it; default: the files' common folder.
    """
    files = [Path(p) for p in paths]
    if not files:
        return
    base = Path(root) if root is not None else Path(os.path.commonpath([f.parent for f in files]))
    for path in files:
        extension = path.suffix.lower().lstrip(".")
        if extension not in AUDIO_EXTENSIONS:
            log.warning("skipping %s: not an audio file (%s)", path, ", ".join(AUDIO_EXTENSIONS))
            continue
        relative = path.relative_to(base)
        meta = {"label": path.parent.name, "path": str(relative)}
        yield {
            "__key__": sample_key(str(relative.with_suffix(""))),
            extension: path.read_bytes(),
            "json": json.dumps(meta).encode("utf-8"),
        }
