"""Embeddings of discrete sequences: the ``embed_sequences`` API and the ``mmm embed`` tool."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from mmm.cli import run
from mmm.inference import embed_sequences, read_sequences
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.protein import ProteinTokenizer
from tests.conftest import SENTENCES

PROTEINS = [
    "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHV",
    "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG",
    "FVNQHLCGSHLVEALYLVCGERGFFYTPKT",
    "GIGKFLHSAKKFGKAFVGEIMNS",
]
PROTEIN_CONFIG = Path(__file__).parents[1] / "configs" / "protein_mlm.yaml"


def _module(tokenizer) -> MaskedModelingModule:
    torch.manual_seed(0)
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=2, mlp_ratio=2.0, dropout=0.1)
    return MaskedModelingModule(tokenizer=tokenizer, encoder=encoder)


@pytest.fixture(params=["protein", "text"])
def module_and_sequences(request):
    """A tiny module and real inputs of each discrete modality."""
    if request.param == "protein":
        return _module(ProteinTokenizer(max_length=128)), PROTEINS
    return _module(request.getfixturevalue("tokenizer")), SENTENCES[:5]


def test_shapes_match_the_documentation(module_and_sequences):
    module, sequences = module_and_sequences
    per_token, pooled = embed_sequences(module, sequences, batch_size=2)
    assert pooled.shape == (len(sequences), 32) and pooled.dtype == torch.float32
    assert len(per_token) == len(sequences)
    lengths = (
        module.tokenizers[module.modality_named()]
        .collate(sequences)["attention_mask"]
        .sum(dim=1)
        .tolist()
    )
    assert [t.shape for t in per_token] == [(n, 32) for n in lengths]
    means = torch.stack([t.mean(dim=0) for t in per_token])
    torch.testing.assert_close(pooled, means)


def test_eval_mode_is_deterministic_and_batch_independent(module_and_sequences):
    """Dropout is on in the module (train mode) but off while embedding; padding from
    batch-mates must not change a sequence's vectors."""
    module, sequences = module_and_sequences
    module.train()
    _, first = embed_sequences(module, sequences, batch_size=len(sequences))
    _, again = embed_sequences(module, sequences, batch_size=len(sequences))
    _, one_by_one = embed_sequences(module, sequences, batch_size=1)
    assert torch.equal(first, again)
    torch.testing.assert_close(first, one_by_one, atol=1e-5, rtol=1e-4)
    assert module.training  # the caller's mode is restored


def test_no_sequences_and_bad_batch_size():
    module = _module(ProteinTokenizer())
    per_token, pooled = embed_sequences(module, [])
    assert per_token == [] and pooled.shape == (0, 32)
    with pytest.raises(ValueError, match="batch_size"):
        embed_sequences(module, PROTEINS, batch_size=0)


def test_read_sequences_formats(tmp_path):
    fasta = tmp_path / "p.faa.gz"
    fasta.write_bytes(gzip.compress(b">p1 first\nMKT\nLLV*\n>p2\nACDE\n"))
    assert read_sequences(fasta) == [("p1", "MKT\nLLV*\n"), ("p2", "ACDE\n")]
    smi = tmp_path / "m.smi"
    smi.write_text("SMILES Name\nCCO ethanol\n\nc1ccccc1\n")
    assert read_sequences(smi) == [("ethanol", "CCO"), ("4", "c1ccccc1")]
    lines = tmp_path / "s.txt"
    lines.write_text("MKTLLV\n\n  ACDE  \n")
    assert read_sequences(lines) == [("1", "MKTLLV"), ("3", "ACDE")]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty.txt: no sequence"):
        read_sequences(tmp_path / "empty.txt")


def test_embed_tool_from_a_trained_checkpoint(tmp_path, monkeypatch, capsys):
    """``mmm shards`` -> ``mmm fit`` (the protein YAML, shrunk) -> ``mmm embed``."""
    monkeypatch.chdir(tmp_path)
    fasta = tmp_path / "proteins.fasta"
    fasta.write_text("".join(f">prot{i}\n{s}\n" for i, s in enumerate(PROTEINS)))
    run(["shards", f"--inputs={fasta}", "--output=shards/train", "--modality=protein"])
    run(
        [
            "fit",
            f"--config={PROTEIN_CONFIG}",
            "--model.tokenizer.max_length=64",
            "--model.encoder.dim=32",
            "--model.encoder.depth=1",
            "--model.encoder.num_heads=2",
            "--data.train_shards=shards/train-*.tar",
            "--data.val_shards=shards/train-*.tar",
            "--data.num_workers=0",
            "--data.batch_size=4",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    [checkpoint] = sorted(tmp_path.rglob("*.ckpt"))
    run(["embed", f"--checkpoint={checkpoint}", f"--inputs={fasta}", "--output=out/e.npy"])
    pooled = np.load(tmp_path / "out" / "e.npy")
    assert pooled.shape == (len(PROTEINS), 32)
    run(
        [
            "embed",
            f"--checkpoint={checkpoint}",
            f"--inputs={fasta}",
            "--output=out/e.pt",
            "--per_token=true",
        ]
    )
    saved = torch.load(tmp_path / "out" / "e.pt")
    assert saved["names"] == [f"prot{i}" for i in range(len(PROTEINS))]
    np.testing.assert_allclose(saved["pooled"].numpy(), pooled, rtol=1e-5, atol=1e-6)
    assert [t.shape[0] for t in saved["per_token"]] == [min(len(s), 62) + 2 for s in PROTEINS]
    assert "embedded 4 sequences" in capsys.readouterr().out
