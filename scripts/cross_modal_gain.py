"""How much one modality helps predict another: held-out accuracy with the context modality
seen vs removed, same checkpoint, same hidden positions.

For every held-out batch of the config's validation shards (decoded without augmentation),
the target modality's positions are hidden (by its own masking's evaluation draw, seeded with
the batch number, or all of them with ``--hide all``) and predicted twice: once with the
context modality fully visible beside it, once with the context removed from the batch. The
difference is what the model reads from the context.

    python scripts/cross_modal_gain.py --config configs/speech_text.yaml \
        --checkpoint lightning_logs/version_0/checkpoints/LAST.ckpt --target text --context audio
    python scripts/cross_modal_gain.py --config configs/digits_image_text.yaml \
        --checkpoint CKPT --target text --context image --hide all
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
import yaml

from datamodules import ShardDataModule
from mmm.inference import load_module
from mmm.masking import MaskedPositions
from mmm.module import MaskedModelingModule
from mmm.rng import seeded


def hidden_target(
    module: MaskedModelingModule, sub: dict[str, torch.Tensor], target: str, hide: str
) -> MaskedPositions:
    """The target's hidden positions: its masking's evaluation draw, or every maskable one
    (shown as mask tokens only)."""
    maskable = sub["maskable"]
    ratio = torch.ones(maskable.shape[0])
    if hide == "all":
        return MaskedPositions(maskable, ratio, mask_only=torch.ones_like(ratio, dtype=torch.bool))
    grid = getattr(module.tokenizers[target].spec, "grid", None)
    masking = module.maskings[target]
    return masking.evaluation_masks(maskable, word_ids=sub.get("word_ids"), grid=grid)[0]


def score(module: MaskedModelingModule, batch: dict, target: str, context: str, hide: str):
    """Correct and hidden counts of the target with the context seen, then removed."""
    sub = batch[target]
    masked = hidden_target(module, sub, target, hide)
    with_context = {target: sub, context: batch[context]}
    nothing_hidden = MaskedPositions(
        torch.zeros_like(batch[context]["maskable"]), torch.zeros(len(batch[context]["maskable"]))
    )
    seen = module.forward_masked(with_context, {target: masked, context: nothing_hidden})[target]
    alone = module.forward_masked({target: sub}, {target: masked})[target]
    count = int(masked.mask.sum())
    return (
        [float(part.metrics["masked_accuracy"]) * count for part in (seen, alone)],
        count,
        sub["input_ids"][masked.mask],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--target", default="text", help="the discrete modality predicted")
    parser.add_argument("--context", default="audio", help="the modality seen or removed")
    parser.add_argument("--hide", choices=("masking", "all"), default="masking")
    args = parser.parse_args()

    module = load_module(args.checkpoint)
    with open(args.config) as handle:
        data_config = yaml.safe_load(handle)["data"]
    data_config["num_workers"] = 0
    data = ShardDataModule(**data_config, tokenizer=module.batcher)
    data.prepare_data()
    correct, hidden, truths = [0.0, 0.0], 0, Counter()
    with torch.no_grad():
        for index, batch in enumerate(data.val_dataloader()):
            if args.target not in batch or args.context not in batch:
                continue
            with seeded(index):
                right, count, truth = score(module, batch, args.target, args.context, args.hide)
            correct = [a + b for a, b in zip(correct, right, strict=True)]
            hidden += count
            truths.update(truth.tolist())
    most_frequent = truths.most_common(1)[0][1] / hidden
    seen, alone = (value / hidden for value in correct)
    print(f"{hidden} hidden {args.target} tokens of the held-out split ({args.hide})")
    print(f"  accuracy with {args.context} seen:    {seen:.3f}")
    print(f"  accuracy with {args.context} removed: {alone:.3f}")
    print(f"  most frequent token:            {most_frequent:.3f}")
    print(f"  cross-modal gain: {seen - alone:+.3f} ({seen / max(alone, 1e-9):.2f}x)")


if __name__ == "__main__":
    main()
