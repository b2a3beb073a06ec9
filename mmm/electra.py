"""ELECTRA's replaced-token detection, as an objective on the shared trunk and masking.

Clark et al., "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than Generators"
(ICLR 2020). Masked LM learns from the 15% of positions it hides; ELECTRA learns from every
position. Per discrete modality:

1. the modality's masking hides positions, and its corruption shows them to a small
   *generator* (a masked LM ``width_fraction`` as wide and ``depth_fraction`` as deep as the
   trunk), which reads the modality's own embeddings (token, position, LayerNorm: shared with
   the discriminator, as in the paper) through a projection to its width;
2. a token is sampled from the generator's softmax at every hidden position (no gradient
   flows through the sample) and written into the original sequence;
3. the trunk (the *discriminator*: the model that is kept, exported and fine-tuned) reads the
   sequence with the samples in it, alongside the batch's other modalities, and a small head
   tells every real position original from replaced. A sample equal to the original token
   counts as original; padding never counts.

The loss is ``generator MLM loss + discriminator_weight * discriminator loss`` (50 in the
paper). Which parameters each part reaches:

- the generator's projection, trunk and head: the MLM loss only (the discriminator reads
  sampled token ids, through which no gradient passes);
- the trunk and the discriminator head: the discriminator loss only;
- the shared embedder: both (the paper's embedding sharing); with ``share_embeddings=False``
  the generator has its own embedder and the two share nothing.

The modality's own masked-LM head is not used (the generator predicts the hidden tokens): it
is frozen and kept only so that the export keeps its layout; the exported masked LM's
predictions are untrained, its encoder (the discriminator) is what an ELECTRA run trains.

The original implementation (google-research/electra, TensorFlow) and Hugging Face's
``ElectraForPreTraining`` were read for the details (the generator head's up-projection to
the embedding width, the discriminator head's dense-GELU-dense, the loss over real positions);
this module is written against mmm's modalities and trunk, not copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_auroc

from mmm.masking import MaskedPositions
from mmm.models.embedders import TokenEmbedder
from mmm.models.encoder import Encoder
from mmm.models.heads import TokenHead
from mmm.models.modality import Modality
from mmm.tokenizers.base import Tokenizer
from mmm.tokenizers.multimodal import ModalityBatch


@dataclass
class ElectraConfig:
    """ELECTRA's generator and loss weight (``MaskedModelingModule(electra=...)``)."""

    width_fraction: float = 0.25
    """Generator width as a share of the trunk's (the paper: 1/4 to 1/3 works best), rounded
    to whole attention heads of the trunk's head width, at least one."""
    depth_fraction: float = 1.0
    """Generator depth as a share of the trunk's blocks (the paper keeps the depth), at least
    one block."""
    discriminator_weight: float = 50.0
    """Weight of the discriminator's loss against the generator's MLM loss (the paper's
    lambda = 50: the binary loss is far smaller than the MLM loss)."""
    share_embeddings: bool = True
    """The generator reads the modality's embedder (tokens, positions, LayerNorm) and its
    head is tied to the same token table; ``False``: the generator has its own embedder."""
    temperature: float = 1.0
    """Temperature of the generator's softmax that replacements are sampled from."""

    def __post_init__(self) -> None:
        for name in ("width_fraction", "depth_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"ElectraConfig: {name} must lie in (0, 1], got {value}")
        if self.discriminator_weight <= 0:
            raise ValueError(
                f"ElectraConfig: discriminator_weight must be > 0, got {self.discriminator_weight}"
            )
        if self.temperature <= 0:
            raise ValueError(f"ElectraConfig: temperature must be > 0, got {self.temperature}")


@dataclass
class ReplacedTokenOutput:
    """One modality's part of an ELECTRA pass."""

    loss: Tensor  # generator MLM loss + discriminator_weight * discriminator loss
    generator_loss: Tensor
    discriminator_loss: Tensor
    metrics: dict[str, Tensor]
    counts: dict[str, int]  # positions a metric is a mean over, where not the hidden ones
    pred: Tensor  # (N, V) generator logits at hidden positions
    target: Tensor  # (N,) original tokens at hidden positions


def replaced_labels(original: Tensor, replaced: Tensor, real: Tensor) -> Tensor:
    """Discriminator targets: 1 where the token shown differs from the original, else 0; a
    sampled token equal to the original counts as original (the paper).

    Args:
        original: (B, L) long token ids.
        replaced: (B, L) long token ids the discriminator reads.
        real: (B, L) bool non-padding positions.

    Returns:
        (R,) float labels of the real positions, row-major (R = ``real.sum()``).
    """
    return (replaced != original)[real].float()


def sample_replacements(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """One token per row drawn from ``softmax(logits / temperature)``, under the global RNG
    (which mmm seeds per step). The draw carries no gradient.

    Args:
        logits: (N, V).

    Returns:
        (N,) long.
    """
    if logits.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=logits.device)
    probabilities = F.softmax(logits.detach().float() / temperature, dim=-1)  # (N, V)
    return torch.multinomial(probabilities, num_samples=1).squeeze(-1)  # (N,)


class Generator(nn.Module):
    """A small masked LM for one discrete modality: ``width_fraction`` of the trunk's width,
    ``depth_fraction`` of its depth, with a head that maps up to the embedding width and is
    tied to the (shared or own) token table.

    Args:
        modality: the discrete modality it proposes replacements for (its embedder is shared
            when ``config.share_embeddings``).
        trunk: the discriminator's trunk, scaled down (``Encoder.scaled``).
        config: the sizes and the sharing.
    """

    def __init__(self, modality: Modality, trunk: Encoder, config: ElectraConfig) -> None:
        super().__init__()
        self.encoder = trunk.scaled(config.width_fraction, config.depth_fraction)
        width, spec = self.encoder.dim, modality.spec
        self.embedder = None
        if config.share_embeddings:
            table = modality.embedder.tokens
            # ELECTRA's ``embeddings_project``: shared embeddings, a narrower generator.
            self.project = nn.Linear(trunk.dim, width) if width != trunk.dim else nn.Identity()
        else:
            self.embedder = TokenEmbedder(
                spec.vocab_size,
                width,
                spec.max_length,
                spec.pad_token_id,
                layer_norm_eps=trunk.layer_norm_eps,
            )
            table, self.project = self.embedder.tokens, nn.Identity()
        self.head = TokenHead(
            table.embedding_dim,
            spec.vocab_size,
            tied_embedding=table,
            layer_norm_eps=trunk.layer_norm_eps,
            input_dim=width,
        )

    def forward(self, modality: Modality, batch: dict[str, Tensor], masked: MaskedPositions):
        """Logits at the hidden positions, (N, V) in row-major order of ``masked.mask``, from
        the batch shown with the modality's corruption of its hidden positions."""
        if self.embedder is None:
            x = self.project(modality.embed(batch, masked))  # (B, L, D) -> (B, L, W)
        else:
            ids = modality.corrupt(batch["input_ids"], masked)
            x = self.embedder(ids, batch.get("position_ids"))  # (B, L, W)
        real = batch["attention_mask"]
        padding = None if bool(real.all()) else real
        hidden = self.encoder(x, padding, document_ids=batch.get("document_ids"))  # (B, L, W)
        return self.head(hidden[masked.mask])  # (N, W) -> (N, V)


class DiscriminatorHead(nn.Module):
    """Original or replaced, per position: dense -> GELU -> one logit (Hugging Face's
    ``ElectraDiscriminatorPredictions``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.prediction = nn.Linear(dim, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        """(R, D) -> (R,) logits of "replaced"."""
        return self.prediction(F.gelu(self.dense(hidden))).squeeze(-1)


class Electra(nn.Module):
    """The generators and discriminator heads of every modality of a module, and the pass
    that uses them (``MaskedModelingModule.forward_masked`` calls it when ``electra`` is set).

    Args:
        config: sizes, loss weight, sharing.
        modalities: the module's modalities (every one discrete); their masked-LM heads are
            frozen, since the generators predict the hidden tokens.
        tokenizers: the module's tokenizers, asked whether each modality is discrete.
        trunk: the shared trunk (the discriminator), which the generators scale down.
    """

    def __init__(
        self,
        config: ElectraConfig,
        modalities: nn.ModuleDict,
        tokenizers: dict[str, Tokenizer],
        trunk: Encoder,
    ) -> None:
        super().__init__()
        continuous = [name for name, tokenizer in tokenizers.items() if not tokenizer.discrete]
        if continuous:
            raise ValueError(
                f"ELECTRA replaces tokens of discrete modalities; {continuous} are continuous: "
                "train them without electra"
            )
        self.config = config
        self.generators = nn.ModuleDict(
            {name: Generator(modality, trunk, config) for name, modality in modalities.items()}
        )
        self.discriminators = nn.ModuleDict(
            {name: DiscriminatorHead(trunk.dim) for name in modalities}
        )
        for modality in modalities.values():
            _freeze_own_head(modality)

    def forward(
        self,
        inputs: ModalityBatch,
        masked: dict[str, MaskedPositions],
        modalities: nn.ModuleDict,
        encode: Callable[[ModalityBatch], dict[str, Tensor]],
    ) -> dict[str, ReplacedTokenOutput]:
        """Generate replacements, encode the batch carrying them with ``encode`` (the trunk:
        modality -> (B_m, L_m, D) states), and score generator and discriminator."""
        logits, shown = {}, {}
        for name, sub in inputs.items():
            logits[name] = self.generators[name](modalities[name], sub, masked[name])  # (N, V)
            sampled = sample_replacements(logits[name], self.config.temperature)  # (N,)
            ids = sub["input_ids"].masked_scatter(masked[name].mask, sampled)  # (B_m, L_m)
            shown[name] = {**sub, "input_ids": ids}
        states = encode(shown)
        return {
            name: self._score(
                name, modalities[name], sub, shown[name], masked[name], logits[name], states[name]
            )
            for name, sub in inputs.items()
        }

    def _score(
        self,
        name: str,
        modality: Modality,
        sub: dict[str, Tensor],
        shown: dict[str, Tensor],
        masked: MaskedPositions,
        logits: Tensor,
        states: Tensor,
    ) -> ReplacedTokenOutput:
        """The generator's MLM loss and accuracy at the hidden positions (the modality's own
        loss), the discriminator's binary loss, accuracy and AUROC at the real ones."""
        target = modality.targets(sub, masked.mask)  # (N,)
        weight = masked.position_weights(sub["maskable"])
        generator_loss, metrics = modality.loss_and_metrics(logits, target, weight=weight)
        real = sub["attention_mask"]
        labels = replaced_labels(sub["input_ids"], shown["input_ids"], real)  # (R,)
        scores = self.discriminators[name](states[real]).float()  # (R, D) -> (R,)
        discriminator_loss = F.binary_cross_entropy_with_logits(scores, labels)
        loss = generator_loss + self.config.discriminator_weight * discriminator_loss
        with torch.no_grad():
            replaced = {
                "replaced_accuracy": ((scores > 0).float() == labels).float().mean(),
                "replaced_auroc": binary_auroc(scores, labels.long(), validate_args=False),
                "replaced_share": labels.mean(),
                "discriminator_loss": discriminator_loss.detach(),
            }
        metrics = {**metrics, "generator_loss": generator_loss.detach(), **replaced}
        counts = dict.fromkeys(replaced, int(real.sum()))
        return ReplacedTokenOutput(
            loss, generator_loss, discriminator_loss, metrics, counts, logits, target
        )


def _freeze_own_head(modality: Modality) -> None:
    """Freeze a modality's masked-LM head but not the token table its output projection is
    tied to (the embedder trains): optimizers and DDP then skip the unused weights."""
    for param in modality.head.parameters():
        if param is not modality.embedder.tokens.weight:
            param.requires_grad_(False)
