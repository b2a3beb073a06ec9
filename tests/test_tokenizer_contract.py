"""The Tokenizer contract, checked for every tokenizer mmm ships.

A new modality's tokenizer joins ``CASES`` (and its row of ``mmm.modalities`` is checked against it) and is held to the same promises: its spec sizes
the model, decoded samples batch (``collate``, and ``collate_stream`` in the loader) into ``attention_mask``/``maskable`` of one shape with
``maskable`` inside ``attention_mask``, a batch trains through ``MaskedModelingModule``, and a
sample without its member is a ``SampleError`` naming the sample.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from mmm.data.formats import sample_source
from mmm.modalities import MODALITIES, tokenizer_class
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers import (
    AudioTokenizer,
    ContinuousSpec,
    DiscreteSpec,
    DiscreteTokenizer,
    ImageTokenizer,
    ProteinTokenizer,
    SampleError,
    SmilesTokenizer,
    TimeSeriesTokenizer,
    Tokenizer,
)
from mmm.tokenizers.audio import LogMelSettings
from mmm.tokenizers.base import copy_with, crop_window
from tests.conftest import SENTENCES
from tests.test_audio import clips
from tests.test_image import photo, png_bytes

MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[C@@H](N)C(=O)O", "[NH4+].[Cl-]"]


def _samples(extension: str, payloads: list[bytes]) -> list[dict]:
    return [
        {"__key__": f"s{i}", "__url__": "contract-000000.tar", extension: payload}
        for i, payload in enumerate(payloads)
    ]


def _text(tokenizer, tmp_path):
    return tokenizer, _samples("txt", [s.encode() for s in SENTENCES[:4]])


def _packed_text(tokenizer, tmp_path):
    return copy_with(tokenizer, pack=True), _samples("txt", [s.encode() for s in SENTENCES[:4]])


def _protein(tokenizer, tmp_path):
    return ProteinTokenizer(max_length=32), _samples("seq", [b"MKTAYIAKQR", b"gigkflhs*", b"MNV"])


def _smiles(tokenizer, tmp_path):
    source = tmp_path / "mols.smi"
    source.write_text("\n".join(MOLECULES) + "\n")
    built = SmilesTokenizer(path=str(tmp_path / "vocab.json"), train_source=str(source))
    return built, _samples("smi", [m.encode() for m in MOLECULES])


def _image(tokenizer, tmp_path):
    return ImageTokenizer(image_size=16, patch_size=4, channels=3), _samples(
        "png", [png_bytes(photo(seed)) for seed in range(3)]
    )


def _audio(tokenizer, tmp_path):
    settings = LogMelSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)
    built = AudioTokenizer(settings, duration=1.0, patch_frames=4, patch_mels=4)
    return built, clips(3, seconds=0.8)


def _timeseries(tokenizer, tmp_path):
    from mmm.data.formats.timeseries import encode_series

    rng = np.random.default_rng(0)
    series = [rng.normal(size=(2, steps)).cumsum(axis=1) for steps in (40, 23, 64)]
    return TimeSeriesTokenizer(channels=2, length=32, patch_length=8), _samples(
        "npy", [encode_series(values) for values in series]
    )


CASES: dict[str, Callable] = {
    "text": _text,
    "text-packed": _packed_text,
    "protein": _protein,
    "smiles": _smiles,
    "image": _image,
    "audio": _audio,
    "timeseries": _timeseries,
}


@pytest.fixture(params=sorted(CASES))
def case(request, tokenizer, tmp_path) -> tuple[Tokenizer, list[dict]]:
    return CASES[request.param](tokenizer, tmp_path)


def test_spec_sizes_the_model(case):
    built, _ = case
    spec = built.spec
    assert isinstance(spec, DiscreteSpec | ContinuousSpec)
    assert spec.max_length > 0
    if isinstance(spec, DiscreteSpec):
        assert isinstance(built, DiscreteTokenizer)
        assert (
            0 <= spec.mask_token_id < spec.vocab_size and 0 <= spec.pad_token_id < spec.vocab_size
        )


def test_batches_mark_real_and_maskable_positions(case):
    built, samples = case
    batch = built.collate([built.decode_sample(s) for s in samples])
    real, maskable = batch["attention_mask"], batch["maskable"]
    assert real.dtype == maskable.dtype == torch.bool
    assert real.shape == maskable.shape and real.shape[0] == len(samples)
    assert real.shape[1] <= built.spec.max_length
    assert maskable.any(dim=1).all(), "every sample must have something to predict"
    assert not (maskable & ~real).any(), "padding must never be maskable"
    if isinstance(built, DiscreteTokenizer):  # generation never samples special tokens
        special = torch.tensor(sorted(built.special_token_ids))
        assert {built.spec.pad_token_id, built.spec.mask_token_id} <= built.special_token_ids
        assert not torch.isin(batch["input_ids"][maskable], special).any()


def test_loader_batches_mark_real_and_maskable_positions(case):
    """``collate_stream`` (what the loader calls) keeps ``collate``'s promises; it may pack
    short items into fewer rows."""
    built, samples = case
    batch = built.collate_stream([built.decode_sample(s) for s in samples])
    real, maskable = batch["attention_mask"], batch["maskable"]
    assert real.shape == maskable.shape and real.shape[0] <= len(samples)
    assert real.shape[1] <= built.spec.max_length
    assert maskable.any() and not (maskable & ~real).any()


@pytest.mark.parametrize("collate", ["collate", "collate_stream"])
def test_a_batch_trains_through_the_one_objective(case, collate):
    built, samples = case
    torch.manual_seed(0)
    module = MaskedModelingModule(
        tokenizer=built, encoder=TransformerEncoder(dim=32, depth=1, num_heads=2)
    )
    batch = getattr(built, collate)([built.decode_sample(s) for s in samples])
    out = module.forward_masked(batch)
    assert out.loss.isfinite()
    part = out[module.modality_named()]
    assert part.pred.shape[0] == part.target.shape[0] == part.mask.sum()
    out.loss.backward()
    assert all(p.grad is not None for p in module.encoder.parameters())


def test_a_sample_without_its_member_names_the_sample(case):
    built, _ = case
    with pytest.raises(SampleError, match=r"contract-000000.tar.*'lost'"):
        built.decode_sample({"__key__": "lost", "__url__": "contract-000000.tar", "nope": b"x"})


def test_crop_window_modes():
    ramp = torch.arange(10)
    assert crop_window(ramp, 4, "start").tolist() == [0, 1, 2, 3]
    assert crop_window(ramp, 4, "center").tolist() == [3, 4, 5, 6]
    assert crop_window(ramp, 20, "random").tolist() == ramp.tolist()  # shorter: unchanged
    torch.manual_seed(0)
    first = [crop_window(ramp, 4, "random") for _ in range(6)]
    torch.manual_seed(0)
    again = [crop_window(ramp, 4, "random") for _ in range(6)]
    assert [w.tolist() for w in first] == [w.tolist() for w in again]  # repeats under a seed
    assert all(w.tolist() == list(range(int(w[0]), int(w[0]) + 4)) for w in first)
    assert len({int(w[0]) for w in first}) > 1  # and varies


def _augmented_image(tmp_path):
    built = ImageTokenizer(
        image_size=16, patch_size=4, random_crop_scale=(0.2, 1.0), horizontal_flip=True
    )
    return built, _samples("png", [png_bytes(photo(seed)) for seed in range(2)])


def _augmented_audio(tmp_path):
    settings = LogMelSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)
    return AudioTokenizer(settings, duration=0.4, patch_frames=4, crop="random"), clips(2, 0.8)


def _augmented_protein(tmp_path):
    long = b"MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHV"
    return ProteinTokenizer(max_length=12, crop="random"), _samples("seq", [long])


def _augmented_smiles(tmp_path):
    pytest.importorskip("rdkit")
    source = tmp_path / "mols.smi"
    source.write_text("\n".join(MOLECULES) + "\n")
    built = SmilesTokenizer(path=str(tmp_path / "v.json"), train_source=str(source), randomize=True)
    return built, _samples("smi", [b"CC(=O)Nc1ccc(O)cc1"])


def _augmented_timeseries(tmp_path):
    from mmm.data.formats.timeseries import encode_series

    long = np.sin(np.arange(100.0) / 3.0)
    return TimeSeriesTokenizer(length=16, patch_length=4, crop="random"), _samples(
        "npy", [encode_series(long)]
    )


AUGMENTED: dict[str, Callable] = {
    "image": _augmented_image,
    "audio": _augmented_audio,
    "timeseries": _augmented_timeseries,
    "protein": _augmented_protein,
    "smiles": _augmented_smiles,
}


def _views(tokenizer: Tokenizer, sample: dict, draws: int = 8) -> list:
    views = []
    for seed in range(draws):
        torch.manual_seed(seed)
        item = tokenizer.decode_sample(sample)
        views.append(item.features if hasattr(item, "features") else item)
    return views


def _distinct(views: list) -> int:
    return len({v.numpy().tobytes() if isinstance(v, torch.Tensor) else v for v in views})


@pytest.mark.parametrize("name", sorted(AUGMENTED))
def test_evaluation_sees_the_data_not_a_random_view(name, tmp_path):
    """Training draws random views; ``for_evaluation`` decodes every sample one way, so
    held-out numbers repeat. The model-facing spec is the same for both."""
    built, samples = AUGMENTED[name](tmp_path)
    evaluation = built.for_evaluation()
    assert evaluation.spec == built.spec
    assert _distinct(_views(built, samples[0])) > 1, "augmentation should vary in training"
    for sample in samples:
        assert _distinct(_views(evaluation, sample)) == 1
    assert _distinct(_views(built, samples[0])) > 1, "the training tokenizer is unchanged"


def test_evaluation_decoding_repeats(case):
    built, samples = case
    evaluation = built.for_evaluation()
    assert evaluation.spec == built.spec
    assert all(_distinct(_views(evaluation, sample, draws=3)) == 1 for sample in samples)


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_the_modality_table_agrees_with_its_tokenizer_and_reader(name):
    """``mmm.modalities`` is the one list of modalities: each row names a tokenizer whose
    modality name, members and kind are the row's, and a reader ``mmm shards`` has."""
    info = MODALITIES[name]
    tokenizer = tokenizer_class(name)
    assert tokenizer.modality_name == name
    assert tuple(tokenizer.sample_keys) == info.members
    assert issubclass(tokenizer, DiscreteTokenizer) == info.discrete
    if info.reader is not None:
        assert callable(sample_source(info.reader))


def test_every_tokenizer_case_is_a_row_of_the_modality_table(case):
    tokenizer, _ = case
    assert type(tokenizer) is tokenizer_class(tokenizer.modality_name)


def test_a_blank_batch_holds_positions_to_generate_whole(case):
    """``blank`` (what any-to-any generation starts a target from): the asked number of real,
    maskable positions per row, none holding data (mask tokens, or zero vectors)."""
    built, _ = case
    batch = built.blank([2, 3])
    assert batch["maskable"].sum(dim=1).tolist() == [2, 3]
    assert not (batch["maskable"] & ~batch["attention_mask"]).any()
    if isinstance(built, DiscreteTokenizer):
        assert (batch["input_ids"][batch["maskable"]] == built.spec.mask_token_id).all()
    else:
        assert not batch["patches"].any()
    with pytest.raises(ValueError, match="lengths"):
        built.blank([built.spec.max_length + 1])
