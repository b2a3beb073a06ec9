"""Every script in ``scripts/`` runs in a fresh checkout: a smoke run of each at tiny sizes, as
a subprocess whose working directory is an empty temporary folder (no ``data/`` or
``artifacts/`` built by an earlier run), so each must prepare the data it reads itself.

A new script without a case in ``CASES`` fails ``test_script_runs_in_an_empty_directory``.
Scripts that read a checkpoint get one from a tiny ``mmm fit`` made once per session.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from datamodules import embedded_shards
from mmm.experiment import add_config_arguments, config_overrides
from tests.helpers import fit_checkpoint, single_thread

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SCRIPTS = sorted(path.stem for path in (ROOT / "scripts").glob("*.py"))

#: ``mmm fit`` settings of the session's checkpoints: a 16-wide, one-layer trunk, two steps.
TINY_FIT = {
    "model.encoder.dim": "16",
    "model.encoder.depth": "1",
    "model.encoder.num_heads": "2",
    "data.num_workers": "0",
    "data.batch_size": "8",
    "trainer.max_steps": "2",
    "trainer.val_check_interval": "2",
    "trainer.limit_val_batches": "1",
}


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """``os.chdir`` for the block (``contextlib.chdir`` needs Python 3.11)."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


class Checkpoints:
    """Tiny checkpoints, each fitted (in this process, in a folder of its own, as in a fresh
    checkout) the first time a case asks for it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fitted: dict[str, Path] = {}

    def folder(self, config: str) -> Path:
        """Where ``config`` was fitted: its ``artifacts/`` hold the tokenizers the checkpoint
        was trained with."""
        return self.root / Path(config).stem

    def get(self, config: str) -> Path:
        """The checkpoint of a tiny ``mmm fit`` of ``config`` (``TINY_FIT``), callbacks off."""
        if config not in self.fitted:
            folder = self.folder(config)
            folder.mkdir()
            with working_directory(folder), single_thread():
                self.fitted[config] = fit_checkpoint(
                    folder, config, TINY_FIT, "--trainer.callbacks=[]"
                )
        return self.fitted[config]


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    return Checkpoints(tmp_path_factory.mktemp("checkpoints"))


def settings(*groups: dict[str, object]) -> list[str]:
    """``--set key=value`` options, one per setting of ``groups``."""
    return [
        option
        for group in groups
        for key, value in group.items()
        for option in ("--set", f"{key}={value}")
    ]


TINY_MODEL = {"model.encoder.dim": 16, "model.encoder.depth": 1, "model.encoder.num_heads": 2}


#: Stands for the path of the case's checkpoint in its arguments.
CHECKPOINT = "{checkpoint}"


@dataclass(frozen=True)
class Case:
    """A script's tiny command line and a phrase its output must hold (its result line,
    printed only when the measurement finished)."""

    arguments: list[str]
    expect: str
    checkpoint: str | None = None
    """the config of the tiny ``mmm fit`` whose checkpoint ``CHECKPOINT`` stands for"""
    needs: tuple[str, ...] = ()
    """packages the script reads data from (found, not imported); the case skips without them"""


CASES: dict[str, list[Case]] = {
    "any_to_any_eval": [
        Case(
            [
                *("--config", str(CONFIGS / "digits_image_text.yaml")),
                *("--checkpoint", CHECKPOINT, "--limit", "4", "--steps", "2"),
            ],
            expect="most frequent",
            checkpoint="digits_image_text.yaml",
        )
    ],
    "bench_data": [
        Case(
            [
                *("--configs", str(CONFIGS / "smiles_mlm.yaml")),
                *("--batches", "1", "--steps", "3", "--workers", "0"),
                *settings({"data.num_workers": 0, "data.batch_size": 4}, TINY_MODEL),
            ],
            expect="of step alone",
        )
    ],
    "bench_lora": [
        Case(
            ["--steps", "2", "--dim", "32", "--depth", "1", "--warmup", "1", "--device", "cpu"],
            expect="step time LoRA / full",
        )
    ],
    "bench_multimodal": [
        Case(
            [
                *("--rounds", "1", "--batches", "1"),
                *settings({"data.batch_size": 2}, TINY_MODEL),
            ],
            expect="paired / sum",
        )
    ],
    "bench_resume": [
        Case(
            [
                *("--config", str(CONFIGS / "smiles_mlm.yaml"), "--skip", "2", "--repeats", "1"),
                *("--resume_workers", "0"),  # elastic: resumed under another worker count
                *settings({"data.num_workers": 1, "data.batch_size": 4}),
            ],
            expect="identical to the uninterrupted run: True",
        )
    ],
    "bench_shuffle": [
        Case(
            [
                *("--shards", "4", "--per_shard", "6", "--samples", "8", "--batch", "4"),
                *("--workers", "0", "--shuffle", "12"),
            ],
            expect="| elastic | 12 |",
        )
    ],
    "bench_sharding": [
        Case(
            [
                *("--config", str(CONFIGS / "smiles_mlm.yaml"), "--strategies", "fsdp2"),
                *("--steps", "1", "--warmup", "1"),
                *settings({"data.batch_size": 4}, TINY_MODEL),
            ],
            expect="fsdp2",
        )
    ],
    "bench_precision": [
        Case(
            [
                *("--configs", "text_mlm", "--steps", "2", "--val_every", "2"),
                *("--val_batches", "1", "--timed_steps", "1", "--warmup", "0"),
                *("--profile_steps", "1", "--gemm_size", "128", "--threads", "1"),
                *settings({"data.batch_size": 4}, TINY_MODEL),
            ],
            expect="bf16 speed-up",
        )
    ],
    "bench_text": [
        Case(
            [
                *("--mode", "both", "--steps", "1", "--warmup", "0", "--threads", "1"),
                *("--docs", "4", "--preset", "tiny", "--length", "64", "--gemm_size", "128"),
            ],
            expect="real batches of python-docs",
        )
    ],
    "bench_vision": [
        Case(
            [
                *("--steps", "1", "--warmup", "0", "--threads", "1", "--preset", "tiny"),
                *("--patch", "8", "--precision", "bf16-mixed", "--gemm-size", "128"),
            ],
            expect="HF / mmm",
        )
    ],
    "constant_baseline": [
        Case(
            [
                *("--config", str(CONFIGS / "smiles_mlm.yaml"), "--train_batches", "2"),
                *settings({"data.num_workers": 0, "data.batch_size": 64}),
            ],
            expect="constant-prediction masked accuracy",
        )
    ],
    "cross_modal_gain": [
        Case(
            [
                *("--config", str(CONFIGS / "digits_image_text.yaml")),
                *("--checkpoint", CHECKPOINT),
                *("--target", "text", "--context", "image", "--hide", "all"),
            ],
            expect="cross-modal gain",
            checkpoint="digits_image_text.yaml",
        )
    ],
    "distill_eval": [
        Case(
            [
                *("--teacher_steps", "1", "--student_steps", "1", "--val_batches", "1"),
                *("--probe_steps", "1", "--speed_runs", "1", "--threads", "1"),
                *("--seeds", "0", "1"),  # one teacher, a student per seed
                *settings({"data.batch_size": 4, "model.encoder.dim": 16}),
                *settings({"model.encoder.num_heads": 2}),
            ],
            expect="| student | 2 |",
        )
    ],
    "forecast_eval": [
        Case(
            [CHECKPOINT, "--horizon", "1", "--batch_size", "64"],
            expect="naive (last value)",
            checkpoint="timeseries_mae.yaml",
            needs=("aeon",),
        )
    ],
    "generation_report": [
        Case(
            [
                *("smiles", "--checkpoint", CHECKPOINT),
                *("--samples", "4", "--steps", "2", "--batch_size", "4"),
            ],
            expect="unigram baseline: valid",
            checkpoint="smiles_mdlm.yaml",
        ),
        Case(
            [
                *("speed", "--checkpoint", CHECKPOINT),
                *("--samples", "2", "--steps", "2", "--length", "8", "--batch_size", "2"),
            ],
            expect="sequences/s",
            checkpoint="smiles_mdlm.yaml",
        ),
    ],
    "held_out_accuracy": [
        Case(
            [
                CHECKPOINT,
                *("--embedded", "smiles-nci-wehi", "--batch_size", "256"),
            ],
            expect="mask only",
            checkpoint="smiles_mdlm.yaml",
        )
    ],
    "moses_eval": [
        Case(
            [
                *("--checkpoint", CHECKPOINT, "--samples", "4", "--steps", "2"),
                *("--samplers", "ancestral", "remdm", "--eta", "0.1"),
            ],
            expect="MOSES metrics of 2 sample set(s): done",
            checkpoint="smiles_mdlm.yaml",
            needs=("moses", "fcd_torch"),
        )
    ],
    "label_efficiency": [
        Case(
            [
                *("--modality", "image", "--budgets", "0.1", "--seeds", "0", "--lrs", "1e-3"),
                *("--pretrain-steps", "2", "--finetune-steps", "2", "--val-every", "2"),
                *("--dim", "16", "--depth", "1", "--heads", "2", "--batch-size", "8"),
                *("--mask-ratio", "0.5", "--layer-decay", "0.9"),
                "--markdown",
            ],
            expect="| 10% |",
        ),
        Case(  # extra pretraining data: a labelled corpus's training shards, labels unread
            [
                *("--modality", "smiles", "--budgets", "0.1", "--seeds", "0", "--lrs", "1e-3"),
                *("--methods", "pretrained", "--pretrain-extra", "freesolv-labelled"),
                *("--pretrain-steps", "2", "--finetune-steps", "2", "--val-every", "2"),
                *("--dim", "16", "--depth", "1", "--heads", "2"),
                *("--batch-size", "8", "--markdown"),
            ],
            expect="| 10% |",
            needs=("datamol",),
        ),
    ],
    "learning_per_minute": [
        Case(
            [
                *("--budget", "0.5", "--evaluations", "1", "--threads", "1"),
                *("--finetune_steps", "1", "--probe_steps", "1", "--recipes", "electra", "hf"),
                *settings({"data.batch_size": 4}, TINY_MODEL),
            ],
            expect="held-out masked-token accuracy",
        )
    ],
}


def run_script(name: str, arguments: list[str], cwd: Path) -> str:
    """Run ``scripts/<name>.py`` as ``python /abs/path/scripts/<name>.py`` from ``cwd``, this
    checkout first on the import path; its output, or a failure showing its end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *arguments]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited with {result.returncode} in {cwd}:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-6000:]}"
        )
    return result.stdout


def case_directory(case: Case, cwd: Path, checkpoints: Checkpoints) -> list[str]:
    """An empty ``cwd`` for ``case`` and its arguments. A case with a checkpoint gets the
    tokenizers it was trained with (``artifacts/``) beside it, as the checkout that fitted it
    has them: WordPiece training is not deterministic, so a tokenizer retrained from its
    ``train_source`` would not fit the checkpoint (its load refuses the fingerprint)."""
    cwd.mkdir()
    if case.checkpoint is None:
        return case.arguments
    path = checkpoints.get(case.checkpoint)
    artifacts = checkpoints.folder(case.checkpoint) / "artifacts"
    if artifacts.exists():
        shutil.copytree(artifacts, cwd / "artifacts")
    return [str(path) if argument == CHECKPOINT else argument for argument in case.arguments]


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_runs_in_an_empty_directory(
    name: str, tmp_path: Path, checkpoints: Checkpoints
) -> None:
    if name not in CASES:
        pytest.fail(f"scripts/{name}.py has no smoke case: add one to CASES in {__file__}")
    for index, case in enumerate(CASES[name]):
        missing = [package for package in case.needs if importlib.util.find_spec(package) is None]
        if missing:
            pytest.skip(f"scripts/{name}.py needs {missing}")
        cwd = tmp_path / f"case{index}"
        output = run_script(name, case_directory(case, cwd, checkpoints), cwd)
        assert case.expect in output, f"scripts/{name}.py printed no {case.expect!r}:\n{output}"


def test_every_case_names_a_script() -> None:
    assert sorted(set(CASES) - set(SCRIPTS)) == []


def test_a_setting_without_a_value_is_named() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, default="text_mlm.yaml")
    args = parser.parse_args(["--set", "data.batch_size=4", "--set", "model.encoder.dim"])
    assert Path(args.config) == CONFIGS / "text_mlm.yaml"
    with pytest.raises(ValueError, match=r"--set 'model.encoder.dim': expected KEY=VALUE"):
        config_overrides(args)
    args.set.pop()
    assert config_overrides(args) == ["--data.batch_size=4"]


def test_embedded_shards_are_written_before_they_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh checkout has no ``data/``: listing the shards writes them first, as
    ``ShardDataModule.prepare_data`` would (same shard size, same files)."""
    monkeypatch.chdir(tmp_path)
    train = embedded_shards("digits-words", "train")
    assert train and all(Path(url).is_file() for url in train)
    assert all(Path(url).parent == Path("data/digits-words") for url in train)
    assert embedded_shards("digits-words", "val")
    with pytest.raises(ValueError, match="split must be 'train' or 'val', got 'test'"):
        embedded_shards("digits-words", "test")
