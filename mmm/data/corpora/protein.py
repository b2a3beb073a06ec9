"""Bacterial proteins that ship with ``pyhmmer`` (its test data), so the protein quickstart
needs no download.

``pyhmmer/tests/data/seqs/*.faa``: 2,100 proteins predicted from a bacterial genome
(``938293.PRJEB85.HG003687.faa``, ~680K residues, lengths 33-4,560, each ending in ``*``) plus
22 Swiss-Prot entries (``LuxC.faa``, ``PKSI.faa``). pyhmmer is MIT-licensed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mmm.data.corpora import register_corpus
from mmm.data.formats import Sample, protein_samples


def pyhmmer_fasta_files() -> list[Path]:
    """The ``.faa`` files of the installed pyhmmer's test data.

    Raises:
        ImportError: when pyhmmer is not installed.
        FileNotFoundError: when the installed pyhmmer was built without its test data.
    """
    try:
        import pyhmmer
    except ImportError as error:
        raise ImportError(
            "the 'pyhmmer-proteins' corpus reads pyhmmer's test data: pip install pyhmmer"
        ) from error
    folder = Path(pyhmmer.__file__).parent / "tests" / "data" / "seqs"
    files = sorted(folder.glob("*.faa"))
    if not files:
        raise FileNotFoundError(f"no .faa file in {folder}: this pyhmmer ships no test data")
    return files


@register_corpus("pyhmmer-proteins")
def pyhmmer_proteins() -> Iterator[Sample]:
    """pyhmmer's test proteins as ``seq`` samples keyed by record ID."""
    yield from protein_samples([str(path) for path in pyhmmer_fasta_files()])
