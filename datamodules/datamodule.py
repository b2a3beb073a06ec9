"""WebDataset-backed data for every modality: shards in, padded batches out, at any scale.

One ``ShardDataModule`` serves all modalities: what differs (which shard members to read, how
to decode and batch them) is the batcher's job. Shards may be local paths, globs,
brace-expanded lists (``data/train-{000000..000009}.tar``), text files listing one shard URL
per line (``shards.txt``), or ``pipe:`` URLs for object storage
(``pipe:aws s3 cp s3://bucket/train-000000.tar -``), several joined with ``::``
(``mmm.data.patterns.expand_shards``).

Training (``elastic``, the default) reads an endless global order of samples, pass after pass,
each shuffled with the seed and the pass number, that no layout of ranks x workers changes:
each rank and worker reads its slice of every step, and a run resumes from the step it reached
under any layout (``datamodules.order``, ``datamodules.elastic``). Epochs hold the same number of
batches on every rank, so DDP never waits on a rank that ran dry. Validation reads every sample
exactly once (``exact``): shards are dealt to ``ranks x workers`` readers, no two readers share
one. ``resampled`` training streams each reader's own shards instead (remote shards too).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from datamodules.elastic import ElasticPipeline, epoch_steps
from datamodules.embedded import prepare_embedded
from datamodules.pipeline import Mode, ShardPipeline, TrainLoader
from datamodules.shards import OnError, inspect_shards, usable_local_shards
from datamodules.state import Layout, ReaderState, SourcePosition
from mmm.checks import require_at_least, require_one_of
from mmm.data.corpora import is_labelled_corpus, reads_folder
from mmm.data.labelled import budget_prefix, split_pattern
from mmm.data.labels import LabelSpec
from mmm.data.patterns import expand_shards, is_remote
from mmm.tokenizers.multimodal import Batcher

log = logging.getLogger(__name__)

#: How training reads: ``elastic`` (a global order, resumable under any layout),
#: ``resampled`` (each reader streams its own shards) or ``exact`` (each sample once per epoch).
TrainMode = Literal["elastic", "resampled", "exact"]

# The length we report is exact by construction (every worker yields the same number of
# batches), which is the case Lightning's generic warning about IterableDataset lengths is not.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined")
# Lightning looks for resume state on the DataLoader; ours is in ShardDataModule.state_dict.
warnings.filterwarnings("ignore", message=r".*your dataloader is\s+not resumable")


class ShardDataModule(L.LightningDataModule):
    """Batches from WebDataset shards for any modality, split across ranks and workers.

    Training (``train_mode="elastic"``, the default) reads an endless, seeded global order of
    samples: every step's ``ranks x batch_size`` samples are the same whatever the number of
    ranks and workers, each rank reading its slice; an epoch is ``epoch_samples`` samples over
    all ranks, the same number of batches on every rank, so DDP never hangs. A checkpoint
    records the next step, so a run resumed under any ranks x workers with the same global
    batch trains on exactly the samples the uninterrupted run would have. Validation, test and
    predict read every sample exactly once over all ranks and workers (``exact``).

    Args:
        train_shards: training shards: a pattern (glob, braces, ``pipe:`` URL, ``.txt`` list
            file, several joined by ``::``; see ``expand_shards``), or a list of such
            patterns, one per source to mix (see ``train_weights``); defaults to the embedded
            corpus's ``train-*.tar`` when ``embedded`` is set (a labelled corpus's or
            ``labelled_dir``'s: the label budget ``label_fraction`` picks). ``elastic``
            training reads local files only (by sample number); ``resampled`` also streams
            ``pipe:`` URLs. A ``pipe:`` URL, also one listed in a ``.txt`` file, runs its
            command in a shell: use trusted lists only.
        val_shards: validation shards; defaults to the embedded corpus's ``val-*.tar``. A
            ``pipe:`` URL, also one listed in a ``.txt`` file, runs its command in a shell.
        test_shards: test shards; defaults to the ``test-*.tar`` of labelled corpora (and of
            ``labelled_dir``), else to ``val_shards``. A ``pipe:`` URL runs its command in a
            shell.
        predict_shards: shards for ``mmm predict``; defaults to ``val_shards``. A ``pipe:``
            URL runs its command in a shell.
        embedded: name of a corpus that ships with an installed package (``python-docs``),
            or a list of names: each is written to shards under ``data_dir`` on first use.
            Several corpora are several training sources, mixed by ``train_weights`` (e.g.
            text and proteins on one trunk), and their validation splits are read together.
            Labelled corpora (``digits-labelled``, ``amp-labelled``, ``freesolv-labelled``,
            ``solubility-labelled``, ``docstrings-labelled``, ``fsdd-labelled``) give
            train/val/test splits and label budgets (see ``docs/labelled-data.md``).
        data_dir: where embedded corpora are written.
        labelled_dir: a folder of labelled shards (``mmm shards --modality manifest --label
            COLUMN``: ``labels.json``, train/val/test splits and label budgets) to read like
            a labelled embedded corpus.
        label_fraction: the label budget to train on, of a labelled corpus or
            ``labelled_dir``: ``1.0`` (all training labels), ``0.3`` or ``0.1`` (nested,
            stratified, seeded subsets of them; val and test stay the same).
        source_dir: the folder of a user's copy of a public dataset that an embedded corpus
            reads: for ``fsdd-labelled``, a clone of the Free Spoken Digit Dataset (the folder
            holding ``recordings/``).
        batcher: what decodes and batches samples: a tokenizer (flat batches) or a module's ``MultimodalBatcher`` (batches keyed
            by modality; LightningCLI links ``model.batcher`` here).
        batch_size: samples per batch, per device.
        num_workers: loader worker processes per device.
        train_mode: ``elastic`` (a global order of local shards' samples, cut into equal
            epochs; DDP-safe; resumes exactly under any ranks x workers), ``resampled`` (each
            reader streams its own shards, local or remote; resumes exactly under the same
            ranks x workers only) or ``exact`` (each training sample once per epoch; single
            device only).
        epoch_samples: training samples per epoch over all ranks (resampled mode), rounded up
            to whole steps (``elastic``) or to whole batches on every worker. ``None`` counts the samples of the local
            training shards (a read of every member header); set it for remote shards, and
            for large data to skip that count.
        train_weights: with several ``train_shards`` patterns, the share of samples drawn
            from each (e.g. ``[0.7, 0.3]``); default equal shares. Resampled mode only.
        shuffle_block: ``elastic`` training: samples permuted together, consecutive in each
            pass's shuffled shard order (0 turns off all its shuffling, of shards and samples).
            Make it many shards' worth: the default is mosaicml/streaming's smallest default
            block, 2 MB of permutation per loader worker.
        shuffle_buffer: ``resampled`` training: samples held in each reader's shuffle buffer
            (0 turns off all its shuffling, of shards and samples).
        seed: seed of the global order (elastic) or of shard order, shuffle buffers and mixing
            (resampled); the order changes with every pass over the data.
        on_error: ``skip`` warns with the shard and key, skips and counts bad samples and
            unreadable shards (logged as ``data/skipped_samples`` per epoch); ``raise`` stops.
    """

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        predict_shards: str | list[str] | None = None,
        embedded: str | list[str] | None = None,
        data_dir: str = "data",
        labelled_dir: str | None = None,
        label_fraction: float = 1.0,
        source_dir: str | None = None,
        batcher: Batcher | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        train_mode: TrainMode = "elastic",
        epoch_samples: int | None = None,
        train_weights: list[float] | None = None,
        shuffle_block: int = 262_144,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        on_error: OnError = "skip",
    ) -> None:
        super().__init__()
        if train_shards is None and val_shards is None and not (embedded or labelled_dir):
            raise ValueError(
                "ShardDataModule: set train_shards/val_shards, an embedded corpus or a labelled_dir"
            )
        require_one_of("ShardDataModule", "train_mode", train_mode, get_args(TrainMode))
        require_one_of("ShardDataModule", "on_error", on_error, get_args(OnError))
        require_at_least("ShardDataModule", 1, batch_size=batch_size, epoch_samples=epoch_samples)
        require_at_least(
            "ShardDataModule",
            0,
            num_workers=num_workers,
            shuffle_block=shuffle_block,
            shuffle_buffer=shuffle_buffer,
        )
        self.embedded = [embedded] if isinstance(embedded, str) else list(embedded or [])
        self.data_dir = data_dir
        self.labelled_dir = labelled_dir
        self.label_fraction = label_fraction
        self.source_dir = source_dir
        self._check_labelled_options(train_shards)
        self.train_shards = _as_patterns(train_shards) or self._embedded_pattern("train")
        self.val_shards = _as_patterns(val_shards) or self._embedded_pattern("val")
        self.test_shards = (
            _as_patterns(test_shards) or self._labelled_patterns("test") or self.val_shards
        )
        self.predict_shards = _as_patterns(predict_shards) or self.val_shards
        _check_weights(train_weights, self.train_shards, train_mode)
        self.batcher = batcher
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_mode = train_mode
        self.epoch_samples = epoch_samples
        self.train_weights = train_weights
        self.shuffle_block = shuffle_block
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.on_error = on_error
        self._trained: dict[int, list[int]] = {}  # slot -> encoded state after its last batch
        self._train_stream: dict[str, Any] = {}  # shards, readers, batching the states refer to
        self._next_step: int | None = None  # elastic: the step after the last one trained on
        self._resumed: dict[str, Any] = {}  # elastic: the checkpoint's position and order

    def _check_labelled_options(self, train_shards: str | list[str] | None) -> None:
        """``label_fraction`` is a written budget of a labelled folder the module reads,
        and ``source_dir`` goes to a corpus that reads one.

        Raises:
            ValueError: naming the option and what it needs.
        """
        try:
            budget_prefix(self.label_fraction)
        except ValueError as error:
            raise ValueError(f"ShardDataModule: {error}") from None
        if self.label_fraction != 1.0 and (train_shards is not None or not self._labelled()):
            raise ValueError(
                f"ShardDataModule: label_fraction={self.label_fraction} picks a label budget "
                "of a labelled embedded corpus (*-labelled) or of labelled_dir, without "
                "train_shards; with train_shards, name the budget's shards instead "
                "(DIR/train-p10-[0-9]*.tar)"
            )
        if self.source_dir is not None and not any(map(reads_folder, self.embedded)):
            raise ValueError(
                f"ShardDataModule: source_dir={self.source_dir!r} is for an embedded corpus "
                f"that reads a folder (fsdd-labelled); none of {self.embedded} does"
            )

    def _labelled(self) -> list[str]:
        """The labelled folders read: labelled embedded corpora, then ``labelled_dir``."""
        folders = [
            os.path.join(self.data_dir, name) for name in self.embedded if is_labelled_corpus(name)
        ]
        return folders + ([self.labelled_dir] if self.labelled_dir is not None else [])

    def _labelled_patterns(self, split: str) -> list[str] | None:
        """A split's shards in each labelled folder; ``train``: the label budget's."""
        prefix = budget_prefix(self.label_fraction) if split == "train" else split
        return [split_pattern(folder, prefix) for folder in self._labelled()] or None

    def _embedded_pattern(self, split: str) -> list[str] | None:
        """One pattern per embedded corpus and labelled folder (training: one source each)."""
        patterns = [
            os.path.join(self.data_dir, name, f"{split}-*.tar")
            for name in self.embedded
            if not is_labelled_corpus(name)
        ]
        patterns += self._labelled_patterns(split) or []
        return patterns or None

    def label_spec(self) -> LabelSpec:
        """What the labels of the labelled folder read mean (its ``labels.json``); call it
        after ``prepare_data`` for an embedded corpus.

        Raises:
            ValueError: when the module reads no labelled folder, or several whose labels
                differ.
        """
        specs = {folder: LabelSpec.load(folder) for folder in self._labelled()}
        if not specs or len(set(specs.values())) > 1:
            raise ValueError(
                f"ShardDataModule: label_spec needs one labelled corpus or labelled_dir, or "
                f"several with the same labels; found {specs or 'none'}"
            )
        return next(iter(specs.values()))

    def prepare_data(self) -> None:
        for name in self.embedded:
            prepare_embedded(
                name, self.data_dir, source_dir=self.source_dir if reads_folder(name) else None
            )
        if self.labelled_dir is not None:
            LabelSpec.load(self.labelled_dir)  # a named error now, not at the first batch

    # ----------------------------------------------------------------- layout and shards
    def layout(self, num_workers: int | None = None) -> Layout:
        """Rank and world size from the trainer (or torch.distributed), and the workers."""
        trainer = self.trainer
        if trainer is not None:
            rank, world = trainer.global_rank, trainer.world_size
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        workers = self.num_workers if num_workers is None else num_workers
        return Layout(rank=rank, world_size=world, num_workers=workers)

    def shard_urls(self, patterns: list[str], count: bool = False) -> tuple[list[str], int]:
        """Expanded, readable, non-empty shards of ``patterns`` and, with ``count``, their
        local sample count (a read of every member header: skipped when not needed).

        Raises:
            ValueError: when no usable shard is left.
        """
        urls, samples = usable_local_shards(expand_shards(patterns), self.on_error, count)
        if not urls:
            raise ValueError(f"every shard of {patterns} is empty or unreadable")
        return urls, samples

    def _loader(self, pipeline: ShardPipeline | ElasticPipeline, endless: bool) -> DataLoader:
        """The loader of a pipeline; ``endless``: a training stream cut into epochs."""
        workers = pipeline.layout.num_workers
        return (TrainLoader if endless else DataLoader)(
            pipeline,
            batch_size=None,  # the pipeline batches in the workers
            num_workers=workers,
            # training readers are rebuilt from their states every epoch; evaluation workers
            # are kept (a pass costs them nothing to restart)
            persistent_workers=workers > 0 and not endless,
            pin_memory=torch.cuda.is_available(),
        )

    # -------------------------------------------------------------------------- training
    def train_dataloader(self) -> DataLoader:
        if self.train_shards is None:
            raise ValueError("ShardDataModule: no train shards configured")
        layout = self.layout()
        if self.train_mode == "exact":
            if layout.world_size > 1:
                raise ValueError(
                    "ShardDataModule: train_mode='exact' gives ranks different numbers of "
                    "batches, which hangs DDP; use train_mode='elastic' with several devices"
                )
            return self._exact_loader(self.train_shards, "train", training=True)
        if self.train_mode == "elastic":
            return self._elastic_loader(layout)
        count = self.epoch_samples is None
        counted = [self.shard_urls([pattern], count) for pattern in self.train_shards]
        sources = [urls for urls, _ in counted]
        for pattern, urls in zip(self.train_shards, sources, strict=True):
            if len(urls) < layout.readers:
                raise ValueError(
                    f"ShardDataModule: train shards {pattern!r} hold {len(urls)} shard(s), but "
                    f"{layout.world_size} rank(s) x {layout.readers_per_rank} worker(s) need at "
                    f"least {layout.readers} so that no two readers share a shard; write "
                    "smaller shards (mmm shards --max_count) or lower data.num_workers"
                )
        local_samples = sum(count for _, count in counted)
        pipeline = self._pipeline(
            sources,
            layout,
            mode="resampled",
            training=True,
            batches_per_reader=self._batches_per_reader(layout, sources, local_samples),
        )
        return self._loader(pipeline, endless=True)

    def _elastic_loader(self, layout: Layout) -> DataLoader:
        """The elastic training loader: the epoch cut into whole steps of the global order,
        starting after the last step trained on (or the checkpoint's)."""
        sources, counts = self._counted_sources()
        global_batch = layout.world_size * self.batch_size
        samples = self.epoch_samples or sum(map(sum, counts))
        steps = epoch_steps(samples, global_batch)
        counted_note = "" if self.epoch_samples is not None else " (counted; set epoch_samples)"
        rank_zero_info(
            f"train epoch: {steps} batches of {self.batch_size} on each of {layout.world_size} "
            f"rank(s) = {steps * global_batch} samples for epoch_samples={samples}{counted_note}"
        )
        order = {
            "global_batch": global_batch,
            "order": _fingerprint(sources),
            "counts": _fingerprint(counts),
            "sampling": [self.seed, self.shuffle_block, self.train_weights, steps],
        }
        pipeline = ElasticPipeline(
            sources,
            counts,
            self._require_batcher(),
            layout,
            batch_size=self.batch_size,
            seed=self.seed,
            block=self.shuffle_block,
            on_error=self.on_error,
            weights=self.train_weights or [1.0] * len(sources),
            steps_per_epoch=steps,
            next_step=self._elastic_start(order),
        )
        return self._loader(pipeline, endless=True)

    def _counted_sources(self) -> tuple[list[list[str]], list[list[int]]]:
        """Each source's usable shards and their sample counts (the shard index ``mmm
        shards`` writes, else the member headers).

        Raises:
            ValueError: naming a remote shard (elastic training reads by sample number), or a
                pattern without a usable shard.
        """
        sources, counts = [], []
        for pattern in self.train_shards:
            inspected = inspect_shards(expand_shards([pattern]), self.on_error, count=True)
            remote = [url for url, _ in inspected if is_remote(url)]
            if remote:
                raise ValueError(
                    f"ShardDataModule: train_mode='elastic' reads training shards by sample "
                    f"number, which needs local files; {remote[0]!r} (of {pattern!r}) is remote. "
                    "Copy the shards to local disk, or set data.train_mode=resampled (streams "
                    "remote shards; exact resume under the same ranks x workers only)"
                )
            if not inspected:
                raise ValueError(f"every shard of {pattern!r} is empty or unreadable")
            sources.append([url for url, _ in inspected])
            counts.append([samples for _, samples in inspected])
        return sources, counts

    def _elastic_start(self, now: dict[str, Any]) -> int:
        """The step to start at: after the last step trained on (in this run, or in the
        checkpoint just loaded), else 0.

        Raises:
            ElasticResumeError: when the checkpoint's global batch (ranks x batch_size)
                differs from this run's.
        """
        before, self._resumed, self._train_stream = self._resumed, {}, now
        if "next_step" in before:
            self._check_resumable(before, now)
            self._next_step = before["next_step"]
        elif before:  # a checkpoint of streaming training
            log.warning("the checkpoint holds streaming reader states: training starts afresh")
        return self._next_step or 0

    @staticmethod
    def _check_resumable(before: dict[str, Any], now: dict[str, Any]) -> None:
        """Refuse another global batch; warn when the order changed."""
        if before["global_batch"] != now["global_batch"]:
            raise ElasticResumeError(
                f"ShardDataModule: the checkpoint trained on {before['global_batch']} samples "
                f"per step (ranks x data.batch_size) and this run takes {now['global_batch']}: "
                "resuming exactly needs the same global batch; set data.batch_size to "
                f"{before['global_batch']} / the number of ranks"
            )
        if before != {**now, "next_step": before["next_step"]}:
            log.warning(
                "train shards, seed, shuffle_block, train_weights or epoch_samples changed "
                "since the checkpoint: training continues at step %d of the new order, which "
                "may repeat or miss samples of the interrupted pass",
                before["next_step"],
            )

    def _batches_per_reader(self, layout: Layout, sources: list[list[str]], counted: int) -> int:
        """Batches each reader yields per epoch, from ``epoch_samples`` (or the local count)."""
        samples = self.epoch_samples
        if samples is None:
            if any(is_remote(url) for urls in sources for url in urls):
                raise ValueError(
                    "ShardDataModule: remote train shards cannot be counted; set "
                    "data.epoch_samples (training samples per epoch over all ranks)"
                )
            samples = counted
        per_reader = max(1, math.ceil(samples / (self.batch_size * layout.readers)))
        counted_note = "" if self.epoch_samples is not None else " (counted; set epoch_samples)"
        rank_zero_info(
            f"train epoch: {per_reader * layout.readers_per_rank} batches of {self.batch_size} "
            f"on each of {layout.world_size} rank(s) = {per_reader * layout.readers * self.batch_size}"
            f" samples for epoch_samples={samples}{counted_note}"
        )
        return per_reader

    def _pipeline(
        self,
        sources: list[list[str]],
        layout: Layout,
        mode: Mode,
        training: bool,
        batches_per_reader: int | None = None,
    ) -> ShardPipeline:
        """The pipeline of one split; training pipelines shuffle, mix, and resume."""
        batcher = self._require_batcher()
        return ShardPipeline(
            sources,
            batcher if training else batcher.for_evaluation(),  # no random views held out
            layout,
            mode=mode,
            batch_size=self.batch_size,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer if training else 0,
            on_error=self.on_error,
            weights=self.train_weights if training else None,
            batches_per_reader=batches_per_reader,
            states=self._resume_states(sources, layout, batches_per_reader) if training else None,
        )

    # ------------------------------------------------------------------------ exact mode
    def _exact_loader(self, patterns: list[str] | None, split: str, training: bool) -> DataLoader:
        """Every sample of ``patterns`` once over all ranks and workers, per iteration.

        A rank never needs more workers than it has shards: extra workers would read nothing,
        so the loader uses fewer (and says so). Fewer shards than ranks is an error.
        """
        if patterns is None:
            raise ValueError(f"ShardDataModule: no {split} shards configured")
        urls, _ = self.shard_urls(patterns)
        ranks = self.layout().world_size
        if len(urls) < ranks:
            raise ValueError(
                f"ShardDataModule: {split} shards {patterns} hold {len(urls)} shard(s) for "
                f"{ranks} ranks; every rank needs one (write smaller shards)"
            )
        workers = min(self.num_workers, len(urls) // ranks)
        if workers < self.num_workers:
            rank_zero_info(
                f"{split}: {len(urls)} shard(s) for {ranks} rank(s): {workers} worker(s)"
            )
        pipeline = self._pipeline([urls], self.layout(workers), "exact", training)
        return self._loader(pipeline, endless=False)

    def val_dataloader(self) -> DataLoader | list:
        return self._exact_loader(self.val_shards, "val", training=False) if self.val_shards else []

    def test_dataloader(self) -> DataLoader:
        return self._exact_loader(self.test_shards, "test", training=False)

    def predict_dataloader(self) -> DataLoader:
        return self._exact_loader(self.predict_shards, "predict", training=False)

    def _require_batcher(self) -> Batcher:
        if self.batcher is None:
            raise RuntimeError("ShardDataModule needs a batcher (pass batcher=...)")
        return self.batcher

    # -------------------------------------------------------------------------- resuming
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record the step of each trained batch (elastic) or the state of its reader
        (resampled); the model never sees them."""
        if isinstance(batch, dict) and "train_step" in batch:
            step = int(batch.pop("train_step"))
            if self.trainer is None or self.trainer.training:
                self._next_step = step + 1
        if isinstance(batch, dict) and "reader_state" in batch:
            slot = int(batch.pop("reader_slot"))
            state = batch.pop("reader_state").tolist()
            if self.trainer is None or self.trainer.training:
                self._trained[slot] = state
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Elastic: the step after the last one trained on (the same on every rank), and what
        it refers to (global batch, shards, sampling). Resampled: per reader, its state after
        the last batch trained on (gathered from all ranks), and what the states refer to
        (shards, readers, batch geometry)."""
        if self._next_step is not None:
            return {"next_step": self._next_step, **self._train_stream}
        trained = dict(self._trained)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict[int, list[int]]] = [{}] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, trained)  # every rank calls this
            trained = {slot: state for part in gathered for slot, state in part.items()}
        return {"train_readers": trained, **self._train_stream} if trained else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed = dict(state_dict)
        self._next_step = None
        self._trained = {int(k): v for k, v in state_dict.get("train_readers", {}).items()}
        self._train_stream = {k: v for k, v in state_dict.items() if k != "train_readers"}

    def _resume_states(
        self, sources: list[list[str]], layout: Layout, batches_per_reader: int | None
    ) -> dict[int, ReaderState]:
        """Where each training reader starts: the state after the last batch trained on
        (restored from a checkpoint), so the batches that follow are those an uninterrupted
        run would have trained on. States of another shard set, reader count or batch
        geometry cannot be mapped: the stream then starts a new pass (with a warning)."""
        now = {
            "readers": layout.readers,
            "shards": _fingerprint(sources),
            "batching": [self.batch_size, batches_per_reader, self.shuffle_buffer, self.seed],
        }
        before, self._train_stream = self._train_stream, now
        if not self._trained:
            return {}
        states = {slot: ReaderState.decode(values) for slot, values in self._trained.items()}
        if before == now:
            return states
        log.warning(
            "train shards, ranks x workers or batching changed since the checkpoint (%s readers, "
            "now %d): the training stream starts a new pass instead of resuming exactly",
            before.get("readers"),
            layout.readers,
        )
        last = max(p.pass_index for state in states.values() for p in state.sources)
        restart = [SourcePosition(last + 1, 0, 0) for _ in sources]
        return {slot: ReaderState(0, list(restart), []) for slot in range(layout.readers)}


class ElasticResumeError(ValueError):
    """A checkpoint's elastic position cannot be continued by this run (another global batch)."""


def _fingerprint(sources: list[list[Any]]) -> str:
    """A short hash of each source's entries (shard URLs, sample counts), in order."""
    text = "\n\n".join("\n".join(map(str, entries)) for entries in sources)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _as_patterns(spec: str | list[str] | None) -> list[str] | None:
    if spec is None:
        return None
    return [spec] if isinstance(spec, str) else list(spec)


def _check_weights(
    weights: list[float] | None, patterns: list[str] | None, mode: TrainMode
) -> None:
    if weights is None:
        return
    if mode == "exact":
        raise ValueError("ShardDataModule: train_weights needs train_mode 'elastic' or 'resampled'")
    if patterns is None or len(weights) != len(patterns):
        raise ValueError(
            f"ShardDataModule: train_weights has {len(weights)} weights for "
            f"{len(patterns or [])} train_shards patterns; give one per pattern"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"ShardDataModule: train_weights must be >= 0, not all 0: {weights}")
