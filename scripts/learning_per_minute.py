"""Held-out masked-token accuracy after an equal wall-clock training budget: mmm's quickstart
recipe (``configs/text_mlm.yaml``) against Hugging Face's ``run_mlm.py`` recipe, same text.

Both train in one process, steps alternating, each charged only its own step time (its loader
included) until it has used ``--budget`` seconds, so that load from other work hits both
alike. The number of steps a budget buys is not known in advance (on a busy machine it is a
fraction of what idle cores give), so both follow the same time-based learning-rate schedule:
linear warm-up over the first ``--warmup_share`` of the budget, then a cosine to zero at its
end. Hugging Face gets the config's model size (width, depth, heads, feed-forward width),
share of hidden tokens (``mlm_probability``) and optimizer settings (AdamW, lr, betas, weight
decay on matrices) instead of the Trainer's defaults (lr 5e-5, no warm-up), which barely move
a small model in 5 minutes: what differs is the pipeline
(``group_texts`` blocks + ``DataCollatorForLanguageModeling`` vs packed documents) and the
model code. Held out: every validation document once, one row each (at most 128 tokens), 15%
of its maskable tokens replaced by the mask token at positions fixed by a seed, the same for
both; accuracy is the share of hidden tokens predicted exactly (argmax).

    python scripts/learning_per_minute.py [--config configs/text_mlm.yaml] [--budget 300]
        [--evaluations 3] [--warmup_share 0.1] [--threads N] [--set model.encoder.dim=64 ...]

It imports ``scripts/bench_text.py`` (next to it), whose Hugging Face model and pipeline it
reuses; the embedded corpus and tokenizer are prepared in the working directory on first use.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import webdataset as wds
from bench_text import Sizes, build_hf, forever, hf_batches
from torch import Tensor

from datamodules import embedded_shards
from mmm.experiment import add_config_arguments, build_from_config, config_overrides
from mmm.masking import random_mask
from mmm.tokenizers.text import TextTokenizer

Batch = dict[str, Tensor]
#: (corrupted ids, attention mask, hidden positions, original ids), each (B, L)
HeldOut = list[tuple[Tensor, Tensor, Tensor, Tensor]]


@dataclass
class Recipe:
    """One contender: its batches, loss, optimizer and predictions, and the time it used."""

    name: str
    model: torch.nn.Module
    batches: Iterator[Batch]
    loss: Callable[[Batch], Tensor]
    logits: Callable[[Tensor, Tensor, Tensor], Tensor]  # (ids, attention, hidden) -> (N, V)
    optimizer: torch.optim.Optimizer
    peak_lr: float
    used: float = 0.0
    steps: int = 0
    tokens: int = 0

    def train_step(self, budget: float, warmup_share: float) -> None:
        """One step at the learning rate the time used so far calls for; only the step's own
        seconds (batch drawn, forward, backward, update) are charged."""
        start = time.perf_counter()
        progress = min(1.0, self.used / budget)
        warmup = min(1.0, max(progress, 0.01 * warmup_share) / warmup_share)  # step 1: > 0
        for group in self.optimizer.param_groups:
            group["lr"] = self.peak_lr * warmup * 0.5 * (1.0 + math.cos(math.pi * progress))
        batch = next(self.batches)
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.used += time.perf_counter() - start
        self.steps += 1
        self.tokens += real_tokens(batch)

    @torch.no_grad()
    def accuracy(self, held_out: HeldOut) -> float:
        self.model.eval()
        correct = total = 0
        for ids, attention, hidden, target in held_out:
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


def quickstart(config: str, overrides: list[str]) -> Recipe:
    """The config's module and data pipeline (loader in this process), with the optimizer
    groups ``mmm fit`` makes."""
    module, data = build_from_config(config, ["--data.num_workers=0", *overrides])
    module.train()

    def logits(ids: Tensor, attention: Tensor, hidden: Tensor) -> Tensor:
        states = module({"text": {"input_ids": ids, "attention_mask": attention}})["text"]
        return module.modalities["text"].head(states[hidden])  # (B, L, D) -> (N, V)

    return Recipe(
        name="mmm",
        model=module,
        batches=forever(data.train_dataloader()),
        loss=lambda batch: module.forward_masked(batch).loss,
        logits=logits,
        optimizer=module.configure_optimizers()["optimizer"],
        peak_lr=module.hparams.lr,
    )


def hugging_face(tokenizer: TextTokenizer, like: Recipe) -> Recipe:
    """``BertForMaskedLM`` on ``group_texts`` blocks, with ``like``'s model size, share of
    hidden tokens and optimizer settings."""
    encoder = like.model.encoder
    block = encoder.blocks[0]
    ratio = like.model.maskings["text"].ratio
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
    batches, _ = hf_batches(tokenizer, sizes.batch, mlm_probability=ratio)

    def loss(batch: Batch) -> Tensor:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        return model(**inputs).loss

    def logits(ids: Tensor, attention: Tensor, hidden: Tensor) -> Tensor:
        return model(input_ids=ids, attention_mask=attention.long()).logits[hidden]  # (N, V)

    return Recipe("hf", model, batches, loss, logits, optimizer, like.peak_lr)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser, default="text_mlm.yaml")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds each")
    parser.add_argument("--evaluations", type=int, default=3, help="evenly over the budget")
    parser.add_argument("--warmup_share", type=float, default=0.1, help="of the budget")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mmm = quickstart(args.config, config_overrides(args))
    tokenizer = mmm.model.tokenizers["text"]
    torch.manual_seed(0)
    recipes = [mmm, hugging_face(tokenizer, mmm)]
    held_out = held_out_batches(tokenizer)
    times = [args.budget * (k + 1) / args.evaluations for k in range(args.evaluations)]
    marks = {recipe.name: list(times) for recipe in recipes}
    print(f"{args.config}, {args.threads} threads, budget {args.budget:.0f} s of training each")
    while any(r.used < args.budget for r in recipes):
        for recipe in recipes:
            if recipe.used >= args.budget:
                continue
            recipe.train_step(args.budget, args.warmup_share)
            due = marks[recipe.name]
            if due and (recipe.used >= due[0] or recipe.used >= args.budget):
                due.pop(0)
                print(
                    f"  {recipe.name:4s} {recipe.used:6.0f} s  {recipe.steps:5d} steps  "
                    f"{recipe.tokens:9d} real tokens  held-out masked-token accuracy "
                    f"{recipe.accuracy(held_out):.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
