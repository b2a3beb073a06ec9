"""What pretraining buys where labels are few (issue 20): one modality's table of test scores,
fine-tuned from a same-domain pretrained encoder vs from scratch vs LoRA vs a linear probe, at
several label budgets, each cell the mean ± std over seeds.

    python scripts/label_efficiency.py --modality image --budgets 0.1 --seeds 0 1 2 \\
        --pretrain-steps 400 --finetune-steps 200 --lrs 1e-3 3e-3 --out image.json --markdown

Step 1 pretrains the modality's pretraining config (``configs/image_mae.yaml``, ...) without
labels on the same domain: the labelled corpus's own training shards (whose ``label.json`` the
pretraining tokenizers never read), or, for SMILES and text, the modality's embedded
pretraining corpus, which is the same domain and bigger (``MODALITIES`` says which).
``--pretrain-extra CORPUS ...`` mixes more embedded corpora of the domain into it (equal shares
per source; e.g. ``pyhmmer-proteins`` next to the AMP peptides), ``--mask-ratio`` sets its
masking ratio, and ``--checkpoint`` skips it. Step 2 fine-tunes every budget x seed x method x learning rate from
that checkpoint with the modality's fine-tuning config (``configs/finetune/*.yaml``): the
architecture is always the checkpoint's, so ``scratch`` is the same network with random
weights, trained for the same steps with the same learning rates. Each run keeps its best
checkpoint by the config's monitored validation metric; per seed and method the learning rate
with the best validation score is kept, and its test score is reported. ``--layer-decay``
overrides the fine-tuning config's layer-wise learning-rate decay (a recipe knob, so it is part
of each run's key, as are the steps and the learning rate).

Runs are appended to ``--out`` as they finish, and a rerun with the same ``--out`` reuses the
runs (and the checkpoint) already there, so a long grid can be stopped and resumed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from datamodules.webdataset import ShardDataModule, prepare_embedded
from mmm.cli import run
from mmm.data.labelled import split_pattern
from mmm.experiment import CONFIGS

METHODS = ("pretrained", "scratch", "lora", "probe")


@dataclass(frozen=True)
class Modality:
    """One row of the issue: its labelled corpus, configs and reported metric."""

    corpus: str
    """the labelled embedded corpus (``*-labelled``)"""
    pretrain_config: str
    """the pretraining config in ``configs/``"""
    finetune_config: str
    """the fine-tuning config in ``configs/finetune/``"""
    metric: str
    """the test metric reported (``test/<metric>``)"""
    higher_is_better: bool
    monitor: str
    """the validation metric that picks checkpoints and learning rates (the config's)"""
    pretrain_corpus: str | None = None
    """an embedded pretraining corpus of the same domain to use instead of the labelled
    corpus's training shards (``None``: those shards)"""
    pretrain_settings: dict[str, object] = field(default_factory=dict)
    """pretraining config settings that fit the labelled data (image size, clip length)"""


MODALITIES: dict[str, Modality] = {
    # The digits are 8x8 grey: patches of 2 give the MAE 16 patches to hide 75% of; no flips
    # (a flipped digit is another glyph) and no crops of an already tiny image.
    "image": Modality(
        corpus="digits-labelled",
        pretrain_config="image_mae.yaml",
        finetune_config="digits.yaml",
        metric="accuracy",
        higher_is_better=True,
        monitor="val/accuracy",
        pretrain_settings={
            "model.tokenizer.init_args.image_size": 8,
            "model.tokenizer.init_args.patch_size": 2,
            "model.tokenizer.init_args.channels": 1,
            "model.tokenizer.init_args.random_crop_scale": "null",
            "model.tokenizer.init_args.horizontal_flip": "false",
            "model.decoder.dim": 64,
            "model.decoder.num_heads": 2,
            "data.shuffle_buffer": 1000,
        },
    ),
    # AMP-vs-UniProt peptides, both classes, without labels: the same domain as the task.
    "protein": Modality(
        corpus="amp-labelled",
        pretrain_config="protein_mlm.yaml",
        finetune_config="amp.yaml",
        metric="accuracy",
        higher_is_better=True,
        monitor="val/auroc",
    ),
    # FreeSolv has 521 training molecules: NCI/WEHI's drug-like molecules are the same domain
    # and bigger (and the vocabulary of both configs is built from them).
    "smiles": Modality(
        corpus="freesolv-labelled",
        pretrain_config="smiles_mlm.yaml",
        finetune_config="freesolv.yaml",
        metric="rmse",
        higher_is_better=False,
        monitor="val/rmse",
        pretrain_corpus="smiles-nci-wehi",
    ),
    # Standard-library docstrings: the Python documentation corpus is the same domain, bigger,
    # and the one the WordPiece vocabulary of both configs is trained on.
    "text": Modality(
        corpus="docstrings-labelled",
        pretrain_config="text_mlm.yaml",
        finetune_config="docstrings.yaml",
        metric="accuracy",
        higher_is_better=True,
        monitor="val/accuracy",
        pretrain_corpus="python-docs",
    ),
    # FSDD's training speakers' clips, 1 s (the digits are shorter), as the fine-tuning config.
    "audio": Modality(
        corpus="fsdd-labelled",
        pretrain_config="audio_mae.yaml",
        finetune_config="fsdd.yaml",
        metric="accuracy",
        higher_is_better=True,
        monitor="val/accuracy",
        pretrain_settings={
            "model.tokenizer.init_args.duration": 1.0,
            "model.tokenizer.init_args.crop": "center",
        },
    ),
}
#: The corpus names accepted for ``--modality`` too.
BY_CORPUS = {modality.corpus: name for name, modality in MODALITIES.items()}


@dataclass(frozen=True)
class RunKey:
    """What identifies one fine-tuning run (a rerun with the same key is reused)."""

    budget: float
    seed: int
    method: str
    lr: float
    steps: int
    layer_decay: float | None = None
    """``None``: the fine-tuning config's (0.75 in every shipped one)"""


def run_key(entry: dict) -> RunKey:
    """The key of a run recorded in ``--out`` (runs recorded before ``layer_decay`` was a
    key used the config's: ``None``)."""
    return RunKey(**{k: entry[k] for k in RunKey.__dataclass_fields__ if k in entry})


def options(settings: dict[str, object]) -> list[str]:
    """``--key=value`` command-line options of ``settings``."""
    return [f"--{key}={value}" for key, value in settings.items()]


def prepare_corpus(modality: Modality, data_dir: Path, fsdd: str | None) -> Path:
    """The labelled corpus's folder, written on first use (FSDD from ``fsdd``)."""
    ShardDataModule(
        embedded=modality.corpus, data_dir=str(data_dir), source_dir=fsdd
    ).prepare_data()
    return data_dir / modality.corpus


def pretrain(modality: Modality, corpus: Path, args: argparse.Namespace, root: Path) -> Path:
    """Step 1: ``mmm fit`` of the pretraining config without labels; its last checkpoint."""
    settings = {
        **modality.pretrain_settings,
        **sizes(args),
        **pretrain_data(modality, corpus, args.pretrain_extra, Path(args.data_dir)),
        "data.data_dir": args.data_dir,
        "data.num_workers": args.workers,
        "seed_everything": 0,
        "trainer.max_steps": args.pretrain_steps,
        "trainer.val_check_interval": args.pretrain_steps,
        "trainer.limit_val_batches": 4,
        "trainer.default_root_dir": root / "pretrain",
        "trainer.enable_progress_bar": "false",
        "trainer.logger": "false",
        "trainer.enable_model_summary": "false",
        "trainer.callbacks": "[]",
    }
    if args.mask_ratio is not None:
        settings["model.masking.init_args.ratio"] = args.mask_ratio
    started = time.perf_counter()
    cli = run(["fit", f"--config={CONFIGS / modality.pretrain_config}", *options(settings)])
    path = root / "pretrain" / "pretrained.ckpt"
    cli.trainer.save_checkpoint(path, weights_only=True)
    val = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    print(f"pretrained {args.pretrain_steps} steps in {time.perf_counter() - started:.0f} s: {val}")
    return path


def pretrain_data(
    modality: Modality, corpus: Path, extra: list[str], data_dir: Path
) -> dict[str, object]:
    """The data settings of step 1: the modality's pretraining corpus, or the labelled
    corpus's training shards, with the training shards of each ``extra`` embedded corpus
    mixed in (equal shares per source: ``ShardDataModule``'s ``train_weights`` default).
    Validation reads the first source's validation split only, so the held-out pretraining
    figures stay comparable between recipes with and without extra data."""
    if modality.pretrain_corpus is None:
        train, val = [split_pattern(corpus, "train")], split_pattern(corpus, "val")
    else:
        first = prepare_embedded(modality.pretrain_corpus, data_dir)
        train, val = [split_pattern(first, "train")], split_pattern(first, "val")
    train += [split_pattern(prepare_embedded(name, data_dir), "train") for name in extra]
    # JSON lists: the patterns' brackets would end a YAML flow list written bare
    return {
        "data.embedded": "null",
        "data.train_shards": json.dumps(train) if len(train) > 1 else train[0],
        "data.val_shards": val,
    }


def sizes(args: argparse.Namespace) -> dict[str, object]:
    """The encoder size options that were given (the config's size otherwise)."""
    given = {"dim": args.dim, "depth": args.depth, "num_heads": args.heads}
    settings = {f"model.encoder.init_args.{k}": v for k, v in given.items() if v is not None}
    if args.batch_size is not None:
        settings["data.batch_size"] = args.batch_size
    return settings


def finetune(
    modality: Modality,
    key: RunKey,
    checkpoint: Path,
    args: argparse.Namespace,
    root: Path,
    fsdd: str | None,
) -> dict[str, object]:
    """Step 2, one cell of one seed: fine-tune, keep the best validation checkpoint, test it."""
    mode = {"pretrained": "full", "scratch": "full"}.get(key.method, key.method)
    decay = "" if key.layer_decay is None else f"-ld{key.layer_decay:g}"
    folder = root / f"b{key.budget}-s{key.seed}-{key.method}-lr{key.lr:g}{decay}"
    settings = {
        "model.checkpoint": checkpoint,
        "model.from_scratch": str(key.method == "scratch").lower(),
        "model.mode": mode,
        "model.lr": key.lr,
        "data.label_fraction": key.budget,
        "data.data_dir": args.data_dir,
        "data.num_workers": args.workers,
        "seed_everything": key.seed,
        "trainer.max_steps": key.steps,
        "trainer.val_check_interval": args.val_every,
        "trainer.default_root_dir": folder,
        "trainer.enable_progress_bar": "false",
        "trainer.logger": "false",
        "trainer.enable_model_summary": "false",
    }
    if key.layer_decay is not None:
        settings["model.layer_decay"] = key.layer_decay
    if args.batch_size is not None:
        settings["data.batch_size"] = args.batch_size
    if fsdd is not None:
        settings["data.source_dir"] = fsdd
    started = time.perf_counter()
    config = CONFIGS / "finetune" / modality.finetune_config
    cli = run(["finetune", "fit", f"--config={config}", *options(settings)])
    best = cli.trainer.checkpoint_callback
    [scores] = cli.trainer.test(
        cli.model,
        datamodule=cli.datamodule,
        ckpt_path=best.best_model_path,
        weights_only=True,
        verbose=False,
    )
    for path in folder.rglob("*.ckpt"):
        path.unlink()  # a grid of checkpoints is gigabytes; the scores are what is kept
    return {
        **asdict(key),
        "val": float(best.best_model_score),
        "best_step": best.best_model_path.rsplit("step=", 1)[-1].removesuffix(".ckpt"),
        "test": {name: float(value) for name, value in scores.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def chosen(runs: list[dict], modality: Modality) -> dict[tuple[float, str], list[float]]:
    """Per budget and method, the test score of each seed at its best validation lr."""
    best: dict[tuple[float, str, int], dict] = {}
    for entry in runs:
        cell = (entry["budget"], entry["method"], entry["seed"])
        sign = 1 if modality.higher_is_better else -1
        if cell not in best or sign * entry["val"] > sign * best[cell]["val"]:
            best[cell] = entry
    table: dict[tuple[float, str], list[float]] = {}
    for (budget, method, _), entry in sorted(best.items()):
        table.setdefault((budget, method), []).append(entry["test"][f"test/{modality.metric}"])
    return table


def summary(scores: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one seed)."""
    return statistics.fmean(scores), statistics.stdev(scores) if len(scores) > 1 else 0.0


def cell(scores: list[float] | None) -> str:
    if not scores:
        return "-"
    mean, std = summary(scores)
    return f"{mean:.3f} ± {std:.3f} (n={len(scores)})"


def verdicts(table: dict[tuple[float, str], list[float]], modality: Modality) -> list[str]:
    """The issue's goal per budget: pretrained beats scratch by more than 2 std (the larger
    of the two cells' standard deviations) and beats the probe."""
    lines = []
    sign = 1 if modality.higher_is_better else -1
    for budget in sorted({budget for budget, _ in table}):
        pre, scratch = table.get((budget, "pretrained")), table.get((budget, "scratch"))
        if not pre or not scratch:
            continue
        (pm, ps), (sm, ss) = summary(pre), summary(scratch)
        gap, bar = sign * (pm - sm), 2 * max(ps, ss)
        line = f"budget {budget:g}: pretrained - scratch = {gap:+.3f} ({modality.metric}, "
        line += f"better is +), 2 std = {bar:.3f}: {'beats' if gap > bar else 'does not beat'}"
        probe = table.get((budget, "probe"))
        if probe:
            beats = sign * (pm - summary(probe)[0]) > 0
            line += f"; vs probe {'beats' if beats else 'does not beat'}"
        lines.append(line)
    return lines


def render(
    table: dict[tuple[float, str], list[float]], methods: list[str], name: str, markdown: bool
) -> str:
    """The table, budgets as rows and methods as columns: Markdown, or aligned text."""
    rows = [[f"{name}: label budget", *methods]]
    for budget in sorted({budget for budget, _ in table}):
        rows.append([f"{budget:.0%}", *(cell(table.get((budget, m))) for m in methods)])
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join([lines[0], "|---" * len(rows[0]) + "|", *lines[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def load_results(path: Path, name: str) -> dict:
    """The results already in ``path`` for this modality, or a fresh record."""
    if path.exists():
        results = json.loads(path.read_text())
        if results.get("modality") == name:
            return results
    return {"modality": name, "runs": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modality", required=True, choices=[*MODALITIES, *BY_CORPUS])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--finetune-steps", type=int, default=200)
    parser.add_argument("--val-every", type=int, default=50, help="fine-tuning steps")
    parser.add_argument(
        "--lrs", type=float, nargs="+", default=[1e-3, 3e-3], help="the lr search, every method"
    )
    parser.add_argument(
        "--layer-decay",
        type=float,
        help="fine-tuning layer-wise lr decay, every full run (default: the config's, 0.75)",
    )
    parser.add_argument(
        "--mask-ratio", type=float, help="pretraining masking ratio (default: the config's)"
    )
    parser.add_argument(
        "--pretrain-extra",
        nargs="+",
        default=[],
        metavar="CORPUS",
        help="embedded corpora whose training shards are mixed into pretraining "
        "(e.g. pyhmmer-proteins for protein), equal shares per source",
    )
    parser.add_argument("--dim", type=int, help="encoder width (default: the config's)")
    parser.add_argument("--depth", type=int, help="encoder blocks (default: the config's)")
    parser.add_argument("--heads", type=int, help="attention heads (default: the config's)")
    parser.add_argument("--batch-size", type=int, help="default: the configs'")
    parser.add_argument("--checkpoint", help="a pretraining checkpoint: skip step 1")
    parser.add_argument("--fsdd", help="the Free Spoken Digit Dataset folder (audio)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--workdir", default="artifacts/label_efficiency")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="label_efficiency.json")
    parser.add_argument("--markdown", action="store_true", help="print the docs table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name = BY_CORPUS.get(args.modality, args.modality)
    modality = MODALITIES[name]
    if name == "audio" and args.fsdd is None:
        parser.error("--modality audio needs --fsdd DIR (the folder holding recordings/)")
    if name != "audio" and args.fsdd is not None:
        parser.error(f"--fsdd is for --modality audio, not {name}")
    root = Path(args.workdir) / name
    out = Path(args.out)
    results = load_results(out, name)
    corpus = prepare_corpus(modality, Path(args.data_dir), args.fsdd)
    checkpoint = args.checkpoint or results.get("checkpoint")
    if checkpoint is None or not Path(checkpoint).exists():
        checkpoint = pretrain(modality, corpus, args, root)
        results["pretrain"] = {
            "config": modality.pretrain_config,
            "data": modality.pretrain_corpus or f"{corpus}/train-[0-9]*.tar (labels unread)",
            "extra": args.pretrain_extra,
            "mask_ratio": args.mask_ratio,
            "steps": args.pretrain_steps,
            "sizes": {k: str(v) for k, v in sizes(args).items()},
        }
    results["checkpoint"] = str(checkpoint)
    results["machine"] = f"{platform.node()} {platform.processor()} threads={args.threads}"
    done = {run_key(entry) for entry in results["runs"]}
    for budget in args.budgets:
        for seed in args.seeds:
            for method in args.methods:
                for lr in args.lrs:
                    key = RunKey(budget, seed, method, lr, args.finetune_steps, args.layer_decay)
                    if key in done:
                        continue
                    entry = finetune(modality, key, Path(checkpoint), args, root, args.fsdd)
                    print(f"run {entry}")
                    results["runs"].append(entry)
                    results["date"] = datetime.now(timezone.utc).isoformat(timespec="minutes")
                    out.write_text(json.dumps(results, indent=1))
    wanted = [
        entry
        for entry in results["runs"]
        if entry["steps"] == args.finetune_steps
        and entry.get("layer_decay") == args.layer_decay
        and entry["lr"] in args.lrs
        and entry["budget"] in args.budgets
        and entry["method"] in args.methods
    ]
    table = chosen(wanted, modality)
    title = f"{name} ({modality.corpus}), test {modality.metric}"
    print(render(table, args.methods, title, markdown=args.markdown))
    for line in verdicts(table, modality):
        print(line)
    print(f"label efficiency written to {out}")


if __name__ == "__main__":
    main()
