"""The MOSES metrics (``mmm.metrics.moses``) on hand-checked molecules, the ``moses`` corpus,
and agreement with the statistics molsets ships.

molsets' own metric functions cannot be imported beside current RDKit and pandas (they import
``rdkit.six`` and call ``DataFrame.append``); ``test_agrees_with_molsets_functions`` compares
with them where they do import and skips otherwise, and the other tests check hand-computed
values and the fingerprints molsets precomputed for its test set.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("rdkit.Chem")

from mmm.data.corpora import iter_corpus  # noqa: E402
from mmm.data.corpora.moses import SUBSET_STRIDE  # noqa: E402
from mmm.metrics import moses  # noqa: E402
from mmm.optional import MissingDependencyError  # noqa: E402

#: A canonical duplicate (CCO, OCC), an unclosed ring, an empty string, and benzene.
SAMPLES = ["CCO", "OCC", "C1CC", "", "c1ccccc1"]


def _has_molsets_data() -> bool:
    try:
        moses.molsets_folder()
    except MissingDependencyError:
        return False
    return True


needs_molsets = pytest.mark.skipif(
    not _has_molsets_data(), reason="molsets is not installed: pip install --no-deps molsets"
)


@needs_molsets  # the Filters share reads molsets' filter lists
def test_validity_uniqueness_and_novelty_of_hand_checked_samples():
    metrics = moses.moses_metrics(
        SAMPLES, unique_at=(2, 3), train=frozenset({"CCO"}), references=()
    )
    assert metrics["valid"] == pytest.approx(3 / 5)  # C1CC and "" are invalid
    assert metrics["unique@2"] == pytest.approx(1 / 2)  # CCO and OCC are one molecule
    assert metrics["unique@3"] == pytest.approx(2 / 3)
    assert metrics["novelty"] == pytest.approx(1 / 2)  # benzene is new, ethanol is not
    # valid (ethanol, ethanol, benzene): ethanol and benzene share no Morgan bit, so 5 of the
    # 9 ordered pairs have Tanimoto 1 (the self pairs and the two ethanols), 4 have 0
    assert metrics["IntDiv"] == pytest.approx(1 - 5 / 9)
    # IntDiv2 = 1 - mean_i sqrt(mean_j T^2): ethanol rows hold (1, 1, 0), benzene's (0, 0, 1)
    assert metrics["IntDiv2"] == pytest.approx(1 - (2 * math.sqrt(2 / 3) + math.sqrt(1 / 3)) / 3)


def test_invalid_samples_leave_the_other_metrics_undefined():
    metrics = moses.moses_metrics(["C1CC", "", "X"], unique_at=(10,), references=())
    assert metrics["valid"] == 0.0
    assert math.isnan(metrics["unique@10"]) and math.isnan(metrics["Filters"])
    with pytest.raises(ValueError, match="no samples"):
        moses.moses_metrics([], references=())


def test_scaffolds_need_two_rings():
    diphenylmethane = moses.molecule("c1ccc(Cc2ccccc2)cc1")
    assert moses.murcko_scaffold(moses.molecule("CCc1ccc(Cc2ccccc2)cc1O")) == "c1ccc(Cc2ccccc2)cc1"
    assert moses.murcko_scaffold(diphenylmethane) == "c1ccc(Cc2ccccc2)cc1"
    assert moses.murcko_scaffold(moses.molecule("CC(=O)Oc1ccccc1C(=O)O")) is None  # one ring
    assert moses.murcko_scaffold(moses.molecule("CCO")) is None
    counts = moses.scaffold_counts([diphenylmethane] * 2 + [moses.molecule("CCO")])
    assert counts == Counter({"c1ccc(Cc2ccccc2)cc1": 2})


def test_fragments_are_brics_pieces_with_attachment_points():
    fragments = moses.brics_fragments([moses.molecule("CCOC(=O)c1ccccc1")])
    assert sum(fragments.values()) >= 2 and all("*" in f for f in fragments)


def test_tanimoto_diversity_and_cosine_by_hand():
    fingerprints = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=np.uint8)
    assert moses.internal_diversity(fingerprints, p=1) == pytest.approx(0.5)
    assert moses.internal_diversity(fingerprints, p=2) == pytest.approx(1 - math.sqrt(0.5))
    half = np.array([[1, 0, 0, 0]], dtype=np.uint8)  # shares 1 of the 2 bits of the first
    nearest = moses.tanimoto_aggregate(fingerprints, half, agg="max", chunk=1)
    assert nearest.tolist() == pytest.approx([0.5])
    empty = np.zeros((1, 4), dtype=np.uint8)
    assert moses.tanimoto_aggregate(empty, empty, agg="max").tolist() == [1.0]  # as MOSES
    assert moses.cosine_similarity(Counter(a=1, b=1), Counter(a=2)) == pytest.approx(
        1 / math.sqrt(2)
    )
    assert math.isnan(moses.cosine_similarity(Counter(), Counter(a=1)))


@needs_molsets
@pytest.mark.parametrize(
    ("smiles", "passes"),
    [
        ("CCO", True),
        ("C[N+](C)(C)C", False),  # charged
        ("C1CCCCCCC1", False),  # an eight-membered ring
        ("CCP", False),  # phosphorus is not allowed
        ("C=CC#N", False),  # MCF1: a Michael acceptor nitrile
    ],
)
def test_moses_filters(smiles, passes):
    assert moses.passes_filters(moses.molecule(smiles)) is passes


@needs_molsets
def test_fingerprints_equal_those_molsets_precomputed_for_its_test_set():
    test = moses.read_moses_smiles("test")
    assert len(test) == 176_074
    reference = moses.reference_statistics("test")
    ours = moses.morgan_fingerprints([moses.molecule(s) for s in test[:100]])
    assert np.array_equal(ours, reference.fingerprints[:100])


@needs_molsets
def test_test_molecules_score_as_test_molecules():
    """Test-set molecules have SNN/Test 1 (each is its own nearest neighbour), pass the
    filters (MOSES applied them to build the set), and lie nearer the test set in FCD than
    as many alcohols do (FCD of 50 molecules is large either way: it falls with sample size)."""
    sample = moses.read_moses_smiles("test")[:50]
    metrics = moses.moses_metrics(sample, unique_at=(50,), references=("test",))
    assert metrics["valid"] == 1.0 and metrics["unique@50"] == 1.0
    assert metrics["SNN/Test"] == pytest.approx(1.0)
    assert metrics["novelty"] == 1.0 and metrics["Filters"] == 1.0
    alcohols = ["C" * n + "O" for n in range(1, 51)]
    far = moses.moses_metrics(alcohols, unique_at=(50,), references=("test",))
    assert 0 < metrics["FCD/Test"] < far["FCD/Test"] / 2
    assert metrics["Frag/Test"] > 0.8 > far["Frag/Test"]


def test_agrees_with_molsets_functions():
    try:
        from moses.metrics import metrics as molsets_metrics
    except Exception as error:  # molsets imports rdkit.six and pandas' removed API
        pytest.skip(f"molsets' metric functions do not import here: {error!r}")
    mols = [m for m in map(moses.molecule, SAMPLES) if m is not None]
    assert molsets_metrics.fraction_valid(SAMPLES) == pytest.approx(3 / 5)
    ours = moses.internal_diversity(moses.morgan_fingerprints(mols))
    assert molsets_metrics.internal_diversity(mols) == pytest.approx(ours)


@needs_molsets
def test_the_moses_corpus_is_a_stride_of_the_training_set():
    first = [s["smi"].decode() for s in itertools.islice(iter_corpus("moses"), 3)]
    train = moses.read_moses_smiles("train")
    assert first == train[: 3 * SUBSET_STRIDE : SUBSET_STRIDE]


def test_missing_molsets_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match="pip install --no-deps molsets"):
        moses.molsets_folder()
