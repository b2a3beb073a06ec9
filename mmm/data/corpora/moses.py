"""The MOSES benchmark's training molecules (Polykovskiy et al. 2020), read from the installed
``molsets`` package (``pip install --no-deps molsets``; its ``moses/dataset/data/train.csv.gz``
holds 1,584,663 SMILES from ZINC Clean Leads).

``moses`` is every 32nd molecule of that file (49,521), ``moses-full`` all of them. The subset
is the default because an embedded corpus is written to shards on first use, one process, and
1.58M molecules take minutes there on a small CPU, while a short CPU run sees far fewer than
49,521 molecules anyway. The stride keeps the file's order, which MOSES shuffled, so the subset
is a uniform sample. Evaluation against the MOSES test sets is ``mmm.metrics.moses``.
"""

from __future__ import annotations

from collections.abc import Iterator

from mmm.data.corpora import register_corpus
from mmm.data.formats import Sample
from mmm.data.formats.smiles import check_smiles_tokens
from mmm.metrics.moses import moses_data_file, read_moses_smiles

#: Every SUBSET_STRIDE-th training molecule makes the ``moses`` corpus.
SUBSET_STRIDE = 32


def moses_training_samples(stride: int) -> Iterator[Sample]:
    """``smi`` samples of every ``stride``-th MOSES training molecule, keyed ``train-<line>``
    (line 1 is the header), as ``mmm shards --modality smiles`` would key the file's lines.
    The stride is taken before the token check, so the subset checks 1/32 of the lines.

    Raises:
        MissingDependencyError: when molsets is not installed, saying how to install it.
        ValueError: naming the line of a SMILES with a character no SMILES token covers.
    """
    path = moses_data_file("train.csv.gz")
    smiles = read_moses_smiles("train")
    for index in range(0, len(smiles), stride):
        line = index + 2  # after the header line
        try:
            check_smiles_tokens(smiles[index])
        except ValueError as error:
            raise ValueError(f"{path}:{line}: {error}") from error
        yield {
            "__key__": f"train-{line}",
            "__source__": f"{path}:{line}",
            "smi": smiles[index].encode("utf-8"),
        }


@register_corpus("moses")
def moses_subset() -> Iterator[Sample]:
    """Every 32nd MOSES training molecule (49,521 SMILES)."""
    return moses_training_samples(SUBSET_STRIDE)


@register_corpus("moses-full")
def moses_full() -> Iterator[Sample]:
    """All 1,584,663 MOSES training molecules."""
    return moses_training_samples(1)
