"""Writing WebDataset shards, and turning users' own files into samples for them."""

from __future__ import annotations

import csv
import glob
import heapq
import json
import logging
import os
import queue
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import Manager
from pathlib import Path
from typing import Any, Literal

import webdataset as wds
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

Sample = dict[str, Any]
#: Reads input files of one modality and yields WebDataset samples (``__key__`` + members).
SampleSource = Callable[..., Iterator[Sample]]

_SOURCES: dict[str, SampleSource] = {}
_PER_FILE: set[str] = set()
_PROGRESS_EVERY = 64  # samples between progress reports of a worker process


def register_source(name: str, per_file: bool = False) -> Callable[[SampleSource], SampleSource]:
    """Register ``fn(paths: list[str], **options) -> Iterator[sample]`` as the reader that
    ``mmm shards --modality NAME`` uses for input files of that modality.

    Args:
        name: the modality name.
        per_file: the samples of a file depend on that file alone (not on the other files
            in ``paths``, e.g. for class indices or relative keys). Then ``mmm shards`` may
            read parts of the file list in parallel worker processes, and in ``skip`` mode
            skip a file that fails and go on with the next.
    """

    def decorator(fn: SampleSource) -> SampleSource:
        _SOURCES[name] = fn
        if per_file:
            _PER_FILE.add(name)
        return fn

    return decorator


def sample_source(name: str) -> SampleSource:
    """The registered reader of modality ``name``."""
    import mmm.tokenizers  # noqa: F401  (tokenizer modules register their readers)

    if name not in _SOURCES:
        raise ValueError(f"no shard reader for modality {name!r}; available: {sorted(_SOURCES)}")
    return _SOURCES[name]


def reads_per_file(name: str) -> bool:
    """Whether the reader of ``name`` was registered with ``per_file=True``."""
    sample_source(name)
    return name in _PER_FILE


@dataclass
class ShardSummary:
    """What a shard-writing run produced."""

    shards: list[str]
    samples: int
    bytes: int
    skipped: int = 0
    counts: list[int] = field(default_factory=list)
    """Samples in each of ``shards``."""

    def __str__(self) -> str:
        return (
            f"wrote {self.samples} samples in {len(self.shards)} shards "
            f"({self.bytes / 1e6:.1f} MB), skipped {self.skipped}"
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
    (progress)."""
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    counts: list[int] = []
    with wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, verbose=0) as writer:
        for sample in samples:
            writer.write(sample)
            counts += [0] * (writer.shard - len(counts))  # the writer opened a new shard
            counts[-1] += 1
            if on_sample is not None:
                on_sample()
    shards = [pattern % i for i in range(len(counts))]
    write_shard_index(shards, counts)
    size = sum(os.path.getsize(s) for s in shards)
    return ShardSummary(shards=shards, samples=sum(counts), bytes=size, counts=counts)


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
        mode, a file that fails is logged, recorded in ``skipped`` and passed over."""
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
                skipped.append(path)

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
        summary.skipped = len(skipped)
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
) -> ShardSummary:
    """Read ``paths`` with the modality's reader and write ``output-000000.tar``, ... .

    With ``workers > 1`` and a per-file reader, the files are dealt to worker processes by
    size; each writes its own shards, which are then numbered in one sequence.

    Raises:
        FileExistsError: when shards named ``output-NNNNNN.tar`` exist and not ``overwrite``.
    """
    existing = sorted(glob.glob(f"{glob.escape(output)}-[0-9]*.tar"))
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} shards exist at {output}-*.tar; set overwrite")
    for path in existing:
        os.remove(path)
    if workers > 1 and not reads_per_file(modality):
        log.warning("the %s reader needs all files at once: writing with 1 worker", modality)
        workers = 1
    staging = Path(f"{output}.parts")
    shutil.rmtree(staging, ignore_errors=True)
    jobs = [
        ShardJob(
            part,
            modality,
            str(staging / f"{index:03d}-%06d.tar"),
            max_count,
            max_size,
            options or {},
            on_error,
        )
        for index, part in enumerate(split_by_size(paths, workers) if workers > 1 else [paths])
    ]
    with tqdm(desc=f"shards {Path(output).name}", unit=" samples", disable=not progress) as bar:
        summaries = _run_jobs(jobs, bar)
    shards = []
    for index, shard in enumerate(s for summary in summaries for s in summary.shards):
        shards.append(f"{output}-{index:06d}.tar")
        os.replace(shard, shards[-1])
    shutil.rmtree(staging, ignore_errors=True)
    counts = [count for summary in summaries for count in summary.counts]
    write_shard_index(shards, counts)
    return ShardSummary(
        shards=shards,
        samples=sum(counts),
        bytes=sum(s.bytes for s in summaries),
        skipped=sum(s.skipped for s in summaries),
        counts=counts,
    )


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


#: Manifest fields whose values name files (NeMo/ESPnet ``audio_filepath``, Hugging Face
#: ``metadata.csv``'s ``file_name``, or a modality's name); the file's extension names its member.
MANIFEST_FILE_FIELDS = ("audio", "audio_filepath", "image", "file_name", "path")
#: Member extension of manifest fields given inline, by field name (what each tokenizer reads).
MANIFEST_INLINE_MEMBERS = {
    "text": "txt",
    "transcript": "txt",
    "caption": "txt",
    "protein": "seq",
    "sequence": "seq",
    "smiles": "smi",
}


@register_source("manifest", per_file=True)
def manifest_samples(
    paths: list[str],
    key_field: str = "key",
    file_fields: list[str] | None = None,
    members: dict[str, str] | None = None,
) -> Iterator[Sample]:
    """Paired samples from manifests: JSONL (one JSON object per line, as NeMo and ESPnet write
    them) or CSV with a header (Hugging Face ``metadata.csv``). Each line is one sample; each
    field is one member of it:

    - a field in ``file_fields`` names a file, relative to the manifest's folder (or absolute),
      stored under its own extension (``{"audio": "clips/a.wav"}`` -> ``wav``);
    - a field in ``members`` or ``MANIFEST_INLINE_MEMBERS`` holds inline content, stored under
      that extension (``{"text": "Please hold."}`` -> ``txt``);
    - any other field (``duration``, ``label``, ...) goes into the sample's ``json`` member.

    Args:
        paths: manifest files (``.jsonl`` or ``.csv``).
        key_field: the field holding the sample key; without it, the key is the manifest's
            name and line number.
        file_fields: fields that name files (default ``MANIFEST_FILE_FIELDS``).
        members: extra or overriding field -> member extension for inline fields.

    Raises:
        ValueError: naming the manifest and line of a record that is not a JSON object, names
            a missing file, or puts two fields in one member.
    """
    file_names = set(file_fields if file_fields is not None else MANIFEST_FILE_FIELDS)
    inline = {**MANIFEST_INLINE_MEMBERS, **(members or {})}
    for manifest in map(Path, paths):
        for line, record in _manifest_records(manifest):
            where = f"{manifest}:{line}"
            key = str(record.pop(key_field, "") or f"{manifest.stem}-{line}")
            sample: Sample = {"__key__": sample_key(key)}
            metadata = {}
            for field_name, value in record.items():
                if field_name in file_names:
                    extension, content = _manifest_file(manifest, str(value), where)
                elif field_name in inline:
                    extension, content = inline[field_name], str(value).encode("utf-8")
                else:
                    metadata[field_name] = value
                    continue
                if extension in sample:
                    raise ValueError(f"{where}: two fields would both be the {extension!r} member")
                sample[extension] = content
            if metadata:
                sample["json"] = json.dumps(metadata).encode("utf-8")
            yield sample


def _manifest_records(manifest: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of a JSONL or CSV manifest."""
    suffix = manifest.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ValueError(f"{manifest}: a manifest is a .jsonl or .csv file")
    with manifest.open(encoding="utf-8", newline="") as handle:
        if suffix == ".csv":
            for line, row in enumerate(csv.DictReader(handle), start=2):  # line 1: the header
                yield line, dict(row)
            return
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"{manifest}:{line}: not valid JSON ({error})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{manifest}:{line}: expected a JSON object, got {record!r}")
            yield line, record


def _manifest_file(manifest: Path, value: str, where: str) -> tuple[str, bytes]:
    """The member extension and bytes of a file named in a manifest."""
    path = Path(value) if Path(value).is_absolute() else manifest.parent / value
    extension = path.suffix.lower().lstrip(".")
    if not path.is_file() or not extension:
        raise ValueError(f"{where}: {value!r} is not a file with an extension ({path})")
    return extension, path.read_bytes()


def sample_key(text: str) -> str:
    """A WebDataset-safe key: letters, digits, ``_`` and ``-`` only (a dot would split the key
    from the file extension inside the tar)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def text_documents(
    paths: Iterable[str | os.PathLike], text_field: str = "text"
) -> Iterator[tuple[str, str]]:
    """(key, text) for each document in ``.txt`` files (one document per file) and ``.jsonl``
    files (one document per line, text under ``text_field``). Keys are the files' paths below
    their common folder, so same-named files in different folders do not collide.

    Raises:
        ValueError: naming the file and line of a JSONL record that is not valid JSON or has no
            string ``text_field``.
    """
    files = [Path(p) for p in paths]
    base = Path(os.path.commonpath([f.parent for f in files])) if files else Path()
    for path in files:
        name = str(path.relative_to(base).with_suffix(""))
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    try:
                        text = json.loads(line)[text_field]
                    except (json.JSONDecodeError, KeyError, TypeError) as error:
                        raise ValueError(
                            f"{path}:{number}: expected a JSON object with a string "
                            f"{text_field!r} field ({error!r})"
                        ) from error
                    if not isinstance(text, str):
                        raise ValueError(f"{path}:{number}: {text_field!r} is not a string")
                    yield sample_key(f"{name}-{number}"), text
        else:
            yield sample_key(name), path.read_text(encoding="utf-8")
