"""The raw samples of one reader: its shards of every pass, opened lazily, each sample tagged
with its address so that a saved position or shuffle buffer can be found again."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from typing import Any

import webdataset as wds

from datamodules.state import Address, SourcePosition
from mmm.data.reading import read_shards


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
