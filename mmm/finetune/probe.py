"""The linear probe: what pretraining learned, read off frozen encoder states by a linear head.

A probe is the ``probe`` mode of ``FineTuningModule`` (frozen backbone in eval mode, mean
pooling, one linear layer), trained on the training split of labelled shards and scored on
their test split with the fine-tuning metrics (``torchmetrics``). ``linear_probe`` runs it
twice, with the same data, steps, seed and learning rate: on the checkpoint's encoder, and on
the same architecture randomly initialized (``from_scratch``: the control). What pretraining
bought is the gap between the two.

The labelled data is a labelled embedded corpus (``digits-labelled``, ``amp-labelled``, ...;
written on first use, no download) or a folder of labelled shards (``mmm shards --modality
manifest --label COLUMN``). The modality probed is the model's modality that reads the
corpus's input member (``labels.json``'s ``modality_member``), found by asking the model's
batcher which modalities read that member: no switch on tokenizer kinds.
"""

from __future__ import annotations

import copy
import json
import statistics
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L

from datamodules import ShardDataModule
from mmm.checks import require_at_least
from mmm.data.corpora import corpus_names, is_labelled_corpus
from mmm.data.labels import LABEL_MEMBER, LabelSpec
from mmm.data.patterns import expand_shards
from mmm.finetune.module import FineTuningModule
from mmm.module import MaskedModelingModule
from mmm.tokenizers.multimodal import MultimodalBatcher

#: The test metric a probe reports first, per task (all of the task's metrics are returned).
HEADLINE_METRIC = {
    "classification": "accuracy",
    "multilabel": "f1_macro",
    "regression": "r2",
    "token_classification": "token_accuracy",
}
#: The two encoders a probe compares: the checkpoint's weights, and the control.
ENCODERS = ("pretrained encoder", "random encoder")


@dataclass(frozen=True)
class ProbeReport:
    """What ``linear_probe`` measured."""

    modality: str
    """The model's modality that was probed."""
    task: str
    """The labels' task (``classification``, ``regression``, ...)."""
    scores: dict[str, dict[str, float]]
    """Per encoder (``ENCODERS``), its test metrics by name (``accuracy``, ``r2``, ...)."""

    @property
    def headline(self) -> str:
        """The metric printed first (``HEADLINE_METRIC``)."""
        return HEADLINE_METRIC[self.task]


class ProbeModalityError(ValueError):
    """The labelled data's inputs are not what the model's modality (or any of them) reads;
    the message names the data's member, the modality asked for, and those that read it."""


@dataclass(frozen=True)
class ProbeSettings:
    """How each of the two probes trains (the same for both)."""

    steps: int = 200
    """Optimizer steps of the linear head."""
    lr: float = 1e-2
    """Peak AdamW learning rate of the head (cosine decay to zero at the last step)."""
    batch_size: int = 64
    """Labelled samples per step."""
    label_fraction: float = 1.0
    """The label budget trained on (``1.0``, ``0.3``, ``0.1``; val and test do not change)."""
    seed: int = 0
    """Seeds the shard order, the head, and the control's random weights."""
    num_workers: int = 0
    """Loader worker processes (``0``: read in the main process)."""

    def data_options(self) -> dict[str, object]:
        """The ``ShardDataModule`` options these settings set."""
        return {
            "label_fraction": self.label_fraction,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "seed": self.seed,
        }

    def __post_init__(self) -> None:
        require_at_least("probe", 1, steps=self.steps, batch_size=self.batch_size)
        if self.lr <= 0:
            raise ValueError(f"probe: lr must be > 0, got {self.lr}")
        if self.num_workers < 0:
            raise ValueError(f"probe: num_workers must be >= 0, got {self.num_workers}")


def labelled_corpus_name(data: str) -> str | None:
    """The labelled embedded corpus ``data`` names (``digits`` stands for
    ``digits-labelled``), or ``None``."""
    return next((name for name in (data, f"{data}-labelled") if is_labelled_corpus(name)), None)


def labelled_source(data: str) -> dict[str, str]:
    """The ``ShardDataModule`` arguments that read ``data``: a folder of labelled shards
    (``labelled_dir``), or a labelled embedded corpus (``embedded``, see
    ``labelled_corpus_name``).

    Raises:
        ValueError: naming ``data`` and the labelled corpora, when it is neither.
    """
    if Path(data).is_dir():
        return {"labelled_dir": data}
    name = labelled_corpus_name(data)
    if name is None:
        raise ValueError(
            f"probe: data {data!r} is neither a folder of labelled shards nor a labelled "
            f"corpus; the labelled corpora are {labelled_corpora()}"
        )
    return {"embedded": name}


def labelled_corpora() -> list[str]:
    """The names of the labelled embedded corpora."""
    return [name for name in corpus_names() if is_labelled_corpus(name)]


def probe_modality(batcher: MultimodalBatcher, member: str, modality: str | None = None) -> str:
    """The model's modality that reads the labelled inputs' ``member`` (``png``, ``seq``):
    ``modality`` when it reads it, else the only one that does.

    Raises:
        ProbeModalityError: naming the member and the modalities that read it, when
            ``modality`` does not read it, or when none or several of the model's do.
    """
    readers = batcher.modalities_reading(member)
    inputs = f"the labelled inputs are '{member}' members"
    if modality is not None:
        if modality not in batcher.tokenizers:
            raise ProbeModalityError(
                f"probe: no modality {modality!r} in this model; it has {list(batcher.tokenizers)}"
            )
        if modality in readers:
            return modality
        can = f"its modalities that do: {readers}" if readers else "none of its modalities does"
        raise ProbeModalityError(
            f"probe: {inputs}, which this model's {modality!r} modality does not read "
            f"({can}); probe it on labelled data of its own modality"
        )
    if not readers:
        raise ProbeModalityError(
            f"probe: {inputs}, and none of this model's modalities {list(batcher.tokenizers)} "
            "reads them; probe it on labelled data of one of its modalities"
        )
    if len(readers) > 1:
        raise ProbeModalityError(
            f"probe: {inputs}, which this model's modalities {readers} all read: name the one "
            "to probe with --modality"
        )
    return readers[0]


def target_statistics(patterns: str | list[str]) -> tuple[float, float]:
    """Mean and standard deviation of the regression targets of the training shards, so that
    the head predicts standardized targets (``FineTuningModule(target_mean, target_std)``)
    as a ridge probe on standardized targets would. Only the ``label.json`` members are
    read. Several targets per sample are pooled."""
    values: list[float] = []
    for url in expand_shards(patterns):
        with tarfile.open(url) as tar:
            for info in tar:
                if info.name.endswith(f".{LABEL_MEMBER}"):
                    label = json.loads(tar.extractfile(info).read())
                    values.extend(label if isinstance(label, list) else [label])
    if len(values) < 2:
        return 0.0, 1.0
    return statistics.fmean(values), statistics.stdev(values) or 1.0


def probe_module(
    checkpoint: str,
    spec: LabelSpec,
    modality: str,
    control: bool,
    data: ShardDataModule,
    lr: float,
) -> FineTuningModule:
    """A ``FineTuningModule`` in ``probe`` mode on ``checkpoint``'s encoder (``control``: the
    same architecture, randomly initialized), its head sized by ``spec``."""
    targets = {}
    if spec.task == "regression":
        mean, std = target_statistics(data.train_shards)
        targets = {"target_mean": mean, "target_std": std}
    return FineTuningModule(
        checkpoint=checkpoint,
        from_scratch=control,
        task=spec.task,
        num_labels=spec.num_labels,
        classes=list(spec.classes) or None,
        modality=modality,
        mode="probe",
        head="norm_linear",  # MAE's probe: features standardized, whatever their scale
        lr=lr,
        weight_decay=0.0,  # a linear probe on frozen features: nothing to regularize away
        **targets,
    )


def _trainer(steps: int) -> L.Trainer:
    """A quiet trainer of ``steps`` steps, on one device, without validation or checkpoints
    (the probe reports its last step's head on the test split). Seeds make two runs on one
    device agree; ``deterministic=True`` is left off, since it would switch torch to
    deterministic kernels process-wide and refuse some of them on GPUs."""
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    return L.Trainer(
        max_steps=steps, limit_val_batches=0, devices=1, enable_checkpointing=False, **quiet
    )


def probe_once(
    checkpoint: str,
    source: dict[str, str],
    modality: str,
    control: bool,
    settings: ProbeSettings,
    data_dir: str,
    source_dir: str | None,
) -> dict[str, float]:
    """Train one probe and return its test metrics (``accuracy``, ``r2``, ...)."""
    L.seed_everything(settings.seed, verbose=False)
    data = ShardDataModule(
        **source, **settings.data_options(), data_dir=data_dir, source_dir=source_dir
    )
    spec = data.label_spec()
    module = probe_module(checkpoint, spec, modality, control, data, lr=settings.lr)
    data.batcher = module.batcher
    trainer = _trainer(settings.steps)
    trainer.fit(module, datamodule=data)
    [scores] = trainer.test(module, datamodule=data, verbose=False)
    return {name.removeprefix("test/"): float(value) for name, value in scores.items()}


def linear_probe(
    checkpoint: str,
    data: str,
    modality: str | None = None,
    settings: ProbeSettings | None = None,
    data_dir: str = "data",
    source_dir: str | None = None,
) -> ProbeReport:
    """The test metrics of a linear probe on ``checkpoint``'s frozen encoder and on the same
    architecture randomly initialized, both trained alike on ``data``'s training split.

    Args:
        checkpoint: a pretraining checkpoint written by ``mmm fit``.
        data: a labelled embedded corpus (``digits-labelled`` or ``digits``) or a folder of
            labelled shards.
        modality: the modality of a multimodal model to probe (default: the one that reads
            the data's input member).
        settings: steps, learning rate, batch size, label budget, seed.
        data_dir: where embedded corpora are written.
        source_dir: the dataset folder a corpus reads (``fsdd-labelled``).

    Returns:
        The modality probed and, per encoder, its test metrics.
    """
    from mmm.inference import load_module

    settings = settings or ProbeSettings()
    source = labelled_source(data)
    prepared = ShardDataModule(**source, data_dir=data_dir, source_dir=source_dir)
    prepared.prepare_data()  # the corpus's shards, written once
    spec = prepared.label_spec()
    name = probe_modality(load_module(checkpoint).batcher, spec.modality_member, modality)
    scores = {
        encoder: probe_once(
            checkpoint, source, name, control, settings, data_dir=data_dir, source_dir=source_dir
        )
        for encoder, control in zip(ENCODERS, (False, True), strict=True)
    }
    return ProbeReport(modality=name, task=spec.task, scores=scores)


def labelled_test_accuracy(
    backbone: MaskedModelingModule,
    corpus: str = "docstrings-labelled",
    mode: Literal["probe", "full"] = "probe",
    steps: int = 200,
    lr: float = 1e-2,
    precision: str = "32-true",
    seed: int = 0,
    batch_size: int = 32,
) -> float:
    """Test accuracy on the labelled corpus ``corpus`` after ``steps`` steps of
    ``FineTuningModule`` on a copy of ``backbone`` (a module in memory, for scripts that
    compare models they just trained): ``mode="probe"`` (frozen trunk, mean pooling, MAE's
    normalized linear head, as ``mmm probe`` runs it) or ``"full"`` (layer-wise decay); fixed
    steps, no checkpoint selection, seeded."""
    L.seed_everything(seed, verbose=False)
    tuner = FineTuningModule(
        backbone=copy.deepcopy(backbone),
        task="classification",
        mode=mode,
        head="norm_linear" if mode == "probe" else None,
        lr=lr,
        warmup_steps=steps // 10,
    )
    data = ShardDataModule(
        embedded=corpus, batcher=tuner.batcher, batch_size=batch_size, num_workers=0, seed=seed
    )
    trainer = L.Trainer(
        max_steps=steps,
        precision=precision,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(tuner, datamodule=data)
    [scores] = trainer.test(tuner, datamodule=data, verbose=False)
    return float(scores["test/accuracy"])
