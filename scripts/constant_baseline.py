"""Masked-token accuracy of the best constant prediction, for a discrete-modality config.

The constant predictor answers every hidden position with the most frequent maskable token of
the training split. Masking picks maskable positions uniformly, so its expected accuracy is
that token's share of maskable positions in the validation split. A trained model's
``val/<modality>/masked_accuracy`` should clearly beat it.

    python scripts/constant_baseline.py --config configs/text_mlm.yaml [--train_batches 200]
        [--set data.batch_size=16 ...]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

from mmm.experiment import add_config_arguments, build_from_config, config_overrides


def maskable_counts(loader, name: str, limit: int | None) -> Counter:
    """How often each token id sits at a maskable position of modality ``name``."""
    counts: Counter = Counter()
    for index, batch in enumerate(loader):
        if limit is not None and index >= limit:
            break
        sub = batch[name]
        ids = sub["input_ids"][sub["maskable"]]
        counts.update(
            dict(zip(*[t.tolist() for t in torch.unique(ids, return_counts=True)], strict=True))
        )
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_arguments(parser, default=None)
    parser.add_argument("--train_batches", type=int, default=200)
    args = parser.parse_args()
    module, data = build_from_config(args.config, config_overrides(args))
    data.setup("fit")
    modality = module.modality_named(discrete=True)
    train = maskable_counts(data.train_dataloader(), modality, args.train_batches)
    token, _ = train.most_common(1)[0]
    val = maskable_counts(data.val_dataloader(), modality, None)
    accuracy = val[token] / sum(val.values())
    name = module.tokenizers[modality].id_to_token(token)
    print(f"most frequent maskable token: {name!r} (id {token})")
    print(f"constant-prediction masked accuracy on validation: {accuracy:.4f}")


if __name__ == "__main__":
    main()
