"""WebDataset-backed data for every modality: shards in, padded batches out, at any scale.

One ``ShardDataModule`` serves all modalities: what differs (which shard members to read, how
to decode and batch them) is the batcher's job. Shards may be local paths, globs,
brace-expanded lists (``data/train-{000000..000009}.tar``), text files listing one shard URL
per line (``shards.txt``), or ``pipe:`` URLs for object storage
(``pipe:aws s3 cp s3://bucket/train-000000.tar -``), several joined with ``::``
(``mmm.data.patterns.expand_shards``).

Every reader (one loader worker of one rank) owns its shards: shards are dealt to
``ranks x workers`` readers per pass, so no two readers of a pass share a shard. Training reads
an endless stream (``resampled``: pass after pass, each shuffled with the seed and the pass
number) cut into epochs of the same number of batches on every rank, so DDP never waits on a
rank that ran dry; validation reads every sample exactly once (``exact``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import math
import os
import random
import tarfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import webdataset as wds
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmm.data.corpora import ensure_embedded_shards, is_labelled_corpus, reads_folder
from mmm.data.labelled import budget_prefix, split_pattern
from mmm.data.labels import LabelSpec
from mmm.data.patterns import expand_shards, is_remote
from mmm.data.reading import read_shards
from mmm.data.shards import indexed_counts
from mmm.rng import seeded
from mmm.tokenizers.base import SampleError
from mmm.tokenizers.multimodal import Batcher

log = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]
Mode = Literal["resampled", "exact"]
Batch = dict[str, torch.Tensor]

#: Samples per shard of embedded corpora: small shards so that even the small embedded sets
#: give every reader of a few ranks and workers a shard of its own.
EMBEDDED_SAMPLES_PER_SHARD = 256

# The length we report is exact by construction (every worker yields the same number of
# batches), which is the case Lightning's generic warning about IterableDataset lengths is not.
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined")
# Lightning looks for resume state on the DataLoader; ours is in ShardDataModule.state_dict.
warnings.filterwarnings("ignore", message=r".*your dataloader is\s+not resumable")


# --------------------------------------------------------------------------------- sources
def inspect_local_shard(url: str, full: bool) -> tuple[int, bool]:
    """Samples in a local tar and whether the tar is complete, from member headers only.

    With ``full``, every header is read: the count is exact and a tar cut short is caught (one
    cut inside a header reads as a shorter, valid tar in Python's ``tarfile``; only the missing
    end-of-archive marker gives it away). Without, only the first header is read (one read per
    shard, for thousands of shards): the count is 0 or 1 and completeness is not checked.

    Raises:
        tarfile.ReadError: when the file is not a tar at all.
    """
    keys: set[str | None] = set()
    with tarfile.open(url) as tar:
        try:
            for member in tar:
                if member.isreg():
                    keys.add(wds.tariterators.base_plus_ext(member.name)[0])
                if keys - {None} and not full:
                    return 1, True
        except tarfile.ReadError:  # cut inside a member
            return len(keys - {None}), False
        tar.fileobj.seek(tar.offset)  # where the end-of-archive marker should start
        complete = tar.fileobj.read(2 * tarfile.BLOCKSIZE) == bytes(2 * tarfile.BLOCKSIZE)
    return len(keys - {None}), complete


def usable_local_shards(urls: list[str], on_error: OnError, count: bool) -> tuple[list[str], int]:
    """Check local shards before reading them and, with ``count``, count their samples (from
    the shard index ``mmm shards`` writes beside them, else from their member headers).

    Shards that hold no sample (they would silently yield nothing) are dropped with a warning.
    Unreadable ones are dropped and truncated ones (found when counting) kept for their
    readable samples, with a warning, in ``skip`` mode; both are errors in ``raise`` mode.
    Remote shards are kept unread, and their samples are not counted.

    Returns:
        The usable shards and the number of samples in the local ones (0 without ``count``).

    Raises:
        ValueError: naming an unreadable or truncated shard, in ``raise`` mode.
    """
    kept, samples = [], 0
    indexed: dict[str, int] = {}
    if count:  # counts written beside the shards by `mmm shards` spare a scan of every header
        for folder in {os.path.dirname(url) or "." for url in urls if not is_remote(url)}:
            indexed.update(indexed_counts(folder))
    for url in urls:
        if is_remote(url):
            kept.append(url)
            continue
        known = indexed.get(str(Path(os.path.dirname(url) or ".") / os.path.basename(url)))
        if known:
            kept.append(url)
            samples += known
            continue
        try:
            found, complete = inspect_local_shard(url, full=count)
        except tarfile.TarError as error:
            _shard_problem(url, f"is not a readable tar file ({error}); skipped", on_error)
            continue
        if not complete:
            _shard_problem(url, f"is truncated; reading its {found} readable samples", on_error)
        if found == 0:
            log.warning("shard %s holds no samples; skipped", url)
            continue
        kept.append(url)
        samples += found if count else 0
    return kept, samples


def _shard_problem(url: str, problem: str, on_error: OnError) -> None:
    if on_error == "raise":
        raise ValueError(f"shard {url} {problem} (set data.on_error=skip to go on)")
    log.warning("shard %s %s", url, problem)


# ------------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class Layout:
    """Where one loader sits among all readers: its rank, the number of ranks, and the loader
    worker processes per rank (0 reads in the main process)."""

    rank: int = 0
    world_size: int = 1
    num_workers: int = 0

    @property
    def readers_per_rank(self) -> int:
        return max(1, self.num_workers)

    @property
    def readers(self) -> int:
        return self.world_size * self.readers_per_rank

    def slot(self, rotation: int = 0) -> int:
        """This reader's index in ``[0, readers)``; call it inside the loader worker. Worker
        ``w`` plays this rank's reader ``(w + rotation) % readers_per_rank``."""
        info = get_worker_info()
        worker = info.id if info is not None else 0
        return self.rank * self.readers_per_rank + (worker + rotation) % self.readers_per_rank


#: Where a raw sample sits in a reader's stream: (source, pass, shard position in the reader's
#: shards of that pass, sample number in that shard).
Address = tuple[int, int, int, int]


@dataclass
class SourcePosition:
    """Where a reader stands in one source: the next raw sample it reads is sample ``sample``
    of shard ``shard`` (a position in the reader's shards of pass ``pass_index``)."""

    pass_index: int = 0
    shard: int = 0
    sample: int = 0


@dataclass
class ReaderState:
    """Everything a training reader's next batches depend on, so that a reader rebuilt from it
    continues sample for sample: the batches it has delivered (its RNG is reseeded from that
    count at every batch), its position in each source, and which raw samples its shuffle
    buffer holds, in order. Small: a few numbers per source and four per buffered sample."""

    batches: int
    sources: list[SourcePosition]
    buffer: list[Address]

    @classmethod
    def fresh(cls, num_sources: int) -> ReaderState:
        return cls(0, [SourcePosition() for _ in range(num_sources)], [])

    def encode(self) -> torch.Tensor:
        """(3 + 3 * sources + 4 * buffered,) long: a tensor that rides along with a batch."""
        head = [self.batches, len(self.sources), len(self.buffer)]
        positions = [v for p in self.sources for v in (p.pass_index, p.shard, p.sample)]
        return torch.tensor(head + positions + [v for a in self.buffer for v in a])

    @classmethod
    def decode(cls, values: list[int]) -> ReaderState:
        batches, num_sources, num_buffered = values[:3]
        positions = values[3 : 3 + 3 * num_sources]
        flat = values[3 + 3 * num_sources :][: 4 * num_buffered]
        return cls(
            batches,
            [SourcePosition(*positions[i : i + 3]) for i in range(0, len(positions), 3)],
            [tuple(flat[i : i + 4]) for i in range(0, len(flat), 4)],
        )


class ShardStream:
    """The raw samples one reader reads from one source, each tagged with its ``Address``.

    In every pass, all readers shuffle the full shard list with the same seed and pass number
    and reader ``slot`` takes every ``readers``-th shard from position ``slot``: within a pass,
    readers never share a shard. Shards are opened one at a time, lazily; ``position`` is the
    next raw sample to read, so a stream started from a saved position skips the samples
    before it without decoding them.
    """

    def __init__(
        self,
        urls: list[str],
        source: int,
        seed: int,
        shuffle: bool,
        slot: int,
        readers: int,
        handler: Callable[[Exception], bool],
        position: SourcePosition | None = None,
    ) -> None:
        self.urls = urls
        self.source = source
        self.seed = seed
        self.shuffle = shuffle
        self.slot = slot
        self.readers = readers
        self.handler = handler
        self.position = position or SourcePosition()
        self.current_url: str | None = None
        self.pass_samples: int | None = None  # raw samples of the last whole pass read

    def pass_shards(self, pass_index: int) -> list[str]:
        """This reader's shards in pass ``pass_index``."""
        order = list(self.urls)
        if self.shuffle:
            random.Random(wds.utils.make_seed(self.seed, pass_index)).shuffle(order)
        return order[self.slot :: self.readers]

    def read_shard(self, pass_index: int, shard: int) -> Iterator[dict[str, Any]]:
        """The raw samples of one shard of a pass, in order, tagged with their address."""
        self.current_url = self.pass_shards(pass_index)[shard]
        for index, sample in enumerate(read_shards([self.current_url], self.handler)):
            sample["__address__"] = (self.source, pass_index, shard, index)
            yield sample

    def one_pass(self, pass_index: int) -> Iterator[dict[str, Any]]:
        """The samples of pass ``pass_index`` from ``position`` on (the whole pass when the
        position lies in an earlier pass)."""
        start = self.position if self.position.pass_index == pass_index else None
        first_shard, skip = (start.shard, start.sample) if start else (0, 0)
        for shard in range(first_shard, len(self.pass_shards(pass_index))):
            for sample in self.read_shard(pass_index, shard):
                index = sample["__address__"][3]
                if shard == first_shard and index < skip:
                    continue  # delivered before the saved position: read past, not decoded
                self.position = SourcePosition(pass_index, shard, index + 1)
                yield sample
            self.position = SourcePosition(pass_index, shard + 1, 0)

    def endless(self) -> Iterator[dict[str, Any]]:
        """Pass after pass, from ``position`` on.

        Raises:
            RuntimeError: when a whole pass yields no sample (every shard of the reader
                failed), rather than spinning forever.
        """
        pass_index = self.position.pass_index
        while True:
            whole_pass = self.position == SourcePosition(pass_index)
            read = 0
            for sample in self.one_pass(pass_index):
                read += 1
                yield sample
            if whole_pass:
                self.pass_samples = read
            if read == 0 and whole_pass:
                raise RuntimeError(
                    f"reader {self.slot}: no shard of pass {pass_index} yielded a sample "
                    f"({self.pass_shards(pass_index)}); check these shards"
                )
            pass_index += 1
            self.position = SourcePosition(pass_index, 0, 0)

    def fetch(self, addresses: list[Address]) -> dict[Address, dict[str, Any]]:
        """Read the samples at ``addresses`` again (to refill a restored shuffle buffer),
        opening each of their shards once and reading no further than needed."""
        found: dict[Address, dict[str, Any]] = {}
        wanted = sorted(set(addresses))
        for (pass_index, shard), group in itertools.groupby(wanted, key=lambda a: a[1:3]):
            needed = {a[3] for a in group}
            for sample in self.read_shard(pass_index, shard):
                index = sample["__address__"][3]
                if index in needed:
                    found[sample["__address__"]] = sample
                if index >= max(needed):
                    break
        return found


#: Skipped samples logged one by one before the log switches to periodic summaries.
LOGGED_SKIPS = 10
#: After the first ones, one summary line per this many skipped samples.
SKIP_SUMMARY_EVERY = 1000


class UndecodableDataError(RuntimeError):
    """A reader went through a whole pass over its shards without decoding one sample."""


class SampleDecoder:
    """Pipeline stage that decodes raw samples with the batcher and counts what it skips.

    It runs inside each loader worker (one copy per worker). Unusable samples and unreadable
    shard data (truncated or corrupt tar, unreachable URL) raise in ``raise`` mode; in ``skip``
    mode they are counted, the first few logged with their shard and key and then one summary
    line per ``SKIP_SUMMARY_EVERY``, and the count rides along in the next batch
    (``batch["skipped"]``) so the module can log it per epoch. A reader that skips every
    sample of a whole pass (shards of another modality, say) stops with an
    ``UndecodableDataError`` instead of skipping forever.
    """

    def __init__(self, batcher: Batcher, on_error: OnError, seed: int | None = None) -> None:
        self.batcher = batcher
        self.on_error = on_error
        self.seed = seed
        self.skipped = 0  # since the last batch
        self.total_skipped = 0
        self.consecutive_skips = 0
        self.read = 0
        self.reasons: list[str] = []  # the first few, for the error message

    def decode(self, sample: dict[str, Any]) -> Any:
        """The batcher's item for ``sample``. With a ``seed`` (training), random
        augmentation draws from a generator seeded with the sample's address, so a resumed
        stream augments every sample as the uninterrupted one did (and a sample met again in
        a later pass gets another view)."""
        if self.seed is None:
            return self.batcher.decode_sample(sample)
        with seeded(wds.utils.make_seed(self.seed, *sample["__address__"])):
            return self.batcher.decode_sample(sample)

    def shard_error_handler(self, streams: list[ShardStream], source: int):
        """A webdataset error handler that names the shard being read; ``True`` = go on."""

        def handle(error: Exception) -> bool:
            detail = error.args[0] if error.args else ""
            url = streams[source].current_url if streams else None
            message = f"shard {url}: {type(error).__name__}: {detail}"
            if self.on_error == "raise":
                raise OSError(f"{message} (set data.on_error=skip to skip and count)") from error
            self._skip(f"unreadable data in {message}")
            return True

        return handle

    def __call__(
        self, samples: Iterator[dict[str, Any]], skip_limit: Callable[[], int | None] = lambda: None
    ) -> Iterator[Any]:
        """Decoded items of ``samples``. ``skip_limit`` gives, once the reader's pass size is
        known, how many skips in a row mean that its data holds nothing this batcher can
        decode (more than a whole pass's samples)."""
        decoded = 0
        for sample in samples:
            self.read += 1
            try:
                item = self.decode(sample)
            except SampleError as error:
                if self.on_error == "raise":
                    raise
                self._skip(str(error))
                self.consecutive_skips += 1
                limit = skip_limit()
                if limit is not None and self.consecutive_skips > limit:
                    raise self._undecodable() from error
                continue
            self.consecutive_skips = 0
            decoded += 1
            yield item
        if self.read and not decoded:  # a finite pass (evaluation) with nothing usable
            raise self._undecodable()

    def _skip(self, reason: str) -> None:
        self.skipped += 1
        self.total_skipped += 1
        if len(self.reasons) < 3:
            self.reasons.append(reason)
        if self.total_skipped <= LOGGED_SKIPS:
            log.warning("skipping sample: %s", reason)
        elif self.total_skipped % SKIP_SUMMARY_EVERY == 0:
            log.warning(
                "skipped %d of %d samples read so far (latest: %s)",
                self.total_skipped,
                self.read,
                reason,
            )

    def _undecodable(self) -> UndecodableDataError:
        members = getattr(self.batcher, "sample_keys", ())
        return UndecodableDataError(
            f"{type(self.batcher).__name__} could not decode any sample of a whole pass over "
            f"this reader's shards: {self.read} read, {self.total_skipped} skipped. First "
            f"reasons: {'; '.join(self.reasons)}. Are these shards of another modality? This "
            f"batcher reads the members {list(members)}."
        )

    def take_skipped(self) -> int:
        count, self.skipped = self.skipped, 0
        return count


def weighted_interleave(
    sources: list[Iterator[Any]], weights: list[float], rng: random.Random
) -> Iterator[Any]:
    """Draw each next item from source ``i`` with probability ``weights[i] / sum(weights)``.

    Hand-written because webdataset's ``RandomMix`` draws from the global ``random`` state,
    which is neither seeded per reader nor reproducible on resume.
    """
    indices = list(range(len(sources)))
    while True:
        [index] = rng.choices(indices, weights=weights)
        yield next(sources[index])


class ShuffleBuffer:
    """Pipeline stage: a seeded shuffle buffer whose contents can be saved and restored.

    Each incoming sample joins the buffer; once it holds ``size`` samples, a random one leaves.
    Hand-written because webdataset's ``shuffle`` keeps its buffer private: a reader rebuilt
    after a resume could not hold the same samples, so its order would differ.
    """

    def __init__(self, size: int, rng: random.Random, contents: list[dict[str, Any]]) -> None:
        self.size = size
        self.rng = rng
        self.contents = contents

    def addresses(self) -> list[Address]:
        return [sample["__address__"] for sample in self.contents]

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        buffer = self.contents
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.size:
                index = self.rng.randrange(len(buffer))
                buffer[index], buffer[-1] = buffer[-1], buffer[index]
                yield buffer.pop()
        while buffer:  # a finite stream (not used in training) drains the buffer
            yield buffer.pop(self.rng.randrange(len(buffer)))


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


def reader_seed(seed: int, slot: int, batches: int) -> int:
    """The seed of a training reader's RNG (mixing and shuffle draws) for its next batch."""
    return wds.utils.make_seed(seed, slot, batches)


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
    """The training loader: records the state of each batch's reader as the batch is handed
    out, so that the next epoch rebuilds every reader where it stopped (its workers start
    afresh each epoch, and may play other readers after a resume)."""

    def __iter__(self) -> Iterator[Batch]:
        states = self.dataset.states
        for batch in super().__iter__():
            states[int(batch["reader_slot"])] = ReaderState.decode(batch["reader_state"].tolist())
            yield batch


def prepare_embedded(
    name: str, data_dir: str | os.PathLike = "data", source_dir: str | None = None
) -> Path:
    """The directory of embedded corpus ``name`` under ``data_dir``, its ``train-*.tar`` and
    ``val-*.tar`` shards written on first use, sized as ``ShardDataModule.prepare_data``
    writes them (whoever comes first, later readers see the same shards). ``source_dir``:
    the user's copy of a corpus read from a folder (FSDD)."""
    return ensure_embedded_shards(
        name,
        os.path.join(data_dir, name),
        samples_per_shard=EMBEDDED_SAMPLES_PER_SHARD,
        source_dir=source_dir,
    )


def embedded_shards(name: str, split: str, data_dir: str | os.PathLike = "data") -> list[str]:
    """Sorted ``split`` (``train`` or ``val``) shards of embedded corpus ``name``, written
    under ``data_dir`` first if they are not there yet: for code that reads the shards
    without a ``ShardDataModule`` (a fresh checkout has no ``data/``)."""
    if split not in ("train", "val"):
        raise ValueError(f"embedded_shards: split must be 'train' or 'val', got {split!r}")
    return sorted(
        str(path) for path in prepare_embedded(name, data_dir).glob(f"{split}-[0-9]*.tar")
    )


# ---------------------------------------------------------------------------- datamodule
class ShardDataModule(L.LightningDataModule):
    """Batches from WebDataset shards for any modality, split across ranks and workers.

    Training (``train_mode="resampled"``, the default) reads an endless, seeded stream: in
    each pass the shards are shuffled and dealt out so that each rank and each worker reads its
    own shards; an epoch is ``epoch_samples`` samples over all ranks, the same number of
    batches on every rank however uneven the shards, so DDP never hangs. Validation, test and
    predict read every sample exactly once over all ranks and workers (``exact``). A
    checkpoint records the state of every training reader after the last batch trained on,
    so a resumed run trains on exactly the batches the uninterrupted run would have.

    Args:
        train_shards: training shards: a pattern (glob, braces, ``pipe:`` URL, ``.txt`` list
            file, several joined by ``::``; see ``expand_shards``), or a list of such
            patterns, one per source to mix (see ``train_weights``); defaults to the embedded
            corpus's ``train-*.tar`` when ``embedded`` is set (a labelled corpus's or
            ``labelled_dir``'s: the label budget ``label_fraction`` picks). A ``pipe:`` URL,
            also one listed in a ``.txt`` file, runs its command in a shell: use trusted lists
            only.
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
        train_mode: ``resampled`` (endless stream cut into equal epochs; DDP-safe) or
            ``exact`` (each training sample once per epoch; single device only).
        epoch_samples: training samples per epoch over all ranks (resampled mode), rounded up
            to whole batches on every worker. ``None`` counts the samples of the local
            training shards (a read of every member header); set it for remote shards, and
            for large data to skip that count.
        train_weights: with several ``train_shards`` patterns, the share of samples drawn
            from each (e.g. ``[0.7, 0.3]``); default equal shares. Resampled mode only.
        shuffle_buffer: samples held in each training reader's shuffle buffer (0 turns off all
            training shuffling, of shards and samples).
        seed: seed of shard order, shuffle buffers and mixing; the shard order changes with
            every pass over the data.
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
        train_mode: Mode = "resampled",
        epoch_samples: int | None = None,
        train_weights: list[float] | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        on_error: OnError = "skip",
    ) -> None:
        super().__init__()
        if train_shards is None and val_shards is None and not (embedded or labelled_dir):
            raise ValueError(
                "ShardDataModule: set train_shards/val_shards, an embedded corpus or a labelled_dir"
            )
        _check_choice("train_mode", train_mode, ("resampled", "exact"))
        _check_choice("on_error", on_error, ("skip", "raise"))
        for name, value in (("batch_size", batch_size), ("epoch_samples", epoch_samples)):
            if value is not None and value < 1:
                raise ValueError(f"ShardDataModule: {name} must be >= 1, got {value}")
        if num_workers < 0 or shuffle_buffer < 0:
            raise ValueError("ShardDataModule: num_workers and shuffle_buffer must be >= 0")
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
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.on_error = on_error
        self._trained: dict[int, list[int]] = {}  # slot -> encoded state after its last batch
        self._train_stream: dict[str, Any] = {}  # shards, readers, batching the states refer to

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

    def _loader(self, pipeline: ShardPipeline) -> DataLoader:
        workers = pipeline.layout.num_workers
        resampled = pipeline.mode == "resampled"
        return (TrainLoader if resampled else DataLoader)(
            pipeline,
            batch_size=None,  # the pipeline batches in the workers
            num_workers=workers,
            # training readers are rebuilt from their states every epoch; evaluation workers
            # are kept (a pass costs them nothing to restart)
            persistent_workers=workers > 0 and not resampled,
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
                    "batches, which hangs DDP; use train_mode='resampled' with several devices"
                )
            return self._exact_loader(self.train_shards, "train", training=True)
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
        return self._loader(pipeline)

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
        return self._loader(self._pipeline([urls], self.layout(workers), "exact", training))

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
        """Record the state of the reader of each trained batch; the model never sees it."""
        if isinstance(batch, dict) and "reader_state" in batch:
            slot = int(batch.pop("reader_slot"))
            state = batch.pop("reader_state").tolist()
            if self.trainer is None or self.trainer.training:
                self._trained[slot] = state
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Per reader, its state after the last batch trained on (gathered from all ranks),
        and what the states refer to (shards, readers, batch geometry)."""
        trained = dict(self._trained)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[dict[int, list[int]]] = [{}] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, trained)  # every rank calls this
            trained = {slot: state for part in gathered for slot, state in part.items()}
        return {"train_readers": trained, **self._train_stream} if trained else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
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


def _fingerprint(sources: list[list[str]]) -> str:
    """A short hash of the shard URLs of each source, in order."""
    text = "\n\n".join("\n".join(urls) for urls in sources)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _as_patterns(spec: str | list[str] | None) -> list[str] | None:
    if spec is None:
        return None
    return [spec] if isinstance(spec, str) else list(spec)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"ShardDataModule: {name} must be one of {allowed}, got {value!r}")


def _check_weights(weights: list[float] | None, patterns: list[str] | None, mode: Mode) -> None:
    if weights is None:
        return
    if mode != "resampled":
        raise ValueError("ShardDataModule: train_weights needs train_mode='resampled'")
    if patterns is None or len(weights) != len(patterns):
        raise ValueError(
            f"ShardDataModule: train_weights has {len(weights)} weights for "
            f"{len(patterns or [])} train_shards patterns; give one per pattern"
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"ShardDataModule: train_weights must be >= 0, not all 0: {weights}")
