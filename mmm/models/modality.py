"""The model side of a modality: an embedder/head pair plus its target kind and loss.

The objective (``mmm.module.MaskedModelingModule``) is written once against this interface:
it chooses hidden positions, asks the modality to embed the batch, runs the shared encoder, and
asks the modality to predict and score the hidden targets. A discrete modality (text, protein,
SMILES) predicts token ids with cross-entropy; a continuous one (image patches, audio frames)
regresses vectors. Which modality class serves a tokenizer follows from the type of its spec.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmm.masking import Masking, corrupt_tokens
from mmm.models.embedders import TokenEmbedder
from mmm.models.heads import TokenHead
from mmm.tokenizers.base import DiscreteSpec, ModalitySpec


class Modality(nn.Module, ABC):
    """One modality's embedder, head and loss around a shared encoder."""

    #: ``True``: hidden positions are dropped before the encoder, which sees only visible ones
    #: (MAE). ``False``: hidden positions stay in the sequence with corrupted inputs (BERT).
    visible_only: bool = False

    @abstractmethod
    def embed(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        """Embed every position of the batch, hidden ones already corrupted when
        ``visible_only`` is ``False``. Returns (B, L, D)."""

    @abstractmethod
    def predict(self, hidden: Tensor, mask: Tensor, ids_keep: Tensor | None) -> Tensor:
        """Predictions at hidden positions, (N, ...) in row-major order of ``mask``.

        Args:
            hidden: encoder states, (B, L, D), or (B, V, D) when ``visible_only``.
            mask: (B, L) bool hidden positions.
            ids_keep: (B, V) positions of ``hidden`` in the full sequence when ``visible_only``.
        """

    @abstractmethod
    def targets(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        """Targets at hidden positions, (N, ...) in row-major order of ``mask``."""

    @abstractmethod
    def loss_and_metrics(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss over hidden positions and the metrics logged beside it (means over hidden
        positions)."""

    def metrics_from_loss(self, loss: Tensor) -> dict[str, Tensor]:
        """Metrics that are functions of the mean loss (e.g. perplexity), computed from the
        per-step loss in training and from the epoch's mean loss in evaluation."""
        return {}


class TokenModality(Modality):
    """Discrete tokens: BERT corruption, token embedder, tied masked-LM head, cross-entropy.

    Args:
        spec: vocabulary and special ids from the tokenizer.
        dim: encoder width.
        mask_replace_prob: share of hidden positions shown as the mask token.
        random_replace_prob: share of hidden positions shown as a random token.
        tie_weights: share the embedding matrix with the output projection.
        dropout: embedding dropout.
    """

    def __init__(
        self,
        spec: DiscreteSpec,
        dim: int,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        tie_weights: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.embedder = TokenEmbedder(
            spec.vocab_size, dim, spec.max_length, spec.pad_token_id, dropout=dropout
        )
        self.head = TokenHead(
            dim, spec.vocab_size, tied_embedding=self.embedder.tokens if tie_weights else None
        )

    def embed(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        corrupted = corrupt_tokens(
            batch["input_ids"],
            mask,
            mask_token_id=self.spec.mask_token_id,
            vocab_size=self.spec.vocab_size,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
        )
        return self.embedder(corrupted)  # (B, L, D)

    def predict(self, hidden: Tensor, mask: Tensor, ids_keep: Tensor | None) -> Tensor:
        return self.head(hidden[mask])  # (N, D) -> (N, V), only hidden positions

    def targets(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        return batch["input_ids"][mask]  # (N,)

    def loss_and_metrics(self, pred: Tensor, target: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if target.numel() == 0:  # nothing hidden: zero loss that still reaches every parameter
            zero = pred.sum() * 0.0
            return zero, {"masked_accuracy": zero.detach()}
        loss = F.cross_entropy(pred.float(), target)
        with torch.no_grad():
            accuracy = (pred.argmax(dim=-1) == target).float().mean()
        return loss, {"masked_accuracy": accuracy}

    def metrics_from_loss(self, loss: Tensor) -> dict[str, Tensor]:
        return {"perplexity": torch.exp(loss.detach().float().clamp(max=math.log(1e6)))}


ModalityBuilder = Callable[[ModalitySpec, int, Masking], Modality]


def _build_token_modality(spec: ModalitySpec, dim: int, masking: Masking) -> Modality:
    return TokenModality(
        spec,
        dim,
        mask_replace_prob=masking.mask_replace_prob,
        random_replace_prob=masking.random_replace_prob,
    )


#: Which modality serves a tokenizer, by the type of its spec. A new target kind registers here.
MODALITY_BUILDERS: dict[type, ModalityBuilder] = {DiscreteSpec: _build_token_modality}


def build_modality(spec: ModalitySpec, dim: int, masking: Masking) -> Modality:
    """The modality for a tokenizer's ``spec`` around an encoder of width ``dim``."""
    try:
        builder = MODALITY_BUILDERS[type(spec)]
    except KeyError:
        raise TypeError(f"no modality is registered for spec type {type(spec).__name__}") from None
    return builder(spec, dim, masking)
