"""Commands beside training: build shards, train a tokenizer, compute audio statistics, and use
a checkpoint: fill in masks, generate or infill sequences, score sequences and mutations.

Each is a typed function; ``mmm <tool> --help`` is generated from its signature and docstring.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch

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
    label: str | None = None,
    task: str = "classification",
    splits: str = "0.8,0.1,0.1",
    split_column: str = "split",
    classes: str | None = None,
) -> ShardSummary | LabelledSummary:
    """Turn input files of one modality into WebDataset shards ``output-000000.tar``, ...

    Prints a summary (shards, samples, bytes, skipped files). Text: ``.txt`` files (a document
    each) and ``.jsonl`` files (a document per line); see each modality for its files.

    Labelled manifests (``--modality manifest --label COLUMN``) become a labelled folder
    ``output/`` instead: ``labels.json``, ``train-*``/``val-*``/``test-*`` shards and label
    budgets ``train-p10-*``/``train-p30-*``, each sample with a ``label.json`` member (see
    ``docs/labelled-data.md``).

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
            expand_inputs(inputs),
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
        )
        print(labelled)
        return labelled
    summary = build_shards(
        expand_inputs(inputs),
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
            name (``asterisk-en``).
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


def fill_mask_command(
    *,
    checkpoint: str,
    text: str | list[str],
    top_k: int = 5,
    context: str | list[str] | None = None,
) -> None:
    """Print the top-k predictions, with probabilities, for each mask token in each text.

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        text: one or more inputs, the mask written as the tokenizer's mask token (``[MASK]``).
        top_k: predictions shown per mask.
        context: for a multimodal model, one file per text that the model sees beside it
            (e.g. the recording of a transcript: ``--context clip.wav``), read as the member
            of its extension.
    """
    from mmm.inference import fill_mask, load_module

    module = load_module(checkpoint)
    text = [text] if isinstance(text, str) else text
    files = [context] if isinstance(context, str) else context
    samples = None if files is None else [_file_member(path) for path in files]
    found = fill_mask(module, text, top_k=top_k, context=samples)
    for sentence, masks in zip(text, found, strict=True):
        print(sentence)
        for index, candidates in enumerate(masks, start=1):
            shown = "  ".join(f"{c.token} {c.probability:.3f}" for c in candidates)
            print(f"  mask {index}: {shown}")


def _file_member(path: str) -> dict[str, bytes]:
    """A file as a one-member sample, keyed by its extension (``clip.wav`` -> ``wav``)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no context file at {path}")
    return {file.suffix.lstrip(".").lower(): file.read_bytes()}


def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def generate_command(
    *,
    checkpoint: str,
    output: str | None = None,
    num_samples: int = 10,
    length: int | None = None,
    template: str | list[str] | None = None,
    steps: int = 64,
    sampler: Literal["ancestral", "maskgit"] = "ancestral",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    schedule: Literal["linear", "loglinear", "cosine"] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> list[str]:
    """Sample sequences from a masked model, or fill in the masks of templates (infill).

    MDLM ancestral sampling or MaskGIT; written as FASTA, .smi or text lines.

    Any discrete checkpoint works, whether trained with masked diffusion
    (``--model.masking mmm.masking.DiffusionMasking``) or BERT-style.

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        output: ``.fasta``/``.fa``/``.faa``: FASTA; ``.smi``: ``SMILES<TAB>name``; anything
            else: one sequence a line. Unset: printed.
        num_samples: sequences to generate, or samples per template.
        length: tokens per generated sequence (special tokens not counted); unset: drawn
            from the training data's lengths, recorded in the checkpoint.
        template: infill instead of generating: strings whose mask tokens (``<mask>``,
            ``[MASK]``) are filled and whose other positions are kept; ``<mask>x12`` is 12
            masks, e.g. ``MKT<mask>x12GLS``.
        steps: unmasking steps.
        sampler: ``ancestral`` (MDLM) or ``maskgit`` (most confident first).
        temperature: logits are divided by it before sampling.
        top_k: sample among the k most likely tokens only.
        top_p: nucleus sampling: the smallest set of tokens with this much probability.
        schedule: unmasking schedule; unset: the checkpoint's diffusion schedule, else linear.
        seed: the same seed gives the same samples (same settings and device).
        batch_size: sequences sampled together.
        device: ``cpu``, ``cuda``, ...; unset: CUDA when available.
        progress: show a progress bar.
    """
    from mmm.inference import SamplingSettings, generate, infill, load_module, write_sequences

    module = load_module(checkpoint, map_location=_device(device))
    settings = SamplingSettings(
        steps=steps,
        sampler=sampler,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        schedule=schedule,
    )
    common = {"settings": settings, "seed": seed, "batch_size": batch_size, "progress": progress}
    if template is None:
        sequences = generate(module, num_samples, length=length, **common)
        names = [f"generated_{index}" for index in range(1, len(sequences) + 1)]
    else:
        templates = [template] if isinstance(template, str) else template
        repeated = [t for t in templates for _ in range(num_samples)]
        sequences = infill(module, repeated, **common)
        names = [
            f"infill_{i // num_samples + 1}_{i % num_samples + 1}" for i in range(len(repeated))
        ]
    if output is None:
        print("\n".join(sequences))
    else:
        write_sequences(output, names, sequences)
        print(f"wrote {len(sequences)} sequences to {output}")
    return sequences


def score_command(
    *,
    checkpoint: str,
    inputs: str | list[str] | None = None,
    mutations: str | None = None,
    sequence: str | None = None,
    output: str | None = None,
    mutation_column: str = "mutant",
    sequence_column: str = "sequence",
    score_column: str = "score",
    batch_size: int = 64,
    device: str | None = None,
) -> str:
    """Score sequences (pseudo-log-likelihood) or point mutations (masked marginals).

    ``--inputs``: each sequence's pseudo-log-likelihood into a CSV; ``--mutations``: ESM-1v
    masked-marginal scores written back to the mutations' CSV as a score column.

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        inputs: FASTA, ``.smi`` or one-sequence-a-line files (or patterns): each sequence's
            pseudo-log-likelihood (every position hidden in turn) goes to ``output`` as CSV
            columns ``name,length,pll,pseudo_perplexity``.
        mutations: a CSV with a ``mutation_column`` of mutations such as ``A23G`` or
            ``A23G:K45R`` (1-based positions): each gets ``log p(mutant) - log p(wild type)``
            at its hidden positions, summed.
        sequence: the wild type of every mutation; unset: each row's ``sequence_column``.
        output: where the CSV goes; unset: ``scores.csv`` for ``inputs``, the ``mutations``
            file itself (written back) for mutations.
        mutation_column: CSV column of the mutations.
        sequence_column: CSV column of the wild types when ``sequence`` is unset.
        score_column: name of the added column.
        batch_size: hidden copies per forward pass.
        device: ``cpu``, ``cuda``, ...; unset: CUDA when available.
    """
    from mmm.inference import load_module

    if (inputs is None) == (mutations is None):
        raise ValueError("score: give either --inputs (pseudo-log-likelihood) or --mutations")
    module = load_module(checkpoint, map_location=_device(device))
    if inputs is not None:
        return _score_sequences(module, inputs, output or "scores.csv", batch_size)
    return _score_mutation_csv(
        module,
        mutations,
        output or mutations,
        sequence=sequence,
        columns=(mutation_column, sequence_column, score_column),
        batch_size=batch_size,
    )


def _score_sequences(module, inputs: str | list[str], output: str, batch_size: int) -> str:
    from mmm.inference import read_sequences, score

    records = [pair for path in expand_inputs(inputs) for pair in read_sequences(path)]
    scores = score(module, [seq for _, seq in records], batch_size=batch_size)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "length", "pll", "pseudo_perplexity"])
        for (name, _), result in zip(records, scores, strict=True):
            writer.writerow([name, result.length, result.pll, result.pseudo_perplexity])
    print(f"scored {len(records)} sequences into {output}")
    return output


def _score_mutation_csv(
    module, path: str, output: str, sequence: str | None, columns: tuple[str, str, str], batch_size
) -> str:
    from mmm.inference import score_mutations

    mutation_column, sequence_column, score_column = columns
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    needed = [mutation_column] + ([] if sequence is not None else [sequence_column])
    missing = [c for c in needed if c not in fields]
    if missing:
        raise ValueError(f"{path}: no column {missing} (columns: {fields})")
    groups: dict[str, list[int]] = {}  # wild type -> its rows, each scored in one pass
    for index, row in enumerate(rows):
        groups.setdefault(sequence or row[sequence_column], []).append(index)
    for wild_type, indices in groups.items():
        texts = [rows[i][mutation_column] for i in indices]
        try:
            values = score_mutations(module, wild_type, texts, batch_size=batch_size)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
        for i, value in zip(indices, values, strict=True):
            rows[i][score_column] = value
    if score_column not in fields:
        fields.append(score_column)
    with open(output, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"scored {len(rows)} mutations into {output} (column {score_column!r})")
    return output
