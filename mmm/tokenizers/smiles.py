"""SMILES: atom-level regex tokens (ChemBERTa / MoLFormer) or BPE, with optional RDKit checks.

``SmilesTokenizer`` splits a SMILES string into chemically meaningful tokens with the regular
expression of ``mmm.data.formats.smiles`` (Schwaller et al., "Molecular Transformer", 2019).
The vocabulary is built from data on first use and saved as a Hugging Face ``tokenizers`` file
(``tokenizer.json`` format), so batching runs in Rust. ``algorithm="bpe"`` trains a
character-level BPE instead (as ChemBERTa did), for comparison.

RDKit is optional (``pip install mmm[chem]``): it validates molecules, canonicalizes them, and
enumerates randomized SMILES as augmentation. Without it, samples are still checked to consist
of SMILES tokens only.

``representation`` spells each molecule to the model as SMILES, SELFIES (Krenn et al. 2020:
every string of SELFIES tokens is a molecule) or SAFE (Noutahi et al. 2024: SMILES of
fragments joined by ring-closure digits, so that a fragment is a contiguous span). Both read
their tokens with the same regex (a SELFIES token is a bracketed word), and ``decode`` turns
what the model wrote back into SMILES, so that generation always outputs SMILES.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as RustTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from mmm.data.formats.smiles import (
    SMILES_PATTERN,
    canonical_smiles,
    check_smiles_tokens,
    grammar_tokens,
    parse_smiles,
    randomized_smiles,
    require_rdkit,
    smiles_samples,
)
from mmm.data.members import SMILES_MEMBER
from mmm.data.reading import member_texts, read_source
from mmm.optional import require
from mmm.tokenizers.base import (
    DiscreteSpec,
    DiscreteTokenizer,
    SampleError,
    copy_with,
    ensure_trained,
    read_text_member,
    untruncated_length,
)

log = logging.getLogger(__name__)

SmilesAlgorithm = Literal["regex", "bpe"]
SmilesRepresentation = Literal["smiles", "selfies", "safe"]
#: The ``tokenizers`` model each algorithm builds (a saved file must match the one asked for).
_MODEL_TYPES = {"regex": models.WordLevel, "bpe": models.BPE}

#: Special tokens in id order (pad first, so that the pad id is 0); RoBERTa/ChemBERTa spelling.
PAD, UNK, BOS, EOS, MASK = "<pad>", "<unk>", "<s>", "</s>", "<mask>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, MASK]


# ------------------------------------------------------------------------ representations
@dataclass(frozen=True)
class MolecularStrings:
    """How molecules are spelled to the model, and how its strings read back as SMILES."""

    module: str | None
    """the package that converts (imported on first use); ``None``: SMILES as they are"""
    install: str
    """the command that installs it"""
    encode: Callable[[Any, str], str]
    """(module, SMILES) -> the molecule's string; raises on a molecule it cannot spell"""
    decode: Callable[[Any, str], str | None]
    """(module, string) -> SMILES, or ``None`` when the string spells no molecule"""
    grammar: tuple[str, ...] = ()
    """tokens every vocabulary built for this representation holds, seen in its corpus or
    not (SMILES and SAFE: stereo marks and the common bracket atoms, see ``grammar_tokens``)"""


def _safe_encode(safe: Any, smiles: str) -> str:
    # canonical=False follows the SMILES given, so canonicalize/randomize keep their meaning;
    # allow_empty: a molecule with no bond to cut is one fragment (else SAFE refuses a third
    # of the NCI molecules)
    return safe.encode(smiles, canonical=False, allow_empty=True)


def _safe_decode(safe: Any, text: str) -> str | None:
    return safe.decode(text, ignore_errors=True)


def _selfies_encode(selfies: Any, smiles: str) -> str:
    return selfies.encoder(smiles, strict=True)


def _selfies_decode(selfies: Any, text: str) -> str | None:
    return selfies.decoder(text) or None


def _unchanged(module: Any, text: str) -> str:
    return text


REPRESENTATIONS: dict[str, MolecularStrings] = {
    "smiles": MolecularStrings(
        None, "", encode=_unchanged, decode=_unchanged, grammar=grammar_tokens()
    ),
    "selfies": MolecularStrings(
        "selfies", "pip install selfies", encode=_selfies_encode, decode=_selfies_decode
    ),
    "safe": MolecularStrings(  # SMILES tokens, fragments joined by ring-closure digits
        "safe",
        "pip install safe-mol",
        encode=_safe_encode,
        decode=_safe_decode,
        grammar=grammar_tokens(),
    ),
}


# -------------------------------------------------------------------------------- vocabulary
def iter_training_smiles(source: str) -> Iterator[str]:
    """SMILES to build a vocabulary from: the ``smi`` members of an embedded corpus
    (``smiles-nci-wehi``) or of shards, or the molecules of ``.smi``/``.csv`` files (column
    ``smiles``), named by a glob or brace pattern (see ``mmm.data.reading.read_source``).
    Undecodable bytes read as U+FFFD, which the token check rejects."""
    samples = read_source(source, read_files=smiles_samples)
    return (smiles.strip() for smiles in member_texts(samples, SMILES_MEMBER, errors="replace"))


def build_smiles_tokenizer(
    smiles: Iterator[str],
    algorithm: SmilesAlgorithm = "regex",
    vocab_size: int = 1000,
    min_frequency: int = 1,
    grammar: tuple[str, ...] = (),
) -> RustTokenizer:
    """Build a vocabulary from ``smiles``: every regex token seen ``min_frequency`` times
    (``regex``), or ``vocab_size`` character-level BPE merges over whole SMILES (``bpe``).
    The vocabulary holds the ``grammar`` tokens (regex: each counted ``min_frequency`` times
    on top of the corpus, within ``vocab_size``, which the most frequent fill first) or their
    characters (BPE: its initial alphabet), whether or not the corpus spells them.
    Special tokens take ids 0-4 and frame each sequence as ``<s> ... </s>``."""
    if algorithm == "regex":
        tokenizer = RustTokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(SMILES_PATTERN), behavior="isolated")
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
        )
        seeds = grammar * max(min_frequency, 1)  # each token a "molecule" of its own
    elif algorithm == "bpe":
        tokenizer = RustTokenizer(models.BPE(unk_token=UNK))  # a whole SMILES is one "word"
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=sorted(set("".join(grammar))),
        )
        seeds = ()  # characters only: whole grammar tokens would seed merges
    else:
        raise ValueError(f"algorithm must be 'regex' or 'bpe', got {algorithm!r}")
    tokenizer.decoder = decoders.Fuse()  # SMILES tokens join with no separator
    tokenizer.train_from_iterator(chain(smiles, seeds), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, tokenizer.token_to_id(BOS)), (EOS, tokenizer.token_to_id(EOS))],
    )
    return tokenizer


class SmilesTokenizer(DiscreteTokenizer):
    """Molecules as SMILES strings, read from the ``smi`` member of shard samples.

    Args:
        path: a local ``tokenizers`` JSON file. If missing and ``train_source`` is set, a
            vocabulary is built there on first use (one DDP rank builds, the others wait).
        train_source: what to build the vocabulary from: an embedded corpus name, or a
            glob/brace pattern of shards or ``.smi``/``.csv`` files.
        algorithm: ``regex`` (atom-level tokens) or ``bpe`` (character-level BPE), when building.
        vocab_size: largest vocabulary when building (the regex vocabulary is usually ~100).
        min_frequency: least count of a token (regex) or merge (BPE) when building.
        max_length: longest sequence in tokens, ``<s>`` and ``</s>`` included; longer
            molecules are truncated.
        validate: parse each molecule with RDKit and reject invalid ones (needs RDKit).
        canonicalize: feed RDKit's canonical SMILES (needs RDKit).
        randomize: feed a different random SMILES of the molecule each time a sample is drawn,
            as augmentation (needs RDKit); evaluation reads canonical SMILES instead.
        representation: spell molecules to the model as ``smiles``, ``selfies`` (needs
            ``pip install selfies``) or ``safe`` (needs ``pip install safe-mol``); data are
            read as SMILES and converted, decoded output is converted back to SMILES. Each
            needs its own vocabulary ``path``. Strings given to the model directly (fill-mask,
            infill templates, scores) are written in the representation.
    """

    modality_name = "smiles"
    sample_keys = (SMILES_MEMBER,)
    export_family = "masked_lm"

    def __init__(
        self,
        path: str = "artifacts/tokenizers/smiles-nci-wehi-regex.json",
        train_source: str | None = None,
        algorithm: SmilesAlgorithm = "regex",
        vocab_size: int = 1000,
        min_frequency: int = 1,
        max_length: int = 128,
        validate: bool = False,
        canonicalize: bool = False,
        randomize: bool = False,
        representation: SmilesRepresentation = "smiles",
    ) -> None:
        if representation not in REPRESENTATIONS:
            raise ValueError(
                f"SmilesTokenizer: representation must be one of {sorted(REPRESENTATIONS)}, "
                f"got {representation!r}"
            )
        strings = REPRESENTATIONS[representation]
        self._converter = None
        if strings.module is not None:
            self._converter = require(
                strings.module,
                feature=f"SmilesTokenizer(representation={representation!r})",
                fix=f"Install it with: {strings.install}",
            )
        self.representation = representation
        if max_length < 3:
            raise ValueError(f"SmilesTokenizer: max_length must be >= 3, got {max_length}")
        if algorithm not in _MODEL_TYPES:
            raise ValueError(
                f"SmilesTokenizer: algorithm must be one of {sorted(_MODEL_TYPES)}, got {algorithm!r}"
            )
        if canonicalize and randomize:
            raise ValueError("SmilesTokenizer: choose canonicalize or randomize, not both")
        for name, wanted in (
            ("validate", validate),
            ("canonicalize", canonicalize),
            ("randomize", randomize),
        ):
            if wanted:
                require_rdkit(f"SmilesTokenizer({name}=True)")
        self.path = path
        self.max_length = max_length
        self.validate = validate
        self.canonicalize = canonicalize
        self.randomize = randomize
        self.rust = self._load_or_build(
            Path(path), train_source, algorithm, vocab_size, min_frequency
        )
        self.rust.enable_truncation(max_length)
        self.rust.enable_padding(
            pad_id=self.rust.token_to_id(PAD), pad_token=PAD, pad_to_multiple_of=8
        )

    def hf_tokenizer(self, output: Path) -> PreTrainedTokenizerBase:
        """A ``PreTrainedTokenizerFast`` over mmm's SMILES vocabulary (the same regex
        pre-tokenization), padding and truncation left to each call as Hugging Face does."""
        from transformers import PreTrainedTokenizerFast

        rust = copy.deepcopy(self.rust)
        rust.no_padding()  # mmm pads to a multiple of 8; Hugging Face pads per call
        rust.no_truncation()
        return PreTrainedTokenizerFast(
            tokenizer_object=rust,
            bos_token=BOS,
            eos_token=EOS,
            pad_token=PAD,
            unk_token=UNK,
            mask_token=MASK,
            model_max_length=self.max_length,
        )

    def _load_or_build(
        self,
        path: Path,
        train_source: str | None,
        algorithm: SmilesAlgorithm,
        vocab_size: int,
        min_frequency: int,
    ) -> RustTokenizer:
        def build(source: str) -> None:
            smiles = (s for s in map(self._usable, iter_training_smiles(source)) if s)
            grammar = REPRESENTATIONS[self.representation].grammar
            tokenizer = build_smiles_tokenizer(
                smiles, algorithm, vocab_size, min_frequency, grammar
            )
            tokenizer.save(str(path))

        ensure_trained(path, Path.is_file, build, train_source, owner="SmilesTokenizer")
        tokenizer = RustTokenizer.from_file(str(path))
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"SmilesTokenizer: the tokenizer at {path} lacks tokens {missing}")
        if not isinstance(tokenizer.model, _MODEL_TYPES[algorithm]):
            raise ValueError(
                f"SmilesTokenizer: {path} holds a {type(tokenizer.model).__name__} vocabulary, "
                f"not one of algorithm={algorithm!r}; set the matching algorithm or another path"
            )
        if algorithm == "regex":
            self._warn_if_stale(tokenizer, path)
        return tokenizer

    def _warn_if_stale(self, tokenizer: RustTokenizer, path: Path) -> None:
        """Warn when a saved atom-level vocabulary lacks grammar tokens: it was built before
        vocabularies held them (or by other code), and molecules with them will be skipped."""
        grammar = REPRESENTATIONS[self.representation].grammar
        lacking = [token for token in grammar if tokenizer.token_to_id(token) is None]
        if lacking:
            log.warning(
                "SmilesTokenizer: the vocabulary at %s lacks %d tokens of the SMILES grammar "
                "(%s ...): molecules holding them will be skipped as out-of-vocabulary. Delete "
                "the file to rebuild it with them.",
                path,
                len(lacking),
                " ".join(lacking[:5]),
            )

    def _usable(self, smiles: str) -> str | None:
        """``smiles`` as the model will see it, or ``None`` when invalid (for vocabulary
        building, so that the vocabulary covers canonical or randomized spellings)."""
        try:
            return self.prepare(smiles)
        except ValueError:
            return None

    def prepare(self, smiles: str) -> str:
        """Check ``smiles``, apply the configured RDKit validation/canonicalization/
        randomization, and spell it in the tokenizer's representation. Raises ``ValueError``
        saying what is wrong."""
        check_smiles_tokens(smiles)
        if self.randomize:
            smiles = randomized_smiles(smiles)
        elif self.canonicalize:
            smiles = canonical_smiles(smiles)
        elif self.validate:
            parse_smiles(smiles)
        return self.spell(smiles)

    def spell(self, smiles: str) -> str:
        """``smiles`` in the tokenizer's representation.

        Raises:
            ValueError: when the converter cannot spell the molecule (SELFIES refuses some
                valences; its reason is named).
        """
        strings = REPRESENTATIONS[self.representation]
        try:
            return strings.encode(self._converter, smiles)
        except Exception as error:  # the converters raise their own error types
            raise ValueError(
                f"cannot write {smiles!r} as {self.representation}: {type(error).__name__}: {error}"
            ) from error

    def to_smiles(self, text: str) -> str:
        """SMILES of a string in the tokenizer's representation; ``""`` when it spells no
        molecule (a SAFE string whose fragments do not join), which MOSES counts invalid."""
        strings = REPRESENTATIONS[self.representation]
        try:
            smiles = strings.decode(self._converter, text)
        except Exception as error:  # the converters raise their own error types
            log.debug("%r spells no molecule as %s: %s", text, self.representation, error)
            return ""
        return smiles or ""

    @property
    def spec(self) -> DiscreteSpec:
        return DiscreteSpec(
            vocab_size=self.rust.get_vocab_size(with_added_tokens=True),
            pad_token_id=self.rust.token_to_id(PAD),
            mask_token_id=self.rust.token_to_id(MASK),
            max_length=self.max_length,
        )

    def for_evaluation(self) -> SmilesTokenizer:
        """The same vocabulary with canonical SMILES instead of randomized ones (RDKit is
        installed whenever ``randomize`` is on)."""
        return copy_with(self, randomize=False, canonicalize=True) if self.randomize else self

    def decode_sample(self, sample: dict[str, Any]) -> str:
        smiles = read_text_member(sample, SMILES_MEMBER).strip()
        key, url = sample.get("__key__"), sample.get("__url__")
        try:
            prepared = self.prepare(smiles)
        except ValueError as error:
            raise SampleError(f"invalid SMILES: {error}", key, url) from error
        unknown = self.unknown_tokens(prepared)
        if unknown:
            raise SampleError(
                f"{prepared!r} holds tokens outside the vocabulary of {self.path}: {unknown} "
                "(they would all read as <unk>)",
                key,
                url,
            )
        return prepared

    def unknown_tokens(self, smiles: str) -> list[str]:
        """The pieces of ``smiles`` that the vocabulary lacks (they would become ``<unk>``)."""
        encoding = self.rust.encode(smiles)
        unk = self.rust.token_to_id(UNK)
        pieces = zip(encoding.ids, encoding.offsets, strict=True)
        return [smiles[a:b] for i, (a, b) in pieces if i == unk]

    def unit_positions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The SMILES token positions (atoms, bonds, ring digits; not ``<s>``, ``</s>`` and
        padding): one token-level label per token of the vocabulary's split."""
        return batch["maskable"]

    def collate(self, items: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize a batch in one Rust call, padded to the longest molecule rounded up to a
        multiple of 8. Strings may contain ``<mask>`` (fill-mask)."""
        encodings = self.rust.encode_batch(items)
        unk = self.rust.token_to_id(UNK)
        if any(unk in e.ids for e in encodings):  # strings given directly (fill-mask, embed)
            unknown = sorted({piece for item in items for piece in self.unknown_tokens(item)})
            log.warning("SMILES tokens outside the vocabulary read as <unk>: %s", unknown)
        fields = torch.tensor(
            [(e.ids, e.attention_mask, e.special_tokens_mask) for e in encodings], dtype=torch.long
        )  # (B, 3, L)
        input_ids, attention, special = fields.unbind(dim=1)  # 3 x (B, L)
        attention_mask = attention.bool()
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "maskable": attention_mask & ~special.bool(),
        }

    @property
    def mask_token(self) -> str:
        return MASK

    def id_to_token(self, token_id: int) -> str:
        return self.rust.id_to_token(token_id)

    @property
    def special_token_ids(self) -> frozenset[int]:
        return frozenset(self.rust.token_to_id(t) for t in SPECIAL_TOKENS)

    def content_length(self, text: str) -> int:
        return untruncated_length(self.rust.encode(text, add_special_tokens=False))

    def encode(self, smiles: str) -> list[int]:
        """Token ids of one SMILES, ``<s>`` and ``</s>`` included, without padding."""
        encoding = self.rust.encode(smiles)
        return encoding.ids[: sum(encoding.attention_mask)]  # padding is on the right

    def decode(self, ids: list[int]) -> str:
        """The SMILES spelled by ``ids`` (converted from SELFIES or SAFE), special tokens
        dropped; ``""`` for a SAFE string that spells no molecule."""
        return self.to_smiles(self.rust.decode(ids, skip_special_tokens=True))

    def __repr__(self) -> str:
        return (
            f"SmilesTokenizer(path={self.path!r}, representation={self.representation!r}, "
            f"vocab_size={self.spec.vocab_size})"
        )
