"""A modality defined in this file alone, plugged into mmm: its tokenizer, its format reader
and its row in the modality table, then ``mmm shards``, ``mmm fit`` (two steps), a linear
probe and ``mmm export`` through it. What ``docs/modalities.md`` asks of a contributor is
all it takes; no file of mmm names it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from mmm.cli import run
from mmm.commands import export_command
from mmm.data.formats import register_source
from mmm.data.labelled import write_labelled_shards
from mmm.data.labels import LABEL_MEMBER, LabelSpec, encode_label
from mmm.export import MappingError
from mmm.finetune.probe import ProbeSettings, linear_probe
from mmm.inference import load_module
from mmm.modalities import MODALITIES, ModalityInfo, register_modality, tokenizer_class
from mmm.tokenizers.base import DiscreteSpec, DiscreteTokenizer, read_text_member

#: The toy modality's sample member: a DNA sequence.
DNA_MEMBER = "dna"
#: Padding, the mask (``N``, an unknown base), other characters, then the four bases.
TOKENS = ("<pad>", "N", "<unk>", "A", "C", "G", "T")
PAD_ID, MASK_ID, UNK_ID = 0, 1, 2


class DnaTokenizer(DiscreteTokenizer):
    """One token per base (A, C, G, T); ``N`` is the mask; anything else is unknown."""

    modality_name = "dna"
    sample_keys = (DNA_MEMBER,)

    def __init__(self, max_length: int = 32) -> None:
        self.max_length = max_length

    @property
    def spec(self) -> DiscreteSpec:
        return DiscreteSpec(len(TOKENS), PAD_ID, MASK_ID, self.max_length)

    @property
    def mask_token(self) -> str:
        return "N"

    def id_to_token(self, token_id: int) -> str:
        return TOKENS[token_id]

    @property
    def special_token_ids(self) -> frozenset[int]:
        return frozenset({PAD_ID, MASK_ID, UNK_ID})

    def decode(self, ids: list[int]) -> str:
        return "".join(TOKENS[i] for i in ids if i not in self.special_token_ids)

    def decode_sample(self, sample: dict) -> str:
        return read_text_member(sample, DNA_MEMBER).strip().upper()

    def collate(self, items: list[str]) -> dict[str, Tensor]:
        ids = [
            [TOKENS.index(c) if c in TOKENS else UNK_ID for c in s[: self.max_length]]
            for s in items
        ]
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), PAD_ID, dtype=torch.long)  # (B, L)
        for row, values in enumerate(ids):
            input_ids[row, : len(values)] = torch.tensor(values)
        attention_mask = input_ids != PAD_ID  # (B, L)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "maskable": attention_mask,
        }


@register_source("dna")
def dna_samples(paths: list[str]) -> Iterator[dict]:
    """One sample per line of each text file."""
    for path in paths:
        for index, line in enumerate(Path(path).read_text().split()):
            yield {"__key__": f"{Path(path).stem}-{index}", DNA_MEMBER: line.encode()}


DNA = ModalityInfo("dna", f"{__name__}:DnaTokenizer", (DNA_MEMBER,), True, "dna")


@pytest.fixture
def dna_row() -> Iterator[ModalityInfo]:
    register_modality(DNA)
    yield DNA
    del MODALITIES["dna"]


def _sequences(count: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """GC-rich and AT-rich sequences, labelled 1 and 0."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    bases = [("GC" if label else "AT") * 3 + "ACGT" for label in labels]
    return ["".join(rng.choice(list(b), size=24)) for b in bases], labels


def test_a_modality_defined_outside_mmm_shards_fits_probes_and_refuses_export(
    dna_row, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert tokenizer_class("dna") is DnaTokenizer
    sequences, labels = _sequences(32)
    (tmp_path / "dna.txt").write_text("\n".join(sequences) + "\n")
    shards = tmp_path / "shards"
    run(
        ["shards", f"--inputs={tmp_path / 'dna.txt'}", f"--output={shards}/train", "--modality=dna"]
    )
    run(
        [
            "fit",
            "--model.tokenizer=tests.test_plugin_modality.DnaTokenizer",
            "--model.encoder=mmm.models.TransformerEncoder",
            "--model.encoder.dim=16",
            "--model.encoder.depth=1",
            "--model.encoder.num_heads=2",
            f"--data.train_shards={shards}/train-*.tar",
            "--data.num_workers=0",
            "--data.batch_size=8",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--seed_everything=0",
        ]
    )
    [checkpoint] = sorted(tmp_path.rglob("*.ckpt"))
    module = load_module(str(checkpoint))
    assert isinstance(module.tokenizers["dna"], DnaTokenizer)
    labelled = tmp_path / "labelled"
    samples = [
        {"__key__": f"dna{i}", DNA_MEMBER: s.encode(), LABEL_MEMBER: encode_label(int(label))}
        for i, (s, label) in enumerate(zip(sequences, labels, strict=True))
    ]
    write_labelled_shards(samples, labelled, LabelSpec("classification", ("AT", "GC"), "dna"))
    settings = ProbeSettings(steps=2, batch_size=8)
    report = linear_probe(str(checkpoint), str(labelled), settings=settings)
    assert report.modality == "dna"
    assert all(0.0 <= scores["accuracy"] <= 1.0 for scores in report.scores.values())
    with pytest.raises(MappingError, match="not supported for the dna modality"):
        export_command(checkpoint=str(checkpoint), output=str(tmp_path / "exported"))


def test_a_modality_name_is_registered_once(dna_row):
    other = ModalityInfo("dna", "mmm.tokenizers.text:TextTokenizer", (DNA_MEMBER,), True)
    with pytest.raises(ValueError, match="modality 'dna' is registered already"):
        register_modality(other)
    assert register_modality(DNA) is DNA  # the same row again is no conflict


def test_the_tokenizers_package_lists_the_table_and_its_plug_ins(dna_row):
    """``mmm.tokenizers`` holds no list of its own: each row's tokenizer is a name of it (what a
    config's ``class_path`` names), a plug-in's too once registered."""
    import mmm.tokenizers

    for info in MODALITIES.values():
        assert getattr(mmm.tokenizers, info.tokenizer_name) is tokenizer_class(info.name)
        assert info.tokenizer_name in dir(mmm.tokenizers)
    assert mmm.tokenizers.DnaTokenizer is DnaTokenizer
    with pytest.raises(AttributeError, match="no attribute 'RnaTokenizer'"):
        _ = mmm.tokenizers.RnaTokenizer
