"""Careless and hostile inputs: each ends in a named error or a counted skip, never a hang,
a silent NaN, lost data or a silently swapped vocabulary. Bad inputs are made here, tiny."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datamodules import ShardDataModule
from datamodules.webdataset import LOGGED_SKIPS, UndecodableDataError
from mmm.tokenizers.image import ImageTokenizer

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("split", ["train", "val"])
def test_shards_of_another_modality_stop_with_an_error_not_a_flood(corpus_dir, split, caplog):
    """Text shards read by the image tokenizer: nothing decodes. Training used to skip
    forever (700 MB of log in 10 minutes); now a whole pass of skips is an error that says
    what was read, what was skipped and why, and the log holds a handful of lines."""
    data = ShardDataModule(
        **{f"{split}_shards": str(corpus_dir / "train-*.tar")},
        tokenizer=ImageTokenizer(image_size=16, patch_size=4),
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


def test_sigterm_stops_a_run_that_waits_for_data(tmp_path, corpus_dir, tokenizer_dir):
    """Lightning checks SIGTERM only between batches; a loader that never delivers one (here
    a shard URL that stalls) must not make the run ignore it."""
    stalled = f"pipe:sleep 20; cat {corpus_dir}/train-000000.tar"
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
        f"--data.val_shards={corpus_dir}/val-*.tar",
        "--data.embedded=null",
        "--data.epoch_samples=8",
        "--data.num_workers=1",
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
    assert time.monotonic() - start < 15 and code == 128 + signal.SIGTERM
