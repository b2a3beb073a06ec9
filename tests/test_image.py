"""Images and the continuous (MAE) objective: patches, masking, visible-only encoding, loss,
bad inputs, Pillow modes, shards, the reconstruction picture and the timm encoder."""

from __future__ import annotations

import io
import json

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from datamodules import ShardDataModule
from mmm.callbacks import ReconstructionImages
from mmm.data.formats import sample_source
from mmm.data.shards import write_shards
from mmm.masking import BlockMasking, RandomMasking, block_mask
from mmm.models import PatchDecoderConfig, TimmEncoder, TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import SampleError
from mmm.tokenizers.image import ImageTokenizer, patchify, unpatchify
from tests.helpers import step_losses


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def photo(seed: int, size: int = 24) -> Image.Image:
    """A smooth colour image (gradients plus a random offset), so patches have structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(2 * np.pi * (x * rng.uniform(0.5, 2) + rng.uniform())) for _ in range(3)]
    array = ((np.stack(channels, axis=-1) + 1) * 127.5).astype(np.uint8)
    return Image.fromarray(array)


def tiny_module(tokenizer: ImageTokenizer, masking=None, norm_pix_loss: bool = True):
    return MaskedModelingModule(
        tokenizer,
        encoder=TransformerEncoder(dim=32, depth=1, num_heads=2),
        masking=masking or RandomMasking(ratio=0.75),
        decoder=PatchDecoderConfig(dim=32, depth=1, num_heads=2, norm_pix_loss=norm_pix_loss),
        lr=3e-3,
        warmup_steps=0,
    )


def image_batch(tokenizer: ImageTokenizer, count: int = 8) -> dict[str, torch.Tensor]:
    samples = [{"__key__": f"s{i}", "png": png_bytes(photo(i))} for i in range(count)]
    return tokenizer.collate([tokenizer.decode_sample(s) for s in samples])


@pytest.fixture
def tokenizer() -> ImageTokenizer:
    return ImageTokenizer(image_size=16, patch_size=4, channels=3)


# ------------------------------------------------------------------------------ patches
@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize(("height", "width", "patch"), [(16, 16, 4), (8, 24, 8), (12, 6, 3)])
def test_patchify_unpatchify_round_trip(channels, height, width, patch):
    images = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    patches = patchify(images, patch)
    grid = (height // patch, width // patch)
    assert patches.shape == (2, grid[0] * grid[1], patch * patch * channels)
    assert torch.equal(unpatchify(patches, patch, grid, channels), images)
    # patch (r, c) holds exactly the pixels of that square
    r, c = grid[0] - 1, grid[1] - 1
    square = images[1, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
    assert torch.equal(patches[1, r * grid[1] + c], square.permute(1, 2, 0).reshape(-1))


def test_spec_follows_configuration():
    spec = ImageTokenizer(image_size=(32, 48), patch_size=8, channels=1).spec
    assert (spec.input_dim, spec.max_length, spec.grid) == (64, 24, (4, 6))
    with pytest.raises(ValueError, match="patch_size"):
        ImageTokenizer(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="channels"):
        ImageTokenizer(channels=2)


# ------------------------------------------------------------------------------ masking
@pytest.mark.parametrize("masking", [RandomMasking(ratio=0.75), BlockMasking(ratio=0.6)])
def test_masked_count_is_exact_per_sample(masking):
    maskable = torch.ones(16, 64, dtype=torch.bool)
    mask = masking(maskable, grid=(8, 8), generator=torch.Generator().manual_seed(1)).mask
    expected = round(masking.ratio * 64)
    assert mask.sum(dim=1).tolist() == [expected] * 16


def test_block_mask_hides_blocks_and_checks_the_grid():
    mask = block_mask(torch.ones(64, 196, dtype=torch.bool), (14, 14), 0.4, min_block=16)
    grid = mask.view(64, 14, 14).float()
    # neighbours of a hidden patch are hidden far more often than the 40% base rate
    right = (grid[:, :, 1:] * grid[:, :, :-1]).sum() / grid[:, :, :-1].sum()
    assert right > 0.6
    with pytest.raises(ValueError, match="grid"):
        block_mask(torch.ones(2, 50, dtype=torch.bool), (7, 7), 0.5)
    with pytest.raises(ValueError, match="grid"):
        BlockMasking()(torch.ones(2, 49, dtype=torch.bool))


def test_encoder_sees_only_visible_patches(tokenizer):
    module = tiny_module(tokenizer)
    lengths = []
    module.encoder.register_forward_hook(lambda mod, args, out: lengths.append(args[0].shape[1]))
    out = module.forward_masked(image_batch(tokenizer))
    visible = tokenizer.spec.max_length - out["image"].mask.sum(dim=1)
    assert lengths == [int(visible[0])] and (visible == visible[0]).all()
    assert out["image"].pred.shape == (int(out["image"].mask.sum()), tokenizer.spec.input_dim)


def test_loss_ignores_predictions_at_visible_patches(tokenizer, monkeypatch):
    torch.manual_seed(0)
    module = tiny_module(tokenizer)
    batch = image_batch(tokenizer)
    masked = RandomMasking(ratio=0.75)(batch["maskable"])
    monkeypatch.setattr(module, "choose_masks", lambda inputs: {"image": masked})
    mask = masked.mask
    base = module.forward_masked(batch).loss

    def shift(where):  # perturb the decoder's last states at `where` positions
        ramp = torch.linspace(-100.0, 100.0, 32)  # not constant: LayerNorm would undo that
        return lambda mod, args, out: out + where.unsqueeze(-1) * ramp

    last_block = module.modalities["image"].head.blocks[-1]  # per-position layers follow it
    handle = last_block.register_forward_hook(shift(~mask))
    assert torch.equal(module.forward_masked(batch).loss, base)
    handle.remove()
    last_block.register_forward_hook(shift(mask))
    assert not torch.allclose(module.forward_masked(batch).loss, base)


def test_bf16_autocast_gives_a_float_loss(tokenizer):
    module = tiny_module(tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module.forward_masked(image_batch(tokenizer, count=2))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()


@pytest.mark.parametrize(("norm_pix_loss", "factor"), [(True, 0.4), (False, 0.15)])
def test_tiny_model_overfits_a_batch(tokenizer, monkeypatch, one_thread, norm_pix_loss, factor):
    """With the mask held fixed, a tiny MAE memorizes the hidden patches of 8 images."""
    torch.manual_seed(0)
    module = tiny_module(tokenizer, norm_pix_loss=norm_pix_loss)
    batch = image_batch(tokenizer)
    masked = RandomMasking(ratio=0.75)(batch["maskable"])
    monkeypatch.setattr(module, "choose_masks", lambda inputs: {"image": masked})
    losses = step_losses(module, batch, steps=100)
    assert np.mean(losses[-5:]) < factor * losses[0]


# ------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "payload",
    [b"not an image at all", png_bytes(photo(0), "JPEG")[:200]],
    ids=["garbage", "truncated"],
)
def test_undecodable_image_names_the_sample(tokenizer, payload):
    sample = {"__key__": "broken-7", "__url__": "shard-000.tar", "jpg": payload}
    with pytest.raises(SampleError, match=r"shard-000\.tar.*broken-7.*not a decodable image"):
        tokenizer.decode_sample(sample)


def test_missing_member_and_unconvertible_mode_name_the_sample():
    gray = ImageTokenizer(image_size=8, patch_size=4, channels=1)
    with pytest.raises(SampleError, match="'nothing'.*no image member"):
        gray.decode_sample({"__key__": "nothing", "txt": b"x"})
    lab = png_bytes(Image.new("LAB", (8, 8)), "TIFF")
    with pytest.raises(SampleError, match="'lab-1'.*mode 'LAB'.*1 channels"):
        gray.decode_sample({"__key__": "lab-1", "tiff": lab})


@pytest.mark.parametrize("on_error", ["skip", "raise"])
def test_datamodule_skips_or_raises_on_corrupt_images(tmp_path, tokenizer, on_error):
    samples = [{"__key__": f"ok{i}", "png": png_bytes(photo(i))} for i in range(5)]
    samples.insert(2, {"__key__": "corrupt", "jpg": b"\xff\xd8\xff garbage"})
    write_shards(samples, str(tmp_path / "val-%06d.tar"))
    data = ShardDataModule(
        val_shards=str(tmp_path / "val-*.tar"),
        batcher=tokenizer,
        batch_size=8,
        num_workers=0,
        on_error=on_error,
    )
    if on_error == "raise":
        with pytest.raises(SampleError, match="corrupt"):
            list(data.val_dataloader())
        return
    batches = list(data.val_dataloader())
    assert sum(b["patches"].shape[0] for b in batches) == 5
    assert sum(int(b["skipped"]) for b in batches) == 1


# ------------------------------------------------------------------------------ modes
def test_modes_convert_to_the_configured_channels():
    rgb = ImageTokenizer(image_size=4, patch_size=2, channels=3)
    gray = ImageTokenizer(image_size=4, patch_size=2, channels=1)

    def decode(tok, image, fmt="PNG"):
        return tok.decode_sample({"__key__": "k", fmt.lower(): png_bytes(image, fmt)})

    sixteen = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))  # mode I;16
    assert sixteen.mode == "I;16"
    assert torch.allclose(decode(rgb, sixteen), torch.full((3, 4, 4), 32768 / 65535))
    assert torch.allclose(decode(gray, Image.new("L", (4, 4), 51)), torch.full((1, 4, 4), 0.2))
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent: background shows
    assert torch.allclose(decode(rgb, clear), torch.ones(3, 4, 4))
    palette = Image.new("RGB", (4, 4), (255, 0, 0)).convert("P")
    assert palette.mode == "P"
    assert torch.allclose(decode(rgb, palette)[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert decode(gray, Image.new("RGB", (6, 9), (0, 0, 255))).shape == (1, 4, 4)


# ------------------------------------------------------------------- shards and render
def test_image_shard_reader_keeps_folder_labels(tmp_path, tokenizer):
    for label, seed in (("cat", 0), ("dog", 1), ("dog", 2)):
        (tmp_path / "images" / label).mkdir(parents=True, exist_ok=True)
        photo(seed).save(tmp_path / "images" / label / f"{seed}.png")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    paths = sorted(str(p) for p in (tmp_path / "images").rglob("*") if p.is_file())
    samples = list(sample_source("image")(paths))
    assert [json.loads(s["json"])["label"] for s in samples] == ["cat", "dog", "dog"]
    assert [s["cls"] for s in samples] == [b"0", b"1", b"1"]
    assert [s["__key__"] for s in samples] == ["cat_0_png", "dog_1_png", "dog_2_png"]
    batch = tokenizer.collate([tokenizer.decode_sample(s) for s in samples])
    assert batch["patches"].shape == (3, 16, 48)


def test_reconstruction_picture_is_saved_and_logged(tmp_path, tokenizer):
    samples = [{"__key__": f"s{i}", "png": png_bytes(photo(i))} for i in range(8)]
    write_shards(samples, str(tmp_path / "shards" / "train-%06d.tar"))
    shards = str(tmp_path / "shards" / "train-*.tar")
    data = ShardDataModule(
        train_shards=shards, val_shards=shards, batcher=tokenizer, batch_size=4, num_workers=0
    )
    trainer = L.Trainer(
        max_steps=2,
        val_check_interval=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=TensorBoardLogger(str(tmp_path / "logs")),
        callbacks=[ReconstructionImages(num_images=3)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(tiny_module(tokenizer), datamodule=data)
    (picture,) = (tmp_path / "logs").rglob("reconstructions/step_000002.png")
    # three rows (original, masked, reconstruction) of three 16x16 images, 2-pixel padding
    assert Image.open(picture).size == (3 * 18 + 2, 3 * 18 + 2)
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))


# ---------------------------------------------------------------------------- timm
def test_timm_encoder_runs_visible_patches_and_loads_local_weights(tmp_path, tokenizer):
    import timm

    kwargs = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 16, "patch_size": 4}
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    encoder = TimmEncoder(
        "vit_tiny_patch16_224", checkpoint_path=str(tmp_path / "vit.pth"), model_kwargs=kwargs
    )
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    module = MaskedModelingModule(tokenizer, encoder=encoder, masking=RandomMasking(ratio=0.75))
    out = module.forward_masked(image_batch(tokenizer, count=2))
    assert out["image"].pred.shape == (2 * 12, 48) and torch.isfinite(out.loss)


def test_two_validations_of_one_model_agree(tmp_path):
    """Training augments (random resized crops, flips) and masks at random; evaluation reads
    the center crop and draws its masks from a fixed seed, so a held-out number repeats."""
    samples = [{"__key__": f"s{i}", "png": png_bytes(photo(i, size=32))} for i in range(12)]
    write_shards(samples, str(tmp_path / "val-%06d.tar"), max_count=6)
    tokenizer = ImageTokenizer(
        image_size=16, patch_size=4, random_crop_scale=(0.3, 1.0), horizontal_flip=True
    )
    data = ShardDataModule(
        val_shards=str(tmp_path / "val-*.tar"), batcher=tokenizer, batch_size=4, num_workers=0
    )
    module = tiny_module(tokenizer)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(1)
    first = trainer.validate(module, datamodule=data, verbose=False)
    torch.manual_seed(2)  # another global RNG state changes nothing held out
    second = trainer.validate(module, datamodule=data, verbose=False)
    assert first == second and first[0]["val/loss"] > 0
