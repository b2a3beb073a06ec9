"""Several modalities on one trunk: paired batches, masking across modalities, no leaks,
unpaired samples, per-modality logs, checkpoints and fill-mask with context."""

from __future__ import annotations

import io

import lightning as L
import pytest
import torch
from PIL import Image

from mmm.cross_modal_masking import TokenBudgets
from mmm.data.shards import write_shards
from mmm.inference import embed_sequences, fill_mask, load_module
from mmm.masking import MaskedPositions, RandomMasking
from mmm.models.encoder import TransformerEncoder
from mmm.models.heads import PatchDecoderConfig
from mmm.models.sequences import Segment, pack_segments, unpack_segments
from mmm.module import MaskedModelingModule, ModalityConfig
from mmm.tokenizers import ImageTokenizer, ProteinTokenizer, SampleError
from mmm.tokenizers.multimodal import MultimodalBatcher
from tests.conftest import SENTENCES
from tests.helpers import folder_data

PROTEINS = ["MKTAYIAKQR", "GIGKFLHSAK", "MSTNPKPQRK", "ACDEFGHIKL", "MKVLAAGIVG", "PEPTIDEKKR"]


def _image_tokenizer() -> ImageTokenizer:
    return ImageTokenizer(image_size=8, patch_size=4, channels=1)


def _config(tokenizer, kind: str, **options) -> ModalityConfig:
    if kind == "continuous":
        options.setdefault("decoder", PatchDecoderConfig(dim=16, depth=1, num_heads=2))
        options.setdefault("masking", RandomMasking(ratio=0.5))
    return ModalityConfig(tokenizer, **options)


def _kinds(tokenizer):
    """(modality name, config kind, tokenizer, items) of every pairing in the tests."""
    images = [torch.rand(1, 8, 8) for _ in range(6)]
    return {
        "text": ("discrete", tokenizer, SENTENCES[:6]),
        "protein": ("discrete", ProteinTokenizer(max_length=16), PROTEINS),
        "image": ("continuous", _image_tokenizer(), images),
        "sketch": ("continuous", _image_tokenizer(), [torch.rand(1, 8, 8) for _ in range(6)]),
    }


def _module(parts, budgets=None, **configs) -> MaskedModelingModule:
    modalities = {
        name: _config(tok, kind, **configs.get(name, {})) for name, (kind, tok, _) in parts.items()
    }
    encoder = TransformerEncoder(dim=32, depth=1, num_heads=2, mlp_ratio=2.0)
    return MaskedModelingModule(modalities=modalities, encoder=encoder, budgets=budgets)


def _batch(module, parts, present=None):
    """A paired batch of 6 samples; ``present[name]`` lists the samples carrying ``name``."""
    items = []
    for row in range(6):
        item = {}
        for name, (_, _, values) in parts.items():
            if present is None or row in present.get(name, range(6)):
                item[name] = values[row]
        items.append(item)
    return module.batcher.collate(items)


PAIRS = [("text", "protein"), ("text", "image"), ("image", "sketch")]


@pytest.fixture(params=PAIRS, ids=lambda pair: "+".join(pair))
def pair(request, tokenizer):
    kinds = _kinds(tokenizer)
    return {name: kinds[name] for name in request.param}


def test_a_paired_batch_trains_with_loss_on_each_modalitys_hidden_positions(pair):
    torch.manual_seed(0)
    module = _module(pair)
    batch = _batch(module, pair)
    out = module.forward_masked(batch)
    assert set(out.modalities) == set(pair)
    total = sum(part.loss for part in out.modalities.values())
    torch.testing.assert_close(out.loss, total)
    for name, part in out.modalities.items():
        sub = batch[name]
        assert part.mask.any() and not (part.mask & ~sub["maskable"]).any()
        assert part.target.shape[0] == part.pred.shape[0] == int(part.mask.sum())
    out.loss.backward()
    for name in pair:
        grads = [p.grad for p in module.modalities[name].parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert module.modality_embeddings.grad is not None


@pytest.mark.parametrize("dropped", [0, 1])
def test_a_dropped_modality_is_hidden_whole_and_cannot_leak(pair, dropped):
    """Dropping hides every maskable position of the modality; changing its content changes
    nothing the model predicts for it (its values never reach the trunk)."""
    torch.manual_seed(0)
    names = list(pair)
    gone, kept = names[dropped], names[1 - dropped]
    module = _module(pair, **{gone: {"drop_probability": 1.0}}).eval()
    batch = _batch(module, pair)
    masked = module.choose_masks(module.modality_batch(batch))
    torch.testing.assert_close(masked[gone].mask, batch[gone]["maskable"])
    assert masked[gone].mask_only.all()
    assert not torch.equal(masked[kept].mask, batch[kept]["maskable"])  # the other one stays
    changed = {name: dict(sub) for name, sub in batch.items()}
    if "input_ids" in batch[gone]:
        ids = batch[gone]["input_ids"]
        noise = torch.randint_like(ids, 5, ProteinTokenizer(max_length=16).spec.vocab_size)
        changed[gone]["input_ids"] = torch.where(batch[gone]["maskable"], noise % 20 + 5, ids)
    else:
        changed[gone]["patches"] = torch.rand_like(batch[gone]["patches"])
    with torch.no_grad():  # reseeded: the kept modality's BERT replacements are random
        torch.manual_seed(1)
        first = module.forward_masked(batch, masked)[gone].pred
        torch.manual_seed(1)
        second = module.forward_masked(changed, masked)[gone].pred
    torch.testing.assert_close(first, second)


def test_every_sample_keeps_one_modality_when_all_are_dropped(pair):
    torch.manual_seed(0)
    module = _module(pair, **{name: {"drop_probability": 1.0} for name in pair})
    batch = _batch(module, pair)
    masked = module.choose_masks(module.modality_batch(batch))
    whole = torch.stack([masked[n].mask.eq(batch[n]["maskable"]).all(dim=1) for n in pair])
    assert not whole.all(dim=0).any()  # no sample lost everything
    assert whole.any(dim=0).all()  # and each lost all but one


def test_token_budgets_split_visible_and_target_positions_across_modalities(tokenizer):
    torch.manual_seed(0)
    parts = {k: v for k, v in _kinds(tokenizer).items() if k in ("text", "image")}
    module = _module(parts, budgets=TokenBudgets(visible=6, target=5, alpha=0.5))
    inputs = module.modality_batch(_batch(module, parts))
    masked = module.choose_masks(inputs)
    shown = sum(
        (inputs[n]["maskable"] & ~masked[n].mask & ~masked[n].left_out).sum(dim=1) for n in parts
    )
    targets = sum(masked[n].mask.sum(dim=1) for n in parts)
    assert (shown == 6).all() and (targets == 5).all()  # each sample has the positions
    text = masked["text"]
    seen = module.modalities["text"].encoder_positions(inputs["text"], text)
    assert not (seen & text.left_out).any() and (seen & text.mask).any() | ~text.mask.any()
    module.forward_masked(inputs, masked).loss.backward()


def test_samples_lacking_a_modality_train_beside_paired_ones(tokenizer):
    """Unpaired mixing: a batch where some samples carry only one modality. Each sample's
    states are those it gets alone (no position of another sample leaks in)."""
    torch.manual_seed(0)
    parts = {k: v for k, v in _kinds(tokenizer).items() if k in ("text", "protein")}
    module = _module(parts).eval()
    present = {"text": [0, 1, 2, 5], "protein": [2, 3, 4, 5]}
    batch = _batch(module, parts, present)
    assert batch["text"]["rows"].tolist() == present["text"]
    with torch.no_grad():
        together = module(batch)
        alone = module({"text": module.tokenizers["text"].collate([SENTENCES[0]])})
    real = int(alone["text"].shape[1])
    torch.testing.assert_close(together["text"][0, :real], alone["text"][0], atol=1e-5, rtol=1e-4)
    module.train().forward_masked(batch).loss.backward()


def test_pack_and_unpack_route_every_kept_position_back():
    torch.manual_seed(0)
    a = torch.randn(3, 4, 2)
    b = torch.randn(2, 5, 2)
    keep_a = torch.rand(3, 4) > 0.4
    keep_b = torch.rand(2, 5) > 0.4
    segments = {"a": Segment(a, keep_a), "b": Segment(b, keep_b, rows=torch.tensor([0, 2]))}
    x, layout = pack_segments(segments, batch_size=3)
    counts = keep_a.sum(1) + torch.zeros(3, dtype=torch.long).index_add(
        0, torch.tensor([0, 2]), keep_b.sum(1)
    )
    assert x.shape[1] == int(counts.max())
    back = unpack_segments(x, layout)
    torch.testing.assert_close(back["a"], a * keep_a.unsqueeze(-1))
    torch.testing.assert_close(back["b"], b * keep_b.unsqueeze(-1))


def test_batcher_reads_each_modality_and_names_a_sample_missing_one(tokenizer):
    image = io.BytesIO()
    Image.new("L", (8, 8), 128).save(image, format="PNG")
    batcher = MultimodalBatcher({"text": tokenizer, "image": _image_tokenizer()})
    sample = {"__key__": "a", "txt": b"the quick brown fox", "png": image.getvalue()}
    batch = batcher.collate([batcher.decode_sample(sample)])
    assert set(batch) == {"text", "image"} and batch["image"]["patches"].shape == (1, 4, 16)
    with pytest.raises(SampleError, match=r"shard s\.tar, key 'b'"):
        batcher.decode_sample({"__key__": "b", "__url__": "s.tar", "txt": b"only text"})
    optional = MultimodalBatcher({"text": tokenizer, "image": _image_tokenizer()}, {"image"})
    assert set(optional.decode_sample({"__key__": "b", "txt": b"only text"})) == {"text"}
    with pytest.raises(SampleError, match="no 'txt' member"):  # text is not optional
        optional.decode_sample({"__key__": "c", "png": image.getvalue()})
    renamed = MultimodalBatcher({"label": tokenizer}, members={"label": "cls"})
    label = renamed.decode_sample({"__key__": "d", "txt": b"ignored", "cls": b"seven"})
    assert label == {"label": "seven"}
    both = MultimodalBatcher({"text": tokenizer, "image": _image_tokenizer()}, {"text", "image"})
    with pytest.raises(SampleError, match="none of the modalities"):
        both.decode_sample({"__key__": "c", "json": b"{}"})


def test_weight_decay_is_decided_by_structure(tokenizer):
    parts = {k: v for k, v in _kinds(tokenizer).items() if k in ("text", "image")}
    exempt = _module(parts).no_weight_decay()
    assert "modalities.image.embedder.proj.weight" not in exempt  # a projection matrix
    assert "modalities.image.head.embed.weight" not in exempt
    assert "encoder.blocks.0.attn.qkv.weight" not in exempt
    assert {
        "modalities.text.embedder.tokens.weight",
        "modalities.text.embedder.positions.weight",
        "modality_embeddings",
        "modalities.image.head.mask_token",
        "encoder.blocks.0.attn.qkv.bias",
        "encoder.norm.weight",
    } <= exempt


def _paired_shards(root, tokenizer_texts):
    samples = []
    for index, text in enumerate(tokenizer_texts * 4):
        image = io.BytesIO()
        Image.new("L", (8, 8), (index * 37) % 255).save(image, format="PNG")
        samples.append({"__key__": f"s{index:03d}", "txt": text.encode(), "png": image.getvalue()})
    write_shards(samples[:24], str(root / "train-%06d.tar"), max_count=6)
    write_shards(samples[24:], str(root / "val-%06d.tar"), max_count=8)


def test_multimodal_run_logs_per_modality_and_reloads_for_fill_mask_and_embed(tmp_path, tokenizer):
    L.seed_everything(0)
    _paired_shards(tmp_path, SENTENCES)
    parts = {k: v for k, v in _kinds(tokenizer).items() if k in ("text", "image")}
    module = _module(parts, text={"drop_probability": 0.5})
    data = folder_data(tmp_path, module.batcher, batch_size=4)
    trainer = L.Trainer(
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=1,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=data)
    logged = set(trainer.callback_metrics)
    assert {
        "val/loss",
        "val/text/masked_accuracy",
        "val/image/loss",
        "val/text/perplexity",
    } <= logged
    checkpoint = tmp_path / "multi.ckpt"
    trainer.save_checkpoint(checkpoint)
    loaded = load_module(
        str(checkpoint),
        modalities=module.hparams.get("modalities")
        or {name: _config(tok, kind) for name, (kind, tok, _) in parts.items()},
        encoder=TransformerEncoder(dim=32, depth=1, num_heads=2, mlp_ratio=2.0),
    )
    for name, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)
    text = SENTENCES[0].replace("quick", tokenizer.mask_token)
    image = io.BytesIO()
    Image.new("L", (8, 8), 40).save(image, format="PNG")
    heard = fill_mask(loaded, [text], top_k=3, context=[{"png": image.getvalue()}])
    blind = fill_mask(loaded, [text], top_k=3)
    assert len(heard[0][0]) == len(blind[0][0]) == 3
    assert [c.probability for c in heard[0][0]] != [c.probability for c in blind[0][0]]
    per_token, pooled = embed_sequences(loaded, SENTENCES[:2])
    assert pooled.shape == (2, 32) and per_token[0].shape[1] == 32


def test_old_one_modality_checkpoints_load_under_the_modality_name(tiny_module, tmp_path):
    state = {
        key.replace("modalities.text.", "modality.").replace(
            "modality.length_counts", "length_counts"
        ): v
        for key, v in tiny_module.state_dict().items()
    }
    checkpoint = {"state_dict": state}
    tiny_module.on_load_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(tiny_module.state_dict())


def test_masks_passed_for_one_modality_cover_a_flat_batch(tiny_module, tokenizer):
    batch = tokenizer.collate(SENTENCES[:2])
    masked = MaskedPositions(batch["maskable"] & False, torch.zeros(2))
    masked.mask[:, 1] = True
    out = tiny_module.forward_masked(batch, masked)
    assert out["text"].pred.shape[0] == 2


def test_a_multimodal_cli_checkpoint_reloads_and_fills_masks_with_context(
    tmp_path, monkeypatch, capsys
):
    """`mmm fit` on the image + label-word config, then `mmm fill-mask --context digit.png`
    from its checkpoint: the paired model rebuilds from the checkpoint alone. Two texts with
    one context are each answered with it; `mmm export --modality` writes either modality."""
    from pathlib import Path

    from mmm.cli import run
    from mmm.data.corpora import iter_corpus

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).parents[1] / "configs" / "digits_image_text.yaml"
    run(
        [
            "fit",
            f"--config={config}",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.val_check_interval=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--data.num_workers=0",
            "--data.batch_size=8",
        ]
    )
    [checkpoint] = sorted(tmp_path.rglob("*.ckpt"))
    module = load_module(str(checkpoint))
    assert set(module.modalities) == {"image", "text"}
    digit = next(iter(iter_corpus("digits-words")))
    (tmp_path / "digit.png").write_bytes(digit["png"])
    run(
        [
            "fill-mask",
            f"--checkpoint={checkpoint}",
            "--text=digit [MASK]",
            "--text+",
            "[MASK] digit",
            f"--context={tmp_path / 'digit.png'}",
            "--top_k=3",
        ]
    )
    out = capsys.readouterr().out
    assert "digit [MASK]\n  mask 1:" in out and "[MASK] digit\n  mask 1:" in out
    import timm
    from transformers import AutoModelForMaskedLM

    for name in ("image", "text"):
        run(["export", f"--checkpoint={checkpoint}", f"--output=out-{name}", f"--modality={name}"])
    assert timm.create_model(f"local-dir:{tmp_path / 'out-image'}", pretrained=True)
    assert AutoModelForMaskedLM.from_pretrained(str(tmp_path / "out-text"))


def test_a_continuous_modality_hidden_whole_is_predicted_from_the_others(tokenizer):
    """The MAE decoder reads the other modalities' states: with every image patch hidden,
    the image's predictions still change with the text beside it."""
    torch.manual_seed(0)
    parts = {k: v for k, v in _kinds(tokenizer).items() if k in ("text", "image")}
    module = _module(parts, image={"drop_probability": 1.0}).eval()
    batch = _batch(module, parts)
    masked = module.choose_masks(module.modality_batch(batch))
    assert torch.equal(masked["image"].mask, batch["image"]["maskable"])
    other = {name: dict(sub) for name, sub in batch.items()}
    other["text"]["input_ids"] = batch["text"]["input_ids"].roll(1, dims=0)  # other captions
    with torch.no_grad():
        torch.manual_seed(1)
        first = module.forward_masked(batch, masked)["image"].pred
        torch.manual_seed(1)
        second = module.forward_masked(other, masked)["image"].pred
    assert not torch.allclose(first, second)


def test_kept_positions_that_lead_every_row_are_cut_not_gathered():
    """Padded text of one modality: the trunk sees the rows cut to the longest one, and the
    states come back in place with zeros at padding."""
    x = torch.randn(2, 6, 3)
    keep = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    packed, layout = pack_segments({"text": Segment(x, keep)}, batch_size=2)
    assert layout.ids_keep is None and packed.shape == (2, 4, 3)
    torch.testing.assert_close(layout.padding_mask, keep[:, :4])
    back = unpack_segments(packed, layout)["text"]
    torch.testing.assert_close(back, x * keep.unsqueeze(-1))
