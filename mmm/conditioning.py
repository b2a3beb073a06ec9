"""Any-to-any generation: one modality generated from a sample's others, and chains of such
steps (4M's chained generation: the output of a step is context of the next).

A multimodal checkpoint (``configs/digits_image_text.yaml``, ``configs/speech_text.yaml``)
learned to predict a modality hidden whole from the others (``drop_probability``). Generation
runs that prediction at inference time: the context modalities of each sample are shown in
full and never changed, and the target is

- a discrete modality (text): started as mask tokens and unmasked with the masked-diffusion
  samplers of ``mmm.generation`` (ancestral, MaskGIT, ReMDM), the context seen at every step;
- a continuous one (image, audio): predicted by its MAE decoder in one pass, every position
  hidden, the decoder reading the context's encoder states.

A chain is a list of ``ChainStep``: ``image:text`` writes the label word of a digit image,
then ``text:image`` draws a new image from that word alone. Each step reads only the
modalities it names as context; its output replaces any earlier value of its target. 4M
(Mizrahi et al. 2023) generates each target modality in turn the same way, conditioning on
everything generated so far; there the context of a step is every modality generated before
it, here the step names it, so that an image can be redrawn from its word alone.

    module = load_module("digits.ckpt")
    samples = context_samples(["seven.png"])
    [word, image] = generate_chain(module, samples, parse_chain("image:text,text:image"))
    word.texts        # ['seven']
    image.pictures    # (1, 1, 8, 8) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mmm.callbacks import Renderable
from mmm.generation import SamplingSettings, decode_rows, evaluating, fill_masked, sample_lengths
from mmm.masking import MaskedPositions
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import SampleError
from mmm.tokenizers.multimodal import ModalityBatch, MultimodalBatcher

#: A raw sample: member extension -> bytes (``{"png": ...}``), plus ``__key__`` naming it.
Sample = dict[str, object]


class ContextError(ValueError):
    """Context that cannot condition a generation: a file no modality of the model reads, a
    sample lacking a step's context modality, a step naming a modality the model lacks. The
    message names the file, sample or step."""


@dataclass(frozen=True)
class ChainStep:
    """One generation step: the modalities read as context and the one generated.

    Attributes:
        context: modalities shown in full (empty: the target from nothing, unconditioned).
        target: the modality generated.
    """

    context: tuple[str, ...]
    target: str

    def __post_init__(self) -> None:
        if self.target in self.context:
            raise ContextError(f"step {self}: the target {self.target!r} is also its context")

    @classmethod
    def parse(cls, text: str) -> ChainStep:
        """``image:text`` (text from the image), ``audio+image:text`` (from both) or
        ``:text`` (from nothing).

        Raises:
            ContextError: naming the text when it is not ``CONTEXT:TARGET``.
        """
        context, colon, target = text.strip().partition(":")
        if not colon or not target.strip():
            raise ContextError(
                f"chain step {text!r} is not CONTEXT:TARGET (e.g. image:text, audio+image:text "
                "or :text for no context)"
            )
        names = tuple(name.strip() for name in context.split("+") if name.strip())
        return cls(names, target.strip())

    def __str__(self) -> str:
        return f"{'+'.join(self.context)}:{self.target}"


def parse_chain(text: str) -> list[ChainStep]:
    """Steps written ``image:text,text:image``, in order."""
    return [ChainStep.parse(part) for part in text.split(",")]


@dataclass(frozen=True)
class Generated:
    """What one step generated for a batch of samples, in input order.

    Attributes:
        step: the step.
        texts: a discrete target's decoded sequences, else ``None``.
        pictures: a continuous target's values drawn by its tokenizer's ``render``,
            (B, C, H, W) in [0, 1] on the CPU, else ``None``.
    """

    step: ChainStep
    texts: list[str] | None
    pictures: Tensor | None

    def __len__(self) -> int:
        """How many samples."""
        return len(self.texts) if self.texts is not None else len(self.pictures)


# ---------------------------------------------------------------------------- context
def context_samples(paths: Sequence[str | Path]) -> list[Sample]:
    """Each file as a one-member sample keyed by its extension (``seven.png`` -> ``png``),
    named by its path.

    Raises:
        FileNotFoundError: naming a path that is no file.
    """
    samples = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no context file at {path}")
        member = path.suffix.lstrip(".").lower()
        samples.append({"__key__": str(path), member: path.read_bytes()})
    return samples


def read_context(module: MaskedModelingModule, samples: Sequence[Sample]) -> ModalityBatch:
    """The samples decoded by the module's tokenizers (without augmentation) and batched:
    modality -> sub-batch, for every modality that each sample carries; empty for samples
    that carry no member at all (generation from nothing, ``ChainStep((), target)``).

    Raises:
        ContextError: naming a sample none of whose members a modality of the model reads, or
            samples that carry different modalities (each must condition the same way).
        SampleError: naming a sample whose member its tokenizer cannot decode.
    """
    batcher = MultimodalBatcher(module.tokenizers, optional=frozenset(module.tokenizers))
    batcher = batcher.for_evaluation()
    if not any(not key.startswith("__") for sample in samples for key in sample):
        return {}
    items, kinds = [], {}
    for sample in samples:
        key = str(sample.get("__key__", f"sample {len(items)}"))
        members = sorted(k for k in sample if not k.startswith("__"))
        try:
            item = batcher.decode_sample({"__key__": key, **sample})
        except SampleError as error:
            if not any(k in sample for k in batcher.sample_keys):
                raise ContextError(
                    f"context {key}: no modality of this model reads its members {members}; "
                    f"it reads {_readers(module)}"
                ) from error
            raise
        kinds[key] = sorted(item)
        items.append(item)
    if len({tuple(names) for names in kinds.values()}) > 1:
        raise ContextError(
            f"context samples carry different modalities ({kinds}); give files of one kind per call"
        )
    return batcher.collate(items)


def _readers(module: MaskedModelingModule) -> str:
    """``image (png, jpg, ...), text (txt)``: what each modality of the module reads."""
    return ", ".join(
        f"{name} ({', '.join(tokenizer.sample_keys)})"
        for name, tokenizer in module.tokenizers.items()
    )


def _check_step(
    module: MaskedModelingModule, batch: ModalityBatch, rows: int, step: ChainStep, index: int
) -> None:
    """Refuse a step whose modalities the model lacks, or whose context is not carried by
    every one of the ``rows`` samples of the batch (after the steps before it)."""
    where = f"chain step {index} ({step})"
    for name in (*step.context, step.target):
        if name not in module.modalities:
            raise ContextError(
                f"{where}: this model has no modality {name!r}; it has {list(module.modalities)}"
            )
    for name in step.context:
        sub = batch.get(name)
        if sub is None or "rows" in sub or len(sub["attention_mask"]) != rows:
            have = sorted(batch)
            raise ContextError(
                f"{where}: the context {name!r} is not there for every sample (the samples "
                f"and earlier steps give {have})"
            )


# ------------------------------------------------------------------------- generation
@torch.no_grad()
def generate_step(
    module: MaskedModelingModule,
    batch: ModalityBatch,
    step: ChainStep,
    lengths: list[int | None],
    settings: SamplingSettings,
    generator: torch.Generator,
    progress: tqdm | None = None,
) -> dict[str, Tensor]:
    """The target's sub-batch generated for every sample of ``batch`` from the step's
    context modalities, which are shown whole and left unchanged.

    Args:
        module: a multimodal module, in eval mode, on the device of ``batch``.
        batch: modality -> sub-batch; the step's context modalities for every row.
        step: context and target.
        lengths: per sample, the target's length in positions (tokens of a discrete target,
            special ones not counted); ``None``: a continuous target's full size.
        settings: the sampler of a discrete target.
        generator: RNG on the module's device.
        progress: a bar advanced once per sampling step.

    Returns:
        The target's sub-batch (``input_ids`` of a discrete target, ``patches`` of a
        continuous one, with ``attention_mask`` and ``maskable``).
    """
    tokenizer = module.tokenizers[step.target]
    context = {name: batch[name] for name in step.context}
    blank = {k: v.to(module.device) for k, v in tokenizer.blank(lengths).items()}
    if tokenizer.discrete:  # iterative unmasking (masked diffusion)
        fill = (blank["input_ids"] == tokenizer.spec.mask_token_id) & blank["maskable"]
        ids = fill_masked(
            module, blank, fill, settings, generator, progress, name=step.target, context=context
        )
        return {**blank, "input_ids": ids}
    if progress is not None:
        progress.update(settings.steps)
    return {**blank, "patches": _decoded(module, context, step.target, blank)}


def _decoded(
    module: MaskedModelingModule,
    context: ModalityBatch,
    target: str,
    blank: dict[str, Tensor],
) -> Tensor:
    """A continuous target drawn by its MAE decoder in one pass, every position hidden and
    the context fully visible: (B, L, P)."""
    size, device = len(blank["maskable"]), module.device
    everything = torch.ones(size, dtype=torch.bool, device=device)
    hidden = MaskedPositions(blank["maskable"], everything.float(), mask_only=everything)
    shown = {name: _nothing_hidden(sub) for name, sub in context.items()}
    out = module.forward_masked({**context, target: blank}, {**shown, target: hidden})
    return module.modalities[target].generated(hidden.mask, out[target].pred)


def _nothing_hidden(sub: dict[str, Tensor]) -> MaskedPositions:
    maskable = sub["maskable"]  # (B, L)
    return MaskedPositions(
        torch.zeros_like(maskable), torch.zeros(len(maskable), device=maskable.device)
    )


def target_lengths(
    module: MaskedModelingModule,
    target: str,
    count: int,
    length: int | Sequence[int] | None,
    generator: torch.Generator,
) -> list[int | None]:
    """Per sample, the length to generate: ``length`` (one for all, or one each); unset, a
    discrete target's lengths drawn from those seen in training (``sample_lengths``) and a
    continuous target's full size (``None``)."""
    if isinstance(length, int):
        return [length] * count
    if length is not None:
        if len(length) != count:
            raise ContextError(f"{len(length)} lengths for {count} samples; give one each")
        return list(length)
    if module.tokenizers[target].discrete:
        return sample_lengths(module, count, generator=generator, name=target)
    return [None] * count


def outputs(module: MaskedModelingModule, step: ChainStep, sub: dict[str, Tensor]) -> Generated:
    """A generated sub-batch as texts (a discrete target) or pictures (a continuous one,
    drawn by its tokenizer's ``render``).

    Raises:
        NotSupportedError: naming the modality, when its tokenizer cannot draw its values.
    """
    tokenizer = module.tokenizers[step.target]
    sub = {k: v.cpu() for k, v in sub.items()}
    if tokenizer.discrete:
        texts = decode_rows(tokenizer, sub["input_ids"], sub["attention_mask"])
        return Generated(step, texts, None)
    if not isinstance(tokenizer, Renderable):
        raise tokenizer.not_supported("drawing generated values (render)")
    return Generated(step, None, tokenizer.render(sub["patches"]).float())


def generate_chain_batches(
    module: MaskedModelingModule,
    samples: Sequence[Sample],
    steps: Sequence[ChainStep],
    length: int | Sequence[int] | None = None,
    settings: SamplingSettings | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> Iterator[list[Generated]]:
    """Run the chain on ``batch_size`` samples at a time, yielding each batch's outputs (one
    ``Generated`` per step) as soon as they are made.

    Args:
        module: a multimodal module (``load_module``).
        samples: raw samples (``context_samples`` reads files into them).
        steps: the chain; a single step is conditioned generation.
        length: the length of every discrete target (tokens), one for all or one per sample;
            unset: drawn from the lengths seen in training. Continuous targets take their full
            size.
        settings: the sampler of discrete targets (default: ``SamplingSettings()``).
        seed: the same seed gives the same outputs (same settings, batch size and device).
        batch_size: samples generated together.
        progress: show a progress bar over sampling steps.

    Raises:
        ContextError: naming the step or sample whose context is missing or unreadable.
    """
    settings = settings if settings is not None else SamplingSettings()
    if not steps:
        raise ContextError("the chain has no step")
    if batch_size < 1:
        raise ValueError(f"generate_chain: batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator(device=module.device).manual_seed(seed)
    lengths_generator = torch.Generator().manual_seed(seed)
    total = -(-len(samples) // batch_size) * len(steps) * settings.steps
    with evaluating(module), tqdm(total=total, desc="generating", disable=not progress) as bar:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            batch = _on_device(read_context(module, chunk), module.device)
            results = []
            for index, step in enumerate(steps, start=1):
                _check_step(module, batch, len(chunk), step, index)
                per_sample = length[start : start + len(chunk)] if _is_list(length) else length
                lengths = target_lengths(
                    module, step.target, len(chunk), per_sample, lengths_generator
                )
                generated = generate_step(module, batch, step, lengths, settings, generator, bar)
                batch = {**batch, step.target: generated}
                results.append(outputs(module, step, generated))
            yield results


def _is_list(length: int | Sequence[int] | None) -> bool:
    return length is not None and not isinstance(length, int)


def _on_device(batch: ModalityBatch, device: torch.device) -> ModalityBatch:
    return {name: {k: v.to(device) for k, v in sub.items()} for name, sub in batch.items()}


def generate_chain(
    module: MaskedModelingModule,
    samples: Sequence[Sample],
    steps: Sequence[ChainStep],
    **options: object,
) -> list[Generated]:
    """Every step's outputs for all ``samples``, in input order; see
    ``generate_chain_batches`` for the options."""
    batches = list(generate_chain_batches(module, samples, steps, **options))
    merged = []
    for index, step in enumerate(steps):
        parts = [batch[index] for batch in batches]
        texts = None if parts[0].texts is None else [t for p in parts for t in p.texts]
        pictures = None if parts[0].pictures is None else torch.cat([p.pictures for p in parts])
        merged.append(Generated(step, texts, pictures))
    return merged


def generate_from(
    module: MaskedModelingModule,
    samples: Sequence[Sample],
    target: str,
    **options: object,
) -> Generated:
    """The ``target`` modality of each sample generated from every other modality it
    carries: one ``ChainStep``; see ``generate_chain_batches`` for the options."""
    return generate_chain(module, samples, [step_from(module, samples, target)], **options)[0]


def step_from(module: MaskedModelingModule, samples: Sequence[Sample], target: str) -> ChainStep:
    """The step that generates ``target`` from every modality the samples carry.

    Raises:
        ContextError: when there is no sample, or the samples carry the target itself.
    """
    if not samples:
        raise ContextError("no context sample given")
    carried = read_context(module, samples[:1])
    if target in carried:
        raise ContextError(
            f"context {samples[0].get('__key__')} is {target!r}, the modality to generate; "
            "give a sample of the other modalities"
        )
    return ChainStep(tuple(carried), target)
