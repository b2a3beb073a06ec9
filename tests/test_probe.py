"""Probes: the online linear-probe callback and the ``mmm probe`` tool.

The ``prompts`` tests read Debian's asterisk-core-sounds-en-wav and skip when it is absent.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mmm.callbacks import OnlineLinearProbe
from mmm.cli import run
from mmm.data.corpora.audio import ASTERISK_EN
from mmm.data.labelled import select_classes
from mmm.data.shards import write_shards
from mmm.models.encoder import TransformerEncoder
from mmm.models.heads import PatchDecoderConfig
from mmm.module import MaskedModelingModule, ModalityConfig
from mmm.probe import (
    LabelledSet,
    collate_items,
    input_features,
    linear_probe_score,
    load_labelled,
    load_prompts,
    pooled_features,
    prepared_items,
    probe_modality,
    randomly_initialized,
)
from mmm.tokenizers.audio import AudioItem, AudioTokenizer, LogMelSettings
from mmm.tokenizers.image import ImageTokenizer
from mmm.tokenizers.protein import ProteinTokenizer
from mmm.tokenizers.text import TextTokenizer
from tests.conftest import SENTENCES
from tests.helpers import fit_checkpoint, fit_protein_checkpoint
from tests.test_audio import clips
from tests.test_embeddings import PROTEINS

needs_prompts = pytest.mark.skipif(
    not ASTERISK_EN.is_dir(), reason="asterisk-core-sounds-en-wav not installed"
)
#: Small log-mel features for fast audio tests: 16 bands, 16 ms hops at 8 kHz.
SMALL = LogMelSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)


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


# ------------------------------------------------------------------ labelled sets
def test_select_classes_keeps_large_classes_capped():
    names = ["a"] * 7 + ["b"] * 5 + ["c"] * 2 + ["d"] * 5
    index, labels, classes = select_classes(names, min_count=3, max_classes=2, cap=4)
    assert classes == ("a", "b")  # largest first, ties by name; c too small, d beyond 2
    assert np.bincount(labels).tolist() == [4, 4]
    assert [names[i] for i in index] == [classes[k] for k in labels]
    assert index.tolist() == sorted(index.tolist())
    again = select_classes(names, min_count=3, max_classes=2, cap=4)
    np.testing.assert_array_equal(index, again[0])  # seeded


@needs_prompts
def test_prompts_are_labelled_by_folder():
    prompts = load_labelled("prompts")
    assert prompts.classes == ("en_US_f_Allison", "digits", "letters", "phonetic")
    assert np.bincount(prompts.labels).tolist() == [358, 94, 61, 27]
    assert all("wav" in item for item in prompts.items)


def test_prompts_name_the_package_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install asterisk-core-sounds-en-wav"):
        load_prompts(tmp_path / "missing")


def test_docstrings_are_labelled_by_stdlib_package():
    docstrings = load_labelled("docstrings")
    counts = np.bincount(docstrings.labels)
    assert 8 <= len(docstrings.classes) <= 10 and len(counts) == len(docstrings.classes)
    assert "asyncio" in docstrings.classes and "email" in docstrings.classes
    assert counts.min() >= 100 and counts.max() <= 150  # balanced-ish
    assert all(isinstance(text, str) and len(text) >= 80 for text in docstrings.items)


# ------------------------------------------------------------------ text and audio features
def _audio_module(crop: str = "center") -> MaskedModelingModule:
    torch.manual_seed(0)
    tokenizer = AudioTokenizer(SMALL, duration=1.0, patch_frames=4, patch_mels=4, crop=crop)
    encoder = TransformerEncoder(dim=32, depth=1, num_heads=2, mlp_ratio=2.0)
    decoder = PatchDecoderConfig(dim=16, depth=1, num_heads=2)
    return MaskedModelingModule(tokenizer=tokenizer, encoder=encoder, decoder=decoder)


def test_text_features(tiny_module, one_thread):
    pooled = pooled_features(tiny_module, SENTENCES)
    assert pooled.shape == (len(SENTENCES), 32)
    counts = input_features(tiny_module, SENTENCES)
    assert counts.shape == (len(SENTENCES), tiny_module.tokenizers["text"].spec.vocab_size)
    assert counts.sum(axis=1).min() > 2  # words and [CLS]/[SEP], padding not counted


def test_audio_features_are_deterministic_even_with_random_crops(one_thread):
    module = _audio_module(crop="random")
    samples = clips(6, seconds=2.5) + clips(2, seconds=0.5)  # longer and shorter than 1 s
    pooled = pooled_features(module, samples)
    assert pooled.shape == (8, 32)
    np.testing.assert_array_equal(pooled, pooled_features(module, samples))  # middle window
    decoded = prepared_items(module, samples)
    assert all(isinstance(item, AudioItem) for item in decoded)
    np.testing.assert_array_equal(pooled, pooled_features(module, decoded))  # decoded once
    mean_patch = input_features(module, samples)
    assert mean_patch.shape == (8, 4 * 4)  # 4 bands x 4 frames per patch
    assert np.isfinite(mean_patch).all()


# ------------------------------------------------------------------ multimodal models
def _image_audio_module() -> MaskedModelingModule:
    torch.manual_seed(0)
    image = ImageTokenizer(image_size=8, patch_size=4, channels=1)
    audio = AudioTokenizer(SMALL, duration=1.0, patch_frames=4)
    decoder = PatchDecoderConfig(dim=16, depth=1, num_heads=2)
    modalities = {
        "image": ModalityConfig(image, decoder=decoder),
        "audio": ModalityConfig(audio, decoder=decoder),
    }
    encoder = TransformerEncoder(dim=32, depth=1, num_heads=2, mlp_ratio=2.0)
    return MaskedModelingModule(modalities=modalities, encoder=encoder)


def test_a_multimodal_model_is_probed_through_the_matching_modality(one_thread):
    module = _image_audio_module()
    digits = load_labelled("digits")
    assert probe_modality(module, digits) == "image"
    batch = collate_items(module, digits.items[:4], "image")
    assert set(batch) == {"image"}  # samples that carry the image alone
    pooled = pooled_features(module, digits.items[:20], "image")
    assert pooled.shape == (20, 32)
    assert input_features(module, digits.items[:20], "image").shape == (20, 16)
    with pytest.raises(ValueError, match="name one"):
        pooled_features(module, digits.items[:4])  # two modalities: which?
    assert pooled_features(module, clips(3), "audio").shape == (3, 32)
    text = LabelledSet("words", ["x"], np.zeros(1), "classification", reads=TextTokenizer)
    with pytest.raises(ValueError, match="none of this model's modalities .* reads them"):
        probe_modality(module, text)  # no text modality: naming one would not help


def test_online_probe_reads_one_modality_of_a_multimodal_model(one_thread):
    module = _image_audio_module()
    probe = OnlineLinearProbe(data="digits", batch_size=16, limit=64)
    probe.setup(None, module, "fit")
    assert probe.modality_name == "image"
    before = probe.probe.weight.detach().clone()
    probe.on_train_batch_end(None, module, None, None, 0)
    assert not torch.equal(before, probe.probe.weight)


# ------------------------------------------------------------------ mmm probe on checkpoints
def _scores_are_printed(scores: dict, out: str, header: str) -> None:
    assert set(scores) == {"pretrained encoder", "random encoder", "no encoder"}
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert header in out
    assert sum(line.strip().startswith(tuple(scores)) for line in out.splitlines()) == 3


#: Two training steps, one validation batch, no loader workers: a checkpoint to probe.
SHORT_RUN = {
    "data.num_workers": "0",
    "trainer.max_steps": "2",
    "trainer.val_check_interval": "2",
    "trainer.limit_val_batches": "1",
}


def test_probe_tool_on_a_text_checkpoint(tmp_path, tokenizer_dir, corpus_dir, capsys, one_thread):
    settings = SHORT_RUN | {
        "model.tokenizer.path": str(tokenizer_dir),
        "model.tokenizer.max_length": "32",
        "model.encoder.dim": "16",
        "model.encoder.depth": "1",
        "model.encoder.num_heads": "2",
        "data.train_shards": f"{corpus_dir}/train-*.tar",
        "data.val_shards": f"{corpus_dir}/val-*.tar",
        "data.batch_size": "8",
    }
    checkpoint = fit_checkpoint(tmp_path, "text_mlm.yaml", settings)
    scores = run(["probe", f"--checkpoint={checkpoint}", "--data=docstrings", "--limit=150"])
    _scores_are_printed(scores, capsys.readouterr().out, "docstrings: 150 items, text modality")


@needs_prompts
def test_probe_tool_on_an_audio_checkpoint(tmp_path, capsys, one_thread):
    write_shards(clips(8, seconds=2.5), str(tmp_path / "train-%06d.tar"))
    settings = SHORT_RUN | {
        "model.encoder.dim": "16",
        "model.encoder.depth": "1",
        "model.encoder.num_heads": "2",
        "model.decoder.dim": "16",
        "model.decoder.depth": "1",
        "model.decoder.num_heads": "2",
        "data.embedded": "null",
        "data.train_shards": str(tmp_path / "train-*.tar"),
        "data.val_shards": str(tmp_path / "train-*.tar"),
        "data.batch_size": "4",
        "trainer.callbacks": "[]",
    }
    checkpoint = fit_checkpoint(tmp_path, "audio_mae.yaml", settings)
    scores = run(["probe", f"--checkpoint={checkpoint}", "--data=prompts", "--limit=80"])
    _scores_are_printed(scores, capsys.readouterr().out, "prompts: 80 items, audio modality")


def test_probe_tool_on_a_multimodal_checkpoint(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)  # the config trains its word tokenizer under ./artifacts
    settings = SHORT_RUN | {
        "model.encoder.dim": "16",
        "model.encoder.num_heads": "2",
        "data.batch_size": "8",
        "trainer.callbacks": "[]",
    }
    checkpoint = fit_checkpoint(tmp_path, "digits_image_text.yaml", settings)
    scores = run(["probe", f"--checkpoint={checkpoint}", "--data=digits", "--limit=200"])
    _scores_are_printed(scores, capsys.readouterr().out, "digits: 200 items, image modality")
