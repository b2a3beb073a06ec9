"""Fine-tune an mmm encoder on a labelled task: the downstream half of mmm.

``FineTuningModule`` holds a ``MaskedModelingModule`` as its backbone, runs it unmasked
(``encode_modalities``) and puts a task head on top: a pooled head for sample-level
classification, multi-label classification and regression (any modality, and paired samples
of several modalities), or a per-position head for token-level classification of a sequence
modality (one label per residue). The backbone's pretraining heads (masked-LM heads, MAE
decoders) are dropped when the module is built: they are neither trained nor saved.

Where the backbone comes from:

- ``checkpoint``: a pretraining checkpoint of ``mmm fit``; its architecture from its
  hyperparameters, its weights from its state dict (``from_scratch=True`` keeps the
  architecture and leaves the weights random: the from-scratch control);
- ``backbone``: a ``MaskedModelingModule`` (the model section of a pretraining config), random
  unless its ``init_from`` names an exported Hugging Face or timm directory.
When both are given, ``checkpoint`` wins (the config's backbone is the from-scratch default).

Modes: ``full`` (every weight trains, learning rates decayed layer-wise, the first
``freeze_blocks`` blocks and the embedders optionally frozen), ``lora`` (peft adapters on the
trunk's linear layers; checkpoints keep adapters and head only), ``probe`` (frozen backbone
in eval mode, a linear head on pooled states).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from mmm.data.labels import TASKS, LabelSpec
from mmm.finetune.batching import IGNORE, LabelledBatcher, Task
from mmm.finetune.heads import (
    HEAD_KINDS,
    ClassifierHead,
    HeadKind,
    Pooler,
    Pooling,
    PositionClassifier,
    pack_states,
)
from mmm.finetune.layer_decay import layer_index, parameter_groups, trunk_depth
from mmm.finetune.lora import adapter_state, add_lora, is_adapter
from mmm.finetune.metrics import computed, is_updated, metric_inputs, task_metrics
from mmm.inference import read_checkpoint
from mmm.module import (
    MaskedModelingModule,
    _batch_size,
    check_finite,
    log_skipped,
    warmup_schedule,
)
from mmm.tokenizers.multimodal import ModalityBatch, MultimodalBatcher

Mode = Literal["full", "lora", "probe"]
MODES = ("full", "lora", "probe")
#: The batch keys that are not modalities.
NOT_INPUTS = ("labels", "skipped")


class FineTuningModule(L.LightningModule):
    """A pretrained (or random) mmm encoder with a task head, trained on labelled samples.

    Args:
        backbone: the encoder to fine-tune (the model section of a pretraining config); used
            when no ``checkpoint`` is given.
        checkpoint: a pretraining checkpoint written by ``mmm fit``: the backbone's
            architecture and weights (it wins over ``backbone``).
        from_scratch: keep ``checkpoint``'s architecture but not its weights (the
            from-scratch control of a label-efficiency comparison).
        task: ``classification``, ``multilabel``, ``regression`` or ``token_classification``.
        num_labels: classes (or regression targets). ``None``: read from the ``labels.json``
            beside the data's shards when training starts.
        classes: class names by index (``None``: from ``labels.json``); ``mmm predict`` writes
            them.
        modality: the modality whose positions token-level labels lie on, or the only
            modality pooled for sample-level tasks (``None``: all of a sample's modalities).
        mode: ``full``, ``lora`` or ``probe`` (see the module docstring).
        pooling: ``mean`` over real positions, ``attention`` (a learned query, one head) or
            ``cls`` (the first position; what stock sequence classifiers read).
        head: ``dense`` (dense -> tanh -> linear, the stock sequence classifiers' head),
            ``linear``, or ``norm_linear`` (a BatchNorm without affine parameters, then
            linear: MAE's linear probe); ``None``: ``linear`` for ``probe``, else ``dense``.
        layer_decay: layer-wise learning-rate decay per block below the head (BEiT / MAE;
            1.0 = none). ``full`` mode only.
        freeze_blocks: freeze the embedders and the first k trunk blocks (``full`` mode).
        lora_rank: rank of the LoRA updates.
        lora_alpha: LoRA scale numerator (updates are scaled by ``alpha / rank``).
        lora_dropout: dropout on the LoRA branch's input.
        lr: peak learning rate of AdamW (of the head; lower layers get less with decay).
        weight_decay: AdamW weight decay (not on biases, norms, embedding tables).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps, then cosine decay to zero at ``max_steps``.
        class_weights: one loss weight per class (classification kinds), e.g. for rare
            classes.
        head_dropout: dropout before (and inside) the head.
        target_mean: regression: the head predicts ``(y - target_mean) / target_std``, and
            outputs are mapped back to label units, so that a head starting near zero starts
            near the mean (set them to the training targets' mean and standard deviation).
        target_std: see ``target_mean``; the loss is the MSE of standardized targets.
        backbone_config: set by the module itself: the hyperparameters of ``checkpoint``, so
            that a fine-tuned checkpoint rebuilds its architecture without the pretraining
            file (``lora`` mode still reads the base weights from it).
    """

    def __init__(
        self,
        backbone: MaskedModelingModule | None = None,
        checkpoint: str | None = None,
        from_scratch: bool = False,
        task: Task = "classification",
        num_labels: int | None = None,
        classes: list[str] | None = None,
        modality: str | None = None,
        mode: Mode = "full",
        pooling: Pooling = "mean",
        head: HeadKind | None = None,
        layer_decay: float = 0.75,
        freeze_blocks: int = 0,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        class_weights: list[float] | None = None,
        head_dropout: float = 0.0,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        backbone_config: dict | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(locals())
        self.save_hyperparameters(ignore=_unsaved_hyperparameters())
        self.task, self.mode = task, mode
        built, config = _build_backbone(backbone, checkpoint, from_scratch, backbone_config, mode)
        self.backbone = _drop_pretraining_heads(built)
        if config is not None:
            self.hparams["backbone_config"] = config
        token_level = task == "token_classification"
        self.modality = self.backbone.modality_named(modality) if modality or token_level else None
        inputs = _input_batcher(self.backbone.batcher, self.modality)
        self.batcher = LabelledBatcher(inputs, task, num_labels, self.modality)
        self.head_kind: HeadKind = head or ("linear" if mode == "probe" else "dense")
        self.pooler = None if token_level else Pooler(self.backbone.encoder.dim, pooling)
        self.head: nn.Module | None = None
        self.register_buffer("class_weights", None, persistent=False)
        self.metrics = nn.ModuleDict()
        if num_labels is not None or classes:
            self._build_head(num_labels or len(classes))
        self._freeze()

    # ------------------------------------------------------------------------ building
    def _build_head(self, num_labels: int) -> None:
        """The task head, metrics and class weights for ``num_labels`` outputs."""
        classes = self.hparams.get("classes")
        if classes and len(classes) != num_labels:
            raise ValueError(
                f"FineTuningModule: {len(classes)} class names for num_labels={num_labels}"
            )
        weights = self.hparams.get("class_weights")
        if weights is not None and len(weights) != num_labels:
            raise ValueError(
                f"FineTuningModule: class_weights has {len(weights)} entries for "
                f"{num_labels} classes"
            )
        dim, dropout = self.backbone.encoder.dim, self.hparams.head_dropout
        if self.task == "token_classification":
            self.head = PositionClassifier(dim, num_labels, dropout)
        else:
            self.head = ClassifierHead(dim, num_labels, self.head_kind, dropout)
        self.head.to(self.device)
        if weights is not None:
            self.class_weights = torch.tensor(weights, dtype=torch.float, device=self.device)
        self.metrics = nn.ModuleDict(
            {stage: task_metrics(self.task, num_labels, f"{stage}/") for stage in ("val", "test")}
        ).to(self.device)
        self.hparams["num_labels"] = num_labels
        self.batcher.num_labels = num_labels

    def _freeze(self) -> None:
        """Which backbone weights train, by mode."""
        if self.mode == "probe":
            self.backbone.requires_grad_(False)
        elif self.mode == "lora":
            self.backbone.requires_grad_(False)
            encoder = self.backbone.encoder
            add_lora(
                encoder, self.hparams.lora_rank, self.hparams.lora_alpha, self.hparams.lora_dropout
            )
        elif self.hparams.freeze_blocks:
            names = [name for name, _ in self.backbone.named_parameters()]
            depth = trunk_depth(names)
            for name, param in self.backbone.named_parameters():
                if layer_index(name, depth) <= self.hparams.freeze_blocks:
                    param.requires_grad = False

    def setup(self, stage: str) -> None:
        """Take the number of labels (and class names) from the ``labels.json`` beside the
        datamodule's shards, when not given, and check them against it when given."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        spec = labels_beside_shards(datamodule) if datamodule is not None else None
        if spec is not None:
            self.use_label_spec(spec)
        if self.head is None:
            raise ValueError(
                "FineTuningModule: num_labels is not set and no labels.json lies beside the "
                "data's shards; set --model.num_labels (or write labels.json, see "
                "mmm.data.labels)"
            )

    def use_label_spec(self, spec: LabelSpec) -> None:
        """Size the head from ``spec`` (or check the head against it).

        Raises:
            ValueError: when the spec's task or label count differs from the module's.
        """
        if spec.task != self.task:
            raise ValueError(
                f"FineTuningModule: task={self.task!r}, but the data's labels.json says "
                f"{spec.task!r}; set --model.task {spec.task}"
            )
        if self.head is not None and self.hparams.num_labels != spec.num_labels:
            raise ValueError(
                f"FineTuningModule: num_labels={self.hparams.num_labels}, but the data's "
                f"labels.json has {spec.num_labels}"
            )
        if spec.classes and not self.hparams.get("classes"):
            self.hparams["classes"] = list(spec.classes)
        if self.head is None:
            self._build_head(spec.num_labels)

    def train(self, mode: bool = True) -> FineTuningModule:
        """Train mode, but a probed (frozen) backbone stays in eval mode: no dropout."""
        super().train(mode)
        if self.mode == "probe":
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------------- passes
    def forward(self, batch: dict) -> Tensor:
        """Logits (or values) of a batch: (B, C) for sample-level tasks, (B_m, L_m, C) at
        the modality's positions for token-level ones."""
        inputs = self.backbone.modality_batch(
            {k: v for k, v in batch.items() if k not in NOT_INPUTS}
        )
        with torch.no_grad() if self.mode == "probe" else contextlib.nullcontext():
            states = self.backbone.encode_modalities(inputs)[0]  # modality -> (B_m, L_m, D)
        if self.task == "token_classification":
            return self.head(states[self.modality])  # (B_m, L_m, C)
        outputs = self.head(self.pool(inputs, states))  # (B, C)
        if self.task == "regression":  # standardized -> label units
            return outputs * self.hparams.target_std + self.hparams.target_mean
        return outputs

    def pool(self, inputs: ModalityBatch, states: dict[str, Tensor]) -> Tensor:
        """One vector per sample, (B, D), from the real positions of the pooled modalities."""
        names = [self.modality] if self.modality else list(states)
        x, real = pack_states(
            {name: states[name] for name in names if name in states},
            {name: inputs[name]["attention_mask"] for name in names if name in states},
            {name: inputs[name].get("rows") for name in names if name in states},
            _batch_size(inputs),
        )  # (B, T, D), (B, T)
        return self.pooler(x, real)

    def loss(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """The task's loss: cross-entropy (optionally class-weighted), binary cross-entropy
        per label, mean squared error, or cross-entropy over labelled units."""
        weights = self.class_weights
        if self.task == "classification":
            return F.cross_entropy(outputs.float(), labels, weight=weights)
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(outputs.float(), labels, weight=weights)
        if self.task == "regression":
            values = outputs.float().squeeze(-1) if labels.ndim == 1 else outputs.float()
            return F.mse_loss(values, labels) / self.hparams.target_std**2  # standardized
        logits = outputs.float().flatten(0, 1)  # (B_m * L_m, C)
        return F.cross_entropy(logits, labels.flatten(), weight=weights, ignore_index=IGNORE)

    # ------------------------------------------------------------------------ lightning
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self.loss(self(batch), batch["labels"])
        check_finite(self, loss, f"training step {self.global_step}", across_ranks=True)
        size = len(batch["labels"])
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, batch_size=size)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=size)
        log_skipped(self, batch, size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def _evaluation_step(self, batch: dict, stage: str) -> None:
        """Loss and metrics of an unmasked batch in eval mode: deterministic (no masking,
        no dropout, the tokenizers' evaluation views)."""
        outputs, labels = self(batch), batch["labels"]
        loss = self.loss(outputs, labels)
        check_finite(self, loss, f"{stage} batch (after step {self.global_step})")
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(labels))
        self.metrics[stage].update(*metric_inputs(self.task, outputs.detach(), labels))

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> None:
        if stage in self.metrics and is_updated(self.metrics[stage]):
            self.log_dict(computed(self.metrics[stage]))

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        """Outputs of a batch: ``logits`` and ``probabilities`` (classification kinds) or
        ``values`` (regression)."""
        return predictions(self.task, self(batch))

    def configure_optimizers(self):
        exempt = {f"backbone.{name}" for name in self.backbone.no_weight_decay()}
        exempt |= {name for name, param in self.named_parameters() if param.ndim < 2}
        decay = self.hparams.layer_decay if self.mode == "full" else 1.0
        groups = parameter_groups(self, self.hparams.lr, self.hparams.weight_decay, decay, exempt)
        for group in groups:
            del group["names"]  # kept for inspection only
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        total = self.trainer.max_steps if self._trainer is not None else -1
        scheduler = warmup_schedule(optimizer, self.hparams.warmup_steps, total)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the tokenizers' fingerprints; in ``lora`` mode keep only the trained
        weights (adapters, head): the base weights are the pretraining checkpoint's."""
        self.backbone.on_save_checkpoint(checkpoint)
        if self.mode == "lora":
            trainable = {name for name, param in self.named_parameters() if param.requires_grad}
            checkpoint["state_dict"] = adapter_state(checkpoint["state_dict"], trainable)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse tokenizers changed since (see ``MaskedModelingModule.on_load_checkpoint``);
        a ``lora`` checkpoint's missing base weights are the ones just loaded from the
        pretraining checkpoint."""
        self.backbone.on_load_checkpoint(
            {"tokenizer_fingerprints": checkpoint.get("tokenizer_fingerprints", {})}
        )
        if self.mode == "lora":
            state = checkpoint["state_dict"]
            base = {k: v for k, v in self.state_dict().items() if k not in state}
            checkpoint["state_dict"] = {**base, **state}

    def output_layer(self) -> tuple[Tensor, Tensor]:
        """The head's last linear layer, (C, D) weight and (C,) bias, with the regression
        targets' scaling folded in: what a stock model's last layer must hold to give
        this module's outputs."""
        weight, bias = self.head.output_layer()  # an eval-mode norm folded in
        if self.task != "regression":
            return weight, bias
        std, mean = self.hparams.target_std, self.hparams.target_mean
        return weight * std, bias * std + mean

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The LoRA adapters' weights alone (``lora`` mode)."""
        return {name: p.detach() for name, p in self.named_parameters() if is_adapter(name)}


def predictions(task: Task, outputs: Tensor) -> dict[str, Tensor]:
    """``logits`` and ``probabilities`` (softmax; sigmoid per label for multilabel) of
    classification kinds, ``values`` of regression."""
    if task == "regression":
        return {"values": outputs.float()}
    probabilities = (
        outputs.float().sigmoid() if task == "multilabel" else outputs.float().softmax(-1)
    )
    return {"logits": outputs.float(), "probabilities": probabilities}


def labels_beside_shards(datamodule: Any) -> LabelSpec | None:
    """The datamodule's ``label_spec()`` (its labelled corpus or folder), else the
    ``labels.json`` in the folder of its first local shard pattern (training, then
    validation, test and predict), or ``None``."""
    try:
        return datamodule.label_spec()
    except (AttributeError, ValueError, FileNotFoundError):
        pass  # shards named directly: look beside them
    for split in ("train_shards", "val_shards", "test_shards", "predict_shards"):
        for pattern in getattr(datamodule, split, None) or []:
            if "://" in pattern or pattern.startswith("pipe:"):
                continue
            folder = Path(pattern.split("::")[0]).parent
            if (folder / "labels.json").is_file():
                return LabelSpec.load(folder)
    return None


# ---------------------------------------------------------------------------- helpers
def _check_arguments(arguments: dict[str, Any]) -> None:
    """Refuse inconsistent arguments, naming the argument and the allowed values."""
    task, mode = arguments["task"], arguments["mode"]
    checks = [
        (task in TASKS, f"task must be one of {TASKS}, got {task!r}"),
        (mode in MODES, f"mode must be one of {MODES}, got {mode!r}"),
        (
            arguments["pooling"] in ("mean", "attention", "cls"),
            f"pooling must be mean, attention or cls, got {arguments['pooling']!r}",
        ),
        (
            arguments["head"] in (None, *HEAD_KINDS),
            f"head must be one of {HEAD_KINDS}, got {arguments['head']!r}",
        ),
        (
            arguments["backbone"] is not None or arguments["checkpoint"] is not None,
            "give a backbone (a model section) or a pretraining checkpoint",
        ),
        (
            not arguments["from_scratch"] or arguments["checkpoint"] is not None,
            "from_scratch keeps a checkpoint's architecture: set checkpoint (a backbone "
            "without checkpoint starts random already)",
        ),
        (
            not (mode == "lora" and arguments["from_scratch"]),
            "mode=lora trains adapters on frozen pretrained weights; the from-scratch "
            "control is mode=full with from_scratch=true",
        ),
        (
            not (mode == "probe" and arguments["head"] == "dense"),
            "a probe is a linear head on frozen states: head=linear or norm_linear (or leave "
            "it unset)",
        ),
        (0.0 < arguments["layer_decay"] <= 1.0, "layer_decay must lie in (0, 1]"),
        (arguments["freeze_blocks"] >= 0, "freeze_blocks must be >= 0"),
        (arguments["lora_rank"] >= 1, "lora_rank must be >= 1"),
        (arguments["lr"] > 0, "lr must be > 0"),
        (arguments["warmup_steps"] >= 0, "warmup_steps must be >= 0"),
        (0.0 <= arguments["head_dropout"] < 1.0, "head_dropout must lie in [0, 1)"),
        (arguments["target_std"] > 0, f"target_std must be > 0, got {arguments['target_std']}"),
        (
            arguments["num_labels"] is None or arguments["num_labels"] >= 1,
            f"num_labels must be >= 1, got {arguments['num_labels']}",
        ),
        (
            arguments["class_weights"] is None or task != "regression",
            "class_weights are for classification tasks, not regression",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"FineTuningModule: {message}")


@contextlib.contextmanager
def _own_hyperparameters() -> Iterator[None]:
    """Build a backbone that records its own hyperparameters: LightningCLI hands the ones
    of the module it instantiates through a context variable, which a module built inside
    that constructor would otherwise take for its own."""
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


def _checkpoint_config(path: str, saved: dict) -> dict:
    """The hyperparameters pretraining checkpoint ``saved`` (read from ``path``) was built
    with."""
    config = dict(saved.get("hyper_parameters", {}))
    if config.pop("_instantiator", None) is None:
        raise ValueError(
            f"FineTuningModule: {path} was written by a MaskedModelingModule built in Python, "
            "whose checkpoint lacks its tokenizers and encoder; pass that module as backbone= "
            "(with its weights loaded) instead"
        )
    return config


def _architecture(config: dict) -> MaskedModelingModule:
    """A randomly initialized ``MaskedModelingModule`` built from a checkpoint's
    hyperparameters (the configuration ``mmm fit`` parsed)."""
    from lightning.pytorch.cli import instantiate_module

    with _own_hyperparameters():
        return instantiate_module(MaskedModelingModule, config)


def _build_backbone(
    backbone: MaskedModelingModule | None,
    checkpoint: str | None,
    from_scratch: bool,
    config: dict | None,
    mode: str,
) -> tuple[MaskedModelingModule, dict | None]:
    """The backbone and, when it comes from ``checkpoint``, the checkpoint's hyperparameters.

    ``backbone`` as it is, or ``checkpoint``'s architecture with its weights: not when
    ``from_scratch``, nor when ``config`` (the hyperparameters recorded in a fine-tuned
    checkpoint) says the module is being restored and the state dict about to be loaded
    holds them, unless LoRA saved adapters only. A ``backbone`` whose ``init_from`` names an
    exported directory starts from it here, before its heads are dropped and adapters added."""
    if checkpoint is None:
        if backbone is not None and backbone.pending_init_from() is not None:
            from mmm.export import init_from

            init_from(backbone, backbone.pending_init_from())
        return backbone, None
    if backbone is not None:
        rank_zero_info(f"FineTuningModule: the backbone is {checkpoint}'s (model.backbone unused)")
    restoring = config is not None
    needs_weights = not from_scratch and (not restoring or mode == "lora")
    saved = None
    if needs_weights or not restoring:
        try:
            saved = read_checkpoint(checkpoint)
        except FileNotFoundError as error:
            if not restoring:
                raise
            raise FileNotFoundError(
                f"FineTuningModule: a LoRA checkpoint holds adapters only; its base weights "
                f"come from the pretraining checkpoint {checkpoint}, which is gone"
            ) from error
    config = config if restoring else _checkpoint_config(checkpoint, saved)
    module = _architecture(config)
    if needs_weights:
        module.on_load_checkpoint(saved)  # tokenizer fingerprints; old key names
        module.load_state_dict(saved["state_dict"])
    return module, config


def _input_batcher(batcher: MultimodalBatcher, modality: str | None) -> MultimodalBatcher:
    """The backbone's batcher, with every modality but ``modality`` optional when one is
    named: an image + text backbone fine-tunes on images alone."""
    if modality is None:
        return batcher
    optional = (batcher.optional | frozenset(batcher.tokenizers)) - {modality}
    return MultimodalBatcher(batcher.tokenizers, optional, batcher.members)


def _drop_pretraining_heads(backbone: MaskedModelingModule) -> MaskedModelingModule:
    """The backbone without its masked-LM heads and MAE decoders (and ELECTRA's generators
    and discriminator heads): fine-tuning never calls them, so they would only sit idle in
    optimizers, DDP and checkpoints."""
    for modality in backbone.modalities.values():
        modality.head = nn.Identity()
    backbone.electra = None
    return backbone


def _unsaved_hyperparameters() -> list[str]:
    """Arguments left out of the checkpoint's hyperparameters: a live ``backbone`` built in
    Python (under LightningCLI it is its configuration, which is kept; see
    ``mmm.module._unsaved_hyperparameters``)."""
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return [] if _given_hyperparameters.get() is not None else ["backbone"]
