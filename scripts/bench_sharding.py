"""Sharded (FSDP2) against replicated (DDP) data-parallel training on 2 CPU ranks: step time
and memory per rank.

For a config (default ``configs/text_mlm.yaml`` at 768 wide, where the model's state is large
enough for sharding to show), built as ``mmm fit`` builds it, each strategy trains ``--steps``
steps after ``--warmup`` on 2 ranks (gloo; Lightning starts the second rank by running this
script again). Each rank records:

- the median step time (forward, backward, gradient reduction, AdamW; loader excluded);
- its model state: the bytes of parameters, gradients and AdamW moments it holds (its shards
  under FSDP, everything under DDP), measured before each optimizer step, the largest kept;
- its peak resident memory (``ru_maxrss``: the interpreter and libraries included, activations
  and communication buffers too).

    python scripts/bench_sharding.py [--config configs/text_mlm.yaml] [--steps 5] [--warmup 2]
        [--strategies ddp fsdp2] [--set model.encoder.dim=768 ...]

Embedded data and tokenizers are prepared in the working directory on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mmm.experiment import QUIET_TRAINER, add_config_arguments, build_from_config, config_overrides

#: The text config's trunk at BERT-base width (4 blocks, so that a CPU step stays seconds).
WIDE = {
    "model.encoder.dim": 768,
    "model.encoder.num_heads": 12,
    "model.encoder.depth": 4,
    "data.batch_size": 16,
    "data.num_workers": 0,
}


def local_bytes(tensor: torch.Tensor | None) -> int:
    """The bytes this rank holds of ``tensor`` (its shard of a sharded ``DTensor``)."""
    if tensor is None:
        return 0
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


class Recorder(L.Callback):
    """Step times (batch start to batch end) and the largest model state before an optimizer
    step; written to ``out/<strategy>-rank<R>.json`` at the end of fitting."""

    def __init__(self, out: Path, strategy: str, warmup: int) -> None:
        self.out, self.strategy, self.warmup = out, strategy, warmup
        self.seconds: list[float] = []
        self.state_bytes = 0
        self.start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.seconds.append(time.perf_counter() - self.start)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = list(pl_module.parameters())
        held = sum(local_bytes(p) + local_bytes(p.grad) for p in params)
        for state in optimizer.state.values():
            held += sum(local_bytes(v) for v in state.values() if isinstance(v, torch.Tensor))
        self.state_bytes = max(self.state_bytes, held)

    def on_fit_end(self, trainer, pl_module) -> None:
        record = {
            "seconds": self.seconds,
            "state_bytes": self.state_bytes,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "parameters": sum(p.numel() for p in pl_module.parameters()),
        }
        path = self.out / f"{self.strategy}-rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))


def overrides(args: argparse.Namespace) -> list[str]:
    """``WIDE``, then the command line's ``--set`` options."""
    return [f"--{key}={value}" for key, value in WIDE.items()] + config_overrides(args)


def train(args: argparse.Namespace) -> None:
    """One strategy's run, on each of its 2 ranks (this process is one of them)."""
    module, data = build_from_config(args.config, overrides(args))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=args.worker,
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **QUIET_TRAINER,
        callbacks=[Recorder(Path(args.out), args.worker, args.warmup)],
    )
    trainer.fit(module, datamodule=data)


def run_strategy(strategy: str, args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Run ``strategy`` in a fresh interpreter (its ranks exit with their process groups);
    returns each rank's record."""
    command = [sys.executable, __file__, "--worker", strategy, "--out", str(out), *sys.argv[1:]]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"bench_sharding: the {strategy} run failed:\n{result.stderr[-3000:]}")
    return [json.loads((out / f"{strategy}-rank{r}.json").read_text()) for r in range(2)]


def report(results: dict[str, list[dict[str, Any]]]) -> None:
    first = next(iter(results.values()))[0]
    print(f"{first['parameters'] / 1e6:.1f}M parameters, 2 CPU ranks (gloo), per rank:")
    print(f"  {'strategy':9s} {'step (median)':>14s} {'model state':>12s} {'peak RSS':>10s}")
    for strategy, ranks in results.items():
        step = statistics.median(s for rank in ranks for s in rank["seconds"])
        state = max(rank["state_bytes"] for rank in ranks) / 2**20
        rss = max(rank["peak_rss_bytes"] for rank in ranks) / 2**20
        print(f"  {strategy:9s} {step:12.2f} s {state:9.0f} MiB {rss:7.0f} MiB")
    if {"ddp", "fsdp2"} <= set(results):
        ratio = max(r["state_bytes"] for r in results["fsdp2"]) / max(
            r["state_bytes"] for r in results["ddp"]
        )
        print(f"model state per rank, fsdp2 / ddp: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser, default="text_mlm.yaml")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per rank")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--strategies", nargs="+", default=["ddp", "fsdp2"])
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a strategy's run, internal
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.worker:
        train(args)
        return
    build_from_config(args.config, overrides(args))  # data and tokenizer, before the ranks
    out = Path("bench_sharding")
    out.mkdir(exist_ok=True)
    report({strategy: run_strategy(strategy, args, out) for strategy in args.strategies})


if __name__ == "__main__":
    main()
