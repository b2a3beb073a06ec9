"""Elastic training batches: each rank and loader worker reads its slice of the global order.

With ``G = ranks x batch_size`` samples per step over all ranks, step ``t``'s batch on rank
``r`` holds the samples at global positions ``[t*G + r*batch_size, t*G + (r+1)*batch_size)``
of the ``GlobalOrder``, and loader worker ``w`` of a rank makes the rank's steps ``first + w,
first + w + W, ...`` (the loader takes batches from its workers in turn). So the samples of a
step do not depend on the layout: under any ranks x workers with the same ``G``, step ``t``
trains on the same samples, only split otherwise among ranks; with the same layout, each rank
gets the same batch, sample for sample. A checkpoint stores the next step; a run resumed under
another layout continues from it, replaying and skipping nothing.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from datamodules.decoding import SampleDecoder
from datamodules.order import GlobalOrder
from datamodules.pipeline import Batch, BatchCollator
from datamodules.shard_index import tar_index
from datamodules.shards import OnError
from datamodules.state import Layout
from mmm.tokenizers.multimodal import Batcher


class ElasticPipeline(IterableDataset):
    """The training batches of one rank, from the global order, for the rest of the epoch
    that step ``next_step`` lies in (``steps_per_epoch`` steps per epoch on every rank).

    Every batch carries ``train_step``, its step number; ``TrainLoader`` moves ``next_step``
    on as batches are handed out (so the next epoch starts after them), and the datamodule
    records the steps trained on for its checkpoint.

    Args:
        sources: the shard URLs of each source (local tars: read by sample number).
        counts: samples in each shard of each source.
        batcher: decodes samples (augmentation seeded by the sample's address) and batches.
        layout: this rank among all ranks, and its loader workers.
        batch_size: samples per batch on this rank.
        seed: seed of the global order and augmentation.
        block: samples shuffled together in each pass (0: no shuffling).
        on_error: ``skip`` counts undecodable samples and reads a stand-in for each;
            ``raise`` stops.
        weights: share of each source.
        steps_per_epoch: steps of an epoch, the same on every rank and in every layout.
        next_step: the first step to make.
    """

    def __init__(
        self,
        sources: list[list[str]],
        counts: list[list[int]],
        batcher: Batcher,
        layout: Layout,
        batch_size: int,
        seed: int,
        block: int,
        on_error: OnError,
        weights: list[float],
        steps_per_epoch: int,
        next_step: int = 0,
    ) -> None:
        super().__init__()
        self.sources = sources
        self.counts = counts
        self.batcher = batcher
        self.layout = layout
        self.batch_size = batch_size
        self.seed = seed
        self.block = block
        self.on_error = on_error
        self.weights = weights
        self.steps_per_epoch = steps_per_epoch
        self.next_step = next_step

    @property
    def global_batch(self) -> int:
        """Samples per step over all ranks."""
        return self.layout.world_size * self.batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        # at this point: one copy of the pipeline per loader worker, each making every
        # W-th step of the rest of the epoch
        info = get_worker_info()
        worker = info.id if info is not None else 0
        epoch_end = (self.next_step // self.steps_per_epoch + 1) * self.steps_per_epoch
        steps = range(self.next_step + worker, epoch_end, self.layout.readers_per_rank)
        order = GlobalOrder(self.counts, self.weights, self.seed, self.block)
        decoder = SampleDecoder(self.batcher, self.on_error, seed=self.seed)
        collate = BatchCollator(self.batcher, decoder)
        for step in steps:
            first = step * self.global_batch + self.layout.rank * self.batch_size
            positions = range(first, first + self.batch_size)
            # at this point: this rank's positions of the step; each becomes one item
            batch = collate([self._item(position, order, decoder) for position in positions])
            batch["train_step"] = torch.tensor(step)
            yield batch

    def delivered(self, batch: Batch) -> None:
        """The loader handed ``batch`` out: the next epoch starts after its step."""
        self.next_step = max(self.next_step, int(batch["train_step"]) + 1)

    def _item(self, position: int, order: GlobalOrder, decoder: SampleDecoder) -> Any:
        """The decoded sample at ``position``, or, when it cannot be decoded (counted as a
        skip), its first decodable stand-in (``GlobalOrder.locate``'s attempts, up to a
        whole pass of its source).

        Raises:
            UndecodableDataError: when a whole pass's worth of stand-ins fails.
        """
        source = order.mixture.locate(position)[0]
        attempts = order.source_samples(source)

        def candidates() -> Iterator[dict[str, Any]]:
            for attempt in range(attempts):
                address = order.locate(position, attempt)
                url = self.sources[address.source][address.shard]
                try:
                    sample = tar_index(url).read(address.sample)
                except (OSError, IndexError, tarfile.TarError) as error:
                    decoder.unreadable(url, error)
                    continue
                sample["__address__"] = address.astuple()
                yield sample

        item = next(decoder(candidates()), _NOTHING)
        if item is _NOTHING:
            raise decoder.undecodable()
        return item


_NOTHING = object()  # no decodable stand-in


def epoch_steps(epoch_samples: int, global_batch: int) -> int:
    """Steps per epoch: ``epoch_samples`` rounded up to whole global batches."""
    return max(1, -(-epoch_samples // global_batch))
