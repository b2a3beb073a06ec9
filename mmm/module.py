"""The one objective: hide positions, encode what is left, predict what was hidden.

``MaskedModelingModule`` is the single LightningModule of mmm. It is written against the
``Tokenizer`` (data side), ``Modality`` (embedder/head pair) and ``Encoder`` interfaces, so the
same training step serves BERT-style text and MAE-style images: a modality says whether the
encoder sees hidden positions in corrupted form (discrete tokens) or only visible positions
(continuous patches), and what its loss is. The loss counts hidden positions only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from mmm.masking import MaskedPositions, Masking, RandomMasking, visible_indices
from mmm.models.encoder import Encoder, TransformerEncoder, gather_positions
from mmm.models.heads import PatchDecoderConfig
from mmm.models.modality import VisibleLayout, build_modality
from mmm.rng import seeded
from mmm.tokenizers.base import Tokenizer


@dataclass
class MaskedOutput:
    """One masked-prediction pass over a batch."""

    loss: Tensor
    metrics: dict[str, Tensor]
    mask: Tensor  # (B, L) bool hidden positions
    pred: Tensor  # (N, ...) predictions at hidden positions
    target: Tensor  # (N, ...) targets at hidden positions
    ratio: Tensor  # (B,) per-sample masking ratios
    loss_count: int  # positions the loss is a mean over (hidden, or maskable when per token)


class MaskedModelingModule(L.LightningModule):
    """Masked modeling for any modality on a shared Transformer encoder.

    Args:
        tokenizer: the modality's tokenizer; its ``spec`` sizes the embedder and head. The
            datamodule receives the same tokenizer (LightningCLI links them).
        encoder: the shared trunk (default: a 4-layer, 256-wide pre-LN Transformer).
        masking: which positions are hidden and how (default: 15% random, 80/10/10).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to biases, norms and embeddings).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps; then cosine decay to zero at ``max_steps`` when the
            trainer sets it, else a constant rate.
        decoder: for continuous modalities (images, audio), the MAE decoder's width, depth and
            heads and whether targets are normalized per patch; discrete modalities ignore it.
        init_from: a local ``EsmForMaskedLM`` directory (``save_pretrained``, or ``mmm export``)
            whose weights start the embedder, trunk and head (continued pretraining); see
            ``mmm.export.init_from_esm``.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        encoder: Encoder | None = None,
        masking: Masking | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        decoder: PatchDecoderConfig | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=_unsaved_hyperparameters())
        self.tokenizer = tokenizer
        self.encoder = encoder if encoder is not None else TransformerEncoder()
        self.masking = masking if masking is not None else RandomMasking()
        self.modality = build_modality(tokenizer.spec, self.encoder.dim, self.masking, decoder)
        if init_from is not None:
            from mmm.export import init_from_esm  # mmm.export imports this module

            init_from_esm(self, init_from)
        self._epoch_means = torch.nn.ModuleDict()  # stage -> name -> MeanMetric, made on use
        # How many training samples had each number of maskable positions: saved with the
        # checkpoint so that generation can draw lengths like the training data's.
        lengths = torch.zeros(tokenizer.spec.max_length + 1, dtype=torch.long)
        self.register_buffer("length_counts", lengths)

    # ----------------------------------------------------------------------------- stages
    def _step(self) -> int:
        return self.global_step if self._trainer is not None else 0

    def choose_mask(self, batch: dict[str, Tensor]) -> MaskedPositions:
        """Hidden positions of the batch, with per-sample ratios and loss weights."""
        return self.masking(
            batch["maskable"],
            step=self._step(),
            word_ids=batch.get("word_ids"),
            grid=getattr(self.tokenizer.spec, "grid", None),
        )

    def encode(self, x: Tensor, padding_mask: Tensor, document_ids: Tensor | None = None) -> Tensor:
        """Run the trunk; skip the attention mask when nothing is padding (fastest SDPA path).
        ``document_ids`` (B, L) restricts attention to each packed document."""
        padding = None if bool(padding_mask.all()) else padding_mask
        return self.encoder(x, padding, document_ids=document_ids)

    def forward_masked(
        self, batch: dict[str, Tensor], masked: MaskedPositions | None = None
    ) -> MaskedOutput:
        """Mask (or take ``masked``), embed, encode (visible positions only for MAE-style
        modalities), predict and score the hidden positions."""
        masked = masked if masked is not None else self.choose_mask(batch)
        mask = masked.mask
        x = self.modality.embed(batch, mask)  # (B, L, D)
        visible = None
        padding = batch["attention_mask"]  # (B, L)
        if self.modality.visible_only:
            ids_keep, padding = visible_indices(batch["attention_mask"] & ~mask)  # (B, V)
            visible = VisibleLayout(ids_keep, padding, batch["attention_mask"])
            x = gather_positions(x, ids_keep)  # (B, V, D)
        hidden = self.encode(x, padding, batch.get("document_ids"))
        pred = self.modality.predict(hidden, mask, visible)
        target = self.modality.targets(batch, mask)
        weight = masked.position_weights(batch["maskable"])  # (N,) or None: plain mean
        loss, metrics = self.modality.loss_and_metrics(pred, target, weight=weight)
        count = masked.loss_count(batch["maskable"])
        return MaskedOutput(loss, metrics, mask, pred, target, masked.ratio, count)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Encoder states of an unmasked batch, (B, L, D)."""
        x = self.modality.embed(batch, torch.zeros_like(batch["attention_mask"]))
        return self.encode(x, batch["attention_mask"], batch.get("document_ids"))

    @torch.no_grad()
    def embed(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Per-position states (B, L, D) and their mean over real positions (B, D)."""
        hidden = self(batch)
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return hidden, pooled

    # ------------------------------------------------------------------------ lightning
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.forward_masked(batch)
        self._check_finite(out.loss, f"training step {self.global_step}", across_ranks=True)
        size = out.mask.shape[0]
        metrics = {"loss": out.loss, **out.metrics, **self.modality.metrics_from_loss(out.loss)}
        values = _prefixed("train", metrics)
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=size)
        self.log("loss", out.loss.detach(), prog_bar=True, logger=False, batch_size=size)
        ratio = out.ratio.float().mean()
        self.log("train/mask_ratio", ratio, on_step=True, on_epoch=False, batch_size=size)
        self._count_lengths(batch)
        self._log_skipped(batch, size)
        return out.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        hidden, pooled = self.embed(batch)
        return {"hidden": hidden, "pooled": pooled, "attention_mask": batch["attention_mask"]}

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_means("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_means("test")

    def _evaluation_step(self, batch: dict[str, Tensor], batch_idx: int, stage: str) -> None:
        """Score the batch under each of the masking's evaluation masks and accumulate the loss
        weighted by the positions it is a mean over, metrics by hidden-position count, so the
        epoch value is a mean over positions (not over batches), synchronized across DDP
        ranks.

        The hidden positions (and BERT's replacements) of the n-th evaluation batch are drawn
        from a generator seeded with n, apart from the training RNG: evaluating one checkpoint
        twice gives the same numbers, and evaluation does not shift the training stream."""
        with seeded(batch_idx, self.device):
            masks = self.masking.evaluation_masks(
                batch["maskable"],
                step=self._step(),
                word_ids=batch.get("word_ids"),
                grid=getattr(self.tokenizer.spec, "grid", None),
            )
            outputs = [self.forward_masked(batch, masked) for masked in masks]
        for out in outputs:
            self._check_finite(out.loss, f"{stage} batch {batch_idx} (after step {self._step()})")
            self._epoch_mean(stage, "loss").update(out.loss.detach().float(), out.loss_count)
            for name, value in out.metrics.items():
                self._epoch_mean(stage, name).update(value.detach().float(), out.target.shape[0])
        self._log_skipped(batch, batch["maskable"].shape[0])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer_fingerprint"] = self.tokenizer.fingerprint()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse weights trained with another vocabulary than the tokenizer's now (a
        tokenizer directory retrained in place keeps its size, so the weights would load and
        silently predict other tokens)."""
        # Checkpoints written before training lengths were counted load with no counts.
        checkpoint["state_dict"].setdefault("length_counts", torch.zeros_like(self.length_counts))
        saved = checkpoint.get("tokenizer_fingerprint")
        current = self.tokenizer.fingerprint()
        if saved is not None and saved != current:
            where = getattr(self.tokenizer, "path", type(self.tokenizer).__name__)
            raise ValueError(
                f"this checkpoint was trained with a tokenizer of fingerprint {saved}, but the "
                f"tokenizer at {where} now has fingerprint {current}: its vocabulary changed "
                "since (retrained or replaced?). Load the checkpoint with the tokenizer it was "
                "trained with."
            )

    def _check_finite(self, loss: Tensor, where: str, across_ranks: bool = False) -> None:
        """Stop at the first NaN or infinite loss rather than train on (or average in) it:
        one such step turns every weight into NaN, and a NaN validation batch would be dropped
        from the mean without a trace. One scalar check per step; anomaly detection would
        cost a full extra pass.

        ``across_ranks`` (training): the DDP ranks agree first, so that all of them stop at the
        same step; a rank stopping alone would leave the others waiting for its gradients.
        Training steps are the same number on every rank; evaluation batches are not (each
        sample is read once), so a per-batch collective there could itself hang."""
        finite_here = bool(torch.isfinite(loss.detach()))
        finite = finite_here
        if across_ranks and self._trainer is not None:
            finite = self.trainer.strategy.reduce_boolean_decision(finite_here, all=True)
        if not finite:
            loss_is = f"{loss.item()}" if not finite_here else "not finite on another rank"
            raise FloatingPointError(
                f"{where}: the loss is {loss_is}. A sample with NaN/inf values, or a learning "
                "rate too high for this model (try a lower --model.lr or more "
                "--model.warmup_steps)."
            )

    def _epoch_mean(self, stage: str, name: str) -> MeanMetric:
        key = f"{stage}_{name}"
        if key not in self._epoch_means:
            self._epoch_means[key] = MeanMetric(nan_strategy="error").to(self.device)
        return self._epoch_means[key]

    def _log_epoch_means(self, stage: str) -> None:
        values = {}
        for key, metric in self._epoch_means.items():
            if key.startswith(f"{stage}_") and metric.update_called:
                values[f"{stage}/{key[len(stage) + 1 :]}"] = metric.compute()
                metric.reset()
        if f"{stage}/loss" in values:
            derived = self.modality.metrics_from_loss(values[f"{stage}/loss"])
            values.update(_prefixed(stage, derived))
        if values:
            self.log_dict(values)
            self.log(f"{stage}_loss", values[f"{stage}/loss"], prog_bar=True, logger=False)

    def _count_lengths(self, batch: dict[str, Tensor]) -> None:
        lengths = batch["maskable"].sum(dim=1).clamp(max=self.length_counts.shape[0] - 1)  # (B,)
        self.length_counts += torch.bincount(lengths, minlength=self.length_counts.shape[0])

    def _log_skipped(self, batch: dict[str, Tensor], size: int) -> None:
        if "skipped" in batch:
            self.log(
                "data/skipped_samples",
                batch["skipped"].float().sum(),
                reduce_fx="sum",
                on_step=False,
                on_epoch=True,
                sync_dist=True,  # summed over ranks: the count of the whole epoch
                batch_size=size,
            )

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            is_matrix = param.ndim >= 2 and "embed" not in name and "positions" not in name
            (decay if is_matrix else no_decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
        )
        total = self.trainer.max_steps if self._trainer is not None else -1
        if total and total > 0 and math.isfinite(total):
            scheduler = get_cosine_schedule_with_warmup(optimizer, self.hparams.warmup_steps, total)
        else:
            scheduler = get_constant_schedule_with_warmup(optimizer, self.hparams.warmup_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _unsaved_hyperparameters() -> list[str]:
    """Arguments left out of the checkpoint's hyperparameters.

    Under LightningCLI the hyperparameters are the parsed configuration (class paths and
    plain values), so everything is kept and ``load_from_checkpoint(path)`` rebuilds the whole
    module. Built in Python, those arguments are live objects: pickling them would duplicate
    the encoder's weights and make checkpoints unloadable with ``weights_only=True``, so they
    are left out and passed again: ``load_from_checkpoint(path, tokenizer=..., encoder=...)``.
    Lightning exposes whether the CLI is instantiating only through this context variable.
    """
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    cli = _given_hyperparameters.get() is not None
    return [] if cli else ["tokenizer", "encoder", "masking"]


def _prefixed(stage: str, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{stage}/{name}": value.detach() for name, value in metrics.items()}
