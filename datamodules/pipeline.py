"""The pipeline of one split on one rank, in stages: shards -> raw samples -> (mixed,
shuffled) samples -> decoded items -> batches, plus the training loader that records each
delivered batch's reader state."""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, IterableDataset

from datamodules.decoding import SampleDecoder
from datamodules.shards import OnError
from datamodules.shuffling import ShuffleBuffer, weighted_interleave
from datamodules.state import Address, Layout, ReaderState, reader_seed
from datamodules.streams import ShardStream
from mmm.tokenizers.multimodal import Batcher

Mode = Literal["resampled", "exact"]
Batch = dict[str, torch.Tensor]


class ShardPipeline(IterableDataset):
    """The batches of one split on one rank: shards -> samples -> items -> batches.

    In ``exact`` mode every ``__iter__`` is one pass over the reader's shards and ends with a
    partial batch. In ``resampled`` mode (training) each reader reads an endless stream, and
    every ``__iter__`` rebuilds each reader from its ``ReaderState`` in ``states`` and yields
    the batches left in the epoch (``batches_per_reader`` at a fresh epoch), so every rank
    yields ``len(self)`` batches per epoch. Training batches carry ``reader_state``, the
    state of their reader after them; ``TrainLoader`` records it as batches are delivered and
    the datamodule as they are trained on, so that a resumed run continues sample for sample.
    """

    def __init__(
        self,
        sources: list[list[str]],
        batcher: Batcher,
        layout: Layout,
        mode: Mode,
        batch_size: int,
        seed: int,
        shuffle_buffer: int,
        on_error: OnError,
        weights: list[float] | None = None,
        batches_per_reader: int | None = None,
        states: dict[int, ReaderState] | None = None,
    ) -> None:
        super().__init__()
        self.sources = sources
        self.batcher = batcher
        self.layout = layout
        self.mode = mode
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.on_error = on_error
        self.weights = weights or [1.0] * len(sources)
        self.batches_per_reader = batches_per_reader
        self.states = states if states is not None else {}
        self.passes = 0  # exact mode: passes made by this copy of the pipeline

    def delivered(self, batch: Batch) -> None:
        """The loader handed ``batch`` out: its reader's next batches follow it."""
        self.states[int(batch["reader_slot"])] = ReaderState.decode(batch["reader_state"].tolist())

    def __len__(self) -> int:
        if self.batches_per_reader is None:
            raise TypeError("an exact-mode pipeline has no length known in advance")
        return self.batches_per_reader * self.layout.readers_per_rank

    def __iter__(self) -> Iterator[Batch]:
        if self.mode == "exact":
            self.passes += 1
            return self._exact_batches(self.layout.slot(), pass_index=self.passes - 1)
        slot = self.layout.slot(rotation=self._rotation())
        state = self.states.get(slot) or ReaderState.fresh(len(self.sources))
        left = self.batches_per_reader - state.batches % self.batches_per_reader
        return itertools.islice(self._training_batches(slot, state), left)

    def _rotation(self) -> int:
        """Which of this rank's readers delivers the epoch's next batch. The loader takes
        batches from its workers in turn, starting with worker 0; after a resume mid-epoch,
        worker 0 must play the reader whose turn it was."""
        per_rank = self.layout.readers_per_rank
        first = self.layout.rank * per_rank
        done = [self._delivered_this_epoch(first + worker) for worker in range(per_rank)]
        return sum(done) % per_rank

    def _delivered_this_epoch(self, slot: int) -> int:
        state = self.states.get(slot)
        return state.batches % self.batches_per_reader if state else 0

    def _streams(self, slot: int, decoder: SampleDecoder, shuffle: bool) -> list[ShardStream]:
        streams: list[ShardStream] = []
        for index, urls in enumerate(self.sources):
            handler = decoder.shard_error_handler(streams, index)
            streams.append(
                ShardStream(
                    urls, index, self.seed + index, shuffle, slot, self.layout.readers, handler
                )
            )
        return streams

    def _exact_batches(self, slot: int, pass_index: int) -> Iterator[Batch]:
        """One pass over this reader's shards, every sample once, in order."""
        decoder = SampleDecoder(self.batcher, self.on_error)
        [stream] = self._streams(slot, decoder, shuffle=False)
        collate = BatchCollator(self.batcher, decoder)
        samples = stream.one_pass(pass_index)
        return batched(decoder(samples), self.batch_size, collate, partial=True)

    def _training_batches(self, slot: int, state: ReaderState) -> Iterator[Batch]:
        """The batch stream of one training reader, rebuilt from ``state``, in stages."""
        shuffle = self.shuffle_buffer > 0
        decoder = SampleDecoder(self.batcher, self.on_error, seed=self.seed)
        streams = self._streams(slot, decoder, shuffle)
        for stream, position in zip(streams, state.sources, strict=True):
            stream.position = position
        # at this point: per source, the shards this reader owns, from its saved position
        rng = random.Random(reader_seed(self.seed, slot, state.batches))
        samples = [stream.endless() for stream in streams]
        mixed = samples[0] if len(samples) == 1 else weighted_interleave(samples, self.weights, rng)
        buffer = ShuffleBuffer(self.shuffle_buffer, rng, self._refill(streams, state.buffer))
        if shuffle:
            mixed = buffer(mixed)
        # at this point: raw samples of this reader, mixed and shuffled
        collate = BatchCollator(
            self.batcher,
            decoder,
            ReaderTracker(self.seed, slot, state.batches, streams, buffer, rng),
        )

        def skip_limit() -> int | None:
            # Two whole passes and four buffers of skips in a row: a rare good sample can
            # wait in the shuffle buffer well past one buffer's worth of draws.
            sizes = [stream.pass_samples for stream in streams]
            return None if None in sizes else 2 * sum(sizes) + 4 * self.shuffle_buffer

        return batched(decoder(mixed, skip_limit), self.batch_size, collate, partial=False)

    @staticmethod
    def _refill(streams: list[ShardStream], addresses: list[Address]) -> list[dict[str, Any]]:
        """The raw samples a saved shuffle buffer held, read again, in the saved order."""
        found: dict[Address, dict[str, Any]] = {}
        for source, stream in enumerate(streams):
            found.update(stream.fetch([a for a in addresses if a[0] == source]))
        missing = [a for a in addresses if a not in found]
        if missing:
            raise RuntimeError(
                f"resuming: {len(missing)} buffered sample(s) are gone from their shards (first: "
                f"{missing[0]}); the shards changed since the checkpoint"
            )
        return [found[a] for a in addresses]


def batched(
    items: Iterator[Any], size: int, collate: Callable[[list[Any]], Batch], partial: bool
) -> Iterator[Batch]:
    """Group items into batches of ``size``.

    An endless (training) stream collates a batch the moment it is full, so the reader's
    state taken then covers exactly its samples; hand-written because webdataset's
    ``batched`` reads one item past a full batch first. A finite stream (``partial``: its last
    batch may be short) collates a full batch once the next item arrives or the stream ends,
    so the last batch also counts the samples skipped after it.
    """
    batch: list[Any] = []
    for item in items:
        if partial and len(batch) == size:
            yield collate(batch)
            batch = []
        batch.append(item)
        if not partial and len(batch) == size:
            yield collate(batch)
            batch = []
    if batch and partial:
        yield collate(batch)


class ReaderTracker:
    """Counts a training reader's batches, reseeds its RNG at every batch boundary (so the
    state is small), and reads off its ``ReaderState``."""

    def __init__(
        self,
        seed: int,
        slot: int,
        batches: int,
        streams: list[ShardStream],
        buffer: ShuffleBuffer,
        rng: random.Random,
    ) -> None:
        self.seed = seed
        self.slot = slot
        self.batches = batches
        self.streams = streams
        self.buffer = buffer
        self.rng = rng

    def next_batch(self) -> ReaderState:
        """The state after the batch just completed; the RNG moves on to the next batch."""
        self.batches += 1
        self.rng.seed(reader_seed(self.seed, self.slot, self.batches))
        positions = [copy.copy(stream.position) for stream in self.streams]
        return ReaderState(self.batches, positions, self.buffer.addresses())


class BatchCollator:
    """Pipeline stage: the batcher's ``collate_stream``, plus the count of samples skipped since the
    previous batch and, for training, the reader's slot and state after this batch."""

    def __init__(
        self, batcher: Batcher, decoder: SampleDecoder, tracker: ReaderTracker | None = None
    ) -> None:
        self.batcher = batcher
        self.decoder = decoder
        self.tracker = tracker

    def __call__(self, items: list[Any]) -> Batch:
        batch = self.batcher.collate_stream(items)
        batch["skipped"] = torch.tensor(self.decoder.take_skipped())
        if self.tracker is not None:
            batch["reader_slot"] = torch.tensor(self.tracker.slot)
            batch["reader_state"] = self.tracker.next_batch().encode()
        return batch


class TrainLoader(DataLoader):
    """The training loader: tells its pipeline about each batch as the batch is handed out
    (``delivered``), so that the next epoch continues where this one stopped (training
    workers start afresh each epoch, and may play other readers after a resume)."""

    def __iter__(self) -> Iterator[Batch]:
        for batch in super().__iter__():
            self.dataset.delivered(batch)
            yield batch
