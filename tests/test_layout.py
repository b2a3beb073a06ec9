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
