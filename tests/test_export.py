"""Export: stock transformers / timm classes compute exactly what mmm computes."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, EsmConfig, EsmForMaskedLM, pipeline

from mmm.cli import run
from mmm.export import export_masked_lm, export_timm, load_timm, to_esm
from mmm.inference import fill_mask, load_module
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.image import ImageTokenizer
from mmm.tokenizers.protein import ProteinTokenizer
from mmm.tokenizers.smiles import SmilesTokenizer
from tests.conftest import SENTENCES
from tests.helpers import fit_protein_checkpoint

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[C@H](N)C(=O)O", "ClC(Cl)Cl", "CCN(CC)CC"]
PROTEINS = ["MKTLLVAGA", "ACDEFGHIKLMNPQRSTVWY", "MSTNPKPQRKTKRNTNRRPQDVKFPGG"]


def assert_same_logits(module: MaskedModelingModule, model: torch.nn.Module, sequences) -> None:
    """mmm's and a Hugging Face masked LM's logits agree (fp32) at every real position of a
    padded batch (ESM zeroes padding positions; mmm masks them out of attention)."""
    name = module.modality_named()
    batch = module.tokenizers[name].collate(sequences)
    real = batch["attention_mask"]  # (B, L)
    assert not real.all()  # rows of different lengths: padding is present, and handled
    with torch.no_grad():
        expected = module.modalities[name].head(module(batch)[name])  # (B, L, V)
        logits = model(input_ids=batch["input_ids"], attention_mask=real.long()).logits
    torch.testing.assert_close(logits[real], expected[real])


def _randomized(module: MaskedModelingModule) -> MaskedModelingModule:
    """Every weight random (LayerNorm gains and biases too), so no mapping error hides behind
    a zero or a one."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(std=0.3)
    return module.eval()


def _module(tokenizer) -> MaskedModelingModule:
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
    return _randomized(MaskedModelingModule(tokenizer=tokenizer, encoder=encoder))


@pytest.fixture(params=["text", "protein", "smiles"])
def module_and_inputs(request, tmp_path):
    if request.param == "text":
        tokenizer = request.getfixturevalue("tokenizer")
        texts = [s.replace(s.split()[1], tokenizer.mask_token, 1) for s in SENTENCES[:3]]
        return _module(tokenizer), SENTENCES[:3], texts
    if request.param == "protein":
        masked = [p[:3] + "<mask>" + p[4:] for p in PROTEINS]
        return _module(ProteinTokenizer(max_length=40)), PROTEINS, masked
    smi = tmp_path / "train.smi"
    smi.write_text("\n".join(SMILES) + "\n")
    tokenizer = SmilesTokenizer(path=str(tmp_path / "vocab.json"), train_source=str(smi))
    masked = [s[:1] + "<mask>" + s[2:] for s in SMILES[:3]]
    return _module(tokenizer), SMILES[:3], masked


def test_esm_logits_equal_mmm_logits(module_and_inputs):
    module, sequences, _ = module_and_inputs
    assert_same_logits(module, to_esm(module), sequences)


def test_exported_directory_loads_with_auto_classes_and_pipeline(module_and_inputs, tmp_path):
    module, sequences, masked = module_and_inputs
    export_masked_lm(module, tmp_path / "export")
    directory = str(tmp_path / "export")
    hf_tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForMaskedLM.from_pretrained(directory).eval()
    name = module.modality_named()
    batch = module.tokenizers[name].collate(sequences)
    encoded = hf_tokenizer(sequences, padding=True, return_tensors="pt")
    width = encoded["input_ids"].shape[1]
    torch.testing.assert_close(encoded["input_ids"], batch["input_ids"][:, :width])
    with torch.no_grad():
        logits = model(**encoded).logits
        expected = module.modalities[name].head(module(batch)[name])[:, :width]
    real = encoded["attention_mask"].bool()
    torch.testing.assert_close(logits[real], expected[real])

    fill = pipeline("fill-mask", model=directory, top_k=5, device="cpu")
    for text, [candidates] in zip(masked, fill_mask(module, masked, top_k=5), strict=True):
        assert [r["token"] for r in fill(text)] == [c.token_id for c in candidates]


def test_image_encoder_loads_in_timm_with_equal_hidden_states(tmp_path):
    tokenizer = ImageTokenizer(image_size=16, patch_size=4, channels=3)
    module = _module(tokenizer)
    images = torch.rand(2, 3, 16, 16)
    batch = tokenizer.collate(list(images))
    export_timm(module, tmp_path / "vit")
    model = load_timm(tmp_path / "vit")
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), module(batch)["image"])
        torch.testing.assert_close(model(images), module.embed(batch)[1])  # average pooling


def _tiny_esm(tmp_path, **overrides) -> str:
    """A randomly initialized ``EsmForMaskedLM`` in mmm's protein layout, saved locally."""
    settings = {
        "vocab_size": 34,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "position_embedding_type": "absolute",
        "emb_layer_norm_before": True,
        "token_dropout": False,
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "mask_token_id": 32,
    }
    torch.manual_seed(1)
    model = EsmForMaskedLM(EsmConfig(**{**settings, **overrides}))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(std=0.3)
    model.save_pretrained(str(tmp_path / "esm"))
    return str(tmp_path / "esm")


def _protein_module(**kwargs) -> MaskedModelingModule:
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
    return MaskedModelingModule(
        tokenizer=ProteinTokenizer(max_length=40), encoder=encoder, **kwargs
    )


def test_init_from_esm_directory_reproduces_its_logits(tmp_path):
    directory = _tiny_esm(tmp_path)
    module = _protein_module(init_from=directory).eval()
    assert_same_logits(module, EsmForMaskedLM.from_pretrained(directory).eval(), PROTEINS)


def test_init_from_refuses_layouts_that_do_not_map(tmp_path):
    with pytest.raises(ValueError, match="position_embedding_type='rotary'"):
        _protein_module(init_from=_tiny_esm(tmp_path, position_embedding_type="rotary"))
    with pytest.raises(ValueError, match="hidden_size=48"):
        _protein_module(init_from=_tiny_esm(tmp_path, hidden_size=48))


def test_fit_from_an_esm_directory_then_export(tmp_path, monkeypatch):
    """``mmm fit --model.init_from DIR`` (the protein YAML, shrunk) -> ``mmm export`` ->
    ``AutoModelForMaskedLM``."""
    monkeypatch.chdir(tmp_path)
    checkpoint = fit_protein_checkpoint(
        tmp_path,
        PROTEINS * 4,
        f"--model.init_from={_tiny_esm(tmp_path)}",
        "--model.tokenizer.max_length=40",
        "--model.encoder.dim=32",
        "--model.encoder.depth=2",
        "--model.encoder.num_heads=4",
        "--model.encoder.mlp_ratio=2.0",
    )
    run(["export", f"--checkpoint={checkpoint}", "--output=exported"])
    model = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "exported")).eval()
    assert_same_logits(load_module(str(checkpoint)), model, PROTEINS)
