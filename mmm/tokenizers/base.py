"""The data side of a modality: decode shard samples, batch them, describe what the model needs.

A tokenizer turns raw samples read from WebDataset shards into model inputs. It runs inside
the data-loader workers, so ``collate`` should batch its work (one call into a fast tokenizer
per batch rather than one per sample). Its ``spec`` tells the model how large its embedder and
head must be, so that the model never hard-codes a vocabulary, channel count or patch size.
"""

from __future__ import annotations

import copy
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor

from mmm.data.cache import build_once

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TokenizerT = TypeVar("TokenizerT")

#: Which window of a too-long sample is kept: the first, the middle (deterministic) or a random
#: one (augmentation).
Crop = Literal["start", "center", "random"]


#: Where a modality's model can go outside mmm: a Hugging Face masked LM (``EsmForMaskedLM`` /
#: ``BertForMaskedLM``) or a timm ``VisionTransformer``.
ExportFamily = Literal["masked_lm", "vit"]


class NotSupportedError(ValueError):
    """A modality asked for something it does not do (an export family, a probe, token-level
    labels): the message names the modality and the request."""


class SampleError(ValueError):
    """A sample that cannot be used, with the shard and key that name it."""

    def __init__(self, message: str, key: str | None = None, url: str | None = None) -> None:
        where = ", ".join(
            part for part in (f"shard {url}" if url else "", f"key {key!r}" if key else "") if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.key = key
        self.url = url


def read_text_member(sample: dict[str, Any], extension: str) -> str:
    """The UTF-8 text of one member of a raw WebDataset sample.

    Raises:
        SampleError: naming the sample's shard and key when the member is missing, is not valid
            UTF-8, or holds only whitespace.
    """
    key, url = sample.get("__key__"), sample.get("__url__")
    raw = sample.get(extension)
    if raw is None:
        members = sorted(k for k in sample if not k.startswith("__"))
        raise SampleError(f"no {extension!r} member (members: {members})", key, url)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError as error:
        raise SampleError(f"{extension!r} is not valid UTF-8 ({error})", key, url) from error
    if not text.strip():
        raise SampleError(f"{extension!r} is empty", key, url)
    return text


def crop_window(
    values: Tensor, length: int, mode: Crop, generator: torch.Generator | None = None
) -> Tensor:
    """At most ``length`` entries of (..., N) along the last axis: the first, the middle, or a
    random window (drawn from torch's RNG, so crops differ every epoch yet repeat under
    ``seed_everything``; loader workers are seeded from it)."""
    excess = values.shape[-1] - length
    if excess <= 0:
        return values
    if mode == "start":
        start = 0
    elif mode == "center":
        start = excess // 2
    else:
        start = int(torch.randint(excess + 1, (1,), generator=generator))
    return values[..., start : start + length]


def leading_real_positions(
    real_units: Tensor, per_position: int, positions: int, repeat: int = 1
) -> dict[str, Tensor]:
    """``attention_mask`` and ``maskable`` (B, positions * repeat) of items whose first
    ``real_units`` (B,) units (spectrogram frames, time steps) are real and the rest padding.
    A position of ``per_position`` consecutive units is real when it holds at least one real
    unit; each is repeated ``repeat`` times (the inner axis of a time-major grid)."""
    real_positions = torch.div(real_units + per_position - 1, per_position, rounding_mode="floor")
    real = torch.arange(positions) < real_positions.unsqueeze(1)  # (B, N)
    real = real.repeat_interleave(repeat, dim=1)  # (B, N * repeat), time outer
    return {"attention_mask": real, "maskable": real.clone()}


def copy_with(tokenizer: TokenizerT, **changes: Any) -> TokenizerT:
    """A shallow copy of ``tokenizer`` with some attributes changed (its loaded vocabulary and
    transforms are shared, not rebuilt)."""
    changed = copy.copy(tokenizer)
    for name, value in changes.items():
        if not hasattr(changed, name):
            raise AttributeError(f"{type(tokenizer).__name__} has no setting {name!r}")
        setattr(changed, name, value)
    return changed


def ensure_trained(
    path: Path,
    is_saved: Callable[[Path], bool],
    train: Callable[[str], object],
    train_source: str | None,
    owner: str,
) -> None:
    """Make sure a vocabulary is saved at ``path``: unless ``is_saved(path)``, run
    ``train(train_source)``, which saves it there, once (one DDP rank trains under a file
    lock; the others wait and then load what it saved).

    Raises:
        FileNotFoundError: naming ``owner`` and ``path`` when nothing is saved there and there
            is no ``train_source`` to train from.
    """
    if not is_saved(path) and train_source is None:
        raise FileNotFoundError(f"{owner}: no tokenizer at {path} and no train_source to train one")
    build_once(path, is_built=is_saved, build=lambda: train(train_source))


@dataclass(frozen=True)
class DiscreteSpec:
    """Inputs are token ids; targets are the original ids of hidden positions.

    Attributes:
        vocab_size: number of token ids, special tokens included.
        pad_token_id: id used for padding.
        mask_token_id: id shown at hidden positions.
        max_length: longest sequence, special tokens included.
    """

    vocab_size: int
    pad_token_id: int
    mask_token_id: int
    max_length: int


@dataclass(frozen=True)
class ContinuousSpec:
    """Inputs are real-valued vectors (image patches, audio frames); targets regress them.

    Attributes:
        input_dim: length of one position's vector (e.g. ``channels * patch * patch``).
        max_length: largest number of positions in a sample.
        grid: the shape of the positions when they form a grid of any rank, row-major: (patches,)
            of a patched series, (rows, cols) of an image, (frames, rows, cols) of a video's
            tubelets; ``None`` for a plain sequence. Embedders, decoders, position codes and
            block or tube masking take the rank from it.
    """

    input_dim: int
    max_length: int
    grid: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.grid is not None:
            if not self.grid or any(size < 1 for size in self.grid):
                raise ValueError(f"ContinuousSpec: grid sizes must be >= 1, got {self.grid}")
            if math.prod(self.grid) != self.max_length:
                raise ValueError(
                    f"ContinuousSpec: grid {self.grid} holds {math.prod(self.grid)} positions, "
                    f"not max_length={self.max_length}"
                )


ModalitySpec = DiscreteSpec | ContinuousSpec


@dataclass(frozen=True)
class PatchLayout:
    """How a continuous modality's positions tile a 2-D input, as a ViT's patch embedding
    reads it (what ``mmm export`` needs to write a timm ``VisionTransformer``).

    Attributes:
        img_size: the ViT's input size (height, width).
        patch_size: one patch's size (height, width).
        in_chans: input channels.
        kernel_pattern: einops pattern from mmm's flattened patch projection (D, P) to the
            ViT's convolution kernel (D, C, ph, pw).
        kernel_axes: the sizes of the pattern's patch axes.
    """

    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int
    kernel_pattern: str
    kernel_axes: dict[str, int]


class Tokenizer(ABC):
    """Turns shard samples into batches of model inputs for one modality."""

    #: The modality's name when a module is built from this tokenizer alone (its logs read
    #: ``train/<name>/loss``; a multimodal config names its modalities itself).
    modality_name: str = "data"
    #: File extensions inside a shard sample that this tokenizer reads (e.g. ``("txt",)``).
    sample_keys: tuple[str, ...] = ()
    #: The stock family ``mmm export`` and ``init_from`` map this modality's model onto, or
    #: ``None`` when it has none (export then says it is not supported for the modality).
    export_family: ClassVar[ExportFamily | None] = None

    @property
    @abstractmethod
    def spec(self) -> ModalitySpec:
        """What the model needs to know to embed and predict this modality."""

    @property
    def discrete(self) -> bool:
        """Whether positions are token ids (``DiscreteSpec``), not real-valued vectors."""
        return isinstance(self.spec, DiscreteSpec)

    def not_supported(self, what: str) -> NotSupportedError:
        """The error for ``what`` (a request) on this modality, naming both."""
        return NotSupportedError(
            f"{what} is not supported for the {self.modality_name} modality ({type(self).__name__})"
        )

    def hf_tokenizer(self, output: Path) -> PreTrainedTokenizerBase:
        """A Hugging Face tokenizer giving this tokenizer's ids, saved to ``output`` (a
        masked-LM export). Modalities of other families refuse."""
        raise self.not_supported("a Hugging Face tokenizer (masked-LM export)")

    def patch_layout(self) -> PatchLayout:
        """How positions tile a 2-D input (a timm ViT export). Modalities without a 2-D patch
        grid refuse."""
        raise self.not_supported("a ViT patch layout (timm export)")

    @abstractmethod
    def decode_sample(self, sample: dict[str, Any]) -> Any:
        """Turn one raw WebDataset sample (``__key__``, ``__url__``, bytes per extension) into
        the item ``collate`` takes. Raises ``SampleError`` naming the sample when unusable."""

    @abstractmethod
    def collate(self, items: list[Any]) -> dict[str, Tensor]:
        """Batch decoded items into tensors, padded to the longest item of the batch.

        Every batch carries ``attention_mask`` (B, L) bool (``True`` = real position) and
        ``maskable`` (B, L) bool (``True`` = may be hidden: not padding, not special)."""

    def collate_stream(self, items: list[Any]) -> dict[str, Tensor]:
        """Batch items the loader read from shards (in its workers). ``collate`` unless the
        tokenizer packs several items into one row (``TextTokenizer(pack=True)``); fill-mask,
        embeddings, scoring and generation call ``collate``, one row per input."""
        return self.collate(items)

    def fingerprint(self) -> str:
        """A short hash of what the model's embedder and head were sized and trained for: a
        checkpoint records it, and loading refuses a tokenizer with another one (a vocabulary
        retrained in place has the same size but other ids)."""
        return _digest(type(self).__name__, repr(self.spec))

    def unit_positions(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, L) bool: the positions of a ``collate`` batch that each hold one labelled unit
        of the item (a residue, a SMILES token), in order. Token-level labels (one per unit,
        ``token_classification``) are laid on them; modalities without such units refuse.

        Raises:
            ValueError: naming the modality, when it has no units to label.
        """
        raise NotSupportedError(
            f"token-level labels are not supported for the {self.modality_name} modality "
            f"({type(self).__name__}); use a sample-level task (classification, regression)"
        )

    def blank(self, lengths: list[int | None]) -> dict[str, Tensor]:
        """A batch of items to generate whole from a sample's other modalities, one per entry
        of ``lengths`` (positions; ``None``: as many as the modality holds): every position
        real and maskable, with nothing in it (zero vectors). Discrete tokenizers write mask
        tokens instead (``DiscreteTokenizer.blank``).

        Raises:
            ValueError: naming a length beyond ``spec.max_length``.
        """
        spec = self.spec
        sizes = [spec.max_length if n is None else n for n in lengths]
        if any(not 0 < n <= spec.max_length for n in sizes):
            raise ValueError(
                f"{type(self).__name__}: lengths {sizes} must lie in 1..{spec.max_length}"
            )
        longest = max(sizes, default=0)
        present = torch.arange(longest) < torch.tensor(sizes).unsqueeze(1)  # (B, L)
        patches = torch.zeros(len(sizes), longest, spec.input_dim)  # (B, L, P)
        return {"patches": patches, "attention_mask": present, "maskable": present.clone()}

    def for_evaluation(self) -> Tokenizer:
        """This tokenizer with random augmentation switched off, for validation, test and
        predict: held-out numbers are measured on the data, not on a random view of it, and
        two evaluations of one checkpoint agree. Tokenizers without augmentation return
        themselves."""
        return self


class DiscreteTokenizer(Tokenizer):
    """A tokenizer of token ids whose decoded items are strings (text, protein, SMILES), so
    that ``collate(list_of_strings)`` batches raw strings directly (fill-mask, embeddings)."""

    @property
    @abstractmethod
    def spec(self) -> DiscreteSpec: ...

    @property
    @abstractmethod
    def mask_token(self) -> str:
        """How a user writes a hidden position in an input string."""

    @abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """The string of one token id."""

    @property
    @abstractmethod
    def special_token_ids(self) -> frozenset[int]:
        """Ids that are never a sequence's content (padding, mask, frame and unknown tokens):
        generation never samples them."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """The string spelled by ``ids``, special tokens and padding dropped."""

    @abstractmethod
    def collate(self, items: list[str]) -> dict[str, Tensor]: ...

    def blank(self, lengths: list[int | None]) -> dict[str, Tensor]:
        """All-mask sequences of ``lengths`` tokens (special tokens not counted), to generate
        whole; ``fill`` positions are the mask tokens that ``collate`` kept.

        Raises:
            ValueError: for a length that is ``None`` (a discrete sequence has no one size:
                draw one, ``mmm.generation.sample_lengths``) or does not fit ``max_length``.
        """
        if any(n is None or n < 1 for n in lengths):
            raise ValueError(f"{type(self).__name__}.blank: lengths must be >= 1, got {lengths}")
        batch = self.collate([self.mask_token * n for n in lengths])
        kept = ((batch["input_ids"] == self.spec.mask_token_id) & batch["maskable"]).sum(dim=1)
        if kept.tolist() != list(lengths):
            raise ValueError(
                f"{type(self).__name__}.blank: lengths {list(lengths)} do not fit in "
                f"max_length={self.spec.max_length} tokens with the special ones"
            )
        return batch

    def content_length(self, text: str) -> int:
        """How many content tokens ``text`` holds before ``max_length`` cuts it (special
        tokens not counted): scoring refuses a sequence that ``collate`` would cut short."""
        raise NotImplementedError(f"{type(self).__name__} does not count untruncated tokens")

    def fingerprint(self) -> str:
        """A short hash of the vocabulary: every id's token, in order."""
        tokens = (self.id_to_token(i) for i in range(self.spec.vocab_size))
        return _digest(type(self).__name__, *tokens)


def untruncated_length(encoding: Any) -> int:
    """The real tokens of a Rust ``tokenizers.Encoding`` and of the pieces its truncation cut
    off (``overflowing``, a flat list), padding not counted."""
    pieces = [encoding, *encoding.overflowing]
    return sum(sum(piece.attention_mask) for piece in pieces)


def _digest(*parts: str) -> str:
    return hashlib.blake2b("\x00".join(parts).encode("utf-8"), digest_size=8).hexdigest()
