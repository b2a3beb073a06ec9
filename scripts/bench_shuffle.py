"""How well training shuffles: the elastic global order against the streaming shuffle buffer.

Writes ``--shards`` synthetic shards of ``--per_shard`` samples in a temporary folder, reads
the first ``--samples`` training samples of one rank with ``--workers`` loader workers under
``train_mode`` elastic and resampled at each ``--shuffle`` size (``shuffle_block``: the
block of the global order, or ``shuffle_buffer``: each reader's buffer), and reports, for the rank's stream in the
order it trains on:

- **neighbours from one shard**: the share of consecutive samples read from the same shard;
  an ideal shuffle gives ``1 / shards``. Beyond chance (kappa): ``(share - 1/n) / (1 - 1/n)``,
  0 for an ideal shuffle and 1 when neighbours always share their shard, the correlation of
  neighbouring samples' source shards;
- **shards per batch**: distinct shards in a batch, against a batch drawn uniformly;
- **samples/s**: how fast the rank reads (sequential streams against reads by sample number).

    python scripts/bench_shuffle.py [--shards 64] [--per_shard 100] [--samples 3200]
        [--batch 32] [--workers 2] [--shuffle 1000 6400]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from datamodules import ShardDataModule
from mmm.data.shards import write_shards
from mmm.tokenizers.base import ContinuousSpec, Tokenizer


class ShardNumbers(Tokenizer):
    """Batches the number of the shard each sample was read from (from ``__url__``)."""

    sample_keys = ("bin",)

    @property
    def spec(self) -> ContinuousSpec:
        return ContinuousSpec(input_dim=1, max_length=1)

    def decode_sample(self, sample: dict[str, Any]) -> int:
        return int(Path(sample["__url__"]).stem.rsplit("-", 1)[-1])

    def collate(self, items: list[int]) -> dict[str, torch.Tensor]:
        shards = torch.tensor(items)[:, None]  # (B, 1)
        ones = torch.ones_like(shards, dtype=torch.bool)
        return {"shard": shards, "attention_mask": ones, "maskable": ones}


def shard_stream(data: ShardDataModule, samples: int) -> tuple[list[list[int]], float]:
    """The shard of each sample of the first ``samples``, by batch, and the seconds taken."""
    batches: list[list[int]] = []
    began = time.perf_counter()
    loader = data.train_dataloader()
    while len(batches) * data.batch_size < samples:
        for batch in loader:
            batches.append(batch["shard"][:, 0].tolist())
            if len(batches) * data.batch_size >= samples:
                break
    return batches, time.perf_counter() - began


def uniform_distinct(shards: int, batch: int) -> float:
    """Expected distinct shards among ``batch`` uniform draws from equal shards."""
    return shards * (1 - (1 - 1 / shards) ** batch)


def report(batches: list[list[int]], shards: int) -> tuple[float, float, float]:
    """(same-shard neighbour share, its kappa, mean distinct shards per batch)."""
    stream = [shard for batch in batches for shard in batch]
    same = sum(a == b for a, b in itertools.pairwise(stream)) / (len(stream) - 1)
    chance = 1 / shards
    distinct = statistics.mean(len(set(batch)) for batch in batches)
    return same, (same - chance) / (1 - chance), distinct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--per_shard", type=int, default=100)
    parser.add_argument("--samples", type=int, default=3200, help="samples read per setting")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shuffle", type=int, nargs="+", default=[1000, 6400])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        total = args.shards * args.per_shard
        samples = ({"__key__": f"s{i:07d}", "bin": bytes(2048)} for i in range(total))
        write_shards(samples, f"{folder}/train-%06d.tar", max_count=args.per_shard)
        print(
            f"{args.shards} shards x {args.per_shard} samples, first {args.samples} samples of "
            f"one rank, batch {args.batch}, {args.workers} workers; an ideal shuffle: "
            f"neighbours from one shard {1 / args.shards:.3f}, "
            f"{uniform_distinct(args.shards, args.batch):.1f} shards per batch"
        )
        print(
            "| train_mode | shuffle_block / shuffle_buffer | neighbours from one shard | kappa "
            "| shards per batch | samples/s |"
        )
        print("|---|---|---|---|---|---|")
        for size in args.shuffle:
            for mode in ("elastic", "resampled"):
                data = ShardDataModule(
                    train_shards=f"{folder}/train-*.tar",
                    batcher=ShardNumbers(),
                    batch_size=args.batch,
                    num_workers=args.workers,
                    train_mode=mode,
                    epoch_samples=total,
                    shuffle_block=size,  # elastic
                    shuffle_buffer=size,  # resampled
                )
                batches, seconds = shard_stream(data, args.samples)
                same, kappa, distinct = report(batches, args.shards)
                rate = len(batches) * args.batch / seconds
                print(
                    f"| {mode} | {size} | {same:.3f} | {kappa:.3f} | {distinct:.1f} | {rate:.0f} |"
                )


if __name__ == "__main__":
    main()
