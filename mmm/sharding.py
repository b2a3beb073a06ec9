"""Sharded data-parallel training (FSDP2) and its checkpoints.

``mmm fit --trainer.strategy fsdp2`` shards every parameter, gradient and optimizer state
across the ranks (PyTorch's ``fully_shard``, through Lightning's ``ModelParallelStrategy``):
each trunk block is a unit that gathers its weights just before it runs and frees them after,
the rest of the model (embedders, heads, decoders) is one more. It runs on GPUs (NCCL) and on
CPUs (gloo); Lightning's ``--trainer.strategy fsdp`` (FSDP1) needs a GPU
(``docs/scale-out.md`` quotes what it says on a CPU).

Checkpoints are folders of one shard per rank plus ``meta.pt`` (the loops, the data's reader
states, the hyperparameters); ``--ckpt_path FOLDER`` resumes from one under the same strategy.
``consolidate`` (``mmm consolidate FOLDER``) writes the single ``.ckpt`` file that
``load_module``, ``mmm export`` and a non-sharded resume read.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.load import _load_distributed_checkpoint
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

#: The file of a sharded checkpoint folder that holds everything but the tensors.
METADATA_FILE = "meta.pt"


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as plain FSDP: one data-parallel dimension over
    all ranks of all nodes, no tensor parallelism (``fsdp2`` on the command line). The module
    shards itself in ``configure_model`` (``shard``).

    Args:
        save_distributed_checkpoint: each rank writes its shard into a checkpoint folder
            (fast, no rank holds the whole model); ``False``: rank 0 gathers one ``.ckpt``
            file, as DDP writes.
        process_group_backend: ``nccl`` / ``gloo``; default: the device's (gloo on CPUs).
        timeout: how long collectives wait for the other ranks.
    """

    def __init__(
        self,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        # Every rank of every node is a data-parallel replica; the device mesh's tensor-
        # parallel dimension has size 1 (Lightning's "auto" would make it the GPUs per node).
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


if "fsdp2" not in StrategyRegistry:
    StrategyRegistry.register(
        "fsdp2",
        FSDP2Strategy,
        description="FSDP2 (fully_shard) over all ranks, on GPUs or CPUs; mmm.sharding",
    )


def shard(
    module: nn.Module, units: list[nn.Module], mesh: DeviceMesh, entry_points: tuple[str, ...]
) -> None:
    """Shard ``module`` in place with ``fully_shard`` over ``mesh``: each of ``units`` (the
    trunk's blocks) first, then the module itself (every other parameter). Parameter names
    stay as they are, so checkpoints keep the non-sharded layout. A module sharded already
    (``configure_model`` runs again for ``validate`` after ``fit``) is left as it is.

    FSDP gathers a module's parameters when its ``forward`` is called; Lightning calls the
    step methods instead, which ``entry_points`` names (``training_step``, ...): they gather
    the root's parameters as ``forward`` would."""
    if isinstance(module, FSDPModule):
        return
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(module, mesh=mesh)
    for name in entry_points:
        register_fsdp_forward_method(module, name)


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a sharded checkpoint folder (FSDP's ``save_distributed_checkpoint``)."""
    return Path(path).is_dir() and (Path(path) / METADATA_FILE).is_file()


def consolidate(folder: str | Path, output: str | Path | None = None) -> Path:
    """Gather a sharded checkpoint folder into one ``.ckpt`` file.

    Lightning's ``python -m lightning.pytorch.utilities.consolidate_checkpoint`` reads the
    folders of its ``FSDPStrategy`` only (it looks for a ``model`` entry; those of
    ``ModelParallelStrategy`` hold ``state_dict``), so this does its work for both: read the
    shards with Lightning's loader, put the weights under ``state_dict`` and the optimizer
    states in a list keyed by parameter number, as a non-sharded checkpoint holds them.

    Args:
        folder: the checkpoint folder (``epoch=0-step=100.ckpt/`` holding ``meta.pt``).
        output: the file to write; default: the folder's name plus ``.consolidated``.

    Returns:
        The path written.
    """
    if not is_sharded_checkpoint(folder):
        raise ValueError(
            f"{folder} is not a sharded checkpoint folder (a folder holding {METADATA_FILE} and "
            "one .distcp file per rank, as --trainer.strategy fsdp2 writes)"
        )
    checkpoint = _load_distributed_checkpoint(Path(folder))
    if "model" in checkpoint:  # FSDPStrategy's layout
        checkpoint["state_dict"] = checkpoint.pop("model")
    optimizers = sorted(key for key in checkpoint if key.startswith("optimizer_"))
    checkpoint["optimizer_states"] = [
        numbered_optimizer_state(checkpoint.pop(key)) for key in optimizers
    ]
    path = Path(output) if output is not None else Path(f"{folder}.consolidated")
    torch.save(checkpoint, path)
    return path


def numbered_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter name (what a sharded checkpoint holds) keyed by
    parameter number instead, numbered in parameter-group order as ``Optimizer.state_dict``
    numbers them, so that a non-sharded run resumes from it. One keyed by number already is
    returned as it is."""
    groups = state["param_groups"]
    if all(isinstance(p, int) for group in groups for p in group["params"]):
        return state
    numbers: dict[str, int] = {}
    for group in groups:
        group["params"] = [numbers.setdefault(name, len(numbers)) for name in group["params"]]
    return {
        "state": {numbers[name]: value for name, value in state["state"].items()},
        "param_groups": groups,
    }
