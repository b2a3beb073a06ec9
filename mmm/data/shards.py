"""Writing WebDataset shards from users' files (each modality's reader in ``mmm.data.formats``),
and the shard index beside them."""

from __future__ import annotations

import fcntl
import glob
import heapq
import inspect
import json
import logging
import os
import queue
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import Manager
from pathlib import Path
from typing import Any, Literal

import webdataset as wds
from tqdm.auto import tqdm

from mmm.data.formats import (
    SKIPPED,
    Sample,
    reader_extensions,
    reads_per_file,
    sample_source,
)

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 64  # samples between progress reports of a worker process
_REASONS_KEPT = 3  # skip reasons a summary keeps to show


class OutputBusyError(RuntimeError):
    """Another ``mmm shards`` run is writing the same output."""


@dataclass
class ShardSummary:
    """What a shard-writing run produced."""

    shards: list[str]
    samples: int
    bytes: int
    skipped: int = 0
    counts: list[int] = field(default_factory=list)
    """Samples in each of ``shards``."""
    sources: dict[str, str] = field(default_factory=dict, repr=False)
    """Key -> source of each sample written (for the duplicate check across worker jobs)."""
    reasons: list[str] = field(default_factory=list, repr=False)
    """Why the first few skipped inputs (files, lines, records) were skipped."""

    def __str__(self) -> str:
        first = f" (first: {self.reasons[0]})" if self.reasons else ""
        return (
            f"wrote {self.samples} samples in {len(self.shards)} shards "
            f"({self.bytes / 1e6:.1f} MB), skipped {self.skipped}{first}"
        )


def duplicate_key_error(key: str, first: str, second: str) -> ValueError:
    """The error for two samples sharing ``key``, naming where each came from."""
    return ValueError(
        f"duplicate sample key {key!r}: {first} and {second} (readers would silently drop "
        "one); give the inputs distinct names"
    )


def write_shards(
    samples: Iterable[dict[str, Any]],
    pattern: str,
    max_count: int = 10_000,
    max_size: float = 1e9,
    on_sample: Callable[[], None] | None = None,
) -> ShardSummary:
    """Write samples to tar shards named by ``pattern`` (e.g. ``out/train-%06d.tar``), starting a
    new shard after ``max_count`` samples or once a shard holds ``max_size`` bytes (so it may
    pass it by one sample), whichever comes first; ``on_sample`` is called after each sample
    (progress). A sample's optional ``__source__`` (its file, line or record) is not written;
    it names the sample in errors. A reader that leaves out an input it cannot use yields
    ``{SKIPPED: reason}`` instead of a sample, and the summary counts it.

    Raises:
        ValueError: when two samples share a key, naming both sources.
    """
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    counts: list[int] = []
    skipped = 0
    reasons: list[str] = []
    sources: dict[str, str] = {}  # key -> where its sample came from
    with wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, verbose=0) as writer:
        for sample in samples:
            if SKIPPED in sample:  # a reader's note of an input it left out
                skipped += 1
                reasons += [str(sample[SKIPPED])][: _REASONS_KEPT - len(reasons)]
                continue
            key, source = sample["__key__"], str(sample.get("__source__", "a sample"))
            if key in sources:
                raise duplicate_key_error(key, first=sources[key], second=source)
            sources[key] = source
            writer.write(sample)
            counts += [0] * (writer.shard - len(counts))  # the writer opened a new shard
            counts[-1] += 1
            if on_sample is not None:
                on_sample()
    shards = [pattern % i for i in range(len(counts))]
    write_shard_index(shards, counts)
    size = sum(os.path.getsize(s) for s in shards)
    return ShardSummary(
        shards=shards,
        samples=sum(counts),
        bytes=size,
        skipped=skipped,
        counts=counts,
        sources=sources,
        reasons=reasons,
    )


#: The shard index beside shards written from ``train-%06d.tar`` is ``train.shards.json``.
SHARD_INDEX_SUFFIX = ".shards.json"


def write_shard_index(shards: list[str], counts: list[int]) -> Path | None:
    """Record the sample count and size of each shard in a small JSON beside them, so that
    readers need not scan every member header to count samples. The format is webdataset's
    ``wids`` shard index (``shardlist`` of ``url`` + ``nsamples``), with each file's size
    added so that a reader can tell a shard rewritten since."""
    if not shards:
        return None
    first = Path(shards[0])
    stem = re.sub(r"[-_.]?\d+$", "", first.stem) or first.stem
    index = first.with_name(stem + SHARD_INDEX_SUFFIX)
    entries = [
        {"url": Path(shard).name, "nsamples": count, "filesize": os.path.getsize(shard)}
        for shard, count in zip(shards, counts, strict=True)
    ]
    document = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": entries}
    index.write_text(json.dumps(document, indent=1))
    return index


def indexed_counts(folder: str | os.PathLike) -> dict[str, int]:
    """Sample counts of the shards in ``folder`` that a shard index lists and that still have
    the size it recorded (path -> samples); shards written by other tools are absent."""
    counts: dict[str, int] = {}
    for index in sorted(Path(folder).glob(f"*{SHARD_INDEX_SUFFIX}")):
        try:
            entries = json.loads(index.read_text())["shardlist"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring shard index %s (%s); counting samples instead", index, error)
            continue
        for entry in entries:
            path = Path(folder) / str(entry.get("url", ""))
            size = path.stat().st_size if path.is_file() else None
            if size is not None and size == entry.get("filesize"):
                counts[str(path)] = int(entry["nsamples"])
    return counts


@dataclass
class ShardJob:
    """One worker's share of a ``build_shards`` run: read ``paths``, write ``pattern``."""

    paths: list[str]
    modality: str
    pattern: str
    max_count: int
    max_size: float
    options: dict[str, Any] = field(default_factory=dict)
    on_error: Literal["skip", "raise"] = "skip"

    def samples(self, skipped: list[str]) -> Iterator[Sample]:
        """The reader's samples; per-file readers read one file at a time so that, in ``skip``
        mode, a file that fails is logged, its reason recorded in ``skipped`` and passed over."""
        reader = sample_source(self.modality)
        if not reads_per_file(self.modality):
            yield from reader(self.paths, **self.options)
            return
        for path in self.paths:
            try:
                yield from reader([path], **self.options)
            except Exception as error:  # any reader failure: the file is named, then skipped
                if self.on_error == "raise":
                    raise ValueError(f"{path}: {self.modality} reader failed: {error}") from error
                log.warning("skipping the rest of %s: %s: %s", path, type(error).__name__, error)
                skipped.append(f"{path}: {error}")

    def run(self, report: Callable[[int], None]) -> ShardSummary:
        """Write this job's shards, calling ``report(n)`` every few samples."""
        pending = 0

        def on_sample() -> None:
            nonlocal pending
            pending += 1
            if pending == _PROGRESS_EVERY:
                report(pending)
                pending = 0

        skipped: list[str] = []
        summary = write_shards(
            self.samples(skipped), self.pattern, self.max_count, self.max_size, on_sample
        )
        report(pending)
        summary.skipped += len(skipped)
        summary.reasons = (summary.reasons + skipped)[:_REASONS_KEPT]
        return summary


def _run_in_worker(job: ShardJob, progress: Any) -> ShardSummary:
    return job.run(report=progress.put)


def split_by_size(paths: list[str], parts: int) -> list[list[str]]:
    """Deal files to ``parts`` lists of about equal total size (largest first, each to the
    lightest list), each kept in input order."""
    heap = [(0, index) for index in range(parts)]
    assigned: list[list[int]] = [[] for _ in range(parts)]
    by_size = sorted(range(len(paths)), key=lambda i: os.path.getsize(paths[i]), reverse=True)
    for i in by_size:
        load, index = heapq.heappop(heap)
        assigned[index].append(i)
        heapq.heappush(heap, (load + os.path.getsize(paths[i]), index))
    return [[paths[i] for i in sorted(part)] for part in assigned if part]


def build_shards(
    paths: list[str],
    output: str,
    modality: str = "text",
    max_count: int = 10_000,
    max_size: float = 1e9,
    workers: int = 1,
    options: dict[str, Any] | None = None,
    on_error: Literal["skip", "raise"] = "skip",
    overwrite: bool = False,
    progress: bool = True,
    allow_outside: bool = False,
) -> ShardSummary:
    """Read ``paths`` with the modality's reader and write ``output-000000.tar``, ... .

    With ``workers > 1`` and a per-file reader, the files are dealt to worker processes by
    size; each writes its own shards, which are then numbered in one sequence. Shards are
    written to a staging folder first: existing shards at ``output`` (with ``overwrite``)
    are replaced only once the new ones are complete, so a failed run loses nothing, and
    they are never read as inputs. One run at a time writes an output (``output.lock``).

    ``on_error`` and ``allow_outside`` reach readers that take them (``manifest``), as does
    the inputs' common folder (``root``) for per-file readers; ``options`` set them otherwise.

    Raises:
        FileExistsError: when shards named ``output-NNNNNN.tar`` exist and not ``overwrite``.
        OutputBusyError: when another run is writing ``output``, naming its process id.
        ValueError: when no sample was written (the old shards, if any, are kept).
    """
    with output_lock(output) as lock:
        return _build_shards(
            paths,
            output,
            modality,
            max_count=max_count,
            max_size=max_size,
            workers=workers,
            options=options or {},
            on_error=on_error,
            overwrite=overwrite,
            progress=progress,
            allow_outside=allow_outside,
            lock=lock,
        )


@contextmanager
def output_lock(output: str) -> Iterator[Path]:
    """Hold ``output.lock`` while one run writes ``output``: a second run would delete the
    first's staging folder and mix their shards. The lock is the OS's (``flock``), released
    however the process ends, so a killed run leaves no stale lock; the file names the pid.

    Raises:
        OutputBusyError: naming the output and the process id of the run writing it.
    """
    lock = Path(f"{output}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 (held until the finally)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputBusyError(
                f"another mmm shards run is writing {output} (pid {holder}); wait for it to "
                "end, or write to another --output"
            ) from None
        if _is_same_file(handle, lock):
            break
        handle.close()  # the holder ended and removed the file after we opened it: again
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield lock
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def _is_same_file(handle: Any, path: Path) -> bool:
    """Whether the open ``handle`` is still the file at ``path`` (not one unlinked since)."""
    try:
        return os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _build_shards(
    paths: list[str],
    output: str,
    modality: str,
    max_count: int,
    max_size: float,
    workers: int,
    options: dict[str, Any],
    on_error: Literal["skip", "raise"],
    overwrite: bool,
    progress: bool,
    allow_outside: bool,
    lock: Path,
) -> ShardSummary:
    """``build_shards`` once it holds the output's ``lock``."""
    existing = sorted(glob.glob(f"{glob.escape(output)}-[0-9]*.tar"))
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} shards exist at {output}-*.tar; set overwrite")
    staging = Path(f"{output}.parts")
    paths = _readable_inputs(paths, modality, own=[*existing, str(staging), str(lock)])
    if workers > 1 and not reads_per_file(modality):
        log.warning("the %s reader needs all files at once: writing with 1 worker", modality)
        workers = 1
    options = _reader_options(
        modality, paths, options, on_error=on_error, allow_outside=allow_outside
    )
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's leftovers; the lock is ours
    jobs = [
        ShardJob(
            part,
            modality,
            str(staging / f"{index:03d}-%06d.tar"),
            max_count,
            max_size,
            options,
            on_error,
        )
        for index, part in enumerate(split_by_size(paths, workers) if workers > 1 else [paths])
    ]
    try:
        with tqdm(desc=f"shards {Path(output).name}", unit=" samples", disable=not progress) as bar:
            summaries = _run_jobs(jobs, bar)
        counts = [count for summary in summaries for count in summary.counts]
        skipped = sum(s.skipped for s in summaries)
        _refuse_keys_shared_by_jobs(summaries)
        reasons = [reason for summary in summaries for reason in summary.reasons]
        if not counts:
            kept = f"; the {len(existing)} existing shards are kept" if existing else ""
            first = f"; first skipped: {reasons[0]}" if reasons else ""
            raise ValueError(
                f"no sample written from {len(paths)} input file(s) ({skipped} skipped){kept}"
                f"{first}"
            )
        for path in existing:  # the new shards are complete: now the old ones may go
            os.remove(path)
        shards = []
        for index, shard in enumerate(s for summary in summaries for s in summary.shards):
            shards.append(f"{output}-{index:06d}.tar")
            os.replace(shard, shards[-1])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_shard_index(shards, counts)
    return ShardSummary(
        shards=shards,
        samples=sum(counts),
        bytes=sum(s.bytes for s in summaries),
        skipped=skipped,
        counts=counts,
        reasons=reasons[:_REASONS_KEPT],
    )


def _refuse_keys_shared_by_jobs(summaries: list[ShardSummary]) -> None:
    """Each worker job's ``write_shards`` refuses duplicates among its own samples; this
    refuses a key that two jobs (files dealt to different processes) both wrote.

    Raises:
        ValueError: naming the key and both sources.
    """
    seen: dict[str, str] = {}
    for summary in summaries:
        for key, source in summary.sources.items():
            if key in seen:
                raise duplicate_key_error(key, first=seen[key], second=source)
            seen[key] = source


def _readable_inputs(paths: list[str], modality: str, own: list[str]) -> list[str]:
    """The inputs the reader of ``modality`` takes: not the output's own shards, staging
    folder or index, and (for readers that declare them) only files with its extensions; says
    what it left out."""
    own_paths = [os.path.abspath(p) for p in own]

    def is_own(path: str) -> bool:
        absolute = os.path.abspath(path)
        return absolute in own_paths or any(absolute.startswith(p + os.sep) for p in own_paths)

    kept = [p for p in paths if not is_own(p) and not p.endswith(SHARD_INDEX_SUFFIX)]
    if len(kept) < len(paths):
        log.warning("not reading %d file(s) of the output itself", len(paths) - len(kept))
    extensions = reader_extensions(modality)
    if extensions is None:
        return kept
    taken = [p for p in kept if p.lower().endswith(extensions)]
    ignored = Counter(Path(p).suffix.lower() or Path(p).name for p in kept if p not in taken)
    if ignored:
        listing = ", ".join(f"{n} {suffix}" for suffix, n in ignored.most_common())
        log.warning(
            "the %s reader takes %s files: ignored %s", modality, "/".join(extensions), listing
        )
    return taken


def _reader_options(
    modality: str, paths: list[str], options: dict[str, Any], **run_settings: Any
) -> dict[str, Any]:
    """``options`` plus the run's settings the reader takes and ``options`` does not set:
    ``run_settings`` (e.g. ``on_error``), and for a per-file reader ``root`` (the inputs'
    common folder), so that files read one at a time keep keys relative to the same folder."""
    parameters = inspect.signature(sample_source(modality)).parameters
    if paths and reads_per_file(modality):
        run_settings["root"] = os.path.commonpath([str(Path(p).parent) for p in paths])
    taken = {name: value for name, value in run_settings.items() if name in parameters}
    return {**taken, **options}


def _run_jobs(jobs: list[ShardJob], bar: tqdm) -> list[ShardSummary]:
    """Run one job in this process, or several in worker processes that report progress
    through a queue."""
    if len(jobs) == 1:
        return [jobs[0].run(report=bar.update)]
    with Manager() as manager, ProcessPoolExecutor(max_workers=len(jobs)) as pool:
        progress = manager.Queue()
        futures = [pool.submit(_run_in_worker, job, progress) for job in jobs]
        while not all(f.done() for f in futures) or not progress.empty():
            try:
                bar.update(progress.get(timeout=0.2))
            except queue.Empty:
                continue
        return [f.result() for f in futures]
