"""Training speed of mmm's text model against Hugging Face ``BertForMaskedLM``.

Same size for both (``--preset``: ``default`` hidden 256, 4 layers, 4 heads, FFN 1024, rows
of 128, batch 32; ``quickstart`` the size of ``configs/text_mlm.yaml``; ``bert-base`` 768 x 12,
FFN 3072, rows of 512, batch 64; ``tiny`` for smoke runs; ``--hidden`` etc. override a
preset's value; vocab 8192, 15% masking, AdamW), on ``--device`` in ``--precision`` (fp32 or
bf16 autocast), in one process, steps alternating between the models so that machine noise
hits all alike. Two comparisons:

1. ``synthetic``: one ready-made batch without padding, the same hidden positions for both:
   the training step alone.
2. ``real``: each fed by its own real pipeline from the embedded corpus (python-docs), loader
   time included in every step: mmm's ``ShardDataModule`` + ``TextTokenizer`` as the
   quickstart config builds it (packed rows), mmm without packing (one padded row per
   document, as before packing), and Hugging Face's ``run_mlm.py`` recipe (the training split
   tokenized and cut into full blocks by ``group_texts`` once up front, then
   ``DataCollatorForLanguageModeling`` per batch). Prints real (non-padding) tokens per
   second, their ratio, and the model FLOP/s each reaches as a share of the device's
   measured ``torch.matmul`` rate at the chosen precision (MFU, ``mmm.benchmarking``).

    python scripts/bench_text.py [--mode synthetic|real|both] [--steps 10] [--warmup 3]
        [--threads N] [--docs 48] [--attention document|across]
        [--preset tiny|default|quickstart|bert-base] [--hidden 256] [--layers 4] [--heads 4]
        [--ffn 1024] [--batch 32] [--length 128] [--device cuda] [--precision 32|bf16-mixed]

The embedded corpus (``data/python-docs``) and the quickstart's tokenizer
(``artifacts/tokenizers/``) are prepared in the working directory on first use.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, repeat

import torch
import webdataset as wds
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

from datamodules import ShardDataModule, embedded_shards
from mmm.benchmarking import (
    Runtime,
    add_size_arguments,
    chosen_sizes,
    matmul_flops_per_second,
)
from mmm.masking import corrupt_tokens, random_mask
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import DiscreteSpec, DiscreteTokenizer, Tokenizer, copy_with
from mmm.tokenizers.text import TextTokenizer

VOCAB = 8192  # the quickstart tokenizer's vocabulary
TOKENIZER = "artifacts/tokenizers/python-docs-wordpiece-8k"  # the quickstart's

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Sizes:
    """The size both models share, and the batches they train on."""

    hidden: int = 256
    layers: int = 4
    heads: int = 4
    ffn: int = 1024
    """feed-forward width"""
    batch: int = 32
    """rows per synthetic batch, documents per unpacked batch, blocks per Hugging Face batch"""
    ratio: float = 0.15
    """share of tokens hidden"""
    length: int = 128
    """row length (tokens), the quickstart's"""


#: ``--preset``: named sizes; single options (``--hidden``...) override a preset's.
PRESETS = {
    "tiny": Sizes(hidden=16, layers=1, heads=2, ffn=32, batch=2, length=32),
    "default": Sizes(),
    "quickstart": Sizes(hidden=128, layers=4, heads=4, ffn=512, batch=32),  # text_mlm.yaml
    "bert-base": Sizes(hidden=768, layers=12, heads=12, ffn=3072, batch=64, length=512),
}


class SyntheticTokenizer(DiscreteTokenizer):
    """Only a spec: the synthetic comparison feeds ready-made batches, so no text is tokenized."""

    mask_token = "[MASK]"
    special_token_ids = frozenset(range(5))

    def __init__(self, length: int) -> None:
        self.length = length

    @property
    def spec(self) -> DiscreteSpec:
        return DiscreteSpec(
            vocab_size=VOCAB, pad_token_id=0, mask_token_id=4, max_length=self.length
        )

    def id_to_token(self, token_id: int) -> str:
        return str(token_id)

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def decode_sample(self, sample):
        raise NotImplementedError

    def collate(self, items):
        raise NotImplementedError


def make_batch(rows: int, length: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, length), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    attention = torch.ones(rows, length, dtype=torch.bool)
    maskable = attention.clone()
    maskable[:, 0] = maskable[:, -1] = False
    return {"input_ids": ids, "attention_mask": attention, "maskable": maskable}


def build_mmm(tokenizer: Tokenizer, sizes: Sizes) -> MaskedModelingModule:
    encoder = TransformerEncoder(
        dim=sizes.hidden,
        depth=sizes.layers,
        num_heads=sizes.heads,
        mlp_ratio=sizes.ffn / sizes.hidden,
    )
    return MaskedModelingModule(tokenizer=tokenizer, encoder=encoder).train()


def build_hf(sizes: Sizes) -> BertForMaskedLM:
    """``BertForMaskedLM`` of ``sizes`` (``learning_per_minute`` sizes it like the quickstart
    config)."""
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=sizes.hidden,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        intermediate_size=sizes.ffn,
        max_position_embeddings=sizes.length,
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


def mmm_trainer(module: MaskedModelingModule, runtime: Runtime) -> Callable[[Batch], StepStats]:
    """One mmm training step (forward, backward, AdamW) on a batch."""
    module.to(runtime.device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def step(batch: Batch) -> StepStats:
        batch = runtime.to_device(batch)
        with runtime.autocast():
            out = module.forward_masked(batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        runtime.synchronize()
        tokens = int(batch["attention_mask"].sum())
        hidden = out[module.modality_named()].target.shape[0]
        return StepStats(tokens, hidden, batch["input_ids"].shape[1])

    return step


def hf_trainer(model: BertForMaskedLM, runtime: Runtime) -> Callable[[Batch], StepStats]:
    """One Hugging Face training step on a batch with ``labels`` (-100 where not hidden)."""
    model.to(runtime.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch: Batch) -> StepStats:
        inputs = runtime.to_device({k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
        with runtime.autocast():
            loss = model(**inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        runtime.synchronize()
        tokens = int(inputs["attention_mask"].sum())
        hidden = int((inputs["labels"] != -100).sum())
        return StepStats(tokens, hidden, inputs["input_ids"].shape[1])

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

    def flops_per_second(self, sizes: Sizes) -> float:
        return sum(model_flops(s, sizes) for s in self.stats) / sum(self.seconds)


def model_flops(stats: StepStats, sizes: Sizes) -> float:
    """Training FLOPs (forward + backward = 3x forward, 2 FLOPs per multiply-add) that the
    step's useful work needs: the encoder on real tokens (projections, feed-forward, attention
    over the row) and the masked-LM head (transform + vocabulary projection) on hidden
    positions. The same count for every contender, so the MFU ratio is the useful-work ratio;
    work on padding, and Hugging Face's head on unmasked positions, count as waste."""
    hidden, ffn = sizes.hidden, sizes.ffn
    per_token = sizes.layers * (4 * hidden * hidden + 2 * hidden * ffn + 2 * stats.length * hidden)
    head = hidden * hidden + hidden * VOCAB
    return 6.0 * (stats.tokens * per_token + stats.hidden * head)


def forever(loader: DataLoader) -> Iterator[Batch]:
    """Epoch after epoch, as a trainer iterates a loader."""
    while True:
        yield from loader


def mmm_batches(tokenizer: TextTokenizer, batch_size: int) -> Iterator[Batch]:
    """Training batches of the quickstart's pipeline, in this process (loader time counts)."""
    data = ShardDataModule(
        embedded="python-docs", batcher=tokenizer, batch_size=batch_size, num_workers=0
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
    tokenizer: TextTokenizer,
    batch_size: int,
    mlm_probability: float,
    length: int,
    seed: int = 0,
) -> tuple[Iterator[Batch], float]:
    """Hugging Face's recipe on the same training split (written to ``data/python-docs`` on
    first use), and the seconds its up-front tokenization and grouping took
    (``datasets.map`` would cache it; not counted per step)."""
    urls = embedded_shards("python-docs", "train")
    texts = [s["txt"].decode("utf-8") for s in wds.WebDataset(urls, shardshuffle=False)]
    start = time.perf_counter()
    tokenized = tokenizer.hf(texts, return_special_tokens_mask=True)
    blocks = group_texts(dict(tokenized), length)
    features = [
        dict(zip(blocks, values, strict=True)) for values in zip(*blocks.values(), strict=True)
    ]
    prepared = time.perf_counter() - start
    collator = DataCollatorForLanguageModeling(tokenizer.hf, mlm_probability=mlm_probability)
    loader = DataLoader(
        features,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(seed),
    )
    return forever(loader), prepared


def synthetic_arms(sizes: Sizes, runtime: Runtime) -> list[Arm]:
    """The same batch and, for Hugging Face, the same hidden positions every step."""
    batch = make_batch(sizes.batch, sizes.length)
    mask = random_mask(batch["maskable"], sizes.ratio, torch.Generator().manual_seed(1))
    hf_batch = {
        "input_ids": corrupt_tokens(batch["input_ids"], mask, mask_token_id=4, vocab_size=VOCAB),
        "attention_mask": batch["attention_mask"].long(),
        "labels": batch["input_ids"].masked_fill(~mask, -100),  # -100: not scored
    }
    mmm = build_mmm(SyntheticTokenizer(sizes.length), sizes)
    return [
        Arm("mmm", repeat(batch), mmm_trainer(mmm, runtime)),
        Arm("hf", repeat(hf_batch), hf_trainer(build_hf(sizes), runtime)),
    ]


def real_arms(docs: int, attention: str, sizes: Sizes, runtime: Runtime) -> tuple[list[Arm], float]:
    tokenizer = TextTokenizer(
        path=TOKENIZER, train_source="python-docs", max_length=sizes.length, pack=True
    )
    packed = copy_with(tokenizer, attention=attention)
    unpacked = copy_with(tokenizer, pack=False)
    hf_stream, prepared = hf_batches(tokenizer, sizes.batch, sizes.ratio, sizes.length)
    return [
        Arm(
            "mmm",
            mmm_batches(packed, docs),
            mmm_trainer(build_mmm(packed, sizes), runtime),
        ),
        Arm(
            "mmm-unpacked",
            mmm_batches(unpacked, sizes.batch),
            mmm_trainer(build_mmm(unpacked, sizes), runtime),
        ),
        Arm("hf", hf_stream, hf_trainer(build_hf(sizes), runtime)),
    ], prepared


def measure(arms: list[Arm], steps: int, warmup: int) -> None:
    for i in range(warmup + steps):
        for arm in arms:
            arm.run(record=i >= warmup)


def report(arms: list[Arm], peak: float, sizes: Sizes) -> None:
    hf = next(arm for arm in arms if arm.name == "hf")
    for arm in arms:
        tokens = statistics.mean(s.tokens for s in arm.stats)
        print(
            f"  {arm.name:13s} {statistics.median(arm.seconds) * 1e3:7.1f} ms/step  "
            f"{tokens:6.0f} real tokens/step  {arm.tokens_per_second():7.0f} real tokens/s  "
            f"MFU {arm.flops_per_second(sizes) / peak:5.1%}  "
            f"({arm.tokens_per_second() / hf.tokens_per_second():.2f}x hf)"
        )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["synthetic", "real", "both"], default="both")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--docs", type=int, default=48, help="documents per packed batch (config)")
    parser.add_argument("--attention", choices=["document", "across"], default="document")
    add_size_arguments(parser, PRESETS)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default="32")
    parser.add_argument(
        "--gemm_size", type=int, default=2048, help="matrix side of the peak-rate measurement"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_arguments()
    sizes = chosen_sizes(args, PRESETS)
    runtime = Runtime(torch.device(args.device), args.precision)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_flops_per_second(runtime, size=args.gemm_size)
    print(
        f"hidden {sizes.hidden}, {sizes.layers} layers, FFN {sizes.ffn}, vocab {VOCAB}, rows of "
        f"{sizes.length}, {sizes.ratio:.0%} masked, {runtime.device}, precision {runtime.precision}, "
        f"{args.threads} threads, median/mean of {args.steps} steps after {args.warmup}; "
        f"measured GEMM rate {peak / 1e9:.1f} GFLOP/s"
    )
    if args.mode in ("synthetic", "both"):
        arms = synthetic_arms(sizes, runtime)
        measure(arms, args.steps, args.warmup)
        print(f"synthetic batch {sizes.batch}x{sizes.length}, no padding, training step alone:")
        report(arms, peak, sizes)
    if args.mode in ("real", "both"):
        arms, prepared = real_arms(args.docs, args.attention, sizes, runtime)
        measure(arms, args.steps, args.warmup)
        print(
            f"real batches of python-docs, loader time included: mmm packs {args.docs} "
            f"documents per batch ({args.attention} attention), mmm-unpacked pads {sizes.batch} "
            f"documents, hf takes {sizes.batch} group_texts blocks (tokenized and grouped up "
            f"front in {prepared:.1f} s, not counted):"
        )
        report(arms, peak, sizes)


if __name__ == "__main__":
    main()
