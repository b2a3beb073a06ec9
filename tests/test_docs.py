"""The commands and snippets in README.md and docs/ parse, compile and (where cheap) run, so
they cannot drift from the code.

- Every ``mmm ...`` command of a ```bash block is parsed by the real parser without running:
  LightningCLI subcommands (``fit``, ``validate``, ...) with their ``--config`` file read,
  tools (``shards``, ``generate``, ...) with the ``auto_cli`` parser of their function, after
  the same repeated-option check ``mmm`` applies. Placeholders such as ``CKPT`` are plain
  strings to the parser, so they parse like real paths.
- Every ```python block compiles, and every name it imports from ``mmm`` or ``datamodules``
  exists. It is also executed, in an empty working directory, unless the line before its
  fence is an opt-out marker that says why: ``<!-- docs-test: no-run (needs a checkpoint) -->``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from jsonargparse import ArgumentParser, auto_cli, capture_parser

from mmm.cli import LIGHTNING_COMMANDS, TOOLS, refuse_repeated_options, run

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NO_RUN = re.compile(r"<!-- docs-test: no-run \((?P<why>[^)]+)\) -->")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its text and why it is not run."""

    page: Path
    line: int
    lang: str
    text: str
    no_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a markdown page, each with the opt-out marker on the line before
    its opening fence (if any)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, start, lang = [], None, ""
    for number, line in enumerate(lines, start=1):
        match = FENCE.match(line.strip())
        if match is None:
            continue
        if start is None:
            start, lang = number, match["lang"]
            continue
        marker = NO_RUN.search(lines[start - 2]) if start >= 2 else None
        text = "\n".join(lines[start : number - 1])
        found.append(Block(page, start, lang, text, marker["why"] if marker else None))
        start = None
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
PYTHON = [block for block in ALL_BLOCKS if block.lang == "python"]


def mmm_commands(block: Block) -> list[list[str]]:
    """The ``mmm`` commands of a bash block as argument lists (without ``mmm``): lines joined
    at trailing backslashes, comments dropped, chains (``&&``, ``;``) split."""
    script = re.sub(r"\\\n", " ", block.text)
    commands = []
    for line in script.splitlines():
        for part in re.split(r"&&|;", line):
            words = shlex.split(part, comments=True)
            if words[:1] == ["mmm"]:
                commands.append(words[1:])
    return commands


MMM_COMMANDS = [
    pytest.param(block, argv, id=f"{block.where}:{' '.join(argv[:3])}")
    for block in ALL_BLOCKS
    if block.lang == "bash"
    for argv in mmm_commands(block)
]


def test_pages_hold_commands_and_snippets():
    """The extraction finds what the pages hold (an empty list would test nothing)."""
    assert len(MMM_COMMANDS) > 50 and len(PYTHON) >= 7
    tools = {param.values[1][0] for param in MMM_COMMANDS}
    assert {"fit", "shards", "generate", "export", "probe"} <= tools


@functools.cache
def parser_of(subcommand: str) -> ArgumentParser:
    """The parser ``mmm SUBCOMMAND`` builds, captured where it would parse: LightningCLI's
    (one for all its subcommands, keyed by ``fit``) or the tool's ``auto_cli`` parser."""
    if subcommand in LIGHTNING_SUBCOMMANDS and subcommand not in TOOLS:
        return capture_parser(lambda: run(["fit"]))
    if subcommand in LIGHTNING_COMMANDS:  # pretrain, finetune
        return capture_parser(lambda: run([subcommand, "fit"]))
    return capture_parser(lambda: auto_cli(TOOLS[subcommand], args=[]))


@pytest.mark.parametrize(("block", "argv"), MMM_COMMANDS)
def test_mmm_command_parses(block: Block, argv: list[str], monkeypatch, capsys):
    """The subcommand exists and its options parse (types, choices, class paths, the config
    file) through the parser ``mmm`` uses; nothing runs."""
    monkeypatch.chdir(ROOT)  # configs/ paths are relative to the repository
    subcommand, options = argv[0], argv[1:]
    known = (*LIGHTNING_SUBCOMMANDS, *LIGHTNING_COMMANDS, *TOOLS)
    assert subcommand in known, f"{block.where}: `mmm {subcommand}` is not one of {known}"
    if subcommand in LIGHTNING_COMMANDS:  # `mmm finetune fit ...`: LightningCLI of that module
        parser, parse = parser_of(subcommand), options
    elif subcommand in TOOLS:
        refuse_repeated_options(subcommand, options)
        parser, parse = parser_of(subcommand), options
    else:
        parser, parse = parser_of("fit"), argv
    try:
        parser.parse_args(parse)
    except SystemExit as error:  # --help and --print_config print and exit 0
        assert error.code == 0, f"{block.where}: mmm {shlex.join(argv)}: {capsys.readouterr().err}"


@pytest.mark.parametrize("block", PYTHON, ids=[block.where for block in PYTHON])
def test_python_snippet(block: Block, tmp_path, monkeypatch):
    """The snippet compiles, the names it imports from mmm exist, and it runs in an empty
    working directory unless its marker says why not."""
    tree = compile(block.text, block.where, "exec", flags=ast.PyCF_ONLY_AST)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in (
            "mmm",
            "datamodules",
        ):
            module = importlib.import_module(node.module)
            missing = [alias.name for alias in node.names if not hasattr(module, alias.name)]
            assert not missing, f"{block.where}: {node.module} has no {missing}"
    code = compile(tree, block.where, "exec")
    if block.no_run is None:
        monkeypatch.chdir(tmp_path)
        exec(code, {"__name__": "docs_snippet"})
