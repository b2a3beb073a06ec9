"""Reader layout and reader state: where each reader sits among all readers, where it stands
in its sources, and the compact encoding of that state a checkpoint stores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import webdataset as wds
from torch.utils.data import get_worker_info


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


def reader_seed(seed: int, slot: int, batches: int) -> int:
    """The seed of a training reader's RNG (mixing and shuffle draws) for its next batch."""
    return wds.utils.make_seed(seed, slot, batches)
