"""Shared Transformer trunks. Every encoder maps embeddings (B, L, D) plus a padding mask (and,
for packed rows, document ids) to hidden states (B, L, D) and exposes its width as ``dim``;
modalities never see its internals."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial
from typing import Any, Literal

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask
from torch.utils.checkpoint import checkpoint

from mmm.models.attention import TrunkAttention

#: How packed documents are kept apart in attention: ``dense`` builds a (B, 1, L, L) boolean
#: mask for ``scaled_dot_product_attention`` (which rules out the flash kernel on a GPU);
#: ``flex`` builds a ``flex_attention`` block mask from the document ids (blocks no document
#: spans are skipped; compiled into one fused kernel on a GPU, an unfused reference on the
#: CPU, forward only); ``auto``: ``flex`` on CUDA, ``dense`` elsewhere (on the CPU the dense
#: mask is 2.8x faster and flex has no backward; ``docs/scale-out.md``).
DocumentAttention = Literal["auto", "dense", "flex"]


class Encoder(nn.Module, ABC):
    """Interface of a trunk: ``forward(x, padding_mask, document_ids) -> hidden``."""

    dim: int
    #: The epsilon the modalities' own LayerNorms (embedder, masked-LM head) use, so that one
    #: value describes the model as stock classes (ESM, BERT, timm ViT) describe theirs.
    layer_norm_eps: float = 1e-5

    def shard_units(self) -> list[nn.Module]:
        """The submodules that FSDP shards as units of their own (each gathers its weights
        just before it runs and frees them after): the trunk's blocks. Everything else is
        sharded with the root module. The default, none, shards the trunk whole."""
        return []

    @abstractmethod
    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, document_ids: Tensor | None = None
    ) -> Tensor:
        """Args:
            x: (B, L, D) input embeddings.
            padding_mask: (B, L) bool, ``True`` at real positions; ``None`` when none is padding
                (lets scaled-dot-product attention take its fastest kernel).
            document_ids: (B, L) long, which packed document of its row each position belongs
                to, -1 at padding: a position attends only to its own document (padding only
                to padding). It implies the padding mask; ``None`` when rows are not packed
                or documents may attend across.

        Returns:
            (B, L, D) hidden states.
        """

    def scaled(self, width_fraction: float, depth_fraction: float) -> Encoder:
        """A new, randomly initialized trunk of the same kind, ``width_fraction`` as wide and
        ``depth_fraction`` as deep (ELECTRA's generator: a quarter to a third of its
        discriminator). Trunks that cannot build one say so."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot build a scaled copy of itself (ELECTRA's "
            "generator); use mmm.models.TransformerEncoder as the trunk"
        )


def attention_mask(padding_mask: Tensor | None, document_ids: Tensor | None) -> Tensor | None:
    """The boolean mask for ``scaled_dot_product_attention`` (``True`` = may attend), built
    only when needed: ``None`` keeps SDPA's unmasked fast kernels.

    Returns:
        (B, 1, L, L) block-diagonal over ``document_ids`` (padding forms its own block, so no
        query row is empty and SDPA never returns NaN), else (B, 1, 1, L) over the padding
        mask, else ``None``.
    """
    if document_ids is not None:
        return (document_ids[:, :, None] == document_ids[:, None, :]).unsqueeze(1)  # (B,1,L,L)
    if padding_mask is not None:
        return padding_mask[:, None, None, :]  # (B, 1, 1, L)
    return None


def document_block_mask(document_ids: Tensor) -> BlockMask:
    """The ``flex_attention`` block mask of packed documents: a position attends to the
    positions of its own document (padding, id -1, to padding), as ``attention_mask``'s dense
    (B, 1, L, L) mask does, without materializing it on a GPU.

    Args:
        document_ids: (B, L) long.
    """
    batch, length = document_ids.shape

    def same_document(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return document_ids[b, q] == document_ids[b, kv]

    return create_block_mask(
        same_document, B=batch, H=None, Q_LEN=length, KV_LEN=length, device=document_ids.device
    )


def run_blocks(
    blocks: nn.ModuleList, x: Tensor, attn_mask: Tensor | BlockMask | None, recompute: bool
) -> Tensor:
    """``x`` through ``blocks``; with ``recompute`` (activation checkpointing, while training
    with gradients) each block keeps only its input and recomputes its activations in the
    backward pass: memory for one block's activations instead of all of them, for one more
    forward pass. ``use_reentrant=False``: torch's recommended variant (works with
    inputs that need no gradient, keyword arguments and FSDP)."""
    for block in blocks:
        if recompute and torch.is_grad_enabled():
            x = checkpoint(block, x, attn_mask=attn_mask, use_reentrant=False)
        else:
            x = block(x, attn_mask=attn_mask)
    return x


class PostNormBlock(Block):
    """timm's ``Block`` with the LayerNorms after each residual sum (post-LN, the original
    Transformer and BERT): ``x = norm1(x + attn(x))``, ``x = norm2(x + mlp(x))``. Same
    parameters and names as the pre-LN block, so only the order of operations differs."""

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.drop_path1(self.ls1(self.attn(x, attn_mask=attn_mask))))
        return self.norm2(x + self.drop_path2(self.ls2(self.mlp(x))))


class TransformerEncoder(Encoder):
    """Transformer trunk of timm ViT ``Block`` s (fused QKV, ``scaled_dot_product_attention``),
    pre-LN by default (ViT, ESM, GPT-2), post-LN with ``norm_first=False`` (BERT).

    Args:
        dim: model width.
        depth: number of blocks.
        num_heads: attention heads; must divide ``dim``.
        mlp_ratio: feed-forward width as a multiple of ``dim``.
        dropout: dropout after attention and feed-forward projections.
        attention_dropout: dropout on attention weights.
        drop_path: stochastic-depth rate, increased linearly to this value over the blocks.
        compile: compile the trunk with ``torch.compile`` (fuses the blocks' element-wise ops;
            worth it on a GPU; the first steps pay the compilation). Weights and checkpoints
            are the same either way.
        norm_first: LayerNorm before attention and feed-forward, plus a final LayerNorm
            (pre-LN, trains stably without warm-up tricks); ``False``: after each residual
            sum and no final norm (post-LN: what ``BertForMaskedLM`` computes, so a model can
            start from a BERT checkpoint and be exported as one).
        layer_norm_eps: epsilon of every LayerNorm of the trunk and of the modalities'
            embedders and heads. torch's default 1e-5; timm's ViT and MAE use 1e-6 and BERT
            1e-12, which an export to or ``init_from`` of those classes must match.
        activation_checkpointing: recompute each block's activations in the backward pass
            instead of keeping them (``torch.utils.checkpoint``): activation memory of one
            block instead of ``depth``, for one more forward pass per step. Same results.
        document_attention: how packed documents are kept apart in attention (see
            ``DocumentAttention``): ``auto`` (``flex`` on CUDA, ``dense`` on the CPU),
            ``dense`` or ``flex``. Rows that are not packed never build a document mask.
    """

    def __init__(
        self,
        dim: int = 256,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        compile: bool = False,
        norm_first: bool = True,
        layer_norm_eps: float = 1e-5,
        activation_checkpointing: bool = False,
        document_attention: DocumentAttention = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"TransformerEncoder: num_heads={num_heads} must divide dim={dim}")
        if document_attention not in ("auto", "dense", "flex"):
            raise ValueError(
                f"TransformerEncoder: document_attention={document_attention!r}; choose "
                "'auto', 'dense' or 'flex'"
            )
        if document_attention == "flex" and attention_dropout > 0:
            raise ValueError(
                f"TransformerEncoder: document_attention='flex' has no attention dropout "
                f"(attention_dropout={attention_dropout}); use 'dense' or 'auto'"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.norm_first = norm_first
        self.layer_norm_eps = layer_norm_eps
        self.activation_checkpointing = activation_checkpointing
        # flex_attention has no dropout on attention weights: such a trunk stays dense
        self.document_attention = "dense" if attention_dropout > 0 else document_attention
        block = Block if norm_first else PostNormBlock
        self.blocks = nn.ModuleList(
            block(
                dim=dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                proj_drop=dropout,
                attn_drop=attention_dropout,
                drop_path=drop_path * i / max(depth - 1, 1),
                norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps),
                attn_layer=TrunkAttention,  # flex block masks; fp32 kernel under CPU bf16
            )
            for i in range(depth)
        )
        # Post-LN blocks end in a norm already; a final one is part of pre-LN only.
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps) if norm_first else nn.Identity()
        self.apply(_init_weights)
        if compile:
            self.compile()  # in place: parameter names (and checkpoints) stay as they are

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, document_ids: Tensor | None = None
    ) -> Tensor:
        if document_ids is not None and self._flex(x.device):
            attn_mask = document_block_mask(document_ids)
        else:
            attn_mask = attention_mask(padding_mask, document_ids)  # None, (B,1,1,L), (B,1,L,L)
        x = run_blocks(self.blocks, x, attn_mask, recompute=self.activation_checkpointing)
        return self.norm(x)

    def scaled(self, width_fraction: float, depth_fraction: float) -> TransformerEncoder:
        """The same block kind, head width and feed-forward ratio, with ``width_fraction`` of
        the heads (so of the width; at least one) and ``depth_fraction`` of the blocks (at
        least one), rounded; no dropout."""
        head_dim = self.dim // self.num_heads
        heads = max(1, round(self.num_heads * width_fraction))
        return TransformerEncoder(
            dim=heads * head_dim,
            depth=max(1, round(len(self.blocks) * depth_fraction)),
            num_heads=heads,
            mlp_ratio=self.mlp_ratio,
            norm_first=self.norm_first,
            layer_norm_eps=self.layer_norm_eps,
        )

    def _flex(self, device: torch.device) -> bool:
        """Whether packed documents take ``flex_attention`` on ``device``."""
        if self.document_attention == "auto":
            return device.type == "cuda"
        return self.document_attention == "flex"

    def shard_units(self) -> list[nn.Module]:
        return list(self.blocks)


class HFEncoder(Encoder):
    """A Hugging Face encoder (``BertModel``, ``RobertaModel``, ...) behind the same interface.

    Args:
        path: a local directory saved with ``save_pretrained``; its weights are loaded.
        config: used when ``path`` is not set: keyword arguments of the model's config class,
            with ``model_type`` naming it (e.g. ``{"model_type": "bert", "hidden_size": 256}``).
            The model is built from scratch.

    The model's own embedding layer still adds its position and token-type embeddings (and
    LayerNorm) on top of the modality's embeddings passed as ``inputs_embeds``; its positions
    run along the whole row, also in packed rows.
    """

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if path is not None:
            self.model = AutoModel.from_pretrained(path, add_pooling_layer=False)
        else:
            settings = dict(config or {"model_type": "bert"})
            model_type = settings.pop("model_type", "bert")
            hf_config = AutoConfig.for_model(model_type, **settings)
            self.model = AutoModel.from_config(hf_config, add_pooling_layer=False)
        self.dim = self.model.config.hidden_size

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, document_ids: Tensor | None = None
    ) -> Tensor:
        mask = None if padding_mask is None else padding_mask.long()  # (B, L)
        if document_ids is not None:
            mask = attention_mask(None, document_ids)  # (B, 1, L, L) bool, taken as it is
        return self.model(inputs_embeds=x, attention_mask=mask).last_hidden_state


def _init_weights(module: nn.Module) -> None:
    """BERT/ViT initialization: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TimmEncoder(Encoder):
    """The blocks and final norm of a timm Vision Transformer behind the ``Encoder`` interface.

    The modality's embedder does patching and positions (masking happens between embedding and
    encoding), so the timm model's own patch embedding, position table, class token and head
    are dropped. The model is never downloaded (``pretrained=False``); ``checkpoint_path``
    loads local weights before the unused parts are dropped.

    Args:
        name: a timm model name, e.g. ``vit_tiny_patch16_224`` or ``vit_small_patch16_224``.
        checkpoint_path: a local timm/PyTorch state dict to load (``.pth``, ``.safetensors``),
            or ``None`` for random initialization.
        model_kwargs: passed to ``timm.create_model``, e.g. ``{depth: 4, drop_path_rate: 0.1}``.
        activation_checkpointing: recompute each block's activations in the backward pass
            (as ``TransformerEncoder``'s).

    Packed documents take the dense mask: timm's stock blocks take tensor masks only.
    """

    def __init__(
        self,
        name: str = "vit_tiny_patch16_224",
        checkpoint_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        import timm
        from timm.models import load_state_dict

        model = timm.create_model(name, pretrained=False, num_classes=0, **(model_kwargs or {}))
        if not isinstance(getattr(model, "blocks", None), nn.Sequential | nn.ModuleList):
            raise ValueError(f"TimmEncoder: timm model {name!r} has no ViT-style 'blocks'")
        if checkpoint_path is not None:
            state = load_state_dict(checkpoint_path)
            missing = model.load_state_dict(state, strict=False).missing_keys
            trunk = [k for k in missing if k.startswith(("blocks.", "norm."))]
            if trunk:
                raise ValueError(
                    f"TimmEncoder: {checkpoint_path} lacks weights of {name!r}: {trunk[:5]}"
                )
        self.blocks = model.blocks
        self.norm = model.norm
        self.dim = model.embed_dim

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, document_ids: Tensor | None = None
    ) -> Tensor:
        attn_mask = attention_mask(padding_mask, document_ids)  # None, (B,1,1,L), (B,1,L,L)
        x = run_blocks(self.blocks, x, attn_mask, recompute=self.activation_checkpointing)
        return self.norm(x)

    def shard_units(self) -> list[nn.Module]:
        return list(self.blocks)
