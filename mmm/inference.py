"""Using a trained discrete model: fill in mask tokens, embed, generate, infill and score.

``generate`` / ``infill`` live in ``mmm.generation`` and ``score`` / ``score_mutations`` in
``mmm.scoring``; they are re-exported here so that one import serves every use of a model.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mmm.generation import SamplingSettings, discrete_modality, generate, infill
from mmm.module import MaskedModelingModule
from mmm.scoring import SequenceScore, collate_named, score, score_mutations
from mmm.sharding import is_sharded_checkpoint
from mmm.tokenizers.multimodal import MultimodalBatcher

__all__ = [
    "Candidate",
    "SamplingSettings",
    "SequenceScore",
    "embed_sequences",
    "fill_mask",
    "generate",
    "infill",
    "load_module",
    "read_sequences",
    "score",
    "score_mutations",
]


@dataclass(frozen=True)
class Candidate:
    """One prediction for a masked position."""

    token: str
    token_id: int
    probability: float


def load_module(
    checkpoint: str, map_location: str = "cpu", **overrides: object
) -> MaskedModelingModule:
    """Load a module, in eval mode, from a Lightning checkpoint.

    A checkpoint written by ``mmm fit`` holds the configuration of its tokenizer, encoder and
    masking, so nothing else is needed. One written by a module built in Python needs them
    again as ``overrides`` (``tokenizer=..., encoder=...``). Only tensors and plain values are
    unpickled (``weights_only=True``).
    """
    require_checkpoint_file(checkpoint)
    overrides.setdefault("init_from", None)  # its weights are in the checkpoint
    try:
        module = MaskedModelingModule.load_from_checkpoint(
            checkpoint, map_location=map_location, weights_only=True, **overrides
        )
    except UNREADABLE_CHECKPOINT as error:
        raise unreadable_checkpoint(checkpoint, error) from error
    return module.eval()


#: What ``torch.load`` raises on a file that is no checkpoint (empty, YAML, text, cut short,
#: or holding pickled code that ``weights_only`` refuses).
UNREADABLE_CHECKPOINT = (EOFError, IndexError, KeyError, RuntimeError, pickle.UnpicklingError)


def read_checkpoint(path: str) -> dict:
    """The contents of a checkpoint file (tensors and plain values only, ``weights_only``).

    Raises:
        FileNotFoundError: naming the path when there is no file.
        ValueError: naming the file when it is no checkpoint (see ``unreadable_checkpoint``).
    """
    require_checkpoint_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_CHECKPOINT as error:
        raise unreadable_checkpoint(path, error) from error


def require_checkpoint_file(path: str) -> None:
    """Refuse a path that is no checkpoint file, naming it: a sharded checkpoint folder (as
    ``--trainer.strategy fsdp2`` writes) with the command that makes it one file.

    Raises:
        ValueError: for a sharded checkpoint folder.
        FileNotFoundError: for anything else that is not a file.
    """
    if is_sharded_checkpoint(path):
        raise ValueError(
            f"{path} is a sharded checkpoint folder (one shard per rank): gather it into one "
            f"file with `mmm consolidate --checkpoint {path}` and read {path}.consolidated"
        )
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")


def unreadable_checkpoint(path: str, error: BaseException) -> ValueError:
    """The error for a checkpoint file that cannot be loaded, naming it and what was wanted."""
    return ValueError(
        f"{path} is not a checkpoint written by mmm fit (a Lightning .ckpt file of tensors and "
        f"plain values): {type(error).__name__}: {error}"
    )


@torch.no_grad()
def fill_mask(
    module: MaskedModelingModule,
    texts: list[str],
    top_k: int = 5,
    context: list[dict[str, bytes]] | None = None,
) -> list[list[list[Candidate]]]:
    """Top-k predictions with probabilities for every mask token of every text.

    Texts spell the mask with the tokenizer's mask token (``[MASK]`` for WordPiece tokenizers,
    ``<mask>`` for BPE ones). Returns, per text, one list of candidates per mask token.

    Args:
        module: a trained module with one discrete modality (and maybe others).
        texts: the texts to fill in.
        top_k: candidates per mask.
        context: one raw sample per text (member extension -> bytes, e.g.
            ``{"wav": audio_bytes}``) whose other modalities the model sees beside the text:
            a transcript filled in with its audio heard. Decoded without augmentation.

    Raises:
        ValueError: naming a text that contains no mask token, or whose masks lie beyond the
            tokenizer's ``max_length``; a ``top_k`` below 1; or context that does not pair
            one sample with each text.
    """
    name, tokenizer = discrete_modality(module, "fill_mask")
    if top_k < 1:
        raise ValueError(f"fill_mask: top_k must be >= 1, got {top_k}")
    spec = tokenizer.spec
    batch = {name: tokenizer.collate(texts), **_context_batch(module, name, texts, context)}
    batch = {key: {k: v.to(module.device) for k, v in sub.items()} for key, sub in batch.items()}
    positions = batch[name]["input_ids"] == spec.mask_token_id  # (B, L)
    for text, row in zip(texts, positions, strict=True):
        if row.any():
            continue
        if tokenizer.mask_token in text:
            raise ValueError(
                f"the masks of {text!r} lie beyond max_length={spec.max_length} tokens, where "
                "the text is cut off; shorten the text before the mask"
            )
        raise ValueError(f"no mask token in {text!r}; write masks as {tokenizer.mask_token!r}")
    logits = module.predict_positions(batch, positions, name)  # (N, V)
    top = logits.float().softmax(dim=-1).topk(min(top_k, logits.shape[-1]), dim=-1)
    results: list[list[list[Candidate]]] = [[] for _ in texts]
    rows = positions.nonzero()[:, 0].tolist()
    for row, values, ids in zip(rows, top.values.tolist(), top.indices.tolist(), strict=True):
        results[row].append(
            [Candidate(tokenizer.id_to_token(i), i, p) for i, p in zip(ids, values, strict=True)]
        )
    return results


def _context_batch(
    module: MaskedModelingModule,
    name: str,
    texts: list[str],
    context: list[dict[str, bytes]] | None,
) -> dict[str, dict[str, torch.Tensor]]:
    """The other modalities of ``context`` samples, batched as in evaluation."""
    if context is None:
        return {}
    if len(context) != len(texts):
        raise ValueError(
            f"fill_mask: {len(context)} context samples for {len(texts)} texts; give one for "
            "each text, in the same order (mmm fill-mask also takes one for all of them)"
        )
    others = {key: t for key, t in module.tokenizers.items() if key != name}
    if not others:
        raise ValueError(f"fill_mask: this model has no modality besides {name!r} for context")
    batcher = MultimodalBatcher(others, optional=frozenset(others)).for_evaluation()
    samples = [{"__key__": f"context {i}", **sample} for i, sample in enumerate(context)]
    return batcher.collate([batcher.decode_sample(sample) for sample in samples])


@torch.no_grad()
def embed_sequences(
    module: MaskedModelingModule,
    sequences: list[str],
    batch_size: int = 32,
    names: list[str] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Encoder states of unmasked sequences, per token and mean-pooled, for any discrete
    modality (text, protein, SMILES).

    Sequences are batched through the tokenizer's ``collate`` and ``MaskedModelingModule.embed``
    in eval mode (no dropout, no masking), so the same input always gives the same vectors.
    The module's train/eval mode is restored afterwards.

    Args:
        module: a trained module whose tokenizer is a ``DiscreteTokenizer``.
        sequences: raw strings, as the tokenizer's ``collate`` accepts them.
        batch_size: sequences per forward pass.
        names: how errors name each sequence (e.g. its file and record); default its index.

    Returns:
        ``per_token``: one float32 CPU tensor (L_i, D) per sequence, its real positions
        (``attention_mask``), special tokens such as ``<cls>``/``<eos>`` or ``[CLS]``/``[SEP]``
        included; and ``pooled``: (N, D) float32, the mean of each sequence's ``per_token`` rows.

    Raises:
        TypeError: when the module's modality is not discrete.
        ValueError: when ``batch_size`` is not positive.
    """
    name, tokenizer = discrete_modality(module, "embed_sequences")
    if batch_size < 1:
        raise ValueError(f"embed_sequences: batch_size must be >= 1, got {batch_size}")
    was_training = module.training
    module.eval()
    per_token: list[torch.Tensor] = []
    pooled: list[torch.Tensor] = []
    names = names if names is not None else [f"sequence {n}" for n in range(len(sequences))]
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        collated = collate_named(tokenizer, chunk, names[start:])
        sub = {k: v.to(module.device) for k, v in collated.items()}
        hidden, mean = module.embed({name: sub})  # {name: (B, L, D)}, (B, D)
        pairs = zip(hidden[name].float().cpu(), sub["attention_mask"].cpu(), strict=True)
        for states, real in pairs:
            per_token.append(states[real])  # (L_i, D)
        pooled.append(mean.float().cpu())
    module.train(was_training)
    dim = module.encoder.dim
    return per_token, torch.cat(pooled) if pooled else torch.empty(0, dim)


def read_sequences(path: str | Path) -> list[tuple[str, str]]:
    """(name, sequence) pairs of a file of sequences, gzipped or not:

    - FASTA (first character ``>``): one per record, named by the record ID;
    - ``.smi`` / ``.smiles``: one per line, the SMILES being the first word and the name the
      second (the line number when absent); a ``smiles ...`` header line is skipped;
    - anything else: one per non-empty line, named by its line number.

    Raises:
        ValueError: naming a file that holds no sequence.
    """
    from mmm.data.formats import open_text, read_fasta

    path = Path(path)
    with open_text(path) as handle:
        lines = [(str(number), line.strip()) for number, line in enumerate(handle, start=1)]
    lines = [(number, line) for number, line in lines if line]
    if lines and lines[0][1].startswith(">"):
        return list(read_fasta(path))
    if not {".smi", ".smiles"}.intersection(path.suffixes):
        pairs = lines
    else:
        rows = [(number, line.split()) for number, line in lines]
        if rows and rows[0][1][0].lower() == "smiles":  # a header line
            rows = rows[1:]
        pairs = [(words[1] if len(words) > 1 else number, words[0]) for number, words in rows]
    if not pairs:
        raise ValueError(f"{path}: no sequence in this file")
    return pairs


FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")


def write_sequences(path: str | Path, names: list[str], sequences: list[str]) -> None:
    """Write named sequences in the format the file name asks for (see ``sequence_lines``);
    ``read_sequences`` reads each back."""
    write_sequence_batches(path, [(names, sequences)])


def write_sequence_batches(path: str | Path, batches: Iterable[tuple[list[str], list[str]]]) -> int:
    """Write batches of (names, sequences) as they come, each flushed to disk before the next
    is asked for: a long run shows its output as it goes, and keeps one batch in memory.

    Returns:
        How many sequences were written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with path.open("w", encoding="utf-8") as handle:
        for names, sequences in batches:
            handle.writelines(line + "\n" for line in sequence_lines(path, names, sequences))
            handle.flush()
            written += len(sequences)
    return written


def sequence_lines(path: Path, names: list[str], sequences: list[str]) -> list[str]:
    """Named sequences as the lines of the format ``path``'s name asks for: FASTA
    (``.fasta``, ``.fa``, ``.faa``, ``.fas``; 60 residues a line), ``.smi``
    (``SMILES<TAB>name``) or one sequence a line (anything else)."""
    suffix = path.suffix.lower()
    if suffix in FASTA_SUFFIXES:
        lines = []
        for name, sequence in zip(names, sequences, strict=True):
            lines.append(f">{name}")
            lines += [sequence[i : i + 60] for i in range(0, len(sequence), 60)] or [""]
        return lines
    if suffix in (".smi", ".smiles"):
        return [f"{seq}\t{name}" for name, seq in zip(names, sequences, strict=True)]
    return list(sequences)
