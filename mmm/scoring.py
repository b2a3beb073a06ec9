"""Score sequences with a masked model: pseudo-log-likelihood and masked-marginal mutation
effects.

- Pseudo-log-likelihood (Salazar et al. 2020): ``sum_i log p(x_i | x without i)``, each maskable
  position hidden in turn; ``exp(-PLL / n)`` is the pseudo-perplexity.
- Masked marginals of point mutations (ESM-1v, Meier et al. 2021): ``A23G`` scores
  ``log p(G) - log p(A)`` at position 23 with that position hidden in the wild type; a
  multi-mutant ``A23G:K45R`` sums its mutations' scores.

Each (sequence, position) pair is one row of a forward pass, batched ``batch_size`` rows at a
time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from mmm.generation import discrete_modality, evaluating
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import DiscreteTokenizer

_MUTATION = re.compile(r"^([A-Za-z])(\d+)([A-Za-z])$")


@dataclass(frozen=True)
class SequenceScore:
    """The pseudo-log-likelihood of one sequence."""

    pll: float
    """``sum_i log p(x_i | x without i)`` in nats over its maskable positions."""
    length: int
    """Positions scored (residues, SMILES tokens, word pieces; special tokens excluded)."""

    @property
    def pseudo_perplexity(self) -> float:
        return math.exp(-self.pll / self.length)


def masked_log_probs(
    module: MaskedModelingModule,
    batch: dict[str, Tensor],
    jobs: list[tuple[int, int]],
    batch_size: int,
) -> Iterator[Tensor]:
    """Log-probabilities over the vocabulary at single hidden positions, batched.

    Args:
        module: a discrete module in eval mode.
        batch: collated sequences, ``input_ids`` and ``attention_mask`` (B, L), on its device.
        jobs: (row, position) pairs: hide ``position`` of sequence ``row``, nothing else.
        batch_size: jobs per forward pass.

    Yields:
        (n, V) float log-probabilities for the next ``n <= batch_size`` jobs, in job order.
    """
    name, tokenizer = discrete_modality(module, "scoring")
    mask_id = tokenizer.spec.mask_token_id
    device = batch["input_ids"].device
    for start in range(0, len(jobs), batch_size):
        rows, cols = torch.tensor(jobs[start : start + batch_size], device=device).unbind(dim=1)
        ids = batch["input_ids"][rows].clone()  # (n, L) one copy per job
        index = torch.arange(rows.shape[0], device=device)
        ids[index, cols] = mask_id
        positions = torch.zeros_like(ids, dtype=torch.bool)
        positions[index, cols] = True
        inputs = {name: {"input_ids": ids, "attention_mask": batch["attention_mask"][rows]}}
        yield module.predict_positions(inputs, positions, name).float().log_softmax(dim=-1)


def collate_named(
    tokenizer: DiscreteTokenizer, sequences: list[str], names: list[str]
) -> dict[str, Tensor]:
    """``tokenizer.collate(sequences)``; a sequence it rejects is named by ``names``."""
    try:
        return tokenizer.collate(sequences)
    except ValueError:
        for sequence, name in zip(sequences, names, strict=False):
            try:
                tokenizer.collate([sequence])
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from error
        raise


def refuse_cut_sequences(
    tokenizer: DiscreteTokenizer,
    sequences: list[str],
    batch: dict[str, Tensor],
    names: list[str],
    advice: str,
) -> None:
    """Refuse a sequence that the tokenizer cut at ``max_length``: a score of it would be the
    score of another, shorter sequence.

    Only rows that fill ``max_length`` can have been cut; the tokenizer counts each one's
    tokens (``content_length``).

    Raises:
        ValueError: naming the sequence, its length, what the model reads, and ``advice``.
    """
    limit = tokenizer.spec.max_length
    kept = batch["maskable"].sum(dim=1).tolist()  # (B,) tokens scored of each sequence
    full = (batch["attention_mask"].sum(dim=1) >= limit).nonzero().flatten().tolist()
    for row in full:
        length = tokenizer.content_length(sequences[row])
        if length > kept[row]:
            raise ValueError(
                f"{names[row]}: {length} tokens, but this model reads at most {kept[row]} "
                f"(max_length={limit}, special tokens included), so it would be scored cut "
                f"short; {advice}"
            )


def _prepared(
    module: MaskedModelingModule,
    sequences: list[str],
    batch_size: int,
    names: list[str],
    advice: str,
) -> tuple[DiscreteTokenizer, dict[str, Tensor]]:
    """The module's tokenizer and the sequences collated on its device, each named by
    ``names`` when it cannot be read or does not fit."""
    tokenizer = discrete_modality(module, "scoring")[1]
    if batch_size < 1:
        raise ValueError(f"scoring: batch_size must be >= 1, got {batch_size}")
    batch = collate_named(tokenizer, sequences, names)
    refuse_cut_sequences(tokenizer, sequences, batch, names, advice)
    return tokenizer, {k: v.to(module.device) for k, v in batch.items()}


@torch.no_grad()
def score(
    module: MaskedModelingModule,
    sequences: list[str],
    batch_size: int = 64,
    names: list[str] | None = None,
) -> list[SequenceScore]:
    """Pseudo-log-likelihood of each sequence: every maskable position hidden in turn.

    Costs one forward row per position (``sum of lengths / batch_size`` passes).

    Args:
        module: a discrete module.
        sequences: raw strings, as the tokenizer's ``collate`` accepts them.
        batch_size: hidden copies per forward pass.
        names: how errors name each sequence (e.g. its file and record); default its index.

    Raises:
        ValueError: naming a sequence the tokenizer cannot read, or one longer than the
            model's ``max_length`` (it would be scored cut short).
    """
    names = names if names is not None else [f"sequence {n}" for n in range(len(sequences))]
    advice = "leave it out, or split it into pieces that fit"
    _, batch = _prepared(module, sequences, batch_size, names, advice)
    jobs = [(row, col) for row, col in batch["maskable"].nonzero().tolist()]
    truth = batch["input_ids"][batch["maskable"]]  # (J,) true token of each job
    picked, offset = [], 0
    with evaluating(module):
        for log_probs in masked_log_probs(module, batch, jobs, batch_size):  # (n, V)
            n = log_probs.shape[0]
            picked.append(log_probs.gather(1, truth[offset : offset + n, None]).squeeze(1))
            offset += n
    rows = batch["maskable"].nonzero()[:, 0]  # (J,) sequence of each job
    totals = torch.zeros(len(sequences), device=truth.device).index_add_(0, rows, torch.cat(picked))
    lengths = batch["maskable"].sum(dim=1).tolist()
    return [SequenceScore(float(t), int(n)) for t, n in zip(totals.tolist(), lengths, strict=True)]


@dataclass(frozen=True)
class Mutation:
    """One substitution, ``A23G``: residue ``wild_type`` at 1-based ``position`` becomes
    ``mutant``."""

    wild_type: str
    position: int
    mutant: str


def parse_mutations(text: str) -> list[Mutation]:
    """The substitutions of ``A23G`` or of a multi-mutant ``A23G:K45R``.

    Raises:
        ValueError: naming the part that is not ``<residue><position><residue>``, or a
            position substituted twice (``A4G:A4C``: which residue would it hold?).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"mutation {text!r}: empty; write e.g. A23G (several joined by ':')")
    mutations = []
    for part in text.strip().split(":"):
        match = _MUTATION.match(part.strip())
        if match is None or int(match.group(2)) < 1:
            raise ValueError(
                f"mutation {text!r}: {part!r} is not <wild type><1-based position><mutant>, "
                "e.g. A23G (several joined by ':')"
            )
        wild_type, position, mutant = match.groups()
        mutations.append(Mutation(wild_type.upper(), int(position), mutant.upper()))
    positions = [mutation.position for mutation in mutations]
    twice = sorted({position for position in positions if positions.count(position) > 1})
    if twice:
        raise ValueError(
            f"mutation {text!r}: position {', '.join(map(str, twice))} is substituted more than "
            "once; a multi-mutant changes each position at most once"
        )
    return mutations


def _token_id(tokenizer: DiscreteTokenizer, text: str, what: str = "") -> int:
    """The id of ``text`` when the tokenizer reads it as exactly one content token."""
    try:
        batch = tokenizer.collate([text])
    except ValueError as error:
        raise ValueError(f"{what} {text!r} cannot be read: {error}".strip()) from error
    ids = batch["input_ids"][0][batch["maskable"][0]].tolist()
    if len(ids) != 1 or ids[0] in tokenizer.special_token_ids:
        raise ValueError(f"{what} {text!r} is not one token of this model's vocabulary".strip())
    return ids[0]


@torch.no_grad()
def score_mutations(
    module: MaskedModelingModule,
    sequence: str,
    mutations: list[str],
    batch_size: int = 64,
    names: list[str] | None = None,
    wild_type_name: str = "the wild type",
) -> list[float]:
    """Masked-marginal score of each (multi-)mutant of ``sequence`` (ESM-1v): the sum over its
    substitutions of ``log p(mutant) - log p(wild type)`` at the substituted position, hidden
    in the wild-type sequence. Positions count from 1 over the sequence's tokens (residues).

    Each distinct position costs one forward row.

    Args:
        module: a discrete module.
        sequence: the wild type.
        mutations: ``A23G`` or ``A23G:K45R`` strings.
        batch_size: hidden copies per forward pass.
        names: how errors name each mutation (e.g. ``dms.csv row 4``); default its index.
        wild_type_name: how errors name the wild type (e.g. ``dms.csv row 4``).

    Raises:
        ValueError: naming a wild type longer than the model's ``max_length`` (never scored
            cut short), a malformed mutation or one that substitutes a position twice, and a
            mutation whose position lies outside the sequence or whose wild type differs from
            the sequence's residue there.
    """
    names = names if names is not None else [f"mutation {n}" for n in range(len(mutations))]
    advice = (
        "score a window of the wild type that holds the mutations and fits, with positions "
        "counted from the window's start"
    )
    tokenizer, batch = _prepared(module, [sequence], batch_size, [wild_type_name], advice)
    columns = batch["maskable"][0].nonzero().squeeze(1).tolist()  # token column of position i
    parsed = []
    for text, name in zip(mutations, names, strict=True):
        try:
            parsed.append(parse_mutations(text))
            for sub in parsed[-1]:
                _check_wild_type(tokenizer, batch, columns, text, sub)
                _token_id(tokenizer, sub.mutant, f"mutation {text!r}: the mutant")
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from error
    positions = sorted({sub.position for subs in parsed for sub in subs})
    jobs = [(0, columns[p - 1]) for p in positions]
    with evaluating(module):
        log_probs = torch.cat(list(masked_log_probs(module, batch, jobs, batch_size)))  # (P, V)
    at = {position: row for position, row in zip(positions, log_probs, strict=True)}
    return [
        sum(
            float(at[s.position][_token_id(tokenizer, s.mutant)])
            - float(at[s.position][_token_id(tokenizer, s.wild_type)])
            for s in substitutions
        )
        for substitutions in parsed
    ]


def _check_wild_type(tokenizer, batch, columns: list[int], text: str, sub: Mutation) -> None:
    if sub.position > len(columns):
        raise ValueError(
            f"mutation {text!r}: position {sub.position} lies outside the sequence "
            f"({len(columns)} residues)"
        )
    found = int(batch["input_ids"][0, columns[sub.position - 1]])
    if found != _token_id(tokenizer, sub.wild_type):
        raise ValueError(
            f"mutation {text!r}: the sequence has {tokenizer.id_to_token(found)!r} at position "
            f"{sub.position}, not {sub.wild_type!r}"
        )
