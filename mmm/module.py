"""The one objective: hide positions, encode what is left, predict what was hidden.

``MaskedModelingModule`` is the single LightningModule of mmm. It holds one or several
modalities (``nn.ModuleDict`` of embedder/head pairs keyed by modality name, as in 4M) around
one shared ``Encoder``. A training step masks each modality of the batch (its own strategy,
then the strategies across modalities: dropping whole modalities, 4M token budgets), embeds
every modality, packs the positions the encoder may see of all of a sample's modalities into
one trunk sequence (``mmm.models.sequences``), encodes it, routes the states back, and lets
each modality's head predict and score its hidden positions. Discrete modalities keep BERT
corruption (hidden tokens stay in the sequence as mask tokens); continuous ones are encoded
visible-only and decoded by the MAE decoder; both in one batch. The loss counts hidden
positions only; the total is the ``loss_weight``-weighted sum of the modalities' losses.
A single-modality run is the one-key case of the same module.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from mmm.cross_modal_masking import TokenBudgets, drop_modalities
from mmm.distillation import Distillation, DistillationTerms, distilled_step
from mmm.electra import Electra, ElectraConfig
from mmm.masking import MaskedPositions, Masking, RandomMasking
from mmm.models.encoder import Encoder, TransformerEncoder
from mmm.models.heads import PatchDecoderConfig
from mmm.models.modality import build_modality
from mmm.models.sequences import Segment, context_of, pack_segments, unpack_segments
from mmm.rng import run_seed, seeded, step_seed
from mmm.sharding import shard
from mmm.tokenizers.base import Tokenizer
from mmm.tokenizers.multimodal import ModalityBatch, MultimodalBatcher


@dataclass
class ModalityConfig:
    """One modality of a run: how its samples are read, masked and weighted."""

    tokenizer: Tokenizer
    """Decodes the modality's members of a sample and sizes its embedder and head."""
    masking: Masking | None = None
    """Which of its positions are hidden (default: 15% random, BERT's 80/10/10)."""
    loss_weight: float = 1.0
    """Weight of its loss in the total (the sum over modalities)."""
    drop_probability: float = 0.0
    """Chance that a sample shows nothing of this modality and must predict all of it from
    its other modalities (a sample always keeps one)."""
    decoder: PatchDecoderConfig | None = None
    """MAE decoder of a continuous modality (image, audio); discrete ones ignore it."""
    optional: bool = False
    """Samples may lack this modality (mixing sources with different modality sets)."""
    member: str | None = None
    """The sample member this modality reads, when not its tokenizer's own (e.g. ``cls``
    read as text)."""

    def __post_init__(self) -> None:
        if self.loss_weight < 0:
            raise ValueError(f"ModalityConfig: loss_weight must be >= 0, got {self.loss_weight}")
        if not 0.0 <= self.drop_probability <= 1.0:
            raise ValueError(
                f"ModalityConfig: drop_probability must lie in [0, 1], got {self.drop_probability}"
            )


@dataclass
class ModalityOutput:
    """One modality's part of a masked-prediction pass."""

    loss: Tensor
    metrics: dict[str, Tensor]
    mask: Tensor  # (B_m, L_m) bool hidden positions
    pred: Tensor  # (N, ...) predictions at hidden positions
    target: Tensor  # (N, ...) targets at hidden positions
    ratio: Tensor  # (B_m,) per-sample masking ratios
    loss_count: int  # positions the loss is a mean over (hidden, or maskable when per token)
    counts: dict[str, int] = field(default_factory=dict)  # positions of metrics not per hidden


@dataclass
class MaskedOutput:
    """One masked-prediction pass over a batch: the weighted total and each modality's part
    (``out["text"]``)."""

    loss: Tensor
    modalities: dict[str, ModalityOutput] = field(default_factory=dict)
    states: dict[str, Tensor] = field(default_factory=dict)  # modality -> (B_m, L_m, D)

    def __getitem__(self, name: str) -> ModalityOutput:
        return self.modalities[name]


class MaskedModelingModule(L.LightningModule):
    """Masked modeling for one or several modalities on a shared Transformer encoder.

    Either name the modalities (``modalities={"audio": ModalityConfig(...), "text": ...}``)
    or give one ``tokenizer`` (with ``masking`` and ``decoder``): the one-modality form,
    named by the tokenizer's ``modality_name``.

    Args:
        tokenizer: the tokenizer of a one-modality run; its ``spec`` sizes the embedder and
            head.
        encoder: the shared trunk (default: a 4-layer, 256-wide pre-LN Transformer).
        masking: the masking of a one-modality run (default: 15% random, 80/10/10).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay (not applied to biases, norms, embedding tables and
            mask tokens: see ``no_weight_decay``).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps; then cosine decay to zero at ``max_steps`` when the
            trainer sets it, else a constant rate.
        decoder: the MAE decoder of a one-modality continuous run (images, audio).
        init_from: a local directory whose weights start the embedder and trunk (and masked-LM
            head) of a one-modality run (continued pretraining): an ``EsmForMaskedLM`` or
            ``BertForMaskedLM`` (``save_pretrained``, or ``mmm export``) for text, proteins
            and SMILES, a timm ViT (``save_for_hf``, or ``mmm export``) for images and audio.
            The module records it; its caller applies it (``mmm fit`` does, through
            ``mmm.export.apply_init_from``; in Python call ``mmm.export.init_from``), so that
            the module does not import its converters.
        modalities: modality name -> its tokenizer, masking, loss weight, drop probability
            and decoder. Several modalities share the trunk; each gets a learned modality
            embedding. The datamodule reads the batcher built from them (LightningCLI links
            ``model.batcher`` to ``data.batcher``).
        budgets: 4M-style token budgets across modalities, used instead of each modality's
            masking (see ``mmm.cross_modal_masking.TokenBudgets``).
        evaluation_mask_only: held-out passes (validation, test) show every hidden token as
            the mask token, as ``mmm fill-mask`` does, so ``val/<modality>/masked_accuracy``,
            loss and perplexity measure prediction from context alone. ``False`` scores under
            the training corruption (BERT's 80/10/10, as Hugging Face's ``run_mlm.py``
            evaluates), where a model scores the hidden tokens left unchanged by copying them
            (0.190 against 0.127 with the mask token only for the quickstart model, 15% hidden).
            Training always uses the masking's own corruption.
        electra: train by ELECTRA's replaced-token detection instead of masked prediction
            (``mmm.electra``): a small generator fills the hidden positions, the trunk tells
            every real position original or replaced. Discrete modalities only. Validation
            logs the discriminator's ``replaced_accuracy`` and ``replaced_auroc`` and the
            generator's ``masked_accuracy``.
        distillation: learn from a frozen teacher's distribution at the hidden positions
            (and optionally its hidden states) beside or instead of the true tokens
            (``mmm.distillation``); ``mmm fit`` loads the teacher (``mmm.teacher``).
    """

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        encoder: Encoder | None = None,
        masking: Masking | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 100,
        decoder: PatchDecoderConfig | None = None,
        init_from: str | None = None,
        modalities: dict[str, ModalityConfig] | None = None,
        budgets: TokenBudgets | None = None,
        evaluation_mask_only: bool = True,
        electra: ElectraConfig | None = None,
        distillation: Distillation | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=_unsaved_hyperparameters())
        configs = _modality_configs(modalities, tokenizer, masking, decoder)
        self.encoder = encoder if encoder is not None else TransformerEncoder()
        self.tokenizers = {name: config.tokenizer for name, config in configs.items()}
        self.maskings = {
            name: config.masking or RandomMasking() for name, config in configs.items()
        }
        self.loss_weights = {name: config.loss_weight for name, config in configs.items()}
        self.drop_probabilities = {n: config.drop_probability for n, config in configs.items()}
        self.budgets = budgets
        self.evaluation_mask_only = evaluation_mask_only
        self.distillation = DistillationTerms(distillation) if distillation is not None else None
        self.modalities = nn.ModuleDict(
            {
                name: build_modality(
                    config.tokenizer.spec, self.encoder, self.maskings[name], config.decoder
                )
                for name, config in configs.items()
            }
        )
        # A modality embedding tells the trunk which modality a position belongs to; with one
        # modality it would be a constant offset, so there is none.
        self.modality_embeddings = None
        if len(configs) > 1:
            self.modality_embeddings = nn.Parameter(torch.zeros(len(configs), self.encoder.dim))
            nn.init.trunc_normal_(self.modality_embeddings, std=0.02)
        optional = frozenset(name for name, config in configs.items() if config.optional)
        members = {name: config.member for name, config in configs.items() if config.member}
        self.batcher = MultimodalBatcher(self.tokenizers, optional, members)
        if electra is not None and budgets is not None:
            raise ValueError("MaskedModelingModule: electra does not take token budgets")
        if electra is not None and distillation is not None:
            raise ValueError(
                "MaskedModelingModule: electra and distillation are two objectives; set one"
            )
        self.electra = (
            Electra(electra, self.modalities, self.tokenizers, self.encoder) if electra else None
        )
        # The directory init_from names is read by its caller, not here (the converters live
        # in mmm.export, which imports this module): see ``pending_init_from``.
        self.initialized_from: str | None = None
        self._epoch_means = nn.ModuleDict()  # "stage/modality/metric" -> MeanMetric, on use
        self._training_seed: int | None = None  # the run's seed: set at fit start or restored
        self._training_batches = dict.fromkeys(configs, 0)  # modality -> batches carrying it

    # --------------------------------------------------------------------------- access
    def pending_init_from(self) -> str | None:
        """The ``init_from`` directory whose weights this module is still to start from, or
        ``None`` (none set, or applied already by ``mmm.export.init_from``)."""
        directory = self.hparams.get("init_from")
        return None if directory is None or directory == self.initialized_from else directory

    def modality_named(self, name: str | None = None, discrete: bool = False) -> str:
        """``name`` checked against the module's modalities, or the only one (the only
        discrete one with ``discrete``) when ``name`` is ``None``."""
        candidates = [
            key for key, tokenizer in self.tokenizers.items() if not discrete or tokenizer.discrete
        ]
        kind, kinds = (
            ("discrete modality", "discrete modalities") if discrete else ("modality", "modalities")
        )
        if name is not None:
            if name not in candidates:
                raise ValueError(f"no {kind} {name!r} in this model; it has {candidates}")
            return name
        if not candidates:
            raise ValueError(
                f"this model has no {kind}; its modalities are {list(self.modalities)}"
            )
        if len(candidates) != 1:
            raise ValueError(f"this model has the {kinds} {candidates}: name one")
        return candidates[0]

    def modality_batch(self, batch: dict) -> ModalityBatch:
        """The modality sub-batches of ``batch``. A batch of the module's batcher is keyed by
        modality (other keys, such as the loader's ``skipped`` count, are not modalities); a
        flat batch of one tokenizer's ``collate`` is the batch of the module's only modality."""
        if "attention_mask" in batch:
            return {self.modality_named(): {k: v for k, v in batch.items() if k != "skipped"}}
        subs = {name: value for name, value in batch.items() if isinstance(value, dict)}
        unknown = sorted(set(subs) - set(self.modalities))
        if unknown:
            raise ValueError(
                f"batch has modalities {unknown} this model lacks ({list(self.modalities)})"
            )
        return subs

    def _step(self) -> int:
        return self.global_step if self._trainer is not None else 0

    # ---------------------------------------------------------------------------- masking
    def choose_masks(self, inputs: ModalityBatch) -> dict[str, MaskedPositions]:
        """Hidden positions of every modality of the batch: its own masking (or the token
        budgets), then the dropping of whole modalities."""
        return self._masks_across(inputs, self._own_masks(inputs, evaluation=False)[0])

    def evaluation_masks(self, inputs: ModalityBatch) -> list[dict[str, MaskedPositions]]:
        """The masks a held-out batch is scored under: each modality's evaluation masks
        (masked diffusion scores several noise levels; shorter lists repeat), every hidden
        position shown as the mask token when ``evaluation_mask_only``."""
        own = self._own_masks(inputs, evaluation=True)
        passes = [self._masks_across(inputs, masks) for masks in own]
        if not self.evaluation_mask_only:
            return passes
        return [{name: _mask_only(masked) for name, masked in pass_.items()} for pass_ in passes]

    def _own_masks(
        self, inputs: ModalityBatch, evaluation: bool
    ) -> list[dict[str, MaskedPositions]]:
        if self.budgets is not None:
            maskable = {name: sub["maskable"] for name, sub in inputs.items()}
            return [self.budgets(maskable, _rows(inputs), _batch_size(inputs))]
        per_modality = {}
        for name, sub in inputs.items():
            masking, step = self.maskings[name], self._step()
            grid = getattr(self.tokenizers[name].spec, "grid", None)
            options = dict(word_ids=sub.get("word_ids"), grid=grid)
            if evaluation:
                per_modality[name] = masking.evaluation_masks(sub["maskable"], step, **options)
            else:
                per_modality[name] = [masking(sub["maskable"], step=step, **options)]
        passes = max(len(masks) for masks in per_modality.values())
        return [
            {n: masks[i % len(masks)] for n, masks in per_modality.items()} for i in range(passes)
        ]

    def _masks_across(
        self, inputs: ModalityBatch, masked: dict[str, MaskedPositions]
    ) -> dict[str, MaskedPositions]:
        maskable = {name: sub["maskable"] for name, sub in inputs.items()}
        return drop_modalities(
            masked, maskable, _rows(inputs), self.drop_probabilities, _batch_size(inputs)
        )

    # ---------------------------------------------------------------------------- passes
    def encode_modalities(
        self, inputs: ModalityBatch, masked: dict[str, MaskedPositions] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Embed each modality (corrupted per ``masked``; as it is when ``None``), encode the
        positions the encoder may see of every sample in one trunk sequence, and route the
        states back.

        Returns:
            modality -> (B_m, L_m, D) states (zeros at unseen positions), and modality ->
            (B_m, L_m) bool positions the encoder saw.
        """
        segments, seen = {}, {}
        for name, sub in inputs.items():
            modality, masks = self.modalities[name], masked[name] if masked else None
            x = modality.embed(sub, masks)  # (B_m, L_m, D)
            if self.modality_embeddings is not None:
                x = x + self.modality_embeddings[self._modality_index(name)].to(x.dtype)
            seen[name] = modality.encoder_positions(sub, masks)
            segments[name] = Segment(x, seen[name], sub.get("rows"), sub.get("document_ids"))
        x, layout = pack_segments(segments, _batch_size(inputs))  # (B, T, D)
        hidden = self.encoder(x, layout.padding_mask, document_ids=layout.document_ids)
        return unpack_segments(hidden, layout), seen

    def _modality_index(self, name: str) -> int:
        return list(self.modalities).index(name)

    def forward_masked(
        self,
        batch: dict,
        masked: dict[str, MaskedPositions] | MaskedPositions | None = None,
    ) -> MaskedOutput:
        """Mask (or take ``masked``), embed, encode, predict and score the hidden positions of
        every modality of ``batch``. A single ``MaskedPositions`` is the mask of a
        one-modality batch."""
        inputs = self.modality_batch(batch)
        if isinstance(masked, MaskedPositions):
            masked = {self.modality_named(): masked}
        masked = masked if masked is not None else self.choose_masks(inputs)
        if self.electra is not None:
            return self._forward_replaced(inputs, masked)
        states, seen = self.encode_modalities(inputs, masked)
        parts = {name: self._score(name, inputs, masked[name], states, seen) for name in inputs}
        loss = sum(self.loss_weights[name] * part.loss for name, part in parts.items())
        return MaskedOutput(loss, parts, states)

    def _forward_replaced(
        self, inputs: ModalityBatch, masked: dict[str, MaskedPositions]
    ) -> MaskedOutput:
        """ELECTRA's pass (``mmm.electra``): each modality's part is its generator's
        prediction of the hidden tokens, scored with the discriminator's loss added."""
        outputs = self.electra(
            inputs, masked, self.modalities, lambda shown: self.encode_modalities(shown)[0]
        )
        parts = {
            name: ModalityOutput(
                out.loss,
                out.metrics,
                masked[name].mask,
                out.pred,
                out.target,
                masked[name].ratio,
                masked[name].loss_count(inputs[name]["maskable"]),
                out.counts,
            )
            for name, out in outputs.items()
        }
        loss = sum(self.loss_weights[name] * part.loss for name, part in parts.items())
        return MaskedOutput(loss, parts)

    def _score(
        self,
        name: str,
        inputs: ModalityBatch,
        masked: MaskedPositions,
        states: dict[str, Tensor],
        seen: dict[str, Tensor],
    ) -> ModalityOutput:
        modality, sub = self.modalities[name], inputs[name]
        context = self._context(name, inputs, states, seen)
        pred = modality.predict(
            states[name], masked.mask, seen[name], sub["attention_mask"], context
        )
        target = modality.targets(sub, masked.mask)
        weight = masked.position_weights(sub["maskable"])  # (N,) or None: plain mean
        loss, metrics = modality.loss_and_metrics(pred, target, weight=weight)
        count = masked.loss_count(sub["maskable"])
        return ModalityOutput(loss, metrics, masked.mask, pred, target, masked.ratio, count)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        """Encoder states of an unmasked batch: modality -> (B_m, L_m, D)."""
        return self.encode_modalities(self.modality_batch(batch))[0]

    def predict_positions(self, batch: dict, positions: Tensor, name: str | None = None) -> Tensor:
        """Modality ``name``'s predictions (logits for discrete ones) at ``positions``
        (B_m, L_m) bool, for a batch whose inputs already show what is hidden (mask tokens):
        the inference path of fill-mask, generation and scoring, with every other modality
        of the batch as context. (N, ...) in row-major order of ``positions``.

        Raises:
            ValueError: for an ELECTRA model, whose masked-LM heads never trained."""
        if self.electra is not None:
            raise ValueError(
                "this is an ELECTRA model (model.electra is set): its trunk tells replaced "
                "tokens from original ones and its masked-LM heads never trained, so it does "
                "not fill masks, generate or score; embed, probe, export or fine-tune it instead"
            )
        inputs = self.modality_batch(batch)
        name = self.modality_named(name)
        states, seen = self.encode_modalities(inputs)
        real = inputs[name]["attention_mask"]
        context = self._context(name, inputs, states, seen)
        return self.modalities[name].predict(states[name], positions, seen[name], real, context)

    def _context(
        self,
        name: str,
        inputs: ModalityBatch,
        states: dict[str, Tensor],
        seen: dict[str, Tensor],
    ) -> tuple[Tensor, Tensor] | None:
        """The other modalities' states for a ``visible_only`` modality's decoder (its hidden
        positions never met them in the trunk); ``None`` for the others."""
        if not self.modalities[name].visible_only:
            return None
        return context_of(name, states, seen, _rows(inputs), _batch_size(inputs))

    @torch.no_grad()
    def embed(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        """Per-position states (modality -> (B_m, L_m, D)) and, per sample, their mean over
        the real positions of all its modalities, (B, D)."""
        inputs = self.modality_batch(batch)
        states = self.encode_modalities(inputs)[0]
        size, dim = _batch_size(inputs), self.encoder.dim
        first = next(iter(states.values()))
        total = first.new_zeros(size, dim, dtype=torch.float)
        count = first.new_zeros(size, 1, dtype=torch.float)
        for name, hidden in states.items():
            weights = inputs[name]["attention_mask"].unsqueeze(-1).float()  # (B_m, L_m, 1)
            rows = _rows(inputs)[name]
            rows = rows if rows is not None else torch.arange(hidden.shape[0], device=first.device)
            total.index_add_(0, rows, (hidden.float() * weights).sum(dim=1))  # (B, D)
            count.index_add_(0, rows, weights.sum(dim=1))
        return states, (total / count.clamp_min(1.0)).to(first.dtype)

    # ------------------------------------------------------------------------ lightning
    def configure_model(self) -> None:
        """Shard the model for FSDP when the strategy provides a device mesh
        (``--trainer.strategy fsdp2``): each trunk block (``Encoder.shard_units``) and then
        the rest; a no-op under every other strategy."""
        if self.device_mesh is not None:
            mesh = self.device_mesh["data_parallel"]
            shard(self, self.encoder.shard_units(), mesh, entry_points=SHARDED_ENTRY_POINTS)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        """One masked-prediction step. Every random choice of the step (masks, BERT's
        replacements, dropped modalities, token budgets, diffusion times, dropout) is drawn
        under ``training_batch_seed``, so a run resumed from any checkpoint trains as the
        uninterrupted run did (``docs/resuming.md``)."""
        inputs = self.modality_batch(batch)
        distilled = {}
        with seeded(self.training_batch_seed(batch_idx), self.device):
            if self.distillation is None:
                out = self.forward_masked(inputs)
            else:
                out, distilled = distilled_step(self, inputs, self.distillation)
        self._check_finite(out.loss, f"training step {self.global_step}", across_ranks=True)
        size = _batch_size(inputs)
        values = {"train/loss": out.loss.detach()}
        values.update({f"train/distill/{term}": value for term, value in distilled.items()})
        for name, part in out.modalities.items():
            derived = self._metrics_from_loss(name, part.loss)
            for metric, value in {"loss": part.loss, **part.metrics, **derived}.items():
                values[f"train/{name}/{metric}"] = value.detach()
            values[f"train/{name}/mask_ratio"] = part.ratio.float().mean()
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=size)
        self.log("loss", out.loss.detach(), prog_bar=True, logger=False, batch_size=size)
        for name, sub in inputs.items():
            self._training_batches[name] += 1
            self.modalities[name].count_lengths(sub)
        self._log_skipped(batch, size)
        return out.loss

    def training_batch_seed(self, batch_idx: int) -> int:
        """The seed of training batch ``batch_idx``: a hash of the run's seed, the optimizer
        step, the micro-batch within a gradient-accumulation window and the DDP rank.

        Seeded per step rather than by saving torch's RNG states in checkpoints: a step's
        randomness then depends on nothing that ran before it (validation, callbacks, a
        library drawing from the global RNG, loader workers starting), a resumed run needs no
        state beyond the step counters Lightning restores anyway, and every rank derives its
        own seed without gathering states. Python's and the loaders' randomness is the data
        module's, seeded by the sample's place in the stream."""
        seed = self._training_seed if self._training_seed is not None else run_seed()
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        return step_seed(seed, self.global_step, batch_idx % accumulate, self.global_rank)

    def on_fit_start(self) -> None:
        """Fix the run's training seed; a resumed run keeps its checkpoint's, loudly when the
        command line's ``seed_everything`` differs from it."""
        directory = self.pending_init_from()
        if directory is not None:
            raise ValueError(
                f"MaskedModelingModule: init_from={directory!r} was never applied; mmm fit "
                "applies it, in Python call mmm.export.init_from(module, directory) first"
            )
        if self.distillation is not None and self.distillation.teacher is None:
            raise ValueError(
                f"MaskedModelingModule: the distillation teacher "
                f"{self.distillation.settings.teacher!r} was never attached; mmm fit attaches "
                "it, in Python call mmm.teacher.apply_teacher(module) first"
            )
        if self._training_seed is None:
            self._training_seed = run_seed()
        elif "PL_GLOBAL_SEED" in os.environ and run_seed() != self._training_seed:
            rank_zero_warn(
                f"resuming with the checkpoint's training seed {self._training_seed}, not "
                f"seed_everything {run_seed()}: the resumed run continues the checkpoint's run"
            )

    def on_train_end(self) -> None:
        """Warn, naming it, about a modality no training batch of any rank carried (an
        optional modality whose shards hold none of its members): its embedder and head never
        trained, which no loss shows."""
        if self.global_step == 0:
            return
        names = list(self._training_batches)
        counts = torch.tensor([self._training_batches[n] for n in names], device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        absent = [name for name, count in zip(names, counts.tolist(), strict=True) if count == 0]
        if absent:
            rank_zero_warn(
                f"modalities {absent} appeared in no training batch of {self.global_step} "
                "steps: their embedders and heads are untrained. Do the training shards carry "
                f"their members ({', '.join(self._members_read(name) for name in absent)})?"
            )

    def _members_read(self, name: str) -> str:
        members = self.batcher.members.get(name)
        return f"{name}: {members or ', '.join(self.tokenizers[name].sample_keys)}"

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        states, pooled = self.embed(batch)
        masks = {name: sub["attention_mask"] for name, sub in self.modality_batch(batch).items()}
        return {"hidden": states, "pooled": pooled, "attention_mask": masks}

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_means("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_means("test")

    def _evaluation_step(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Score the batch under each evaluation mask and accumulate each modality's loss
        weighted by the positions it is a mean over, its metrics by hidden-position count, so
        the epoch value is a mean over positions (not over batches), synchronized across DDP
        ranks.

        The hidden positions (and BERT's replacements) of the n-th evaluation batch are drawn
        from a generator seeded with n, apart from the training RNG: evaluating one checkpoint
        twice gives the same numbers, and evaluation does not shift the training stream."""
        inputs = self.modality_batch(batch)
        with seeded(batch_idx, self.device):
            outputs = [
                self.forward_masked(inputs, masked) for masked in self.evaluation_masks(inputs)
            ]
        for out in outputs:
            self._check_finite(out.loss, f"{stage} batch {batch_idx} (after step {self._step()})")
            for name, part in out.modalities.items():
                self._epoch_mean(f"{stage}/{name}/loss").update(
                    part.loss.detach().float(), part.loss_count
                )
                for metric, value in part.metrics.items():
                    self._epoch_mean(f"{stage}/{name}/{metric}").update(
                        value.detach().float(), part.counts.get(metric, part.target.shape[0])
                    )
        self._log_skipped(batch, _batch_size(inputs))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer_fingerprints"] = {
            name: tokenizer.fingerprint() for name, tokenizer in self.tokenizers.items()
        }
        if self._training_seed is not None:
            checkpoint["training_seed"] = self._training_seed
        checkpoint["training_batches_per_modality"] = dict(self._training_batches)
        # Self-contained: the weights init_from started from are in the state dict, so loading
        # the checkpoint must not need their directory again (it may be gone, or relative to
        # another working directory). Where they came from is kept for the record.
        hyperparameters = checkpoint.get("hyper_parameters", {})
        if hyperparameters.get("init_from") is not None:
            checkpoint["initialized_from"] = hyperparameters["init_from"]
            hyperparameters["init_from"] = None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse weights trained with another vocabulary than the tokenizer's now (a
        tokenizer directory retrained in place keeps its size, so the weights would load and
        silently predict other tokens). Checkpoints of one-modality modules written before
        modalities were keyed load under their modality's name. A resumed run keeps drawing
        its training randomness from the checkpoint's seed."""
        self._training_seed = checkpoint.get("training_seed", self._training_seed)
        _restore_distillation_projection(checkpoint, self.distillation)
        self.initialized_from = self.hparams.get("init_from")  # its weights are the checkpoint's
        for name, count in checkpoint.get("training_batches_per_modality", {}).items():
            if name in self._training_batches:
                self._training_batches[name] = count
        _rename_single_modality_keys(
            checkpoint, self.modality_named() if len(self.modalities) == 1 else None
        )
        saved = checkpoint.get("tokenizer_fingerprints", {})
        if "tokenizer_fingerprint" in checkpoint and len(self.tokenizers) == 1:
            saved = {self.modality_named(): checkpoint["tokenizer_fingerprint"]}
        for name, fingerprint in saved.items():
            tokenizer = self.tokenizers.get(name)
            if tokenizer is None or tokenizer.fingerprint() == fingerprint:
                continue
            where = getattr(tokenizer, "path", type(tokenizer).__name__)
            raise ValueError(
                f"this checkpoint's {name} modality was trained with a tokenizer of fingerprint "
                f"{fingerprint}, but the tokenizer at {where} now has fingerprint "
                f"{tokenizer.fingerprint()}: its vocabulary changed since (retrained or "
                "replaced?). Load the checkpoint with the tokenizer it was trained with."
            )

    def _check_finite(self, loss: Tensor, where: str, across_ranks: bool = False) -> None:
        """See ``check_finite``."""
        check_finite(self, loss, where, across_ranks)

    def _epoch_mean(self, name: str) -> MeanMetric:
        if name not in self._epoch_means:
            self._epoch_means[name] = MeanMetric(nan_strategy="error").to(self.device)
        return self._epoch_means[name]

    def _log_epoch_means(self, stage: str) -> None:
        """Each modality's epoch means and derived metrics (perplexity), and the total loss:
        the weighted sum of the modalities' mean losses."""
        values = {}
        for name, metric in self._epoch_means.items():
            if name.startswith(f"{stage}/") and metric.update_called:
                values[name] = metric.compute()
                metric.reset()
        losses = {}
        for name in self.modalities:
            loss = values.get(f"{stage}/{name}/loss")
            if loss is None:
                continue
            losses[name] = loss
            for metric, value in self._metrics_from_loss(name, loss).items():
                values[f"{stage}/{name}/{metric}"] = value.detach()
        if losses:
            total = sum(self.loss_weights[name] * loss for name, loss in losses.items())
            values[f"{stage}/loss"] = total
            self.log_dict(values)
            self.log(f"{stage}_loss", total, prog_bar=True, logger=False)

    def _metrics_from_loss(self, name: str, loss: Tensor) -> dict[str, Tensor]:
        """The modality's metrics derived from its loss (perplexity); none under ELECTRA,
        whose loss is not a masked LM's."""
        return {} if self.electra is not None else self.modalities[name].metrics_from_loss(loss)

    def _log_skipped(self, batch: dict, size: int) -> None:
        log_skipped(self, batch, size)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters AdamW does not decay, decided by structure (timm's
        ``no_weight_decay``): vectors (biases, norms), embedding tables (tokens, learned
        positions, modalities) and learned mask tokens. Decay would pull the rows of rare
        tokens towards zero; projection matrices, the patch embedder's included, decay."""
        tables = {
            f"{owner}.weight" if owner else "weight"
            for owner, part in self.named_modules()
            if isinstance(part, nn.Embedding)
        }
        return {
            name
            for name, param in self.named_parameters()
            if param.ndim < 2
            or name in tables
            or name == "modality_embeddings"
            or name.endswith("mask_token")
        }

    def configure_optimizers(self):
        exempt = self.no_weight_decay()
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if name in exempt else decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
            betas=tuple(self.hparams.betas),
        )
        total = self.trainer.max_steps if self._trainer is not None else -1
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": warmup_schedule(optimizer, self.hparams.warmup_steps, total),
                "interval": "step",
            },
        }


#: The methods through which Lightning and the callbacks run a sharded module (FSDP gathers
#: the root's parameters on entering them, as on entering ``forward``).
SHARDED_ENTRY_POINTS = ("training_step", "validation_step", "test_step", "predict_step", "embed")


def check_finite(
    module: L.LightningModule, loss: Tensor, where: str, across_ranks: bool = False
) -> None:
    """Stop at the first NaN or infinite loss rather than train on (or average in) it:
    one such step turns every weight into NaN, and a NaN validation batch would be dropped
    from the mean without a trace. One scalar check per step; anomaly detection would
    cost a full extra pass.

    ``across_ranks`` (training): the DDP ranks of ``module``'s trainer agree first, so that
    all of them stop at the same step; a rank stopping alone would leave the others waiting
    for its gradients. Training steps are the same number on every rank; evaluation batches
    are not (each sample is read once), so a per-batch collective there could itself hang."""
    finite_here = bool(torch.isfinite(loss.detach()))
    finite = finite_here
    if across_ranks and module._trainer is not None:
        finite = module.trainer.strategy.reduce_boolean_decision(finite_here, all=True)
    if not finite:
        loss_is = f"{loss.item()}" if not finite_here else "not finite on another rank"
        raise FloatingPointError(
            f"{where}: the loss is {loss_is}. A sample with NaN/inf values, or a learning "
            "rate too high for this model (try a lower --model.lr or more "
            "--model.warmup_steps)."
        )


def log_skipped(module: L.LightningModule, batch: dict, size: int) -> None:
    """Log the loader's count of skipped samples (``batch["skipped"]``) as
    ``data/skipped_samples``, summed over the epoch and the ranks."""
    if "skipped" in batch:
        module.log(
            "data/skipped_samples",
            batch["skipped"].float().sum(),
            reduce_fx="sum",
            on_step=False,
            on_epoch=True,
            sync_dist=True,  # summed over ranks: the count of the whole epoch
            batch_size=size,
        )


def warmup_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, max_steps: int | float | None
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps``, then cosine decay to zero at ``max_steps`` when
    the run is step-bounded (``max_steps > 0``), else a constant rate. Every parameter group
    keeps its own peak rate (layer-wise decay scales them).

    The same factors as ``transformers``' ``get_cosine_schedule_with_warmup`` and
    ``get_constant_schedule_with_warmup``, written here because importing those pulls in
    ``transformers.trainer_utils``, which imports ``peft`` and through it the audio utilities:
    a broken torchaudio (a CUDA-version mismatch) would then break every modality's training.
    """
    bounded = bool(max_steps) and max_steps > 0 and math.isfinite(max_steps)
    total = int(max_steps) if bounded else 0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        if not bounded:
            return 1.0
        progress = (step - warmup_steps) / max(1, total - warmup_steps)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _modality_configs(
    modalities: dict[str, ModalityConfig] | None,
    tokenizer: Tokenizer | None,
    masking: Masking | None,
    decoder: PatchDecoderConfig | None,
) -> dict[str, ModalityConfig]:
    """The named modalities, or the one-modality form built from ``tokenizer``."""
    if (modalities is None) == (tokenizer is None):
        raise ValueError(
            "MaskedModelingModule: give either modalities={name: ModalityConfig(...)} or one "
            "tokenizer (with masking and decoder), not both and not neither"
        )
    if modalities is not None:
        if masking is not None or decoder is not None:
            raise ValueError(
                "MaskedModelingModule: with modalities, set masking and decoder per modality"
            )
        if not modalities:
            raise ValueError("MaskedModelingModule: modalities is empty")
        if all(config.loss_weight == 0 for config in modalities.values()):
            weights = ", ".join(f"modalities.{name}.loss_weight=0" for name in modalities)
            raise ValueError(
                f"MaskedModelingModule: every modality's loss weight is 0 ({weights}): the "
                "loss would be 0 and nothing would train; give one a positive loss_weight"
            )
        return dict(modalities)
    return {tokenizer.modality_name: ModalityConfig(tokenizer, masking, decoder=decoder)}


def _mask_only(masked: MaskedPositions) -> MaskedPositions:
    """``masked`` with every hidden position of every row shown as the mask token."""
    every_row = torch.ones(masked.mask.shape[0], dtype=torch.bool, device=masked.mask.device)
    return replace(masked, mask_only=every_row)


def _rows(inputs: ModalityBatch) -> dict[str, Tensor | None]:
    """modality -> the samples its rows belong to (``None``: all of them, in order)."""
    return {name: sub.get("rows") for name, sub in inputs.items()}


def _batch_size(inputs: ModalityBatch) -> int:
    """Samples in the batch: the rows of a modality every sample carries, else one past the
    largest row index (every sample carries some modality)."""
    for sub in inputs.values():
        if "rows" not in sub:
            return sub["attention_mask"].shape[0]
    return max(int(sub["rows"].max()) for sub in inputs.values()) + 1


def _restore_distillation_projection(
    checkpoint: dict, distillation: DistillationTerms | None
) -> None:
    """A distilled student's checkpoint holds the projection of its states to its teacher's
    width: rebuilt (its shape is the checkpoint's) when the module distils, dropped when it
    is loaded without distillation (for inference, export, or as another run's teacher)."""
    state = checkpoint.get("state_dict", {})
    projection = state.get("distillation.projection.weight")
    if projection is None:
        return
    if distillation is not None:
        distillation.ensure_projection(projection.shape[1], projection.shape[0])
        return
    for key in [key for key in state if key.startswith("distillation.")]:
        del state[key]


def _rename_single_modality_keys(checkpoint: dict, name: str | None) -> None:
    """Keys of checkpoints written before modalities were keyed (``modality.*`` and
    ``length_counts``) renamed to the one-modality layout (``modalities.<name>.*``)."""
    state = checkpoint.get("state_dict", {})
    if name is None or not any(key.startswith("modality.") for key in state):
        return
    renamed = {}
    for key, value in state.items():
        if key.startswith("modality."):
            key = f"modalities.{name}.{key[len('modality.') :]}"
        elif key == "length_counts":
            key = f"modalities.{name}.length_counts"
        renamed[key] = value
    checkpoint["state_dict"] = renamed


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
    live = ["tokenizer", "encoder", "masking", "modalities", "budgets", "electra", "distillation"]
    return [] if cli else live
