"""Manifests of paired samples: JSONL (NeMo, ESPnet) or CSV (Hugging Face ``metadata.csv``),
one sample per line, naming files and holding inline text."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmm.data.formats.base import Sample, register_source, sample_key

#: Manifest fields whose values name files (NeMo/ESPnet ``audio_filepath``, Hugging Face
#: ``metadata.csv``'s ``file_name``, or a modality's name); the file's extension names its member.
MANIFEST_FILE_FIELDS = ("audio", "audio_filepath", "image", "file_name", "path")
#: Member extension of manifest fields given inline, by field name (what each tokenizer reads).
MANIFEST_INLINE_MEMBERS = {
    "text": "txt",
    "transcript": "txt",
    "caption": "txt",
    "protein": "seq",
    "sequence": "seq",
    "smiles": "smi",
}


@register_source("manifest", per_file=True)
def manifest_samples(
    paths: list[str],
    key_field: str = "key",
    file_fields: list[str] | None = None,
    members: dict[str, str] | None = None,
    label_field: str | None = None,
    split_field: str | None = None,
) -> Iterator[Sample]:
    """Paired samples from manifests: JSONL (one JSON object per line, as NeMo and ESPnet write
    them) or CSV with a header (Hugging Face ``metadata.csv``). Each line is one sample; each
    field is one member of it:

    - a field in ``file_fields`` names a file, relative to the manifest's folder (or absolute),
      stored under its own extension (``{"audio": "clips/a.wav"}`` -> ``wav``);
    - a field in ``members`` or ``MANIFEST_INLINE_MEMBERS`` holds inline content, stored under
      that extension (``{"text": "Please hold."}`` -> ``txt``);
    - any other field (``duration``, ``label``, ...) goes into the sample's ``json`` member.

    Args:
        paths: manifest files (``.jsonl`` or ``.csv``).
        key_field: the field holding the sample key; without it, the key is the manifest's
            name and line number.
        file_fields: fields that name files (default ``MANIFEST_FILE_FIELDS``).
        members: extra or overriding field -> member extension for inline fields.
        label_field: the field holding a labelled manifest's label: kept as the sample's
            ``__label__`` note (``None`` when absent) for ``mmm.data.labelled`` to check.
        split_field: the field naming a line's split, kept as its ``__split__`` note.

    Raises:
        ValueError: naming the manifest and line of a record that is not a JSON object, names
            a missing file, or puts two fields in one member.
    """
    file_names = set(file_fields if file_fields is not None else MANIFEST_FILE_FIELDS)
    inline = {**MANIFEST_INLINE_MEMBERS, **(members or {})}
    for manifest in map(Path, paths):
        for line, record in _manifest_records(manifest):
            where = f"{manifest}:{line}"
            key = str(record.pop(key_field, "") or f"{manifest.stem}-{line}")
            sample: Sample = {"__key__": sample_key(key)}
            if label_field is not None:  # labelled manifests: see mmm.data.labelled
                sample["__label__"] = record.pop(label_field, None)
                sample["__split__"] = record.pop(split_field, None) if split_field else None
                sample["__source__"] = where
            metadata = {}
            for field_name, value in record.items():
                if field_name in file_names:
                    extension, content = _manifest_file(manifest, str(value), where)
                elif field_name in inline:
                    extension, content = inline[field_name], str(value).encode("utf-8")
                else:
                    metadata[field_name] = value
                    continue
                if extension in sample:
                    raise ValueError(f"{where}: two fields would both be the {extension!r} member")
                sample[extension] = content
            if metadata:
                sample["json"] = json.dumps(metadata).encode("utf-8")
            yield sample


def _manifest_records(manifest: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSONL or CSV manifest."""
    suffix = manifest.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ValueError(f"{manifest}: a manifest is a .jsonl or .csv file")
    with manifest.open(encoding="utf-8", newline="") as handle:
        if suffix == ".csv":
            for line, row in enumerate(csv.DictReader(handle), start=2):  # line 1: the header
                yield line, dict(row)
            return
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{manifest}:{line}: not valid JSON ({error})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{manifest}:{line}: expected a JSON object, got {record!r}")
            yield line, record


def _manifest_file(manifest: Path, value: str, where: str) -> tuple[str, bytes]:
    """The member extension and bytes of a file named in a manifest."""
    path = Path(value) if Path(value).is_absolute() else manifest.parent / value
    extension = path.suffix.lower().lstrip(".")
    if not path.is_file() or not extension:
        raise ValueError(f"{where}: {value!r} is not a file with an extension ({path})")
    return extension, path.read_bytes()
