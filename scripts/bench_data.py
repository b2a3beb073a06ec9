"""Data pipeline speed against the training step that consumes it, per config.

For each config (default: ``configs/text_mlm.yaml`` and ``configs/image_mae.yaml`` when it
exists), built exactly as ``mmm fit`` builds it:

1. loader alone: training batches per second with 0, 1 and 2 loader workers (first batch,
   which includes worker start-up, timed apart);
2. step alone: training steps (forward, backward, AdamW) per second on batches held in memory;
3. end to end: training steps fed by the loader with the config's workers, and how much of
   the step-alone rate that keeps (100% = the loader is not the bottleneck). Steps on held
   batches and steps fed by the loader alternate in blocks of 3, so that noise from other
   work on the machine hits both alike.

    python scripts/bench_data.py [--configs configs/text_mlm.yaml ...] [--batches 40] [--steps 15]
        [--workers 0 1 2] [--set data.batch_size=16 ...]

Embedded data and tokenizers are prepared in the working directory on first use.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from datamodules import ShardDataModule
from mmm.experiment import CONFIGS, add_overrides_argument, build_from_config, config_overrides
from mmm.module import MaskedModelingModule

Batch = dict[str, torch.Tensor]


def loader(data: ShardDataModule, workers: int) -> DataLoader:
    """A fresh training loader with ``workers`` workers (no resume state from earlier loaders)."""
    data.num_workers = workers
    data.load_state_dict({})
    return data.train_dataloader()


def forever(batches: DataLoader) -> Iterator[Batch]:
    """Epoch after epoch, as the trainer iterates the loader."""
    while True:
        yield from batches


def timed_batches(batches: Iterator[Batch], count: int) -> tuple[float, float, list[Batch]]:
    """Seconds to the first batch, seconds for the next ``count``, and those batches."""
    start = time.perf_counter()
    first = next(batches)
    started = time.perf_counter()
    kept = [first] + [next(batches) for _ in range(count)]
    return started - start, time.perf_counter() - started, kept


def step_seconds(
    module: MaskedModelingModule, sources: dict[str, Iterator[Batch]], blocks: int, block: int = 3
) -> dict[str, float]:
    """Seconds for ``blocks * block`` training steps fed by each source, in alternating blocks
    of ``block`` steps, after one warm-up step each (allocator, worker start-up)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    module.train()

    def step(batch: Batch) -> None:
        loss = module.forward_masked(batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batches in sources.values():
        step(next(batches))
    seconds = dict.fromkeys(sources, 0.0)
    for _ in range(blocks):
        for name, batches in sources.items():
            start = time.perf_counter()
            for _ in range(block):
                step(next(batches))
            seconds[name] += time.perf_counter() - start
    return seconds


def cycle(batches: list[Batch]) -> Iterator[Batch]:
    while True:
        yield from batches


def trained(data: ShardDataModule, batches: Iterator[Batch]) -> Iterator[Batch]:
    """Batches as the training step gets them (the datamodule's hook removes its bookkeeping)."""
    for batch in batches:
        yield data.on_before_batch_transfer(batch, dataloader_idx=0)


def bench(config: str, overrides: list[str], batches: int, steps: int, workers: list[int]) -> None:
    module, data = build_from_config(config, overrides)
    size = data.batch_size
    print(f"\n{config}: batch {size}, config workers {data.num_workers}")
    configured = data.num_workers
    held: list[Batch] = []
    for count in workers:
        startup, seconds, held = timed_batches(trained(data, forever(loader(data, count))), batches)
        print(
            f"  loader, {count} worker(s): {batches * size / seconds:8.0f} samples/s "
            f"({batches / seconds:6.1f} batches/s; first batch {startup:.1f} s)"
        )
    fed = trained(data, forever(loader(data, configured)))
    blocks = max(1, steps // 3)
    seconds = step_seconds(module, {"alone": cycle(held), "fed": fed}, blocks)
    steps, alone = blocks * 3, seconds["alone"]
    print(
        f"  step alone:            {steps * size / alone:8.1f} samples/s ({steps / alone:.3f} steps/s)"
    )
    print(
        f"  end to end, {configured} worker(s): {steps * size / seconds['fed']:8.1f} samples/s "
        f"({steps / seconds['fed']:.3f} steps/s) = {100 * alone / seconds['fed']:.0f}% of step alone"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = [
        str(c) for c in (CONFIGS / "text_mlm.yaml", CONFIGS / "image_mae.yaml") if c.exists()
    ]
    parser.add_argument("--configs", nargs="+", default=defaults)
    parser.add_argument("--batches", type=int, default=40, help="batches timed per loader")
    parser.add_argument("--steps", type=int, default=15, help="training steps timed")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 1, 2], help="loader workers to time"
    )
    add_overrides_argument(parser)  # applied to every config
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {os.getloadavg()}")
    for config in args.configs:
        bench(config, config_overrides(args), args.batches, args.steps, args.workers)


if __name__ == "__main__":
    main()
