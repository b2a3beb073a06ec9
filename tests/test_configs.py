"""Every YAML in configs/ parses and trains a few steps through the real CLI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mmm.cli import run

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
FAST = [
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1",
    "--trainer.val_check_interval=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--data.num_workers=0",
    "--data.batch_size=4",
]


def test_configs_exist():
    assert any(c.name == "text_mlm.yaml" for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_prints(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", f"--config={config}", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "model:" in printed and "data:" in printed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_fits_two_steps(config, tmp_path, monkeypatch):
    """Runs from a fresh directory: embedded data and tokenizers are prepared there."""
    if "embedded: moses" in config.read_text() and importlib.util.find_spec("moses") is None:
        pytest.skip(f"{config.name} reads the MOSES data: pip install --no-deps molsets")
    monkeypatch.chdir(tmp_path)
    cli = run(["fit", f"--config={config}", *FAST])
    assert cli.trainer.global_step == 2
    assert "val/loss" in cli.trainer.callback_metrics
