"""SMILES: atom-level regex tokens (ChemBERTa / MoLFormer) or BPE, with optional RDKit checks.

``SmilesTokenizer`` splits a SMILES string into chemically meaningful tokens with the regular
expression of Schwaller et al. ("Molecular Transformer", 2019): bracket atoms (``[C@@H]``,
``[13CH3]``, ``[NH4+]``) stay whole, two-letter elements (``Cl``, ``Br``) are one token, and
ring closures ``%10``..``%99`` are one token. The vocabulary is built from data on first use and
saved as a Hugging Face ``tokenizers`` file (``tokenizer.json`` format), so batching runs in Rust.
``algorithm="bpe"`` trains a character-level BPE instead (as ChemBERTa did), for comparison.

RDKit is optional (``pip install mmm[chem]``): it validates molecules, canonicalizes them, and
enumerates randomized SMILES as augmentation. Without it, samples are still checked to consist
of SMILES tokens only.
"""

from __future__ import annotations

import csv
import glob
import itertools
import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import webdataset as wds
from braceexpand import braceexpand
from filelock import FileLock
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as RustTokenizer

from mmm.optional import require
from mmm.shards import SKIPPED, Sample, register_source, sample_key
from mmm.tokenizers.base import (
    DiscreteSpec,
    DiscreteTokenizer,
    SampleError,
    copy_with,
    read_text_member,
)
from mmm.tokenizers.protein import open_text

if TYPE_CHECKING:
    from rdkit.Chem import Mol

log = logging.getLogger(__name__)

SmilesAlgorithm = Literal["regex", "bpe"]
#: The ``tokenizers`` model each algorithm builds (a saved file must match the one asked for).
_MODEL_TYPES = {"regex": models.WordLevel, "bpe": models.BPE}

#: One SMILES token (Schwaller et al. 2019): a bracket atom, an organic-subset atom (two-letter
#: ``Br``/``Cl`` first), a bond, branch, dot, stereo mark, or a ring closure (``%NN`` or a digit).
SMILES_PATTERN = (
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$"
    r"|%[0-9]{2}|[0-9])"
)
_TOKEN = re.compile(SMILES_PATTERN)
_ONLY_TOKENS = re.compile(f"(?:{SMILES_PATTERN})+")

#: Special tokens in id order (pad first, so that the pad id is 0); RoBERTa/ChemBERTa spelling.
PAD, UNK, BOS, EOS, MASK = "<pad>", "<unk>", "<s>", "</s>", "<mask>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, MASK]

#: Atoms written without brackets (the organic subset, aliphatic and aromatic).
_ORGANIC_ATOMS = frozenset(
    ["B", "C", "N", "O", "P", "S", "F", "I", "Cl", "Br", "b", "c", "n", "o", "s", "p"]
)
#: The element of a bracket atom: optional isotope, then the symbol (``*`` is a wildcard atom).
_BRACKET_ELEMENT = re.compile(r"\[\d*([A-Z][a-z]?|se|as|te|[bcnops]|\*)")

_RDKIT_HINT = "Install it with: pip install mmm[chem]"


def tokenize_smiles(smiles: str) -> list[str]:
    """The atom-level tokens of ``smiles``, with one regex pass (no per-character Python)."""
    return _TOKEN.findall(smiles)


def check_smiles_tokens(smiles: str) -> None:
    """Check that ``smiles`` is a non-empty sequence of SMILES tokens (no RDKit needed).

    Raises:
        ValueError: saying which character at which position is not part of any token.
    """
    if not smiles:
        raise ValueError("empty SMILES")
    if _ONLY_TOKENS.fullmatch(smiles):
        return
    position = 0  # end of the run of tokens that covers the start of the string
    for match in _TOKEN.finditer(smiles):
        if match.start() != position:
            break
        position = match.end()
    raise ValueError(
        f"unexpected character {smiles[position]!r} at position {position} of {smiles!r}"
    )


def heavy_atom_count(smiles: str) -> int:
    """Number of non-hydrogen atoms, counted on the tokens (agrees with RDKit's
    ``GetNumHeavyAtoms`` for valid SMILES; the wildcard ``*`` is not counted)."""
    return sum(map(_is_heavy_atom, tokenize_smiles(smiles)))


def _is_heavy_atom(token: str) -> bool:
    if token in _ORGANIC_ATOMS:
        return True
    element = _BRACKET_ELEMENT.match(token)  # None unless a bracket atom
    return element is not None and element.group(1) not in ("H", "*")


# ------------------------------------------------------------------------------ RDKit helpers
def _chem() -> Any:
    """``rdkit.Chem``, or an ImportError that says how to install it."""
    return require(
        "rdkit.Chem", feature="Validating, canonicalizing or randomizing SMILES", fix=_RDKIT_HINT
    )


def require_rdkit(feature: str) -> None:
    """Fail early, naming ``feature`` and the install command, when RDKit is absent."""
    try:
        _chem()
    except ImportError as error:
        raise ImportError(
            f"{feature} needs RDKit, which is not installed: {_RDKIT_HINT}"
        ) from error


def parse_smiles(smiles: str) -> Mol:
    """An RDKit molecule from ``smiles``, sanitized.

    Raises:
        ValueError: RDKit's reason (syntax error, valence, unclosed ring, aromaticity).
    """
    chem = _chem()
    from rdkit import rdBase

    with rdBase.BlockLogs():  # RDKit prints its reasons to stderr; we raise them instead
        mol = chem.MolFromSmiles(smiles, sanitize=False)
        if mol is None:
            raise ValueError(f"RDKit cannot parse {smiles!r} (syntax error or unclosed ring)")
        problems = chem.DetectChemistryProblems(mol)
        if problems:
            reasons = "; ".join(problem.Message() for problem in problems)
            raise ValueError(f"invalid molecule {smiles!r}: {reasons}")
        chem.SanitizeMol(mol)
    return mol


def canonical_smiles(smiles: str) -> str:
    """RDKit's canonical SMILES of ``smiles`` (one spelling per molecule)."""
    return _chem().MolToSmiles(parse_smiles(smiles))


def randomized_smiles(smiles: str, seed: int | None = None) -> str:
    """A random valid SMILES of the same molecule (random atom order; Bjerrum 2017).

    ``seed`` defaults to a draw from Python's ``random``, which PyTorch seeds differently in
    each loader worker, so workers do not repeat each other.
    """
    seed = random.getrandbits(31) if seed is None else seed
    return _chem().MolToRandomSmilesVect(parse_smiles(smiles), 1, randomSeed=seed)[0]


# ------------------------------------------------------------------------------- shard reader
def _smiles_lines(path: Path, column: str) -> Iterator[tuple[int, str]]:
    """(line number, SMILES) of a ``.smi`` file (first whitespace-separated field; ``#``
    comments, blank lines and a ``smiles ...`` header line skipped) or a ``.csv``/``.tsv`` file (the ``column`` field),
    gzipped or not."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    with open_text(path) as handle:
        if kind in (".csv", ".tsv"):
            reader = csv.DictReader(handle, delimiter="\t" if kind == ".tsv" else ",")
            if column not in (reader.fieldnames or []):
                raise ValueError(
                    f"{path}: no column {column!r} (columns: {reader.fieldnames}); "
                    "choose one with --options '{column: NAME}'"
                )
            for row in reader:
                yield reader.line_num, (row[column] or "").strip()
            return
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if number == 1 and fields[0].lower() == "smiles":
                continue  # a header line
            yield number, fields[0]


@register_source("smiles", per_file=True)
def smiles_samples(
    paths: list[str], column: str = "smiles", validate: bool = False, strict: bool = False
) -> Iterator[Sample]:
    """``smi`` samples, one molecule each, from ``.smi`` files (SMILES first on each line, a
    name may follow) and ``.csv``/``.tsv`` files (SMILES in ``column``); ``.gz`` is read too.

    Each sample's key is ``<file stem>-<line>``. Lines that are not SMILES (characters no token
    covers; with ``validate``, molecules RDKit rejects) are logged with file and line, skipped
    and counted, or raise when ``strict``.

    Args:
        paths: input files.
        column: CSV/TSV column holding the SMILES.
        validate: parse every molecule with RDKit (needs ``pip install mmm[chem]``).
        strict: raise on the first invalid line instead of skipping it.
    """
    if validate:
        require_rdkit("smiles_samples(validate=True)")
    for path in map(Path, paths):
        stem = path.name.split(".")[0]
        skipped = 0
        for number, smiles in _smiles_lines(path, column):
            try:
                check_smiles_tokens(smiles)
                if validate:
                    parse_smiles(smiles)
            except ValueError as error:
                if strict:
                    raise ValueError(f"{path}:{number}: {error}") from error
                log.warning("%s:%d: skipped: %s", path, number, error)
                skipped += 1
                yield {SKIPPED: f"{path}:{number}: {error}"}
                continue
            yield {
                "__key__": sample_key(f"{stem}-{number}"),
                "__source__": f"{path}:{number}",
                "smi": smiles.encode("utf-8"),
            }
        if skipped:
            log.warning("%s: skipped %d invalid SMILES", path, skipped)


def iter_training_smiles(source: str) -> Iterator[str]:
    """SMILES to build a vocabulary from, read from one of:

    - the name of an embedded corpus (``smiles-nci-wehi``);
    - a glob or brace pattern of WebDataset shards, whose ``smi`` members are read;
    - a glob or brace pattern of ``.smi`` / ``.csv`` files (column ``smiles``).
    """
    from mmm.corpora import corpus_names, iter_corpus

    if source in corpus_names():
        samples: Iterator[Sample] = iter_corpus(source)
    else:
        paths = sorted({p for pattern in braceexpand(source) for p in glob.glob(pattern)})
        if not paths:
            raise FileNotFoundError(
                f"SMILES train_source {source!r} is neither an embedded corpus "
                f"({corpus_names()}) nor a pattern matching any file"
            )
        shards = [p for p in paths if p.endswith(".tar")]
        samples = smiles_samples([p for p in paths if not p.endswith(".tar")])
        if shards:  # raw samples of every shard, in order, after those of the files
            shard_samples = wds.DataPipeline(wds.SimpleShardList(shards), wds.tarfile_to_samples())
            samples = itertools.chain(samples, shard_samples)
    for sample in samples:
        if "smi" in sample:  # undecodable bytes become U+FFFD, which the token check rejects
            yield sample["smi"].decode("utf-8", errors="replace").strip()


# -------------------------------------------------------------------------------- vocabulary
def build_smiles_tokenizer(
    smiles: Iterator[str],
    algorithm: SmilesAlgorithm = "regex",
    vocab_size: int = 1000,
    min_frequency: int = 1,
) -> RustTokenizer:
    """Build a vocabulary from ``smiles``: every regex token seen ``min_frequency`` times
    (``regex``), or ``vocab_size`` character-level BPE merges over whole SMILES (``bpe``).
    Special tokens take ids 0-4 and frame each sequence as ``<s> ... </s>``."""
    if algorithm == "regex":
        tokenizer = RustTokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(SMILES_PATTERN), behavior="isolated")
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
        )
    elif algorithm == "bpe":
        tokenizer = RustTokenizer(models.BPE(unk_token=UNK))  # a whole SMILES is one "word"
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
        )
    else:
        raise ValueError(f"algorithm must be 'regex' or 'bpe', got {algorithm!r}")
    tokenizer.decoder = decoders.Fuse()  # SMILES tokens join with no separator
    tokenizer.train_from_iterator(smiles, trainer=trainer)
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
    """

    modality_name = "smiles"
    sample_keys = ("smi",)

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
    ) -> None:
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

    def _load_or_build(
        self,
        path: Path,
        train_source: str | None,
        algorithm: SmilesAlgorithm,
        vocab_size: int,
        min_frequency: int,
    ) -> RustTokenizer:
        if not path.is_file():
            if train_source is None:
                raise FileNotFoundError(
                    f"SmilesTokenizer: no tokenizer file at {path} and no train_source to build one"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{path}.lock"):  # one DDP rank builds, the others wait and load
                if not path.is_file():
                    smiles = (s for s in map(self._usable, iter_training_smiles(train_source)) if s)
                    tokenizer = build_smiles_tokenizer(smiles, algorithm, vocab_size, min_frequency)
                    tokenizer.save(str(path))
        tokenizer = RustTokenizer.from_file(str(path))
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"SmilesTokenizer: the tokenizer at {path} lacks tokens {missing}")
        if not isinstance(tokenizer.model, _MODEL_TYPES[algorithm]):
            raise ValueError(
                f"SmilesTokenizer: {path} holds a {type(tokenizer.model).__name__} vocabulary, "
                f"not one of algorithm={algorithm!r}; set the matching algorithm or another path"
            )
        return tokenizer

    def _usable(self, smiles: str) -> str | None:
        """``smiles`` as the model will see it, or ``None`` when invalid (for vocabulary
        building, so that the vocabulary covers canonical or randomized spellings)."""
        try:
            return self.prepare(smiles)
        except ValueError:
            return None

    def prepare(self, smiles: str) -> str:
        """Check ``smiles`` and apply the configured RDKit validation/canonicalization/
        randomization. Raises ``ValueError`` saying what is wrong."""
        check_smiles_tokens(smiles)
        if self.randomize:
            return randomized_smiles(smiles)
        if self.canonicalize:
            return canonical_smiles(smiles)
        if self.validate:
            parse_smiles(smiles)
        return smiles

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
        smiles = read_text_member(sample, "smi").strip()
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

    def encode(self, smiles: str) -> list[int]:
        """Token ids of one SMILES, ``<s>`` and ``</s>`` included, without padding."""
        encoding = self.rust.encode(smiles)
        return encoding.ids[: sum(encoding.attention_mask)]  # padding is on the right

    def decode(self, ids: list[int]) -> str:
        """The SMILES spelled by ``ids``, special tokens dropped."""
        return self.rust.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"SmilesTokenizer(path={self.path!r}, vocab_size={self.spec.vocab_size})"
