"""Random access into local tar shards: the byte offsets of every sample's members, read from
the member headers once per shard and cached, so that a reader can fetch sample ``i`` of a
shard without reading the samples before it.

Hand-written because webdataset reads tars as streams; its random-access sibling ``wids`` is
not installed here, and it would download and cache shards our readers already have locally.
Samples come out as ``read_shards`` yields them (``__key__``, ``__url__``, one entry per
member, suffixes lower-cased), so the batchers cannot tell the two readers apart.
"""

from __future__ import annotations

import functools
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Any

import webdataset as wds

#: Member names webdataset skips as metadata (``__meta__``-style entries).
_META = re.compile(r"__[^/]*__($|/)")

#: Shard indexes kept per process: enough for the shards a shuffle block spans.
CACHED_SHARDS = 256


@dataclass(frozen=True)
class MemberSpan:
    """Where one member's bytes lie in its tar: ``suffix`` (``txt``, ``png``...), the offset
    of its data and its size."""

    suffix: str
    offset: int
    size: int


@dataclass(frozen=True)
class IndexedSample:
    """One sample of a shard: its key and its members' spans."""

    key: str
    members: tuple[MemberSpan, ...]


class TarIndex:
    """The samples of one local tar shard, in order, addressable by number.

    A shard cut short keeps the samples whose members lie whole inside the file.

    Raises:
        tarfile.ReadError: when the file is not a tar at all.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._fd: int | None = None  # opened at the first read, kept while cached
        self.samples: list[IndexedSample] = []
        members: list[MemberSpan] = []
        key: str | None = None
        with tarfile.open(url) as tar:
            end = tar.fileobj.seek(0, 2)
            try:
                for info in tar:
                    prefix, suffix = wds.tariterators.base_plus_ext(info.name)
                    if not info.isreg() or prefix is None or _META.match(info.name):
                        continue
                    if info.offset_data + info.size > end:
                        break  # the member's data is cut off
                    if prefix != key and members:
                        self.samples.append(IndexedSample(key, tuple(members)))
                        members = []
                    key = prefix
                    members.append(MemberSpan(suffix.lower(), info.offset_data, info.size))
            except tarfile.ReadError:  # cut inside a header: keep what came before
                pass
        if members:
            self.samples.append(IndexedSample(key, tuple(members)))

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> dict[str, Any]:
        """Sample ``index`` as webdataset's tar reader yields it.

        Raises:
            IndexError: naming the shard, when it holds fewer samples (rewritten since it was
                counted).
        """
        if not 0 <= index < len(self.samples):
            raise IndexError(
                f"shard {self.url} holds {len(self.samples)} samples, not {index + 1}: "
                "rewritten since it was counted?"
            )
        if self._fd is None:
            self._fd = os.open(self.url, os.O_RDONLY)
        sample = self.samples[index]
        read: dict[str, Any] = {"__key__": sample.key, "__url__": self.url}
        for member in sample.members:  # positional reads: no file offset shared with forks
            read[member.suffix] = os.pread(self._fd, member.size, member.offset)
        return read

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


@functools.lru_cache(maxsize=CACHED_SHARDS)
def tar_index(url: str) -> TarIndex:
    """The cached ``TarIndex`` of ``url`` (one header scan per shard and process)."""
    return TarIndex(url)
