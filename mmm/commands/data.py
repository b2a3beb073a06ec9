"""Commands that prepare data: build shards, train a tokenizer, compute audio statistics.

Each is a typed function; ``mmm <tool> --help`` is generated from its signature and docstring.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from mmm.data.formats import Sample, audio_samples
from mmm.data.labelled import LabelledSummary, labelled_manifest_shards
from mmm.data.patterns import expand_inputs
from mmm.data.reading import read_source
from mmm.data.shards import ShardSummary, build_shards
from mmm.tokenizers.audio import AudioTokenizer, LogMelSettings
from mmm.tokenizers.base import SampleError

log = logging.getLogger(__name__)


def shards_command(
    *,
    inputs: str | list[str],
    output: str,
    modality: str = "text",
    max_count: int = 10_000,
    max_size_mb: float = 1000.0,
    workers: int = 1,
    options: dict[str, Any] | None = None,
    on_error: Literal["skip", "raise"] = "skip",
    overwrite: bool = False,
    progress: bool = True,
    allow_outside: bool = False,
    label: str | None = None,
    task: str = "classification",
    splits: str = "0.8,0.1,0.1",
    split_column: str = "split",
    classes: str | None = None,
) -> ShardSummary | LabelledSummary:
    """Turn input files of one modality into WebDataset shards ``output-000000.tar``, ...

    Prints a summary (shards, samples, bytes, skipped files or lines, the first reason). Text:
    ``.txt`` files (a document each) and ``.jsonl`` files (a document per line); see each
    modality for its files. One run at a time writes an output (``output.lock``).

    Labelled manifests (``--modality manifest --label COLUMN``) become a labelled folder
    ``output/`` instead: ``labels.json``, ``train-*``/``val-*``/``test-*`` shards and label
    budgets ``train-p10-*``/``train-p30-*``, each sample with a ``label.json`` member (see
    ``docs/labelled-data.md``).

    Args:
        inputs: files, folders (read recursively) or glob/brace patterns. Files found in a
            folder or by a glob must resolve inside it (see ``allow_outside``).
        output: shard name prefix, e.g. ``data/mytext/train``.
        modality: which reader turns files into samples (``text``, ``image``, ``audio``,
            ``manifest``, ...).
        max_count: most samples per shard.
        max_size_mb: a shard is closed once it holds this many megabytes.
        workers: processes reading files in parallel (for readers that read file by file).
        options: reader options, e.g. ``{text_field: body, max_words: 120}`` for text, or
            ``{roots: [/data/clips], file_fields: [wav], members: {sentence: txt}}`` for
            manifests.
        on_error: ``skip`` logs and counts a file (a manifest line) its reader fails on and
            goes on (readers that read file by file); ``raise`` stops at the first.
        overwrite: replace shards already at ``output-*.tar`` (else that is an error).
        progress: show a progress bar.
        allow_outside: read files that data points outside its folder: links in an input
            folder (``secret.txt -> /etc/passwd``), manifest paths that are absolute or
            leave the manifest's folder (``../``, links). Off by default: such a file is
            refused, naming the link or the manifest line. Set it for data you trust, such as
            NeMo manifests of absolute paths (or name their folder in ``options.roots``).
        label: the manifest field holding each line's label: writes a labelled folder. A bad
            label (missing, empty, a class not in ``classes``, a non-numeric or NaN
            regression target) stops with an error naming manifest and line when
            ``on_error=raise``, and is logged, counted and left out with ``skip``.
        task: what the labels are: ``classification``, ``multilabel`` (``a;b`` in a CSV),
            ``regression`` or ``token_classification`` (a JSON list of ints per line).
        splits: train,val,test fractions for lines the manifest does not assign a split.
        split_column: the manifest field naming a line's split (train/val/test) where set;
            it wins over ``splits``.
        classes: the label set in index order, ``a,b,c``; default: the sorted class names
            of the training lines.
    """
    if workers < 1 or max_count < 1 or max_size_mb <= 0:
        raise ValueError("shards: workers and max_count must be >= 1, max_size_mb > 0")
    if label is not None:
        if modality != "manifest":
            raise ValueError(
                f"shards: --label reads manifests (--modality manifest), not {modality}"
            )
        labelled = labelled_manifest_shards(
            expand_inputs(inputs, allow_outside=allow_outside),
            output,
            label=label,
            task=task,
            splits=splits,
            split_column=split_column,
            classes=classes,
            on_error=on_error,
            max_count=max_count,
            overwrite=overwrite,
            options=options,
            allow_outside=allow_outside,
        )
        print(labelled)
        return labelled
    summary = build_shards(
        expand_inputs(inputs, allow_outside=allow_outside),
        output,
        modality=modality,
        max_count=max_count,
        max_size=max_size_mb * 1e6,
        workers=workers,
        options=options,
        on_error=on_error,
        overwrite=overwrite,
        progress=progress,
        allow_outside=allow_outside,
    )
    print(summary)
    return summary


def tokenizer_command(
    *,
    source: str,
    output: str,
    vocab_size: int = 8192,
    algorithm: Literal["wordpiece", "bpe"] = "wordpiece",
    lowercase: bool = True,
    min_frequency: int = 2,
    overwrite: bool = False,
) -> str:
    """Train a WordPiece or byte-level BPE tokenizer and save it as a Hugging Face tokenizer
    directory (use it with ``--model.tokenizer.path OUTPUT``).

    Args:
        source: an embedded corpus name (``python-docs``) or a glob/brace pattern of shards
            (their ``txt`` members) or ``.txt``/``.jsonl`` files. A ``pipe:`` URL of a shard
            (``pipe:aws s3 cp s3://bucket/train-000000.tar -``) runs its command in a shell:
            trusted sources only.
        output: directory to write.
        vocab_size: vocabulary size, special tokens included.
        algorithm: ``wordpiece`` (BERT) or ``bpe`` (RoBERTa).
        lowercase: lowercase before tokenizing.
        min_frequency: least count of a merge or word piece.
        overwrite: replace a tokenizer already at ``output``. Checkpoints trained with it
            record its fingerprint and refuse to load with the new one.
    """
    from mmm.tokenizers.text import _has_tokenizer_files, train_tokenizer

    if _has_tokenizer_files(Path(output)) and not overwrite:
        raise FileExistsError(
            f"a tokenizer exists at {output}; models trained with it need it unchanged. Choose "
            "another --output, or set --overwrite true"
        )

    tokenizer = train_tokenizer(
        source,
        output,
        vocab_size=vocab_size,
        algorithm=algorithm,
        lowercase=lowercase,
        min_frequency=min_frequency,
    )
    print(f"saved a {algorithm} tokenizer of {len(tokenizer)} tokens to {output}")
    return output


def log_mel_stats(tokenizer: AudioTokenizer, samples: Iterable[Sample]) -> dict[str, Any]:
    """Mean and std of the un-normalized log-mel over every frame of every usable clip (whole
    clips, not cropped), accumulated in float64; unusable clips are counted and skipped."""
    total = total_sq = 0.0
    frames = clips = skipped = 0
    for sample in samples:
        try:
            mel = tokenizer.log_mel(tokenizer.waveform(sample)).double()  # (F, T)
        except SampleError as error:
            log.warning("audio-stats: skipping sample: %s", error)
            skipped += 1
            continue
        total += float(mel.sum())
        total_sq += float(mel.square().sum())
        frames += mel.shape[1]
        clips += 1
    if clips == 0:
        raise ValueError(f"audio-stats: no usable clip ({skipped} skipped)")
    count = frames * tokenizer.features.n_mels
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"audio-stats: the statistics are not usable (mean {mean}, std {std})")
    return {
        "mean": mean,
        "std": std,
        "clips": clips,
        "frames": frames,
        "skipped": skipped,
        "features": asdict(tokenizer.features),
    }


def audio_stats_command(
    *, inputs: str | list[str], output: str, features: LogMelSettings | None = None
) -> dict[str, Any]:
    """Write the dataset mean and std of log-mel features to a JSON file.

    Train with it as ``AudioTokenizer(normalize="dataset", stats=OUTPUT)`` and the same
    ``features``.

    Args:
        inputs: shards (``.tar``), audio files or folders (read recursively), or glob/brace
            patterns of them, e.g. ``'data/asterisk-en/train-*.tar'``; or an embedded corpus
            name (``asterisk-en``). A ``pipe:`` URL of a shard runs its command in a shell:
            trusted inputs only.
        output: JSON file to write.
        features: log-mel settings; they must equal the tokenizer's.
    """
    tokenizer = AudioTokenizer(features=features)
    stats = log_mel_stats(tokenizer, read_source(inputs, read_files=audio_samples))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(stats, indent=2) + "\n")
    print(
        f"mean {stats['mean']:.3f} dB, std {stats['std']:.3f} dB over {stats['clips']} clips "
        f"({stats['frames']} frames, {stats['skipped']} skipped) -> {output}"
    )
    return stats
