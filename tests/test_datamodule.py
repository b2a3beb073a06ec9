"""ShardDataModule: shard sources, exact and resampled epochs, mixing, faults, resuming."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules import ShardDataModule, expand_shards, shards
from datamodules.shards import usable_local_shards
from datamodules.streams import ShardStream
from mmm.data.shards import write_shards
from mmm.tokenizers.base import SampleError
from tests.test_ddp import TRAIN_SIZES, IdTokenizer, fit_probe, write_uneven_shards


def _data(**kwargs) -> ShardDataModule:
    settings = {"batcher": IdTokenizer(), "batch_size": 4, "num_workers": 0, "shuffle_buffer": 0}
    return ShardDataModule(**{**settings, **kwargs})


def _epoch_ids(loader) -> list[list[int]]:
    return [batch["ids"][:, 0].tolist() for batch in loader]


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


@pytest.fixture
def uneven(tmp_path) -> tuple[Path, list[int]]:
    """8 training shards of 1 to 17 samples (57 in all)."""
    return tmp_path, write_uneven_shards(tmp_path, "train", TRAIN_SIZES)


def test_sources_globs_braces_lists_and_pipes(uneven):
    root, ids = uneven
    braces = expand_shards(f"{root}/train-{{000000..000001}}.tar::{root}/train-00000[23].tar")
    assert braces == [str(root / f"train-{i:06d}.tar") for i in range(4)]
    listing = root / "shards.txt"  # relative entries are read from the list's folder
    listing.write_text("# my shards\ntrain-00000[0-1].tar\n\npipe:aws s3 cp s3://b/x.tar -\n")
    assert expand_shards(str(listing)) == [*braces[:2], "pipe:aws s3 cp s3://b/x.tar -"]
    with pytest.raises(FileNotFoundError, match="missing-"):
        expand_shards(f"{root}/missing-*.tar")
    piped = _data(val_shards=f"pipe:cat {root}/train-000001.tar")  # object storage: same path
    assert sorted(_flat(_epoch_ids(piped.val_dataloader()))) == ids[3:20]


def test_exact_mode_sees_every_sample_once_across_workers(uneven):
    root, ids = uneven
    data = _data(val_shards=f"{root}/train-*.tar", num_workers=2)
    loader = data.val_dataloader()
    for _ in range(2):  # every epoch, no loss and no duplicate
        assert sorted(_flat(_epoch_ids(loader))) == ids


def test_resampled_epochs_are_equal_full_and_seeded(uneven):
    root, ids = uneven
    settings = {"train_shards": f"{root}/train-*.tar", "epoch_samples": 30, "shuffle_buffer": 8}
    loader = _data(**settings, num_workers=2).train_dataloader()
    assert len(loader) == 8  # 30 samples -> 4 batches of 4 on each of 2 workers
    epochs = [_epoch_ids(loader) for _ in range(3)]
    assert all(len(e) == 8 and all(len(b) == 4 for b in e) for e in epochs)
    assert set(_flat(epochs[0] + epochs[1] + epochs[2])) <= set(ids)
    assert epochs[0] != epochs[1] != epochs[2]  # shard order moves on with every pass
    assert _epoch_ids(_data(**settings, num_workers=2).train_dataloader()) == epochs[0]
    assert _epoch_ids(_data(**settings, num_workers=2, seed=1).train_dataloader()) != epochs[0]


def test_readers_own_disjoint_shards_in_every_pass():
    urls = [f"s{i}.tar" for i in range(8)]
    streams = [ShardStream(urls, 0, 0, True, slot, 6, handler=bool) for slot in range(6)]
    for pass_index in range(3):
        parts = [s.pass_shards(pass_index) for s in streams]
        assert sorted(u for part in parts for u in part) == sorted(urls)
    assert streams[0].pass_shards(0) != streams[0].pass_shards(1)


def test_fewer_shards_than_readers_is_an_error_only_when_streaming(uneven):
    root, ids = uneven
    few = f"{root}/train-00000[0-1].tar"
    data = _data(train_shards=few, num_workers=3, train_mode="resampled")
    with pytest.raises(ValueError, match=r"2 shard\(s\).*at least 3"):
        data.train_dataloader()
    # elastic readers read any shard by sample number: 3 workers share 2 shards' 20 samples
    elastic = _data(train_shards=few, num_workers=3).train_dataloader()
    assert sorted(_flat(_epoch_ids(elastic))) == ids[:20]
    # exact mode just uses fewer workers: a worker without a shard would have nothing to read
    exact = _data(val_shards=f"{root}/train-00000[0-1].tar", num_workers=3)
    assert exact.val_dataloader().num_workers == 2


def test_weighted_mixing_follows_weights_and_seed(tmp_path):
    write_uneven_shards(tmp_path / "a", "a", [50] * 4)
    write_uneven_shards(tmp_path / "b", "b", [50] * 4, first_id=1000)
    settings = {
        "train_shards": [f"{tmp_path}/a/a-*.tar", f"{tmp_path}/b/b-*.tar"],
        "train_weights": [0.7, 0.3],
        "epoch_samples": 800,
        "batch_size": 16,
    }
    ids = _flat(_epoch_ids(_data(**settings).train_dataloader()))
    share_a = sum(i < 1000 for i in ids) / len(ids)
    assert len(ids) == 800 and 0.65 < share_a < 0.75
    assert _flat(_epoch_ids(_data(**settings).train_dataloader())) == ids
    with pytest.raises(ValueError, match="one per pattern"):
        _data(**{**settings, "train_weights": [1.0]})


def _write_faulty_shards(root: Path) -> dict[str, str]:
    """One shard per fault, beside a good one; returns fault name -> shard URL."""
    write_uneven_shards(root, "good", [5])
    with tarfile.open(root / "member.tar", "w") as tar:  # a sample whose member is unusable
        for key, data in (("k0", b"100"), ("k1", b"not-a-number"), ("k2", b"102")):
            info = tarfile.TarInfo(f"{key}.id")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(root / "cut.tar", "w") as tar:  # cut inside the second sample's "pad"
        for number in (200, 201, 202):
            for ext, data in (("id", str(number).encode()), ("pad", bytes(4000))):
                info = tarfile.TarInfo(f"c{number}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    cut = root / "cut.tar"
    cut.write_bytes(cut.read_bytes()[:9000])
    (root / "junk.tar").write_bytes(b"this is not a tar file" * 50)
    return {
        "member": str(root / "member.tar"),
        "truncated": str(cut),
        "unreadable": str(root / "junk.tar"),
        "unreachable": f"pipe:cat {root}/missing.tar",
    }


def test_faults_are_warned_with_shard_skipped_and_counted(tmp_path, caplog):
    faults = _write_faulty_shards(tmp_path)
    data = _data(val_shards=[str(tmp_path / "good-000000.tar"), *faults.values()])
    with caplog.at_level(logging.WARNING):
        batches = list(data.val_dataloader())
    ids = sorted(i for b in batches for i in b["ids"][:, 0].tolist())
    assert ids == [0, 1, 2, 3, 4, 100, 102, 200, 201]  # every readable sample, and only those
    # counted as they happen: the bad member, the read errors where the tar is cut, the
    # unreachable URL (the unreadable shard is dropped, with its warning, before reading)
    assert sum(int(b["skipped"]) for b in batches) >= 3
    for url in faults.values():
        assert url in caplog.text
    assert "'k1'" in caplog.text  # the bad sample's key


def test_training_stream_of_only_failing_shards_stops_instead_of_spinning(tmp_path):
    gone = f"pipe:cat {tmp_path}/gone-{{0..1}}.tar"
    data = _data(train_shards=gone, epoch_samples=8, train_mode="resampled")
    with pytest.raises(RuntimeError, match="no shard of pass 0 yielded a sample"):
        next(iter(data.train_dataloader()))


@pytest.mark.parametrize("fault", ["member", "truncated", "unreadable", "unreachable"])
def test_strict_mode_raises_naming_the_shard(tmp_path, fault):
    url = _write_faulty_shards(tmp_path)[fault]
    data = _data(val_shards=url, on_error="raise")
    with pytest.raises((SampleError, OSError, ValueError), match=url.split("/")[-1]):
        list(data.val_dataloader())


class AugmentingTokenizer(IdTokenizer):
    """Each sample's id times 1000 plus a random view (0-999) drawn from torch's RNG, as an
    image crop or a protein window would be."""

    def decode_sample(self, sample):
        return super().decode_sample(sample) * 1000 + int(torch.randint(1000, ()))


@pytest.mark.parametrize(
    ("mode", "sources"), [("elastic", 1), ("elastic", 2), ("resampled", 2)], ids=str
)
def test_resume_mid_epoch_replays_nothing_and_skips_nothing(uneven, mode, sources):
    """Train 23 steps straight, or 7 steps, a checkpoint, and a resume to 23: the batches after
    the resume are the ones the uninterrupted run trained on, sample for sample and view for
    view, across epoch and pass boundaries, with 2 workers, a shuffle buffer spanning shards,
    weighted mixing and random augmentation."""
    root, _ = uneven
    patterns = [f"{root}/train-00000[0-3].tar", f"{root}/train-00000[4-7].tar"][:sources]
    settings = {
        "batcher": AugmentingTokenizer(),
        "train_shards": patterns,
        "train_weights": [0.6, 0.4][:sources],
        "batch_size": 2,
        "num_workers": 2,
        "epoch_samples": 20,  # 5 batches per worker, 10 per epoch
        "shuffle_buffer": 6,
        "train_mode": mode,
    }
    _, straight = fit_probe(_data(**settings), root, max_steps=23)
    trainer, first = fit_probe(
        _data(**settings), root, max_steps=7
    )  # stops mid-epoch, worker 0's turn
    checkpoint = root / "mid-epoch.ckpt"
    trainer.save_checkpoint(checkpoint)
    state = trainer.datamodule.state_dict()
    assert (
        state["next_step"] == 7 if mode == "elastic" else sorted(state["train_readers"]) == [0, 1]
    )
    _, rest = fit_probe(_data(**settings), root, max_steps=23, ckpt_path=checkpoint)
    assert first + rest == straight


def test_changed_worker_count_starts_a_new_pass_when_streaming(uneven, caplog):
    """Streaming states recorded by 1 reader cannot place 2 readers mid-pass: a new pass, not
    a crash (elastic training resumes exactly: tests/test_elastic.py)."""
    root, _ = uneven
    data = _data(train_shards=f"{root}/train-*.tar", epoch_samples=16, train_mode="resampled")
    for batch in data.train_dataloader():
        data.on_before_batch_transfer(batch, dataloader_idx=0)
    data.num_workers = 2
    with caplog.at_level(logging.WARNING):
        assert len(_epoch_ids(data.train_dataloader())) == 4
    assert "starts a new pass" in caplog.text


@pytest.mark.parametrize(
    ("argument", "value"),
    [("train_mode", "shuffled"), ("on_error", "ignore"), ("batch_size", 0), ("epoch_samples", 0)],
)
def test_settings_are_checked_in_the_constructor(argument, value):
    with pytest.raises(ValueError, match=argument):
        _data(train_shards="x.tar", **{argument: value})


def test_skipped_samples_are_logged_per_epoch(tmp_path, tiny_module, tokenizer, corpus_dir):
    """The real module and text tokenizer: bad samples show up as ``data/skipped_samples``."""
    bad = [{"__key__": "empty", "txt": b"  "}, {"__key__": "latin1", "txt": b"caf\xe9"}]
    write_shards(bad, str(tmp_path / "bad-%06d.tar"))
    data = ShardDataModule(
        val_shards=[str(corpus_dir / "val-*.tar"), str(tmp_path / "bad-*.tar")],
        batcher=tokenizer,
        batch_size=8,
        num_workers=0,
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    [metrics] = trainer.validate(tiny_module, datamodule=data)
    assert metrics["data/skipped_samples"] == 2


def test_sample_counts_come_from_the_shard_index(tmp_path, monkeypatch):
    """`write_shards` leaves `train.shards.json` (webdataset's wids index format, with sizes)
    beside the shards; counting reads it instead of every member header, and falls back to
    the headers for a shard rewritten since."""
    samples = [{"__key__": f"k{i:03d}", "id": str(i).encode()} for i in range(12)]
    summary = write_shards(samples, str(tmp_path / "train-%06d.tar"), max_count=5)
    index = json.loads((tmp_path / "train.shards.json").read_text())
    assert [e["nsamples"] for e in index["shardlist"]] == summary.counts == [5, 5, 2]
    urls = expand_shards(f"{tmp_path}/train-*.tar")

    def no_scan(url, full):
        raise AssertionError(f"scanned {url}")

    with monkeypatch.context() as patched:
        patched.setattr(shards, "inspect_local_shard", no_scan)
        assert usable_local_shards(urls, "raise", count=True) == (urls, 12)
    write_shards(samples[:3], str(tmp_path / "other-%06d.tar"))  # rewrite shard 0: 3 samples
    (tmp_path / "other-000000.tar").replace(urls[0])
    assert usable_local_shards(urls, "raise", count=True) == (urls, 10)
