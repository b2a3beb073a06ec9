"""Paired samples: manifests (JSONL, CSV) to multi-member shards, and the embedded pairs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from PIL import Image

from mmm.commands import shards_command
from mmm.data.corpora import iter_corpus
from mmm.data.corpora.audio import ASTERISK_TRANSCRIPTS
from mmm.data.formats import manifest_samples
from mmm.tokenizers.audio import AudioTokenizer, LogMelSettings
from mmm.tokenizers.image import ImageTokenizer


def _wav(path, seconds: float = 0.5, rate: int = 8000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 440 * t), rate)


def test_jsonl_and_csv_manifests_become_paired_shards(tmp_path):
    """NeMo-style JSONL and Hugging Face-style metadata.csv: files relative to the manifest,
    inline text, other fields kept as metadata; the shards feed each modality's tokenizer."""
    (tmp_path / "clips").mkdir()
    _wav(tmp_path / "clips" / "a.wav")
    _wav(tmp_path / "clips" / "b.wav")
    Image.new("RGB", (16, 16), "red").save(tmp_path / "red.png")
    (tmp_path / "speech.jsonl").write_text(
        '{"audio_filepath": "clips/a.wav", "text": "please hold", "duration": 0.5}\n'
        '\n{"key": "second", "audio": "clips/b.wav", "text": "thank you"}\n'
    )
    (tmp_path / "metadata.csv").write_text("file_name,caption,label\nred.png,a red square,3\n")
    summary = shards_command(
        inputs=[str(tmp_path / "speech.jsonl"), str(tmp_path / "metadata.csv")],
        output=str(tmp_path / "shards" / "train"),
        modality="manifest",
        progress=False,
    )
    assert summary.samples == 3
    samples = {s["__key__"]: s for s in wds.WebDataset(summary.shards, shardshuffle=False)}
    assert sorted(samples) == ["metadata-2", "second", "speech-1"]
    first = samples["speech-1"]
    assert first["txt"] == b"please hold" and json.loads(first["json"]) == {"duration": 0.5}
    assert first["wav"] == (tmp_path / "clips" / "a.wav").read_bytes()
    assert samples["metadata-2"]["txt"] == b"a red square"
    assert json.loads(samples["metadata-2"]["json"]) == {"label": "3"}
    audio = AudioTokenizer(LogMelSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16))
    assert audio.decode_sample(first).real_frames > 0
    image = ImageTokenizer(image_size=16, patch_size=4)
    assert image.decode_sample(samples["metadata-2"]).shape == (3, 16, 16)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"audio": "clips/missing.wav", "text": "x"}', "missing.wav"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ("{not json", "not valid JSON"),
        ('{"text": "a", "transcript": "b"}', "'txt' member"),
    ],
)
def test_bad_manifest_lines_name_file_and_line(tmp_path, line, problem):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"m\.jsonl:2: .*{problem}"):
        list(manifest_samples([str(manifest)]))


def test_digits_pair_each_image_with_its_label_word():
    samples = list(iter_corpus("digits-words"))
    assert len(samples) == 1797
    words = {s["cls"]: s["txt"] for s in samples}
    assert words[b"7"] == b"seven" and len(words) == 10
    image = Image.open(io.BytesIO(samples[0]["png"]))
    assert image.size == (8, 8) and image.mode == "L"


@pytest.mark.skipif(not ASTERISK_TRANSCRIPTS.is_file(), reason="asterisk-core-sounds-en absent")
def test_recorded_prompts_pair_with_their_transcripts():
    samples = list(iter_corpus("asterisk-en-transcribed"))
    assert len(samples) > 500
    said = {s["__key__"]: s["txt"].decode() for s in samples}
    assert said["digits_7"] == "seven"
    assert not any(text.startswith("[") for text in said.values())  # tones have no words
