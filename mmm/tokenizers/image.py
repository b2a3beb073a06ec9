"""Images: files of any mode and size -> fixed-size tensors -> flattened patches (MAE).

``ImageTokenizer`` decodes an image member of a shard sample (jpg, png, webp, ...) with
Pillow, converts its mode to the configured channel count (grayscale, palette, alpha and 16-bit
images included), resizes and crops it with torchvision transforms v2, and batches images as
``patches`` (B, L, patch * patch * channels) on a (rows, cols) grid. Patch geometry lives here
only: the model sees vectors on a grid (``ContinuousSpec``), and ``unpatchify``/``render`` turn
vectors back into pictures for the reconstruction callback.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms import v2

from mmm.data.formats import IMAGE_EXTENSIONS
from mmm.tokenizers.base import ContinuousSpec, PatchLayout, SampleError, Tokenizer, copy_with

#: Pillow modes with more than 8 bits per value, and the value that maps to 1.0. ``I`` (32-bit
#: integer) is how Pillow may open 16-bit PNG and TIFF files, so it is read as 16-bit too.
_HIGH_DEPTH_MAX = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}
_PIL_MODE = {1: "L", 3: "RGB", 4: "RGBA"}


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping square patches, each flattened as (p, p, C) like MAE.

    Args:
        images: (B, C, H, W), ``H`` and ``W`` multiples of ``patch_size``.

    Returns:
        (B, L, p * p * C) with ``L = (H / p) * (W / p)`` patches in row-major order.
    """
    height, width = images.shape[-2:]
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"patchify: image {height}x{width} is not a multiple of patch {p}")
    # (B, C, rows * p, cols * p) -> (B, rows * cols, p * p * C), each patch flattened as (p, p, C)
    return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> Tensor:
    """Inverse of ``patchify``: (B, L, p * p * C) -> (B, C, rows * p, cols * p)."""
    rows, cols = grid
    p = patch_size
    return rearrange(
        patches, "b (h w) (p q c) -> b c (h p) (w q)", h=rows, w=cols, p=p, q=p, c=channels
    )


def convert_mode(image: Image.Image, channels: int, background: int = 255) -> Image.Image | Tensor:
    """A Pillow image of any mode with ``channels`` channels: a Pillow image for 8-bit data
    (resized next by Pillow's fast C code), a (channels, H, W) float tensor in [0, 1] for
    deeper data, which Pillow cannot hold in more than one 8-bit channel.

    16-bit and 32-bit integer images are scaled by their full range (Pillow's own conversion to
    8 bits would clip them), float images are clipped to [0, 1]; transparent images (RGBA, LA,
    palette with transparency) are composited onto a ``background`` gray level unless
    ``channels == 4`` keeps alpha; everything else goes through Pillow's ``convert``.

    Raises:
        ValueError: the mode cannot be converted to ``channels`` channels.
    """
    if image.mode in _HIGH_DEPTH_MAX or image.mode == "F":
        scale = _HIGH_DEPTH_MAX.get(image.mode, 1.0)
        array = np.asarray(image, dtype=np.float32) / scale  # (H, W)
        gray = torch.from_numpy(np.clip(array, 0.0, 1.0)).unsqueeze(0)  # (1, H, W)
        opaque = [torch.ones_like(gray)] if channels == 4 else []
        return torch.cat([gray] * min(channels, 3) + opaque)  # (C, H, W)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha and channels != 4:
        canvas = Image.new("RGBA", image.size, (background,) * 3 + (255,))
        image = Image.alpha_composite(canvas, image.convert("RGBA"))
    return image.convert(_PIL_MODE[channels])


def to_float(pixels: Image.Image | Tensor) -> Tensor:
    """A Pillow image or an image tensor as (C, H, W) float32 in [0, 1]."""
    return v2.functional.to_dtype(v2.functional.to_image(pixels), torch.float32, scale=True)


class ImageTokenizer(Tokenizer):
    """Images -> fixed-size tensors -> patches on a grid, for masked autoencoding.

    Args:
        image_size: output size, an int for square images or ``[height, width]``; both must
            be multiples of ``patch_size``.
        patch_size: side of a square patch in pixels.
        channels: 1 (grayscale), 3 (RGB) or 4 (RGBA); every input mode is converted to it.
        random_crop_scale: if set, ``(min, max)`` area fraction of a random resized crop
            (augmentation, training only); else, and always in evaluation, the shorter side is
            resized to fit and the center is cropped.
        horizontal_flip: flip images left-right with probability 0.5 (augmentation, training
            only).
        background: gray level (0-255) that transparent pixels are composited onto.
    """

    modality_name = "image"
    sample_keys = IMAGE_EXTENSIONS
    export_family = "vit"

    def __init__(
        self,
        image_size: int | tuple[int, int] = 64,
        patch_size: int = 8,
        channels: int = 3,
        random_crop_scale: tuple[float, float] | None = None,
        horizontal_flip: bool = False,
        background: int = 255,
    ) -> None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if patch_size < 1 or height % patch_size or width % patch_size:
            raise ValueError(
                f"ImageTokenizer: image_size {height}x{width} must be a positive multiple of "
                f"patch_size={patch_size}"
            )
        if channels not in _PIL_MODE:
            raise ValueError(f"ImageTokenizer: channels must be 1, 3 or 4, got {channels}")
        if (
            random_crop_scale is not None
            and not 0 < random_crop_scale[0] <= random_crop_scale[1] <= 1
        ):
            raise ValueError(
                f"ImageTokenizer: random_crop_scale must satisfy 0 < min <= max <= 1, "
                f"got {random_crop_scale}"
            )
        self.size = (height, width)
        self.patch_size = patch_size
        self.channels = channels
        self.background = background
        self.random_crop_scale = random_crop_scale
        self.horizontal_flip = horizontal_flip
        self.transform = self._resize_transform()

    def patch_layout(self) -> PatchLayout:
        """The ViT input of these images; mmm flattens a patch as (p, p, C) (MAE's
        patchify), a convolution's kernel is (C, p, p)."""
        size = self.patch_size
        return PatchLayout(
            img_size=tuple(self.size),
            patch_size=(size, size),
            in_chans=self.channels,
            kernel_pattern="d (ph pw c) -> d c ph pw",
            kernel_axes={"ph": size, "pw": size, "c": self.channels},
        )

    def _resize_transform(self) -> v2.Transform:
        """Resize + crop (random resized crop when augmenting, else center) and optional flip."""
        if self.random_crop_scale is None:
            resize = v2.Compose(
                [v2.Resize(min(self.size), antialias=True), v2.CenterCrop(self.size)]
            )
        else:
            scale = tuple(self.random_crop_scale)
            resize = v2.RandomResizedCrop(self.size, scale=scale, antialias=True)
        if not self.horizontal_flip:
            return resize
        return v2.Compose([resize, v2.RandomHorizontalFlip(0.5)])

    def for_evaluation(self) -> ImageTokenizer:
        """The same geometry with a center crop and no flip."""
        if self.random_crop_scale is None and not self.horizontal_flip:
            return self
        evaluation = copy_with(self, random_crop_scale=None, horizontal_flip=False)
        evaluation.transform = evaluation._resize_transform()
        return evaluation

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of patches."""
        return self.size[0] // self.patch_size, self.size[1] // self.patch_size

    @property
    def spec(self) -> ContinuousSpec:
        rows, cols = self.grid
        return ContinuousSpec(
            input_dim=self.patch_size**2 * self.channels, max_length=rows * cols, grid=self.grid
        )

    def decode_sample(self, sample: dict[str, Any]) -> Tensor:
        """The first image member of ``sample`` as (C, H, W) float in [0, 1], resized."""
        key, url = sample.get("__key__"), sample.get("__url__")
        member = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
        if member is None:
            members = sorted(k for k in sample if not k.startswith("__"))
            raise SampleError(f"no image member {IMAGE_EXTENSIONS} (members: {members})", key, url)
        try:
            image = Image.open(io.BytesIO(sample[member]))
            image.load()  # decode now: a truncated file fails here, not later
            ImageOps.exif_transpose(image, in_place=True)  # rotated camera photos stand upright
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise SampleError(f"{member!r} is not a decodable image ({error})", key, url) from error
        if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
            raise SampleError(f"{member!r} holds non-finite pixel values (NaN or inf)", key, url)
        try:
            pixels = convert_mode(image, self.channels, self.background)
        except (ValueError, OSError) as error:
            raise SampleError(
                f"{member!r} has mode {image.mode!r}, which cannot be converted to "
                f"{self.channels} channels ({error})",
                key,
                url,
            ) from error
        return to_float(self.transform(pixels))  # (C, H, W)

    def collate(self, items: list[Tensor]) -> dict[str, Tensor]:
        """Stack images and cut them into patches; every patch is real and maskable."""
        patches = patchify(torch.stack(items), self.patch_size)  # (B, L, P)
        present = torch.ones(patches.shape[:2], dtype=torch.bool)  # (B, L)
        return {"patches": patches, "attention_mask": present, "maskable": present.clone()}

    def unpatchify(self, patches: Tensor) -> Tensor:
        """(B, L, P) patches -> (B, C, H, W) images."""
        return unpatchify(patches, self.patch_size, self.grid, self.channels)

    def render(self, patches: Tensor) -> Tensor:
        """(B, L, P) patches -> (B, C, H, W) pictures in [0, 1] (alpha dropped), for logging."""
        return self.unpatchify(patches)[:, :3].clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return (
            f"ImageTokenizer(image_size={self.size}, patch_size={self.patch_size}, "
            f"channels={self.channels})"
        )
