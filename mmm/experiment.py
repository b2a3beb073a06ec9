"""A module and its datamodule built from a config file as ``mmm fit`` builds them: the one
way the benchmark and measurement scripts in ``scripts/`` build what they measure.

    module, data = build_from_config("configs/text_mlm.yaml", ["--data.num_workers=0"])

Settings are overridden exactly as on ``mmm fit``'s command line (``--model.encoder.dim=32``),
and the data is prepared (embedded corpora written to shards, tokenizers trained on first use),
so a script runs in a fresh checkout with nothing built yet.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from datamodules import ShardDataModule
from mmm.cli import MMMCLI
from mmm.module import MaskedModelingModule

#: The repository's ``configs/``: the scripts' default configs, whatever the working directory.
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: ``Trainer`` settings of a run that is measured, not watched (scripts, tests): no logger,
#: checkpoints, progress bar or model summary.
QUIET_TRAINER: dict[str, bool] = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}

Config = str | os.PathLike | dict


def build_from_config(
    config: Config, overrides: Sequence[str] = ()
) -> tuple[MaskedModelingModule, ShardDataModule]:
    """Model and datamodule of ``config`` (a YAML file, or its contents as a dict) with
    ``overrides`` (``mmm fit`` options, ``--key=value``) applied, the data prepared."""
    text = yaml.safe_dump(config) if isinstance(config, dict) else str(config)
    cli = MMMCLI(
        MaskedModelingModule,
        ShardDataModule,
        args=["--config", text, *overrides],
        run=False,
    )
    cli.datamodule.prepare_data()
    return cli.model, cli.datamodule


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--config`` (``default``: a file in the repository's ``configs/``; ``None``: required)
    and ``--set KEY=VALUE`` (``add_overrides_argument``)."""
    if default is None:
        parser.add_argument("--config", required=True, help="a config file, as for mmm fit")
    else:
        parser.add_argument("--config", default=str(CONFIGS / default), help="a config file")
    add_overrides_argument(parser)


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable), the overrides ``config_overrides`` returns."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config setting as mmm fit's --KEY=VALUE does "
        "(e.g. --set model.encoder.dim=32); repeatable",
    )


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set KEY=VALUE`` options as ``mmm fit`` options (``--KEY=VALUE``).

    Raises:
        ValueError: for a setting without ``=``.
    """
    for setting in args.set:
        if "=" not in setting:
            raise ValueError(f"--set {setting!r}: expected KEY=VALUE, e.g. model.encoder.dim=32")
    return [f"--{setting}" for setting in args.set]
