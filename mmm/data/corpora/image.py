"""Real photographs that ship with scikit-learn, cut into many random square crops.

``load_sample_images()`` holds two 427x640 colour photographs (a Chinese temple and a
flower). Crops of random size and place, some mirrored, resized to a common size and saved as
JPEG, give thousands of varied natural-image samples with no download: enough for a small
masked autoencoder to learn textures, edges and colours in minutes on a CPU.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image

from mmm.data.corpora import (
    LabelledCorpus,
    labelled_samples,
    register_corpus,
    register_labelled_corpus,
)
from mmm.data.formats import Sample
from mmm.data.labels import LabelSpec
from mmm.data.members import CLASS_MEMBER, IMAGE_MEMBER, TEXT_MEMBER

#: Crops per photograph, side of the stored crops, and the range of crop sides (pixels of the
#: 427x640 photograph) before resizing: from close-ups to about half of the picture.
CROPS_PER_PHOTO = 1000
STORED_SIZE = 96
CROP_SIDES = (48, 224)


def random_crops(
    photo: Image.Image, count: int, rng: np.random.Generator, size: int = STORED_SIZE
) -> Iterator[Image.Image]:
    """``count`` square crops of ``photo`` with sides uniform in ``CROP_SIDES``, half of them
    mirrored, each resized to ``size`` x ``size``."""
    width, height = photo.size
    for _ in range(count):
        side = int(rng.integers(CROP_SIDES[0], min(CROP_SIDES[1], width, height) + 1))
        left = int(rng.integers(0, width - side + 1))
        top = int(rng.integers(0, height - side + 1))
        crop = photo.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield crop.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)


@register_corpus("sample-photo-crops")
def sample_photo_crops() -> Iterator[Sample]:
    """2,000 ``jpg`` samples: random crops of scikit-learn's two sample photographs."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    rng = np.random.default_rng(0)
    for name, array in zip(photos.filenames, photos.images, strict=True):
        stem = name.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        for index, crop in enumerate(random_crops(Image.fromarray(array), CROPS_PER_PHOTO, rng)):
            buffer = io.BytesIO()
            crop.save(buffer, format="JPEG", quality=92)
            yield {"__key__": f"{stem}-{index:05d}", "jpg": buffer.getvalue()}


#: Digit classes written as words: the text side of the image + label pairs.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: images (N, 8, 8) float of 17 gray levels
    (0-16) and their digits (N,) int."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def digit_png(pixels: np.ndarray) -> bytes:
    """An (8, 8) digit of gray levels 0-16 as a PNG of gray levels 0-255 (mode L)."""
    gray = Image.fromarray(np.round(pixels * 255 / 16).astype(np.uint8))  # 2-D: mode L
    buffer = io.BytesIO()
    gray.save(buffer, format="PNG")
    return buffer.getvalue()


@register_corpus("digits-words")
def digits_words() -> Iterator[Sample]:
    """scikit-learn's 1,797 handwritten digits (8x8 pixels, 17 gray levels) as paired samples:
    the image as ``png`` (gray levels scaled to 0-255), its label written as a word as
    ``txt`` (``seven``) and as a class index ``cls``. Image + label text for cross-modal masked
    modeling (a hidden label word predicted from the image, and the reverse)."""
    images, targets = digit_arrays()
    for index, (pixels, label) in enumerate(zip(images, targets, strict=True)):
        yield {
            "__key__": f"digit-{index:04d}",
            IMAGE_MEMBER: digit_png(pixels),
            TEXT_MEMBER: DIGIT_WORDS[int(label)].encode("utf-8"),
            CLASS_MEMBER: str(int(label)).encode("utf-8"),
        }


@register_labelled_corpus("digits-labelled")
def digits_labelled() -> LabelledCorpus:
    """The 1,797 digits as ``png`` with their digit as ``label.json`` (10 classes, ``0``-``9``);
    val and test are 10% each by a hash of the key."""
    images, targets = digit_arrays()
    samples = labelled_samples(
        keys=(f"digit-{index:04d}" for index in range(len(images))),
        member=IMAGE_MEMBER,
        inputs=(digit_png(pixels) for pixels in images),
        labels=(int(label) for label in targets),
    )
    spec = LabelSpec("classification", tuple(str(d) for d in range(10)), IMAGE_MEMBER)
    return LabelledCorpus(spec=spec, samples=samples)
