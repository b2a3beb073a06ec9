"""Layer-wise learning-rate decay (BEiT, MAE fine-tuning): the deeper a parameter sits, the
closer its learning rate to the peak. Layer 0 is the embedders, block ``i`` is layer ``i + 1``,
and the final norm and task head are the top layer ``depth + 1``; a parameter of layer ``l``
trains at ``lr * decay ** (depth + 1 - l)``, so pretrained low layers move least."""

from __future__ import annotations

import re

from torch import nn

#: A trunk block's index in a parameter name: mmm's and timm's ``blocks.N.`` or Hugging Face's
#: ``layer.N.``.
BLOCK_INDEX = re.compile(r"(?:^|\.)(?:blocks|layer)\.(\d+)\.")
#: Names of the parts below the first block: modality embedders and modality embeddings of an
#: mmm backbone, a Hugging Face trunk's own embeddings.
EMBEDDING_PARTS = re.compile(
    r"(?:^|\.)(?:modalities\.[^.]+\.embedder|modality_embeddings|embeddings)(?:\.|$)"
)


def trunk_depth(names: list[str]) -> int:
    """The number of trunk blocks among parameter ``names`` (one past the largest index)."""
    indices = [int(match.group(1)) for name in names if (match := BLOCK_INDEX.search(name))]
    return max(indices) + 1 if indices else 0


def layer_index(name: str, depth: int) -> int:
    """0 for embedders, ``i + 1`` for block ``i``, ``depth + 1`` for everything above."""
    match = BLOCK_INDEX.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if EMBEDDING_PARTS.search(name) else depth + 1


def parameter_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float,
    no_weight_decay: set[str],
) -> list[dict]:
    """AdamW parameter groups of ``module``'s trainable parameters: one per (layer, decayed
    or not), with the layer's learning rate (``lr`` scaled by ``layer_decay`` per layer below
    the top) and weight decay (0 for the names in ``no_weight_decay``).

    Each group also carries ``layer`` and ``names`` (for tests and logs; AdamW ignores them).
    """
    named = [(name, param) for name, param in module.named_parameters() if param.requires_grad]
    depth = trunk_depth([name for name, _ in named])
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named:
        layer = layer_index(name, depth)
        decays = name not in no_weight_decay
        group = groups.setdefault(
            (layer, decays),
            {
                "params": [],
                "names": [],
                "layer": layer,
                "lr": lr * layer_decay ** (depth + 1 - layer),
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]
