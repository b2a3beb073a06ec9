"""WebDataset-backed data for every modality: shards in, padded batches out.

One ``ShardDataModule`` serves all modalities: what differs (which shard members to read, how
to decode and batch them) is the tokenizer's job. Shards may be local paths, globs,
brace-expanded lists (``data/train-{000000..000009}.tar``) or ``pipe:`` URLs for object storage
(``pipe:aws s3 cp s3://bucket/train-000000.tar -``), several joined with ``::``.
"""

from __future__ import annotations

import glob
import logging
import os
import tarfile
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch
import webdataset as wds
from braceexpand import braceexpand

from mmm.corpora import ensure_embedded_shards
from mmm.tokenizers.base import SampleError, Tokenizer

log = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]


def _is_remote(url: str) -> bool:
    return url.startswith(("pipe:", "http://", "https://", "s3://", "gs://"))


def expand_shards(spec: str) -> list[str]:
    """Turn a shard specification into a list of shard URLs.

    ``spec`` is one or more patterns joined by ``::``; each is brace-expanded, and local ones
    are glob-expanded and must exist. Remote URLs (``pipe:``, ``http(s)://``, ...) pass as given.

    Raises:
        FileNotFoundError: naming the pattern that matches no local file.
    """
    urls: list[str] = []
    for pattern in spec.split("::"):
        for url in braceexpand(pattern):
            if _is_remote(url):
                urls.append(url)
                continue
            matches = sorted(glob.glob(url)) if glob.has_magic(url) else [url]
            existing = [m for m in matches if os.path.isfile(m)]
            if not existing:
                raise FileNotFoundError(f"no shard file matches {url!r} (from {spec!r})")
            urls.extend(existing)
    return urls


def drop_empty_local_shards(urls: list[str]) -> tuple[list[str], list[str]]:
    """Split off local shards that hold no member (an empty tar): they would silently yield
    nothing. Reads one header per local shard; remote shards are kept as they are."""
    kept, empty = [], []
    for url in urls:
        if _is_remote(url):
            kept.append(url)
            continue
        try:
            with tarfile.open(url) as tar:
                has_member = tar.next() is not None
        except tarfile.ReadError as error:
            raise ValueError(f"shard {url} is not a readable tar file ({error})") from error
        (kept if has_member else empty).append(url)
    return kept, empty


class SampleDecoder:
    """Pipeline stage that decodes raw samples with the tokenizer and counts what it skips.

    It runs inside each loader worker (one copy per worker). Unusable samples and unreadable
    shard members raise in ``raise`` mode; in ``skip`` mode they are logged with their shard and
    key and counted, and the count rides along in the next batch (``batch["skipped"]``) so the
    module can log it per epoch.
    """

    def __init__(self, tokenizer: Tokenizer, on_error: OnError) -> None:
        self.tokenizer = tokenizer
        self.on_error = on_error
        self.skipped = 0

    def handle_shard_error(self, error: Exception) -> bool:
        """webdataset handler for errors while reading a shard: ``True`` means continue."""
        if self.on_error == "raise":
            raise error
        log.warning("skipping unreadable shard data: %s", error)
        self.skipped += 1
        return True

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[Any]:
        for sample in samples:
            try:
                yield self.tokenizer.decode_sample(sample)
            except SampleError as error:
                if self.on_error == "raise":
                    raise
                log.warning("skipping sample: %s", error)
                self.skipped += 1

    def take_skipped(self) -> int:
        count, self.skipped = self.skipped, 0
        return count


class BatchCollator:
    """Pipeline stage: the tokenizer's ``collate`` plus the count of samples skipped since the
    previous batch."""

    def __init__(self, tokenizer: Tokenizer, decoder: SampleDecoder) -> None:
        self.tokenizer = tokenizer
        self.decoder = decoder

    def __call__(self, items: list[Any]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.collate(items)
        batch["skipped"] = torch.tensor(self.decoder.take_skipped())
        return batch


class ShardDataModule(L.LightningDataModule):
    """Batches from WebDataset shards for any modality, split across nodes and workers.

    Args:
        train_shards: training shards (see ``expand_shards``); defaults to the embedded
            corpus's ``train-*.tar`` when ``embedded`` is set.
        val_shards: validation shards; defaults to the embedded corpus's ``val-*.tar``.
        test_shards: test shards; defaults to ``val_shards``.
        predict_shards: shards for ``mmm predict``; defaults to ``val_shards``.
        embedded: name of a corpus that ships with an installed package (``python-docs``);
            it is written to shards under ``data_dir`` on first use.
        data_dir: where embedded corpora are written.
        tokenizer: the modality's tokenizer (LightningCLI links ``model.tokenizer`` here).
        batch_size: samples per batch, per device.
        num_workers: loader worker processes per device.
        shuffle_buffer: samples held in the training shuffle buffer (0 disables shuffling).
        seed: seed of shard and sample shuffling; the order changes each epoch.
        on_error: ``skip`` logs, counts and skips bad samples and shards; ``raise`` stops.
    """

    def __init__(
        self,
        train_shards: str | None = None,
        val_shards: str | None = None,
        test_shards: str | None = None,
        predict_shards: str | None = None,
        embedded: str | None = None,
        data_dir: str = "data",
        tokenizer: Tokenizer | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        on_error: OnError = "skip",
    ) -> None:
        super().__init__()
        if train_shards is None and val_shards is None and embedded is None:
            raise ValueError("ShardDataModule: set train_shards/val_shards or an embedded corpus")
        if batch_size < 1:
            raise ValueError(f"ShardDataModule: batch_size must be >= 1, got {batch_size}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"ShardDataModule: on_error must be 'skip' or 'raise', got {on_error}")
        self.embedded = embedded
        self.embedded_dir = os.path.join(data_dir, embedded) if embedded else None
        self.train_shards = train_shards or self._embedded_pattern("train")
        self.val_shards = val_shards or self._embedded_pattern("val")
        self.test_shards = test_shards or self.val_shards
        self.predict_shards = predict_shards or self.val_shards
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.on_error = on_error

    def _embedded_pattern(self, split: str) -> str | None:
        return os.path.join(self.embedded_dir, f"{split}-*.tar") if self.embedded_dir else None

    def prepare_data(self) -> None:
        if self.embedded:
            ensure_embedded_shards(self.embedded, self.embedded_dir)

    def shard_urls(self, spec: str) -> list[str]:
        """Expanded, existing, non-empty shards of ``spec``; empty ones are reported."""
        urls, empty = drop_empty_local_shards(expand_shards(spec))
        for url in empty:
            log.warning("shard %s holds no samples; skipped", url)
        if not urls:
            raise ValueError(f"every shard of {spec!r} is empty")
        return urls

    def make_pipeline(self, spec: str, train: bool) -> wds.DataPipeline:
        """The streaming pipeline of one split, in stages."""
        if self.tokenizer is None:
            raise RuntimeError("ShardDataModule needs a tokenizer (pass tokenizer=...)")
        decoder = SampleDecoder(self.tokenizer, self.on_error)
        shuffle = train and self.shuffle_buffer > 0
        stages: list[Any] = [wds.SimpleShardList(self.shard_urls(spec))]
        if shuffle:  # same shard order on every rank and worker, new each epoch
            stages.append(wds.detshuffle(bufsize=10_000, initial=10_000, seed=self.seed))
        stages += [
            wds.split_by_node,  # at this point: the shards of this rank
            wds.split_by_worker,  # at this point: the shards of this loader worker
            wds.tarfile_to_samples(handler=decoder.handle_shard_error),  # raw samples
        ]
        if shuffle:
            stages.append(
                wds.detshuffle(
                    bufsize=self.shuffle_buffer,
                    initial=min(self.shuffle_buffer, 100),
                    seed=self.seed + 1,
                )
            )
        stages += [
            decoder,  # decoded items; bad ones skipped and counted
            wds.batched(
                self.batch_size, collation_fn=BatchCollator(self.tokenizer, decoder), partial=True
            ),
        ]
        return wds.DataPipeline(*stages)

    def _loader(self, spec: str | None, train: bool, split: str) -> wds.WebLoader:
        if spec is None:
            raise ValueError(f"ShardDataModule: no {split} shards configured")
        return wds.WebLoader(
            self.make_pipeline(spec, train=train),
            batch_size=None,  # the pipeline batches in the workers
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,  # keeps per-epoch shuffle counters alive
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> wds.WebLoader:
        return self._loader(self.train_shards, train=True, split="train")

    def val_dataloader(self) -> wds.WebLoader | list:
        return self._loader(self.val_shards, train=False, split="val") if self.val_shards else []

    def test_dataloader(self) -> wds.WebLoader:
        return self._loader(self.test_shards, train=False, split="test")

    def predict_dataloader(self) -> wds.WebLoader:
        return self._loader(self.predict_shards, train=False, split="predict")
