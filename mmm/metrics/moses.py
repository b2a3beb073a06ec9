"""The MOSES metrics of generated molecules (Polykovskiy et al. 2020, "Molecular Sets
(MOSES): A Benchmarking Platform for Molecular Generation Models", Frontiers in Pharmacology).

Computed here with RDKit and ``fcd_torch`` (ChemNet activations), following the paper's
definitions so that numbers sit beside its table:

- **valid**: share of samples RDKit parses and sanitizes (an empty string is invalid).
- **unique@k**: share of distinct canonical SMILES among the first ``k`` valid samples.
- **novelty**: share of distinct valid samples absent from the MOSES training set.
- **FCD**: Fréchet distance between ChemNet activations of the valid samples and of a
  reference set (its mean and covariance, precomputed in ``test_stats.npz``).
- **SNN**: mean over samples of the Tanimoto similarity (Morgan, radius 2, 1,024 bits) to the
  nearest reference molecule.
- **Frag** / **Scaf**: cosine similarity of BRICS-fragment counts / of Bemis-Murcko scaffold
  counts (scaffolds with at least two rings, as MOSES counts them) of samples and reference.
- **IntDiv_p**: ``1 - mean_i (mean_j T(i, j)^p)^(1/p)`` over all pairs of valid samples.
- **Filters**: share of valid samples with no MCF or PAINS alert, no charge, no ring of eight
  or more atoms, and atoms among C, N, S, O, F, Cl, Br, H.

Reference data (train/test SMILES, test statistics, filter SMARTS) are read from the files of
the installed ``molsets`` package, which is located without importing it: its own imports need
``pomegranate`` and RDKit modules that no longer exist.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmm.optional import MissingDependencyError, package_folders, require

log = logging.getLogger(__name__)

MOSES_FIX = "Install the MOSES data with: pip install --no-deps molsets"
#: Atoms the MOSES filters allow (the training set holds no other).
ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
#: Morgan fingerprints as MOSES computes them (SNN, IntDiv).
MORGAN_RADIUS, MORGAN_BITS = 2, 1024
#: Scaffolds with fewer rings are not counted (MOSES' ``compute_scaffold``).
SCAFFOLD_MIN_RINGS = 2
SPLITS = ("train", "test", "test_scaffolds")


# ------------------------------------------------------------------------------ reference data
def molsets_folder() -> Path:
    """The folder of the installed ``moses`` package (from ``molsets``), found without
    importing it.

    Raises:
        MissingDependencyError: when molsets is not installed, saying how to install it.
    """
    folders = package_folders("moses", MOSES_FIX)
    found = [folder for folder in folders if (folder / "dataset" / "data").is_dir()]
    if not found:
        raise MissingDependencyError(
            f"the MOSES data (moses/dataset/data) is not installed (searched {folders}). {MOSES_FIX}"
        )
    return found[0]


def moses_data_file(name: str) -> Path:
    """``moses/dataset/data/<name>`` of the installed molsets, or an error naming it."""
    path = molsets_folder() / "dataset" / "data" / name
    if not path.is_file():
        raise MissingDependencyError(f"the installed molsets lacks {path}. {MOSES_FIX}")
    return path


def read_moses_smiles(split: str) -> list[str]:
    """The SMILES of a MOSES split (``train``: 1,584,663; ``test``: 176,074;
    ``test_scaffolds``: 176,226), in file order. They are RDKit-canonical."""
    if split not in SPLITS:
        raise ValueError(f"MOSES split must be one of {SPLITS}, got {split!r}")
    with gzip.open(moses_data_file(f"{split}.csv.gz"), "rt", newline="") as lines:
        rows = csv.reader(lines)
        header = next(rows)
        if header[:1] != ["SMILES"]:
            raise ValueError(f"{split}.csv.gz: expected a SMILES column first, got {header}")
        return [row[0] for row in rows]


@dataclass(frozen=True)
class ReferenceStatistics:
    """What MOSES precomputed for a test set (``test_stats.npz``): ChemNet activation mean
    (512,) and covariance (512, 512), Morgan fingerprints (N, 1024) uint8, fragment and
    scaffold counts."""

    fcd_mu: np.ndarray
    fcd_sigma: np.ndarray
    fingerprints: np.ndarray
    fragments: Counter
    scaffolds: Counter


@cache
def reference_statistics(split: str) -> ReferenceStatistics:
    """The statistics MOSES ships for ``test`` or ``test_scaffolds`` (read once per process).

    The ``.npz`` holds a pickled dict: it is read with ``allow_pickle``, trusting the installed
    molsets package as much as its code.
    """
    if split not in ("test", "test_scaffolds"):
        raise ValueError(f"MOSES statistics exist for 'test' and 'test_scaffolds', not {split!r}")
    stats = np.load(moses_data_file(f"{split}_stats.npz"), allow_pickle=True)["stats"].item()
    return ReferenceStatistics(
        fcd_mu=stats["FCD"]["mu"],
        fcd_sigma=stats["FCD"]["sigma"],
        fingerprints=stats["SNN"]["fps"],
        fragments=Counter(stats["Frag"]["frag"]),
        scaffolds=Counter(stats["Scaf"]["scaf"]),
    )


@cache
def training_set() -> frozenset[str]:
    """The MOSES training SMILES, for novelty (read once per process, ~3 s)."""
    return frozenset(read_moses_smiles("train"))


@cache
def filter_patterns() -> tuple[Any, ...]:
    """The MCF and PAINS SMARTS of the MOSES filters (``mcf.csv``, ``wehi_pains.csv`` of
    the installed molsets), compiled by RDKit."""
    chem = _chem()
    folder = molsets_folder() / "metrics"
    with open(folder / "mcf.csv", newline="") as file:
        mcf = [row["smarts"] for row in csv.DictReader(file)]
    with open(folder / "wehi_pains.csv", newline="") as file:
        pains = [row[0] for row in csv.reader(file) if row]
    patterns = []
    for smarts in (s.strip() for s in mcf + pains):
        pattern = chem.MolFromSmarts(smarts)
        if pattern is None:
            raise ValueError(f"RDKit cannot read the MOSES filter SMARTS {smarts!r}")
        patterns.append(pattern)
    return tuple(patterns)


# ------------------------------------------------------------------------------ molecules
def _chem() -> Any:
    return require("rdkit.Chem", feature="MOSES metrics", fix="pip install mmm[chem]")


def molecule(smiles: str) -> Any | None:
    """The sanitized RDKit molecule of ``smiles``, or ``None`` when it is not valid (an empty
    string included), as MOSES decides validity."""
    if not smiles:
        return None
    from rdkit import rdBase

    with rdBase.BlockLogs():
        return _chem().MolFromSmiles(smiles)  # sanitizes; None when it fails


def canonical(smiles: str) -> str | None:
    """RDKit's canonical SMILES of ``smiles``, or ``None`` when invalid."""
    mol = molecule(smiles)
    return None if mol is None else _chem().MolToSmiles(mol)


def morgan_fingerprints(mols: Sequence[Any]) -> np.ndarray:
    """(N, 1024) uint8 Morgan fingerprints, radius 2 (MOSES' ``fingerprint(fp_type='morgan')``)."""
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)
    if not mols:
        return np.zeros((0, MORGAN_BITS), dtype=np.uint8)
    return np.stack([generator.GetFingerprintAsNumPy(mol).astype(np.uint8) for mol in mols])


def brics_fragments(mols: Iterable[Any]) -> Counter:
    """Counts of the BRICS fragments (canonical SMILES, attachment points kept) of ``mols``."""
    chem = _chem()
    counts: Counter = Counter()
    for mol in mols:
        counts.update(chem.MolToSmiles(chem.FragmentOnBRICSBonds(mol)).split("."))
    return counts


def murcko_scaffold(mol: Any) -> str | None:
    """The Bemis-Murcko scaffold of ``mol`` as canonical SMILES, or ``None`` when it has fewer
    than ``SCAFFOLD_MIN_RINGS`` rings (acyclic molecules have none)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    scaffold = MurckoScaffold.GetScaffoldForMol(mol)
    if scaffold.GetRingInfo().NumRings() < SCAFFOLD_MIN_RINGS:
        return None
    return _chem().MolToSmiles(scaffold) or None


def scaffold_counts(mols: Iterable[Any]) -> Counter:
    return Counter(s for s in map(murcko_scaffold, mols) if s is not None)


def passes_filters(mol: Any) -> bool:
    """Whether ``mol`` passes the MOSES filters: allowed atoms only, no formal charge, no ring
    of eight or more atoms, no MCF or PAINS alert (matched with explicit hydrogens, since the
    PAINS SMARTS name them)."""
    chem = _chem()
    if any(len(ring) >= 8 for ring in mol.GetRingInfo().AtomRings()):
        return False
    atoms = list(mol.GetAtoms())
    if any(atom.GetFormalCharge() != 0 or atom.GetSymbol() not in ALLOWED_ATOMS for atom in atoms):
        return False
    with_hydrogens = chem.AddHs(mol)
    return not any(with_hydrogens.HasSubstructMatch(p) for p in filter_patterns())


# ------------------------------------------------------------------------------ similarities
def tanimoto_aggregate(
    reference: np.ndarray, samples: np.ndarray, agg: str, p: float = 1.0, chunk: int = 8192
) -> np.ndarray:
    """For each sample fingerprint, the ``max`` or the power mean (``mean``, exponent ``p``)
    of its Tanimoto similarities to the reference fingerprints; two empty fingerprints count
    as similarity 1, as in MOSES.

    Args:
        reference: (R, B) 0/1 fingerprints, read ``chunk`` rows at a time.
        samples: (S, B) 0/1 fingerprints.

    Returns:
        (S,) float64.
    """
    if agg not in ("max", "mean"):
        raise ValueError(f"agg must be 'max' or 'mean', got {agg!r}")
    gen = torch.from_numpy(samples).float().T  # (B, S)
    gen_bits = gen.sum(dim=0, keepdim=True)  # (1, S)
    best = torch.zeros(gen.shape[1], dtype=torch.float64)
    total = torch.zeros(gen.shape[1], dtype=torch.float64)
    for start in range(0, reference.shape[0], chunk):
        ref = torch.from_numpy(reference[start : start + chunk]).float()  # (r, B)
        shared = ref @ gen  # (r, S)
        union = ref.sum(dim=1, keepdim=True) + gen_bits - shared  # (r, S)
        similarity = torch.where(union > 0, shared / union.clamp_min(1), 1.0).double()
        if agg == "max":
            best = torch.maximum(best, similarity.max(dim=0).values)
        else:
            total += similarity.pow(p).sum(dim=0)
    if agg == "max":
        return best.numpy()
    return (total / reference.shape[0]).pow(1.0 / p).numpy()


def cosine_similarity(reference: Counter, samples: Counter) -> float:
    """Cosine similarity of two count vectors indexed by their keys (absent keys count 0);
    NaN when either is empty, as in MOSES."""
    if not reference or not samples:
        return math.nan
    dot = sum(count * reference.get(key, 0) for key, count in samples.items())
    norms = math.sqrt(sum(c * c for c in reference.values())) * math.sqrt(
        sum(c * c for c in samples.values())
    )
    return dot / norms


def internal_diversity(fingerprints: np.ndarray, p: float = 1.0) -> float:
    """``1 - mean_i (mean_j T(i, j)^p)^(1/p)`` over all pairs of samples (self pairs too)."""
    return float(1.0 - tanimoto_aggregate(fingerprints, fingerprints, agg="mean", p=p).mean())


# ------------------------------------------------------------------------------ the report
@cache
def chemnet(device: str = "cpu", batch_size: int = 512) -> Any:
    """fcd_torch's ChemNet (~2 s to load; kept for the process)."""
    fcd_torch = require("fcd_torch", feature="MOSES FCD", fix="pip install fcd_torch==1.0.7")
    return fcd_torch.FCD(device=device, n_jobs=1, batch_size=batch_size)


def frechet_chemnet_distance(smiles: list[str], reference: ReferenceStatistics) -> float:
    """FCD between ``smiles`` (valid, canonical) and a reference set's ChemNet statistics."""
    if len(smiles) < 2:
        return math.nan  # a covariance needs two molecules
    pref = {"mu": reference.fcd_mu, "sigma": reference.fcd_sigma}
    return float(chemnet()(gen=smiles, pref=pref))


def moses_metrics(
    samples: list[str],
    unique_at: Sequence[int] = (1000, 10000),
    train: frozenset[str] | None = None,
    references: Sequence[str] = ("test", "test_scaffolds"),
) -> dict[str, float]:
    """The MOSES table's metrics of generated SMILES ``samples``.

    Args:
        samples: generated SMILES, invalid ones included (they count against ``valid``).
        unique_at: the ``k`` of each unique@k; with fewer valid samples than ``k``, the share
            over all valid samples is given (and a warning logged), as MOSES does.
        train: canonical training SMILES for novelty; unset: the MOSES training set.
        references: the test sets to compare with (``test``: ``/Test``, ``test_scaffolds``:
            ``/TestSF``).

    Returns:
        ``valid``, ``unique@k``, ``novelty``, ``FCD/Test``, ``SNN/Test``, ``Frag/Test``,
        ``Scaf/Test`` (and ``/TestSF``), ``IntDiv``, ``IntDiv2``, ``Filters``; metrics of valid
        molecules are NaN when no sample is valid.
    """
    if not samples:
        raise ValueError("moses_metrics: no samples to evaluate")
    mols = [m for m in map(molecule, samples) if m is not None]
    chem = _chem()
    smiles = [chem.MolToSmiles(m) for m in mols]  # canonical, duplicates kept
    metrics = {"valid": len(mols) / len(samples)}
    for k in unique_at:
        if len(smiles) < k:
            log.warning("unique@%d over %d valid samples only", k, len(smiles))
        first = smiles[:k]
        metrics[f"unique@{k}"] = len(set(first)) / len(first) if first else math.nan
    if not mols:
        return metrics | dict.fromkeys(_valid_only_names(references), math.nan)
    distinct = set(smiles)
    train = training_set() if train is None else train
    metrics["novelty"] = len(distinct - train) / len(distinct)
    fingerprints = morgan_fingerprints(mols)
    fragments, scaffolds = brics_fragments(mols), scaffold_counts(mols)
    for split in references:
        reference = reference_statistics(split)
        suffix = _SUFFIXES[split]
        metrics[f"FCD/{suffix}"] = frechet_chemnet_distance(smiles, reference)
        snn = tanimoto_aggregate(reference.fingerprints, fingerprints, agg="max")
        metrics[f"SNN/{suffix}"] = float(snn.mean())
        metrics[f"Frag/{suffix}"] = cosine_similarity(reference.fragments, fragments)
        metrics[f"Scaf/{suffix}"] = cosine_similarity(reference.scaffolds, scaffolds)
    metrics["IntDiv"] = internal_diversity(fingerprints, p=1)
    metrics["IntDiv2"] = internal_diversity(fingerprints, p=2)
    metrics["Filters"] = sum(map(passes_filters, mols)) / len(mols)
    return metrics


_SUFFIXES = {"test": "Test", "test_scaffolds": "TestSF"}


def _valid_only_names(references: Sequence[str]) -> list[str]:
    per_reference = [
        f"{name}/{_SUFFIXES[split]}"
        for split in references
        for name in ("FCD", "SNN", "Frag", "Scaf")
    ]
    return ["novelty", *per_reference, "IntDiv", "IntDiv2", "Filters"]
