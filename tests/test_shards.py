"""``mmm shards``: files of any modality -> numbered shards, in parallel, with a summary."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from mmm.cli import run
from mmm.data import shards
from mmm.data.formats import Sample, base
from mmm.data.shards import split_by_size


def _lines(paths: list[str]) -> Iterator[Sample]:
    """A per-file reader: one sample per line; a line ``FAIL`` makes the reader fail."""
    for path in map(Path, paths):
        for number, line in enumerate(path.read_text().splitlines()):
            if line == "FAIL":
                raise ValueError(f"line {number} is FAIL")
            yield {"__key__": f"{path.stem}-{number}", "txt": line.encode()}


@pytest.fixture
def lines_reader(monkeypatch):
    monkeypatch.setitem(base._SOURCES, "lines", _lines)
    monkeypatch.setattr(base, "_PER_FILE", {*base._PER_FILE, "lines"})


def _files(folder: Path, sizes: list[int]) -> set[str]:
    folder.mkdir(parents=True)
    keys = set()
    for index, size in enumerate(sizes):
        (folder / f"f{index}.txt").write_text("\n".join(f"line {i}" for i in range(size)))
        keys |= {f"f{index}-{i}" for i in range(size)}
    return keys


def _keys(urls: list[str]) -> list[str]:
    return [sample["__key__"] for sample in wds.WebDataset(urls, shardshuffle=False)]


def test_parallel_workers_write_one_numbered_sequence(tmp_path, lines_reader, capsys):
    keys = _files(tmp_path / "in", [30, 5, 12, 9, 1])
    args = [f"--inputs={tmp_path}/in", f"--output={tmp_path}/out/train", "--modality=lines"]
    summary = run(["shards", *args, "--max_count=8", "--workers=2", "--progress=false"])
    assert summary.samples == 57 and summary.skipped == 0
    # files dealt by size: 30 samples to one worker, 27 to the other: 4 + 4 shards of <= 8
    assert summary.shards == [str(tmp_path / f"out/train-{i:06d}.tar") for i in range(8)]
    assert summary.bytes == sum(os.path.getsize(s) for s in summary.shards)
    found = _keys(summary.shards)
    assert sorted(found) == sorted(keys)  # every sample once, whichever worker wrote it
    assert all(len(_keys([s])) <= 8 for s in summary.shards)
    assert str(summary) in capsys.readouterr().out  # the printed summary
    assert not (tmp_path / "out/train.parts").exists()


def test_max_size_starts_new_shards(tmp_path, lines_reader):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/big.txt").write_text("\n".join("x" * 50_000 for _ in range(6)))
    summary = shards.build_shards(
        [str(tmp_path / "in/big.txt")],
        str(tmp_path / "out"),
        "lines",
        max_size=120_000,
        progress=False,
    )
    # a shard closes once it holds max_size bytes: 3 samples of 50 kB, then the next shard
    assert summary.samples == 6 and len(summary.shards) == 2


def test_failing_file_is_skipped_counted_and_named(tmp_path, lines_reader, caplog):
    _files(tmp_path / "in", [4, 3])
    (tmp_path / "in/f1.txt").write_text("ok\nFAIL\nnever read")
    with caplog.at_level(logging.WARNING):
        summary = shards.build_shards(
            sorted(map(str, (tmp_path / "in").iterdir())),
            str(tmp_path / "out"),
            "lines",
            progress=False,
        )
    assert summary.samples == 4 + 1 and summary.skipped == 1
    assert "f1.txt" in caplog.text and "line 1 is FAIL" in caplog.text
    with pytest.raises(ValueError, match="f1.txt"):
        shards.build_shards(
            sorted(map(str, (tmp_path / "in").iterdir())),
            str(tmp_path / "strict"),
            "lines",
            on_error="raise",
            progress=False,
        )


def test_existing_shards_are_kept_unless_overwrite(tmp_path, lines_reader):
    _files(tmp_path / "in", [5])
    paths = [str(tmp_path / "in/f0.txt")]
    shards.build_shards(paths, str(tmp_path / "out"), "lines", max_count=1, progress=False)
    with pytest.raises(FileExistsError, match="5 shards exist"):
        shards.build_shards(paths, str(tmp_path / "out"), "lines", progress=False)
    summary = shards.build_shards(
        paths, str(tmp_path / "out"), "lines", overwrite=True, progress=False
    )
    assert len(summary.shards) == 1 and len(list(tmp_path.glob("out-*.tar"))) == 1


def test_reader_that_needs_all_files_runs_in_one_process(tmp_path, caplog):
    """Image's reader numbers classes over all files (no ``per_file``): workers fall back to 1,
    with a note. Text is read file by file, with keys relative to all inputs' folder."""
    for label in ("cat", "dog"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        Image.new("RGB", (8, 8), label == "cat" and "red" or "blue").save(
            tmp_path / "photos" / label / "1.png"
        )
    with caplog.at_level(logging.WARNING):
        summary = run(
            ["shards", f"--inputs={tmp_path}/photos", f"--output={tmp_path}/out/i", "--workers=2"]
            + ["--modality=image"]
        )
    assert summary.samples == 2 and "1 worker" in caplog.text
    (tmp_path / "docs" / "x").mkdir(parents=True)
    (tmp_path / "docs/a.txt").write_text("first paragraph\n\nsecond paragraph")
    (tmp_path / "docs/x/a.txt").write_text("same name, other folder")
    (tmp_path / "docs/b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    summary = run(
        ["shards", f"--inputs={tmp_path}/docs", f"--output={tmp_path}/out/t", "--workers=2"]
    )
    keys = sorted(s["__key__"] for s in wds.WebDataset(summary.shards, shardshuffle=False))
    assert keys == ["a_txt-0", "b_jsonl-1-0", "b_jsonl-2-0", "x_a_txt-0"]


def test_split_by_size_balances_bytes(tmp_path):
    sizes = [900, 100, 400, 500, 300, 200]
    paths = []
    for index, size in enumerate(sizes):
        paths.append(str(tmp_path / f"{index}.bin"))
        Path(paths[-1]).write_bytes(bytes(size))
    parts = split_by_size(paths, 2)
    assert sorted(p for part in parts for p in part) == sorted(paths)
    assert [sum(os.path.getsize(p) for p in part) for part in parts] == [1200, 1200]


def test_same_named_text_files_in_different_folders_keep_distinct_keys(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / "docs" / folder).mkdir(parents=True)
        (tmp_path / "docs" / folder / "README.txt").write_text(f"notes of {folder}")
    summary = run(["shards", f"--inputs={tmp_path}/docs", f"--output={tmp_path}/out/t"])
    assert sorted(_keys(summary.shards)) == ["a_README_txt-0", "b_README_txt-0"]
