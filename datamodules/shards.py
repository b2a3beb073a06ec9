"""Shard inspection: which local shards are usable, and how many samples they hold.

Run before any reader opens a shard, so that an unreadable, truncated or empty shard is named
(or skipped and counted) up front instead of surfacing as a stalled or silent reader.
"""

from __future__ import annotations

import logging
import os
import tarfile
from pathlib import Path
from typing import Literal

import webdataset as wds

from mmm.data.patterns import is_remote
from mmm.data.shards import indexed_counts

log = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]


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
    """The usable shards of ``urls`` and, with ``count``, the number of samples in the local
    ones (0 without ``count``); see ``inspect_shards``."""
    inspected = inspect_shards(urls, on_error, count)
    return [url for url, _ in inspected], sum(samples for _, samples in inspected)


def inspect_shards(urls: list[str], on_error: OnError, count: bool) -> list[tuple[str, int]]:
    """Check local shards before reading them and, with ``count``, count their samples (from
    the shard index ``mmm shards`` writes beside them, else from their member headers).

    Shards that hold no sample (they would silently yield nothing) are dropped with a warning.
    Unreadable ones are dropped and truncated ones (found when counting) kept for their
    readable samples, with a warning, in ``skip`` mode; both are errors in ``raise`` mode.
    Remote shards are kept unread, and their samples are not counted.

    Returns:
        (url, samples) of every usable shard; samples is 0 for remote shards and without
        ``count``.

    Raises:
        ValueError: naming an unreadable or truncated shard, in ``raise`` mode.
    """
    kept: list[tuple[str, int]] = []
    indexed: dict[str, int] = {}
    if count:  # counts written beside the shards by `mmm shards` spare a scan of every header
        for folder in {os.path.dirname(url) or "." for url in urls if not is_remote(url)}:
            indexed.update(indexed_counts(folder))
    for url in urls:
        if is_remote(url):
            kept.append((url, 0))
            continue
        known = indexed.get(str(Path(os.path.dirname(url) or ".") / os.path.basename(url)))
        if known:
            kept.append((url, known))
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
        kept.append((url, found if count else 0))
    return kept


def _shard_problem(url: str, problem: str, on_error: OnError) -> None:
    if on_error == "raise":
        raise ValueError(f"shard {url} {problem} (set data.on_error=skip to go on)")
    log.warning("shard %s %s", url, problem)
