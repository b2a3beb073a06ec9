"""Protein sequences: FASTA files and the one-letter residue alphabet they are checked against.

The FASTA parser is hand-written: Biopython's ``SimpleFastaParser`` silently drops text before
the first header and reads ``;`` comment lines as residues, and pyhmmer's Easel reader rejects
``<mask>`` and names neither the record nor a 1-based line; mmm's errors name file, line and
record.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from mmm.data.formats.base import Sample, open_text, register_source, sample_key
from mmm.data.members import PROTEIN_MEMBER

OnUnknown = Literal["error", "x"]

#: The one-letter codes a sequence may hold, in ESM's order (its token ids follow it): the 20
#: standard amino acids, X (any), B (D/N), U (selenocysteine), Z (E/Q), O (pyrrolysine), the
#: gap characters ``.`` and ``-``, then J (Leu or Ile), which ESM lacks.
RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO.-J"
#: How a hidden position is written inside a sequence (any case).
MASK = "<mask>"

_MASK_PATTERN = re.compile(re.escape(MASK), re.IGNORECASE)
_IS_RESIDUE = np.zeros(256, dtype=bool)
_IS_RESIDUE[[ord(c) for c in RESIDUES + RESIDUES.lower()]] = True


def _codes(piece: str) -> np.ndarray:
    """ASCII codes of ``piece``, one per character (non-ASCII characters become ``?``)."""
    return np.frombuffer(piece.encode("ascii", "replace"), np.uint8)


def clean_residues(text: str, name: str = "sequence", on_unknown: OnUnknown = "error") -> str:
    """The residues of ``text`` in upper case, whitespace and line breaks dropped, trailing
    ``*`` (stop) stripped, each ``<mask>`` (any case) kept as one hidden position.

    Args:
        text: a raw sequence, e.g. the lines of a FASTA record.
        name: what the sequence is called in errors (a record ID, a sample key).
        on_unknown: ``error`` raises on a character outside ``RESIDUES``; ``x`` reads it as
            ``X`` (any residue).

    Raises:
        ValueError: naming ``name``, the character and its 1-based residue position (a mask
            counts as one position).
    """
    pieces = ["".join(piece.split()) for piece in _MASK_PATTERN.split(text)]
    pieces[-1] = pieces[-1].rstrip("*")
    unknown = [~_IS_RESIDUE[_codes(piece)] for piece in pieces]
    if any(flags.any() for flags in unknown):
        if on_unknown == "error":
            # One flag per position, a mask (never unknown) between consecutive pieces.
            positions = np.concatenate([np.append(flags, False) for flags in unknown])
            position = int(positions.argmax())
            shown = "\0".join(pieces)  # one character per position, as in ``positions``
            raise ValueError(
                f"{name}: unknown residue {shown[position]!r} at position {position + 1}; "
                f"allowed: {RESIDUES} (any case), {MASK}, a trailing '*'; "
                "set on_unknown='x' to read unknown characters as X"
            )
        pieces = [_as_x(piece, flags) for piece, flags in zip(pieces, unknown, strict=True)]
    return MASK.join(piece.upper() for piece in pieces)


def _as_x(piece: str, unknown: np.ndarray) -> str:
    codes = _codes(piece).copy()
    codes[unknown] = ord("X")
    return codes.tobytes().decode("ascii")


def read_fasta(path: str | Path) -> Iterator[tuple[str, str]]:
    """(ID, raw sequence) of every record of a FASTA file, gzipped or not (told by its first
    bytes, not its name).

    The ID is the header's first word (``>sp|P69905|HBA_HUMAN Hemoglobin...`` gives
    ``sp|P69905|HBA_HUMAN``). The raw sequence keeps its line breaks: ``clean_residues``
    drops them. Empty lines and ``;`` comment lines are skipped.

    Raises:
        ValueError: naming the file and line of a header without an ID or of sequence text
            before the first header, a file with no record, or one that is cut short or not
            UTF-8.
    """
    try:
        yield from _fasta_records(path)
    except (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read as (gzipped) UTF-8 FASTA ({error})") from error


def _fasta_records(path: str | Path) -> Iterator[tuple[str, str]]:
    record_id: str | None = None
    lines: list[str] = []
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.startswith(">"):
                if record_id is not None:
                    yield record_id, "".join(lines)
                words = line[1:].split(maxsplit=1)
                if not words:
                    raise ValueError(f"{path}:{number}: FASTA header without an ID")
                record_id, lines = words[0], []
            elif line.strip() and not line.startswith(";"):
                if record_id is None:
                    raise ValueError(f"{path}:{number}: sequence text before the first '>' header")
                lines.append(line)
    if record_id is None:
        raise ValueError(f"{path}: no FASTA record (no line starts with '>')")
    yield record_id, "".join(lines)


@register_source("protein", per_file=True)
def protein_samples(paths: list[str], on_unknown: OnUnknown = "error") -> Iterator[Sample]:
    """``seq`` samples from FASTA files (gzipped or not), one per record, keyed by the record
    ID (characters a WebDataset key cannot hold, such as ``.`` and ``|``, become ``_``).

    Sequences are validated and stored cleaned (upper case, no line breaks, no trailing
    ``*``), whole: cropping happens at training time. ``mmm shards`` reads the files one at
    a time (in ``--workers`` processes; ``--on_error skip`` skips and counts a file that fails,
    such as a truncated ``.gz``); record IDs repeated across files are refused by
    ``write_shards``, naming both records.

    Raises:
        ValueError: naming file, record and position of an unknown residue (unless
            ``on_unknown='x'``), or two records whose keys coincide.
    """
    first_seen: dict[str, str] = {}
    for path in paths:
        for record_id, raw in read_fasta(path):
            name = f"{path}: record {record_id!r}"
            key = sample_key(record_id)
            if key in first_seen:
                raise ValueError(
                    f"{name}: sample key {key!r} repeats that of {first_seen[key]}; "
                    "record IDs must be unique"
                )
            first_seen[key] = name
            residues = clean_residues(raw, name=name, on_unknown=on_unknown)
            yield {"__key__": key, "__source__": name, PROTEIN_MEMBER: residues.encode("ascii")}
