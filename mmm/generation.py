"""Generate and infill sequences with a masked model: iterative unmasking from all-mask input.

Any discrete mmm checkpoint is a sampler, whether trained with masked diffusion
(``DiffusionMasking``) or BERT-style: start from mask tokens at the positions to fill and
unmask them over ``steps`` steps, following a noise schedule from t = 1 (all hidden) to t = 0.

- ``ancestral`` (MDLM's sampler): going from t to s < t, each hidden position is revealed with
  probability ``(alpha(s) - alpha(t)) / (1 - alpha(t))``, its token drawn from the model's
  prediction given the current sequence; revealed tokens never change again.
- ``maskgit`` (confidence-ordered, Chang et al. 2022): every step draws a candidate for every
  hidden position and keeps the most confident ones (highest probability of the drawn token),
  leaving ``mask_probability(s)`` of the initially hidden positions hidden.
- ``remdm`` (ReMDM, Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time
  Scaling"): ancestral sampling in which a revealed token is hidden again with probability
  ``sigma_t`` at each step, so that an early mistake can be redrawn; hidden positions are
  revealed with probability ``(alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t)``, which keeps
  the schedule's share of hidden tokens. ``sigma_t`` is at most
  ``sigma_max = min(1, (1 - alpha_s) / alpha_t)``; ``remask="cap"`` uses
  ``min(eta, sigma_max)``, ``remask="rescale"`` uses ``eta * sigma_max``. With ``eta = 0`` it
  is ``ancestral``. Remasking trades steps for quality: it pays off with more steps.

The model takes no time input (MDLM), so its prediction for a sequence changes only when a token
of it changes: a forward pass runs only for the sequences that reveal something at that step
(MDLM's ``ddpm_cache``). With many steps and short sequences most steps reveal nothing.
Positions that are not hidden in the input (an infill template's fixed tokens) are never
touched, not even by ReMDM's remasking.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from mmm.checks import require_at_least, require_one_of
from mmm.masking import NOISE_SCHEDULES, DiffusionMasking, NoiseSchedule, ScheduleName
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import DiscreteTokenizer

Sampler = Literal["ancestral", "maskgit", "remdm"]
RemaskSchedule = Literal["cap", "rescale"]
SAMPLERS = ("ancestral", "maskgit", "remdm")


@dataclass(frozen=True)
class SamplingSettings:
    """How masked positions are filled in."""

    steps: int = 64
    """Unmasking steps from all-hidden to none hidden."""
    sampler: Sampler = "ancestral"
    """``ancestral`` (MDLM), ``maskgit`` (confidence-ordered unmasking) or ``remdm``
    (ancestral with remasking of revealed tokens, ReMDM)."""
    temperature: float = 1.0
    """Divides the logits before sampling; below 1 sharpens the distribution."""
    top_k: int | None = None
    """Sample among the ``top_k`` most likely tokens only."""
    top_p: float | None = None
    """Sample from the smallest set of tokens whose probability reaches ``top_p`` (nucleus)."""
    schedule: ScheduleName | None = None
    """Noise schedule of the unmasking; ``None``: the checkpoint's diffusion schedule, or
    ``linear`` for a BERT-style checkpoint."""
    cache: bool = True
    """Ancestral sampler: run the model only for sequences that reveal a token at a step (the
    samples are the same; ``False`` runs it for every sequence at every step, for timing the
    saving). MaskGIT reveals something in every row at every step, so it always runs."""
    remask: RemaskSchedule = "cap"
    """ReMDM: hide a revealed token again with probability ``min(eta, sigma_max)`` (``cap``)
    or ``eta * sigma_max`` (``rescale``), ``sigma_max`` being the most the schedule allows."""
    eta: float = 0.02
    """ReMDM: the remasking strength (``cap``: a probability; ``rescale``: a share of
    ``sigma_max``), in [0, 1]; 0 is plain ancestral sampling."""

    def __post_init__(self) -> None:
        require_at_least("SamplingSettings", 1, steps=self.steps, top_k=self.top_k)
        require_one_of("SamplingSettings", "sampler", self.sampler, SAMPLERS)
        require_one_of("SamplingSettings", "remask", self.remask, ("cap", "rescale"))
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"SamplingSettings: eta must lie in [0, 1], got {self.eta}")
        if self.temperature <= 0:
            raise ValueError(f"SamplingSettings: temperature must be > 0, got {self.temperature}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingSettings: top_p must lie in (0, 1], got {self.top_p}")
        if self.schedule is not None and self.schedule not in NOISE_SCHEDULES:
            raise ValueError(
                f"SamplingSettings: schedule must be one of {sorted(NOISE_SCHEDULES)}, "
                f"got {self.schedule!r}"
            )

    def remask_probability(self, now: float, after: float) -> float:
        """ReMDM's ``sigma_t``: the probability of hiding a revealed token again going from
        hidden share ``now`` = 1 - alpha_t to ``after`` = 1 - alpha_s; 0 at the last step
        (``after`` = 0), so that the output has no hidden token."""
        if self.sampler != "remdm":
            return 0.0
        alpha_now = 1.0 - now
        sigma_max = 1.0 if alpha_now <= 0.0 else min(1.0, after / alpha_now)
        return min(self.eta, sigma_max) if self.remask == "cap" else self.eta * sigma_max

    def noise(self, module: MaskedModelingModule, name: str | None = None) -> NoiseSchedule:
        """The schedule to unmask modality ``name`` (default: the only discrete one) with."""
        if self.schedule is not None:
            return NOISE_SCHEDULES[self.schedule]
        masking = module.maskings[discrete_modality(module, "sampling", name)[0]]
        return masking.noise if isinstance(masking, DiffusionMasking) else NOISE_SCHEDULES["linear"]


# ------------------------------------------------------------------------------- templates
def expand_template(template: str, mask_token: str) -> str:
    """``template`` with every ``<mask>x12`` (or ``<mask>×12``) written out as 12 mask tokens,
    so that long masked spans are easy to type: ``MKT<mask>x12GLS``."""
    pattern = re.compile(re.escape(mask_token) + r"[x×](\d+)")
    return pattern.sub(lambda match: mask_token * int(match.group(1)), template)


@contextmanager
def evaluating(module: MaskedModelingModule) -> Iterator[MaskedModelingModule]:
    """``module`` in eval mode (no dropout) for the block, its former mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def discrete_modality(
    module: MaskedModelingModule, what: str, name: str | None = None
) -> tuple[str, DiscreteTokenizer]:
    """The name and tokenizer of the module's discrete modality ``name`` (default: its only
    one), or a TypeError naming ``what`` needs one."""
    try:
        name = module.modality_named(name, discrete=True)
    except ValueError as error:
        raise TypeError(
            f"{what} needs one discrete modality (text, protein, SMILES): {error}"
        ) from error
    return name, module.tokenizers[name]


def encode_templates(
    tokenizer: DiscreteTokenizer, templates: list[str]
) -> tuple[dict[str, Tensor], Tensor]:
    """Batch templates whose mask tokens mark the positions to fill.

    Returns:
        The collated batch and ``fill`` (B, L) bool, the mask-token positions.

    Raises:
        ValueError: naming a template with no mask token, or one longer than the tokenizer's
            ``max_length`` (its masks would be cut off).
    """
    mask = tokenizer.mask_token
    expanded = [expand_template(template, mask) for template in templates]
    batch = tokenizer.collate(expanded)
    fill = (batch["input_ids"] == tokenizer.spec.mask_token_id) & batch["maskable"]  # (B, L)
    for index, (template, text, row) in enumerate(zip(templates, expanded, fill, strict=True)):
        wanted = text.count(mask)
        if wanted == 0:
            raise ValueError(f"template {index} ({shortened(template)}) has no {mask} to fill in")
        if int(row.sum()) != wanted:
            raise ValueError(
                f"template {index} ({shortened(template)}) does not fit in max_length="
                f"{tokenizer.spec.max_length} tokens: {int(row.sum())} of its {wanted} masks remain"
            )
    return batch, fill


def shortened(text: str, most: int = 60) -> str:
    """``repr(text)``, its middle left out when longer than ``most`` characters (a template
    of 5,000 masks must not fill the terminal)."""
    if len(text) <= most:
        return repr(text)
    half = most // 2
    return f"{text[:half]!r}...{text[-half:]!r} ({len(text)} characters)"


def most_tokens(tokenizer: DiscreteTokenizer) -> int:
    """How many tokens a generated sequence can have: the mask tokens of an all-mask
    template of ``max_length`` that survive collation (``max_length`` less the tokenizer's
    special tokens)."""
    batch = tokenizer.collate([tokenizer.mask_token * tokenizer.spec.max_length])
    return int(((batch["input_ids"] == tokenizer.spec.mask_token_id) & batch["maskable"]).sum())


# -------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class Sequences:
    """The sequences being generated and what the model reads beside them.

    Attributes:
        name: the generated (discrete) modality.
        real: (B, L) bool real positions of its rows.
        context: the other modalities of the same samples, every one present in every row
            (``mmm.conditioning``), or empty: seen at every step, never changed.
    """

    name: str
    real: Tensor
    context: dict[str, dict[str, Tensor]]

    def logits(self, module: MaskedModelingModule, ids: Tensor, rows: Tensor, positions: Tensor):
        """The model's logits at ``positions`` of rows ``rows`` (B,) bool given their ``ids``
        and context: (N, V), row-major order."""
        batch = {key: {k: v[rows] for k, v in sub.items()} for key, sub in self.context.items()}
        batch[self.name] = {"input_ids": ids[rows], "attention_mask": self.real[rows]}
        return module.predict_positions(batch, positions[rows], self.name).float()


class TokenSampler:
    """Draws tokens from logits with temperature, top-k and top-p (Hugging Face's warpers),
    never a special token."""

    def __init__(self, settings: SamplingSettings, banned: Tensor, generator: torch.Generator):
        self.banned = banned  # (V,) bool
        self.generator = generator
        self.warpers = [TemperatureLogitsWarper(settings.temperature)]
        if settings.top_k is not None:
            self.warpers.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p is not None:
            self.warpers.append(TopPLogitsWarper(settings.top_p))

    def __call__(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens (N,) drawn from ``logits`` (N, V), and each drawn token's probability."""
        scores = logits.masked_fill(self.banned, float("-inf"))
        for warp in self.warpers:
            scores = warp(None, scores)
        probs = scores.softmax(dim=-1)  # (N, V)
        if probs.shape[0] == 0:
            return probs.new_zeros(0, dtype=torch.long), probs.new_zeros(0)
        tokens = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)  # (N,)
        return tokens, probs.gather(1, tokens.unsqueeze(1)).squeeze(1)


def _ancestral_step(module, ids, rows_of, hidden, reveal_prob, sampler, cache) -> None:
    """Reveal each hidden position with probability ``reveal_prob``, in place."""
    u = torch.rand(ids.shape, device=ids.device, generator=sampler.generator)  # (B, L)
    reveal = hidden & (u < reveal_prob)
    rows = reveal.any(dim=1) if cache else hidden.any(dim=1)  # (B,) sequences to run
    if not rows.any():
        return
    queried = hidden & rows.unsqueeze(1)
    logits = rows_of.logits(module, ids, rows, queried)  # (N_queried, V)
    tokens, _ = sampler(logits[reveal[queried]])  # drawn at revealed positions only
    ids[reveal] = tokens


def _remdm_step(module, ids, rows_of, fill, hidden, now, after, settings, sampler, mask_id) -> None:
    """Hide each generated token again with probability ``sigma_t`` and reveal each hidden one
    with ReMDM's probability, in place. The model predicts from the sequence before this
    step's remasking; positions outside ``fill`` (template tokens) are never hidden."""
    sigma = settings.remask_probability(now, after)
    remask = torch.zeros_like(fill)  # (B, L); no draw when sigma is 0, so eta=0 is ancestral
    if sigma > 0:
        u = torch.rand(ids.shape, device=ids.device, generator=sampler.generator)  # (B, L)
        remask = fill & ~hidden & (u < sigma)
    # (alpha_s - (1 - sigma) alpha_t) / (1 - alpha_t), written so that sigma = 0 gives the
    # ancestral sampler's number exactly; the hidden share after the step is still ``after``
    reveal_prob = (now - after + sigma * (1.0 - now)) / max(now, 1e-12)
    reveal_prob = min(max(reveal_prob, 0.0), 1.0)
    _ancestral_step(module, ids, rows_of, hidden, reveal_prob, sampler, settings.cache)
    ids[remask] = mask_id


def _maskgit_step(module, ids, rows_of, hidden, keep_hidden, sampler) -> None:
    """Reveal the most confident hidden positions of each row until ``keep_hidden`` (B,) stay
    hidden (at least one revealed per row with hidden positions), in place."""
    count = hidden.sum(dim=1)  # (B,)
    reveal_count = torch.where(count > 0, (count - keep_hidden).clamp_min(1), 0)  # (B,)
    rows = reveal_count > 0
    if not rows.any():
        return
    queried = hidden & rows.unsqueeze(1)
    tokens, confidence = sampler(rows_of.logits(module, ids, rows, queried))
    candidates = ids.clone()
    candidates[queried] = tokens
    score = torch.full(ids.shape, float("-inf"), device=ids.device)  # (B, L)
    score[queried] = confidence
    rank = score.argsort(dim=1, descending=True).argsort(dim=1)  # (B, L) 0 = most confident
    reveal = queried & (rank < reveal_count.unsqueeze(1))
    ids[reveal] = candidates[reveal]


@torch.no_grad()
def fill_masked(
    module: MaskedModelingModule,
    batch: dict[str, Tensor],
    fill: Tensor,
    settings: SamplingSettings,
    generator: torch.Generator,
    progress: tqdm | None = None,
    name: str | None = None,
    context: dict[str, dict[str, Tensor]] | None = None,
) -> Tensor:
    """Fill the ``fill`` positions of a batch by iterative unmasking.

    Args:
        module: a discrete module, in eval mode.
        batch: ``input_ids`` (B, L) with the mask token at ``fill`` positions, and
            ``attention_mask`` (B, L).
        fill: (B, L) bool positions to generate; every other position is left as it is.
        settings: sampler, steps, temperature, top-k/top-p, schedule.
        generator: RNG on the module's device (reproducible samples).
        progress: a bar advanced once per step.
        name: the discrete modality generated (default: the module's only one).
        context: the other modalities of the same samples (modality -> sub-batch, every row
            present), seen at every step and never changed: conditioned generation.

    Returns:
        (B, L) long ids with every ``fill`` position holding a generated (non-special) token.
    """
    name, tokenizer = discrete_modality(module, "sampling", name)
    spec = tokenizer.spec
    device = batch["input_ids"].device
    banned = torch.zeros(spec.vocab_size, dtype=torch.bool, device=device)
    banned[list(tokenizer.special_token_ids)] = True
    sampler = TokenSampler(settings, banned, generator)
    ids = batch["input_ids"].clone()
    rows_of = Sequences(name, batch["attention_mask"], context or {})
    times = torch.linspace(1.0, 0.0, settings.steps + 1, dtype=torch.float64)  # (T + 1,)
    hidden_share = settings.noise(module, name).mask_probability(times).tolist()  # 0 at t = 0
    initial = fill.sum(dim=1)  # (B,)
    for step in range(settings.steps):
        hidden = fill & (ids == spec.mask_token_id)  # (B, L) still to generate
        now, after = hidden_share[step], hidden_share[step + 1]
        if settings.sampler == "ancestral":
            reveal_prob = min(max((now - after) / max(now, 1e-12), 0.0), 1.0)
            _ancestral_step(module, ids, rows_of, hidden, reveal_prob, sampler, settings.cache)
        elif settings.sampler == "remdm":
            mask_id = spec.mask_token_id
            _remdm_step(module, ids, rows_of, fill, hidden, now, after, settings, sampler, mask_id)
        else:
            keep_hidden = torch.floor(initial * after).long()  # (B,)
            _maskgit_step(module, ids, rows_of, hidden, keep_hidden, sampler)
        if progress is not None:
            progress.update(1)
    return ids


def decode_rows(tokenizer: DiscreteTokenizer, ids: Tensor, real: Tensor) -> list[str]:
    """Each row's real tokens, decoded (special tokens dropped)."""
    return [tokenizer.decode(row[keep].tolist()) for row, keep in zip(ids, real, strict=True)]


def infill(
    module: MaskedModelingModule,
    templates: list[str],
    settings: SamplingSettings | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> list[str]:
    """Fill in the mask tokens of each template; every other position is kept as written.

    Templates spell hidden positions with the tokenizer's mask token (``<mask>`` for proteins
    and SMILES, ``[MASK]`` for the WordPiece text tokenizer); ``<mask>x12`` is 12 of them:
    ``infill(module, ["MKT<mask>x12GLS"])``. See ``infill_batches`` for the arguments.

    Returns:
        The filled-in sequences, decoded, in template order.
    """
    batches = infill_batches(
        module,
        templates,
        settings,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        total=len(templates),
    )
    return [sequence for batch in batches for sequence in batch]


def infill_batches(
    module: MaskedModelingModule,
    templates: Iterable[str],
    settings: SamplingSettings | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[list[str]]:
    """Fill in templates ``batch_size`` at a time, yielding each batch's sequences as soon as
    they are sampled: templates are read from the iterable only as needed, so memory holds
    one batch, whatever the number of samples.

    Args:
        module: a trained discrete module (``load_module``).
        templates: one string per sample to produce (repeat a template for several samples).
        settings: how to sample (default: ``SamplingSettings()``, MDLM ancestral, 64 steps).
        seed: samples are the same for the same seed, settings, batch size and device.
        batch_size: sequences sampled together.
        progress: show a progress bar over steps.
        total: how many templates there are, for the progress bar (unset: unknown).

    Yields:
        The filled-in sequences of each batch, decoded, in template order.
    """
    settings = settings if settings is not None else SamplingSettings()
    tokenizer = discrete_modality(module, "infill")[1]
    if batch_size < 1:
        raise ValueError(f"infill: batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator(device=module.device).manual_seed(seed)
    steps = None if total is None else -(-total // batch_size) * settings.steps
    with (
        evaluating(module),  # fill_masked runs without gradients
        tqdm(total=steps, desc="sampling", unit=" steps", disable=not progress) as bar,
    ):
        for chunk in batched(templates, batch_size):
            batch, fill = encode_templates(tokenizer, chunk)
            batch = {k: v.to(module.device) for k, v in batch.items()}
            ids = fill_masked(module, batch, fill.to(module.device), settings, generator, bar)
            yield decode_rows(tokenizer, ids.cpu(), batch["attention_mask"].cpu())


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def sample_lengths(
    module: MaskedModelingModule,
    count: int,
    seed: int = 0,
    generator: torch.Generator | None = None,
    name: str | None = None,
) -> list[int]:
    """``count`` sequence lengths (maskable positions) drawn from the lengths the module saw
    in training (``length_counts``, saved in its checkpoint), with ``generator`` (a CPU
    generator; unset: one seeded with ``seed``); ``name``: the discrete modality (default:
    the only one).

    Raises:
        ValueError: for a module that records no training lengths (not trained, or trained
            before mmm counted them): give a length instead.
    """
    name = discrete_modality(module, "sampling lengths", name)[0]
    counts = module.modalities[name].length_counts.detach().float().cpu()
    counts[0] = 0.0  # a sample with nothing to generate is no sample
    if counts.sum() == 0:
        raise ValueError(
            "this model records no training lengths (trained before mmm counted them, or not "
            "trained): pass a length"
        )
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    return torch.multinomial(counts, count, replacement=True, generator=generator).tolist()


def generate(
    module: MaskedModelingModule,
    num_samples: int,
    length: int | None = None,
    settings: SamplingSettings | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> list[str]:
    """Sample new sequences from a masked model, starting from all-mask input; see
    ``generate_batches`` for the arguments.

    Returns:
        ``num_samples`` decoded sequences.
    """
    batches = generate_batches(module, num_samples, length, settings, seed, batch_size, progress)
    return [sequence for batch in batches for sequence in batch]


def generate_batches(
    module: MaskedModelingModule,
    num_samples: int,
    length: int | None = None,
    settings: SamplingSettings | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> Iterator[list[str]]:
    """Sample new sequences ``batch_size`` at a time, yielding each batch as soon as it is
    sampled (memory holds one batch, however many samples are asked for).

    Args:
        module: a trained discrete module (``load_module``).
        num_samples: how many sequences.
        length: tokens per sequence (residues, SMILES tokens, word pieces), special tokens not
            counted; ``None`` draws each length from the training data's lengths.
        settings: how to sample (default: MDLM ancestral, 64 steps, temperature 1).
        seed: the same seed gives the same samples (same settings, batch size and device).
        batch_size: sequences sampled together.
        progress: show a progress bar over steps.

    Yields:
        Each batch's decoded sequences, ``num_samples`` in all.

    Raises:
        ValueError: for a ``num_samples`` or ``length`` below 1, or a ``length`` longer than
            the model's positions hold.
    """
    tokenizer = discrete_modality(module, "generate")[1]
    if num_samples < 1:
        raise ValueError(f"generate: num_samples must be >= 1, got {num_samples}")
    if length is not None and length < 1:
        raise ValueError(f"generate: length must be >= 1, got {length}")
    if length is not None and length > (most := most_tokens(tokenizer)):
        raise ValueError(
            f"generate: length {length} does not fit: this model reads at most {most} tokens "
            f"besides its special ones (max_length={tokenizer.spec.max_length}); pass a length "
            f"of at most {most}"
        )
    templates = _all_mask_templates(module, num_samples, length, seed, batch_size)
    yield from infill_batches(
        module,
        templates,
        settings,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        total=num_samples,
    )


def _all_mask_templates(
    module: MaskedModelingModule, count: int, length: int | None, seed: int, batch_size: int
) -> Iterator[str]:
    """``count`` all-mask templates of ``length`` tokens, or of lengths drawn from training
    a batch at a time, made as they are read."""
    mask = discrete_modality(module, "generate")[1].mask_token
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        lengths = [length] * size if length else sample_lengths(module, size, generator=generator)
        yield from (mask * n for n in lengths)
