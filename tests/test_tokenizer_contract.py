"""The Tokenizer contract, checked for every tokenizer mmm ships.

A new modality's tokenizer joins ``CASES`` and is held to the same promises: its spec sizes
the model, decoded samples batch into ``attention_mask``/``maskable`` of one shape with
``maskable`` inside ``attention_mask``, a batch trains through ``MaskedModelingModule``, and a
sample without its member is a ``SampleError`` naming the sample.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

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
    Tokenizer,
)
from mmm.tokenizers.audio import LogMelSettings
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


CASES: dict[str, Callable] = {
    "text": _text,
    "protein": _protein,
    "smiles": _smiles,
    "image": _image,
    "audio": _audio,
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


def test_a_batch_trains_through_the_one_objective(case):
    built, samples = case
    torch.manual_seed(0)
    module = MaskedModelingModule(
        tokenizer=built, encoder=TransformerEncoder(dim=32, depth=1, num_heads=2)
    )
    out = module.forward_masked(built.collate([built.decode_sample(s) for s in samples]))
    assert out.loss.isfinite() and out.pred.shape[0] == out.target.shape[0] == out.mask.sum()
    out.loss.backward()
    assert all(p.grad is not None for p in module.encoder.parameters())


def test_a_sample_without_its_member_names_the_sample(case):
    built, _ = case
    with pytest.raises(SampleError, match=r"contract-000000.tar.*'lost'"):
        built.decode_sample({"__key__": "lost", "__url__": "contract-000000.tar", "nope": b"x"})
