"""Probes: ``mmm probe`` (the probe mode of ``FineTuningModule`` on labelled shards, beside
its random-encoder control) and the online linear-probe callback.

A tiny model's probe scores say nothing about pretraining, so these tests check what must
hold at any size: a probe is deterministic, its control is the same architecture with other
weights, the modality is the one that reads the data (or a named error), and the command
prints and returns both encoders' test metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules import ShardDataModule
from mmm.callbacks import OnlineLinearProbe
from mmm.cli import run
from mmm.data.corpora import labelled_corpus
from mmm.data.corpora.audio import ASTERISK_EN
from mmm.data.labelled import SPLIT_NOTE, select_classes, write_labelled_shards
from mmm.data.labels import LABEL_MEMBER, LabelSpec, encode_label
from mmm.data.members import PROTEIN_MEMBER
from mmm.experiment import QUIET_TRAINER
from mmm.finetune.heads import ClassifierHead
from mmm.finetune.probe import (
    ENCODERS,
    ProbeModalityError,
    ProbeSettings,
    linear_probe,
    probe_modality,
    probe_module,
)
from mmm.models.encoder import TransformerEncoder
from mmm.models.heads import PatchDecoderConfig
from mmm.module import MaskedModelingModule, ModalityConfig
from mmm.tokenizers.audio import AudioTokenizer, LogMelSettings
from mmm.tokenizers.image import ImageTokenizer
from mmm.tokenizers.multimodal import MultimodalBatcher
from mmm.tokenizers.protein import ProteinTokenizer
from tests.helpers import fit_protein_checkpoint
from tests.test_embeddings import PROTEINS

#: Small log-mel features for fast audio tests: 16 bands, 16 ms hops at 8 kHz.
SMALL = LogMelSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)


def _peptides(root: Path) -> Path:
    """Labelled peptide shards: hydrophobic (1) vs charged (0) random peptides, 32 train, 8
    val, 16 test (their own splits), and ``labels.json``."""
    rng = np.random.default_rng(0)
    alphabets = ("DEKRH", "AILMFVW")
    samples = []
    for index in range(56):
        label = index % 2
        split = "test" if index >= 40 else "val" if index >= 32 else "train"
        sequence = "".join(rng.choice(list(alphabets[label]), size=12))
        samples.append(
            {
                "__key__": f"pep{index:03d}",
                SPLIT_NOTE: split,
                PROTEIN_MEMBER: sequence.encode(),
                LABEL_MEMBER: encode_label(label),
            }
        )
    spec = LabelSpec("classification", ("charged", "hydrophobic"), PROTEIN_MEMBER)
    write_labelled_shards(samples, root, spec, samples_per_shard=8)
    return root


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step protein checkpoint and labelled peptide shards."""
    root = tmp_path_factory.mktemp("probe")
    return fit_protein_checkpoint(root, PROTEINS), _peptides(root / "peptides")


QUICK = ProbeSettings(steps=3, batch_size=16)


def test_the_probe_tool_prints_both_encoders_and_is_deterministic(probed, capsys, one_thread):
    checkpoint, peptides = probed
    report = run(
        [
            "probe",
            f"--checkpoint={checkpoint}",
            f"--data={peptides}",
            "--steps=3",
            "--batch_size=16",
        ]
    )
    out = capsys.readouterr().out
    assert report.modality == "protein" and report.headline == "accuracy"
    assert list(report.scores) == list(ENCODERS)
    for encoder, scores in report.scores.items():
        assert {"accuracy", "f1_macro", "auroc"} <= set(scores)
        assert 0.0 <= scores["accuracy"] <= 1.0
        assert f"{encoder:<20} {scores['accuracy']:.3f}" in out
    assert "protein modality, linear probe of the frozen encoder (3 steps)" in out
    again = linear_probe(str(checkpoint), str(peptides), settings=QUICK)
    assert again.scores == report.scores  # same seed, same numbers


def test_the_control_is_the_same_architecture_with_random_weights(probed, one_thread):
    checkpoint, peptides = probed
    data = ShardDataModule(labelled_dir=str(peptides))
    spec = data.label_spec()
    modules = [
        probe_module(str(checkpoint), spec, "protein", control, data, lr=1e-3)
        for control in (False, True)
    ]
    pretrained, control = ({k: v for k, v in m.state_dict().items()} for m in modules)
    assert {k: v.shape for k, v in pretrained.items()} == {k: v.shape for k, v in control.items()}
    weights = "backbone.encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(pretrained[weights], control[weights])
    assert all(m.mode == "probe" and m.head_kind == "norm_linear" for m in modules)
    assert not any(p.requires_grad for m in modules for p in m.backbone.parameters())


def test_the_probe_names_a_modality_that_cannot_read_the_data(probed):
    checkpoint, peptides = probed
    with pytest.raises(ProbeModalityError, match="no modality 'image' in this model"):
        linear_probe(str(checkpoint), str(peptides), modality="image", settings=QUICK)
    with pytest.raises(ValueError, match="neither a folder of labelled shards nor a labelled"):
        linear_probe(str(checkpoint), "no-such-corpus", settings=QUICK)


def test_the_probe_head_standardizes_and_folds_into_one_linear_layer():
    """MAE's probe head: a BatchNorm without affine parameters, then linear. In eval mode it
    is one linear layer (what ``mmm export`` writes), whatever the features' scale."""
    torch.manual_seed(0)
    head = ClassifierHead(8, 3, kind="norm_linear").train()
    for _ in range(3):
        head(torch.randn(64, 8) * 50 + 7)  # running statistics of large, shifted features
    head.eval()
    x = torch.randn(5, 8) * 50 + 7
    weight, bias = head.output_layer()
    torch.testing.assert_close(head(x), x @ weight.T + bias, rtol=1e-4, atol=1e-4)
    assert head.norm.weight is None  # no affine parameters: the linear layer is the probe


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


def test_the_modality_is_the_one_whose_tokenizer_reads_the_member():
    batcher = _image_audio_module().batcher
    assert probe_modality(batcher, "png") == "image"
    assert probe_modality(batcher, "wav") == "audio"
    assert probe_modality(batcher, "png", "image") == "image"
    with pytest.raises(ProbeModalityError, match=r"'png' members, which this model's 'audio' "):
        probe_modality(batcher, "png", "audio")
    with pytest.raises(ProbeModalityError, match=r"none of this model's modalities .* reads"):
        probe_modality(batcher, PROTEIN_MEMBER)
    twice = MultimodalBatcher(
        {"a": ProteinTokenizer(), "b": ProteinTokenizer()}, optional=frozenset({"b"})
    )
    with pytest.raises(ProbeModalityError, match=r"\['a', 'b'\] all read: name the one"):
        probe_modality(twice, PROTEIN_MEMBER)


# ------------------------------------------------------------------ the online probe
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
        **QUIET_TRAINER,
        accelerator="cpu",
    )
    L.seed_everything(0)
    loaders = [DataLoader(batches, batch_size=None) for _ in range(2)]
    trainer.fit(module, train_dataloaders=loaders[0], val_dataloaders=loaders[1])
    return module, trainer


def test_online_probe_leaves_pretraining_unchanged_and_logs_accuracy():
    pytest.importorskip("modlamp")  # amp-labelled
    alone, _ = _train([])
    probe = OnlineLinearProbe(data="amp", batch_size=16, limit=96)
    probed, trainer = _train([probe])
    for (name, a), (_, b) in zip(alone.named_parameters(), probed.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    accuracy = float(trainer.callback_metrics["probe/accuracy"])
    assert 0.0 <= accuracy <= 1.0
    assert probe.probe.weight.grad is not None  # the probe itself did learn


def test_online_probe_rejects_bad_arguments():
    with pytest.raises(ValueError, match="limit must be >= 1"):
        OnlineLinearProbe(limit=0)
    with pytest.raises(ValueError, match="'nope' is no labelled corpus"):
        OnlineLinearProbe(data="nope").setup(None, _protein_module(), "fit")


def test_online_probe_reads_one_modality_of_a_multimodal_model(one_thread):
    module = _image_audio_module()
    probe = OnlineLinearProbe(data="digits", batch_size=16, limit=64)
    probe.setup(None, module, "fit")
    assert probe.modality_name == "image"
    assert len(probe.train_items) == 64 and set(probe.train_items[0]) == {"image"}
    before = probe.probe.weight.detach().clone()
    probe.on_train_batch_end(None, module, None, None, 0)
    assert not torch.equal(before, probe.probe.weight)


# ------------------------------------------------------------------ labelled sets
@pytest.mark.skipif(not ASTERISK_EN.is_dir(), reason="asterisk-core-sounds-en-wav not installed")
def test_prompts_are_labelled_by_folder():
    corpus = labelled_corpus("prompts-labelled")
    assert corpus.spec.classes == ("en_US_f_Allison", "digits", "letters", "phonetic")
    assert corpus.spec.modality_member == "wav"
    samples = list(corpus.samples)
    labels = [json.loads(sample[LABEL_MEMBER]) for sample in samples]
    assert np.bincount(labels).tolist() == [358, 94, 61, 27]
    assert all(sample["wav"][:4] == b"RIFF" for sample in samples)


def test_select_classes_keeps_large_classes_capped():
    names = ["a"] * 7 + ["b"] * 5 + ["c"] * 2 + ["d"] * 5
    index, labels, classes = select_classes(names, min_count=3, max_classes=2, cap=4)
    assert classes == ("a", "b")  # largest first, ties by name; c too small, d beyond 2
    assert np.bincount(labels).tolist() == [4, 4]
    assert [names[i] for i in index] == [classes[k] for k in labels]
    assert index.tolist() == sorted(index.tolist())
    again = select_classes(names, min_count=3, max_classes=2, cap=4)
    np.testing.assert_array_equal(index, again[0])  # seeded
