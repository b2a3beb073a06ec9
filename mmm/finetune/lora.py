"""LoRA (Hu et al., 2021) on the trunk's linear layers through ``peft``: the pretrained
weights stay frozen, each linear layer gains a trainable low-rank update ``B A`` scaled by
``alpha / rank``, and a checkpoint keeps only the adapters (and the task head).

Adapters are injected in place (``peft.inject_adapter_in_model``), so the trunk keeps its
class and forward; a linear layer ``blocks.0.attn.qkv`` becomes a LoRA layer whose frozen
weight is ``blocks.0.attn.qkv.base_layer.weight`` beside ``lora_A`` / ``lora_B``.
``merge_lora`` folds the updates into the weights and restores plain linear layers (export).
"""

from __future__ import annotations

from torch import Tensor, nn

#: The marker of adapter parameters in names.
ADAPTER_MARKER = "lora_"


def linear_layer_names(trunk: nn.Module) -> list[str]:
    """The names of every linear layer in ``trunk`` (attention and feed-forward)."""
    return [name for name, layer in trunk.named_modules() if isinstance(layer, nn.Linear)]


def add_lora(trunk: nn.Module, rank: int, alpha: float, dropout: float) -> None:
    """Inject LoRA adapters into every linear layer of ``trunk`` and freeze everything else
    of it."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = linear_layer_names(trunk)
    if not targets:
        raise ValueError(f"LoRA: the trunk {type(trunk).__name__} has no linear layer to adapt")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    inject_adapter_in_model(config, trunk)
    for name, param in trunk.named_parameters():
        param.requires_grad = ADAPTER_MARKER in name


def is_adapter(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter's."""
    return ADAPTER_MARKER in name


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA update of ``module`` into its base weight (``W + alpha/r * B A``) and
    put the plain base layer back in its place, in place; returns ``module``. Names and
    shapes are then those of the model without adapters (what the exporters map)."""
    from peft.tuners.lora import LoraLayer

    for name, layer in list(module.named_modules()):
        if not isinstance(layer, LoraLayer):
            continue
        layer.merge()
        owner_name, _, attribute = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        setattr(owner, attribute, layer.get_base_layer())
    return module


def adapter_state(state: dict[str, Tensor], trainable: set[str]) -> dict[str, Tensor]:
    """The entries of a state dict a LoRA checkpoint keeps: the trained parameters (adapters,
    task head); the frozen base weights come from the pretraining checkpoint instead."""
    return {name: value for name, value in state.items() if name in trainable}
