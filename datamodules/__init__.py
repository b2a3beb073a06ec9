"""WebDataset-backed LightningDataModules."""

from datamodules.webdataset import ShardDataModule, expand_shards

__all__ = ["ShardDataModule", "expand_shards"]
