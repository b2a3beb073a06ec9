"""Any-to-any generation: a modality generated from a sample's others, chains of steps, the
``mmm generate --context`` command, and its errors; on a tiny image + word model that learns
ten digit images and their words."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmm.cli import run
from mmm.conditioning import (
    ChainStep,
    ContextError,
    context_samples,
    generate_chain,
    generate_from,
    generate_step,
    parse_chain,
    read_context,
)
from mmm.data.corpora import labelled_corpus
from mmm.data.corpora.image import DIGIT_WORDS, digit_arrays, digit_png
from mmm.data.shards import write_shards
from mmm.generation import SamplingSettings
from mmm.masking import RandomMasking
from mmm.models.encoder import TransformerEncoder
from mmm.models.heads import PatchDecoderConfig
from mmm.module import MaskedModelingModule, ModalityConfig
from mmm.tokenizers import ImageTokenizer
from mmm.tokenizers.text import TextTokenizer
from tests.helpers import single_thread

GREEDY = SamplingSettings(steps=2, sampler="maskgit", top_k=1)


def _digits() -> list[tuple[bytes, str]]:
    """The first image of each digit 0-9 (PNG bytes) and its word."""
    images, targets = digit_arrays()
    first = {int(t): i for i, t in reversed(list(enumerate(targets)))}
    return [(digit_png(images[first[d]]), DIGIT_WORDS[d]) for d in range(10)]


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> MaskedModelingModule:
    """A 32-wide image + word model trained on ten digit images and their words: the word
    hidden whole in half of the samples, the image in a quarter."""
    root = tmp_path_factory.mktemp("digit-words")
    words = [{"__key__": f"w{i}", "txt": w.encode()} for i, w in enumerate(DIGIT_WORDS * 4)]
    write_shards(words, str(root / "words-%06d.tar"))
    text = TextTokenizer(
        path=str(root / "tok"), train_source=str(root / "words-*.tar"), vocab_size=64, max_length=6
    )
    image = ImageTokenizer(image_size=8, patch_size=4, channels=1)
    modalities = {
        "image": ModalityConfig(
            image,
            masking=RandomMasking(ratio=0.5),
            decoder=PatchDecoderConfig(dim=32, depth=1, num_heads=2, norm_pix_loss=False),
            drop_probability=0.25,
        ),
        "text": ModalityConfig(text, masking=RandomMasking(ratio=0.15), drop_probability=0.5),
    }
    encoder = TransformerEncoder(dim=32, depth=1, num_heads=2, mlp_ratio=2.0)
    module = MaskedModelingModule(modalities=modalities, encoder=encoder)
    samples = [{"__key__": w, "png": png, "txt": w.encode()} for png, w in _digits()]
    items = [module.batcher.decode_sample(s) for s in samples * 4]
    batch = module.batcher.collate(items)
    module.modalities["text"].count_lengths(batch["text"])  # as training does, for lengths
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    torch.manual_seed(0)
    with single_thread():
        for _ in range(200):
            loss = module.forward_masked(batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return module.eval()


@pytest.fixture
def digit_files(tmp_path) -> list[Path]:
    paths = []
    for png, word in _digits():
        path = tmp_path / f"{word}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths


def test_a_tiny_paired_model_writes_the_word_of_each_image(paired, one_thread):
    samples = [{"__key__": w, "png": png} for png, w in _digits()]
    generated = generate_from(paired, samples, "text", settings=GREEDY)
    right = sum(text == word for text, (_, word) in zip(generated.texts, _digits(), strict=True))
    assert right >= 9, generated.texts


@pytest.mark.parametrize(("context", "target"), [("image", "text"), ("text", "image")])
def test_conditioned_generation_never_changes_the_context(paired, context, target, one_thread):
    """The context is shown whole at every sampling step, as it was read, and comes back
    unchanged; only the target is generated."""
    samples = [{"__key__": w, "png": png, "txt": w.encode()} for png, w in _digits()]
    batch = read_context(paired, samples)
    before = {k: v.clone() for k, v in batch[context].items()}
    seen = []
    original = paired.predict_positions

    def spy(inputs, positions, name=None):
        seen.append({k: v.clone() for k, v in inputs[context].items()})
        return original(inputs, positions, name)

    paired.predict_positions = spy
    try:
        settings = SamplingSettings(steps=4, sampler="remdm", eta=0.5)
        generator = torch.Generator().manual_seed(0)
        step = ChainStep((context,), target)
        generated = generate_step(paired, batch, step, [1] * 10, settings, generator)
    finally:
        del paired.predict_positions
    for key, value in before.items():
        assert torch.equal(batch[context][key], value)
        for shown in seen:  # every sampling step saw its rows' context as it was read
            assert all(any(torch.equal(row, kept) for kept in value) for row in shown[key])
    assert seen or target == "image"
    assert set(generated) >= {"attention_mask", "maskable"}


def test_a_chain_draws_a_new_image_from_the_word_of_an_image(paired, digit_files, one_thread):
    """image -> word -> image: the second step sees only the generated word."""
    samples = context_samples(digit_files)
    word, image = generate_chain(
        paired, samples, parse_chain("image:text,text:image"), settings=GREEDY
    )
    assert len(word.texts) == 10 and image.pictures.shape == (10, 1, 8, 8)
    assert float(image.pictures.min()) >= 0.0 and float(image.pictures.max()) <= 1.0
    from_words = generate_chain(
        paired, [{"__key__": "w", "txt": b"seven"}] * 2, [ChainStep(("text",), "image")]
    )
    assert torch.equal(from_words[0].pictures[0], from_words[0].pictures[1])  # one pass, no draw


def test_generate_command_writes_a_line_or_a_picture_per_input(
    paired, digit_files, tmp_path, monkeypatch, capsys, one_thread
):
    monkeypatch.setattr("mmm.inference.load_module", lambda *args, **kwargs: paired)
    common = ["--checkpoint=model.ckpt", "--steps=2", "--sampler=maskgit", "--top_k=1"]
    pattern = str(tmp_path / "*.png")
    assert run(["generate", *common, f"--context={pattern}", "--target=text"]) == 10
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 10 and all(line.split("\t")[1] == "text" for line in lines)
    out = tmp_path / "chain"
    options = [f"--context={pattern}", "--chain=image:text,text:image", f"--output={out}"]
    assert run(["generate", *common, *options]) == 10
    assert len((out / "1-text.txt").read_text().splitlines()) == 10
    pictures = sorted((out / "2-image").glob("*.png"))
    assert [p.stem for p in pictures] == sorted(p.stem for p in digit_files)
    word = tmp_path / "word.txt"
    word.write_text("three")
    drawn = tmp_path / "drawn"
    run(["generate", *common, f"--context={word}", "--target=image", f"--output={drawn}"])
    assert Image.open(drawn / "1-image" / "word.png").size == (8, 8)


def _wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(8000)
        clip.writeframes(b"\x00\x01" * 800)
    return buffer.getvalue()


def test_bad_context_is_named(paired, digit_files, tmp_path, monkeypatch):
    clip = tmp_path / "clip.wav"
    clip.write_bytes(_wav())
    with pytest.raises(ContextError, match=r"clip\.wav: no modality of this model reads .*'wav'"):
        generate_from(paired, context_samples([clip]), "text")
    with pytest.raises(FileNotFoundError, match="no context file at .*missing.png"):
        context_samples([tmp_path / "missing.png"])
    word = tmp_path / "word.txt"
    word.write_text("three")
    with pytest.raises(ContextError, match=r"word\.txt is 'text', the modality to generate"):
        generate_from(paired, context_samples([word]), "text")
    with pytest.raises(ContextError, match=r"chain step 2 \(audio:image\): this model has no"):
        generate_chain(paired, context_samples([word]), parse_chain("text:image,audio:image"))
    with pytest.raises(ContextError, match=r"chain step 1 \(image:text\): the context 'image'"):
        generate_chain(paired, context_samples([word]), parse_chain("image:text"))
    with pytest.raises(ContextError, match="different modalities"):
        read_context(paired, context_samples([word, digit_files[0]]))
    with pytest.raises(ContextError, match="is not CONTEXT:TARGET"):
        parse_chain("image-text")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a picture")
    with pytest.raises(ValueError, match=r"broken\.png.*not a decodable image"):
        generate_from(paired, context_samples([bad]), "text")
    monkeypatch.setattr("mmm.inference.load_module", lambda *args, **kwargs: paired)
    with pytest.raises(ContextError, match="give --output DIR"):
        run(["generate", "--checkpoint=m.ckpt", f"--context={word}", "--target=image"])


def test_fsdd_words_pairs_each_recording_with_its_digit_word(tmp_path):
    for name in ("7_jackson_0", "3_theo_12", "0_lucas_3", "notes"):
        (tmp_path / f"{name}.wav").write_bytes(_wav())
    samples = {s["__key__"]: s for s in labelled_corpus("fsdd-words", tmp_path).samples}
    assert sorted(samples) == ["0_lucas_3", "3_theo_12", "7_jackson_0"]
    assert samples["7_jackson_0"]["txt"] == b"seven" and samples["3_theo_12"]["txt"] == b"three"
    splits = {key: s["__split__"] for key, s in samples.items()}
    assert splits == {"7_jackson_0": "train", "3_theo_12": "val", "0_lucas_3": "test"}
