"""Bacterial proteins that ship with ``pyhmmer`` (its test data), so the protein quickstart
needs no download.

``pyhmmer/tests/data/seqs/*.faa``: 2,100 proteins predicted from a bacterial genome
(``938293.PRJEB85.HG003687.faa``, ~680K residues, lengths 33-4,560, each ending in ``*``) plus
22 Swiss-Prot entries (``LuxC.faa``, ``PKSI.faa``). pyhmmer is MIT-licensed.

``amp-labelled``: modlamp's antimicrobial vs UniProt peptides, for fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmm.data.corpora import (
    LabelledCorpus,
    labelled_samples,
    register_corpus,
    register_labelled_corpus,
)
from mmm.data.formats import Sample, protein_samples
from mmm.data.labels import LabelSpec
from mmm.data.members import PROTEIN_MEMBER
from mmm.optional import require


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


#: Class names of ``amp-labelled`` by index: modlamp's targets (0: UniProt, 1: antimicrobial).
AMP_CLASSES = ("uniprot", "antimicrobial")


def amp_peptides() -> tuple[list[str], np.ndarray]:
    """modlamp's 5,200 peptides (``load_AMPvsUniProt``; BSD-3) and their class: 1 for
    antimicrobial (APD3), 0 for UniProt peptides of the same lengths.

    Raises:
        MissingDependencyError: when modlamp is not installed.
    """
    datasets = require("modlamp.datasets", feature="the AMP peptides", fix="pip install modlamp")
    data = datasets.load_AMPvsUniProt()
    return list(data.sequences), np.asarray(data.target)


@register_labelled_corpus("amp-labelled")
def amp_labelled() -> LabelledCorpus:
    """The AMP peptides as ``seq`` samples labelled ``uniprot``/``antimicrobial``; val and
    test are 10% each by a hash of the key (``amp-NNNN``, modlamp's order)."""
    sequences, targets = amp_peptides()
    samples = labelled_samples(
        keys=(f"amp-{index:04d}" for index in range(len(sequences))),
        member=PROTEIN_MEMBER,
        inputs=(sequence.encode("ascii") for sequence in sequences),
        labels=(int(target) for target in targets),
    )
    return LabelledCorpus(
        spec=LabelSpec("classification", AMP_CLASSES, PROTEIN_MEMBER), samples=samples
    )
