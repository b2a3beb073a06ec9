"""What a mid-epoch resume costs: the first batch after resuming against a fresh start.

For a config (default ``configs/text_mlm.yaml``), built exactly as ``mmm fit`` builds it, with
its loader workers:

1. the uninterrupted stream: ``--skip`` training batches are handed out and recorded as the
   trainer records them (``on_before_batch_transfer``), then the next batch is kept;
2. fresh start: a new loader's first batch (worker start-up, shard indexes or shuffle-buffer
   fill, decoding);
3. exact resume: a new loader built from the checkpoint's datamodule state
   (``load_state_dict``; elastic training: the next step, read by sample number; streaming:
   each reader's state), with ``--resume_workers`` loader workers (elastic training resumes
   under any count): its first batch, which must equal batch ``skip + 1`` of the
   uninterrupted stream;
4. the reference, a loader that cannot resume and skips by replaying (Hugging Face
   Accelerate's ``skip_first_batches``, Lightning's default for stateless loaders): the time
   to produce ``skip + 1`` batches.

Medians over ``--repeats``; prints the resume/fresh ratio (target: below 2) and how much faster
resuming is than replaying.

    python scripts/bench_resume.py [--config configs/text_mlm.yaml] [--skip 150] [--repeats 3]
        [--resume_workers 1] [--set data.num_workers=1 ...]

Embedded data and tokenizers are prepared in the working directory on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from datamodules import ShardDataModule
from datamodules.shard_index import tar_index
from mmm.experiment import add_config_arguments, build_from_config, config_overrides

Batch = dict[str, torch.Tensor]


def digest(batch: Batch) -> str:
    """A hash of the model inputs of a batch, keyed by modality or flat (the bookkeeping the
    trainer removes excluded)."""
    hashed = hashlib.blake2b(digest_size=8)
    for name in sorted(batch):
        value = batch[name]
        if isinstance(value, dict):
            hashed.update(digest(value).encode())
        elif not name.startswith("reader_") and name != "skipped":
            hashed.update(value.numpy().tobytes())
    return hashed.hexdigest()


def batches(data: ShardDataModule) -> Iterator[Batch]:
    """Training batches epoch after epoch, each recorded as the trainer would record it."""
    loader = data.train_dataloader()
    while True:
        for batch in loader:
            yield data.on_before_batch_transfer(batch, dataloader_idx=0)


def seconds_to(count: int, start: Callable[[], ShardDataModule]) -> tuple[float, Batch]:
    """Seconds from building a loader to its ``count``-th batch, and that batch (with no
    shard index cached in this process, as in a new one)."""
    tar_index.cache_clear()
    began = time.perf_counter()
    stream = batches(start())
    for _ in range(count - 1):
        next(stream)
    batch = next(stream)
    return time.perf_counter() - began, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, default="text_mlm.yaml")
    parser.add_argument("--skip", type=int, default=150, help="batches trained before the stop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--resume_workers",
        type=int,
        default=None,
        help="loader workers of the resumed loader (default: the config's)",
    )
    args = parser.parse_args()

    _, data = build_from_config(args.config, config_overrides(args))
    data.trainer = None
    stream = batches(data)
    for _ in range(args.skip):
        next(stream)
    state = data.state_dict()
    expected = digest(next(stream))

    workers = data.num_workers
    resume_workers = workers if args.resume_workers is None else args.resume_workers

    def fresh() -> ShardDataModule:
        data.num_workers = workers
        data.load_state_dict({})
        return data

    def resumed() -> ShardDataModule:
        data.num_workers = resume_workers
        data.load_state_dict(state)
        return data

    timings: dict[str, list[float]] = {"fresh": [], "resumed": [], "replay": []}
    for _ in range(args.repeats):
        timings["fresh"].append(seconds_to(1, fresh)[0])
        seconds, first = seconds_to(1, resumed)
        timings["resumed"].append(seconds)
        assert digest(first) == expected, "the resumed stream differs from the uninterrupted one"
        seconds, replayed = seconds_to(args.skip + 1, fresh)
        timings["replay"].append(seconds)
        assert digest(replayed) == expected
    median = {name: statistics.median(values) for name, values in timings.items()}
    print(
        f"{args.config}: train_mode {data.train_mode}, {workers} workers (resumed with "
        f"{resume_workers}), batch {data.batch_size}, resume after {args.skip} batches; first "
        "batch identical to the uninterrupted run: True"
    )
    print(f"  fresh start, first batch        {median['fresh']:7.2f} s")
    print(
        f"  exact resume, first batch       {median['resumed']:7.2f} s "
        f"({median['resumed'] / median['fresh']:.2f}x a fresh start; target < 2x)"
    )
    print(
        f"  replay {args.skip} batches + 1 (reference) {median['replay']:7.2f} s "
        f"({median['replay'] / median['resumed']:.1f}x the exact resume)"
    )


if __name__ == "__main__":
    main()
