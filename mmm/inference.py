"""Using a trained discrete model: fill in mask tokens, and embed sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import DiscreteTokenizer


@dataclass(frozen=True)
class Candidate:
    """One prediction for a masked position."""

    token: str
    token_id: int
    probability: float


def load_module(checkpoint: str, map_location: str = "cpu") -> MaskedModelingModule:
    """Load a module from a Lightning checkpoint written by ``mmm fit`` or by a library run.

    Checkpoints hold the tokenizer and encoder configuration, so they are loaded with
    ``weights_only=False``: load only checkpoints you trust.
    """
    module = MaskedModelingModule.load_from_checkpoint(
        checkpoint, map_location=map_location, weights_only=False
    )
    return module.eval()


@torch.no_grad()
def fill_mask(
    module: MaskedModelingModule, texts: list[str], top_k: int = 5
) -> list[list[list[Candidate]]]:
    """Top-k predictions with probabilities for every mask token of every text.

    Texts spell the mask with the tokenizer's mask token (``[MASK]`` for WordPiece tokenizers,
    ``<mask>`` for BPE ones). Returns, per text, one list of candidates per mask token.

    Raises:
        ValueError: naming a text that contains no mask token.
    """
    tokenizer = module.tokenizer
    if not isinstance(tokenizer, DiscreteTokenizer):
        raise TypeError("fill_mask needs a discrete modality (text, protein, SMILES)")
    spec = tokenizer.spec
    batch = {k: v.to(module.device) for k, v in module.tokenizer.collate(texts).items()}
    positions = batch["input_ids"] == spec.mask_token_id  # (B, L)
    for text, row in zip(texts, positions, strict=True):
        if not row.any():
            raise ValueError(f"no mask token in {text!r}; write masks as {tokenizer.mask_token!r}")
    hidden = module(batch)  # (B, L, D)
    probs = module.modality.predict(hidden, positions, None).float().softmax(dim=-1)  # (N, V)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    results: list[list[list[Candidate]]] = [[] for _ in texts]
    rows = positions.nonzero()[:, 0].tolist()
    for row, values, ids in zip(rows, top.values.tolist(), top.indices.tolist(), strict=True):
        results[row].append(
            [Candidate(tokenizer.id_to_token(i), i, p) for i, p in zip(ids, values, strict=True)]
        )
    return results
