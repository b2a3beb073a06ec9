"""Probes: the online linear-probe callback and the ``mmm probe`` tool."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmm.callbacks import OnlineLinearProbe
from mmm.cli import run
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.probe import (
    input_features,
    linear_probe_score,
    load_labelled,
    pooled_features,
    randomly_initialized,
)
from mmm.tokenizers.image import ImageTokenizer
from mmm.tokenizers.protein import ProteinTokenizer
from tests.helpers import fit_protein_checkpoint
from tests.test_embeddings import PROTEINS


def _protein_module() -> MaskedModelingModule:
    torch.manual_seed(0)
    encoder = TransformerEncoder(dim=32, depth=1, num_heads=2, mlp_ratio=2.0, dropout=0.1)
    tokenizer = ProteinTokenizer(max_length=48)
    return MaskedModelingModule(tokenizer=tokenizer, encoder=encoder, lr=1e-3, warmup_steps=0)


def _train(callbacks: list[L.Callback]) -> tuple[MaskedModelingModule, L.Trainer]:
    module = _protein_module()
    batches = [module.tokenizers["protein"].collate(PROTEINS) for _ in range(4)]
    trainer = L.Trainer(
        max_steps=4,
        val_check_interval=4,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    L.seed_everything(0)
    loaders = [DataLoader(batches, batch_size=None) for _ in range(2)]
    trainer.fit(module, train_dataloaders=loaders[0], val_dataloaders=loaders[1])
    return module, trainer


def test_online_probe_leaves_pretraining_unchanged_and_logs_accuracy():
    pytest.importorskip("modlamp")  # the `probe` extra
    alone, _ = _train([])
    probe = OnlineLinearProbe(data="amp", batch_size=16, limit=96)
    probed, trainer = _train([probe])
    for (name, a), (_, b) in zip(alone.named_parameters(), probed.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    accuracy = float(trainer.callback_metrics["probe/accuracy"])
    assert 0.0 <= accuracy <= 1.0
    assert probe.probe.weight.grad is not None  # the probe itself did learn


def test_online_probe_rejects_bad_arguments():
    with pytest.raises(ValueError, match="held_out"):
        OnlineLinearProbe(held_out=1.0)


def test_linear_probe_separates_separable_features_and_scores_regression():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    features = rng.normal(size=(100, 4)) + labels[:, None] * 5.0
    assert linear_probe_score(features, labels, "classification") == 1.0
    values = features @ np.array([1.0, -2.0, 0.5, 0.0])
    assert linear_probe_score(features, values, "regression") > 0.99


def test_digit_features_from_an_image_model():
    digits = load_labelled("digits")
    tokenizer = ImageTokenizer(image_size=16, patch_size=4, channels=3)
    torch.manual_seed(0)
    encoder = TransformerEncoder(dim=32, depth=1, num_heads=2)
    module = MaskedModelingModule(tokenizer=tokenizer, encoder=encoder)
    items, labels = digits.items[:200], digits.labels[:200]
    pooled = pooled_features(module, items)
    assert pooled.shape == (200, 32)
    np.testing.assert_array_equal(pooled, pooled_features(module, items))  # deterministic
    mean_patch = input_features(module, items)
    assert mean_patch.shape == (200, 4 * 4 * 3)
    assert linear_probe_score(mean_patch, labels, "classification") > 0.3  # chance is 0.1
    fresh = randomly_initialized(module)
    assert not torch.equal(
        fresh.encoder.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight
    )


def test_probe_tool_on_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("modlamp")  # the `probe` extra
    checkpoint = fit_protein_checkpoint(tmp_path, PROTEINS)
    scores = run(["probe", f"--checkpoint={checkpoint}", "--data=amp", "--limit=200"])
    assert set(scores) == {"pretrained encoder", "random encoder", "no encoder"}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert "amp: 200 items" in capsys.readouterr().out
