"""Export: stock transformers / timm classes compute exactly what mmm computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import save_for_hf
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    EsmConfig,
    EsmForMaskedLM,
    pipeline,
)

from mmm.cli import run
from mmm.export import (
    export_masked_lm,
    export_timm,
    init_from,
    load_timm,
    spectrogram_image,
    to_masked_lm,
)
from mmm.export.parts import MappingError, one_modality_module
from mmm.inference import fill_mask, load_module
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule, ModalityConfig
from mmm.tokenizers.audio import AudioItem, AudioTokenizer, LogMelSettings
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


def _randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (LayerNorm gains and biases too), so no mapping error hides behind
    a zero or a one. Returns ``model`` in eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(std=0.3)
    return model.eval()


def _module(tokenizer, **encoder_options) -> MaskedModelingModule:
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0, **encoder_options)
    return _randomized(MaskedModelingModule(tokenizer=tokenizer, encoder=encoder))


#: The two trunks and the stock class each maps onto.
TRUNKS = {"pre-LN": (True, EsmForMaskedLM), "post-LN": (False, BertForMaskedLM)}


@pytest.fixture(params=["text", "protein", "smiles"])
def tokenizer_and_inputs(request, tmp_path):
    if request.param == "text":
        tokenizer = request.getfixturevalue("tokenizer")
        texts = [s.replace(s.split()[1], tokenizer.mask_token, 1) for s in SENTENCES[:3]]
        return tokenizer, SENTENCES[:3], texts
    if request.param == "protein":
        masked = [p[:3] + "<mask>" + p[4:] for p in PROTEINS]
        return ProteinTokenizer(max_length=40), PROTEINS, masked
    smi = tmp_path / "train.smi"
    smi.write_text("\n".join(SMILES) + "\n")
    tokenizer = SmilesTokenizer(path=str(tmp_path / "vocab.json"), train_source=str(smi))
    masked = [s[:1] + "<mask>" + s[2:] for s in SMILES[:3]]
    return tokenizer, SMILES[:3], masked


@pytest.fixture(params=list(TRUNKS))
def module_and_inputs(request, tokenizer_and_inputs):
    """Every discrete modality on both trunks: (module, sequences, masked sequences)."""
    tokenizer, sequences, masked = tokenizer_and_inputs
    norm_first, stock_class = TRUNKS[request.param]
    module = _module(tokenizer, norm_first=norm_first)
    assert type(to_masked_lm(module)) is stock_class
    return module, sequences, masked


def test_stock_logits_equal_mmm_logits(module_and_inputs):
    module, sequences, _ = module_and_inputs
    assert_same_logits(module, to_masked_lm(module), sequences)


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


def _image_inputs() -> tuple[ImageTokenizer, dict, torch.Tensor]:
    tokenizer = ImageTokenizer(image_size=16, patch_size=4, channels=3)
    images = torch.rand(2, 3, 16, 16)
    return tokenizer, tokenizer.collate(list(images)), images


def _audio_inputs(patch_mels: int | None = 8) -> tuple[AudioTokenizer, dict, torch.Tensor]:
    """Full-length spectrograms (the ViT has no padding mask) on a (time, frequency) grid,
    or time frames with ``patch_mels=None``."""
    features = LogMelSettings(n_mels=16)
    tokenizer = AudioTokenizer(features, duration=0.3, patch_frames=4, patch_mels=patch_mels)
    torch.manual_seed(0)
    spectrograms = torch.randn(2, 16, tokenizer.num_frames)  # (B, F, T)
    items = [AudioItem(x, tokenizer.num_frames) for x in spectrograms]
    return tokenizer, tokenizer.collate(items), spectrogram_image(spectrograms)


PATCH_INPUTS = {
    "image": _image_inputs,
    "audio-patches": _audio_inputs,
    "audio-frames": lambda: _audio_inputs(patch_mels=None),
}


def test_one_modality_of_a_multimodal_model_exports_exactly(tmp_path):
    """``mmm export --modality NAME``: the modality's embedder and head with the shared trunk,
    its modality embedding folded into the embedder, compute what the multimodal model
    computes on samples that carry that modality alone."""
    image_tokenizer, image_batch, pixels = _image_inputs()
    modalities = {
        "protein": ModalityConfig(ProteinTokenizer(max_length=32)),
        "image": ModalityConfig(image_tokenizer),
    }
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
    module = _randomized(MaskedModelingModule(modalities=modalities, encoder=encoder))
    protein = module.tokenizers["protein"].collate(PROTEINS)
    real = protein["attention_mask"]  # (B, L)
    model = to_masked_lm(one_modality_module(module, "protein"))
    export_timm(one_modality_module(module, "image"), tmp_path / "vit")
    with torch.no_grad():
        expected = module.modalities["protein"].head(module({"protein": protein})["protein"])
        logits = model(input_ids=protein["input_ids"], attention_mask=real.long()).logits
        torch.testing.assert_close(logits[real], expected[real])
        hidden = load_timm(tmp_path / "vit").forward_features(pixels)
        torch.testing.assert_close(hidden, module({"image": image_batch})["image"])


@pytest.mark.parametrize("kind", list(PATCH_INPUTS))
@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_mae_encoder_loads_in_stock_timm_with_equal_hidden_states(kind, eps, tmp_path):
    """``timm.create_model("local-dir:DIR")`` alone reproduces an encoder built with timm's
    eps (1e-6); ``load_timm`` passes any other eps on."""
    tokenizer, batch, pixels = PATCH_INPUTS[kind]()
    module = _module(tokenizer, layer_norm_eps=eps)
    name = module.modality_named()
    export_timm(module, tmp_path / "vit")
    models = [load_timm(tmp_path / "vit")]
    if eps == 1e-6:
        models.append(timm.create_model(f"local-dir:{tmp_path / 'vit'}", pretrained=True).eval())
    with torch.no_grad():
        for model in models:
            torch.testing.assert_close(model.forward_features(pixels), module(batch)[name])
            torch.testing.assert_close(model(pixels), module.embed(batch)[1])  # average pooling


@pytest.mark.parametrize("kind", list(PATCH_INPUTS))
def test_init_from_a_timm_directory_reproduces_its_hidden_states(kind, tmp_path):
    tokenizer, batch, pixels = PATCH_INPUTS[kind]()
    export_timm(_module(tokenizer, layer_norm_eps=1e-6), tmp_path / "vit")
    torch.manual_seed(3)
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0, layer_norm_eps=1e-6)
    module = init_from(
        MaskedModelingModule(tokenizer=tokenizer, encoder=encoder), tmp_path / "vit"
    ).eval()
    source = load_timm(tmp_path / "vit")
    with torch.no_grad():
        hidden = module(batch)[module.modality_named()]
        torch.testing.assert_close(hidden, source.forward_features(pixels))


def test_init_from_a_class_token_vit_of_another_grid_drops_the_token_and_resamples(tmp_path):
    """A timm ViT as MAE releases it (class token, 8x8 grid of 32 px images) starts a 16 px
    image MAE: blocks and patch projection copied, positions resampled to the 4x4 grid."""
    source = timm.create_model(
        "vit_base_patch16_224",
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=0,
    )
    save_for_hf(source, str(tmp_path / "mae"), safe_serialization=True)
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0, layer_norm_eps=1e-6)
    with pytest.warns(UserWarning, match="1 class/register token"):
        module = init_from(
            MaskedModelingModule(
                tokenizer=ImageTokenizer(image_size=16, patch_size=4, channels=3),
                encoder=encoder,
            ),
            tmp_path / "mae",
        )
    torch.testing.assert_close(module.encoder.blocks.state_dict(), source.blocks.state_dict())
    resampled = resample_abs_pos_embed(source.pos_embed[:, 1:], [4, 4], [8, 8], 0)
    torch.testing.assert_close(module.modalities["image"].embedder.positions, resampled[0])


def test_init_from_a_timm_directory_refuses_other_sizes(tmp_path):
    tokenizer, _, _ = _image_inputs()
    export_timm(_module(tokenizer, layer_norm_eps=1e-6), tmp_path / "vit")
    for options, setting in [({"num_heads": 2}, "num_heads=4"), ({}, "layer_norm_eps=1e-06")]:
        encoder_options = {"dim": 32, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0} | options
        with pytest.raises(ValueError, match=setting):
            init_from(
                MaskedModelingModule(
                    tokenizer=tokenizer, encoder=TransformerEncoder(**encoder_options)
                ),
                tmp_path / "vit",
            )


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
    model = EsmForMaskedLM(EsmConfig(**{**settings, **overrides}))
    _randomized(model, seed=1).save_pretrained(str(tmp_path / "esm"))
    return str(tmp_path / "esm")


def _tiny_bert(tmp_path, text_tokenizer, **overrides) -> str:
    """A randomly initialized ``BertForMaskedLM`` (BERT's eps 1e-12, a random token-type
    table) over the text tokenizer's vocabulary, saved locally."""
    spec = text_tokenizer.spec
    settings = {
        "vocab_size": spec.vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": spec.max_length + 8,
        "pad_token_id": spec.pad_token_id,
    }
    model = BertForMaskedLM(BertConfig(**{**settings, **overrides}))
    _randomized(model, seed=2).save_pretrained(str(tmp_path / "bert"))
    return str(tmp_path / "bert")


def _protein_module(start: Path | None = None) -> MaskedModelingModule:
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
    module = MaskedModelingModule(tokenizer=ProteinTokenizer(max_length=40), encoder=encoder)
    return module if start is None else init_from(module, start)


def test_init_from_esm_directory_reproduces_its_logits(tmp_path):
    directory = _tiny_esm(tmp_path)
    module = _protein_module(start=directory).eval()
    assert_same_logits(module, EsmForMaskedLM.from_pretrained(directory).eval(), PROTEINS)


def _post_ln_text_module(tokenizer, start: Path | None = None) -> MaskedModelingModule:
    encoder = TransformerEncoder(
        dim=32, depth=2, num_heads=4, mlp_ratio=2.0, norm_first=False, layer_norm_eps=1e-12
    )
    module = MaskedModelingModule(tokenizer=tokenizer, encoder=encoder)
    return module if start is None else init_from(module, start)


def test_init_from_bert_directory_reproduces_its_logits(tmp_path, tokenizer):
    """Segment 0's token-type row, which BERT adds everywhere, is folded into positions."""
    directory = _tiny_bert(tmp_path, tokenizer)
    module = _post_ln_text_module(tokenizer, start=directory).eval()
    assert_same_logits(module, BertForMaskedLM.from_pretrained(directory).eval(), SENTENCES[:3])


def test_init_from_refuses_layouts_that_do_not_map(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="position_embedding_type='rotary'"):
        _protein_module(start=_tiny_esm(tmp_path, position_embedding_type="rotary"))
    with pytest.raises(ValueError, match="hidden_size=48"):
        _protein_module(start=_tiny_esm(tmp_path, hidden_size=48))
    bert = _tiny_bert(tmp_path, tokenizer)
    with pytest.raises(ValueError, match="norm_first=false"):
        _protein_module(start=bert)  # pre-LN trunk, post-LN source
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        _post_ln_text_module(tokenizer, start=_tiny_bert(tmp_path, tokenizer, hidden_act="relu"))


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


def test_a_converter_names_a_modality_without_the_part_it_maps():
    """The export family is the tokenizer's claim; a modality that claims one without the
    part its converter maps gets an error naming the modality, not an AttributeError."""
    image = _module(ImageTokenizer(image_size=16, patch_size=4, channels=3))
    with pytest.raises(
        MappingError, match=r"maps token ids; the image modality \(ImageTokenizer\)"
    ):
        to_masked_lm(image)
