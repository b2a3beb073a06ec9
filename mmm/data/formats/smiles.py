"""SMILES: the grammar of its tokens, RDKit checks, and ``.smi``/``.csv`` files of molecules.

The token regular expression is Schwaller et al.'s ("Molecular Transformer", 2019): bracket
atoms (``[C@@H]``, ``[13CH3]``, ``[NH4+]``) stay whole, two-letter elements (``Cl``, ``Br``)
are one token, and ring closures ``%10``..``%99`` are one token. It checks samples without
RDKit; RDKit is optional (``pip install mmm[chem]``): it validates molecules, canonicalizes
them, and enumerates randomized SMILES.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmm.data.formats.base import SKIPPED, Sample, open_text, register_source, sample_key
from mmm.data.members import SMILES_MEMBER
from mmm.optional import require

if TYPE_CHECKING:
    from rdkit.Chem import Mol

log = logging.getLogger(__name__)


#: One SMILES token (Schwaller et al. 2019): a bracket atom, an organic-subset atom (two-letter
#: ``Br``/``Cl`` first), a bond, branch, dot, stereo mark, or a ring closure (``%NN`` or a digit).
SMILES_PATTERN = (
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$"
    r"|%[0-9]{2}|[0-9])"
)
_TOKEN = re.compile(SMILES_PATTERN)
_ONLY_TOKENS = re.compile(f"(?:{SMILES_PATTERN})+")

#: Atoms written without brackets (the organic subset, aliphatic and aromatic).
_ORGANIC_ATOMS = frozenset(
    ["B", "C", "N", "O", "P", "S", "F", "I", "Cl", "Br", "b", "c", "n", "o", "s", "p"]
)
#: The element of a bracket atom: optional isotope, then the symbol (``*`` is a wildcard atom).
_BRACKET_ELEMENT = re.compile(r"\[\d*([A-Z][a-z]?|se|as|te|[bcnops]|\*)")

#: Bonds (``/`` and ``\\`` give double-bond geometry), branches, the dot, the wildcard atom.
_BOND_TOKENS = ("-", "=", "#", "$", ":", "/", "\\", "(", ")", ".", "*")
#: Elements of the bracket atoms a SMILES user meets outside metals and salts.
_BRACKET_ELEMENTS = ("B", "C", "N", "O", "P", "S", "Se", "Si", "b", "c", "n", "o", "p", "s", "se")
#: Elements that are tetrahedral stereocentres in organic molecules.
_STEREO_ELEMENTS = ("C", "N", "P", "S", "Si")
_CHARGES = ("", "+", "-", "+2", "-2")


def grammar_tokens() -> tuple[str, ...]:
    """The tokens of the SMILES grammar that every atom-level vocabulary should hold, whether
    or not the corpus it is built from spells them: every token outside brackets (the
    organic subset, bonds, the ``/`` and ``\\`` of double-bond geometry, branches, ring
    closures ``0``-``9`` and ``%10``-``%99``), and the bracket atoms of organic chemistry:
    tetrahedral centres (``[C@@H]``, ``[N@+]``), charged atoms and explicit hydrogens
    (``[NH3+]``, ``[nH]``, ``[O-]``, ``[S+2]``), hydrogen and deuterium.

    Why: a vocabulary is built from a pretraining corpus, and corpora of 2D structures
    (NCI/WEHI, MOSES) hold no stereo mark at all, so a vocabulary of their tokens alone
    reads every chiral or E/Z molecule of a downstream set (a fifth of FreeSolv) as unknown.
    Metals, salts and isotopes are too many to list: they come from the corpus.
    """
    rings = [str(digit) for digit in range(10)] + [f"%{number}" for number in range(10, 100)]
    stereo = [
        f"[{element}{chirality}{hydrogens}{charge}]"
        for element in _STEREO_ELEMENTS
        for chirality in ("@", "@@")
        for hydrogens in ("", "H")
        for charge in _CHARGES[:3]
    ]
    plain = [
        f"[{element}{hydrogens}{charge}]"
        for element in _BRACKET_ELEMENTS
        for hydrogens in (("", "H") if element.islower() else ("", "H", "H2", "H3", "H4"))
        for charge in _CHARGES
    ]
    hydrogen = ["[H]", "[H+]", "[H-]", "[2H]"]
    return (*sorted(_ORGANIC_ATOMS), *_BOND_TOKENS, *rings, *stereo, *plain, *hydrogen)


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


# ---------------------------------------------------------------------------------- files
def _smiles_lines(path: Path, column: str) -> Iterator[tuple[int, str]]:
    """(line number, SMILES) of a ``.smi`` file (first whitespace-separated field; ``#``
    comments, blank lines and a ``smiles ...`` header line skipped) or a ``.csv``/``.tsv``
    file (the ``column`` field), gzipped or not."""
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
                SMILES_MEMBER: smiles.encode("utf-8"),
            }
        if skipped:
            log.warning("%s: skipped %d invalid SMILES", path, skipped)
