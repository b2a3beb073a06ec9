"""Commands beside training: build shards, train a tokenizer, compute audio statistics, and use
a checkpoint: fill in masks, generate or infill sequences, score sequences and mutations.

Each is a typed function; ``mmm <tool> --help`` is generated from its signature and docstring.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from mmm.data.formats import Sample, audio_samples
from mmm.data.labelled import LabelledSummary, labelled_manifest_shards
from mmm.data.patterns import expand_inputs
from mmm.data.reading import read_source
from mmm.data.shards import ShardSummary, build_shards
from mmm.files import replaced_atomically
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


def fill_mask_command(
    *,
    checkpoint: str,
    text: str | list[str],
    top_k: int = 5,
    context: str | list[str] | None = None,
) -> None:
    """Print the top-k predictions, with probabilities, for each mask token in each text.

    Several texts: ``--text '[A, B]'`` or ``--text A --text+ B`` (a second ``--text`` would
    replace the first, so it is refused).

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        text: one or more inputs, the mask written as the tokenizer's mask token (``[MASK]``).
        top_k: predictions shown per mask.
        context: for a multimodal model, the file that the model sees beside each text (e.g.
            the recording of a transcript: ``--context clip.wav``), read as the member of its
            extension: one for every text, or one that every text is read with.
    """
    from mmm.inference import fill_mask, load_module

    module = load_module(checkpoint)
    text = [text] if isinstance(text, str) else text
    files = [context] if isinstance(context, str) else context
    samples = None if files is None else [_file_member(path) for path in files]
    if samples is not None and len(samples) == 1:
        samples = samples * len(text)  # one context for every text
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
    sampler: Literal["ancestral", "maskgit", "remdm"] = "ancestral",
    remask: Literal["cap", "rescale"] = "cap",
    eta: float = 0.02,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    schedule: Literal["linear", "loglinear", "cosine"] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> int:
    """Sample sequences from a masked model, or fill in the masks of templates (infill).

    MDLM ancestral sampling or MaskGIT; written as FASTA, .smi or text lines, a batch at a
    time as it is sampled (each flushed to the file), so output appears as the run goes and
    memory holds one batch however many samples are asked for. Returns how many were written.

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
        sampler: ``ancestral`` (MDLM), ``maskgit`` (most confident first) or ``remdm``
            (ancestral that hides revealed tokens again, ReMDM).
        remask: ReMDM's schedule: ``cap`` (probability ``min(eta, sigma_max)``) or
            ``rescale`` (``eta * sigma_max``).
        eta: ReMDM's remasking strength, in [0, 1].
        temperature: logits are divided by it before sampling.
        top_k: sample among the k most likely tokens only.
        top_p: nucleus sampling: the smallest set of tokens with this much probability.
        schedule: unmasking schedule; unset: the checkpoint's diffusion schedule, else linear.
        seed: the same seed gives the same samples (same settings and device).
        batch_size: sequences sampled together.
        device: ``cpu``, ``cuda``, ...; unset: CUDA when available.
        progress: show a progress bar.
    """
    from mmm.generation import generate_batches, infill_batches
    from mmm.inference import SamplingSettings, load_module

    module = load_module(checkpoint, map_location=_device(device))
    settings = SamplingSettings(
        steps=steps,
        sampler=sampler,
        remask=remask,
        eta=eta,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        schedule=schedule,
    )
    common = {"settings": settings, "seed": seed, "batch_size": batch_size, "progress": progress}
    if template is None:
        batches = generate_batches(module, num_samples, length=length, **common)
        names = (f"generated_{index}" for index in itertools.count(1))
    else:
        templates = [template] if isinstance(template, str) else template
        repeated = (t for t in templates for _ in range(num_samples))
        total = len(templates) * num_samples
        batches = infill_batches(module, repeated, total=total, **common)
        names = (f"infill_{i // num_samples + 1}_{i % num_samples + 1}" for i in itertools.count())
    named = ((list(itertools.islice(names, len(batch))), batch) for batch in batches)
    return _write_generated(named, output)


def _write_generated(batches: Iterator[tuple[list[str], list[str]]], output: str | None) -> int:
    """Print or write each batch of (names, sequences) as soon as it is sampled."""
    from mmm.inference import write_sequence_batches

    if output is not None:
        written = write_sequence_batches(output, batches)
        print(f"wrote {written} sequences to {output}")
        return written
    written = 0
    for _, sequences in batches:
        print("\n".join(sequences), flush=True)
        written += len(sequences)
    return written


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
    masked-marginal scores, the mutations' CSV with a score column added, written to a new
    file. Outputs are written beside their target and renamed into place once complete, so a
    failure leaves no half-written file (and never touches the input).

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        inputs: FASTA, ``.smi`` or one-sequence-a-line files (or patterns): each sequence's
            pseudo-log-likelihood (every position hidden in turn) goes to ``output`` as CSV
            columns ``name,length,pll,pseudo_perplexity``. A sequence longer than the model's
            ``max_length`` is refused, naming it (it would be scored cut short).
        mutations: a CSV with a ``mutation_column`` of mutations such as ``A23G`` or
            ``A23G:K45R`` (1-based positions, each position at most once): each gets
            ``log p(mutant) - log p(wild type)`` at its hidden positions, summed. A wild type
            longer than the model's ``max_length`` is refused: score a window that fits.
        sequence: the wild type of every mutation; unset: each row's ``sequence_column``.
        output: where the CSV goes; unset: ``scores.csv`` for ``inputs``, ``NAME.scored.csv``
            beside ``NAME.csv`` for mutations. Naming the mutations file itself replaces it,
            only once every row is scored.
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
        output or scored_name(mutations),
        sequence=sequence,
        columns=(mutation_column, sequence_column, score_column),
        batch_size=batch_size,
    )


def scored_name(path: str) -> str:
    """Where the scores of a mutations CSV go by default: ``dms.csv`` -> ``dms.scored.csv``."""
    file = Path(path)
    return str(file.with_name(f"{file.stem}.scored{file.suffix or '.csv'}"))


def _score_sequences(module, inputs: str | list[str], output: str, batch_size: int) -> str:
    from mmm.inference import read_sequences, score

    records = [
        (path, name, sequence)
        for path in expand_inputs(inputs)
        for name, sequence in read_sequences(path)
    ]
    scores = score(
        module,
        [sequence for _, _, sequence in records],
        batch_size=batch_size,
        names=[f"{path}: record {name!r}" for path, name, _ in records],
    )
    with (
        replaced_atomically(output) as staged,
        open(staged, "w", newline="", encoding="utf-8") as handle,
    ):
        writer = csv.writer(handle)
        writer.writerow(["name", "length", "pll", "pseudo_perplexity"])
        for (_, name, _), result in zip(records, scores, strict=True):
            writer.writerow([name, result.length, result.pll, result.pseudo_perplexity])
    print(f"scored {len(records)} sequences into {output}")
    return output


@dataclass(frozen=True)
class MutationTable:
    """The rows of a mutations CSV, each with its line number (how errors name it)."""

    path: str
    fields: list[str]
    rows: list[dict[str, str]]
    lines: list[int]

    def where(self, index: int) -> str:
        return f"{self.path} row {index + 1} (line {self.lines[index]})"

    def value(self, index: int, column: str) -> str:
        """The row's ``column``, or an error naming the row and the columns it has."""
        value = self.rows[index].get(column)
        if value is None or not value.strip():
            present = [field for field, v in self.rows[index].items() if v]
            raise ValueError(
                f"{self.where(index)}: no {column!r} value (its columns with values: {present})"
            )
        return value


def read_mutation_table(path: str, needed: list[str]) -> MutationTable:
    """A mutations CSV, every row checked to have as many fields as the header.

    Raises:
        ValueError: naming a missing column, or a row with more fields than the header (the
            extra fields would have no column to be written back under).
    """
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, rows, lines = list(reader.fieldnames or []), [], []
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    missing = [c for c in needed if c not in fields]
    if missing:
        raise ValueError(f"{path}: no column {missing} (columns: {fields})")
    table = MutationTable(path, fields, rows, lines)
    for index, row in enumerate(rows):
        if None in row:  # DictReader keeps the fields past the header's under None
            raise ValueError(
                f"{table.where(index)}: {len(fields) + len(row[None])} fields, the header has "
                f"{len(fields)} ({fields}); quote values that hold commas"
            )
    return table


def _score_mutation_csv(
    module, path: str, output: str, sequence: str | None, columns: tuple[str, str, str], batch_size
) -> str:
    from mmm.inference import score_mutations

    mutation_column, sequence_column, score_column = columns
    needed = [mutation_column] + ([] if sequence is not None else [sequence_column])
    table = read_mutation_table(path, needed)
    groups: dict[str, list[int]] = {}  # wild type -> its rows, each scored in one pass
    for index in range(len(table.rows)):
        wild_type = sequence or table.value(index, sequence_column)
        groups.setdefault(wild_type, []).append(index)
    for wild_type, indices in groups.items():
        values = score_mutations(
            module,
            wild_type,
            [table.value(i, mutation_column) for i in indices],
            batch_size=batch_size,
            names=[table.where(i) for i in indices],
            wild_type_name=(
                "--sequence" if sequence else f"the wild type of {table.where(indices[0])}"
            ),
        )
        for i, value in zip(indices, values, strict=True):
            table.rows[i][score_column] = value
    fields = table.fields + ([score_column] if score_column not in table.fields else [])
    with (
        replaced_atomically(output) as staged,
        open(staged, "w", newline="", encoding="utf-8") as handle,
    ):
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table.rows)
    print(f"scored {len(table.rows)} mutations into {output} (column {score_column!r})")
    return output
