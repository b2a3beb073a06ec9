"""Lightning callbacks: pictures of what a masked autoencoder reconstructs, a progress bar
that tells the truth about step-bounded training, and an online linear probe of what the
encoder learned.

A masked autoencoder is judged by looking at it: a loss value says little about whether
reconstructions are sharp, blurry or wrong. ``ReconstructionImages`` draws, at each
validation, a few validation samples as original / masked input / reconstruction.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torchvision.utils import make_grid, save_image

from mmm.checks import require_at_least

if TYPE_CHECKING:
    from mmm.data.corpora import LabelledCorpus
    from mmm.tokenizers.multimodal import MultimodalBatcher


@runtime_checkable
class Renderable(Protocol):
    """A tokenizer that can draw its vectors: ``render((B, L, P)) -> (B, C, H, W)`` in [0, 1]
    (image patches as pictures, spectrogram patches as a spectrogram image, ...)."""

    def render(self, patches: Tensor) -> Tensor: ...


class ReconstructionImages(L.Callback):
    """Save (and log) a grid of original / masked / reconstructed validation samples.

    On the first validation batch of every ``every_n_validations``-th validation (sanity check
    excluded), the first ``num_images`` samples are masked and reconstructed by the module;
    rows show the originals, the visible input (hidden patches as zeros) and the
    reconstruction (visible patches kept, hidden ones predicted). The grid is written to
    ``<log_dir>/reconstructions/step_XXXXXX.png`` and logged to TensorBoard (``add_image``) or
    to any logger with a ``log_image`` method.

    Works for every continuous modality whose tokenizer has ``render`` (``Renderable``) and
    whose modality has ``reconstruct`` (``ContinuousModality``), alone or beside other modalities
    (which the model then sees as context, or predicts the picture from when a masking
    across modalities hides all of it).

    Args:
        num_images: samples drawn (columns of the grid).
        every_n_validations: draw at every n-th validation run.
        modality: the modality drawn; default the module's only continuous one.
    """

    def __init__(
        self, num_images: int = 8, every_n_validations: int = 1, modality: str | None = None
    ) -> None:
        require_at_least(
            "ReconstructionImages",
            1,
            num_images=num_images,
            every_n_validations=every_n_validations,
        )
        self.num_images = num_images
        self.every_n_validations = every_n_validations
        self.modality = modality
        self._validations = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        drawable = [
            name
            for name, part in pl_module.modalities.items()
            if hasattr(part, "reconstruct") and isinstance(pl_module.tokenizers[name], Renderable)
        ]
        if self.modality is None and len(drawable) == 1:
            self.modality = drawable[0]
        if self.modality not in drawable:
            raise TypeError(
                "ReconstructionImages needs a continuous modality with reconstruct() and a "
                f"tokenizer with render(patches); drawable: {drawable}, asked: {self.modality}"
            )

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Tensor],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations or not trainer.is_global_zero:
            return
        grid = self.draw(pl_module, batch)  # (3, H, W)
        path = os.path.join(
            trainer.log_dir or trainer.default_root_dir,
            "reconstructions",
            f"step_{trainer.global_step:06d}.png",
        )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_image(grid, path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/reconstructions", grid, trainer.global_step)
            elif hasattr(logger, "log_image"):  # Weights & Biases, Neptune, ...
                logger.log_image(key="val/reconstructions", images=[grid], step=trainer.global_step)

    @torch.no_grad()
    def draw(self, pl_module: L.LightningModule, batch: dict) -> Tensor:
        """The grid for the first ``num_images`` samples of ``batch`` that carry the modality:
        (3, H, W) in [0, 1]."""
        inputs = first_samples(pl_module.modality_batch(batch), self.modality, self.num_images)
        out = pl_module.forward_masked(inputs)[self.modality]
        sub = inputs[self.modality]
        original = sub["patches"].float()  # (n, L, P)
        visible = original * ~out.mask.unsqueeze(-1)  # hidden patches zeroed
        reconstruction = pl_module.modalities[self.modality].reconstruct(sub, out.mask, out.pred)
        render = pl_module.tokenizers[self.modality].render
        rows = torch.cat([render(original), render(visible), render(reconstruction)])
        return make_grid(rows.float().cpu(), nrow=original.shape[0], padding=2, pad_value=1.0)


def _sample_rows(sub: dict[str, Tensor]) -> Tensor:
    """(B_m,) the samples a sub-batch's rows belong to, on its device."""
    mask = sub["attention_mask"]
    return sub.get("rows", torch.arange(mask.shape[0], device=mask.device))


def first_samples(inputs: dict[str, dict[str, Tensor]], name: str, count: int) -> dict:
    """The sub-batches of the first ``count`` samples that carry modality ``name``, with the
    other modalities of those samples (their rows renumbered)."""
    chosen = {}
    rows = _sample_rows(inputs[name])[:count]  # (n,)
    for key, other in inputs.items():
        own = _sample_rows(other)  # (B_m,)
        keep = torch.isin(own, rows)  # (B_m,)
        if not keep.any():
            continue
        part = {k: v[keep] for k, v in other.items() if k != "rows"}
        if int(keep.sum()) < len(rows):  # not every chosen sample carries this modality
            part["rows"] = torch.searchsorted(rows, own[keep])  # positions among the chosen
        chosen[key] = part
    return chosen


class TrainingProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with the epoch count of step-bounded runs.

    mmm's configs bound training by ``max_steps`` (``max_epochs`` is then -1), for which
    Lightning shows ``Epoch 3/-2``; this bar shows the last epoch that ``max_steps`` reaches
    (``Epoch 3/3``). It also leaves out ``v_num``, the logger's version number, which the rich
    bar prints as a float (``v_num: 0.000``); the log folder names the version.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        batches = trainer.num_training_batches
        bounded_by_steps = trainer.max_epochs in (None, -1) and trainer.max_steps > 0
        if not bounded_by_steps or not 0 < batches < math.inf:
            return super()._get_train_description(current_epoch)
        last_epoch = math.ceil(trainer.max_steps / batches) - 1
        return f"Epoch {current_epoch}/{last_epoch}"

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class StopOnSigterm(L.Callback):
    """Stop at once on SIGTERM, also while the run waits for data.

    Lightning's SIGTERM handler only sets a flag that its loops check between batches, so a
    run whose loader stalls (shards that stream slowly, or none) ignored SIGTERM. Once
    Lightning's handlers are in place, this adds one that, after Lightning's own, raises
    Lightning's ``SIGTERMException`` in the main thread: Lightning then stops the loader
    workers and the run ends with exit code 143 (128 + SIGTERM). Lightning's teardown may
    itself wait on what stalled (webdataset waits for a ``pipe:`` shard command to end when
    the main process reads shards itself, ``num_workers=0``), so the process exits without
    it once ``teardown_timeout_s`` has passed.

    Args:
        teardown_timeout_s: seconds Lightning's teardown gets after SIGTERM before the
            process exits (code 143) without it.
    """

    def __init__(self, teardown_timeout_s: float = 10.0) -> None:
        if teardown_timeout_s <= 0:
            raise ValueError(
                f"StopOnSigterm: teardown_timeout_s must be > 0, got {teardown_timeout_s}"
            )
        self.teardown_timeout_s = teardown_timeout_s

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        previous = signal.getsignal(signal.SIGTERM)
        if getattr(previous, "stops_on_sigterm", False):
            return

        def stop(signum: int, frame: FrameType | None) -> None:
            if callable(previous):
                previous(signum, frame)
            self._exit_if_teardown_stalls()
            raise SIGTERMException(128 + signal.SIGTERM)

        stop.stops_on_sigterm = True  # type: ignore[attr-defined]
        signal.signal(signal.SIGTERM, stop)

    def _exit_if_teardown_stalls(self) -> None:
        """Exit with 143 in ``teardown_timeout_s`` unless the process has ended by then (a
        daemon thread: signal handlers may be reset by the teardown it guards)."""

        def exit_now() -> None:
            print(
                f"SIGTERM: teardown did not end within {self.teardown_timeout_s} s; exiting",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + signal.SIGTERM)

        timer = threading.Timer(self.teardown_timeout_s, exit_now)
        timer.daemon = True
        timer.start()


class CheckpointAtTrainEnd(L.Callback):
    """Save the last step when training ends on a step no checkpoint holds: Lightning's
    ``ModelCheckpoint`` saves at validation ends, so a run of ``max_steps`` 5 validating every
    3 steps would otherwise keep step 3 and lose steps 4-5. The file goes to the checkpoint
    callback's folder under its usual name (``epoch=0-step=5.ckpt``): a name carrying the step
    never passes off an older run's file as the latest. Nothing is written when checkpointing
    is off or the run failed."""

    def __init__(self) -> None:
        self.saved_step: int | None = None

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.saved_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        callback = trainer.checkpoint_callback
        if callback is None or callback.dirpath is None or trainer.global_step == 0:
            return
        if self.saved_step == trainer.global_step:
            return
        metrics = {
            **trainer.callback_metrics,
            "epoch": torch.tensor(trainer.current_epoch),
            "step": torch.tensor(trainer.global_step),
        }
        trainer.save_checkpoint(callback.format_checkpoint_name(metrics))


class OnlineLinearProbe(L.Callback):
    """A linear classifier trained alongside pretraining on stop-gradient pooled features of a
    labelled corpus, its test-split accuracy logged as ``probe/accuracy`` at every validation
    (solo-learn / lightly's online probe).

    After each training batch the probe takes one step on the next labelled minibatch of the
    corpus's training split. Its features come from ``MaskedModelingModule.embed`` (eval
    mode, no gradient) under a forked random state, so pretraining sees the same gradients,
    masks and dropout as without it. The probe and its optimizer live here, not in the
    module: checkpoints are unchanged. The samples are decoded once, when the run starts, by
    the model's own tokenizer in its evaluation view (no augmentation).

    Args:
        data: a labelled corpus with classes (``digits-labelled`` for images,
            ``amp-labelled`` for proteins, ``docstrings-labelled`` for text, ...; the
            ``-labelled`` may be left off). Its test split is the one fine-tuning tests on.
        modality: the modality of a multimodal model the probe reads (default: the one that
            reads the corpus's inputs; see ``mmm.finetune.probe.probe_modality``).
        batch_size: labelled samples per probe step.
        lr: the probe's Adam learning rate.
        limit: use at most ``limit`` samples of each split (drawn at random) only.
        seed: the seed of that draw and of the probe's initialization.
        source_dir: the dataset folder a corpus reads (``fsdd-labelled``).
    """

    def __init__(
        self,
        data: str = "digits-labelled",
        modality: str | None = None,
        batch_size: int = 64,
        lr: float = 1e-3,
        limit: int | None = None,
        seed: int = 0,
        source_dir: str | None = None,
    ) -> None:
        require_at_least("OnlineLinearProbe", 1, batch_size=batch_size, limit=limit)
        self.data, self.modality, self.batch_size, self.lr = data, modality, batch_size, lr
        self.limit, self.seed, self.source_dir = limit, seed, source_dir
        self.probe: torch.nn.Linear | None = None
        self.modality_name: str | None = None  # resolved in setup
        self._cursor = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from mmm.data.corpora import labelled_corpus
        from mmm.finetune.probe import labelled_corpora, labelled_corpus_name, probe_modality

        name = labelled_corpus_name(self.data)
        if name is None:
            raise ValueError(
                f"OnlineLinearProbe: data {self.data!r} is no labelled corpus; choose from "
                f"{labelled_corpora()}"
            )
        corpus = labelled_corpus(name, self.source_dir)
        if corpus.spec.task != "classification":
            raise ValueError(f"OnlineLinearProbe: {name!r} is {corpus.spec.task}, not classes")
        member = corpus.spec.modality_member
        self.modality_name = probe_modality(pl_module.batcher, member, self.modality)
        self.batcher = pl_module.batcher.only(self.modality_name).for_evaluation()
        splits = labelled_splits(corpus, self.batcher, self.limit, self.seed)
        (self.train_items, self.train_labels), (self.test_items, self.test_labels) = splits
        with torch.random.fork_rng():  # its initialization must not move pretraining's RNG
            torch.manual_seed(self.seed)
            self.probe = torch.nn.Linear(pl_module.encoder.dim, len(corpus.spec.classes))
        self.probe.to(pl_module.device)
        self.optimizer = torch.optim.Adam(self.probe.parameters(), lr=self.lr)

    def features(self, pl_module: L.LightningModule, items: list[Any]) -> Tensor:
        """Pooled states (B, D) float32 of decoded ``items``: eval mode, no gradient, random
        state restored afterwards (``embed`` of a discrete modality draws corruption
        noise)."""
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        was_training = pl_module.training
        batch = {
            name: {key: value.to(pl_module.device) for key, value in sub.items()}
            for name, sub in self.batcher.collate(items).items()
        }
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            pl_module.eval()
            pooled = pl_module.embed(batch)[1].float()  # (B, D)
            pl_module.train(was_training)
        return pooled

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        start = self._cursor % len(self.train_items)
        stop = start + self.batch_size
        self._cursor = stop
        items = self.train_items[start:stop]
        labels = self.train_labels[start:stop].to(pl_module.device)
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(
                self.probe(self.features(pl_module, items)), labels
            )
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        pl_module.log("probe/train_loss", loss.detach(), on_step=True, batch_size=len(items))

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        correct = 0
        for start in range(0, len(self.test_items), self.batch_size):
            items = self.test_items[start : start + self.batch_size]
            predicted = self.probe(self.features(pl_module, items)).argmax(dim=-1).cpu()
            correct += int((predicted == self.test_labels[start : start + len(items)]).sum())
        pl_module.log("probe/accuracy", correct / len(self.test_items), sync_dist=True)


def labelled_splits(
    corpus: LabelledCorpus, batcher: MultimodalBatcher, limit: int | None, seed: int
) -> tuple[tuple[list[Any], Tensor], tuple[list[Any], Tensor]]:
    """The decoded training and test samples of a labelled ``corpus`` and their class
    indices (its own splits, as ``mmm.data.labelled`` writes them), each shuffled with
    ``seed`` and cut to ``limit``.

    Raises:
        SampleError: naming the sample, when one cannot be decoded or its label is unusable.
    """
    from mmm.data.labelled import split_of
    from mmm.finetune.batching import parse_sample_label

    splits: dict[str, list[dict]] = {"train": [], "test": []}
    for sample in corpus.samples:
        split = split_of(sample, corpus.val_fraction, corpus.test_fraction)
        if split in splits:
            splits[split].append(sample)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for samples in splits.values():
        order = torch.randperm(len(samples), generator=generator)[:limit].tolist()
        chosen = [samples[i] for i in order]
        items = [batcher.decode_sample(sample) for sample in chosen]
        labels = [parse_sample_label(sample, corpus.spec) for sample in chosen]
        out.append((items, torch.as_tensor(labels, dtype=torch.long)))
    return out[0], out[1]
