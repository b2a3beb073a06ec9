"""The dependency direction: data never imports the modalities or the models.

Each check runs in a fresh interpreter, since this one has imported everything already.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mmm

#: What reading and writing data may not pull in.
FORBIDDEN = ("mmm.tokenizers", "mmm.models", "mmm.module", "datamodules")

SCRIPT = """
import sys
import {module}
loaded = sorted(
    name for name in sys.modules if name.startswith({forbidden}) and sys.modules[name] is not None
)
print(",".join(loaded))
"""


@pytest.mark.parametrize(
    "module",
    [
        "mmm.data",
        "mmm.data.formats",
        "mmm.data.shards",
        "mmm.data.reading",
        "mmm.data.corpora",
        "mmm.data.patterns",
        "mmm.data.labels",
        "mmm.data.labelled",
    ],
)
def test_data_imports_no_modality_and_no_model(module):
    script = SCRIPT.format(module=module, forbidden=FORBIDDEN)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imports {result.stdout.strip()}"


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_data_module_imports_a_modality_or_a_model_even_inside_a_function():
    """Imports inside functions do not show in ``sys.modules`` until called: read the code."""
    data = Path(mmm.__file__).parent / "data"
    wrong = {
        f"{path.relative_to(data)}: {name}"
        for path in data.rglob("*.py")
        for name in _imported_modules(path)
        if name.startswith(FORBIDDEN)
    }
    assert not wrong, sorted(wrong)


def test_data_and_corpora_work_without_torchaudio():
    script = (
        'import sys\nsys.modules["torchaudio"] = None\n'
        "import mmm\nfrom mmm.data.corpora import corpus_names\n"
        "from mmm.data.formats import sample_source\n"
        'assert "asterisk-en" in corpus_names() and sample_source("audio")'
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_every_embedded_corpus_registers_without_a_modality():
    """The corpora read files through ``mmm.data.formats`` alone."""
    script = (
        "import sys\nfrom mmm.data.corpora import corpus_names\n"
        "print(corpus_names())\n"
        f"assert not [n for n in sys.modules if n.startswith({FORBIDDEN})]"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "python-docs" in result.stdout and "smiles-nci-wehi" in result.stdout


def test_public_names_of_mmm_resolve_lazily():
    assert mmm.TextTokenizer.__module__ == "mmm.tokenizers.text"
    assert set(mmm.__all__) <= set(dir(mmm))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = mmm.Nope


#: The layers of mmm, lowest first: a module imports its own layer and the ones below, never
#: one above (not even inside a function), so that the core never knows its converters or
#: its commands. A module's layer is that of the longest name it starts with.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            "mmm",
            "mmm.files",
            "mmm.rng",
            "mmm.optional",
            "mmm.checks",
            "mmm.precision",
            "mmm.sharding",
            "mmm.benchmarking",
            "mmm.data",
            "mmm.modalities",
            "mmm.metrics",
        ),
    ),
    ("modalities", ("mmm.tokenizers",)),
    (
        "models and the data pipeline",
        (
            "mmm.models",
            "mmm.masking",
            "mmm.cross_modal_masking",
            "mmm.finetune.lora",
            "mmm.electra",
            "mmm.distillation",
            "datamodules",
        ),
    ),
    ("the module", ("mmm.module",)),
    (
        "using a trained module",
        ("mmm.generation", "mmm.scoring", "mmm.inference", "mmm.forecasting"),
    ),
    ("converters to and from stock classes", ("mmm.export",)),
    (
        "tasks on a trained module",
        ("mmm.finetune", "mmm.callbacks", "mmm.conditioning", "mmm.teacher"),
    ),
    ("commands", ("mmm.commands", "mmm.cli", "mmm.experiment")),
)
ROOT = Path(mmm.__file__).parents[1]


def _library_modules() -> dict[str, Path]:
    """Every module of ``mmm`` and ``datamodules``, by dotted name."""
    found = {}
    for package in ("mmm", "datamodules"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts).removesuffix(".__init__")] = path
    return found


def _layer(name: str) -> int:
    """The index in ``LAYERS`` of module ``name``."""
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if name == prefix or (prefix != "mmm" and name.startswith(prefix + "."))
    ]
    assert matches, f"{name} is in no layer: add it to LAYERS"
    return max(matches)[1]


def _runtime_imports(path: Path) -> set[str]:
    """What ``path`` imports when run (``if TYPE_CHECKING:`` blocks left out: annotations
    may name a higher layer's types)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in ("mmm", "datamodules")}


def test_no_library_module_imports_one_above_its_layer():
    upward = [
        f"{name} ({LAYERS[_layer(name)][0]}) imports {imported} ({LAYERS[_layer(imported)][0]})"
        for name, path in _library_modules().items()
        for imported in _runtime_imports(path)
        if _layer(imported) > _layer(name)
    ]
    assert not upward, "\n".join(upward)


FRESH_IMPORTS = """
import importlib, sys
failed = []
for name in {names}:
    for loaded in [m for m in sys.modules if m == "mmm" or m.startswith(("mmm.", "datamodules"))]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as error:
        failed.append(f"{{name}}: {{type(error).__name__}}: {{error}}")
print("\\n".join(failed))
"""


def test_every_module_imports_first():
    """Each module imported first, into an interpreter holding no other mmm module (third
    parties stay loaded, so that 66 imports take seconds): an import cycle shows as a
    partially initialized module whichever side is imported first."""
    script = FRESH_IMPORTS.format(names=sorted(_library_modules()))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", result.stdout
