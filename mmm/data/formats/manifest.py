"""Manifests of paired samples: JSONL (NeMo, ESPnet) or CSV (Hugging Face ``metadata.csv``),
one sample per line, naming files and holding inline text.

A manifest is data someone else may have written, so it is read as such: the files it names
must lie below its folder (links followed) unless the user allows more, each line must give at
least one modality member, and inline content must be text. A line that cannot be a sample is
a ``ManifestLineError`` naming the manifest and line; with ``on_error="skip"`` that line alone
is skipped and counted, and the next one read.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from mmm.data.formats.base import SKIPPED, Sample, register_source, sample_key
from mmm.data.members import METADATA_MEMBER, PROTEIN_MEMBER, SMILES_MEMBER, TEXT_MEMBER
from mmm.data.patterns import resolves_inside

log = logging.getLogger(__name__)

#: Manifest fields whose values name files (NeMo/ESPnet ``audio_filepath``, Hugging Face
#: ``metadata.csv``'s ``file_name``, or a modality's name); the file's extension names its member.
MANIFEST_FILE_FIELDS = ("audio", "audio_filepath", "image", "file_name", "path")
#: Member extension of manifest fields given inline, by field name (what each tokenizer reads).
MANIFEST_INLINE_MEMBERS = {
    "text": TEXT_MEMBER,
    "transcript": TEXT_MEMBER,
    "caption": TEXT_MEMBER,
    "protein": PROTEIN_MEMBER,
    "sequence": PROTEIN_MEMBER,
    "smiles": SMILES_MEMBER,
}
#: The member holding a line's other fields (``duration``, ``label``, ...), as the image and
#: audio readers write it and the ``prompts-labelled`` corpus reads labels from it.
#: Separators a CSV manifest's header line is searched for; the most frequent one is used
#: (``,`` when none occurs), so that ``wav;text`` exports read as two columns.
CSV_DELIMITERS = (",", ";", "\t", "|")

Record = dict[str, Any]


class ManifestLineError(ValueError):
    """One manifest line that cannot be a sample; the other lines may still be."""


@dataclass(frozen=True)
class ManifestFields:
    """Which fields of a manifest name files and which hold inline content."""

    files: frozenset[str]
    inline: dict[str, str]
    """Field -> member extension of inline fields."""

    def understood(self) -> str:
        """The fields this reader understands and how to map others (for errors)."""
        return (
            f"file fields {sorted(self.files)} and inline fields {sorted(self.inline)} are "
            "understood; map yours with --options '{file_fields: [wav], members: {sentence: txt}}'"
        )


@dataclass(frozen=True)
class ManifestFiles:
    """Reads the files a manifest names, only below its folder or the roots the user allows."""

    folder: Path
    roots: tuple[Path, ...]
    """Resolved folders the files may lie below: the manifest's folder and the user's roots."""
    allow_outside: bool = False

    def read(self, value: Any, where: str, field: str) -> tuple[str, bytes]:
        """The member extension (the named file's, ``clips/a.wav`` -> ``wav``) and bytes.

        Raises:
            ManifestLineError: the value is no path, leads outside the allowed folders, or is
                not a readable file with an extension.
        """
        if not isinstance(value, str) or not value:
            raise ManifestLineError(f"{where}: field {field!r} must name a file, got {value!r}")
        named = Path(value)
        path = named if named.is_absolute() else self.folder / named
        if not self.allow_outside and not resolves_inside(path, list(self.roots)):
            raise ManifestLineError(
                f"{where}: field {field!r} names {value!r}, which leads to {path.resolve()}, "
                f"outside the manifest's folder {self.folder}; allow more with "
                "--options '{roots: [FOLDER]}' or --allow_outside true"
            )
        extension = named.suffix.lower().lstrip(".")
        if not path.is_file() or not extension:
            raise ManifestLineError(f"{where}: {value!r} is not a file with an extension ({path})")
        try:
            return extension, path.resolve().read_bytes()
        except OSError as error:
            raise ManifestLineError(f"{where}: cannot read {value!r}: {error}") from error


@register_source("manifest", per_file=True)
def manifest_samples(
    paths: list[str],
    key_field: str = "key",
    file_fields: list[str] | None = None,
    members: dict[str, str] | None = None,
    roots: list[str] | None = None,
    allow_outside: bool = False,
    on_error: Literal["skip", "raise"] = "raise",
    label_field: str | None = None,
    split_field: str | None = None,
) -> Iterator[Sample]:
    """Paired samples from manifests: JSONL (one JSON object per line, as NeMo and ESPnet write
    them) or CSV with a header (Hugging Face ``metadata.csv``; ``;``, tab or ``|`` separators
    are told from the header; a UTF-8 BOM is dropped). Each line is one sample; each field is
    one member of it:

    - a field in ``file_fields`` names a file, relative to the manifest's folder (or absolute),
      stored under its own extension (``{"audio": "clips/a.wav"}`` -> ``wav``). The file must
      lie below the manifest's folder or one of ``roots``, links followed;
    - a field in ``members`` or ``MANIFEST_INLINE_MEMBERS`` holds inline content, a string,
      stored under that extension (``{"text": "Please hold."}`` -> ``txt``);
    - any other field (``duration``, ``label``, ...) goes into the sample's ``json`` member.

    Args:
        paths: manifest files (``.jsonl`` or ``.csv``).
        key_field: the field holding the sample key; without it, the key is the manifest's
            name and line number.
        file_fields: fields that name files (default ``MANIFEST_FILE_FIELDS``).
        members: extra or overriding field -> member extension for inline fields.
        roots: further folders the named files may lie in (e.g. ``[/data/clips]`` for a
            NeMo manifest of absolute paths), besides the manifest's own folder.
        allow_outside: take files anywhere (absolute paths, ``../``, links); only for
            manifests you trust.
        on_error: ``raise`` at the first bad line; ``skip`` logs it, yields a skip note
            (counted by ``mmm shards``) and reads on.
        label_field: the field holding a labelled manifest's label: kept as the sample's
            ``__label__`` note (``None`` when absent) for ``mmm.data.labelled`` to check.
        split_field: the field naming a line's split, kept as its ``__split__`` note.

    Raises:
        ManifestLineError: naming the manifest and line of a record that is not a JSON object,
            names a missing file or one outside the allowed folders, gives no modality member,
            holds inline content that is not a string, or puts two fields in one member.
        ValueError: naming the manifest for what spoils every line: a header with a repeated
            column or no column this reader understands, a file that is not UTF-8.
    """
    fields = ManifestFields(
        files=frozenset(file_fields if file_fields is not None else MANIFEST_FILE_FIELDS),
        inline={**MANIFEST_INLINE_MEMBERS, **(members or {})},
    )
    allowed = tuple(Path(root).resolve() for root in roots or [])
    for manifest in map(Path, paths):
        files = ManifestFiles(manifest.parent, (manifest.parent.resolve(), *allowed), allow_outside)
        for line, record in _manifest_records(manifest, fields):
            try:
                if isinstance(record, ManifestLineError):
                    raise record
                notes = _label_notes(record, label_field, split_field)
                yield {**_line_sample(record, manifest, line, key_field, fields, files), **notes}
            except ManifestLineError as error:
                if on_error == "raise":
                    raise
                log.warning("skipped %s", error)
                yield {SKIPPED: str(error)}


def _label_notes(record: Record, label_field: str | None, split_field: str | None) -> Sample:
    """A labelled manifest's label and split fields, taken out of ``record`` as the notes
    ``__label__`` and ``__split__`` (none for an unlabelled manifest)."""
    if label_field is None:
        return {}
    split = record.pop(split_field, None) if split_field else None
    return {"__label__": record.pop(label_field, None), "__split__": split}


def _line_sample(
    record: Record,
    manifest: Path,
    line: int,
    key_field: str,
    fields: ManifestFields,
    files: ManifestFiles,
) -> Sample:
    """The sample of one manifest line; ``__source__`` (``manifest:line``) names it in errors,
    such as two lines sharing a key.

    Raises:
        ManifestLineError: naming the manifest, line and field at fault.
    """
    where = f"{manifest}:{line}"
    found = list(record)
    key = record.pop(key_field, None)
    sample: Sample = {
        "__key__": sample_key(str(key) if key not in (None, "") else f"{manifest.stem}-{line}"),
        "__source__": where,
    }
    origin: dict[str, str] = {}  # member extension -> the field it came from
    metadata: Record = {}
    for name, value in record.items():
        if name in fields.files:
            extension, content = files.read(value, where, name)
        elif name in fields.inline:
            extension, content = fields.inline[name], _inline_text(value, where, name)
        else:
            metadata[name] = value
            continue
        if extension in origin:
            raise ManifestLineError(
                f"{where}: fields {origin[extension]!r} and {name!r} would both be the "
                f"{extension!r} member"
            )
        origin[extension] = name
        sample[extension] = content
    if not origin:
        raise ManifestLineError(
            f"{where}: no modality member: the line has fields {found}; {fields.understood()}"
        )
    if metadata and METADATA_MEMBER in origin:
        raise ManifestLineError(
            f"{where}: field {origin[METADATA_MEMBER]!r} would be the {METADATA_MEMBER!r} "
            f"member, which holds the line's other fields {sorted(metadata)}; drop those "
            "fields or move them into that file"
        )
    if metadata:
        sample[METADATA_MEMBER] = json.dumps(metadata).encode("utf-8")
    return sample


def _inline_text(value: Any, where: str, field: str) -> bytes:
    """The UTF-8 bytes of an inline field, which must be a string (JSON ``null``, numbers and
    lists would otherwise become the texts ``None``, ``123``, ``['a', 'b']``)."""
    if value is None:
        raise ManifestLineError(f"{where}: field {field!r} is null; it must hold the text")
    if not isinstance(value, str):
        raise ManifestLineError(
            f"{where}: field {field!r} must be a string, got {type(value).__name__} {value!r}"
        )
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate escaped in JSON
        raise ManifestLineError(f"{where}: field {field!r} is not valid text ({error})") from error


def _manifest_records(
    manifest: Path, fields: ManifestFields
) -> Iterator[tuple[int, Record | ManifestLineError]]:
    """(line number, record) of a JSONL or CSV manifest; a line that is no record comes as its
    error, so that the lines after it can still be read."""
    suffix = manifest.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ValueError(f"{manifest}: a manifest is a .jsonl or .csv file")
    try:
        with manifest.open(encoding="utf-8-sig", newline="") as handle:  # -sig: drop a BOM
            if suffix == ".csv":
                yield from _csv_records(handle, manifest, fields)
            else:
                yield from _jsonl_records(handle, manifest)
    except UnicodeDecodeError as error:
        raise ValueError(f"{manifest}: not UTF-8 text ({error})") from error


def _jsonl_records(
    handle: TextIO, manifest: Path
) -> Iterator[tuple[int, Record | ManifestLineError]]:
    for line, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            yield line, ManifestLineError(f"{manifest}:{line}: not valid JSON ({error})")
            continue
        if not isinstance(record, dict):
            yield (
                line,
                ManifestLineError(f"{manifest}:{line}: expected a JSON object, got {record!r}"),
            )
            continue
        yield line, record


def _csv_records(
    handle: TextIO, manifest: Path, fields: ManifestFields
) -> Iterator[tuple[int, Record | ManifestLineError]]:
    """Records of a CSV manifest, numbered by the line each starts on (line 1: the header).

    Raises:
        ValueError: naming the manifest and column of a header no line could be read with,
            or the line the CSV parser gave up on.
    """
    separator = max(CSV_DELIMITERS, key=handle.readline().count)  # ties: the first listed
    handle.seek(0)
    reader = csv.reader(handle, delimiter=separator)
    try:
        header = next(reader, None)
        if header is None:
            return
        _check_header(header, manifest, separator, fields)
        line = reader.line_num + 1
        for values in reader:
            if len(values) == len(header):
                yield line, dict(zip(header, values, strict=True))
            elif values:  # blank lines are no records
                yield (
                    line,
                    ManifestLineError(
                        f"{manifest}:{line}: {len(values)} values, but the header has "
                        f"{len(header)} columns {header}"
                    ),
                )
            line = reader.line_num + 1
    except csv.Error as error:
        raise ValueError(f"{manifest}:{reader.line_num}: not readable as CSV ({error})") from error


def _check_header(
    header: list[str], manifest: Path, separator: str, fields: ManifestFields
) -> None:
    """Refuse a CSV header that would spoil every line: a repeated column (one value would be
    lost) or no column naming a file or inline content (no line would have a modality)."""
    seen: set[str] = set()
    for column in header:
        if column in seen:
            raise ValueError(f"{manifest}:1: column {column!r} appears twice in the header")
        seen.add(column)
    if not seen & (fields.files | set(fields.inline)):
        raise ValueError(
            f"{manifest}:1: no column names a file or holds a modality: columns {header} "
            f"(separated by {separator!r}); {fields.understood()}"
        )
