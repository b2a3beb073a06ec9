"""Training-step speed of mmm's text model against Hugging Face ``BertForMaskedLM``.

Same size for both (hidden 256, 4 layers, 4 heads, FFN 1024, vocab 8192, sequence 128,
batch 32, 15% masking, fp32, AdamW), same batch, same hidden positions, in one process.
Steps alternate between the two models so that machine noise hits both alike.

    python scripts/bench_text.py [--steps 10] [--warmup 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import BertConfig, BertForMaskedLM

from mmm.masking import corrupt_tokens, random_mask
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import DiscreteSpec, DiscreteTokenizer

HIDDEN, LAYERS, HEADS, FFN, VOCAB, LENGTH, BATCH, RATIO = 256, 4, 4, 1024, 8192, 128, 32, 0.15


class SyntheticTokenizer(DiscreteTokenizer):
    """Only a spec: the benchmark feeds ready-made batches, so no text is tokenized."""

    spec = DiscreteSpec(vocab_size=VOCAB, pad_token_id=0, mask_token_id=4, max_length=LENGTH)
    mask_token = "[MASK]"

    def id_to_token(self, token_id: int) -> str:
        return str(token_id)

    def decode_sample(self, sample):
        raise NotImplementedError

    def collate(self, items):
        raise NotImplementedError


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (BATCH, LENGTH), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    attention = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    maskable = attention.clone()
    maskable[:, 0] = maskable[:, -1] = False
    return {"input_ids": ids, "attention_mask": attention, "maskable": maskable}


def mmm_step(batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    module = MaskedModelingModule(
        tokenizer=SyntheticTokenizer(),
        encoder=TransformerEncoder(
            dim=HIDDEN, depth=LAYERS, num_heads=HEADS, mlp_ratio=FFN / HIDDEN
        ),
    ).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def step() -> float:
        loss = module.forward_masked(batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def hf_step(batch: dict[str, torch.Tensor]) -> Callable[[], float]:
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=LENGTH,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForMaskedLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mask = random_mask(batch["maskable"], RATIO, torch.Generator().manual_seed(1))
    inputs = corrupt_tokens(batch["input_ids"], mask, mask_token_id=4, vocab_size=VOCAB)
    labels = batch["input_ids"].masked_fill(~mask, -100)  # HF convention: -100 is ignored
    attention = batch["attention_mask"].long()

    def step() -> float:
        loss = model(input_ids=inputs, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = make_batch()
    steps = {"mmm": mmm_step(batch), "hf": hf_step(batch)}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    mmm_ms = statistics.median(times["mmm"]) * 1e3
    hf_ms = statistics.median(times["hf"]) * 1e3
    print(
        f"text training step, batch {BATCH}x{LENGTH}, hidden {HIDDEN}, {LAYERS} layers, "
        f"vocab {VOCAB}, {RATIO:.0%} masked, fp32, {args.threads} threads, median of {args.steps}"
    )
    print(f"mmm MaskedModelingModule: {mmm_ms:8.1f} ms/step")
    print(f"HF BertForMaskedLM:       {hf_ms:8.1f} ms/step")
    print(f"speed-up: {hf_ms / mmm_ms:.2f}x")


if __name__ == "__main__":
    main()
