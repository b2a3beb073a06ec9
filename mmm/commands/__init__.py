"""The ``mmm`` tools, one typed function each, in one place: library modules hold no argument
parsing and no command functions, and ``mmm.cli`` wires these (``mmm NAME --help`` is
generated from each signature and docstring by jsonargparse).

- ``data``: ``shards``, ``tokenizer``, ``audio-stats`` (prepare data);
- ``sequences``: ``fill-mask``, ``embed``, ``generate``, ``score`` (use a pretraining
  checkpoint on sequences);
- ``models``: ``export``, ``probe``, ``predict``, ``consolidate`` (export, probe or predict
  with a model; gather a sharded checkpoint into one file).
"""

from __future__ import annotations

from collections.abc import Callable

from mmm.commands.data import audio_stats_command, shards_command, tokenizer_command
from mmm.commands.models import (
    consolidate_command,
    export_command,
    predict_command,
    probe_command,
)
from mmm.commands.sequences import (
    embed_command,
    fill_mask_command,
    generate_command,
    score_command,
)

#: ``mmm NAME`` -> the function it runs.
COMMANDS: dict[str, Callable[..., object]] = {
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
    "consolidate": consolidate_command,
}

__all__ = ["COMMANDS", *sorted(function.__name__ for function in COMMANDS.values())]
