"""Continuous modalities (image and audio MAE encoders) <-> a timm ``VisionTransformer``.

mmm's ``PatchEmbedder`` (a linear projection of flattened patches plus fixed positions) and its
pre-LN ``TransformerEncoder`` are a timm ViT with no class token, a convolution as the patch
projection, the positions as ``pos_embed`` and average pooling. Images are the ViT's input as
they are; an audio clip's input is its normalized log-mel spectrogram laid out as a one-channel
image, time along the height and mel bands along the width (``spectrogram_image``), which is
the (time, frequency) order of mmm's audio positions.

The export is timm's own local format (``config.json`` + ``model.safetensors``, written by
``timm.models.save_for_hf``), so ``timm.create_model("local-dir:DIR", pretrained=True)``
loads it. timm builds its LayerNorms with eps 1e-6 (as MAE); an encoder trained with another
eps is recorded as ``layer_norm_eps`` and ``load_timm`` passes it on.
"""

from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from mmm.export.parts import (
    MappingError,
    layer_norm_eps,
    only_modality,
    only_tokenizer,
    require_part,
    require_same,
    trunk,
)
from mmm.models.embedders import PatchEmbedder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import NotSupportedError, PatchLayout, Tokenizer

if TYPE_CHECKING:
    from mmm.finetune.module import FineTuningModule

#: timm model whose defaults the exported ViT overrides (every size is set explicitly).
TIMM_MODEL = "vit_base_patch16_224"
#: The LayerNorm epsilon timm's ViTs are built with.
TIMM_LAYER_NORM_EPS = 1e-6


def patch_layout(tokenizer: Tokenizer) -> PatchLayout:
    """The ViT input layout of a modality's positions (the modality answers:
    ``Tokenizer.patch_layout``).

    Raises:
        MappingError: for a modality without a 2-D patch grid.
    """
    try:
        return tokenizer.patch_layout()
    except NotSupportedError as error:
        raise MappingError(str(error)) from error


def spectrogram_image(features: Tensor) -> Tensor:
    """Normalized log-mel spectrograms (B, n_mels, T) -> the exported audio ViT's input
    (B, 1, T, n_mels): time along the height, so timm's row-major patches follow mmm's
    time-major positions."""
    return rearrange(features, "b f t -> b 1 t f")


def timm_kwargs(module: MaskedModelingModule) -> dict[str, Any]:
    """``timm.create_model`` arguments of a ViT computing what the MAE's encoder computes on
    unmasked input: no class token, average pooling, no classifier (JSON-serializable)."""
    layout, encoder = patch_layout(only_tokenizer(module)), trunk(module)
    if not encoder.norm_first:
        raise MappingError("timm's ViT is pre-LN; this module's trunk is post-LN")
    block = encoder.blocks[0]
    return {
        "img_size": list(layout.img_size),
        "patch_size": list(layout.patch_size),
        "in_chans": layout.in_chans,
        "embed_dim": encoder.dim,
        "depth": len(encoder.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / encoder.dim,
        "qkv_bias": True,
        "class_token": False,
        "global_pool": "avg",
        "fc_norm": False,  # the final norm before pooling, as mmm's pooled embeddings
        "num_classes": 0,
    }


def _embedder(module: MaskedModelingModule) -> PatchEmbedder:
    """The one modality's patch embedder, which timm's patch convolution must hold."""
    embedder = only_modality(module).embedder
    return require_part(module, embedder, PatchEmbedder, "timm export needs a PatchEmbedder")


def timm_state_dict(module: MaskedModelingModule) -> dict[str, Tensor]:
    """The MAE encoder under timm ``VisionTransformer`` names: the patch projection as a
    convolution, the fixed sine-cosine positions as ``pos_embed``."""
    layout, embedder = patch_layout(only_tokenizer(module)), _embedder(module)
    kernel = rearrange(embedder.proj.weight, layout.kernel_pattern, **layout.kernel_axes)
    state = {
        "patch_embed.proj.weight": kernel,  # (D, C, ph, pw)
        "patch_embed.proj.bias": embedder.proj.bias,
        "pos_embed": embedder.positions[None],  # (1, N, D)
    }
    encoder = trunk(module)
    state.update({f"blocks.{k}": v for k, v in encoder.blocks.state_dict().items()})
    state.update({f"norm.{k}": v for k, v in encoder.norm.state_dict().items()})
    return {name: value.detach().float().contiguous().clone() for name, value in state.items()}


def _create(kwargs: dict[str, Any], eps: float, **options: Any) -> nn.Module:
    import timm

    if eps != TIMM_LAYER_NORM_EPS:
        options["norm_layer"] = partial(nn.LayerNorm, eps=eps)
    return timm.create_model(TIMM_MODEL, pretrained=False, **kwargs, **options)


def export_timm(
    module: MaskedModelingModule,
    output: str | Path,
    classifier: tuple[Tensor, Tensor] | None = None,
) -> Path:
    """Write the image or audio MAE's encoder in timm's local format (``config.json`` +
    ``model.safetensors``): ``timm.create_model("local-dir:" + output, pretrained=True)``, or
    ``load_timm(output)``, which also restores a LayerNorm eps other than timm's 1e-6.

    ``classifier``: the (C, D) weight and (C,) bias of a fine-tuned linear head on the
    average-pooled states, exported as the ViT's ``head`` (``num_classes=C``); without it the
    ViT has no classifier."""
    from timm.models import save_for_hf

    output = Path(output)
    kwargs, eps = timm_kwargs(module), layer_norm_eps(module.encoder)  # the decoder stays
    state = timm_state_dict(module)
    if classifier is not None:
        kwargs["num_classes"] = classifier[0].shape[0]
        state["head.weight"], state["head.bias"] = classifier
    model = _create(kwargs, eps)
    model.load_state_dict(state)  # strict: every tensor is mmm's
    channels = kwargs["in_chans"]
    save_for_hf(
        model,
        str(output),
        model_args={**kwargs, "norm_layer": None},  # None: timm's LayerNorm; eps recorded
        safe_serialization=True,
        model_config={
            "layer_norm_eps": eps,
            # mmm feeds pixels in [0, 1] (and normalized spectrograms) as they are
            "pretrained_cfg": {"mean": [0.0] * channels, "std": [1.0] * channels},
        },
    )
    return output


def load_timm(directory: str | Path) -> nn.Module:
    """The timm ``VisionTransformer`` of an ``export_timm`` directory, in eval mode, built
    with the recorded LayerNorm eps."""
    import timm

    config = json.loads((Path(directory) / "config.json").read_text())
    eps = config.get("layer_norm_eps", TIMM_LAYER_NORM_EPS)
    options = {} if eps == TIMM_LAYER_NORM_EPS else {"norm_layer": partial(nn.LayerNorm, eps=eps)}
    return timm.create_model(f"local-dir:{directory}", pretrained=True, **options).eval()


@torch.no_grad()
def init_from_vit(module: MaskedModelingModule, directory: str | Path) -> None:
    """Load a local timm ViT directory (timm's ``config.json`` + weights, as
    ``save_for_hf`` and ``mmm export`` write) into an image or audio MAE's patch embedder
    and trunk; the MAE decoder starts fresh.

    Sizes must match (refused naming the setting). A class token or registers are dropped
    with a warning (mmm's encoder has none, so outputs then differ from the source's by their
    attention). The source's patch positions replace mmm's fixed code and stay fixed, resized
    with timm's ``resample_abs_pos_embed`` when the patch grid differs.
    """
    from timm.layers import resample_abs_pos_embed

    source = load_timm(directory)
    layout, encoder, embedder = (
        patch_layout(only_tokenizer(module)),
        trunk(module),
        _embedder(module),
    )
    if not encoder.norm_first:
        raise MappingError("it is a pre-LN ViT; set --model.encoder.norm_first=true")
    block, source_block = encoder.blocks[0], source.blocks[0]
    need = {
        "embed_dim": encoder.dim,
        "depth": len(encoder.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_hidden_features": block.mlp.fc1.out_features,
        "in_chans": layout.in_chans,
        "patch_size": layout.patch_size,
        "layer_norm_eps": layer_norm_eps(encoder),
        "final_norm": "LayerNorm",  # timm's fc_norm (a norm after pooling) does not map
    }
    have = {
        "embed_dim": source.embed_dim,
        "depth": len(source.blocks),
        "num_heads": source_block.attn.num_heads,
        "mlp_hidden_features": source_block.mlp.fc1.out_features,
        "in_chans": source.patch_embed.proj.in_channels,
        "patch_size": tuple(source.patch_embed.patch_size),
        "layer_norm_eps": getattr(source_block.norm1, "eps", None),
        "final_norm": type(source.norm).__name__,
    }
    require_same(directory, have, need)
    if source.num_prefix_tokens:
        rank_zero_warn(
            f"init_from: {directory} has {source.num_prefix_tokens} class/register token(s); "
            "mmm's encoder has none, so they are dropped"
        )
    try:  # strict: the same timm Block, so only options such as layer scale can differ
        encoder.blocks.load_state_dict(source.blocks.state_dict())
        encoder.norm.load_state_dict(source.norm.state_dict())
    except RuntimeError as error:
        raise MappingError(f"its blocks do not map: {error}") from error
    inverse = " -> ".join(reversed(layout.kernel_pattern.split(" -> ")))  # kernel -> (D, P)
    embedder.proj.weight.copy_(
        rearrange(source.patch_embed.proj.weight, inverse, **layout.kernel_axes)
    )
    embedder.proj.bias.copy_(source.patch_embed.proj.bias)
    positions = source.pos_embed
    if not source.no_embed_class:
        positions = positions[:, source.num_prefix_tokens :]  # (1, N, D) patch rows only
    grid = only_modality(module).spec.grid or (embedder.positions.shape[0], 1)
    old_grid = list(source.patch_embed.grid_size)
    positions = resample_abs_pos_embed(positions, list(grid), old_grid, num_prefix_tokens=0)
    embedder.positions.copy_(positions[0])  # (N, D)


def export_timm_classifier(finetuned: FineTuningModule, output: str | Path) -> Path:
    """Write a fine-tuned image or audio model as a timm ViT with its classifier head:
    average pooling (``global_pool="avg"``) and one linear layer, which is what
    ``pooling: mean`` and ``head: linear`` compute.

    Raises:
        MappingError: naming the pooling or head to choose, for the others.
    """
    if finetuned.task == "token_classification" or finetuned.pooler.mode != "mean":
        mode = "token-level" if finetuned.pooler is None else repr(finetuned.pooler.mode)
        raise MappingError(
            f"a timm ViT classifier average-pools its states; this model pools "
            f"{mode}. Fine-tune with --model.pooling mean to export it"
        )
    if finetuned.head_kind not in ("linear", "norm_linear"):  # the norm folds in
        raise MappingError(
            f"timm's classifier is one linear layer; this model's head is "
            f"{finetuned.head_kind!r}. Fine-tune with --model.head linear to export it"
        )
    from mmm.finetune.lora import merge_lora

    if finetuned.mode == "lora":
        finetuned = merge_lora(copy.deepcopy(finetuned))
    return export_timm(finetuned.backbone, output, classifier=finetuned.output_layer())
