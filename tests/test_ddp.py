"""Real DDP on CPU (2 ranks, gloo, 2 loader workers each) over uneven shards.

The test runs this file as a script in a fresh interpreter, kept apart from pytest's process;
there Lightning's DDP strategy forks the two ranks (``ddp_fork``: the same ``DDPStrategy`` and
gloo process group as ``ddp``, without a second interpreter start-up). A probe model records
the integer id of every sample each rank trains and validates on. Its helpers (``IdTokenizer``, ``Probe``,
``write_uneven_shards``) also serve ``tests/test_datamodule.py``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules import ShardDataModule
from mmm.experiment import QUIET_TRAINER
from mmm.tokenizers.base import ContinuousSpec, SampleError, Tokenizer
from tests.launch import launch_nodes

TRAIN_SIZES = [3, 17, 8, 1, 12, 5, 9, 2]  # uneven on purpose: 57 samples in 8 shards
VAL_SIZES = [7, 1, 11, 4, 2]  # 25 samples in 5 shards


class IdTokenizer(Tokenizer):
    """Samples whose ``id`` member is an integer, batched as ``ids`` (B, 1): lets a test see
    exactly which samples each batch holds."""

    sample_keys = ("id",)

    @property
    def spec(self) -> ContinuousSpec:
        return ContinuousSpec(input_dim=1, max_length=1)

    def decode_sample(self, sample: dict[str, Any]) -> int:
        raw = sample.get("id", b"")
        if not raw.isdigit():
            raise SampleError(
                f"'id' is not an integer: {raw!r}", sample["__key__"], sample["__url__"]
            )
        return int(raw)

    def collate(self, items: list[int]) -> dict[str, torch.Tensor]:
        ids = torch.tensor(items)[:, None]  # (B, 1)
        ones = torch.ones_like(ids, dtype=torch.bool)
        return {"ids": ids, "attention_mask": ones, "maskable": ones}


class Probe(L.LightningModule):
    """A one-weight model that records the sample ids of every step, per stage and epoch, and
    writes them to ``out/rank<R>.json`` at the end of fitting when ``out`` is set (forked DDP
    ranks cannot hand objects back)."""

    def __init__(self, out: str | None = None) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, dict[int, list[int]]] = {"train": {}, "val": {}}
        self.out = out

    def _record(self, stage: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        assert "reader_state" not in batch  # the datamodule keeps its bookkeeping to itself
        self.seen[stage].setdefault(self.current_epoch, []).extend(batch["ids"][:, 0].tolist())
        return (self.weight * batch["ids"].float()).mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._record("train", batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._record("val", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def on_fit_end(self) -> None:
        if self.out is not None:
            trainer = self.trainer
            trainer.save_checkpoint(Path(self.out, "last.ckpt"))  # a collective: every rank
            record = {
                "seen": self.seen,
                "global_step": trainer.global_step,
                "length": trainer.num_training_batches,
            }
            Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def fit_probe(
    data: ShardDataModule,
    root: Path,
    max_steps: int,
    ckpt_path: Path | str | None = None,
    devices: int = 1,
    out: str | None = None,
    num_nodes: int = 1,
) -> tuple[L.Trainer, list[int]]:
    """Fit a ``Probe`` (writing to ``out``, see there) on ``devices`` CPU ranks (gloo, forked)
    of each of ``num_nodes`` nodes (this process is node ``NODE_RANK``) up to ``max_steps``,
    resuming from ``ckpt_path``: the trainer and the ids this rank trained on, in order."""
    probe = Probe(out)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp_fork" if devices > 1 else "ddp" if num_nodes > 1 else "auto",
        max_steps=max_steps,
        limit_val_batches=0,
        **QUIET_TRAINER,
        default_root_dir=root,
    )
    trainer.fit(probe, datamodule=data, ckpt_path=ckpt_path)
    return trainer, [i for ids in probe.seen["train"].values() for i in ids]


def write_uneven_shards(
    folder: Path, prefix: str, sizes: list[int], first_id: int = 0
) -> list[int]:
    """Shards ``prefix-NNNNNN.tar`` of the given sizes holding ``id`` members; returns the ids."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = list(range(first_id, first_id + sum(sizes)))
    start = 0
    for index, size in enumerate(sizes):
        with tarfile.open(folder / f"{prefix}-{index:06d}.tar", "w") as tar:
            for sample_id in ids[start : start + size]:
                data = str(sample_id).encode()
                info = tarfile.TarInfo(f"sample{sample_id:05d}.id")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        start += size
    return ids


def run_ddp(shards: str, out: str, nodes: int = 1) -> None:
    """Fit 2 epochs on 2 CPU ranks; each rank writes what it saw to ``out/rank<R>.json``.
    ``nodes=1``: both ranks on one node, forked by Lightning; ``nodes=2``: one rank on each
    of two nodes, this process being one of them (``tests/launch.py`` starts both)."""
    data = ShardDataModule(
        train_shards=f"{shards}/train-*.tar",
        val_shards=f"{shards}/val-*.tar",
        batcher=IdTokenizer(),
        batch_size=4,
        num_workers=2,
        epoch_samples=40,
        shuffle_buffer=8,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2 // nodes,
        num_nodes=nodes,
        # DDPStrategy on forked ranks: no second interpreter start-up; with several nodes
        # every rank is a process of its own, started by the cluster (here tests/launch.py)
        strategy="ddp_fork" if nodes == 1 else "ddp",
        max_epochs=2,
        num_sanity_val_steps=0,
        **QUIET_TRAINER,
    )
    trainer.fit(Probe(out), datamodule=data)


def test_ddp_exact_validation_and_elastic_training(tmp_path):
    train_ids = write_uneven_shards(tmp_path / "shards", "train", TRAIN_SIZES)
    val_ids = write_uneven_shards(tmp_path / "shards", "val", VAL_SIZES, first_id=1000)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "shards"), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_epochs(out, train_ids, val_ids)


def test_two_nodes_validate_exactly_once_and_train_equal_batches(tmp_path):
    """Multi-node, simulated: two "nodes" on this machine, one process each (``NODE_RANK``,
    ``MASTER_ADDR=127.0.0.1``, gloo), pass the checks of one node with two ranks."""
    train_ids = write_uneven_shards(tmp_path / "shards", "train", TRAIN_SIZES)
    val_ids = write_uneven_shards(tmp_path / "shards", "val", VAL_SIZES, first_id=1000)
    out = tmp_path / "out"
    out.mkdir()
    launch_nodes([__file__, str(tmp_path / "shards"), str(out), "2"], nodes=2, cwd=tmp_path)
    check_epochs(out, train_ids, val_ids)


def check_epochs(out: Path, train_ids: list[int], val_ids: list[int]) -> None:
    """What ``run_ddp``'s 2 ranks wrote to ``out``: equal training batches, exact validation,
    every reader's state in the checkpoint."""
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]

    # elastic training: 40 samples per epoch = 5 steps of 2 x 4, on both ranks, every epoch
    assert [r["length"] for r in ranks] == [5, 5]
    assert [r["global_step"] for r in ranks] == [10, 10]
    for epoch in ("0", "1"):
        for rank in ranks:
            assert len(rank["seen"]["train"][epoch]) == 5 * 4
            assert set(rank["seen"]["train"][epoch]) <= set(train_ids)
    # the ranks read disjoint slices of the global order: 40 distinct samples of the first pass
    assert len(set(ranks[0]["seen"]["train"]["0"] + ranks[1]["seen"]["train"]["0"])) == 40
    # exact validation: each sample once per epoch over both ranks and all their workers
    for epoch in ("0", "1"):
        seen = ranks[0]["seen"]["val"][epoch] + ranks[1]["seen"]["val"][epoch]
        assert sorted(seen) == val_ids
    # the checkpoint (written by rank 0) holds the global position: the next step, of 2 x 4
    state = torch.load(out / "last.ckpt", weights_only=True)["ShardDataModule"]
    assert state["next_step"] == 10 and state["global_batch"] == 8


if __name__ == "__main__":
    run_ddp(sys.argv[1], sys.argv[2], nodes=int(sys.argv[3]) if len(sys.argv) > 3 else 1)
