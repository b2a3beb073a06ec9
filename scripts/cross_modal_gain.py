"""How much one modality helps predict another: held-out accuracy with the context modality
seen vs removed, same checkpoint, same hidden positions.

For every held-out batch of the config's validation shards (decoded without augmentation),
the target modality's positions are hidden (by its own masking's evaluation draw, seeded with
the batch number, or all of them with ``--hide all``) and predicted twice: once with the
context modality fully visible beside it, once with the context removed from the batch. The
difference is what the model reads from the context: masked-token accuracy for a discrete
target, the masked loss (MSE of normalized patches) for a continuous one, where
``--picture`` also draws originals and both reconstructions of the first held-out samples.

A small held-out split hides few tokens, so ``--repeats N`` evaluates every batch under N
different seeded draws of hidden positions, and for a discrete target the tokens that only
one of the two passes gets right are counted: an exact two-sided sign test on them says how
likely a gain this large is when the context does not help (McNemar's test).

``--control CKPT`` scores a model trained on the target modality alone (same tokenizer) on the
same hidden positions: the bar the paired model must clear with the context seen, free of the
doubt that removing the context puts the paired model out of its training distribution.

    python scripts/cross_modal_gain.py --config configs/speech_text.yaml \
        --checkpoint lightning_logs/version_0/checkpoints/LAST.ckpt --target text --context audio
    python scripts/cross_modal_gain.py --config configs/digits_image_text.yaml \
        --checkpoint CKPT --target text --context image --hide all
    python scripts/cross_modal_gain.py --config configs/digits_image_text.yaml \
        --checkpoint CKPT --target image --context text --hide all --picture from_words.png
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from scipy.stats import binomtest

from mmm.experiment import add_config_arguments, build_from_config, config_overrides
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


def passes(module: MaskedModelingModule, batch: dict, target: str, context: str, hide: str):
    """The target's outputs with the context seen, then removed, and its hidden positions."""
    sub = batch[target]
    masked = hidden_target(module, sub, target, hide)
    shown = batch[context]["maskable"]
    nothing_hidden = MaskedPositions(torch.zeros_like(shown), torch.zeros(len(shown)))
    both = {target: sub, context: batch[context]}
    seen = module.forward_masked(both, {target: masked, context: nothing_hidden})[target]
    alone = module.forward_masked({target: sub}, {target: masked})[target]
    return seen, alone, masked


def correct(part) -> torch.Tensor:
    """(N,) bool: hidden tokens a discrete pass predicts right."""
    return part.pred.argmax(dim=-1) == part.target


def report_discordant(seen_right: torch.Tensor, alone_right: torch.Tensor, context: str) -> None:
    """Tokens right only with the context vs right only without it, and the sign test."""
    only_seen = int((seen_right & ~alone_right).sum())
    only_alone = int((alone_right & ~seen_right).sum())
    total = only_seen + only_alone
    p_value = binomtest(only_seen, total, 0.5).pvalue if total else 1.0
    print(
        f"  right only with {context}: {only_seen}, only without: {only_alone} "
        f"(two-sided sign test p = {p_value:.3g})"
    )


def figure(part) -> float:
    """The reported figure of one pass: accuracy (discrete) or loss (continuous)."""
    return float(part.metrics.get("masked_accuracy", part.loss))


def draw(module, batch: dict, target: str, outputs, path: str, count: int = 10) -> None:
    """Originals, reconstructions with the context, and without it, of ``count`` samples.
    Predictions of normalized patches are shown with each original patch's mean and spread
    (MAE's visualization), so even a blind guess shows the originals' coarse shading."""
    from torchvision.utils import save_image

    sub = {k: v[:count] for k, v in batch[target].items() if k != "rows"}
    modality, render = module.modalities[target], module.tokenizers[target].render
    rows = [render(sub["patches"].float())]
    for part in outputs:
        mask = part.mask[:count]
        pred = part.pred[: int(part.mask[:count].sum())]
        rows.append(render(modality.reconstruct(sub, mask, pred)))
    grid = torch.cat(rows)  # (3 * count, C, H, W)
    grid = torch.nn.functional.interpolate(grid.float(), scale_factor=8, mode="nearest")
    save_image(grid, path, nrow=count, padding=2, pad_value=1.0)
    print(f"  picture: originals / with context / without -> {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, default=None)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--target", default="text", help="the modality predicted")
    parser.add_argument("--context", default="audio", help="the modality seen or removed")
    parser.add_argument("--hide", choices=("masking", "all"), default="masking")
    parser.add_argument("--picture", help="PNG of originals and both reconstructions")
    parser.add_argument(
        "--repeats", type=int, default=1, help="seeded draws of hidden positions per batch"
    )
    parser.add_argument("--control", help="checkpoint of a model of the target modality alone")
    args = parser.parse_args()

    module = load_module(args.checkpoint)
    control = load_module(args.control).eval() if args.control else None
    _, data = build_from_config(args.config, ["--data.num_workers=0", *config_overrides(args)])
    data.batcher = module.batcher  # the checkpoint's tokenizers batch the held-out split
    totals, hidden, truths = [0.0, 0.0, 0.0], 0, Counter()
    rights: tuple[list, list, list] = ([], [], [])
    repeats = 1 if args.hide == "all" else args.repeats  # hiding all is one draw
    with torch.no_grad():
        for index, batch in enumerate(data.val_dataloader()):
            if args.target not in batch or args.context not in batch:
                continue
            for repeat in range(repeats):
                with seeded(index + 100_003 * repeat):
                    seen, alone, masked = passes(
                        module, batch, args.target, args.context, args.hide
                    )
                if index == 0 and repeat == 0 and args.picture:
                    draw(module, batch, args.target, (seen, alone), args.picture)
                parts = [seen, alone]
                if control is not None:
                    target_only = {args.target: batch[args.target]}
                    out = control.forward_masked(target_only, {args.target: masked})
                    parts.append(out[args.target])
                count = int(masked.mask.sum())
                hidden += count
                discrete = "input_ids" in batch[args.target]
                if discrete:
                    truths.update(batch[args.target]["input_ids"][masked.mask].tolist())
                for i, part in enumerate(parts):  # seen, removed, control (when given)
                    totals[i] += figure(part) * count
                    if discrete:
                        rights[i].append(correct(part))
    seen, alone, controlled = (total / hidden for total in totals)
    measure = "accuracy" if truths else "loss"
    print(
        f"{hidden} hidden {args.target} positions of the held-out split "
        f"({args.hide}, {repeats} draw(s) per batch)"
    )
    print(f"  {measure} with {args.context} seen:    {seen:.3f}")
    print(f"  {measure} with {args.context} removed: {alone:.3f}")
    if truths:
        print(f"  most frequent token:            {truths.most_common(1)[0][1] / hidden:.3f}")
        print(f"  cross-modal gain: {seen - alone:+.3f} accuracy ({seen / max(alone, 1e-9):.2f}x)")
        report_discordant(torch.cat(rights[0]), torch.cat(rights[1]), args.context)
    else:
        print(f"  cross-modal gain: loss {alone - seen:.3f} lower ({alone / max(seen, 1e-9):.2f}x)")
    if control is not None:
        print(f"  {measure} of the {args.target}-only control: {controlled:.3f}")
        if truths:
            print(f"  gain over the control: {seen - controlled:+.3f} accuracy")
            report_discordant(
                torch.cat(rights[0]), torch.cat(rights[2]), f"{args.context} (vs control)"
            )


if __name__ == "__main__":
    main()
