"""Decoding raw samples with the batcher, and what happens to the ones it cannot decode:
counted skips (logged with their shard and key) or named errors."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import webdataset as wds

from datamodules.shards import OnError
from mmm.rng import seeded
from mmm.tokenizers.base import SampleError
from mmm.tokenizers.multimodal import Batcher

if TYPE_CHECKING:
    from datamodules.streams import ShardStream

log = logging.getLogger(__name__)

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
            self.unreadable(streams[source].current_url if streams else None, error)
            return True

        return handle

    def unreadable(self, url: str | None, error: Exception) -> None:
        """Count (or, in ``raise`` mode, raise) data of shard ``url`` that could not be read."""
        detail = error.args[0] if error.args else ""
        message = f"shard {url}: {type(error).__name__}: {detail}"
        if self.on_error == "raise":
            raise OSError(f"{message} (set data.on_error=skip to skip and count)") from error
        self._skip(f"unreadable data in {message}")

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
                    raise self.undecodable() from error
                continue
            self.consecutive_skips = 0
            decoded += 1
            yield item
        if self.read and not decoded:  # a finite pass (evaluation) with nothing usable
            raise self.undecodable()

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

    def undecodable(self) -> UndecodableDataError:
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
