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


@torch.no_grad()
def embed_sequences(
    module: MaskedModelingModule, sequences: list[str], batch_size: int = 32
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Encoder states of unmasked sequences, per token and mean-pooled, for any discrete
    modality (text, protein, SMILES).

    Sequences are batched through the tokenizer's ``collate`` and ``MaskedModelingModule.embed``
    in eval mode (no dropout, no masking), so the same input always gives the same vectors.
    The module's train/eval mode is restored afterwards.

    Args:
        module: a trained module whose tokenizer is a ``DiscreteTokenizer``.
        sequences: raw strings, as the tokenizer's ``collate`` accepts them.
        batch_size: sequences per forward pass.

    Returns:
        ``per_token``: one float32 CPU tensor (L_i, D) per sequence, its real positions
        (``attention_mask``), special tokens such as ``<cls>``/``<eos>`` or ``[CLS]``/``[SEP]``
        included; and ``pooled``: (N, D) float32, the mean of each sequence's ``per_token`` rows.

    Raises:
        TypeError: when the module's modality is not discrete.
        ValueError: when ``batch_size`` is not positive.
    """
    tokenizer = module.tokenizer
    if not isinstance(tokenizer, DiscreteTokenizer):
        raise TypeError("embed_sequences needs a discrete modality (text, protein, SMILES)")
    if batch_size < 1:
        raise ValueError(f"embed_sequences: batch_size must be >= 1, got {batch_size}")
    was_training = module.training
    module.eval()
    per_token: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        batch = {k: v.to(module.device) for k, v in tokenizer.collate(chunk).items()}
        hidden, mean = module.embed(batch)  # (B, L, D), (B, D)
        for states, real in zip(hidden.float().cpu(), batch["attention_mask"].cpu(), strict=True):
            per_token.append(states[real])  # (L_i, D)
        pooled.append(mean.float().cpu())
    module.train(was_training)
    dim = module.encoder.dim
    return per_token, torch.cat(pooled) if pooled else torch.empty(0, dim)
