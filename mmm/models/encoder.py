"""Shared Transformer trunks. Every encoder maps embeddings (B, L, D) plus a padding mask (and,
for packed rows, document ids) to hidden states (B, L, D) and exposes its width as ``dim``;
modalities never see its internals."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial
from typing import Any

from timm.models.vision_transformer import Block
from torch import Tensor, nn

from mmm.models.attention import CpuAutocastAttention


class Encoder(nn.Module, ABC):
    """Interface of a trunk: ``forward(x, padding_mask, document_ids) -> hidden``."""

    dim: int
    #: The epsilon the modalities' own LayerNorms (embedder, masked-LM head) use, so that one
    #: value describes the model as stock classes (ESM, BERT, timm ViT) describe theirs.
    layer_norm_eps: float = 1e-5

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
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"TransformerEncoder: num_heads={num_heads} must divide dim={dim}")
        self.dim = dim
        self.norm_first = norm_first
        self.layer_norm_eps = layer_norm_eps
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
                attn_layer=CpuAutocastAttention,  # fp32 attention kernel under CPU bf16
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
        attn_mask = attention_mask(padding_mask, document_ids)  # None, (B,1,1,L) or (B,1,L,L)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        return self.norm(x)


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
    """

    def __init__(
        self,
        name: str = "vit_tiny_patch16_224",
        checkpoint_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
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

    # The same loop as ``TransformerEncoder``: timm blocks take the attention mask.
    forward = TransformerEncoder.forward
