"""The global sample order of elastic training: one endless, seeded sequence of sample
addresses that does not depend on how many ranks or loader workers read it.

Position ``p`` of the sequence is a pure function of the seed, the sources' per-shard sample
counts, their weights and the shuffle block: any reader can compute the sample at any
position without knowing who read the positions before it. Readers take the positions of
their batches (``datamodules.elastic``), and a checkpoint stores one number, the samples
consumed, from which any layout of ranks x workers continues (mosaicml/streaming's "elastic
determinism").

Stages, from a position to a sample:

1. **mixing**: position -> (source, how-manieth sample of that source), ``Mixture``;
2. **passes**: that index -> (pass, offset in the pass), each pass one whole source;
3. **shuffling**: offset -> (shard, sample in shard), ``SourceOrder``: every pass shuffles
   the shard order, then permutes the samples inside each block of ``block`` consecutive
   samples of that order (mosaicml/streaming's ``py1b``), so a block spans a few shards and
   neighbours in the sequence come from any of them.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

import torch
import webdataset as wds

#: Consecutive positions that hold each source's exact share (``Mixture``): shares are
#: resolved to 1 / MIX_CHUNK.
MIX_CHUNK = 1000


@dataclass(frozen=True)
class SampleAddress:
    """Where the sample at a position lives: its source, the pass over that source, the
    shard (a position in the source's shard list) and the sample number in that shard."""

    source: int
    pass_index: int
    shard: int
    sample: int

    def astuple(self) -> tuple[int, int, int, int]:
        return (self.source, self.pass_index, self.shard, self.sample)


class SourceOrder:
    """The samples of one source, pass after pass, as one endless sequence of
    (pass, shard, sample) addresses.

    Args:
        counts: samples in each shard of the source, in the order of its shard list.
        seed: seed of the shard order and block permutations (changes with every pass).
        block: samples permuted together, consecutive in a pass's shard order; 0 keeps the
            shards and samples in order (no shuffling).

    Raises:
        ValueError: when the source holds no sample.
    """

    def __init__(self, counts: list[int], seed: int, block: int) -> None:
        if sum(counts) <= 0:
            raise ValueError(f"a training source holds no samples (shard counts {counts})")
        self.counts = counts
        self.seed = seed
        self.block = block
        self.total = sum(counts)
        self._shards: tuple[int, list[int], list[int]] | None = None  # pass, order, starts
        self._block: tuple[tuple[int, int], torch.Tensor] | None = None  # (pass, start), order

    def locate(self, index: int) -> tuple[int, int, int]:
        """(pass, shard, sample) of the source's ``index``-th sample."""
        pass_index, offset = divmod(index, self.total)
        if self.block:
            start = offset - offset % self.block
            offset = start + int(self._block_order(pass_index, start)[offset - start])
        order, starts = self._shard_order(pass_index)
        slot = bisect.bisect_right(starts, offset) - 1
        return pass_index, order[slot], offset - starts[slot]

    def _shard_order(self, pass_index: int) -> tuple[list[int], list[int]]:
        """The shards of a pass in reading order, and the pass offset each starts at."""
        if self._shards is None or self._shards[0] != pass_index:
            order = [shard for shard, count in enumerate(self.counts) if count]
            if self.block:
                random.Random(wds.utils.make_seed(self.seed, pass_index)).shuffle(order)
            starts = [0, *itertools.accumulate(self.counts[shard] for shard in order)][:-1]
            self._shards = (pass_index, order, starts)
        return self._shards[1], self._shards[2]

    def _block_order(self, pass_index: int, start: int) -> torch.Tensor:
        """The permutation of the block of the pass that starts at offset ``start``."""
        if self._block is None or self._block[0] != (pass_index, start):
            size = min(self.block, self.total - start)
            generator = torch.Generator().manual_seed(
                wds.utils.make_seed(self.seed, pass_index, start)
            )
            # torch's permutation: 8 bytes a sample, so large blocks stay cheap
            self._block = ((pass_index, start), torch.randperm(size, generator=generator))
        return self._block[1]


def apportion(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, by largest remainder (Hamilton)."""
    quotas = [total * w / sum(weights) for w in weights]
    shares = [int(q) for q in quotas]
    by_remainder = sorted(range(len(weights)), key=lambda i: shares[i] - quotas[i])
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


class Mixture:
    """Which source each global position reads, and the how-manieth sample of that source.

    Every chunk of ``MIX_CHUNK`` consecutive positions holds each source's share of the chunk
    exactly (``apportion``), in a seeded random order: the shares hold at every scale, and a
    position's source and index take one chunk's permutation to compute, not a count of
    every draw before it (which i.i.d. draws would need).

    Raises:
        ValueError: naming the weight, when a positive weight is below one sample per chunk.
    """

    def __init__(self, weights: list[float], seed: int) -> None:
        self.shares = apportion(MIX_CHUNK, weights)
        for index, (weight, share) in enumerate(zip(weights, self.shares, strict=True)):
            if weight > 0 and share == 0:
                raise ValueError(
                    f"train_weights[{index}]={weight} is below 1/{MIX_CHUNK} of the total "
                    f"{sum(weights)}: that source would never be read"
                )
        self.seed = seed
        self._chunk: tuple[int, list[tuple[int, int]]] | None = None

    def locate(self, position: int) -> tuple[int, int]:
        """(source, index in that source's sequence) of global ``position``."""
        chunk, within = divmod(position, MIX_CHUNK)
        source, rank = self._chunk_order(chunk)[within]
        return source, chunk * self.shares[source] + rank

    def _chunk_order(self, chunk: int) -> list[tuple[int, int]]:
        """Per position of the chunk: its source and how many of the chunk's earlier
        positions read that source."""
        if self._chunk is None or self._chunk[0] != chunk:
            labels = [s for s, share in enumerate(self.shares) for _ in range(share)]
            if len(self.shares) > 1:
                random.Random(wds.utils.make_seed(self.seed, chunk)).shuffle(labels)
            seen = [0] * len(self.shares)
            order = []
            for source in labels:
                order.append((source, seen[source]))
                seen[source] += 1
            self._chunk = (chunk, order)
        return self._chunk[1]


class GlobalOrder:
    """The elastic training sequence over several sources: ``Mixture``, then each source's
    ``SourceOrder`` (seeded ``seed + source``, as the streaming readers seed sources)."""

    def __init__(
        self, counts: list[list[int]], weights: list[float], seed: int, block: int
    ) -> None:
        self.mixture = Mixture(weights, seed)
        self.sources = [
            SourceOrder(source_counts, seed + source, block)
            for source, source_counts in enumerate(counts)
        ]

    def locate(self, position: int, attempt: int = 0) -> SampleAddress:
        """The address of global ``position``; ``attempt`` > 0 gives its stand-ins, for a
        sample that cannot be decoded: the same slot of the source's later passes (another,
        random sample each), still a function of the position alone."""
        source, index = self.mixture.locate(position)
        order = self.sources[source]
        return SampleAddress(source, *order.locate(index + attempt * order.total))

    def source_samples(self, source: int) -> int:
        """Samples in one pass over ``source``."""
        return self.sources[source].total
