"""Commands beside training: build shards, train a tokenizer, fill in masks from a checkpoint.

Each is a typed function; ``mmm <tool> --help`` is generated from its signature and docstring.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Literal

from braceexpand import braceexpand

from mmm.shards import ShardSummary, build_shards


def _expand_inputs(inputs: str | list[str]) -> list[str]:
    inputs = [inputs] if isinstance(inputs, str) else inputs
    paths = sorted({p for pattern in inputs for b in braceexpand(pattern) for p in glob.glob(b)})
    if not paths:
        raise FileNotFoundError(f"no input file matches {inputs}")
    expanded: list[str] = []
    for path in map(Path, paths):
        expanded.extend(map(str, sorted(path.rglob("*"))) if path.is_dir() else [str(path)])
    return [p for p in expanded if Path(p).is_file()]


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
) -> ShardSummary:
    """Turn input files of one modality into WebDataset shards ``output-000000.tar``, ...

    Prints a summary (shards, samples, bytes, skipped files). Text: ``.txt`` files (a document
    each) and ``.jsonl`` files (a document per line); see each modality for its files.

    Args:
        inputs: files, folders (read recursively) or glob/brace patterns.
        output: shard name prefix, e.g. ``data/mytext/train``.
        modality: which reader turns files into samples (``text``, ``image``, ``audio``, ...).
        max_count: most samples per shard.
        max_size_mb: a shard is closed once it holds this many megabytes.
        workers: processes reading files in parallel (for readers that read file by file).
        options: reader options, e.g. ``{text_field: body, max_words: 120}`` for text.
        on_error: ``skip`` logs and counts a file its reader fails on and goes on (readers
            that read file by file); ``raise`` stops at the first.
        overwrite: replace shards already at ``output-*.tar`` (else that is an error).
        progress: show a progress bar.
    """
    if workers < 1 or max_count < 1 or max_size_mb <= 0:
        raise ValueError("shards: workers and max_count must be >= 1, max_size_mb > 0")
    summary = build_shards(
        _expand_inputs(inputs),
        output,
        modality=modality,
        max_count=max_count,
        max_size=max_size_mb * 1e6,
        workers=workers,
        options=options,
        on_error=on_error,
        overwrite=overwrite,
        progress=progress,
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
            (their ``txt`` members) or ``.txt``/``.jsonl`` files.
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


def fill_mask_command(*, checkpoint: str, text: str | list[str], top_k: int = 5) -> None:
    """Print the top-k predictions, with probabilities, for each mask token in each text.

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        text: one or more inputs, the mask written as the tokenizer's mask token (``[MASK]``).
        top_k: predictions shown per mask.
    """
    from mmm.inference import fill_mask, load_module

    module = load_module(checkpoint)
    text = [text] if isinstance(text, str) else text
    for sentence, masks in zip(text, fill_mask(module, text, top_k=top_k), strict=True):
        print(sentence)
        for index, candidates in enumerate(masks, start=1):
            shown = "  ".join(f"{c.token} {c.probability:.3f}" for c in candidates)
            print(f"  mask {index}: {shown}")
