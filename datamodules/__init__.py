"""WebDataset-backed LightningDataModules, one concept per file.

- ``shards``: which local shards are usable and how many samples they hold
- ``embedded``: embedded corpora written to shards on first use
- ``state``: reader layout (ranks x workers) and the reader state a checkpoint stores
- ``streams``: one reader's raw samples, pass after pass
- ``decoding``: decoding with the batcher; counted skips and named errors
- ``shuffling``: seeded mixing of sources and the resumable shuffle buffer
- ``pipeline``: the stages of one split on one rank, and the training loader
- ``datamodule``: ``ShardDataModule``, the LightningDataModule that puts them together
"""

from datamodules.datamodule import ShardDataModule
from datamodules.embedded import embedded_shards, prepare_embedded
from mmm.data.patterns import expand_shards

__all__ = ["ShardDataModule", "embedded_shards", "expand_shards", "prepare_embedded"]
