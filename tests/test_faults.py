"""Careless and hostile inputs: each ends in a named error or a counted skip, never a hang,
a silent NaN, lost data or a silently swapped vocabulary. Bad inputs are made here, tiny."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds
from PIL import Image

from datamodules import ShardDataModule
from datamodules.decoding import LOGGED_SKIPS, UndecodableDataError
from mmm.cli import refuse_repeated_options, run
from mmm.commands import shards_command, tokenizer_command
from mmm.data.formats import chunk_text, read_fasta
from mmm.data.reading import read_source
from mmm.data.shards import OutputBusyError, output_lock, write_shards
from mmm.export import MappingError, init_from
from mmm.export.parts import one_modality_module
from mmm.generation import SamplingSettings, generate_batches
from mmm.inference import (
    embed_sequences,
    fill_mask,
    load_module,
    read_sequences,
    write_sequence_batches,
)
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule, ModalityConfig
from mmm.scoring import score
from mmm.tokenizers.audio import AudioTokenizer, LogMelSettings
from mmm.tokenizers.base import SampleError
from mmm.tokenizers.image import ImageTokenizer
from mmm.tokenizers.protein import ProteinTokenizer
from mmm.tokenizers.smiles import SmilesTokenizer
from mmm.tokenizers.text import TextTokenizer
from tests.helpers import fit_checkpoint, fit_protein_checkpoint, protein_settings

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("split", ["train", "val"])
def test_shards_of_another_modality_stop_with_an_error_not_a_flood(corpus_dir, split, caplog):
    """Text shards read by the image tokenizer: nothing decodes. Training used to skip
    forever (700 MB of log in 10 minutes); now a whole pass of skips is an error that says
    what was read, what was skipped and why, and the log holds a handful of lines."""
    data = ShardDataModule(
        **{f"{split}_shards": str(corpus_dir / "train-*.tar")},
        batcher=ImageTokenizer(image_size=16, patch_size=4),
        batch_size=4,
        num_workers=0,
        shuffle_buffer=8,
    )
    loader = data.train_dataloader() if split == "train" else data.val_dataloader()
    with caplog.at_level(logging.WARNING), pytest.raises(UndecodableDataError) as error:
        for _ in range(3):  # epochs
            list(loader)
    message = str(error.value)
    assert "ImageTokenizer could not decode any sample" in message
    assert "read" in message and "skipped" in message and "'png'" in message
    assert "no image member" in message  # the first reasons
    assert len(caplog.records) <= LOGGED_SKIPS + 2


@pytest.mark.parametrize("workers", [1, 0])
def test_sigterm_stops_a_run_that_waits_for_data(tmp_path, corpus_dir, tokenizer_dir, workers):
    """Lightning checks SIGTERM only between batches; a loader that never delivers one (here
    a shard URL that stalls) must not make the run ignore it. With ``num_workers=0`` the main
    process reads the stalled pipe itself, and Lightning's teardown waits for the pipe's
    command (60 s here): the run must still end within StopOnSigterm's 10 s."""
    stalled = f"pipe:sleep 60; cat {corpus_dir}/train-000000.tar"
    command = [
        sys.executable,
        "-m",
        "mmm.cli",
        "fit",
        f"--config={ROOT / 'configs' / 'text_mlm.yaml'}",
        f"--model.tokenizer.path={tokenizer_dir}",
        "--model.encoder.dim=32",
        "--model.encoder.depth=1",
        f"--data.train_shards={stalled}",
        "--data.train_mode=resampled",  # elastic training refuses remote shards up front
        f"--data.val_shards={corpus_dir}/val-*.tar",
        "--data.embedded=null",
        "--data.epoch_samples=8",
        f"--data.num_workers={workers}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in run.stdout:  # the loader is built: training now waits for its first batch
        if line.startswith("train epoch:"):
            break
    time.sleep(2)
    run.send_signal(signal.SIGTERM)
    start = time.monotonic()
    code = run.wait(timeout=60)
    assert time.monotonic() - start < 20 and code == 128 + signal.SIGTERM


def _float_wav(values: np.ndarray, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, values.astype(np.float32), rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def _tone(seconds: float = 0.5, rate: int = 8000) -> np.ndarray:
    return 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)


def _audio_tokenizer(**kwargs) -> AudioTokenizer:
    settings = LogMelSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)
    return AudioTokenizer(settings, duration=0.5, **kwargs)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan], ids=["+inf", "-inf", "nan"])
def test_non_finite_audio_is_a_bad_sample_named_as_such(bad):
    """One +inf in a float WAV used to turn every later loss into NaN; NaN clips were
    reported as silent."""
    values = _tone()
    values[100] = bad
    sample = {"__key__": "clip-7", "__url__": "a-000000.tar", "wav": _float_wav(values)}
    with pytest.raises(SampleError, match=r"a-000000\.tar.*'clip-7'.*1 non-finite values"):
        _audio_tokenizer().decode_sample(sample)


def test_a_header_claiming_billions_of_frames_is_rejected_before_decoding():
    """A 2 KB MP3 whose Xing header claims 10^12 frames used to die with `Unable to allocate
    29.1 GiB`, naming no sample."""
    buffer = io.BytesIO()
    sf.write(buffer, _tone(1.0).astype(np.float32), 8000, format="MP3")
    data = bytearray(buffer.getvalue())
    xing = data.find(b"Xing")
    data[xing + 8 : xing + 12] = struct.pack(">I", 0x7FFFFFFF)  # the frame count
    sample = {"__key__": "liar", "__url__": "a-000000.tar", "mp3": bytes(data)}
    assert len(data) < 4096
    with pytest.raises(SampleError, match=r"'liar'.*declares \d+ frames.*max_clip_seconds"):
        _audio_tokenizer().decode_sample(sample)


def test_running_out_of_memory_while_decoding_is_a_bad_sample(monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 29.1 GiB")

    monkeypatch.setattr(sf.SoundFile, "read", no_memory)
    sample = {"__key__": "big", "wav": _float_wav(_tone())}
    with pytest.raises(SampleError, match="'big'.*Unable to allocate"):
        _audio_tokenizer().decode_sample(sample)


@pytest.mark.parametrize("content", ['{"mean": NaN, "std": 1.0}', '{"mean": 0.0, "std": 0.0}'])
def test_statistics_files_with_unusable_values_are_refused(tmp_path, content):
    settings = LogMelSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)
    stats = json.loads(content.replace("NaN", '"nan"'))
    stats["features"] = dataclasses.asdict(settings)
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats).replace('"nan"', "NaN"))
    with pytest.raises(ValueError, match=r"stats\.json holds mean=.*finite and std > 0"):
        AudioTokenizer(settings, normalize="dataset", stats=str(path))


def test_a_non_finite_float_image_is_a_bad_sample():
    pixels = np.zeros((8, 8), dtype=np.float32)
    pixels[2, 3] = np.nan
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF")
    sample = {"__key__": "nan-image", "tif": buffer.getvalue()}
    with pytest.raises(SampleError, match="'nan-image'.*non-finite pixel values"):
        ImageTokenizer(image_size=8, patch_size=4).decode_sample(sample)


@pytest.mark.parametrize("stage", ["fit", "validate"])
def test_a_non_finite_loss_stops_the_run_naming_the_step(tiny_module, corpus_data, stage):
    """A diverged model (here: a weight set to NaN) used to train on, save NaN weights and
    exit 0, while validation dropped the NaN batch and reported a normal-looking loss."""
    with torch.no_grad():
        tiny_module.encoder.norm.weight[0] = float("nan")
    data = corpus_data
    trainer = L.Trainer(
        max_steps=3,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    where = "training step 0" if stage == "fit" else "val batch 0"
    with pytest.raises(FloatingPointError, match=rf"{where}.*the loss is nan.*--model.lr"):
        getattr(trainer, stage)(tiny_module, datamodule=data)


def test_a_rank_stops_with_the_others_when_one_sees_a_non_finite_loss(
    tiny_module, tokenizer, corpus_dir, monkeypatch
):
    """Under DDP a rank whose own loss is finite must stop at the step another rank's loss
    is not: alone it would wait for the stopped rank's gradients forever. The ranks' vote is
    played here by the strategy's ``reduce_boolean_decision`` saying "not all finite"."""
    data = ShardDataModule(
        train_shards=str(corpus_dir / "train-*.tar"),
        batcher=tokenizer,
        batch_size=8,
        num_workers=0,
    )
    trainer = L.Trainer(
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    votes = []
    monkeypatch.setattr(
        trainer.strategy,
        "reduce_boolean_decision",
        lambda decision, all=True: votes.append(decision) or False,
    )
    with pytest.raises(FloatingPointError, match="training step 0: the loss is not finite on"):
        trainer.fit(tiny_module, datamodule=data)
    assert votes == [True]  # this rank's own loss was finite, and it voted so


def test_mmm_fit_diverging_at_lr_1e3_stops_naming_the_step(tmp_path, tokenizer_dir, corpus_dir):
    """``--model.lr 1e3`` used to train on NaN, exit 0 and save a checkpoint of NaN weights."""
    args = [
        f"--config={ROOT / 'configs' / 'text_mlm.yaml'}",
        f"--model.tokenizer.path={tokenizer_dir}",
        "--model.tokenizer.max_length=32",
        "--model.encoder.dim=32",
        "--model.encoder.depth=1",
        "--model.encoder.num_heads=2",
        "--model.lr=1e3",
        "--model.warmup_steps=0",
        f"--data.train_shards={corpus_dir}/train-*.tar",
        f"--data.val_shards={corpus_dir}/val-*.tar",
        "--data.num_workers=0",
        "--data.batch_size=8",
        "--trainer.max_steps=40",
        "--trainer.val_check_interval=20",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    with pytest.raises(FloatingPointError, match=r"training step \d+: the loss is (nan|inf)"):
        run(["fit", *args])
    assert not list(tmp_path.rglob("*.ckpt"))  # no checkpoint of NaN weights


def test_audio_stats_skip_a_clip_holding_inf_and_write_finite_values(tmp_path):
    """``mmm audio-stats`` used to write ``"mean": NaN`` after one +inf sample."""
    bad = _tone()
    bad[10] = np.inf
    (tmp_path / "good.wav").write_bytes(_float_wav(_tone()))
    (tmp_path / "bad.wav").write_bytes(_float_wav(bad))
    settings = LogMelSettings(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16)
    output = tmp_path / "stats.json"
    run(
        [
            "audio-stats",
            f"--inputs={tmp_path}/*.wav",
            f"--output={output}",
            "--features.sample_rate=8000",
            "--features.n_fft=256",
            "--features.hop_length=128",
            "--features.n_mels=16",
        ]
    )
    stats = json.loads(output.read_text())
    assert (stats["clips"], stats["skipped"]) == (1, 1)
    assert np.isfinite([stats["mean"], stats["std"]]).all()
    AudioTokenizer(settings, normalize="dataset", stats=str(output))  # accepted


def _docs(root: Path) -> Path:
    (root / "docs").mkdir(parents=True, exist_ok=True)
    (root / "docs" / "a.txt").write_text("the first document\n\nwith two paragraphs")
    (root / "docs" / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    return root / "docs"


def _shards(root: Path, prefix: str = "t") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob(f"{prefix}-*.tar"))}


def test_a_failed_overwrite_keeps_the_old_shards(tmp_path):
    """`--overwrite true` used to delete the old shards before the new ones existed."""
    docs = _docs(tmp_path)
    out = tmp_path / "out"
    shards_command(inputs=str(docs), output=str(out / "t"), progress=False)
    before = _shards(out)
    (docs / "c.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(ValueError, match=r"c\.txt: not readable as UTF-8"):
        shards_command(
            inputs=str(docs),
            output=str(out / "t"),
            overwrite=True,
            on_error="raise",
            progress=False,
        )
    assert _shards(out) == before and not (out / "t.parts").exists()


def test_the_output_inside_the_inputs_is_not_read_again(tmp_path):
    docs = _docs(tmp_path)
    first = shards_command(inputs=str(docs), output=str(docs / "out" / "t"), progress=False)
    again = shards_command(
        inputs=str(docs), output=str(docs / "out" / "t"), overwrite=True, progress=False
    )
    assert again.samples == first.samples == 3


def test_duplicate_keys_are_refused_naming_both_sources(tmp_path):
    samples = [
        {"__key__": "a", "txt": b"x", "__source__": "docs/a.md"},
        {"__key__": "a", "txt": b"y", "__source__": "docs/a.txt"},
    ]
    with pytest.raises(ValueError, match=r"duplicate sample key 'a': docs/a\.md and docs/a\.txt"):
        write_shards(samples, str(tmp_path / "t-%06d.tar"))


@pytest.mark.parametrize("workers", [1, 2])
def test_keys_shared_by_two_files_are_refused_in_one_or_several_processes(tmp_path, workers):
    """``mols.smi`` and ``mols.csv`` both give keys ``mols-2``, ...: refused naming both lines,
    also when the two files went to different worker processes (each checked only its own)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "mols.smi").write_text("CCO\nCCN\n")
    (tmp_path / "in" / "mols.csv").write_text("smiles\nCCC\nCCCl\n")
    with pytest.raises(ValueError, match=r"duplicate sample key 'mols-2': .*mols\.(csv|smi):2 and"):
        shards_command(
            inputs=str(tmp_path / "in"),
            output=str(tmp_path / "out" / "m"),
            modality="smiles",
            workers=workers,
            progress=False,
        )
    assert not list((tmp_path / "out").glob("m-*.tar"))  # nothing written under final names


def test_non_ascii_and_same_stem_names_keep_distinct_keys(tmp_path):
    """`日本.txt` and `中文.txt` both used to become key `__`; `a.txt` and `a.jsonl` both `a`."""
    (tmp_path / "docs").mkdir()
    for name in ("日本.txt", "中文.txt", "a.txt"):
        (tmp_path / "docs" / name).write_text(f"text of {name}")
    (tmp_path / "docs" / "a.jsonl").write_text('{"text": "a line"}\n')
    summary = shards_command(inputs=str(tmp_path / "docs"), output=str(tmp_path / "t"))
    keys = sorted(s["__key__"] for s in wds.WebDataset(summary.shards, shardshuffle=False))
    assert keys == ["a_jsonl-1-0", "a_txt-0", "中文_txt-0", "日本_txt-0"]


def test_text_inputs_not_utf8_are_named_skipped_or_raised_and_gzip_is_read(tmp_path, caplog):
    docs = _docs(tmp_path)
    (docs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (docs / "binary.txt").write_bytes(bytes(range(256)))
    (docs / "more.jsonl.gz").write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    (docs / "data.json").write_text("{}")
    (docs / "table.csv").write_text("a,b\n")
    with caplog.at_level(logging.WARNING):
        summary = shards_command(inputs=str(docs), output=str(tmp_path / "t"), progress=False)
    assert summary.samples == 4 and summary.skipped == 2  # a.txt, b.jsonl x2, more.jsonl.gz
    assert "latin1.txt: not readable as UTF-8" in caplog.text and "binary.txt" in caplog.text
    assert "ignored 1 .json, 1 .csv" in caplog.text
    assert not list(tmp_path.glob("*.parts"))


def test_writing_no_sample_is_an_error_not_exit_0(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("not a documented text input")
    with pytest.raises(ValueError, match=r"no sample written from 0 input file"):
        shards_command(inputs=str(tmp_path / "docs"), output=str(tmp_path / "t"), progress=False)


def test_a_long_single_line_is_cut_into_full_chunks_in_order():
    """A 10 MB single line once took 4 minutes to chunk (each piece re-sliced the rest of the
    line: quadratic). 400,000 words now take a fraction of a second; speed itself is not
    asserted here (timings fail under load), the pieces are."""
    words = [f"w{i}" for i in range(400_000)]
    chunks = chunk_text(" ".join(words), max_words=80)
    assert len(chunks) == 5_000 and {len(c.split()) for c in chunks} == {80}
    assert " ".join(chunks).split() == words


def test_a_tokenizer_directory_is_not_overwritten_silently(tmp_path, corpus_dir):
    output = tmp_path / "tok"
    source = str(corpus_dir / "train-*.tar")
    tokenizer_command(source=source, output=str(output), vocab_size=120)
    with pytest.raises(FileExistsError, match="a tokenizer exists at .*--overwrite true"):
        tokenizer_command(source=source, output=str(output), vocab_size=120)
    tokenizer_command(source=source, output=str(output), vocab_size=120, overwrite=True)


def test_a_checkpoint_refuses_a_tokenizer_retrained_in_place(
    tmp_path, tiny_module, tokenizer, tokenizer_dir
):
    """Same size, other ids: the weights used to load and silently predict other tokens."""
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False)
    trainer.strategy.connect(tiny_module)
    checkpoint = tmp_path / "model.ckpt"
    trainer.save_checkpoint(checkpoint)
    retrained = tmp_path / "retrained"
    shutil.copytree(tokenizer_dir, retrained)
    config = json.loads((retrained / "tokenizer.json").read_text())
    vocab = config["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[-2:]  # two ordinary tokens trade ids
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (retrained / "tokenizer.json").write_text(json.dumps(config))
    other = TextTokenizer(path=str(retrained), max_length=32)
    assert other.spec == tokenizer.spec and other.fingerprint() != tokenizer.fingerprint()
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    assert load_module(str(checkpoint), tokenizer=tokenizer, encoder=encoder)
    with pytest.raises(ValueError, match=r"fingerprint \w+, but the tokenizer at .*retrained"):
        load_module(str(checkpoint), tokenizer=other, encoder=encoder)


@pytest.mark.parametrize("content", [b"", b"model:\n  lr: 0.1\n"], ids=["empty", "yaml"])
def test_a_file_that_is_no_checkpoint_is_named(tmp_path, content):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"model\.ckpt is not a checkpoint written by mmm fit"):
        load_module(str(path))
    config = str(ROOT / "configs" / "text_mlm.yaml")
    with pytest.raises(ValueError, match=r"model\.ckpt is not a checkpoint written by mmm fit"):
        run(["fit", f"--config={config}", f"--ckpt_path={path}"])  # resuming from it


def test_fill_mask_says_what_is_wrong(tiny_module, tokenizer):
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        fill_mask(tiny_module, ["the [MASK] fox"], top_k=-1)
    long = " ".join(["word"] * 60) + " [MASK]"
    with pytest.raises(ValueError, match="beyond max_length=32 tokens"):
        fill_mask(tiny_module, [long])


def test_embedding_errors_name_the_record(tmp_path):
    fasta = tmp_path / "p.fasta"
    records = [f">good{n}\nMKTAYIAK\n" for n in range(40)] + [">bad41\nMKT@YIAK\n"]
    fasta.write_text("".join(records))
    module = MaskedModelingModule(
        tokenizer=ProteinTokenizer(max_length=16),
        encoder=TransformerEncoder(dim=16, depth=1, num_heads=2),
    )
    names = [f"{fasta}: record {name!r}" for name, _ in read_sequences(fasta)]
    sequences = [sequence for _, sequence in read_sequences(fasta)]
    with pytest.raises(ValueError, match=r"p\.fasta: record 'bad41'"):
        embed_sequences(module, sequences, batch_size=32, names=names)


def test_a_truncated_gzipped_fasta_is_named(tmp_path):
    path = tmp_path / "p.fasta.gz"
    records = "".join(
        f">p{n}\n{'ACDEFGHIKLMNPQRSTVWY'[n % 20] * (n % 50 + 1)}\n" for n in range(500)
    )
    whole = gzip.compress(records.encode())
    path.write_bytes(whole[: len(whole) // 2])  # cut in the middle of the stream
    with pytest.raises(ValueError, match=r"p\.fasta\.gz: cannot be read as \(gzipped\) UTF-8"):
        list(read_fasta(path))


def test_a_truncated_gzipped_fasta_is_skipped_and_counted_by_mmm_shards(tmp_path):
    """``--on_error skip`` skips the file (the protein reader reads file by file), counts it,
    and keeps the other files' records; ``raise`` names it."""
    (tmp_path / "in").mkdir()
    records = "".join(f">p{n}\nMKTAYIAKQRQISFVKSHFSRQ\n" for n in range(300)).encode()
    whole = gzip.compress(records)
    (tmp_path / "in" / "cut.fasta.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "in" / "good.fasta").write_text(">q1\nMKTAYIAK\n")
    settings = {"inputs": str(tmp_path / "in"), "modality": "protein", "progress": False}
    with pytest.raises(ValueError, match=r"cut\.fasta\.gz: cannot be read"):
        shards_command(output=str(tmp_path / "raised"), on_error="raise", **settings)
    summary = shards_command(output=str(tmp_path / "skipped"), on_error="skip", **settings)
    assert summary.skipped == 1
    keys = {s["__key__"] for s in wds.WebDataset(summary.shards, shardshuffle=False)}
    assert "q1" in keys


def test_smiles_skips_are_counted_and_unknown_tokens_are_not_silent(tmp_path, caplog):
    (tmp_path / "mols.smi").write_text("CCO\nC1CC\nc1ccccc1\nC%%C\n")
    summary = shards_command(
        inputs=str(tmp_path / "mols.smi"),
        output=str(tmp_path / "s"),
        modality="smiles",
        progress=False,
    )
    assert summary.samples == 3 and summary.skipped == 1  # the summary used to say 0
    source = tmp_path / "vocab.smi"
    source.write_text("CCO\nc1ccccc1O\n[NH4+]\n")
    tokenizer = SmilesTokenizer(path=str(tmp_path / "v.json"), train_source=str(source))
    with pytest.raises(SampleError, match=r"'odd'.*outside the vocabulary.*\['\[Xx\]'\]"):
        tokenizer.decode_sample({"__key__": "odd", "smi": b"CC[Xx]O"})
    with caplog.at_level(logging.WARNING):
        tokenizer.collate(["CC[Xx]O"])  # strings given directly: read as <unk>, with a warning
    assert "[Xx]" in caplog.text


def test_every_torch_load_refuses_pickled_code():
    """Checkpoints and saved tensors are loaded with ``weights_only=True`` everywhere (mmm,
    the datamodule, the scripts), so a crafted file cannot run code."""
    files = [*ROOT.glob("mmm/**/*.py"), *ROOT.glob("datamodules/*.py"), *ROOT.glob("scripts/*.py")]
    unsafe = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "torch.load(" in line and "weights_only=True" not in line
    ]
    assert not unsafe


# ------------------------------------------------------------------ data ingest: manifests
def _manifest(tmp_path: Path, text: str, name: str = "m.jsonl", **kwargs) -> Path:
    """A manifest ``data/NAME`` holding ``text``, beside ``data/clips/a.wav`` and ``b.wav``."""
    (tmp_path / "data" / "clips").mkdir(parents=True, exist_ok=True)
    for clip in ("a", "b"):
        (tmp_path / "data" / "clips" / f"{clip}.wav").write_bytes(f"RIFF {clip}".encode())
    path = tmp_path / "data" / name
    path.write_text(text, **kwargs)
    return path


def _manifest_shards(manifest: Path, tmp_path: Path, **kwargs) -> dict[str, dict]:
    """The samples ``mmm shards --modality manifest`` writes from ``manifest``, by key."""
    summary = shards_command(
        inputs=str(manifest),
        output=str(tmp_path / "out" / "m"),
        modality="manifest",
        progress=False,
        overwrite=True,
        **kwargs,
    )
    return {s["__key__"]: s for s in wds.WebDataset(summary.shards, shardshuffle=False)}


@pytest.mark.parametrize("way_out", ["relative", "absolute", "link"])
def test_manifest_files_outside_its_folder_are_refused_unless_allowed(tmp_path, way_out):
    """A manifest someone else wrote stored ``../../etc/ld.so.conf``, ``/etc/ld.so.conf`` and
    the target of ``clips/host.wav -> /etc/hostname`` in the shards, exit 0. Now the line is
    refused, named; ``--allow_outside`` or ``roots`` let a trusted manifest (NeMo's absolute
    paths) through."""
    (tmp_path / "elsewhere").mkdir()
    secret = tmp_path / "elsewhere" / "secret.wav"
    secret.write_bytes(b"not yours")
    named = {"relative": "../elsewhere/secret.wav", "absolute": str(secret), "link": ""}[way_out]
    if way_out == "link":
        (tmp_path / "data" / "clips").mkdir(parents=True)
        (tmp_path / "data" / "clips" / "host.wav").symlink_to(secret)
        named = "clips/host.wav"
    manifest = _manifest(
        tmp_path, f'{{"audio": "clips/a.wav"}}\n{{"audio": {json.dumps(named)}}}\n'
    )
    with pytest.raises(ValueError, match=r"m\.jsonl:2: field 'audio' names .* outside the manif"):
        _manifest_shards(manifest, tmp_path, on_error="raise")
    summary = shards_command(
        inputs=str(manifest), output=str(tmp_path / "out" / "m"), modality="manifest"
    )
    assert summary.samples == 1 and summary.skipped == 1
    assert "m.jsonl:2" in str(summary) and "--allow_outside" in str(summary)
    allowed = _manifest_shards(manifest, tmp_path, allow_outside=True)
    assert allowed["m-2"]["wav"] == b"not yours"
    rooted = _manifest_shards(manifest, tmp_path, options={"roots": [str(secret.parent)]})
    assert rooted["m-2"]["wav"] == b"not yours"


def test_links_in_an_input_folder_leading_outside_are_refused(tmp_path):
    """``secret.txt -> /etc/passwd`` in a text folder was stored in the shards. A link found
    in a folder or by a glob must stay inside it; a file named directly is the user's."""
    docs = _docs(tmp_path)
    (tmp_path / "passwd").write_text("root:x:0:0")
    (docs / "secret.txt").symlink_to(tmp_path / "passwd")
    for inputs in (str(docs), str(docs / "*.txt")):
        with pytest.raises(ValueError, match=r"secret\.txt leads to .*passwd, outside .*--allow_"):
            shards_command(inputs=inputs, output=str(tmp_path / "t"), progress=False)
    assert not list(tmp_path.glob("t*"))  # refused before anything was written
    named = shards_command(inputs=str(docs / "secret.txt"), output=str(tmp_path / "n"))
    allowed = shards_command(inputs=str(docs), output=str(tmp_path / "a"), allow_outside=True)
    assert named.samples == 1 and allowed.samples == 4


def test_a_bad_manifest_line_skips_that_line_only(tmp_path):
    """A missing clip on line 2 of 4 used to skip lines 2-4 and report "skipped 1"."""
    lines = ["clips/a.wav", "clips/missing.wav", "clips/b.wav", "clips/a.wav"]
    manifest = _manifest(
        tmp_path, "".join(f'{{"audio": "{c}", "n": {i}}}\n' for i, c in enumerate(lines))
    )
    samples = _manifest_shards(manifest, tmp_path)
    assert sorted(samples) == ["m-1", "m-3", "m-4"]
    with pytest.raises(ValueError, match=r"m\.jsonl:2: 'clips/missing\.wav' is not a file"):
        _manifest_shards(manifest, tmp_path, on_error="raise")


def test_csv_manifests_with_a_bom_or_semicolons_keep_their_columns(tmp_path):
    """A BOM made the first column ``\\ufefffile_name`` (no ``wav`` written); ``;`` made one
    column ``file_name;text``: both wrote samples with only a ``json`` member, exit 0."""
    bom = _manifest(tmp_path, "file_name,text\nclips/a.wav,hello\n", "b.csv", encoding="utf-8-sig")
    semicolons = _manifest(tmp_path, "file_name;text\nclips/b.wav;bye, then\n", "s.csv")
    samples = _manifest_shards(bom, tmp_path) | _manifest_shards(semicolons, tmp_path)
    assert samples["b-2"]["wav"] == b"RIFF a" and samples["b-2"]["txt"] == b"hello"
    assert samples["s-2"]["wav"] == b"RIFF b" and samples["s-2"]["txt"] == b"bye, then"


def test_manifest_columns_no_reader_understands_are_named_with_the_mapping(tmp_path):
    """``wav,sentence`` columns and ``{}`` lines used to write samples of metadata only."""
    csv_manifest = _manifest(tmp_path, "wav,sentence\nclips/a.wav,hello\n", "m.csv")
    with pytest.raises(ValueError, match=r"m\.csv:1: no column .*\['wav', 'sentence'\].*file_fi"):
        _manifest_shards(csv_manifest, tmp_path, on_error="raise")
    mapped = _manifest_shards(
        csv_manifest, tmp_path, options={"file_fields": ["wav"], "members": {"sentence": "txt"}}
    )
    assert mapped["m-2"]["txt"] == b"hello" and mapped["m-2"]["wav"] == b"RIFF a"
    jsonl = _manifest(tmp_path, '{"filename": "clips/a.wav", "id": 1}\n{}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:1: no modality .*\['filename', 'id'\]"):
        _manifest_shards(jsonl, tmp_path, on_error="raise")
    with pytest.raises(ValueError, match=r"no sample written .*2 skipped.*m\.jsonl:1: no modal"):
        _manifest_shards(jsonl, tmp_path)


@pytest.mark.parametrize("value", ["null", "123", '["a", "b"]'])
def test_inline_manifest_fields_must_be_strings(tmp_path, value):
    """``"text": null``, ``123`` and ``["a", "b"]`` became the transcripts ``None``, ``123``
    and ``['a', 'b']``."""
    manifest = _manifest(tmp_path, f'{{"text": "fine"}}\n{{"text": {value}}}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:2: field 'text' (is null|must be a string)"):
        _manifest_shards(manifest, tmp_path, on_error="raise")
    assert list(_manifest_shards(manifest, tmp_path)) == ["m-1"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("text,label\nhi,1,extra\n", r"m\.csv:2: 3 values, but the header has 2 columns"),
        ("text,text\nhi,there\n", r"m\.csv:1: column 'text' appears twice"),
        ("path,label\nclips/x.json,1\n", r"m\.csv:2: field 'path' would be the 'json' member"),
    ],
)
def test_csv_manifest_lines_that_would_lose_values_are_named(tmp_path, text, problem):
    """Extra values were stored as ``{"null": [...]}``, a repeated column kept one value, and
    metadata overwrote a ``.json`` file member."""
    (tmp_path / "data" / "clips").mkdir(parents=True)
    (tmp_path / "data" / "clips" / "x.json").write_text('{"boxes": []}')
    manifest = _manifest(tmp_path, text, "m.csv")
    with pytest.raises(ValueError, match=problem):
        _manifest_shards(manifest, tmp_path, on_error="raise")


def test_duplicate_manifest_keys_name_both_lines(tmp_path):
    manifest = _manifest(tmp_path, '{"key": "k", "text": "a"}\n{"key": "k", "text": "b"}\n')
    with pytest.raises(
        ValueError, match=r"duplicate sample key 'k': .*m\.jsonl:1 and .*m\.jsonl:2"
    ):
        _manifest_shards(manifest, tmp_path)


def test_a_second_shards_run_on_the_same_output_is_refused_naming_the_first(tmp_path):
    """The second of two runs writing one output deleted the first's staging folder."""
    docs = _docs(tmp_path)
    output = str(tmp_path / "out" / "t")
    with output_lock(output):  # the first run, writing
        (tmp_path / "out" / "t.parts").mkdir()
        (tmp_path / "out" / "t.parts" / "000-000000.tar").write_bytes(b"staged")
        with pytest.raises(OutputBusyError, match=rf"writing .*out/t \(pid {os.getpid()}\)"):
            shards_command(inputs=str(docs), output=output, progress=False)
        assert (tmp_path / "out" / "t.parts" / "000-000000.tar").read_bytes() == b"staged"
    shutil.rmtree(tmp_path / "out" / "t.parts")
    assert shards_command(inputs=str(docs), output=output, progress=False).samples == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t-000000.tar", "t.shards.json"]


@pytest.mark.parametrize(
    ("command", "option"),
    [("fit", "--data.val_shards"), ("audio-stats", "--inputs"), ("tokenizer", "--source")],
)
def test_help_says_a_pipe_url_runs_a_shell_command(capsys, command, option):
    with pytest.raises(SystemExit):
        run([command, "--help"])
    text = capsys.readouterr().out
    start = text.index(f"  {option} ")
    following = text.find("\n  --", start + 1)
    described = " ".join(text[start:following].split())
    assert "``pipe:``" in described and "runs its command in a shell" in described


def test_a_pipe_url_not_ending_in_tar_is_read_as_a_shard(tmp_path):
    """``read_source`` (``mmm tokenizer --source``, ``mmm audio-stats --inputs``) handed a
    ``pipe:`` URL that does not end in ``.tar`` to the file reader, which skipped it."""
    with wds.TarWriter(str(tmp_path / "s.tar")) as writer:
        writer.write({"__key__": "a", "txt": b"hi"})
    source = f"pipe:cat {tmp_path / 's.tar'} | cat"
    samples = list(read_source(source, read_files=lambda paths: iter([{"file": p} for p in paths])))
    assert [s["txt"] for s in samples] == [b"hi"]


# ------------------------------------------------------- inference, export and probe tools
WILD_TYPE = "MKTAYIAKQRQISFVKSHFSRQ"


@pytest.fixture(scope="module")
def protein_checkpoint(tmp_path_factory) -> Path:
    """A 2-step protein run (max_length 48, 16 wide), shared by the tool tests below."""
    root = tmp_path_factory.mktemp("protein_tools")
    return fit_protein_checkpoint(root, [WILD_TYPE, "MNVWEPLCGIGKFLHS"] * 4)


def _score(checkpoint: Path, *options: str) -> object:
    return run(["score", f"--checkpoint={checkpoint}", *options])


def test_scoring_mutations_never_truncates_the_input(protein_checkpoint, tmp_path, monkeypatch):
    """Scores go to a new file by default; a row with an extra field is named before anything
    is written; a write that fails midway (a full disk) leaves the named output as it was."""
    table = tmp_path / "dms.csv"
    table.write_text("mutant,note\nA4G,one\nK2R,two,extra\nA4C,three\n")
    with pytest.raises(ValueError, match=r"dms\.csv row 2 \(line 3\): 3 fields, the header has 2"):
        _score(protein_checkpoint, f"--mutations={table}", f"--sequence={WILD_TYPE}")
    assert table.read_text().count("\n") == 4 and not (tmp_path / "dms.scored.csv").exists()

    table.write_text("mutant,note\nA4G,one\nK2R,two\nA4C,three\n")
    _score(protein_checkpoint, f"--mutations={table}", f"--sequence={WILD_TYPE}")
    assert table.read_text() == "mutant,note\nA4G,one\nK2R,two\nA4C,three\n"
    assert (tmp_path / "dms.scored.csv").read_text().splitlines()[0] == "mutant,note,score"

    def disk_full(writer, rows):
        writer.writerow(next(iter(rows)))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _score(protein_checkpoint, f"--mutations={table}", f"--sequence={WILD_TYPE}",
               f"--output={table}")  # fmt: skip
    assert table.read_text() == "mutant,note\nA4G,one\nK2R,two\nA4C,three\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dms.csv", "dms.scored.csv"]


def test_scoring_errors_name_the_row_record_and_mutation(protein_checkpoint, tmp_path):
    table = tmp_path / "dms.csv"
    table.write_text(f"mutant,sequence\nA4G,{WILD_TYPE}\nA4G:A4C,{WILD_TYPE}\n")
    with pytest.raises(ValueError, match=r"row 2 \(line 3\): mutation 'A4G:A4C': position 4 is"):
        _score(protein_checkpoint, f"--mutations={table}")
    table.write_text(f"mutant,sequence\nA4G,{WILD_TYPE}\nA4C\n")
    with pytest.raises(ValueError, match=r"row 2 \(line 3\): no 'sequence' value .*\['mutant'\]"):
        _score(protein_checkpoint, f"--mutations={table}")
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(f">good\n{WILD_TYPE}\n>odd\nMKT@YIAK\n")
    with pytest.raises(ValueError, match=r"bad\.fasta: record 'odd': .*unknown residue '@'"):
        _score(protein_checkpoint, f"--inputs={fasta}")


def test_a_sequence_longer_than_max_length_is_never_scored_cut(protein_checkpoint, tmp_path):
    """max_length 48 holds 46 residues: the 47th is past the cut, and a mutation there (or
    anywhere in a longer wild type) must not be scored on the cut sequence."""
    long = WILD_TYPE * 3  # 66 residues
    table = tmp_path / "dms.csv"
    table.write_text("mutant\nM1A\n")
    with pytest.raises(ValueError, match=r"--sequence: 66 tokens, but this model reads at most 46"):
        _score(protein_checkpoint, f"--mutations={table}", f"--sequence={long}")
    fasta = tmp_path / "long.fasta"
    fasta.write_text(f">short\n{WILD_TYPE}\n>long\n{long}\n")
    with pytest.raises(ValueError, match=r"long\.fasta: record 'long': 66 tokens"):
        _score(protein_checkpoint, f"--inputs={fasta}")
    fits = WILD_TYPE * 2 + "AA"  # 46 residues: the whole sequence is scored
    _score(protein_checkpoint, f"--mutations={table}", f"--sequence={fits}")


def test_generate_streams_batches_and_refuses_lengths_past_the_positions(
    protein_checkpoint, tmp_path
):
    """Each batch is on disk before the next is sampled, and asking for a billion samples
    costs nothing until they are read; ``--length 5000`` says what fits, briefly."""
    module = load_module(str(protein_checkpoint))
    settings = SamplingSettings(steps=2)
    batches = generate_batches(module, 10**9, length=5, settings=settings, batch_size=2)
    assert len(next(batches)) == 2  # nothing was made for the other 999,999,998
    output = tmp_path / "out.fasta"
    seen = []

    def watched():
        for index, batch in enumerate(generate_batches(module, 6, 5, settings, batch_size=2)):
            seen.append(output.read_text().count(">") if index else 0)  # written before batch
            yield [f"s{index}_{n}" for n in range(len(batch))], batch

    assert write_sequence_batches(output, watched()) == 6
    assert seen == [0, 2, 4] and len(read_sequences(output)) == 6
    with pytest.raises(ValueError, match="length 5000 does not fit") as error:
        run(["generate", f"--checkpoint={protein_checkpoint}", "--length=5000",
             "--progress=false"])  # fmt: skip
    assert len(str(error.value)) < 300 and "at most 46" in str(error.value)


def test_a_tool_option_given_twice_is_refused():
    """The parser keeps the last of a repeated option: ``--text A --text B`` answered B."""
    with pytest.raises(ValueError, match=r"--text is given 2 times .* --text\+"):
        run(["fill-mask", "--checkpoint=m.ckpt", "--text", "A [MASK]", "--text", "B [MASK]"])
    refuse_repeated_options("shards", ["--config=a.yaml", "--config=b.yaml", "--inputs", "x"])


def test_export_refuses_a_non_empty_folder_and_names_the_modality_option(
    protein_checkpoint, tmp_path
):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"out is not empty \(config\.json, notes\.txt\)"):
        run(["export", f"--checkpoint={protein_checkpoint}", f"--output={folder}"])
    assert (folder / "notes.txt").read_text() == "mine"
    run(["export", f"--checkpoint={protein_checkpoint}", f"--output={folder}", "--overwrite=true"])
    assert not (folder / "notes.txt").exists() and (folder / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing staged is left
    module = MaskedModelingModule(
        modalities={
            "protein": ModalityConfig(ProteinTokenizer(max_length=16)),
            "image": ModalityConfig(ImageTokenizer(image_size=8, patch_size=4, channels=1)),
        },
        encoder=TransformerEncoder(dim=16, depth=1, num_heads=2),
    )
    with pytest.raises(MappingError, match=r"\['protein', 'image'\].*--modality protein"):
        one_modality_module(module, None)


def _saved_esm(tmp_path: Path) -> Path:
    from transformers import EsmConfig, EsmForMaskedLM

    config = EsmConfig(
        vocab_size=34, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, position_embedding_type="absolute",
        emb_layer_norm_before=True, token_dropout=False, layer_norm_eps=1e-5, pad_token_id=1,
        mask_token_id=32,
    )  # fmt: skip
    EsmForMaskedLM(config).save_pretrained(str(tmp_path / "esm"))
    return tmp_path / "esm"


def _start_from(directory: Path, encoder: TransformerEncoder | None = None) -> MaskedModelingModule:
    encoder = encoder or TransformerEncoder(dim=16, depth=1, num_heads=2, mlp_ratio=2.0)
    tokenizer = ProteinTokenizer(max_length=16)
    return init_from(MaskedModelingModule(tokenizer=tokenizer, encoder=encoder), directory)


def test_init_from_names_a_corrupt_config_and_truncated_weights(tmp_path):
    directory = _saved_esm(tmp_path)
    _start_from(directory)  # maps
    weights = directory / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(MappingError, match=r"init_from .*esm: its weights cannot be read "
                       r"\(model\.safetensors \(\d+ bytes\)"):  # fmt: skip
        _start_from(directory)
    weights.write_bytes(whole)
    (directory / "config.json").write_text('{"model_type": "esm",')
    with pytest.raises(MappingError, match=r"init_from .*esm: .*config\.json is not valid JSON"):
        _start_from(directory)
    with pytest.raises(MappingError, match=r"init_from .*nowhere: no such folder"):
        _start_from(tmp_path / "nowhere")


def test_an_init_from_never_applied_is_refused_at_fit_start(tmp_path):
    """The module records init_from and its caller applies it: one built in Python and fitted
    without applying it would silently train from random weights."""
    encoder = TransformerEncoder(dim=16, depth=1, num_heads=2, mlp_ratio=2.0)
    module = MaskedModelingModule(
        tokenizer=ProteinTokenizer(max_length=16), encoder=encoder, init_from=str(tmp_path)
    )
    with pytest.raises(
        ValueError, match=r"init_from=.* was never applied; .*mmm\.export\.init_from"
    ):
        module.on_fit_start()
    assert _start_from(_saved_esm(tmp_path)).pending_init_from() is None


def test_init_from_errors_say_init_from_not_export(tmp_path):
    """The mapping helpers are shared with ``mmm export``; during ``mmm fit`` their errors
    name init_from and the directory."""
    directory = _saved_esm(tmp_path)
    post_ln = TransformerEncoder(dim=16, depth=1, num_heads=2, mlp_ratio=2.0, norm_first=False)
    with pytest.raises(MappingError) as error:
        _start_from(directory, encoder=post_ln)
    message = str(error.value)
    assert message.startswith(f"init_from {directory}: ") and "export" not in message
    assert "set --model.encoder.norm_first=true" in message


def test_every_discrete_tokenizer_counts_what_max_length_cuts(tiny_module, tmp_path):
    """Scoring asks the tokenizer how long a sequence is before the cut; text and SMILES
    tokenizers keep a truncation in their Rust object, so this must count past it."""
    source = tmp_path / "mols.smi"
    source.write_text("CCO\nc1ccccc1O\nCCN(CC)CC\n")
    smiles = SmilesTokenizer(path=str(tmp_path / "v.json"), train_source=str(source), max_length=8)
    text = tiny_module.tokenizers["text"]  # max_length 32
    long_text = " ".join(["the quick brown fox"] * 20)
    for tokenizer, long in [
        (smiles, "CCO" * 10),
        (text, long_text),
        (ProteinTokenizer(8), "M" * 20),
    ]:
        tokenizer.collate([long])  # the truncating call comes first
        assert tokenizer.content_length(long) > tokenizer.spec.max_length
    with pytest.raises(
        ValueError, match=r"sequence 0: \d+ tokens, but this model reads at most 30"
    ):
        score(tiny_module, [long_text])


def _tiny_text_fit(root: Path, tokenizer_dir: Path, corpus_dir: Path, config: str = "text_mlm"):
    """``mmm fit`` options for a shipped text config, shrunk, on the conftest shards."""
    return [
        f"--config={ROOT / 'configs' / config}.yaml",
        "--model.encoder.dim=32",
        "--model.encoder.depth=1",
        "--model.encoder.num_heads=2",
        f"--data.train_shards={corpus_dir}/train-*.tar",
        f"--data.val_shards={corpus_dir}/val-*.tar",
        "--data.embedded=null",
        "--data.num_workers=0",
        "--data.batch_size=4",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={root}",
    ]


def _protein_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A 2-step protein_mlm checkpoint (16 wide, ratio 0.15) and the settings it was fit with."""
    checkpoint = fit_protein_checkpoint(
        tmp_path, ["MKTAYIAKQRQISFVKSHFSRQ", "MGSSHHHHHHSSGLVPRGSH"]
    )
    return checkpoint, protein_settings(tmp_path / "shards")


def _options(settings: dict[str, str]) -> list[str]:
    return [f"--{key}={value}" for key, value in settings.items()]


def test_resuming_with_other_model_settings_is_refused_naming_each(tmp_path, monkeypatch):
    """Lightning rebuilds the model from the checkpoint's hyperparameters over the command
    line: dim 64 and ratio 0.5 trained silently at 16 and 0.15. Now each differing setting is
    named with both values."""
    monkeypatch.chdir(tmp_path)
    checkpoint, settings = _protein_checkpoint(tmp_path)
    config = f"--config={ROOT / 'configs' / 'protein_mlm.yaml'}"
    changed = ["--model.encoder.dim=64", "--model.masking.ratio=0.5", f"--ckpt_path={checkpoint}"]
    with pytest.raises(ValueError) as error:
        run(["fit", config, *_options(settings), "--trainer.max_steps=4", *changed])
    message = str(error.value)
    assert "model.encoder.init_args.dim: checkpoint 16, asked 64" in message
    assert "model.masking.init_args.ratio: checkpoint 0.15, asked 0.5" in message
    assert str(checkpoint) in message

    mdlm = f"--config={ROOT / 'configs' / 'protein_mdlm.yaml'}"
    with pytest.raises(ValueError, match="model.masking.class_path: checkpoint "):
        run(["fit", mdlm, *_options(settings), f"--ckpt_path={checkpoint}"])

    resumed = run(["fit", config, *_options(settings), "--trainer.max_steps=4", changed[-1]])
    assert resumed.trainer.global_step == 4  # the same settings resume


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_a_checkpoint_of_another_modality_is_refused_up_front(tmp_path, monkeypatch, subcommand):
    """An image config given a protein checkpoint used to rebuild the protein model and die
    after 8,061 samples with 'no image member'; now it stops before reading data."""
    monkeypatch.chdir(tmp_path)
    checkpoint, _ = _protein_checkpoint(tmp_path)
    image = f"--config={ROOT / 'configs' / 'image_mae.yaml'}"
    expected = "model.tokenizer.class_path: checkpoint 'mmm.tokenizers.ProteinTokenizer', asked"
    with pytest.raises(ValueError, match=expected):
        run([subcommand, image, f"--ckpt_path={checkpoint}", "--trainer.logger=false"])


def test_a_checkpoint_started_from_init_from_loads_without_that_directory(tmp_path, monkeypatch):
    """The init weights are in the state dict: once their directory is gone the checkpoint
    still loads and resumes (it used to need DIR/config.json again)."""
    monkeypatch.chdir(tmp_path)
    first, settings = _protein_checkpoint(tmp_path)
    start = tmp_path / "start"
    run(["export", f"--checkpoint={first}", f"--output={start}"])
    second = tmp_path / "second"
    second.mkdir()
    init = [f"--model.init_from={start}"]
    checkpoint = fit_checkpoint(second, "protein_mlm.yaml", settings, *init)
    shutil.rmtree(start)
    assert load_module(str(checkpoint)).encoder.dim == 16
    config = f"--config={ROOT / 'configs' / 'protein_mlm.yaml'}"
    options = _options({**settings, "trainer.default_root_dir": str(second)})
    resumed = run(
        ["fit", config, *options, *init, "--trainer.max_steps=4", f"--ckpt_path={checkpoint}"]
    )
    assert resumed.trainer.global_step == 4


def test_a_modality_absent_from_training_is_named(tmp_path, tokenizer_dir, corpus_dir):
    """text_protein.yaml on shards without a protein sample used to exit 0 and never mention
    protein."""
    options = _tiny_text_fit(tmp_path, tokenizer_dir, corpus_dir, config="text_protein")
    options += [
        f"--model.modalities.text.tokenizer.path={tokenizer_dir}",
        "--data.train_weights=null",
        "--trainer.max_steps=2",
    ]
    with pytest.warns(UserWarning, match=r"modalities \['protein'\] appeared in no training"):
        run(["fit", *options])


def test_loss_weights_all_zero_are_refused(tokenizer):
    modalities = {
        "text": ModalityConfig(tokenizer, loss_weight=0.0),
        "protein": ModalityConfig(ProteinTokenizer(max_length=16), loss_weight=0.0),
    }
    with pytest.raises(ValueError, match="modalities.text.loss_weight=0, modalities.protein"):
        MaskedModelingModule(modalities=modalities)


def test_the_last_step_is_checkpointed_when_no_validation_falls_on_it(
    tmp_path, tokenizer_dir, corpus_dir
):
    """max_steps 5, validation every 3: Lightning's checkpoint held step 3 only."""
    options = _tiny_text_fit(tmp_path, tokenizer_dir, corpus_dir)
    options += [f"--model.tokenizer.path={tokenizer_dir}", "--model.tokenizer.max_length=32"]
    run(["fit", *options, "--trainer.max_steps=5", "--trainer.val_check_interval=3"])
    saved = sorted(tmp_path.rglob("*.ckpt"))
    steps = [torch.load(path, weights_only=True)["global_step"] for path in saved]
    assert sorted(steps) == [3, 5]
