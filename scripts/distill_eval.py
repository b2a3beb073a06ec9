"""Does a half-depth student keep the teacher's quality, and how much faster is it?

1. **teacher**: ``--teacher_config`` (default: the quickstart, 128 wide x 4 blocks) trained
   for ``--teacher_steps``, or a trained one, ``--teacher_checkpoint`` (the quickstart's);
2. **student**: ``--student_config`` (default ``configs/text_distill.yaml``: 2 blocks,
   DistilBERT's losses, started from teacher blocks 0 and 2) distilled from it for
   ``--student_steps``;
3. with ``--baseline``, the student's size trained for as many steps without a teacher
   (from scratch, the plain masked-LM loss): what distillation adds.

Each model is then measured the same way:

- held-out masked-token accuracy, ``[MASK]`` only, 15% hidden (fixed evaluation masks, the
  validation split of the corpus, ``--val_batches`` batches);
- the downstream score: test accuracy of the docstring-package classification
  (``docstrings-labelled``) by ``FineTuningModule``'s probe mode (frozen trunk, mean pooling,
  normalized linear head; ``--probe_steps`` steps), as ``mmm probe`` runs it;
- inference speed: the median time of an eval-mode forward pass (no gradients) over one
  validation batch, the models taking turns (a shared machine's load falls on all alike).

    python scripts/distill_eval.py [--teacher_steps 300 | --teacher_checkpoint CKPT]
        [--student_steps 300] [--baseline] [--seeds 0 1 2]
        [--val_batches 20] [--probe_steps 200] [--speed_runs 10] [--threads N]
        [--set KEY=VALUE ...]   (``--set`` applies to every model)

Models train in the working directory's ``distill_eval/``; the corpus and tokenizer are
prepared there on first use.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from mmm.experiment import (
    CONFIGS,
    QUIET_TRAINER,
    add_overrides_argument,
    build_from_config,
    config_overrides,
)
from mmm.finetune.probe import labelled_test_accuracy
from mmm.inference import load_module
from mmm.masking import RandomMasking
from mmm.module import MaskedModelingModule
from mmm.teacher import apply_teacher

WORK = Path("distill_eval")


@dataclass
class Scores:
    """One model's measurements."""

    name: str
    depth: int
    accuracy: float = float("nan")
    probe: float = float("nan")
    forward_seconds: float = float("nan")


def trainer(steps: int, root: Path, val_batches: int) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        limit_val_batches=val_batches,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        **QUIET_TRAINER,
    )


def train(
    config: Path, overrides: list[str], steps: int, name: str, seed: int, args
) -> MaskedModelingModule:
    """``config`` with ``overrides`` trained for ``steps`` (its teacher attached first when it
    distils); the checkpoint is saved as ``distill_eval/<name>.ckpt``."""
    L.seed_everything(seed, verbose=False)
    module, data = build_from_config(config, [*overrides, *common_overrides(args, seed)])
    apply_teacher(module)  # what mmm fit does before training; nothing without distillation
    fit = trainer(steps, WORK / name, args.val_batches)
    fit.fit(module, datamodule=data)
    fit.save_checkpoint(WORK / f"{name}.ckpt")
    return module.eval()


def common_overrides(args: argparse.Namespace, seed: int) -> list[str]:
    return ["--data.num_workers=0", f"--seed_everything={seed}", *config_overrides(args)]


def held_out_accuracy(module: MaskedModelingModule, config: Path, seed: int, args) -> float:
    """``[MASK]``-only accuracy with 15% of the maskable tokens hidden, on the validation
    split (the config's data, the module's batcher)."""
    scored = copy.deepcopy(module)
    name = scored.modality_named(discrete=True)
    scored.maskings = {**scored.maskings, name: RandomMasking(ratio=0.15)}
    scored.evaluation_mask_only = True
    _, data = build_from_config(config, common_overrides(args, seed))
    metrics = trainer(1, WORK / "validate", args.val_batches).validate(
        scored, datamodule=data, verbose=False
    )[0]
    return float(metrics[f"val/{name}/masked_accuracy"])


def forward_times(models: dict[str, MaskedModelingModule], batch: dict, runs: int) -> dict:
    """Median eval-mode forward time of each model on ``batch``, the models taking turns."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for index in range(runs + 1):
            for name, module in models.items():
                start = time.perf_counter()
                module(batch)
                if index:  # the first pass warms up
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    args = parse_arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    WORK.mkdir(exist_ok=True)
    teacher_config = Path(args.teacher_config)
    if args.teacher_checkpoint:
        teacher_path = Path(args.teacher_checkpoint).resolve()
        teacher = load_module(str(teacher_path))
    else:
        teacher = train(teacher_config, [], args.teacher_steps, "teacher", args.seeds[0], args)
        teacher_path = (WORK / "teacher.ckpt").resolve()
    runs = [score_seed(teacher, teacher_path, seed, args) for seed in args.seeds]
    taught = (
        f"loaded from {teacher_path}" if args.teacher_checkpoint else f"{args.teacher_steps} steps"
    )
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {torch.get_num_threads()} "
        f"threads; teacher {taught}, student {args.student_steps} steps, seeds {args.seeds} "
        "(mean ± std over seeds)"
    )
    print("\n".join(table(runs)))


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher_config", default=str(CONFIGS / "text_mlm.yaml"))
    parser.add_argument(
        "--teacher_checkpoint",
        help="a trained teacher (e.g. the quickstart's checkpoint) instead of training one",
    )
    parser.add_argument("--student_config", default=str(CONFIGS / "text_distill.yaml"))
    parser.add_argument("--teacher_steps", type=int, default=300)
    parser.add_argument("--student_steps", type=int, default=300)
    parser.add_argument("--baseline", action="store_true", help="also train without a teacher")
    parser.add_argument("--val_batches", type=int, default=20, help="held-out batches")
    parser.add_argument("--probe_steps", type=int, default=200, help="docstring probe steps")
    parser.add_argument("--speed_runs", type=int, default=10, help="timed forward passes")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="students, baselines and probes per seed; one teacher (trained with the first)",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    add_overrides_argument(parser)
    return parser.parse_args()


def score_seed(
    teacher: MaskedModelingModule, teacher_path: Path, seed: int, args: argparse.Namespace
) -> list[Scores]:
    """The teacher, a student distilled from it and (``--baseline``) the student's size
    trained without it, all measured with ``seed``; the teacher first."""
    student_config, teacher_config = Path(args.student_config), Path(args.teacher_config)
    models = {"teacher": teacher}
    distil = [f"--model.distillation.teacher={teacher_path}"]
    models["student"] = train(
        student_config, distil, args.student_steps, f"student-{seed}", seed, args
    )
    if args.baseline:
        # The student's size and masking, trained from scratch on the true tokens alone.
        plain = [f"--model.encoder.init_args.depth={len(models['student'].encoder.blocks)}"]
        models["baseline"] = train(
            teacher_config, plain, args.student_steps, f"baseline-{seed}", seed, args
        )
    _, data = build_from_config(teacher_config, common_overrides(args, seed))
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    seconds = forward_times(models, batch, args.speed_runs)
    rows = []
    for name, module in models.items():
        score = Scores(name, len(module.encoder.blocks), forward_seconds=seconds[name])
        score.accuracy = held_out_accuracy(module, teacher_config, seed, args)
        score.probe = labelled_test_accuracy(
            module, "docstrings-labelled", "probe", args.probe_steps, seed=seed
        )
        rows.append(score)
    return rows


def table(runs: list[list[Scores]]) -> list[str]:
    """A markdown row per model (the teacher first in every run): each measurement's mean
    (± std with several seeds), and its share of the teacher's."""
    lines = [
        "| model | depth | [MASK]-only acc (15%) | vs teacher | docstring probe | vs teacher "
        "| forward ms | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_model = list(zip(*runs, strict=True))  # per model, its rows over the seeds
    teacher = means(by_model[0])
    for rows in by_model:
        accuracy, probe, seconds = means(rows)
        lines.append(
            f"| {rows[0].name} | {rows[0].depth} | "
            f"{spread([row.accuracy for row in rows], 4)} | {share(accuracy, teacher[0])} | "
            f"{spread([row.probe for row in rows], 3)} | {share(probe, teacher[1])} | "
            f"{seconds * 1e3:.1f} | {teacher[2] / seconds:.2f}x |"
        )
    return lines


def means(rows: tuple[Scores, ...]) -> tuple[float, float, float]:
    """Mean held-out accuracy, probe score and forward seconds of one model over seeds."""
    return (
        statistics.mean(row.accuracy for row in rows),
        statistics.mean(row.probe for row in rows),
        statistics.mean(row.forward_seconds for row in rows),
    )


def spread(values: list[float], digits: int) -> str:
    """The mean, with the standard deviation when there are several values."""
    mean = f"{statistics.mean(values):.{digits}f}"
    return f"{mean} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else mean


def share(value: float, reference: float) -> str:
    """``value`` as a share of ``reference`` (a teacher that scores 0 has no share)."""
    return f"{value / reference:.1%}" if reference > 0 else "n/a"


if __name__ == "__main__":
    main()
