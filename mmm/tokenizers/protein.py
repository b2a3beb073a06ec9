"""Proteins: ESM's residue alphabet and random cropping of long sequences.

One token per residue, as in ESM-1b/ESM-2: ``<cls> M K T ... <eos>``. Ids 0-32 are ESM-2's
(``esm.Alphabet.from_architecture("ESM-1b")``), so token ids, and tables indexed by them, carry
over between ESM and mmm; ``J`` (Leu or Ile), which ESM lacks, is appended as id 33. Sequences
are cleaned as FASTA records are (``mmm.data.formats.protein.clean_residues``: any case,
whitespace and line breaks ignored, a trailing stop ``*`` dropped). Encoding looks every byte of
a sequence up in one numpy table rather than looping over residues in Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import torch
from torch import Tensor

from mmm.checks import require_at_least, require_one_of
from mmm.data.formats.protein import MASK, RESIDUES, OnUnknown, clean_residues

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from mmm.data.members import PROTEIN_MEMBER
from mmm.tokenizers.base import (
    Crop,
    DiscreteSpec,
    DiscreteTokenizer,
    SampleError,
    copy_with,
    crop_window,
    read_text_member,
)

CLS, PAD, EOS, UNK = "<cls>", "<pad>", "<eos>", "<unk>"
#: ESM's residue tokens in its id order: every code of ``RESIDUES`` but J, which ESM lacks.
ESM_RESIDUES = RESIDUES.removesuffix("J")
#: The vocabulary in id order: ESM-2's 33 tokens (``<null_1>`` only pads ESM's table to a
#: multiple of 8 and is never produced), then ``J``.
TOKENS: tuple[str, ...] = (CLS, PAD, EOS, UNK, *ESM_RESIDUES, "<null_1>", MASK, "J")
TOKEN_IDS: dict[str, int] = {token: index for index, token in enumerate(TOKENS)}


def _byte_table() -> np.ndarray:
    """Byte -> token id (``-1``: not a residue), upper and lower case alike."""
    table = np.full(256, -1, dtype=np.int64)
    for residue in RESIDUES:
        table[ord(residue)] = table[ord(residue.lower())] = TOKEN_IDS[residue]
    return table


_BYTE_TO_ID = _byte_table()
_ID_TO_TOKEN = np.array(TOKENS, dtype=object)
_SKIPPED_IN_DECODE = np.array([TOKEN_IDS[t] for t in (CLS, PAD, EOS, "<null_1>")])


def encode_residues(text: str, name: str = "sequence", on_unknown: OnUnknown = "error") -> Tensor:
    """Token ids of the residues of ``text``, without ``<cls>``/``<eos>``.

    ``text`` is cleaned first (``clean_residues``: case ignored, whitespace and line breaks
    dropped, trailing ``*`` stripped); ``<mask>`` (any case) is one masked position.

    Args:
        text: a raw sequence, e.g. the lines of a FASTA record.
        name: what the sequence is called in errors (a record ID, a sample key).
        on_unknown: ``error`` raises on a character outside the alphabet; ``x`` reads it as
            ``X`` (any residue).

    Returns:
        (L,) long ids.

    Raises:
        ValueError: naming ``name``, the character and its 1-based residue position.
    """
    pieces = clean_residues(text, name=name, on_unknown=on_unknown).split(MASK)
    parts = [_BYTE_TO_ID[np.frombuffer(piece.encode("ascii"), np.uint8)] for piece in pieces]
    chunks = parts[:1]
    for part in parts[1:]:  # one mask id between consecutive pieces
        chunks += [np.array([TOKEN_IDS[MASK]]), part]
    return torch.from_numpy(np.concatenate(chunks))  # (L,)


def decode_residues(ids: Tensor) -> str:
    """The sequence string of token ids: residues in upper case, ``<mask>``/``<unk>`` spelled
    out, ``<cls>``, ``<eos>`` and padding dropped. Inverse of ``encode_residues`` on valid
    input."""
    ids = np.asarray(ids.cpu() if isinstance(ids, Tensor) else ids)
    kept = ids[~np.isin(ids, _SKIPPED_IN_DECODE)]
    return "".join(_ID_TO_TOKEN[kept].tolist())


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class ProteinTokenizer(DiscreteTokenizer):
    """Protein sequences, one token per residue with ESM's alphabet: ``<cls> residues <eos>``.

    Args:
        max_length: longest sequence in tokens, ``<cls>`` and ``<eos>`` included (ESM-2:
            1024). Longer proteins read from shards are cropped to a window of
            ``max_length - 2`` residues; strings passed to ``collate`` directly (fill-mask,
            embeddings) keep their first ``max_length - 2`` residues.
        on_unknown: ``error`` rejects a sequence holding a character outside the alphabet
            (naming record and position); ``x`` reads such characters as ``X``.
        crop: which window of a longer protein is kept: ``random`` (a new one each epoch,
            as ESM trains; evaluation takes the middle one instead), ``center`` or ``start``.
    """

    modality_name = "protein"
    sample_keys = (PROTEIN_MEMBER,)
    export_family = "masked_lm"

    def __init__(
        self, max_length: int = 1024, on_unknown: OnUnknown = "error", crop: Crop = "random"
    ) -> None:
        require_at_least("ProteinTokenizer", 3, max_length=max_length)
        require_one_of("ProteinTokenizer", "on_unknown", on_unknown, get_args(OnUnknown))
        require_one_of("ProteinTokenizer", "crop", crop, get_args(Crop))
        self.max_length = max_length
        self.on_unknown = on_unknown
        self.crop = crop

    def hf_tokenizer(self, output: Path) -> PreTrainedTokenizerBase:
        """ESM-2's tokenizer over ``output/vocab.txt``: ids 0-32 are ESM-2's, J is 33."""
        from transformers import EsmTokenizer

        vocab = output / "vocab.txt"
        vocab.write_text("\n".join(TOKENS) + "\n")
        return EsmTokenizer(vocab_file=str(vocab), model_max_length=self.max_length)

    def for_evaluation(self) -> ProteinTokenizer:
        """The same alphabet with the middle window of long proteins instead of a random one."""
        return self if self.crop != "random" else copy_with(self, crop="center")

    @property
    def spec(self) -> DiscreteSpec:
        return DiscreteSpec(
            vocab_size=len(TOKENS),
            pad_token_id=TOKEN_IDS[PAD],
            mask_token_id=TOKEN_IDS[MASK],
            max_length=self.max_length,
        )

    @property
    def mask_token(self) -> str:
        return MASK

    def id_to_token(self, token_id: int) -> str:
        return TOKENS[token_id]

    @property
    def special_token_ids(self) -> frozenset[int]:
        return frozenset(TOKEN_IDS[t] for t in (CLS, PAD, EOS, UNK, MASK, "<null_1>"))

    def encode(self, text: str, name: str = "sequence") -> Tensor:
        """Residue ids of ``text`` (see ``encode_residues``), (L,) long."""
        return encode_residues(text, name=name, on_unknown=self.on_unknown)

    def content_length(self, text: str) -> int:
        """Residues of ``text`` (one token each)."""
        return len(self.encode(text))

    def decode(self, ids: Tensor | list[int]) -> str:
        """The residue string of ``ids``, special tokens and padding dropped."""
        return decode_residues(ids)

    def decode_sample(self, sample: dict[str, Any]) -> str:
        """The cleaned residues of a sample's ``seq`` member, cropped to fit (``crop``)."""
        key, url = sample.get("__key__"), sample.get("__url__")
        text = read_text_member(sample, PROTEIN_MEMBER)
        try:
            ids = self.encode(text, "'seq'")
        except ValueError as error:
            raise SampleError(str(error), key, url) from error
        if ids.numel() == 0:
            raise SampleError("'seq' holds no residue", key, url)
        return self.decode(crop_window(ids, self.max_length - 2, self.crop))

    def unit_positions(self, batch: dict[str, Tensor]) -> Tensor:
        """The residue positions (every position but ``<cls>``, ``<eos>`` and padding): one
        token-level label per residue."""
        return batch["maskable"]

    def collate(self, items: list[str]) -> dict[str, Tensor]:
        """Encode and pad a batch: ``<cls> residues <eos> <pad>...``, the width rounded up to a
        multiple of 8 (tensor cores) within ``max_length``.

        Returns:
            ``input_ids`` (B, L) long, ``attention_mask`` (B, L) bool, and ``maskable`` (B, L)
            bool (residue positions only).
        """
        residues = [
            self.encode(item, name=f"sequence {index}")[: self.max_length - 2]
            for index, item in enumerate(items)
        ]
        lengths = torch.tensor([len(r) for r in residues], dtype=torch.long)  # (B,)
        width = min(_round_up(int(lengths.max()) + 2, 8), self.max_length)
        batch = len(items)
        input_ids = torch.full((batch, width), TOKEN_IDS[PAD], dtype=torch.long)
        # Scatter all residues at once: row of each residue, column = 1 + its index in the row.
        rows = torch.repeat_interleave(torch.arange(batch), lengths)  # (N,)
        starts = torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)  # (N,)
        cols = torch.arange(rows.shape[0]) - starts + 1  # (N,)
        input_ids[rows, cols] = torch.cat(residues)
        input_ids[:, 0] = TOKEN_IDS[CLS]
        input_ids[torch.arange(batch), lengths + 1] = TOKEN_IDS[EOS]
        positions = torch.arange(width)  # (L,)
        attention_mask = positions < (lengths + 2).unsqueeze(1)  # (B, L)
        maskable = (positions >= 1) & (positions <= lengths.unsqueeze(1))  # (B, L)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "maskable": maskable}

    def __repr__(self) -> str:
        return (
            f"ProteinTokenizer(max_length={self.max_length}, on_unknown={self.on_unknown!r}, "
            f"crop={self.crop!r})"
        )
