"""What sharing a trunk costs: a paired audio + text training step vs an audio-only step plus a
text-only step of the same sizes.

The three models are built from one config (default ``configs/speech_text.yaml``): the
paired model with both modalities, and the same config cut down to one modality each. Steps
(forward, backward, AdamW) run interleaved in one process, on real batches from the real
pipeline (the config's datamodule) and on synthetic batches of the same shapes, and the
script prints the median step times and ``paired / (audio + text)``: 1.0 means the shared
trunk costs exactly what two separate steps cost (packing both modalities into one sequence
is free); the issue's bound is 1.1.

    python scripts/bench_multimodal.py [--config configs/speech_text.yaml] [--rounds 20]
        [--batches 8] [--set model.encoder.dim=96 ...]

The paired step also does work the separate steps do not: an MAE decoder reads the other
modality's encoder states (so a modality hidden whole can be drawn from the others). The
``paired, no decoder context`` line times the paired model with that context switched off,
which isolates what sharing the trunk costs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import yaml

from datamodules import ShardDataModule
from mmm.experiment import add_config_arguments, build_from_config, config_overrides
from mmm.module import MaskedModelingModule


def only(config: dict, name: str) -> dict:
    """The config with one of its modalities."""
    single = copy.deepcopy(config)
    single["model"]["modalities"] = {name: single["model"]["modalities"][name]}
    return single


def real_batches(data: ShardDataModule, count: int) -> list[dict]:
    """``count`` training batches of the paired pipeline (loader in this process)."""
    batches = []
    for batch in data.train_dataloader():
        batches.append({key: value for key, value in batch.items() if isinstance(value, dict)})
        if len(batches) == count:
            return batches
    return batches


def synthetic_like(batch: dict, vocab: int) -> dict:
    """Random inputs of a real batch's shapes, every position real."""
    fake = {}
    for name, sub in batch.items():
        shape = sub["attention_mask"].shape
        real = torch.ones(shape, dtype=torch.bool)
        if "patches" in sub:
            fake[name] = {
                "patches": torch.randn_like(sub["patches"]),
                "attention_mask": real,
                "maskable": real,
            }
        else:
            maskable = real.clone()
            maskable[:, [0, -1]] = False  # [CLS], [SEP]
            ids = torch.randint(5, vocab, shape)
            fake[name] = {"input_ids": ids, "attention_mask": real, "maskable": maskable}
    return fake


def step_seconds(module: MaskedModelingModule, optimizer, batch: dict) -> float:
    start = time.perf_counter()
    loss = module.forward_masked(batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def compare(models: dict, batches: list[dict], rounds: int) -> dict[str, float]:
    """Median step seconds of each model, interleaved (the order rotates every round)."""
    optimizers = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for index in range(rounds + 2):  # 2 warm-up rounds
        batch = batches[index % len(batches)]
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            part = {k: v for k, v in batch.items() if k in models[name].modalities}
            seconds = step_seconds(models[name], optimizers[name], part)
            if index >= 2:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def without_decoder_context(module: MaskedModelingModule) -> MaskedModelingModule:
    """``module`` whose MAE decoders do not read the other modalities' states."""
    module._context = lambda *args, **kwargs: None  # the one place the context is decided
    return module


def report(kind: str, medians: dict[str, float]) -> None:
    parts = medians["audio"] + medians["text"]
    print(
        f"{kind:9s} audio {1e3 * medians['audio']:7.1f} ms  text {1e3 * medians['text']:7.1f} ms"
        f"  sum {1e3 * parts:7.1f} ms  paired {1e3 * medians['paired']:7.1f} ms"
        f"  paired / sum = {medians['paired'] / parts:.2f}x"
    )
    alone = medians["paired, no decoder context"]
    print(f"{'':9s} paired, no decoder context {1e3 * alone:7.1f} ms  / sum = {alone / parts:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, default="speech_text.yaml")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    with open(args.config) as handle:
        config = yaml.safe_load(handle)
    overrides = ["--data.num_workers=0", *config_overrides(args)]

    def build(variant: dict) -> MaskedModelingModule:
        return build_from_config(variant, overrides)[0]

    torch.manual_seed(0)
    paired, data = build_from_config(config, overrides)
    models = {
        "audio": build(only(config, "audio")),
        "text": build(only(config, "text")),
        "paired": paired,
        "paired, no decoder context": without_decoder_context(build(config)),
    }
    batches = real_batches(data, args.batches)
    shapes = {n: tuple(s["attention_mask"].shape) for n, s in batches[0].items()}
    print(f"{args.config}: batches {shapes}, {torch.get_num_threads()} threads")
    report("real", compare(models, batches, args.rounds))
    vocab = paired.tokenizers["text"].spec.vocab_size
    fake = [synthetic_like(batch, vocab) for batch in batches]
    report("synthetic", compare(models, fake, args.rounds))


if __name__ == "__main__":
    main()
