"""Elastic exact resume: a run cut at any step and resumed under other ranks x workers (same
global batch) trains on exactly the samples the uninterrupted run would have.

``layout_steps`` reads the training data of a layout as its ranks' loaders do (each rank a
``ShardDataModule`` placed by its ``Layout``, real loader workers), without a model or a
process group; ``fit_ddp`` runs a real DDP fit on gloo ranks in fresh interpreters, one per
simulated node. Both return what was trained on, so that other tests (multi-node) can compare
layouts.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from datamodules import ShardDataModule
from datamodules.datamodule import ElasticResumeError
from datamodules.order import GlobalOrder, SourceOrder
from datamodules.state import Layout
from tests.launch import launch_nodes
from tests.test_ddp import TRAIN_SIZES, IdTokenizer, fit_probe, write_uneven_shards

GLOBAL_BATCH = 4


class AugmentingIds(IdTokenizer):
    """Each sample's id times 1000 plus a random view (0-999) drawn from torch's RNG, as an
    image crop would be: the view must not depend on the layout either."""

    def decode_sample(self, sample: dict[str, Any]) -> int:
        return super().decode_sample(sample) * 1000 + int(torch.randint(1000, ()))


class RankData(ShardDataModule):
    """A ``ShardDataModule`` that plays rank ``rank`` of ``world`` without a process group."""

    def __init__(self, rank: int, world: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank, self.world = rank, world

    def layout(self, num_workers: int | None = None) -> Layout:
        workers = self.num_workers if num_workers is None else num_workers
        return Layout(rank=self.rank, world_size=self.world, num_workers=workers)


def elastic_settings(shards: Path, devices: int, workers: int) -> dict[str, Any]:
    """``ShardDataModule`` settings (all but the batcher) for a global batch of 4 on
    ``devices`` ranks: two weighted sources of 29 samples (one undecodable), a shuffle block
    spanning shards, 20 samples (5 steps) per epoch."""
    return {
        "train_shards": [f"{shards}/train-00000[0-3].tar", f"{shards}/train-00000[4-8].tar"],
        "train_weights": [0.6, 0.4],
        "batch_size": GLOBAL_BATCH // devices,
        "num_workers": workers,
        "epoch_samples": 20,
        "shuffle_block": 8,
    }


def write_elastic_shards(folder: Path) -> None:
    """The uneven shards of ``tests/test_ddp.py`` plus one whose only sample is not an id."""
    write_uneven_shards(folder, "train", TRAIN_SIZES)
    with tarfile.open(folder / "train-000008.tar", "w") as tar:
        info = tarfile.TarInfo("bad00000.id")
        info.size = len(b"not-an-id")
        tar.addfile(info, io.BytesIO(b"not-an-id"))


def layout_steps(
    settings: dict[str, Any], devices: int, first: int, last: int, state: dict[str, Any]
) -> tuple[dict[int, list[int]], int, dict[str, Any]]:
    """Steps ``first`` to ``last - 1`` read under ``devices`` ranks, resuming from ``state``
    (a checkpoint's datamodule state; ``{}`` at step 0): per step, the items of all ranks;
    the skipped samples counted; and the state to resume from at ``last``."""
    steps: dict[int, list[int]] = {}
    skipped, end_state = 0, {}
    for rank in range(devices):
        data = RankData(rank, devices, **settings, batcher=AugmentingIds())
        data.load_state_dict(state)
        loader = data.train_dataloader()
        step = first
        while step < last:
            for batch in loader:
                step = int(batch["train_step"])
                skipped += int(batch["skipped"])
                data.on_before_batch_transfer(batch, dataloader_idx=0)
                steps.setdefault(step, []).extend(batch["ids"][:, 0].tolist())
                step += 1
                if step == last:
                    break
        end_state = data.state_dict()
    return steps, skipped, end_state


CHAIN = [(2, 2), (1, 1), (2, 1), (1, 2)]  # devices x workers, one per segment


@pytest.mark.parametrize(
    "cuts",
    [(3, 7, 12), (5, 10, 15)],
    ids=["mid-epoch-cuts-across-epoch-and-pass-ends", "cuts-on-epoch-boundaries"],
)
def test_resume_under_other_layouts_trains_on_the_same_samples(tmp_path, cuts):
    """2x2 -> 1x1 -> 2x1 -> 1x2 (ranks x workers) with a global batch of 4, cut at ``cuts``
    (epochs end every 5 steps, the first pass after 14.5 steps): every step trains on the same
    samples, views and skips as the uninterrupted run (1 rank, no workers)."""
    write_elastic_shards(tmp_path)
    last = 18
    straight, straight_skipped, _ = layout_steps(
        elastic_settings(tmp_path, 1, 0), 1, first=0, last=last, state={}
    )
    resumed: dict[int, list[int]] = {}
    skipped, state = 0, {}
    bounds = [0, *cuts, last]
    for (devices, workers), first, stop in zip(CHAIN, bounds[:-1], bounds[1:], strict=True):
        settings = elastic_settings(tmp_path, devices, workers)
        steps, more, state = layout_steps(settings, devices, first, stop, state)
        resumed.update(steps)
        skipped += more
        assert state["next_step"] == stop
    assert sorted(resumed) == list(range(last))
    for step in range(last):
        assert Counter(resumed[step]) == Counter(straight[step]), f"step {step}"
    assert skipped == straight_skipped > 0  # the bad sample, met once per pass


def test_a_resume_with_another_global_batch_is_refused(tmp_path):
    write_elastic_shards(tmp_path)
    _, _, state = layout_steps(elastic_settings(tmp_path, 1, 0), 1, first=0, last=2, state={})
    settings = {**elastic_settings(tmp_path, 1, 0), "batch_size": 2}
    data = RankData(0, 1, **settings, batcher=AugmentingIds())
    data.load_state_dict(state)
    with pytest.raises(ElasticResumeError, match=r"4 samples per step.*this run takes 2"):
        data.train_dataloader()


def test_remote_training_shards_need_streaming(tmp_path):
    data = ShardDataModule(train_shards=f"pipe:cat {tmp_path}/x.tar", batcher=IdTokenizer())
    with pytest.raises(ValueError, match="needs local files.*train_mode=resampled"):
        data.train_dataloader()


def test_the_global_order_is_a_permutation_per_pass_and_mixes_by_weight():
    """Each pass of a source visits every (shard, sample) once, in another order each pass;
    two sources share each chunk of positions exactly by weight."""
    order = SourceOrder([3, 0, 5, 4], seed=0, block=5)
    passes = [[order.locate(p * 12 + i) for i in range(12)] for p in range(2)]
    for index, addresses in enumerate(passes):
        assert sorted(a[1:] for a in addresses) == sorted(
            (shard, sample) for shard, n in enumerate([3, 0, 5, 4]) for sample in range(n)
        )
        assert {a[0] for a in addresses} == {index}
    assert [a[1:] for a in passes[0]] != [a[1:] for a in passes[1]]
    mixed = GlobalOrder([[10], [10]], weights=[3.0, 1.0], seed=0, block=0)
    sources = Counter(mixed.locate(p).source for p in range(1000))
    assert sources == {0: 750, 1: 250}


# ------------------------------------------------------------------ DDP on gloo ranks
def fit(
    settings: dict[str, Any],
    devices: int,
    max_steps: int,
    out: Path,
    ckpt: str | None,
    num_nodes: int = 1,
) -> list[int]:
    """``fit_probe`` on ``devices`` ranks (of each of ``num_nodes`` nodes) with
    ``elastic_settings``; saves ``out/last.ckpt`` and ``out/rank<R>.json``. Returns the items
    this rank trained on."""
    data = ShardDataModule(**settings, batcher=AugmentingIds())
    return fit_probe(data, out, max_steps, ckpt, devices, str(out), num_nodes)[1]


def fit_ddp(
    settings: dict[str, Any], max_steps: int, out: Path, ckpt: Path | None, num_nodes: int
) -> list[int]:
    """``fit`` on ``num_nodes`` simulated nodes of one gloo rank each (``launch_nodes``: fresh
    interpreters, kept apart from pytest's process): the items all ranks trained on."""
    out.mkdir(parents=True, exist_ok=True)
    spec = {
        "settings": settings,
        "devices": 1,
        "max_steps": max_steps,
        "ckpt": None if ckpt is None else str(ckpt),
        "num_nodes": num_nodes,
    }
    (out / "spec.json").write_text(json.dumps(spec))
    launch_nodes([__file__, str(out)], nodes=num_nodes, cwd=out)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(num_nodes)]
    return [i for rank in ranks for ids in rank["seen"]["train"].values() for i in ids]


def test_two_nodes_of_gloo_ranks_resume_on_one_rank(tmp_path):
    """2 simulated nodes (one gloo rank x 2 workers each: ``NODE_RANK``, ``MASTER_ADDR`` on
    this machine) to step 4, then 1 rank with 2 workers to step 8 (epochs end every 5 steps):
    the samples trained on equal those of an uninterrupted 1 x 0 run. Two ranks on one node
    take the same path through DDP (``tests/test_ddp.py``)."""
    write_elastic_shards(tmp_path)
    one = elastic_settings(tmp_path, devices=1, workers=0)
    straight = fit(one, 1, 8, tmp_path / "straight", ckpt=None)
    two = elastic_settings(tmp_path, devices=2, workers=2)  # 2 ranks in all
    first = fit_ddp(two, 4, tmp_path / "a", ckpt=None, num_nodes=2)
    rest = fit({**one, "num_workers": 2}, 1, 8, tmp_path / "b", str(tmp_path / "a" / "last.ckpt"))
    assert Counter(first + rest) == Counter(straight)


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1], "spec.json").read_text())
    out = Path(sys.argv[1])
    fit(spec["settings"], spec["devices"], spec["max_steps"], out, spec["ckpt"], spec["num_nodes"])
