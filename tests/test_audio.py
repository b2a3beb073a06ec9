"""Audio: decoding, log-mel features, frames/patches, padding, masking, MAE training, tools.

Every clip here is synthesized (tones, chirps, noise written with soundfile), so nothing depends
on Debian's asterisk-core-sounds-en-wav; the one test of that corpus skips when it is absent.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import webdataset as wds

from datamodules import ShardDataModule
from mmm.cli import run
from mmm.data.corpora.audio import ASTERISK_EN, asterisk_en
from mmm.data.shards import write_shards
from mmm.masking import RandomMasking, SpanMasking
from mmm.models.encoder import TransformerEncoder
from mmm.models.heads import PatchDecoderConfig
from mmm.models.modality import normalize_patches
from mmm.module import MaskedModelingModule
from mmm.tokenizers.audio import (
    AudioTokenizer,
    LogMelSettings,
    patchify,
    unpatchify,
)
from mmm.tokenizers.base import SampleError
from tests.helpers import step_losses
from tests.test_configs import FAST

CONFIG = Path(__file__).parents[1] / "configs" / "audio_mae.yaml"
#: Small features for fast tests: 16 bands, 16 ms hops at 8 kHz.
SMALL = LogMelSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the tests share two cores with other processes, and torch's
    default of one thread per core slows tiny models tenfold under contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tone(seconds: float, rate: int, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(seconds: float, rate: int, low: float, high: float) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * (low * t + (high - low) * t**2 / (2 * seconds))
    return (0.5 * np.sin(phase)).astype(np.float32)


def encode(wave: np.ndarray, rate: int, fmt: str = "wav") -> bytes:
    buffer = io.BytesIO()
    subtype = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}[fmt]
    sf.write(buffer, wave, rate, format=fmt.upper() if fmt != "mp3" else "MP3", subtype=subtype)
    return buffer.getvalue()


def sample(wave: np.ndarray, rate: int, key: str = "clip", fmt: str = "wav") -> dict:
    return {"__key__": key, "__url__": "mem.tar", fmt: encode(wave, rate, fmt)}


def clips(count: int, seconds: float = 1.0, rate: int = 8000) -> list[dict]:
    """Distinct rising and falling chirps."""
    return [
        sample(chirp(seconds, rate, 200 + 150 * i, 3000 - 200 * i), rate, key=f"c{i:03d}")
        for i in range(count)
    ]


# ----------------------------------------------------------------------------- features
@pytest.mark.parametrize(
    ("patch_mels", "grid", "input_dim"),
    [(None, None, 16 * 4), (4, (15, 4), 4 * 4)],
    ids=["frames", "patches"],
)
def test_features_have_documented_shape(patch_mels, grid, input_dim):
    """1 s at 8 kHz, hop 128 -> 62 frames -> 60 in whole 4-frame positions."""
    tokenizer = AudioTokenizer(SMALL, duration=1.0, patch_frames=4, patch_mels=patch_mels)
    batch = tokenizer.collate([tokenizer.decode_sample(s) for s in clips(3, seconds=1.5)])
    length = 15 * (4 if patch_mels else 1)
    assert tokenizer.spec.input_dim == input_dim and tokenizer.spec.grid == grid
    assert tokenizer.spec.max_length == length
    assert batch["patches"].shape == (3, length, input_dim)
    assert batch["features"].shape == (3, 16, 60)
    assert batch["attention_mask"].shape == batch["maskable"].shape == (3, length)
    assert batch["attention_mask"].all()
    mel = batch["features"][0]
    assert abs(float(mel.mean())) < 1e-4 and abs(float(mel.std()) - 1) < 1e-2  # per clip


def test_resamples_and_mixes_to_mono():
    """A 16 kHz stereo clip (440 Hz left, silent right) becomes 8 kHz mono at half amplitude."""
    left = tone(1.0, 16000, freq=440.0, amplitude=0.8)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # (N, 2)
    wave = AudioTokenizer(SMALL).waveform(sample(stereo, 16000))
    assert wave.shape == (8000,)
    assert abs(float(wave[100:-100].abs().max()) - 0.4) < 0.01
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 Hz bins: the pitch survives resampling


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_decodes_every_supported_format(fmt):
    tokenizer = AudioTokenizer(SMALL, duration=1.0)
    wave = tokenizer.waveform(sample(tone(1.0, 8000), 8000, fmt=fmt))
    assert abs(wave.shape[0] - 8000) < 1200  # lossy codecs may pad a frame
    assert float(wave.abs().max()) > 0.3


def test_long_clips_are_cropped_and_short_ones_padded_with_padding_marked():
    tokenizer = AudioTokenizer(SMALL, duration=1.0, patch_frames=4, patch_mels=4)
    long_item = tokenizer.decode_sample(clips(1, seconds=3.0)[0])
    short_item = tokenizer.decode_sample(clips(1, seconds=0.3)[0])
    assert long_item.features.shape == short_item.features.shape == (16, 60)
    assert long_item.real_frames == 60
    assert short_item.real_frames == 1 + 2400 // 128  # 19 frames of a 0.3 s clip
    assert torch.all(short_item.features[:, 19:] == 0)  # zero = the normalized mean
    batch = tokenizer.collate([long_item, short_item])
    real_rows = -(-19 // 4)  # positions holding at least one real frame
    assert batch["attention_mask"][0].all()
    assert batch["attention_mask"][1].sum() == real_rows * 4  # every band of those time steps
    assert batch["attention_mask"][1, : real_rows * 4].all()
    assert torch.equal(batch["maskable"], batch["attention_mask"])


@pytest.mark.parametrize("patch_mels", [None, 4, 8])
def test_patchify_round_trips_exactly(patch_mels):
    tokenizer = AudioTokenizer(SMALL, duration=1.0, patch_frames=4, patch_mels=patch_mels)
    features = torch.randn(2, 16, tokenizer.num_frames)
    patches = tokenizer.patchify(features)
    assert torch.equal(tokenizer.unpatchify(patches), features)
    # position (t, f) holds bands f*pm:(f+1)*pm of frames t*4:(t+1)*4, time-major
    pm = patch_mels or 16
    cols = 16 // pm
    t, f = 3, cols - 1
    expected = features[1, f * pm : (f + 1) * pm, t * 4 : (t + 1) * 4].reshape(-1)
    assert torch.equal(patches[1, t * cols + f], expected)


def test_patchify_functions_agree_with_shapes():
    x = torch.randn(3, 8, 12)  # (B, F, T)
    patches = patchify(x, patch_mels=2, patch_frames=3)
    assert patches.shape == (3, 4 * 4, 6)
    assert torch.equal(unpatchify(patches, n_mels=8, patch_mels=2, patch_frames=3), x)


# ------------------------------------------------------------------------- bad samples
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: sample(np.zeros(8000, np.float32), 8000, key="quiet"), "silent"),
        (lambda: sample(tone(0.01, 8000), 8000, key="quiet"), "shorter than one position"),
        (lambda: {"__key__": "quiet", "__url__": "mem.tar", "wav": b"RIFF not audio"}, "decode"),
        (lambda: {"__key__": "quiet", "__url__": "mem.tar", "txt": b"hello"}, "no audio member"),
    ],
    ids=["silent", "too-short", "undecodable", "no-audio"],
)
def test_unusable_clips_raise_sample_error_naming_the_sample(make, message):
    with pytest.raises(SampleError, match=message) as info:
        AudioTokenizer(SMALL).decode_sample(make())
    assert "quiet" in str(info.value) and "mem.tar" in str(info.value)


def _bad_and_good_shards(root: Path) -> str:
    bad = [
        sample(np.zeros(8000, np.float32), 8000, key="silent"),
        {"__key__": "broken", "wav": b"not audio"},
    ]
    write_shards(bad + clips(6), str(root / "mixed-%06d.tar"))
    return str(root / "mixed-*.tar")


def test_datamodule_skips_and_counts_or_raises(tmp_path):
    shards = _bad_and_good_shards(tmp_path)
    tokenizer = AudioTokenizer(SMALL, duration=1.0)
    data = ShardDataModule(val_shards=shards, batcher=tokenizer, batch_size=8, num_workers=0)
    batches = list(data.val_dataloader())
    assert sum(b["patches"].shape[0] for b in batches) == 6
    assert sum(int(b["skipped"]) for b in batches) == 2
    strict = ShardDataModule(
        val_shards=shards, batcher=tokenizer, batch_size=8, num_workers=0, on_error="raise"
    )
    with pytest.raises(SampleError, match="silent"):
        list(strict.val_dataloader())


# --------------------------------------------------------------------- masking and loss
def _tiny_module(tokenizer: AudioTokenizer, masking=None) -> MaskedModelingModule:
    return MaskedModelingModule(
        tokenizer=tokenizer,
        encoder=TransformerEncoder(dim=32, depth=2, num_heads=2, mlp_ratio=2.0),
        masking=masking if masking is not None else RandomMasking(ratio=0.5),
        decoder=PatchDecoderConfig(dim=32, depth=1, num_heads=2),
        lr=3e-3,
        warmup_steps=0,
    )


def _padded_batch(tokenizer: AudioTokenizer) -> dict[str, torch.Tensor]:
    """Two full clips and two short ones (padded)."""
    items = [tokenizer.decode_sample(s) for s in clips(2, seconds=2.0)]
    items += [tokenizer.decode_sample(s) for s in clips(2, seconds=0.4)]
    return tokenizer.collate(items)


def test_masked_count_per_sample_counts_real_positions_only():
    tokenizer = AudioTokenizer(SMALL, duration=1.0, patch_frames=4, patch_mels=4)
    batch = _padded_batch(tokenizer)
    mask = RandomMasking(ratio=0.75)(batch["maskable"]).mask
    real = batch["attention_mask"].sum(dim=1)
    assert torch.equal(mask.sum(dim=1), torch.round(real * 0.75).long())
    assert not (mask & ~batch["attention_mask"]).any()


def test_span_masking_hides_contiguous_time_spans_within_the_clip():
    tokenizer = AudioTokenizer(SMALL, duration=1.0, patch_frames=2)  # frames: a time sequence
    batch = _padded_batch(tokenizer)
    torch.manual_seed(0)
    mask = SpanMasking(ratio=0.5, mean_span_length=4, max_span_length=8)(batch["maskable"]).mask
    assert not (mask & ~batch["attention_mask"]).any()
    starts = (mask[:, 1:] & ~mask[:, :-1]).sum() + mask[:, 0].sum()
    assert mask.sum() / starts > 2  # runs, not scattered single frames


def test_loss_counts_hidden_positions_only():
    """The loss is the MSE between predictions and (per-patch normalized) targets at hidden
    positions, none of them padding; a change at hidden positions moves it."""
    tokenizer = AudioTokenizer(SMALL, duration=1.0, patch_frames=4, patch_mels=4)
    module = _tiny_module(tokenizer).eval()
    batch = _padded_batch(tokenizer)
    torch.manual_seed(1)
    out = module.forward_masked(batch)
    assert out["audio"].target.shape == (int(out["audio"].mask.sum()), tokenizer.spec.input_dim)
    assert out["audio"].pred.shape == out["audio"].target.shape
    assert not (out["audio"].mask & ~batch["attention_mask"]).any()
    expected = F.mse_loss(out["audio"].pred, normalize_patches(batch["patches"][out["audio"].mask]))
    assert torch.allclose(out.loss, expected)
    moved = dict(batch, patches=batch["patches"].clone())
    moved["patches"][out["audio"].mask] = torch.randn_like(moved["patches"][out["audio"].mask])
    torch.manual_seed(1)
    assert not torch.isclose(module.forward_masked(moved).loss, out.loss)


def test_padding_content_does_not_reach_the_loss():
    """Garbage in padded positions changes nothing: the encoder never sees padding, the decoder
    masks it out of attention, and it is never a target."""
    tokenizer = AudioTokenizer(SMALL, duration=1.0, patch_frames=4, patch_mels=4)
    module = _tiny_module(tokenizer).eval()
    batch = _padded_batch(tokenizer)
    padding = ~batch["attention_mask"]
    assert padding.any(), "the batch must hold a padded clip"
    torch.manual_seed(1)
    loss = module.forward_masked(batch).loss
    noisy = dict(batch, patches=batch["patches"].clone())
    noisy["patches"][padding] = 100.0 * torch.randn_like(noisy["patches"][padding])
    torch.manual_seed(1)
    torch.testing.assert_close(module.forward_masked(noisy).loss, loss)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    tokenizer = AudioTokenizer(SMALL, duration=1.0, patch_frames=4, patch_mels=8)
    module = _tiny_module(tokenizer)
    batch = tokenizer.collate([tokenizer.decode_sample(s) for s in clips(4)])
    losses = step_losses(module, batch, steps=120)
    assert np.mean(losses[-10:]) < 0.35 * np.mean(losses[:10])


def test_config_runs_on_audio_shards(tmp_path, monkeypatch):
    """configs/audio_mae.yaml trains two steps on the user's shards (no system package) and
    draws original / masked / reconstructed spectrograms at validation."""
    monkeypatch.chdir(tmp_path)
    write_shards(clips(8, seconds=2.5), str(tmp_path / "train-%06d.tar"))
    write_shards(clips(4, seconds=1.0), str(tmp_path / "val-%06d.tar"))
    cli = run(
        [
            "fit",
            f"--config={CONFIG}",
            *FAST,
            "--data.embedded=null",
            f"--data.train_shards={tmp_path / 'train-*.tar'}",
            f"--data.val_shards={tmp_path / 'val-*.tar'}",
        ]
    )
    assert cli.trainer.global_step == 2
    assert "val/loss" in cli.trainer.callback_metrics
    assert list(tmp_path.glob("reconstructions/step_*.png"))  # spectrograms drawn at validation


# ------------------------------------------------------------------------ reader, stats
def _audio_folder(root: Path) -> Path:
    for label, freq in (("dog", 300.0), ("cat", 900.0)):
        (root / label).mkdir(parents=True)
        for i in range(2):
            sf.write(root / label / f"{i}.wav", tone(0.5, 8000, freq * (i + 1)), 8000)
    sf.write(root / "cat" / "long.flac", tone(1.5, 16000, 500.0), 16000, format="FLAC")
    (root / "cat" / "notes.txt").write_text("not audio")
    return root


def test_shard_reader_keeps_folder_labels(tmp_path):
    folder = _audio_folder(tmp_path / "sounds")
    summary = run(
        [
            "shards",
            f"--inputs={folder}",
            f"--output={tmp_path / 'out' / 'train'}",
            "--modality=audio",
        ]
    )
    assert summary.samples == 5
    data = ShardDataModule(
        val_shards=summary.shards[0],
        batcher=AudioTokenizer(SMALL, duration=1.0),
        batch_size=8,
        num_workers=0,
    )
    assert next(iter(data.val_dataloader()))["patches"].shape[0] == 5
    meta = {s["__key__"]: json.loads(s["json"]) for s in wds.WebDataset(summary.shards)}
    assert meta["dog_0"]["label"] == "dog"
    assert meta["cat_long"] == {"label": "cat", "path": "cat/long.flac"}


def test_audio_stats_feed_dataset_normalization(tmp_path):
    write_shards(clips(4), str(tmp_path / "train-%06d.tar"))
    output = tmp_path / "stats.json"
    features = ["--features.sample_rate=8000", "--features.n_fft=256"]
    features += ["--features.hop_length=128", "--features.n_mels=16"]
    stats = run(
        ["audio-stats", f"--inputs={tmp_path / 'train-*.tar'}", f"--output={output}", *features]
    )
    assert stats["clips"] == 4 and stats["skipped"] == 0
    raw = AudioTokenizer(SMALL)
    mels = torch.cat([raw.log_mel(raw.waveform(s)) for s in clips(4)], dim=1).double()
    assert abs(stats["mean"] - float(mels.mean())) < 1e-3
    assert abs(stats["std"] - float(mels.std(unbiased=False))) < 1e-3
    tokenizer = AudioTokenizer(SMALL, normalize="dataset", stats=str(output), duration=1.0)
    item = tokenizer.decode_sample(clips(1)[0])
    expected = (raw.log_mel(raw.waveform(clips(1)[0])) - stats["mean"]) / stats["std"]
    assert torch.allclose(item.features[:, :60], expected[:, :60], atol=1e-4)
    with pytest.raises(ValueError, match="rerun mmm audio-stats"):
        AudioTokenizer(LogMelSettings(sample_rate=16000), normalize="dataset", stats=str(output))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="patch_mels=5 must divide"):
        AudioTokenizer(SMALL, patch_mels=5)
    with pytest.raises(ValueError, match="needs stats"):
        AudioTokenizer(SMALL, normalize="dataset")
    with pytest.raises(ValueError, match="f_max"):
        LogMelSettings(sample_rate=8000, f_max=6000.0)


# ------------------------------------------------------------------------ real corpus
def test_missing_corpus_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install asterisk-core-sounds-en-wav"):
        next(asterisk_en(root=tmp_path / "missing"))


@pytest.mark.skipif(not ASTERISK_EN.is_dir(), reason="asterisk-core-sounds-en-wav not installed")
def test_asterisk_corpus_decodes():
    samples = list(asterisk_en())
    assert len(samples) == 558
    labels = {json.loads(s["json"])["label"] for s in samples}
    assert {"digits", "letters", "phonetic"} <= labels
    tokenizer = AudioTokenizer(LogMelSettings(sample_rate=8000, n_fft=256, hop_length=80))
    batch = tokenizer.collate([tokenizer.decode_sample(s) for s in samples[:4]])
    assert batch["patches"].shape == (4, 50, 64 * 4)


def test_render_draws_spectrograms_low_frequencies_at_the_bottom():
    tokenizer = AudioTokenizer(SMALL, duration=1.0, patch_frames=4, patch_mels=4)
    batch = tokenizer.collate([tokenizer.decode_sample(sample(tone(1.0, 8000, 200.0), 8000))])
    image = tokenizer.render(batch["patches"])
    assert image.shape == (1, 3, 16, 60)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    brightness = image[0].mean(dim=(0, 2))  # (F,) per row, top row = highest band
    assert int(brightness.argmax()) > 12  # a 200 Hz tone lights the bottom rows
