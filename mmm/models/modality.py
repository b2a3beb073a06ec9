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

from mmm.masking import MaskedPositions, Masking, corrupt_tokens
from mmm.models.embedders import PatchEmbedder, TokenEmbedder
from mmm.models.encoder import Encoder
from mmm.models.heads import PatchDecoder, PatchDecoderConfig, TokenHead
from mmm.tokenizers.base import ContinuousSpec, DiscreteSpec, ModalitySpec


def reduce_loss(per_position: Tensor, weight: Tensor | None) -> Tensor:
    """The mean of per-position losses (N,), or their ``weight``-weighted sum."""
    if weight is None:
        return per_position.mean()
    return (per_position * weight.to(per_position.dtype)).sum()


class Modality(nn.Module, ABC):
    """One modality's embedder, head and loss around a shared encoder."""

    #: ``True``: hidden positions are dropped before the encoder, which sees only visible ones
    #: (MAE). ``False``: hidden positions stay in the sequence with corrupted inputs (BERT).
    visible_only: bool = False

    @abstractmethod
    def embed(self, batch: dict[str, Tensor], masked: MaskedPositions | None) -> Tensor:
        """Embed every position of the modality's batch, (B, L, D): hidden positions already
        corrupted when they stay in the encoder's input (discrete tokens); ``masked=None``
        embeds the batch as it is."""

    def add_to_embeddings(self, offset: Tensor) -> None:
        """Fold a constant ``offset`` (D,) added to every embedded position (a multimodal
        model's modality embedding) into the embedder, so that it computes it alone."""
        self.embedder.add_to_output(offset)

    def encoder_positions(self, batch: dict[str, Tensor], masked: MaskedPositions | None) -> Tensor:
        """(B, L) bool: the positions the encoder sees. Real positions, less the hidden ones
        when ``visible_only`` (MAE), less those the masking left out (4M budgets)."""
        seen = batch["attention_mask"]
        if masked is None:
            return seen
        if self.visible_only:
            seen = seen & ~masked.mask
        return seen if masked.left_out is None else seen & ~masked.left_out

    @abstractmethod
    def predict(
        self,
        hidden: Tensor,
        mask: Tensor,
        seen: Tensor | None = None,
        attention_mask: Tensor | None = None,
        context: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Predictions at hidden positions, (N, ...) in row-major order of ``mask``.

        Args:
            hidden: (B, L, D) encoder states in the modality's layout, zeros at positions the
                encoder did not see (``mmm.models.sequences.unpack_segments``).
            mask: (B, L) bool hidden positions.
            seen: (B, L) bool positions the encoder saw (``encoder_positions``); needed when
                ``visible_only``.
            attention_mask: (B, L) bool real positions; needed when ``visible_only``.
            context: the encoder states of the sample's other modalities, (B, T, D), and
                their real positions, (B, T) (``mmm.models.sequences.context_of``); a
                ``visible_only`` modality's decoder reads them (its hidden positions are not
                in the trunk), the others need not (theirs attended to them there).
        """

    @abstractmethod
    def targets(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        """Targets at hidden positions, (N, ...) in row-major order of ``mask``."""

    @abstractmethod
    def loss_and_metrics(
        self, pred: Tensor, target: Tensor, weight: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss over hidden positions and the metrics logged beside it (means over hidden
        positions).

        Args:
            pred: (N, ...) predictions at hidden positions.
            target: (N, ...) targets.
            weight: (N,) per-position loss weights (the loss is the weighted sum of the
                positions' losses, e.g. masked diffusion's ELBO weights), or ``None`` for the
                mean over hidden positions.
        """

    def count_lengths(self, batch: dict[str, Tensor]) -> None:
        """Record a training batch's lengths for the epoch's statistics; modalities without
        variable lengths record nothing."""

    def metrics_from_loss(self, loss: Tensor) -> dict[str, Tensor]:
        """Metrics that are functions of the mean loss (e.g. perplexity), computed from the
        per-step loss in training and from the epoch's mean loss in evaluation."""
        return {}


class DiscreteModality(Modality):
    """Discrete tokens: BERT corruption, token embedder, tied masked-LM head, cross-entropy.

    Args:
        spec: vocabulary and special ids from the tokenizer.
        dim: encoder width.
        mask_replace_prob: share of hidden positions shown as the mask token.
        random_replace_prob: share of hidden positions shown as a random token.
        tie_weights: share the embedding matrix with the output projection.
        dropout: embedding dropout.
        layer_norm_eps: epsilon of the embedder's and head's LayerNorms.
    """

    def __init__(
        self,
        spec: DiscreteSpec,
        dim: int,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        tie_weights: bool = True,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.embedder = TokenEmbedder(
            spec.vocab_size,
            dim,
            spec.max_length,
            spec.pad_token_id,
            dropout=dropout,
            layer_norm_eps=layer_norm_eps,
        )
        self.head = TokenHead(
            dim,
            spec.vocab_size,
            tied_embedding=self.embedder.tokens if tie_weights else None,
            layer_norm_eps=layer_norm_eps,
        )
        # How many training samples had each number of maskable positions: saved with the
        # checkpoint so that generation can draw lengths like the training data's.
        self.register_buffer("length_counts", torch.zeros(spec.max_length + 1, dtype=torch.long))

    @torch.no_grad()
    def count_lengths(self, batch: dict[str, Tensor]) -> None:
        """Add the lengths (maskable positions) of a training batch's sequences to the counts:
        one per row, or one per document of packed rows (``position_ids`` restart at 0 in
        every document)."""
        top = self.length_counts.shape[0] - 1
        maskable = batch["maskable"]  # (B, L)
        positions = batch.get("position_ids")
        if positions is None:
            lengths = maskable.sum(dim=1)  # (B,)
        else:
            starts = (positions == 0) & batch["attention_mask"]  # (B, L) first token of each
            document = starts.flatten().long().cumsum(0) - 1  # (B * L,) document of a position
            counts = torch.zeros(int(starts.sum()), dtype=torch.long, device=maskable.device)
            lengths = counts.index_add_(0, document.clamp_min(0), maskable.flatten().long())
        self.length_counts += torch.bincount(lengths.clamp(max=top), minlength=top + 1)

    def embed(self, batch: dict[str, Tensor], masked: MaskedPositions | None) -> Tensor:
        ids = batch["input_ids"]
        if masked is not None:
            ids = self.corrupt(ids, masked)
        return self.embedder(ids, batch.get("position_ids"))  # (B, L, D)

    def corrupt(self, input_ids: Tensor, masked: MaskedPositions) -> Tensor:
        """BERT's corruption of the hidden positions; rows marked ``mask_only`` show the mask
        token at every hidden position (nothing of a dropped modality may leak)."""
        corrupted = corrupt_tokens(
            input_ids,
            masked.mask,
            mask_token_id=self.spec.mask_token_id,
            vocab_size=self.spec.vocab_size,
            mask_replace_prob=self.mask_replace_prob,
            random_replace_prob=self.random_replace_prob,
        )
        if masked.mask_only is None:
            return corrupted
        only = masked.mask & masked.mask_only.unsqueeze(1)  # (B, L)
        return corrupted.masked_fill(only, self.spec.mask_token_id)

    def predict(self, hidden, mask, seen=None, attention_mask=None, context=None):
        return self.head(hidden[mask])  # (N, D) -> (N, V), only hidden positions

    def targets(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        return batch["input_ids"][mask]  # (N,)

    def loss_and_metrics(
        self, pred: Tensor, target: Tensor, weight: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if target.numel() == 0:  # nothing hidden: zero loss that still reaches every parameter
            zero = pred.sum() * 0.0
            return zero, {"masked_accuracy": zero.detach()}
        loss = reduce_loss(F.cross_entropy(pred.float(), target, reduction="none"), weight)
        with torch.no_grad():
            accuracy = (pred.argmax(dim=-1) == target).float().mean()
        return loss, {"masked_accuracy": accuracy}

    def metrics_from_loss(self, loss: Tensor) -> dict[str, Tensor]:
        return {"perplexity": torch.exp(loss.detach().float().clamp(max=math.log(1e6)))}


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Each vector normalized by its own mean and variance (MAE's ``norm_pix_loss`` target).

    Args:
        patches: (..., P).
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)  # unbiased, as in MAE and Hugging Face ViTMAE
    return (patches - mean) / (var + eps).sqrt()


class ContinuousModality(Modality):
    """Continuous vectors (image patches, audio frames), MAE style: the encoder sees visible
    positions only, a lightweight decoder regresses the hidden ones, MSE over hidden positions.

    The tokenizer provides raw vectors as ``batch["patches"]`` (B, L, P); normalizing targets
    per patch (``norm_pix_loss``) happens here, so every continuous modality gets it.

    Args:
        spec: vector length, sequence length and grid from the tokenizer.
        dim: encoder width.
        decoder: decoder width/depth/heads and the target normalization.
    """

    visible_only = True

    def __init__(
        self, spec: ContinuousSpec, dim: int, decoder: PatchDecoderConfig | None = None
    ) -> None:
        super().__init__()
        config = decoder if decoder is not None else PatchDecoderConfig()
        self.spec = spec
        self.norm_pix_loss = config.norm_pix_loss
        self.embedder = PatchEmbedder(spec.input_dim, dim, spec.max_length, spec.grid)
        self.head = PatchDecoder(dim, spec.input_dim, spec.max_length, spec.grid, config)

    def embed(self, batch: dict[str, Tensor], masked: MaskedPositions | None) -> Tensor:
        return self.embedder(batch["patches"])  # (B, L, D); hidden ones are dropped later

    def predict(self, hidden, mask, seen=None, attention_mask=None, context=None):
        if seen is None or attention_mask is None:
            raise ValueError("ContinuousModality.predict needs the seen and real positions")
        return self.head(hidden, mask, seen, attention_mask, context)  # (N, P)

    def targets(self, batch: dict[str, Tensor], mask: Tensor) -> Tensor:
        target = batch["patches"][mask].float()  # (N, P)
        if not self.norm_pix_loss or target.shape[0] == 0:  # nothing hidden: nothing to scale
            return target
        return normalize_patches(target)

    def loss_and_metrics(
        self, pred: Tensor, target: Tensor, weight: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if target.numel() == 0:  # nothing hidden: zero loss that still reaches every parameter
            return pred.sum() * 0.0, {}
        per_position = F.mse_loss(pred.float(), target, reduction="none").mean(dim=-1)  # (N,)
        return reduce_loss(per_position, weight), {}

    @torch.no_grad()
    def reconstruct(self, batch: dict[str, Tensor], mask: Tensor, pred: Tensor) -> Tensor:
        """The input vectors with predictions pasted at hidden positions, (B, L, P), in the
        tokenizer's value range: normalized predictions are mapped back with each original
        patch's mean and variance (MAE's visualization)."""
        patches = batch["patches"].float().clone()  # (B, L, P)
        values = pred.float()  # (N, P)
        if self.norm_pix_loss:
            original = patches[mask]  # (N, P)
            std = (original.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            values = values * std + original.mean(dim=-1, keepdim=True)
        patches[mask] = values
        return patches

    @torch.no_grad()
    def generated(self, mask: Tensor, pred: Tensor) -> Tensor:
        """The vectors of samples generated whole from their other modalities (nothing of
        them seen), (B, L, P): predictions at ``mask`` (B, L), zeros elsewhere. When the
        targets were normalized per patch (``norm_pix_loss``), a patch's level and contrast
        were never learned, only its shape: each sample's predictions are then stretched to
        [0, 1], a picture of the shapes, not of the levels."""
        values = torch.zeros(*mask.shape, pred.shape[-1], device=pred.device)  # (B, L, P)
        values[mask] = pred.float()
        if not self.norm_pix_loss:
            return values
        flat = values.flatten(1)  # (B, L * P)
        low = flat.min(dim=1).values.view(-1, 1, 1)
        high = flat.max(dim=1).values.view(-1, 1, 1)
        return (values - low) / (high - low).clamp_min(1e-6)


ModalityBuilder = Callable[[ModalitySpec, Encoder, Masking, PatchDecoderConfig | None], Modality]


def _build_discrete_modality(
    spec: ModalitySpec, encoder: Encoder, masking: Masking, decoder: PatchDecoderConfig | None
) -> Modality:
    return DiscreteModality(
        spec,
        encoder.dim,
        mask_replace_prob=masking.mask_replace_prob,
        random_replace_prob=masking.random_replace_prob,
        layer_norm_eps=encoder.layer_norm_eps,
    )


def _build_continuous_modality(
    spec: ModalitySpec, encoder: Encoder, masking: Masking, decoder: PatchDecoderConfig | None
) -> Modality:
    return ContinuousModality(spec, encoder.dim, decoder)


#: Which modality serves a tokenizer, by the type of its spec. A new target kind registers here.
MODALITY_BUILDERS: dict[type, ModalityBuilder] = {
    DiscreteSpec: _build_discrete_modality,
    ContinuousSpec: _build_continuous_modality,
}


def build_modality(
    spec: ModalitySpec,
    encoder: Encoder,
    masking: Masking,
    decoder: PatchDecoderConfig | None = None,
) -> Modality:
    """The modality for a tokenizer's ``spec`` around ``encoder`` (its width, and its LayerNorm
    epsilon for discrete embedders and heads); ``decoder`` configures continuous modalities
    (discrete ones ignore it)."""
    try:
        builder = MODALITY_BUILDERS[type(spec)]
    except KeyError:
        raise TypeError(f"no modality is registered for spec type {type(spec).__name__}") from None
    return builder(spec, encoder, masking, decoder)
