"""The ``mmm`` command: LightningCLI for ``fit | validate | test | predict``, plus tools.

``mmm fit --config configs/text_mlm.yaml`` trains; every constructor argument of the module,
its tokenizer, encoder, masking and decoder, and the datamodule is a typed option
(``--model.masking.ratio 0.3``), shown by ``--help`` and ``--print_config``.
The tools are ``mmm shards`` (files -> WebDataset shards), ``mmm tokenizer`` (train a text
tokenizer), ``mmm fill-mask`` (top-k predictions from a checkpoint), ``mmm embed`` (sequence
embeddings from a checkpoint), ``mmm generate`` (sample or infill sequences), ``mmm score``
(pseudo-log-likelihoods, mutation effects) and ``mmm audio-stats`` (dataset mean/std of log-mel
features).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from jsonargparse import auto_cli
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from datamodules.webdataset import ShardDataModule
from mmm.inference import embed_command
from mmm.module import MaskedModelingModule
from mmm.tokenizers.audio import audio_stats_command
from mmm.tools import (
    fill_mask_command,
    generate_command,
    score_command,
    shards_command,
    tokenizer_command,
)


class MMMCLI(LightningCLI):
    """LightningCLI with the tokenizer shared by model and data."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # One tokenizer instance sizes the model's embedder/head and batches the data.
        parser.link_arguments("model.tokenizer", "data.tokenizer", apply_on="instantiate")


TOOLS: dict[str, Callable[..., object]] = {
    "shards": shards_command,
    "tokenizer": tokenizer_command,
    "fill-mask": fill_mask_command,
    "embed": embed_command,
    "generate": generate_command,
    "score": score_command,
    "audio-stats": audio_stats_command,
}


DESCRIPTION = (
    "mmm: masked modeling for text, images, audio, proteins and SMILES. "
    "Train with `mmm fit --config configs/X.yaml`; tools: "
    + ", ".join(f"`mmm {name} --help`" for name in TOOLS)
    + "."
)


def run(args: list[str] | None = None) -> MMMCLI | object:
    """Run ``mmm`` with ``args`` (default: the command line); returns the CLI or tool result."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in TOOLS:
        return auto_cli(TOOLS[argv[0]], args=argv[1:])
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
