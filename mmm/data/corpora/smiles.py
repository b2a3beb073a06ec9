"""Real molecules that ship inside mmm: 14,882 SMILES from the NCI open database and a WEHI
screening set, as distributed with RDKit (see the header of ``data/nci_wehi.smi.gz``).

They let ``configs/smiles_mlm.yaml`` run with no download and no RDKit installed. The file is
read with the same reader as users' ``.smi`` files (``mmm shards --modality smiles``).
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.resources import as_file, files

from mmm.data.corpora import register_corpus
from mmm.data.formats import Sample, smiles_samples

#: SMILES<TAB>name lines, gzipped (184 KB); sources and licences in its header comment.
NCI_WEHI_FILE = files("mmm.data.corpora") / "data" / "nci_wehi.smi.gz"


@register_corpus("smiles-nci-wehi")
def nci_wehi_molecules() -> Iterator[Sample]:
    """``smi`` samples of NCI and WEHI molecules, keyed ``nci_wehi-<line>``."""
    with as_file(NCI_WEHI_FILE) as path:
        yield from smiles_samples([str(path)], strict=True)
