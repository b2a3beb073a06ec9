"""Image files (jpg, png, webp, ...), stored in samples as the files' bytes, undecoded, with
their folder as the class label."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from mmm.data.formats.base import Sample, register_source, sample_key
from mmm.data.members import CLASS_MEMBER

log = logging.getLogger(__name__)

#: Shard members and file suffixes read as images, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


@register_source("image")
def image_samples(paths: list[str], labels: bool = True) -> Iterator[Sample]:
    """Samples of image files (``jpg``, ``png``, ``webp``, ...; other files are skipped), the
    file's bytes under its extension, keyed by its path below the files' common folder. With
    ``labels``, the name of the folder holding each file is its class: ``cls`` holds the class
    index (folder names sorted) and ``json`` holds ``{"label": folder, "file": path}``."""
    files = [Path(p) for p in paths if Path(p).suffix.lower().lstrip(".") in IMAGE_EXTENSIONS]
    if len(files) < len(paths):
        log.warning("image shards: skipped %d non-image files", len(paths) - len(files))
    classes = {name: index for index, name in enumerate(sorted({f.parent.name for f in files}))}
    base = Path(os.path.commonpath([f.parent for f in files])) if files else Path()
    for path in files:
        extension = path.suffix.lower().lstrip(".")
        sample: Sample = {
            # the path below the common folder, suffix kept: a.png and a.jpg stay apart
            "__key__": sample_key(str(path.relative_to(base))),
            "jpg" if extension == "jpeg" else extension: path.read_bytes(),
        }
        if labels:
            label = path.parent.name
            sample[CLASS_MEMBER] = str(classes[label]).encode()
            sample["json"] = json.dumps({"label": label, "file": str(path)}).encode()
        yield sample
