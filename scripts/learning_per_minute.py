"""Quality bought per minute of training: mmm's recipes (packed documents, masked LM and
ELECTRA) against Hugging Face's ``run_mlm.py`` recipe, each given the same wall-clock budget on
the same cores.

Recipes (``--recipes``):

- ``mlm``: mmm's quickstart (``--config``, ``configs/text_mlm.yaml``): packed documents,
  masked LM;
- ``electra``: ``--electra_config`` (``configs/text_electra.yaml``): the same trunk trained by
  replaced-token detection (``mmm.electra``);
- ``hf``: ``BertForMaskedLM`` on ``group_texts`` blocks with ``DataCollatorForLanguageModeling``,
  sized like mmm's model (width, depth, heads, feed-forward width), with the MLM config's share
  of hidden tokens and optimizer settings (AdamW, lr, betas, weight decay on matrices) instead
  of the Trainer's defaults (lr 5e-5, no warm-up), which barely move a small model in minutes;
- ``untrained``: the MLM config's model at initialization, never trained: the floor of the
  downstream scores.

``--precision bf16-mixed`` trains every recipe under bf16 autocast (a fair anchor gets the
same settings), ``32-true`` in fp32. All train in one process, steps alternating, each charged
only its own step time (its loader included) until it has used ``--budget`` seconds, so that
load from other work hits all alike. ``--clock cpu`` counts the process's CPU seconds instead
of elapsed ones: on a machine shared with other work, where a process gets a fraction of a
core, a CPU-second budget is what the same budget buys on an idle core (run it with
``--threads 1``, since a second thread's seconds count too). The steps a budget buys are
not known in advance, so all follow the same time-based learning-rate schedule: linear warm-up
over the first ``--warmup_share`` of the budget, then a cosine to zero at its end.

Quality, two ways:

1. held-out masked-token accuracy (masked-LM recipes only; ELECTRA keeps no masked-LM head):
   every validation document once, one row each (at most 128 tokens), 15% of its maskable
   tokens replaced by the mask token at positions fixed by a seed, the same for all; the share
   of hidden tokens predicted exactly (argmax), at ``--evaluations`` times over the budget;
2. downstream, at the end of the budget: the docstring-package classification
   (``docstrings-labelled``, test accuracy), by ``FineTuningModule``'s probe mode (frozen
   trunk, mean pooling, normalized linear head, as ``mmm probe`` runs it; ``--probe_steps``)
   and by a short full fine-tune (``--finetune_steps``). Hugging Face's trained weights go through
   the same code: ``save_pretrained``, then ``mmm.export.init_from`` into an mmm module of the
   same (post-LN, BERT) layout, which computes what ``BertForMaskedLM`` computes; so the
   probe and the fine-tune differ only in the pretrained weights.

``--seeds`` repeats everything per seed (model initialization, data order, masks) and reports
the mean and spread.

    python scripts/learning_per_minute.py [--recipes mlm electra hf untrained] [--budget 300]
        [--clock wall|cpu]
        [--seeds 0] [--precision 32-true|bf16-mixed] [--evaluations 3] [--warmup_share 0.1]
        [--finetune_steps 150] [--probe_steps 200] [--threads N] [--set model.encoder.dim=64 ...]

It imports ``scripts/bench_text.py`` (next to it), whose Hugging Face model and pipeline it
reuses; the embedded corpora and tokenizer are prepared in the working directory on first use.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
import webdataset as wds
from bench_text import Sizes, build_hf, forever, hf_batches
from torch import Tensor

from datamodules import embedded_shards
from mmm.experiment import (
    CONFIGS,
    add_config_arguments,
    build_from_config,
    config_overrides,
)
from mmm.export import init_from
from mmm.finetune.probe import labelled_test_accuracy
from mmm.masking import random_mask
from mmm.module import MaskedModelingModule
from mmm.tokenizers.text import TextTokenizer

Batch = dict[str, Tensor]
#: (corrupted ids, attention mask, hidden positions, original ids), each (B, L)
HeldOut = list[tuple[Tensor, Tensor, Tensor, Tensor]]
PRECISIONS = ("32-true", "bf16-mixed")
RECIPES = ("mlm", "electra", "hf", "untrained")
#: What a budget counts: elapsed seconds, or the process's CPU seconds (on a machine shared
#: with other work, where a descheduled step would otherwise be charged its waiting time).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def autocast(precision: str) -> AbstractContextManager:
    """bf16 autocast on the CPU for ``bf16-mixed`` (what Lightning's ``bf16-mixed`` does
    there), nothing for ``32-true``."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


@dataclass
class Recipe:
    """One contender: its batches, loss, optimizer and predictions, and the time it used."""

    name: str
    model: torch.nn.Module
    batches: Iterator[Batch]
    loss: Callable[[Batch], Tensor]
    #: (ids, attention, hidden) -> (N, V) masked-LM logits; ``None``: no masked-LM head
    logits: Callable[[Tensor, Tensor, Tensor], Tensor] | None
    #: the trained weights as an mmm module, for the downstream probe and fine-tune
    backbone: Callable[[], MaskedModelingModule]
    optimizer: torch.optim.Optimizer
    peak_lr: float
    precision: str = "32-true"
    clock: Callable[[], float] = time.perf_counter
    used: float = 0.0
    steps: int = 0
    tokens: int = 0
    scores: dict[str, float] = field(default_factory=dict)

    def train_step(self, budget: float, warmup_share: float) -> None:
        """One step at the learning rate the time used so far calls for; only the step's own
        seconds (batch drawn, forward, backward, update) are charged."""
        start = self.clock()
        progress = min(1.0, self.used / budget)
        warmup = min(1.0, max(progress, 0.01 * warmup_share) / warmup_share)  # step 1: > 0
        for group in self.optimizer.param_groups:
            group["lr"] = self.peak_lr * warmup * 0.5 * (1.0 + math.cos(math.pi * progress))
        batch = next(self.batches)
        with autocast(self.precision):
            loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.used += self.clock() - start
        self.steps += 1
        self.tokens += real_tokens(batch)

    @torch.no_grad()
    def accuracy(self, held_out: HeldOut) -> float | None:
        """Held-out masked-token accuracy, or ``None`` without a masked-LM head."""
        if self.logits is None:
            return None
        self.model.eval()
        correct = total = 0
        for ids, attention, hidden, target in held_out:
            with autocast(self.precision):
                predicted = self.logits(ids, attention, hidden).argmax(dim=-1)  # (N,)
            correct += int((predicted == target[hidden]).sum())
            total += int(hidden.sum())
        self.model.train()
        return correct / total


def real_tokens(batch: dict) -> int:
    """Non-padding tokens of a flat batch (Hugging Face) or one keyed by modality (mmm)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return sum(int(sub["attention_mask"].sum()) for sub in batch.values() if isinstance(sub, dict))


def mmm_recipe(name: str, config: str, overrides: list[str], precision: str) -> Recipe:
    """The config's module and data pipeline (loader in this process), with the optimizer
    groups ``mmm fit`` makes."""
    module, data = build_from_config(config, ["--data.num_workers=0", *overrides])
    module.train()
    logits = None
    if module.electra is None:

        def logits(ids: Tensor, attention: Tensor, hidden: Tensor) -> Tensor:
            states = module({"text": {"input_ids": ids, "attention_mask": attention}})["text"]
            return module.modalities["text"].head(states[hidden])  # (B, L, D) -> (N, V)

    return Recipe(
        name=name,
        model=module,
        batches=forever(data.train_dataloader()),
        loss=lambda batch: module.forward_masked(batch).loss,
        logits=logits,
        backbone=lambda: module,
        optimizer=module.configure_optimizers()["optimizer"],
        peak_lr=module.hparams.lr,
        precision=precision,
    )


def hugging_face(like: Recipe, config: str, overrides: list[str], seed: int) -> Recipe:
    """``BertForMaskedLM`` on ``group_texts`` blocks, with ``like``'s model size, share of
    hidden tokens and optimizer settings; its backbone is its weights in an mmm module built
    from ``config`` with BERT's layout (post-LN, LayerNorm epsilon 1e-12)."""
    module = like.model
    encoder, tokenizer = module.encoder, module.tokenizers["text"]
    block = encoder.blocks[0]
    ratio = module.maskings["text"].ratio
    sizes = Sizes(
        hidden=encoder.dim,
        layers=len(encoder.blocks),
        heads=block.attn.num_heads,
        ffn=block.mlp.fc1.out_features,
        ratio=ratio,
    )
    model = build_hf(sizes)
    settings = like.optimizer.defaults
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": like.optimizer.param_groups[0]["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings["lr"],
        betas=settings["betas"],
    )
    batches, _ = hf_batches(
        tokenizer, sizes.batch, mlm_probability=ratio, length=sizes.length, seed=seed
    )

    def loss(batch: Batch) -> Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        return model(**inputs).loss

    def logits(ids: Tensor, attention: Tensor, hidden: Tensor) -> Tensor:
        return model(input_ids=ids, attention_mask=attention.long()).logits[hidden]  # (N, V)

    def backbone() -> MaskedModelingModule:
        bert_layout = [
            "--model.encoder.init_args.norm_first=false",
            "--model.encoder.init_args.layer_norm_eps=1e-12",
        ]
        built, _ = build_from_config(config, ["--data.num_workers=0", *overrides, *bert_layout])
        with tempfile.TemporaryDirectory() as directory:
            model.save_pretrained(directory)
            return init_from(built, directory)

    return Recipe(
        "hf", model, batches, loss, logits, backbone, optimizer, like.peak_lr, like.precision
    )


def held_out_batches(tokenizer: TextTokenizer, ratio: float = 0.15, seed: int = 0) -> HeldOut:
    """Every validation document once, one row each, 15% of maskable tokens hidden."""
    urls = embedded_shards("python-docs", "val")
    texts = [s["txt"].decode("utf-8") for s in wds.WebDataset(urls, shardshuffle=False)]
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, len(texts), 32):
        batch = tokenizer.collate(texts[start : start + 32])  # one row per text
        hidden = random_mask(batch["maskable"], ratio, generator)  # (B, L)
        ids = batch["input_ids"].masked_fill(hidden, tokenizer.hf.mask_token_id)
        batches.append((ids, batch["attention_mask"], hidden, batch["input_ids"]))
    return batches


def train_and_score(args: argparse.Namespace, seed: int) -> list[Recipe]:
    """One seed of the comparison: the recipes trained side by side, held-out accuracy at
    the evaluation times, the downstream scores at the end."""
    overrides = [*config_overrides(args), f"--seed_everything={seed}"]
    configs = {"mlm": args.config, "electra": args.electra_config}
    torch.manual_seed(seed)
    recipes = [
        mmm_recipe(f"mmm-{name}", configs[name], overrides, args.precision)
        for name in ("mlm", "electra")
        if name in args.recipes
    ]
    if "hf" in args.recipes:
        like = configs[recipes[0].name.removeprefix("mmm-")]
        recipes.append(hugging_face(recipes[0], like, overrides, seed))
    if "untrained" in args.recipes:
        untrained = mmm_recipe("untrained", args.config, overrides, args.precision)
        untrained.used = args.budget  # the reference point: its trunk is never trained
        recipes.append(untrained)
    for recipe in recipes:
        recipe.clock = CLOCKS[args.clock]
    tokenizer = recipes[0].model.tokenizers["text"]
    held_out = held_out_batches(tokenizer)
    times = [args.budget * (k + 1) / args.evaluations for k in range(args.evaluations)]
    marks = {recipe.name: list(times) for recipe in recipes}
    while any(r.used < args.budget for r in recipes):
        for recipe in recipes:
            if recipe.used >= args.budget:
                continue
            recipe.train_step(args.budget, args.warmup_share)
            due = marks[recipe.name]
            if due and (recipe.used >= due[0] or recipe.used >= args.budget):
                due.pop(0)
                report_progress(recipe, held_out)
    for recipe in recipes:
        backbone = recipe.backbone()
        recipe.scores["probe"] = labelled_test_accuracy(
            backbone,
            "docstrings-labelled",
            "probe",
            args.probe_steps,
            args.probe_lr,
            args.precision,
            seed,
        )
        recipe.scores["fine-tune"] = labelled_test_accuracy(
            backbone,
            "docstrings-labelled",
            "full",
            args.finetune_steps,
            args.finetune_lr,
            args.precision,
            seed,
        )
        print(
            f"  {recipe.name:11s} docstring packages: probe {recipe.scores['probe']:.3f}  "
            f"fine-tune ({args.finetune_steps} steps) {recipe.scores['fine-tune']:.3f}",
            flush=True,
        )
    return recipes


def report_progress(recipe: Recipe, held_out: HeldOut) -> None:
    """One evaluation line; its held-out accuracy is kept as the recipe's latest."""
    accuracy = recipe.accuracy(held_out)
    line = (
        f"  {recipe.name:11s} {recipe.used:6.0f} s  {recipe.steps:5d} steps  "
        f"{recipe.tokens:9d} real tokens"
    )
    if accuracy is not None:
        recipe.scores["masked"] = accuracy
        line += f"  held-out masked-token accuracy {accuracy:.3f}"
    print(line, flush=True)


def summary(runs: list[list[Recipe]]) -> list[str]:
    """Per recipe and score, the mean and (with several seeds) the spread over seeds."""
    lines = []
    for name in [recipe.name for recipe in runs[0]]:
        cells = []
        for score in ("masked", "probe", "fine-tune"):
            values = [
                r.scores[score] for run in runs for r in run if r.name == name and score in r.scores
            ]
            if not values:
                cells.append(f"{score} -")
                continue
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{score} {statistics.mean(values):.3f}{spread}")
        steps = statistics.mean(r.steps for run in runs for r in run if r.name == name)
        lines.append(f"  {name:11s} {steps:7.0f} steps  " + "  ".join(cells))
    return lines


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser, default="text_mlm.yaml")
    parser.add_argument(
        "--electra_config", default=str(CONFIGS / "text_electra.yaml"), help="ELECTRA's config"
    )
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=["mlm", "electra", "hf"],
        choices=RECIPES,
        help="untrained: the MLM config's trunk at initialization, the downstream floor",
    )
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds each")
    parser.add_argument(
        "--clock", default="wall", choices=list(CLOCKS), help="what the budget's seconds count"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--precision", default="32-true", choices=PRECISIONS)
    parser.add_argument("--evaluations", type=int, default=3, help="evenly over the budget")
    parser.add_argument("--warmup_share", type=float, default=0.1, help="of the budget")
    parser.add_argument("--finetune_steps", type=int, default=150, help="downstream fine-tune")
    parser.add_argument("--finetune_lr", type=float, default=1e-3)
    parser.add_argument("--probe_steps", type=int, default=200, help="downstream probe")
    parser.add_argument("--probe_lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if "hf" in args.recipes and not {"mlm", "electra"} & set(args.recipes):
        parser.error("--recipes hf is sized like an mmm recipe: name mlm or electra too")
    return args


def main() -> None:
    args = parse_arguments()
    torch.set_num_threads(args.threads)
    print(
        f"{', '.join(args.recipes)}; {args.threads} threads, {args.precision}, budget "
        f"{args.budget:.0f} s ({args.clock} clock) of training each, seeds {args.seeds}"
    )
    runs = []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        runs.append(train_and_score(args, seed))
    print("summary (mean ± std over seeds; masked: held-out [MASK]-only accuracy, 15% hidden)")
    print("\n".join(summary(runs)))


if __name__ == "__main__":
    main()
