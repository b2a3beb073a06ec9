"""The ``mmm`` command: LightningCLI for ``fit | validate | test``, plus tools.

``mmm fit --config configs/text_mlm.yaml`` pretrains (``mmm pretrain fit`` in full); every constructor argument of the module,
its tokenizer, encoder, masking and decoder, and the datamodule is a typed option
(``--model.masking.ratio 0.3``), shown by ``--help`` and ``--print_config``.
The tools are ``mmm shards`` (files -> WebDataset shards), ``mmm tokenizer`` (train a text
tokenizer), ``mmm fill-mask`` (top-k predictions from a checkpoint), ``mmm embed`` (sequence
embeddings from a checkpoint), ``mmm generate`` (sample or infill sequences), ``mmm score``
(pseudo-log-likelihoods, mutation effects), ``mmm audio-stats`` (dataset mean/std of log-mel
features), ``mmm export`` (a checkpoint -> a directory stock transformers / timm classes load)
``mmm probe`` (a linear probe of the frozen encoder vs a random one, on labelled data),
``mmm predict`` (a CSV of a fine-tuned checkpoint's predictions for new inputs) and
``mmm consolidate`` (a sharded ``--trainer.strategy fsdp2`` checkpoint folder -> one file).

``mmm finetune fit --config configs/finetune/X.yaml`` fine-tunes (``FineTuningModule``; also
``validate``, ``test`` and ``predict``), with the same linking and checkpoint handling.
LightningCLI's ``predict`` loop is ``mmm finetune predict`` or ``mmm pretrain predict``
(``mmm predict`` is the CSV tool; see ``refuse_mixed_predict``).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import Namespace, auto_cli
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules import ShardDataModule
from mmm.callbacks import CheckpointAtTrainEnd, StopOnSigterm, TrainingProgressBar
from mmm.commands import COMMANDS
from mmm.finetune.module import FineTuningModule
from mmm.inference import UNREADABLE_CHECKPOINT, unreadable_checkpoint
from mmm.module import MaskedModelingModule
from mmm.precision import warn_if_bf16_is_emulated
from mmm.sharding import METADATA_FILE, is_sharded_checkpoint


class MMMCLI(LightningCLI):
    """LightningCLI with the model's modalities batching the data."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The tokenizers that size the model's embedders and heads also batch the data: the
        # module's batcher (one sub-batch per modality) goes to the datamodule.
        parser.link_arguments("model.batcher", "data.batcher", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Lightning's reading of the hyperparameters in ``--ckpt_path``, with a file that is
        no checkpoint named as such instead of a bare ``EOFError`` or ``IndexError``, and
        model settings that differ from the checkpoint's refused instead of silently
        replaced by them (``refuse_other_settings``)."""
        subcommand = self.config.get("subcommand")
        if not subcommand or not self.config[subcommand].get("ckpt_path"):
            return super()._parse_ckpt_path()
        path = self.config[subcommand]["ckpt_path"]
        asked = self.config[subcommand]["model"].clone()
        # A sharded checkpoint (a folder, --trainer.strategy fsdp2) keeps its hyperparameters
        # in its meta.pt, which Lightning, reading files only, would skip.
        if is_sharded_checkpoint(path):
            self.config[subcommand]["ckpt_path"] = str(Path(path, METADATA_FILE))
        try:
            super()._parse_ckpt_path()
        except UNREADABLE_CHECKPOINT as error:
            raise unreadable_checkpoint(path, error) from error
        finally:
            self.config[subcommand]["ckpt_path"] = path
        refuse_other_settings(path, asked, self.config[subcommand]["model"])
        # The checkpoint holds the weights init_from started from (older checkpoints still
        # name its directory): the directory is not read again.
        if "init_from" in self.config[subcommand]["model"]:
            self.config[subcommand]["model"]["init_from"] = None

    def _before_run(self) -> None:
        """Start the model from ``--model.init_from`` (the converters live in ``mmm.export``,
        outside the module; a resumed run's weights are its checkpoint's, so ``_parse_ckpt_path``
        unset it), attach a distilling student's teacher (``mmm.teacher``), and resume from checkpoints with ``weights_only=True`` unless asked
        otherwise: Lightning leaves it unset, which lets ``torch.load`` run pickled code from a
        checkpoint file."""
        from mmm.export import apply_init_from
        from mmm.teacher import apply_teacher

        apply_init_from(self.model)
        apply_teacher(self.model)  # a distilling student's teacher (mmm.distillation)
        arguments = self.config_init[self.subcommand]
        if arguments.get("weights_only") is None:
            arguments["weights_only"] = True

    before_fit = before_validate = before_test = before_predict = _before_run

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The configured trainer, with Lightning's default rich progress bar (when it is on)
        replaced by one that shows the epochs of step-bounded runs, a SIGTERM that stops
        the run even while it waits for data, and a checkpoint of the last step; a warning
        when bf16 is asked for on a CPU that emulates it."""
        trainer = super().instantiate_trainer(**kwargs)
        warn_if_bf16_is_emulated(trainer.precision, trainer.strategy.root_device.type)
        trainer.callbacks = [
            TrainingProgressBar() if type(callback) is RichProgressBar else callback
            for callback in trainer.callbacks
        ] + [StopOnSigterm(), CheckpointAtTrainEnd()]
        return trainer


#: Model settings a checkpoint need not agree on: the weights ``init_from`` started from are
#: in the checkpoint's state dict, so the directory is neither needed nor compared.
UNCOMPARED_SETTINGS = ("init_from",)
#: Settings a module fills in itself when the command leaves them unset (a fine-tuned
#: module's label count and class names from the data's labels.json, its pretraining
#: checkpoint's hyperparameters): compared only when the command sets them.
DERIVED_SETTINGS = ("num_labels", "classes", "backbone_config")


def _compared(key: str, asked: dict[str, object]) -> bool:
    """Whether the flattened setting ``key`` must agree with the checkpoint's."""
    root = key.split(".")[0]
    if root in UNCOMPARED_SETTINGS:
        return False
    return root not in DERIVED_SETTINGS or asked.get(root) is not None


def refuse_other_settings(path: str, asked: Namespace, saved: Namespace) -> None:
    """Refuse model settings (config and command line, ``asked``) that differ from those of
    the checkpoint at ``path`` (``saved``), naming each with both values.

    Lightning rebuilds the model of ``--ckpt_path`` from the checkpoint's hyperparameters,
    over whatever the command asked: ``--model.encoder.dim 64`` would train at the
    checkpoint's 32, a masked-diffusion config resumed from a masked-LM checkpoint would train
    masked LM, an image config from a text checkpoint would read every image sample as text.
    A run continues its checkpoint's settings, so asking for others is an error."""
    asked_flat, saved_flat = _flat_settings(asked), _flat_settings(saved)
    differing = [
        f"model.{key}: checkpoint {saved_flat.get(key, '(unset)')!r}, "
        f"asked {asked_flat.get(key, '(unset)')!r}"
        for key in sorted(set(asked_flat) | set(saved_flat))
        if _compared(key, asked_flat)
        and asked_flat.get(key, "(unset)") != saved_flat.get(key, "(unset)")
    ]
    if differing:
        raise ValueError(
            f"--ckpt_path {path}: the checkpoint was trained with other model settings than "
            "this command's config and options ask for:\n  "
            + "\n  ".join(differing)
            + "\nA checkpoint keeps its own settings. Drop the differing options or pass the "
            "run's own config (config.yaml, saved next to its logs); to train these weights "
            "under new settings, start a new run from them with --model.init_from (an "
            "`mmm export` directory)."
        )


def _flat_settings(settings: Namespace | dict | object, prefix: str = "") -> dict[str, object]:
    """Nested settings as ``{"encoder.init_args.dim": 32, ...}``."""
    if isinstance(settings, Namespace):
        settings = settings.as_dict()
    if not isinstance(settings, dict):
        return {prefix: settings}
    flat: dict[str, object] = {}
    for key, value in settings.items():
        flat.update(_flat_settings(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


#: The tools: ``mmm NAME`` runs ``COMMANDS[NAME]`` (``mmm.commands``).
TOOLS: dict[str, Callable[..., object]] = COMMANDS


DESCRIPTION = (
    "mmm: masked modeling for text, images, audio, proteins and SMILES. "
    "Train with `mmm fit --config configs/X.yaml`, fine-tune with "
    "`mmm finetune fit --config configs/finetune/X.yaml`; Lightning's predict loop is "
    "`mmm pretrain predict` / `mmm finetune predict`; tools: "
    + ", ".join(f"`mmm {name} --help`" for name in TOOLS)
    + "."
)


FINETUNE_DESCRIPTION = (
    "mmm finetune: fine-tune an mmm encoder on labelled shards. "
    "`mmm finetune fit --config configs/finetune/X.yaml [--model.checkpoint PRETRAINED.ckpt]`; "
    "then `mmm predict --checkpoint BEST.ckpt --inputs FILES --output preds.csv`."
)


#: Options of LightningCLI (``mmm pretrain|finetune SUBCOMMAND``), never of a tool.
LIGHTNING_OPTIONS = (
    "--config",
    "--ckpt_path",
    "--model",
    "--data",
    "--trainer",
    "--print_config",
    "--seed_everything",
)
#: Options of the ``predict`` tool (a fine-tuned model's predictions as CSV) that LightningCLI
#: does not have.
PREDICT_TOOL_OPTIONS = ("--checkpoint", "--inputs", "--output")
#: The two LightningCLIs: ``mmm pretrain SUBCOMMAND`` (``mmm fit|validate|test`` for short)
#: and ``mmm finetune SUBCOMMAND``.
LIGHTNING_COMMANDS = ("pretrain", "finetune")


def _given(args: list[str], options: tuple[str, ...]) -> list[str]:
    """The options of ``options`` among ``args`` (``--model.x=1`` counts as ``--model``)."""
    names = [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]
    return sorted({option for option in options for name in names if _is(name, option)})


def _is(name: str, option: str) -> bool:
    return name == option or name.startswith(option + ".")


def refuse_mixed_predict(argv: list[str]) -> None:
    """``mmm predict`` has one meaning, the CSV tool; LightningCLI's ``predict`` is
    ``mmm pretrain predict`` or ``mmm finetune predict``. Refuse the options of one given to
    the other, saying which command takes them.

    Raises:
        ValueError: naming the misplaced options and the command to run instead.
    """
    if argv[:1] == ["predict"]:
        lightning = _given(argv[1:], LIGHTNING_OPTIONS)
        if lightning:
            raise ValueError(
                f"mmm predict writes a fine-tuned checkpoint's predictions as CSV (--checkpoint, "
                f"--inputs, --output); {', '.join(lightning)} are LightningCLI options: for "
                "Lightning's predict loop run `mmm finetune predict --config X.yaml --ckpt_path "
                "BEST.ckpt` (a fine-tuning run) or `mmm pretrain predict --config X.yaml "
                "--ckpt_path CKPT` (a pretraining run: pooled embeddings)"
            )
    elif argv[:1] and argv[0] in LIGHTNING_COMMANDS and argv[1:2] == ["predict"]:
        tool = _given(argv[2:], PREDICT_TOOL_OPTIONS)
        if tool:
            raise ValueError(
                f"mmm {argv[0]} predict is LightningCLI's predict (--config, --ckpt_path, "
                f"--data.*); {', '.join(tool)} are options of the CSV tool: run "
                "`mmm predict --checkpoint BEST.ckpt --inputs FILES --output predictions.csv`"
            )


def refuse_repeated_options(tool: str, args: list[str]) -> None:
    """Refuse an option given twice to a tool: the parser keeps only the last
    (``mmm fill-mask --text A --text B`` would answer B alone), so a second one is a mistake.
    ``--name+ VALUE`` appends to a list and may repeat, and so may ``--config`` (several
    files are merged in order).

    Raises:
        ValueError: naming the option and how to give several values.
    """
    names = [arg[2:].split("=", 1)[0] for arg in args if arg.startswith("--")]
    counts = Counter(name for name in names if not name.endswith("+") and name != "config")
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        name = repeated[0]
        raise ValueError(
            f"mmm {tool}: --{name} is given {counts[name]} times and only the last would count; "
            f"give several values as one list (--{name} '[A, B]') or append each after the "
            f"first with --{name}+ (--{name} A --{name}+ B)"
        )


def run(args: list[str] | None = None) -> MMMCLI | object:
    """Run ``mmm`` with ``args`` (default: the command line); returns the CLI or tool result."""
    argv = sys.argv[1:] if args is None else args
    refuse_mixed_predict(argv)
    if argv and argv[0] in TOOLS:
        refuse_repeated_options(argv[0], argv[1:])
        return auto_cli(TOOLS[argv[0]], args=argv[1:])
    if argv and argv[0] == "finetune":
        return MMMCLI(
            FineTuningModule,
            ShardDataModule,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": FINETUNE_DESCRIPTION},
            args=argv[1:],
        )
    return MMMCLI(
        MaskedModelingModule,
        ShardDataModule,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": DESCRIPTION},
        args=argv[1:] if argv[:1] == ["pretrain"] else argv,
    )


def main() -> None:
    """Console entry point of ``mmm``."""
    run()


if __name__ == "__main__":
    main()
