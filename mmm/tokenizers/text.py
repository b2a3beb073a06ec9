"""Text: any Hugging Face fast tokenizer, loaded from a local directory or trained locally.

``TextTokenizer(path=...)`` loads ``AutoTokenizer.from_pretrained(path)`` when ``path`` holds a
tokenizer (one you trained with ``mmm tokenizer``, or any saved Hugging Face tokenizer).
Otherwise it trains a WordPiece (BERT) or byte-level BPE (RoBERTa) tokenizer with the
``tokenizers`` library on ``train_source`` and saves it to ``path``, so the next run loads it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mmm.checks import require_at_least, require_one_of
from mmm.data.formats import text_samples
from mmm.data.members import TEXT_MEMBER
from mmm.data.reading import member_texts, read_source
from mmm.tokenizers.base import (
    DiscreteSpec,
    DiscreteTokenizer,
    ensure_trained,
    read_text_member,
    untruncated_length,
)

Algorithm = Literal["wordpiece", "bpe"]

#: How packed documents attend: to every token of their row (Hugging Face ``group_texts``) or
#: only to their own document (block-diagonal).
Attention = Literal["across", "document"]

#: Special tokens of each algorithm, in id order (pad first so that pad id is 0).
_SPECIALS: dict[str, dict[str, str]] = {
    "wordpiece": {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    },
    "bpe": {
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "cls_token": "<s>",
        "sep_token": "</s>",
        "mask_token": "<mask>",
    },
}


def _build_untrained(algorithm: Algorithm, lowercase: bool) -> RustTokenizer:
    """An empty WordPiece (BERT-style) or byte-level BPE (RoBERTa-style) pipeline."""
    specials = _SPECIALS[algorithm]
    if algorithm == "wordpiece":
        tokenizer = RustTokenizer(models.WordPiece(unk_token=specials["unk_token"]))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
    else:
        tokenizer = RustTokenizer(models.BPE(unk_token=specials["unk_token"]))
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFKC(), *([normalizers.Lowercase()] if lowercase else [])]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _trainer(algorithm: Algorithm, vocab_size: int, min_frequency: int):
    specials = list(_SPECIALS[algorithm].values())
    if algorithm == "wordpiece":
        return trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials
        )
    return trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )


def iter_training_texts(source: str) -> Iterator[str]:
    """Texts to train a tokenizer on: the ``txt`` members of an embedded corpus
    (``python-docs``) or of shards, or whole documents of ``.txt``/``.jsonl`` files, named by
    a glob or brace pattern (see ``mmm.data.reading.read_source``)."""
    documents = partial(text_samples, max_words=None)
    return member_texts(read_source(source, read_files=documents), TEXT_MEMBER)


def train_tokenizer(
    source: str,
    out_dir: str | os.PathLike,
    vocab_size: int = 8192,
    algorithm: Algorithm = "wordpiece",
    lowercase: bool = True,
    min_frequency: int = 2,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``source`` (see ``iter_training_texts``) and save it to ``out_dir``
    as a Hugging Face tokenizer directory (``AutoTokenizer.from_pretrained(out_dir)`` loads it)."""
    if algorithm not in _SPECIALS:
        raise ValueError(f"algorithm must be one of {sorted(_SPECIALS)}, got {algorithm!r}")
    tokenizer = _build_untrained(algorithm, lowercase)
    tokenizer.train_from_iterator(
        iter_training_texts(source), trainer=_trainer(algorithm, vocab_size, min_frequency)
    )
    specials = _SPECIALS[algorithm]
    cls, sep = specials["cls_token"], specials["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=model_max_length, **specials
    )
    wrapped.save_pretrained(str(out_dir))
    return wrapped


def _has_tokenizer_files(path: Path) -> bool:
    return (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists()


class TextTokenizer(DiscreteTokenizer):
    """Text through a Hugging Face fast tokenizer, batched in the loader workers.

    Args:
        path: a local Hugging Face tokenizer directory. If it holds no tokenizer and
            ``train_source`` is set, one is trained there on first use.
        train_source: what to train on when ``path`` is empty: an embedded corpus name, or a
            glob/brace pattern of shards or ``.txt``/``.jsonl`` files.
        vocab_size: vocabulary size when training.
        algorithm: ``wordpiece`` (BERT) or ``bpe`` (byte-level, RoBERTa) when training.
        lowercase: lowercase text before tokenizing, when training.
        max_length: longest sequence in tokens, special tokens included; longer texts are
            truncated, or cut into pieces when packing.
        pack: batches from the loader (``collate_stream``) pack their documents into rows of
            up to ``max_length`` tokens, so that no compute goes to padding (see
            ``collate_stream``). ``collate`` (fill-mask, embeddings) keeps one row per text.
        attention: with ``pack``, whether a document attends to the other documents of its
            row (``across``, as Hugging Face's ``group_texts``) or only to itself
            (``document``: block-diagonal attention through the batch's ``document_ids``).
    """

    modality_name = "text"
    sample_keys = (TEXT_MEMBER,)
    export_family = "masked_lm"

    def __init__(
        self,
        path: str = "artifacts/tokenizers/python-docs-wordpiece-8k",
        train_source: str | None = None,
        vocab_size: int = 8192,
        algorithm: Algorithm = "wordpiece",
        lowercase: bool = True,
        max_length: int = 128,
        pack: bool = False,
        attention: Attention = "document",
    ) -> None:
        require_at_least("TextTokenizer", 3, max_length=max_length)
        require_one_of("TextTokenizer", "attention", attention, get_args(Attention))
        self.path = path
        self.max_length = max_length
        self.pack = pack
        self.attention = attention
        self.hf = self._load_or_train(
            Path(path), train_source, vocab_size, algorithm, lowercase, max_length
        )
        if self.hf.mask_token_id is None or self.hf.pad_token_id is None:
            raise ValueError(
                f"TextTokenizer: the tokenizer at {path} has no mask or pad token; masked "
                "modeling needs both (set mask_token and pad_token in its tokenizer_config.json)"
            )

    def hf_tokenizer(self, output: Path) -> PreTrainedTokenizerBase:
        """mmm's own fast tokenizer (its ids are mmm's), not yet saved."""
        hf = copy.deepcopy(self.hf)
        hf.model_max_length = self.max_length
        return hf

    @staticmethod
    def _load_or_train(
        path: Path,
        train_source: str | None,
        vocab_size: int,
        algorithm: Algorithm,
        lowercase: bool,
        max_length: int,
    ) -> PreTrainedTokenizerBase:
        train = partial(
            train_tokenizer,
            out_dir=path,
            vocab_size=vocab_size,
            algorithm=algorithm,
            lowercase=lowercase,
            model_max_length=max_length,
        )
        ensure_trained(path, _has_tokenizer_files, train, train_source, owner="TextTokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        if not tokenizer.is_fast:
            raise ValueError(f"TextTokenizer: {path} is not a fast (Rust) tokenizer")
        return tokenizer

    @property
    def spec(self) -> DiscreteSpec:
        return DiscreteSpec(
            vocab_size=len(self.hf),
            pad_token_id=self.hf.pad_token_id,
            mask_token_id=self.hf.mask_token_id,
            max_length=self.max_length,
        )

    def decode_sample(self, sample: dict[str, Any]) -> str:
        return read_text_member(sample, TEXT_MEMBER)

    def content_length(self, text: str) -> int:
        # The Rust tokenizer keeps the truncation of the last call: count what it cut off too.
        encoding = self.hf.backend_tokenizer.encode(text, add_special_tokens=False)
        return untruncated_length(encoding)

    def collate(self, items: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize a batch in one call to the Rust tokenizer, one row per text, padded to the
        longest text (rounded up to a multiple of 8 for tensor cores, when ``max_length`` is
        one: rounding must never make a row longer than the position table)."""
        encoding = self.hf(
            items,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            pad_to_multiple_of=8 if self.max_length % 8 == 0 else None,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        attention_mask = encoding["attention_mask"].bool()
        # one C-level conversion: None (special, padding) becomes NaN
        words = np.array([e.word_ids for e in encoding.encodings], dtype=np.float64)  # (B, L)
        return {
            "input_ids": encoding["input_ids"],
            "attention_mask": attention_mask,
            "maskable": attention_mask & ~encoding["special_tokens_mask"].bool(),
            "word_ids": torch.from_numpy(number_words(words)),
        }

    def collate_stream(self, items: list[str]) -> dict[str, torch.Tensor]:
        """Batch the documents the loader read: ``collate``, or with ``pack`` the documents
        packed into rows of at most ``max_length`` tokens.

        Packing keeps every token of every document exactly once: a document longer than
        ``max_length`` is cut into consecutive pieces (each with its own ``[CLS]``/``[SEP]``)
        that are packed as documents of their own. Pieces go into rows first-fit, longest
        first, so a batch has fewer rows than documents unless many are long (48 documents
        of the embedded corpus make about 29 rows); rows are padded to the longest row (up to
        a multiple of 8 within ``max_length``). The batch size stays the configured number of
        documents, and packing depends on the batch alone, so the loader's resume and
        exactly-once evaluation hold as without packing.

        Returns, besides ``collate``'s keys (``word_ids`` distinct across the documents of a
        row): ``position_ids`` (R, L) long, restarting at 0 in every document, and with
        ``attention="document"`` ``document_ids`` (R, L) long, -1 at padding.
        """
        if not self.pack:
            return self.collate(items)
        encoding = self.hf(
            items,
            truncation=True,
            max_length=self.max_length,
            return_overflowing_tokens=True,  # pieces of max_length, nothing dropped
            return_special_tokens_mask=True,
        )
        pieces = encoding.encodings
        lengths = np.array([len(piece.ids) for piece in pieces])  # (P,)
        row, offset, index_in_row = pack_rows(lengths, self.max_length)
        longest = int((offset + lengths).max())
        width = min(-(-longest // 8) * 8, max(self.max_length, longest))  # a multiple of 8
        # destination of every token of the concatenated pieces
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)  # (T,)
        position = np.arange(lengths.sum()) - starts  # (T,) index within its piece
        rows = np.repeat(row, lengths)  # (T,)
        cols = np.repeat(offset, lengths) + position  # (T,)

        def scatter(values: np.ndarray, fill: float, dtype: type) -> np.ndarray:
            grid = np.full((int(row.max()) + 1, width), fill, dtype=dtype)  # (R, L)
            grid[rows, cols] = values
            return grid

        ids = np.concatenate([piece.ids for piece in pieces])  # (T,)
        special = np.concatenate([piece.special_tokens_mask for piece in pieces]).astype(bool)
        # None (special) becomes NaN in numpy's C conversion, per piece
        words = np.concatenate([np.array(piece.word_ids, dtype=np.float64) for piece in pieces])
        attention_mask = torch.from_numpy(scatter(np.ones_like(special), False, bool))
        batch = {
            "input_ids": torch.from_numpy(scatter(ids, self.hf.pad_token_id, np.int64)),
            "attention_mask": attention_mask,
            "maskable": attention_mask & ~torch.from_numpy(scatter(special, True, bool)),
            "word_ids": torch.from_numpy(number_words(scatter(words, np.nan, np.float64))),
            "position_ids": torch.from_numpy(scatter(position, 0, np.int64)),
        }
        if self.attention == "document":
            documents = np.repeat(index_in_row, lengths)
            batch["document_ids"] = torch.from_numpy(scatter(documents, -1, np.int64))
        return batch

    @property
    def mask_token(self) -> str:
        return self.hf.mask_token

    def id_to_token(self, token_id: int) -> str:
        return self.hf.convert_ids_to_tokens(token_id)

    @property
    def special_token_ids(self) -> frozenset[int]:
        return frozenset(self.hf.all_special_ids)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        packing = f", pack=True, attention={self.attention!r}" if self.pack else ""
        return f"TextTokenizer(path={self.path!r}, vocab_size={len(self.hf)}{packing})"


def number_words(words: np.ndarray) -> np.ndarray:
    """Word ids numbered 0, 1, ... along each row, from the tokenizer's per-document word
    indices.

    Args:
        words: (R, L) float, the word index of each token within its document, NaN at special
            tokens and padding (which separate the documents of a packed row).

    Returns:
        (R, L) long, -1 at special tokens and padding. A new word starts wherever the word
        index changes or follows a NaN, so words of different documents (and of two pieces of
        one long document) get distinct ids, and whole-word masking never joins them.
    """
    valid = ~np.isnan(words)  # (R, L)
    previous = np.pad(words[:, :-1], ((0, 0), (1, 0)), constant_values=np.nan)  # (R, L)
    starts = valid & (words != previous)  # NaN != anything: a word after a separator starts
    return np.where(valid, np.cumsum(starts, axis=1) - 1, -1).astype(np.int64)


def pack_rows(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-fit-decreasing bin packing of pieces into rows of ``capacity`` tokens.

    Hand-written: a loop over the batch's pieces (tens), not over tokens; no maintained
    library packs this small a problem without pulling in a solver. The order depends on the
    lengths alone (stable sort), so a batch always packs the same way.

    Args:
        lengths: (P,) tokens per piece, each at most ``capacity``.

    Returns:
        (P,) row of each piece, (P,) its first column, (P,) its index among its row's pieces.
    """
    row = np.empty(len(lengths), dtype=np.int64)
    offset = np.empty(len(lengths), dtype=np.int64)
    index_in_row = np.empty(len(lengths), dtype=np.int64)
    filled: list[int] = []  # tokens used per row
    pieces_in: list[int] = []  # pieces per row
    for piece in np.argsort(-lengths, kind="stable"):
        size = int(lengths[piece])
        target = next((r for r, used in enumerate(filled) if used + size <= capacity), None)
        if target is None:
            target = len(filled)
            filled.append(0)
            pieces_in.append(0)
        row[piece], offset[piece], index_in_row[piece] = target, filled[target], pieces_in[target]
        filled[target] += size
        pieces_in[target] += 1
    return row, offset, index_in_row
