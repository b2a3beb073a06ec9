"""bf16 autocast against fp32 on the CPU: training step time, held-out numbers at equal steps,
MFU, and the operators that are slower in bf16.

For each config (default: the text, image and audio ones):

- **step time**: two copies of the model (one initialization), one stepping in fp32 and one
  under bf16 autocast (fp32 weights, optimizer and losses, as ``--trainer.precision
  bf16-mixed``), on the config's training batches, taking turns step by step so that load
  from other work on a shared machine falls on both alike; the median of ``--timed_steps``
  after ``--warmup``. A step is forward, backward and AdamW (not the loader).
- **MFU**: the step's FLOPs (``torch.utils.flop_counter``, forward and backward) over its
  time, divided by this machine's measured ``torch.matmul`` rate in bf16 (2048 x 2048, the
  same threads), the rate autocast's matrix multiplies could reach, and by the fp32 rate.
- **held-out curves**: the same run (seed, data order, masks) trained through a Lightning
  ``Trainer`` in each precision for ``--steps`` steps, validated every ``--val_every`` steps
  on ``--val_batches`` batches (``--steps 0``: timing only).
- **operators** (``--profile_steps N``): ``torch.profiler`` over N more steps of each, in
  turns; the operators by bf16 self time, marked where bf16 is slower than fp32.

    python scripts/bench_precision.py [--configs text_mlm image_mae audio_mae] [--steps 300]
        [--val_every 100] [--val_batches 20] [--timed_steps 10] [--profile_steps 3]
        [--threads 2] [--set KEY=VALUE ...]

A CPU without native bf16 (no AVX512-BF16 or AMX) emulates it: the script says so and
measures anyway (``docs/precision.md``).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass, field

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmm.benchmarking import Runtime, matmul_flops_per_second
from mmm.experiment import (
    CONFIGS,
    QUIET_TRAINER,
    add_overrides_argument,
    build_from_config,
    config_overrides,
)
from mmm.module import MaskedModelingModule
from mmm.precision import cpu_bf16_support

PRECISIONS = ("32-true", "bf16-mixed")


@dataclass
class Run:
    """What one precision measured: step times, FLOPs per step, held-out metrics by step."""

    seconds: list[float] = field(default_factory=list)
    flops: float = 0.0  # per training step
    held_out: dict[int, dict[str, float]] = field(default_factory=dict)
    operators: dict[str, float] = field(default_factory=dict)  # name -> profiled ms per step

    def step_seconds(self) -> float:
        return statistics.median(self.seconds)


class HeldOut(L.Callback):
    """Keeps the held-out metrics of each validation, keyed by the training step."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.run.held_out[trainer.global_step] = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if name.startswith("val/") and name.count("/") == 2
        }


def held_out_curve(config: str, precision: str, args: argparse.Namespace, run: Run) -> None:
    """Train ``config`` for ``args.steps`` steps in ``precision`` through a Lightning
    ``Trainer``, validating every ``args.val_every`` steps on ``args.val_batches`` batches."""
    L.seed_everything(args.seed, verbose=False)
    module, data = build_from_config(CONFIGS / f"{config}.yaml", overrides(args))
    trainer = L.Trainer(
        precision=precision,
        max_steps=args.steps,
        val_check_interval=args.val_every,
        check_val_every_n_epoch=None,
        limit_val_batches=args.val_batches,
        num_sanity_val_steps=0,
        **QUIET_TRAINER,
        callbacks=[HeldOut(run)],
    )
    trainer.fit(module, datamodule=data)


def overrides(args: argparse.Namespace) -> list[str]:
    return ["--data.num_workers=0", f"--seed_everything={args.seed}", *config_overrides(args)]


class Stepper:
    """One precision's copy of the model and its AdamW: a training step on a batch."""

    def __init__(self, module: MaskedModelingModule, precision: str) -> None:
        self.module = module.train()
        self.autocast = Runtime(torch.device("cpu"), precision).autocast
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def __call__(self, batch: dict) -> None:
        with self.autocast():
            loss = self.module.forward_masked(batch).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def flops(self, batch: dict) -> float:
        """FLOPs of a step's forward and backward (``torch.utils.flop_counter``)."""
        with FlopCounterMode(display=False) as counter, self.autocast():
            loss = self.module.forward_masked(batch).loss
        with FlopCounterMode(display=False) as backward:
            loss.backward()
        self.module.zero_grad(set_to_none=True)
        return float(counter.get_total_flops() + backward.get_total_flops())


def time_steps(config: str, args: argparse.Namespace, runs: dict[str, Run]) -> None:
    """Step times of both precisions on the config's first training batches, the precisions
    taking turns step by step (load from other work on a shared machine falls on both alike),
    and with ``--profile`` the profiled operators of a few more steps, also in turns."""
    module, data = build_from_config(CONFIGS / f"{config}.yaml", overrides(args))
    data.setup("fit")
    batches = iter(data.train_dataloader())
    batch = module.modality_batch(next(batches))
    steppers = {precision: Stepper(copy.deepcopy(module), precision) for precision in runs}
    for precision, stepper in steppers.items():
        runs[precision].flops = stepper.flops(batch)
    for index in range(args.warmup + args.timed_steps):
        batch = module.modality_batch(next(batches))
        for precision, stepper in steppers.items():
            start = time.perf_counter()
            stepper(batch)
            if index >= args.warmup:
                runs[precision].seconds.append(time.perf_counter() - start)
    for _ in range(args.profile_steps):
        for precision, stepper in steppers.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                stepper(batch)
            for event in prof.key_averages():
                operators = runs[precision].operators
                milliseconds = event.self_cpu_time_total / 1e3 / args.profile_steps
                operators[event.key] = operators.get(event.key, 0.0) + milliseconds


def report_operators(config: str, runs: dict[str, Run], top: int) -> None:
    """The operators by bf16 self time per step, with fp32's; ``*``: slower in bf16."""
    fp32, bf16 = runs["32-true"].operators, runs["bf16-mixed"].operators
    if not bf16:
        return
    print(f"\n{config}: operators by bf16 self time per step (ms); * slower in bf16")
    print("| operator | fp32 | bf16 | |\n|---|---|---|---|")
    for name in sorted(bf16, key=bf16.get, reverse=True)[:top]:
        slower = "*" if bf16[name] > 1.1 * fp32.get(name, 0.0) else ""
        print(f"| {name} | {fp32.get(name, 0.0):.1f} | {bf16[name]:.1f} | {slower} |")


def report(config: str, runs: dict[str, Run], peaks: dict[str, float]) -> None:
    """Step time, speed-up, MFU and the held-out metrics of both precisions, step by step."""
    fp32, bf16 = runs["32-true"], runs["bf16-mixed"]
    print(f"\n## {config}")
    for precision, run in runs.items():
        seconds = run.step_seconds()
        rate = run.flops / seconds
        print(
            f"{precision:10s} step {seconds * 1000:7.1f} ms (median of {len(run.seconds)}), "
            f"{run.flops / 1e9:.2f} GFLOP/step, {rate / 1e9:.1f} GFLOP/s, "
            f"MFU {rate / peaks['bf16']:.1%} of bf16 matmul ({rate / peaks['fp32']:.1%} of fp32)"
        )
    print(f"bf16 speed-up: {fp32.step_seconds() / bf16.step_seconds():.2f}x")
    names = sorted({name for metrics in fp32.held_out.values() for name in metrics})
    print("| step | " + " | ".join(f"{n} fp32 | {n} bf16" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for step in sorted(fp32.held_out):
        cells = [
            f"{fp32.held_out[step].get(n, float('nan')):.4f} | "
            f"{bf16.held_out.get(step, {}).get(n, float('nan')):.4f}"
            for n in names
        ]
        print(f"| {step} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["text_mlm", "image_mae", "audio_mae"])
    parser.add_argument("--steps", type=int, default=300, help="training steps of each run")
    parser.add_argument("--val_every", type=int, default=100, help="steps between validations")
    parser.add_argument("--val_batches", type=int, default=20, help="batches per validation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--gemm_size", type=int, default=2048, help="matmul side of the peaks")
    parser.add_argument("--timed_steps", type=int, default=10, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--profile_steps", type=int, default=0, help="profiled steps (0: none)")
    parser.add_argument("--profile_top", type=int, default=15, help="operators listed")
    add_overrides_argument(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    support = cpu_bf16_support()
    cpu = Runtime(torch.device("cpu"))
    peaks = {
        "fp32": matmul_flops_per_second(cpu, size=args.gemm_size),
        "bf16": matmul_flops_per_second(Runtime(torch.device("cpu"), "bf16-mixed"), args.gemm_size),
    }
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU capability {support.capability}, native bf16: "
        f"{support.native}; torch.matmul {args.gemm_size}^2: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s ({peaks['bf16'] / peaks['fp32']:.2f}x)"
    )
    for config in args.configs:
        runs = {precision: Run() for precision in PRECISIONS}
        time_steps(config, args, runs)
        if args.steps:
            for precision, run in runs.items():
                held_out_curve(config, precision, args, run)
        report(config, runs, peaks)
        report_operators(config, runs, args.profile_top)


if __name__ == "__main__":
    main()
