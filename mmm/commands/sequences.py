"""Commands that use a pretraining checkpoint on sequences: fill in masks, embed, generate or
infill sequences, score sequences and mutations.

Each is a typed function; ``mmm <tool> --help`` is generated from its signature and docstring.
"""

from __future__ import annotations

import csv
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from mmm.data.patterns import expand_inputs
from mmm.files import replaced_atomically

if TYPE_CHECKING:
    from mmm.generation import SamplingSettings

log = logging.getLogger(__name__)


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
    context: str | list[str] | None = None,
    target: str | None = None,
    chain: str | None = None,
) -> int:
    """Sample sequences from a masked model, fill in the masks of templates (infill), or
    generate one modality of a multimodal model from files of its others (``--context``).

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
        context: files (or patterns, folders) of a multimodal model's other modalities, one
            sample each (``--context clip.wav``, ``--context 'clips/*.wav'``): ``--target`` is
            generated for each from it, the context never changed (see ``docs/generation.md``).
            A discrete target is sampled as above (``--length``: its tokens; unset: drawn
            from training), a continuous one is drawn by its MAE decoder in one pass.
        target: the modality to generate from ``--context`` (e.g. ``text`` from a recording,
            ``image`` from a word).
        chain: steps instead of ``--target``, the output of one the context of the next (as
            in 4M): ``image:text,text:image`` writes the digit's word, then draws a new image
            from the word alone; ``+`` joins context modalities (``audio+image:text``).
            Output: one line per input (discrete targets; with ``--output DIR``,
            ``DIR/<step>-<target>.txt``), one PNG per input (continuous targets,
            ``DIR/<step>-<target>/<input name>.png``; ``--output`` is then needed).
    """
    if context is not None or target is not None or chain is not None:
        return _generate_conditioned(
            checkpoint=checkpoint,
            context=context,
            target=target,
            chain=chain,
            output=output,
            length=length,
            settings=_settings(steps, sampler, remask, eta, temperature, top_k, top_p, schedule),
            seed=seed,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
    from mmm.generation import generate_batches, infill_batches
    from mmm.inference import load_module

    module = load_module(checkpoint, map_location=_device(device))
    settings = _settings(steps, sampler, remask, eta, temperature, top_k, top_p, schedule)
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


def _settings(steps, sampler, remask, eta, temperature, top_k, top_p, schedule) -> SamplingSettings:
    from mmm.generation import SamplingSettings

    return SamplingSettings(
        steps=steps,
        sampler=sampler,
        remask=remask,
        eta=eta,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        schedule=schedule,
    )


def _generate_conditioned(
    *,
    checkpoint: str,
    context: str | list[str] | None,
    target: str | None,
    chain: str | None,
    output: str | None,
    length: int | None,
    settings: SamplingSettings,
    seed: int,
    batch_size: int,
    device: str | None,
    progress: bool,
) -> int:
    """``mmm generate --context FILES --target M`` / ``--chain A:B,B:C``: one output line or
    picture per context file and step. Returns how many inputs were generated for."""
    from mmm.conditioning import (
        ContextError,
        context_samples,
        generate_chain_batches,
        parse_chain,
        step_from,
    )
    from mmm.inference import load_module

    if context is None:
        raise ContextError("--target and --chain generate from --context FILES; none given")
    if (target is None) == (chain is None):
        raise ContextError("give --target MODALITY or --chain STEPS (e.g. image:text,text:image)")
    files = expand_inputs(context)
    samples = context_samples(files)
    module = load_module(checkpoint, map_location=_device(device))
    steps = parse_chain(chain) if chain is not None else [step_from(module, samples, target)]
    batches = generate_chain_batches(
        module,
        samples,
        steps,
        length=length,
        settings=settings,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    with _ConditionedWriter(module, steps, files, output) as writer:
        for results in batches:
            writer.write(results)
    return writer.written


class _ConditionedWriter:
    """Writes each step's outputs as they come: a discrete step's texts as lines (printed,
    ``FILE<TAB>text``, or ``DIR/<step>-<target>.txt`` in input order), a continuous step's
    pictures as ``DIR/<step>-<target>/<input name>.png``."""

    def __init__(self, module, steps, files: list[str], output: str | None) -> None:
        from mmm.conditioning import ContextError

        drawn = [step for step in steps if not module.tokenizers[step.target].discrete]
        if drawn and output is None:
            raise ContextError(
                f"step {drawn[0]} draws pictures: give --output DIR for them to be written to"
            )
        if output is not None and Path(output).is_file():
            raise ContextError(f"--output {output} is a file; give a folder for the outputs")
        self.folder = Path(output) if output is not None else None
        self.files, self.names = files, _unique_stems(files)
        self.handles = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            for index, step in enumerate(steps, start=1):
                if module.tokenizers[step.target].discrete:
                    path = self.folder / f"{index}-{step.target}.txt"
                    self.handles[index] = path.open("w", encoding="utf-8")
        self.written = 0

    def write(self, results) -> None:
        """Write one batch's outputs of every step (``mmm.conditioning.Generated``)."""
        from torchvision.utils import save_image

        done, count = self.written, len(results[0])
        files, names = self.files[done : done + count], self.names[done : done + count]
        for index, generated in enumerate(results, start=1):
            if generated.texts is not None and self.folder is None:
                for file, text in zip(files, generated.texts, strict=True):
                    print(f"{file}\t{generated.step.target}\t{text}", flush=True)
            elif generated.texts is not None:
                self.handles[index].writelines(text + "\n" for text in generated.texts)
                self.handles[index].flush()
            else:
                folder = self.folder / f"{index}-{generated.step.target}"
                folder.mkdir(exist_ok=True)
                for name, picture in zip(names, generated.pictures, strict=True):
                    save_image(picture, folder / f"{name}.png")
        self.written += count

    def __enter__(self) -> _ConditionedWriter:
        return self

    def __exit__(self, *failure: object) -> None:
        for handle in self.handles.values():
            handle.close()
        if self.folder is not None and failure[0] is None:
            print(f"wrote the outputs of {self.written} inputs to {self.folder}")


def _unique_stems(files: list[str]) -> list[str]:
    """A file name per input to write its picture under: its stem, numbered when two inputs
    share one (``a/7.png`` and ``b/7.png`` -> ``7``, ``7-2``)."""
    seen: dict[str, int] = {}
    names = []
    for file in files:
        stem = Path(file).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


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


def embed_command(
    *,
    checkpoint: str,
    inputs: str | list[str],
    output: str,
    batch_size: int = 32,
    per_token: bool = False,
) -> str:
    """Embed sequences with a trained discrete model (mean-pooled encoder states) and save them.

    Inputs are FASTA files (``>`` headers, gzipped or not), ``.smi`` files (SMILES, then an
    optional name) or text files of one sequence per line; see ``read_sequences``.

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        inputs: files or glob/brace patterns; their sequences are embedded in file order.
        output: ``.npy``: the pooled (N, D) float32 array, rows in input order; ``.pt``: a dict
            with ``names`` (N strings), ``pooled`` (N, D) and, with ``per_token``,
            ``per_token`` (N tensors (L_i, D)).
        batch_size: sequences per forward pass.
        per_token: also save per-token states (``.pt`` only).
    """
    from mmm.data.patterns import expand_inputs as _expand_inputs
    from mmm.inference import embed_sequences, load_module, read_sequences

    suffix = Path(output).suffix
    if suffix not in (".npy", ".pt"):
        raise ValueError(f"embed: output must end in .npy or .pt, got {output!r}")
    if per_token and suffix != ".pt":
        raise ValueError("embed: per_token states need a .pt output")
    records = [
        (path, name, sequence)
        for path in _expand_inputs(inputs)
        for name, sequence in read_sequences(path)
    ]
    names = [name for _, name, _ in records]
    module = load_module(checkpoint)
    tokens, pooled = embed_sequences(
        module,
        [sequence for _, _, sequence in records],
        batch_size=batch_size,
        names=[f"{path}: record {name!r}" for path, name, _ in records],
    )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(output, pooled.numpy())
    else:
        saved = {"names": names, "pooled": pooled, **({"per_token": tokens} if per_token else {})}
        torch.save(saved, output)
    print(f"embedded {len(names)} sequences into {output} ({tuple(pooled.shape)})")
    return output
