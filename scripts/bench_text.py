"""Training speed of mmm's text model against Hugging Face ``BertForMaskedLM``.

Same size for both (hidden 256, 4 layers, 4 heads, FFN 1024, vocab 8192, sequence 128,
batch 32, 15% masking, fp32, AdamW), in one process, steps alternating between the models so
that machine noise hits all alike. Two comparisons:

1. ``synthetic``: one ready-made batch without padding, the same hidden positions for both:
   the training step alone.
2. ``real``: each fed by its own real pipeline from the embedded corpus (python-docs), loader
   time included in every step: mmm's ``ShardDataModule`` + ``TextTokenizer`` as the
   quickstart config builds it (packed rows), mmm without packing (one padded row per
   document, as before packing), and Hugging Face's ``run_mlm.py`` recipe (the training split
   tokenized and cut into full blocks by ``group_texts`` once up front, then
   ``DataCollatorForLanguageModeling`` per batch). Prints real (non-padding) tokens per
   second, their ratio, and the model FLOP/s each reaches as a share of this machine's
   measured fp32 matrix-multiply rate (MFU).

    python scripts/bench_text.py [--mode synthetic|real|both] [--steps 10] [--warmup 3]
        [--threads N] [--docs 48] [--attention document|across]

Run it from the repository root; the embedded corpus and tokenizer are prepared on first use.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, repeat

import torch
import webdataset as wds
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

from datamodules import ShardDataModule
from mmm.masking import corrupt_tokens, random_mask
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import DiscreteSpec, DiscreteTokenizer, Tokenizer, copy_with
from mmm.tokenizers.text import TextTokenizer

HIDDEN, LAYERS, HEADS, FFN, VOCAB, LENGTH, BATCH, RATIO = 256, 4, 4, 1024, 8192, 128, 32, 0.15
TOKENIZER = "artifacts/tokenizers/python-docs-wordpiece-8k"  # the quickstart's

Batch = dict[str, torch.Tensor]


class SyntheticTokenizer(DiscreteTokenizer):
    """Only a spec: the synthetic comparison feeds ready-made batches, so no text is tokenized."""

    spec = DiscreteSpec(vocab_size=VOCAB, pad_token_id=0, mask_token_id=4, max_length=LENGTH)
    mask_token = "[MASK]"
    special_token_ids = frozenset(range(5))

    def id_to_token(self, token_id: int) -> str:
        return str(token_id)

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def decode_sample(self, sample):
        raise NotImplementedError

    def collate(self, items):
        raise NotImplementedError


def make_batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (BATCH, LENGTH), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    attention = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    maskable = attention.clone()
    maskable[:, 0] = maskable[:, -1] = False
    return {"input_ids": ids, "attention_mask": attention, "maskable": maskable}


def build_mmm(tokenizer: Tokenizer) -> MaskedModelingModule:
    encoder = TransformerEncoder(dim=HIDDEN, depth=LAYERS, num_heads=HEADS, mlp_ratio=FFN / HIDDEN)
    return MaskedModelingModule(tokenizer=tokenizer, encoder=encoder).train()


def build_hf(
    hidden: int = HIDDEN, layers: int = LAYERS, heads: int = HEADS, ffn: int = FFN
) -> BertForMaskedLM:
    """``BertForMaskedLM`` of the benchmark's size, or of another (``learning_per_minute``
    sizes it like the quickstart config)."""
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=LENGTH,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForMaskedLM(config).train()


@dataclass(frozen=True)
class StepStats:
    """What one training step processed: real tokens, hidden (predicted) positions, row
    length."""

    tokens: int
    hidden: int
    length: int


def mmm_trainer(module: MaskedModelingModule) -> Callable[[Batch], StepStats]:
    """One mmm training step (forward, backward, AdamW) on a batch."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def step(batch: Batch) -> StepStats:
        out = module.forward_masked(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        tokens = int(batch["attention_mask"].sum())
        hidden = out[module.modality_named()].target.shape[0]
        return StepStats(tokens, hidden, batch["input_ids"].shape[1])

    return step


def hf_trainer(model: BertForMaskedLM) -> Callable[[Batch], StepStats]:
    """One Hugging Face training step on a batch with ``labels`` (-100 where not hidden)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: Batch) -> StepStats:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
        loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens = int(batch["attention_mask"].sum())
        hidden = int((batch["labels"] != -100).sum())
        return StepStats(tokens, hidden, batch["input_ids"].shape[1])

    return step


@dataclass
class Arm:
    """One contender: where its batches come from, its step, and what it measured."""

    name: str
    batches: Iterator[Batch]
    step: Callable[[Batch], StepStats]
    seconds: list[float] = field(default_factory=list)
    stats: list[StepStats] = field(default_factory=list)

    def run(self, record: bool) -> None:
        """Draw a batch from the pipeline and train on it; loader time counts."""
        start = time.perf_counter()
        stats = self.step(next(self.batches))
        if record:
            self.seconds.append(time.perf_counter() - start)
            self.stats.append(stats)

    def tokens_per_second(self) -> float:
        return sum(s.tokens for s in self.stats) / sum(self.seconds)

    def flops_per_second(self) -> float:
        return sum(model_flops(s) for s in self.stats) / sum(self.seconds)


def model_flops(stats: StepStats) -> float:
    """Training FLOPs (forward + backward = 3x forward, 2 FLOPs per multiply-add) that the
    step's useful work needs: the encoder on real tokens (projections, feed-forward, attention
    over the row) and the masked-LM head (transform + vocabulary projection) on hidden
    positions. The same count for every contender, so the MFU ratio is the useful-work ratio;
    work on padding, and Hugging Face's head on unmasked positions, count as waste."""
    per_token = LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN + 2 * stats.length * HIDDEN)
    head = HIDDEN * HIDDEN + HIDDEN * VOCAB
    return 6.0 * (stats.tokens * per_token + stats.hidden * head)


def gemm_flops_per_second(size: int = 2048, repeats: int = 10) -> float:
    """This machine's fp32 matrix-multiply rate on the current threads (best of a few)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def forever(loader: DataLoader) -> Iterator[Batch]:
    """Epoch after epoch, as a trainer iterates a loader."""
    while True:
        yield from loader


def mmm_batches(tokenizer: TextTokenizer, batch_size: int) -> Iterator[Batch]:
    """Training batches of the quickstart's pipeline, in this process (loader time counts)."""
    data = ShardDataModule(
        embedded="python-docs", tokenizer=tokenizer, batch_size=batch_size, num_workers=0
    )
    data.prepare_data()
    return forever(data.train_dataloader())


def group_texts(examples: dict[str, list[list[int]]], block_size: int) -> dict[str, list]:
    """Hugging Face ``run_mlm.py``'s ``group_texts``: concatenate every tokenized text and cut
    the stream into blocks of ``block_size`` (the remainder is dropped)."""
    concatenated = {k: list(chain.from_iterable(v)) for k, v in examples.items()}
    total = len(concatenated["input_ids"]) // block_size * block_size
    return {
        k: [v[i : i + block_size] for i in range(0, total, block_size)]
        for k, v in concatenated.items()
    }


def hf_batches(
    tokenizer: TextTokenizer, mlm_probability: float = RATIO
) -> tuple[Iterator[Batch], float]:
    """Hugging Face's recipe on the same training split, and the seconds its up-front
    tokenization and grouping took (``datasets.map`` would cache it; not counted per step)."""
    urls = sorted(glob.glob("data/python-docs/train-*.tar"))
    texts = [s["txt"].decode("utf-8") for s in wds.WebDataset(urls, shardshuffle=False)]
    start = time.perf_counter()
    tokenized = tokenizer.hf(texts, return_special_tokens_mask=True)
    blocks = group_texts(dict(tokenized), LENGTH)
    features = [
        dict(zip(blocks, values, strict=True)) for values in zip(*blocks.values(), strict=True)
    ]
    prepared = time.perf_counter() - start
    collator = DataCollatorForLanguageModeling(tokenizer.hf, mlm_probability=mlm_probability)
    loader = DataLoader(
        features,
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(0),
    )
    return forever(loader), prepared


def synthetic_arms() -> list[Arm]:
    """The same batch and, for Hugging Face, the same hidden positions every step."""
    batch = make_batch()
    mask = random_mask(batch["maskable"], RATIO, torch.Generator().manual_seed(1))
    hf_batch = {
        "input_ids": corrupt_tokens(batch["input_ids"], mask, mask_token_id=4, vocab_size=VOCAB),
        "attention_mask": batch["attention_mask"].long(),
        "labels": batch["input_ids"].masked_fill(~mask, -100),  # -100: not scored
    }
    return [
        Arm("mmm", repeat(batch), mmm_trainer(build_mmm(SyntheticTokenizer()))),
        Arm("hf", repeat(hf_batch), hf_trainer(build_hf())),
    ]


def real_arms(docs: int, attention: str) -> tuple[list[Arm], float]:
    tokenizer = TextTokenizer(
        path=TOKENIZER, train_source="python-docs", max_length=LENGTH, pack=True
    )
    packed = copy_with(tokenizer, attention=attention)
    unpacked = copy_with(tokenizer, pack=False)
    hf_stream, prepared = hf_batches(tokenizer)
    return [
        Arm("mmm", mmm_batches(packed, docs), mmm_trainer(build_mmm(packed))),
        Arm("mmm-unpacked", mmm_batches(unpacked, BATCH), mmm_trainer(build_mmm(unpacked))),
        Arm("hf", hf_stream, hf_trainer(build_hf())),
    ], prepared


def measure(arms: list[Arm], steps: int, warmup: int) -> None:
    for i in range(warmup + steps):
        for arm in arms:
            arm.run(record=i >= warmup)


def report(arms: list[Arm], peak: float) -> None:
    hf = next(arm for arm in arms if arm.name == "hf")
    for arm in arms:
        tokens = statistics.mean(s.tokens for s in arm.stats)
        print(
            f"  {arm.name:13s} {statistics.median(arm.seconds) * 1e3:7.1f} ms/step  "
            f"{tokens:6.0f} real tokens/step  {arm.tokens_per_second():7.0f} real tokens/s  "
            f"MFU {arm.flops_per_second() / peak:5.1%}  "
            f"({arm.tokens_per_second() / hf.tokens_per_second():.2f}x hf)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["synthetic", "real", "both"], default="both")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--docs", type=int, default=48, help="documents per packed batch (config)")
    parser.add_argument("--attention", choices=["document", "across"], default="document")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = gemm_flops_per_second()
    print(
        f"hidden {HIDDEN}, {LAYERS} layers, FFN {FFN}, vocab {VOCAB}, rows of {LENGTH}, "
        f"{RATIO:.0%} masked, fp32, {args.threads} threads, median/mean of {args.steps} steps "
        f"after {args.warmup}; measured fp32 GEMM rate {peak / 1e9:.1f} GFLOP/s"
    )
    if args.mode in ("synthetic", "both"):
        arms = synthetic_arms()
        measure(arms, args.steps, args.warmup)
        print(f"synthetic batch {BATCH}x{LENGTH}, no padding, training step alone:")
        report(arms, peak)
    if args.mode in ("real", "both"):
        arms, prepared = real_arms(args.docs, args.attention)
        measure(arms, args.steps, args.warmup)
        print(
            f"real batches of python-docs, loader time included: mmm packs {args.docs} "
            f"documents per batch ({args.attention} attention), mmm-unpacked pads {BATCH} "
            f"documents, hf takes {BATCH} group_texts blocks (tokenized and grouped up front "
            f"in {prepared:.1f} s, not counted):"
        )
        report(arms, peak)


if __name__ == "__main__":
    main()
