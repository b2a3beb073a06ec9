"""Reading samples outside the training pipeline: vocabulary sources, dataset statistics.

Training and evaluation read shards through ``datamodules`` (sharded over ranks and
workers, shuffled, resumable); everything else reads them here, through the same webdataset tar
reader, from an embedded corpus name or from patterns of shards and input files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import webdataset as wds

from mmm.data.corpora import corpus_names, iter_corpus
from mmm.data.formats.base import Sample, SampleSource
from mmm.data.patterns import expand_inputs, is_remote


def read_shards(
    urls: list[str], handler: Callable[[Exception], bool] = wds.reraise_exception
) -> Iterator[Sample]:
    """The raw samples of ``urls`` (local tars or ``pipe:`` URLs), shard after shard, in order:
    ``__key__``, ``__url__`` and the bytes of each member. ``handler`` decides what an
    unreadable shard does (webdataset's convention: return ``True`` to go on)."""
    return wds.tarfile_to_samples(handler=handler)({"url": url} for url in urls)


def read_source(source: str | list[str], read_files: SampleSource) -> Iterator[Sample]:
    """The samples of an embedded corpus (``source`` is its name), or of what patterns match:
    input files (``read_files`` turns them into samples), then shards (``.tar`` files and
    remote URLs; a ``pipe:`` URL runs its command in a shell), in order.

    Raises:
        FileNotFoundError: naming the source that is neither a corpus nor matches a file.
    """
    if isinstance(source, str) and source in corpus_names():
        yield from iter_corpus(source)
        return
    try:
        paths = expand_inputs(source)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{source!r} is neither an embedded corpus ({corpus_names()}) nor a pattern of "
            f"files: {error}"
        ) from error
    is_shard = [p.endswith(".tar") or is_remote(p) for p in paths]
    yield from read_files([p for p, shard in zip(paths, is_shard, strict=True) if not shard])
    yield from read_shards([p for p, shard in zip(paths, is_shard, strict=True) if shard])


def member_texts(
    samples: Iterable[Sample], member: str, errors: Literal["strict", "replace"] = "strict"
) -> Iterator[str]:
    """The UTF-8 text of ``member`` in each sample that has it.

    Raises:
        ValueError: naming the shard (or file) and key of a member that is not UTF-8, unless
            ``errors="replace"`` (undecodable bytes read as U+FFFD).
    """
    for sample in samples:
        raw = sample.get(member)
        if raw is None:
            continue
        try:
            text = raw.decode("utf-8", errors=errors)
        except UnicodeDecodeError as error:
            where = sample.get("__url__") or sample.get("__source__") or "a sample"
            raise ValueError(
                f"{where}, key {sample.get('__key__')!r}: {member!r} is not UTF-8 ({error})"
            ) from error
        yield text
