"""A modality's heavy dependency breaks only that modality.

torchaudio fails to import beside a torch built for another CUDA version (``RuntimeError`` at
import), or may be missing. ``import mmm``, the CLI and text training must not care; audio must
fail with an error that names the cause and the fix. Each case runs in a fresh interpreter,
since torchaudio may already be imported in this one.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: Ways torchaudio fails on users' machines, each installed before anything imports mmm.
BREAKAGES = {
    "missing": 'sys.modules["torchaudio"] = None',
    "cuda-mismatch": textwrap.dedent(
        """
        import importlib.abc

        class BrokenTorchaudio(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torchaudio" or name.startswith("torchaudio."):
                    raise RuntimeError(
                        "Detected that PyTorch and TorchAudio were compiled with different "
                        "CUDA versions. PyTorch has CUDA version 13.2 whereas TorchAudio has "
                        "CUDA version 13.0."
                    )
                return None

        sys.modules.pop("torchaudio", None)
        sys.meta_path.insert(0, BrokenTorchaudio())
        """
    ),
}

SCRIPT = """
import sys
{breakage}
import torch

import mmm
from mmm.cli import TOOLS  # the CLI imports every tool, audio-stats included
from mmm.module import MaskedModelingModule
from mmm.models.encoder import TransformerEncoder
from mmm.optional import MissingDependencyError
from mmm.tokenizers.text import TextTokenizer

assert "torchaudio" not in sys.modules or sys.modules["torchaudio"] is None
torch.manual_seed(0)
tokenizer = TextTokenizer(path=sys.argv[1], max_length=32)
module = MaskedModelingModule(
    tokenizer=tokenizer, encoder=TransformerEncoder(dim=32, depth=1, num_heads=2)
)
batch = tokenizer.collate(["the quick brown fox jumps over the lazy dog"] * 4)
loss = module.forward_masked(batch).loss
loss.backward()
assert torch.isfinite(loss), loss

try:
    mmm.AudioTokenizer()
except MissingDependencyError as error:
    print("AUDIO ERROR:", error)
else:
    raise SystemExit("AudioTokenizer() should have failed without torchaudio")
"""


@pytest.mark.parametrize("breakage", BREAKAGES, ids=str)
def test_text_trains_and_audio_says_why_without_torchaudio(breakage, tokenizer_dir):
    script = SCRIPT.format(breakage=BREAKAGES[breakage])
    result = subprocess.run(
        [sys.executable, "-c", script, str(tokenizer_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout.split("AUDIO ERROR:", 1)[1]
    assert "torchaudio" in message and "failed to import" in message
    assert "pip install" in message  # the fix
    if breakage == "cuda-mismatch":
        assert "different CUDA versions" in message  # the cause, as torchaudio said it
