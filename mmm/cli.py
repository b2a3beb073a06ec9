"""The ``mmm`` command: LightningCLI for ``fit | validate | test | predict``, plus tools.

``mmm fit --config configs/text_mlm.yaml`` trains; every constructor argument of the module,
its tokenizer, encoder, masking and decoder, and the datamodule is a typed option
(``--model.masking.ratio 0.3``), shown by ``--help`` and ``--print_config``.
The tools are ``mmm shards`` (files -> WebDataset shards), ``mmm tokenizer`` (train a text
tokenizer), ``mmm fill-mask`` (top-k predictions from a checkpoint), ``mmm embed`` (sequence
embeddings from a checkpoint), ``mmm generate`` (sample or infill sequences), ``mmm score``
(pseudo-log-likelihoods, mutation effects), ``mmm audio-stats`` (dataset mean/std of log-mel
features), ``mmm export`` (a checkpoint -> a directory stock transformers / timm classes load)
``mmm probe`` (linear probe of frozen embeddings on a labelled set) and ``mmm predict``
(a CSV of a fine-tuned checkpoint's predictions for new inputs).

``mmm finetune fit --config configs/finetune/X.yaml`` fine-tunes (``FineTuningModule``; also
``validate``, ``test`` and ``predict``), with the same linking and checkpoint handling.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import lightning as L
from jsonargparse import auto_cli
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules.webdataset import ShardDataModule
from mmm.callbacks import StopOnSigterm, TrainingProgressBar
from mmm.export import export_command
from mmm.finetune.module import FineTuningModule
from mmm.finetune.predict import predict_command
from mmm.inference import UNREADABLE_CHECKPOINT, embed_command, unreadable_checkpoint
from mmm.module import MaskedModelingModule
from mmm.probe import probe_command
from mmm.tools import (
    audio_stats_command,
    fill_mask_command,
    generate_command,
    score_command,
    shards_command,
    tokenizer_command,
)


class MMMCLI(LightningCLI):
    """LightningCLI with the model's modalities batching the data."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The tokenizers that size the model's embedders and heads also batch the data: the
        # module's batcher (one sub-batch per modality) goes to the datamodule.
        parser.link_arguments("model.batcher", "data.tokenizer", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Lightning's reading of the hyperparameters in ``--ckpt_path``, with a file that is
        no checkpoint named as such instead of a bare ``EOFError`` or ``IndexError``."""
        try:
            super()._parse_ckpt_path()
        except UNREADABLE_CHECKPOINT as error:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise unreadable_checkpoint(path, error) from error

    def _load_weights_only(self) -> None:
        """Resume from checkpoints with ``weights_only=True`` unless asked otherwise: Lightning
        leaves it unset, which lets ``torch.load`` run pickled code from a checkpoint file."""
        arguments = self.config_init[self.subcommand]
        if arguments.get("weights_only") is None:
            arguments["weights_only"] = True

    before_fit = before_validate = before_test = before_predict = _load_weights_only

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The configured trainer, with Lightning's default rich progress bar (when it is on)
        replaced by one that shows the epochs of step-bounded runs, and a SIGTERM that stops
        the run even while it waits for data."""
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks = [
            TrainingProgressBar() if type(callback) is RichProgressBar else callback
            for callback in trainer.callbacks
        ] + [StopOnSigterm()]
        return trainer


TOOLS: dict[str, Callable[..., object]] = {
    "shards": shards_command,
    "tokenizer": tokenizer_command,
    "fill-mask": fill_mask_command,
    "embed": embed_command,
    "generate": generate_command,
    "score": score_command,
    "audio-stats": audio_stats_command,
    "export": export_command,
    "probe": probe_command,
    "predict": predict_command,
}


DESCRIPTION = (
    "mmm: masked modeling for text, images, audio, proteins and SMILES. "
    "Train with `mmm fit --config configs/X.yaml`, fine-tune with "
    "`mmm finetune fit --config configs/finetune/X.yaml`; tools: "
    + ", ".join(f"`mmm {name} --help`" for name in TOOLS)
    + "."
)


FINETUNE_DESCRIPTION = (
    "mmm finetune: fine-tune an mmm encoder on labelled shards. "
    "`mmm finetune fit --config configs/finetune/X.yaml [--model.checkpoint PRETRAINED.ckpt]`; "
    "then `mmm predict --checkpoint BEST.ckpt --inputs FILES --output preds.csv`."
)


def is_lightning_predict(argv: list[str]) -> bool:
    """Whether ``mmm predict ...`` is LightningCLI's ``predict`` subcommand (a config and a
    pretraining checkpoint: ``--config``, ``--ckpt_path``, ``--model.*``), which writes
    embeddings, rather than the ``predict`` tool (``--checkpoint``, ``--inputs``), which
    writes a fine-tuned model's predictions as CSV."""
    lightning = ("--config", "--ckpt_path", "--model", "--data", "--trainer", "--print_config")
    return argv[0] == "predict" and any(arg.startswith(lightning) for arg in argv[1:])


def run(args: list[str] | None = None) -> MMMCLI | object:
    """Run ``mmm`` with ``args`` (default: the command line); returns the CLI or tool result."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in TOOLS and not is_lightning_predict(argv):
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
        args=args,  # None: LightningCLI reads sys.argv itself
    )


def main() -> None:
    """Console entry point of ``mmm``."""
    run()


if __name__ == "__main__":
    main()
