"""Sharded training (FSDP2, ``--trainer.strategy fsdp2``) of a shipped config on 2 CPU ranks
through the real CLI: sharded checkpoints save, resume exactly, and consolidate into the
one file that ``load_module``, ``mmm export`` and a non-sharded run read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmm.cli import run
from mmm.inference import load_module
from mmm.sharding import consolidate

ROOT = Path(__file__).resolve().parents[1]

#: configs/smiles_mlm.yaml (a character-level vocabulary: nothing to train) shrunk to a
#: 16-wide trunk of 2 blocks (two shard units), 3 steps, a validation and checkpoint at step 2.
SETTINGS = {
    "model.encoder.dim": "16",
    "model.encoder.depth": "2",
    "model.encoder.num_heads": "2",
    "data.num_workers": "0",
    "data.batch_size": "4",
    "trainer.max_steps": "3",
    "trainer.val_check_interval": "2",
    "trainer.limit_val_batches": "1",
    "trainer.num_sanity_val_steps": "0",
    "trainer.logger": "false",
    "trainer.enable_progress_bar": "false",
    "trainer.enable_model_summary": "false",
    "trainer.accelerator": "cpu",
}


def fit(cwd: Path, root: str, *options: str) -> None:
    """``mmm fit`` of the shrunk SMILES config on 2 CPU ranks sharded with FSDP2, writing its
    checkpoints to ``cwd/root/checkpoints``; Lightning starts the second rank."""
    settings = {**SETTINGS, "trainer.default_root_dir": root}
    command = [sys.executable, "-m", "mmm.cli", "fit", f"--config={ROOT}/configs/smiles_mlm.yaml"]
    command += [f"--{key}={value}" for key, value in settings.items()]
    command += ["--trainer.strategy=fsdp2", "--trainer.devices=2", *options]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fsdp_checkpoints_save_resume_exactly_and_consolidate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fit(tmp_path, "full")
    sharded = tmp_path / "full/checkpoints/epoch=0-step=2.ckpt"
    assert sorted(p.name for p in sharded.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    fit(tmp_path, "resumed", f"--ckpt_path={sharded}")
    # the folder's settings (in its meta.pt) are compared with the command's, as a file's are
    with pytest.raises(ValueError, match="model.encoder.init_args.dim: checkpoint 16, asked 128"):
        run(["fit", f"--config={ROOT}/configs/smiles_mlm.yaml", f"--ckpt_path={sharded}"])

    # the run resumed from step 2's shards ends with the uninterrupted run's weights
    [full] = (tmp_path / "full/checkpoints").glob("*step=3.ckpt")
    [resumed] = (tmp_path / "resumed/checkpoints").glob("*step=3.ckpt")
    with pytest.raises(ValueError, match="mmm consolidate --checkpoint"):
        load_module(str(full))  # a folder: the error names the command that makes it a file
    full_file = Path(run(["consolidate", f"--checkpoint={full}"]))
    resumed_file = consolidate(resumed, tmp_path / "resumed.ckpt")
    weights = torch.load(full_file, weights_only=True)["state_dict"]
    torch.testing.assert_close(torch.load(resumed_file, weights_only=True)["state_dict"], weights)

    # the consolidated file is what load_module and mmm export read
    module = load_module(str(full_file))
    assert not module.training and module.encoder.dim == 16
    name = "encoder.blocks.1.mlp.fc2.weight"
    torch.testing.assert_close(module.state_dict()[name], weights[name])
    run(["export", f"--checkpoint={full_file}", "--output=exported"])
    assert (tmp_path / "exported/model.safetensors").is_file()

    # and a run without sharding resumes from it, optimizer states included; one rank takes
    # both ranks' samples per step (the same global batch, as elastic resume requires)
    settings = {
        **SETTINGS,
        "data.batch_size": "8",
        "trainer.max_steps": "4",
        "trainer.default_root_dir": "single",
    }
    cli = run(
        ["fit", f"--config={ROOT}/configs/smiles_mlm.yaml", f"--ckpt_path={full_file}"]
        + [f"--{key}={value}" for key, value in settings.items()]
    )
    assert cli.trainer.global_step == 4
    states = cli.trainer.optimizers[0].state_dict()["state"].values()
    assert {int(state["step"]) for state in states} == {4}  # AdamW continued from step 3


def test_consolidate_names_a_path_that_is_no_sharded_folder(tmp_path):
    with pytest.raises(ValueError, match=r"not a sharded checkpoint folder .*meta\.pt"):
        consolidate(tmp_path)
