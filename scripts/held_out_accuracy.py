"""Held-out masked-token accuracy of checkpoints under one masking ratio, so that models
trained with different ratios compare on the same task, with BERT's corruption and with every
hidden token shown as the mask token.

``mmm validate`` scores a checkpoint under the masking it was trained with (a
``--model.masking`` that differs from the checkpoint's is refused). This script loads each
checkpoint with ``RandomMasking(ratio)`` instead and runs the validation split (fixed
evaluation masks, so the numbers repeat) twice:

- ``80/10/10``: BERT's corruption, as training uses it (and as Hugging Face's ``run_mlm.py``
  evaluates): 10% of the hidden tokens stay unchanged, and a model scores them by copying its
  input;
- ``mask only``: every hidden token is the mask token, as in ``mmm fill-mask`` and as ``mmm
  fit``'s validation scores (``evaluation_mask_only``): what the model predicts from context
  alone.

    python scripts/held_out_accuracy.py CKPT [CKPT ...] [--ratio 0.15]
        [--embedded python-docs] [--batch_size 48]
"""

from __future__ import annotations

import argparse

import lightning as L

from datamodules import ShardDataModule
from mmm.inference import load_module
from mmm.masking import RandomMasking

#: corruption name -> (share of hidden tokens shown as the mask token, as a random token)
CORRUPTIONS = {"80/10/10": (0.8, 0.1), "mask only": (1.0, 0.0)}


def held_out(
    checkpoint: str, masking: RandomMasking, embedded: str, batch_size: int
) -> dict[str, float]:
    """Validation loss and masked-token accuracy of every modality of ``checkpoint`` under
    ``masking`` and its own corruption."""
    module = load_module(checkpoint, masking=masking, evaluation_mask_only=False)
    data = ShardDataModule(
        embedded=embedded, batch_size=batch_size, num_workers=0, batcher=module.batcher
    )
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.validate(module, datamodule=data, verbose=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--ratio", type=float, default=0.15, help="share of tokens hidden")
    parser.add_argument("--embedded", default="python-docs", help="the embedded data set")
    parser.add_argument("--batch_size", type=int, default=48, help="documents per batch")
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        for corruption, (as_mask, as_random) in CORRUPTIONS.items():
            masking = RandomMasking(
                ratio=args.ratio, mask_replace_prob=as_mask, random_replace_prob=as_random
            )
            metrics = held_out(checkpoint, masking, args.embedded, args.batch_size)
            scores = "  ".join(
                f"{name} {value:.4f}"
                for name, value in sorted(metrics.items())
                if name.endswith(("masked_accuracy", "/loss"))
            )
            print(f"{checkpoint}: {args.ratio:.0%} hidden, {corruption}: {scores}", flush=True)


if __name__ == "__main__":
    main()
