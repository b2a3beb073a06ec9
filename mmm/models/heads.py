"""Heads: predict the hidden targets from encoder states at hidden positions only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from mmm.checks import require_at_least
from mmm.models.attention import TrunkAttention
from mmm.models.embedders import sincos_positions


class TokenHead(nn.Module):
    """BERT's masked-LM head: dense -> GELU -> LayerNorm -> vocabulary projection.

    It runs on the gathered hidden positions only, (N, D) with N = number of hidden tokens in
    the batch, not on every position (MosaicBERT's sparse prediction): at 15% masking that is
    ~7x less work in the largest matrix multiply of a small model.

    Args:
        dim: encoder width.
        vocab_size: number of classes.
        tied_embedding: an ``nn.Embedding`` whose weight the output projection shares (BERT
            ties them); ``None`` for an untied projection.
        layer_norm_eps: the LayerNorm's epsilon (the encoder's ``layer_norm_eps``).
        input_dim: width of the states it reads when not ``dim`` (ELECTRA's generator: a
            narrower trunk whose head maps up to the shared embedding width, as Hugging
            Face's ``ElectraGeneratorPredictions``).
    """

    def __init__(
        self,
        dim: int,
        vocab_size: int,
        tied_embedding: nn.Embedding | None = None,
        layer_norm_eps: float = 1e-5,
        input_dim: int | None = None,
    ):
        super().__init__()
        norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.transform = nn.Sequential(nn.Linear(input_dim or dim, dim), nn.GELU(), norm)
        self.decoder = nn.Linear(dim, vocab_size)
        if tied_embedding is not None:
            self.decoder.weight = tied_embedding.weight
        nn.init.trunc_normal_(self.transform[0].weight, std=0.02)
        nn.init.zeros_(self.transform[0].bias)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """(N, input_dim) -> (N, vocab_size) logits."""
        return self.decoder(self.transform(hidden))


@dataclass
class PatchDecoderConfig:
    """The MAE decoder and target of continuous modalities (image patches, audio frames)."""

    dim: int = 128
    """Decoder width; it is its own, narrower than the encoder's (MAE: 512 for a ViT-L)."""
    depth: int = 2
    """Decoder blocks; MAE shows that a shallow decoder suffices for pre-training."""
    num_heads: int = 4
    """Decoder attention heads; must divide ``dim``."""
    mlp_ratio: float = 4.0
    """Decoder feed-forward width as a multiple of ``dim``."""
    norm_pix_loss: bool = True
    """Regress each target patch normalized by its own mean and variance (MAE), which sharpens
    reconstructions; ``False`` regresses raw values."""

    def __post_init__(self) -> None:
        require_at_least(
            "PatchDecoderConfig", 1, dim=self.dim, depth=self.depth, num_heads=self.num_heads
        )
        if self.dim % self.num_heads:
            raise ValueError(
                f"PatchDecoderConfig: num_heads={self.num_heads} must divide dim={self.dim}"
            )


class PatchDecoder(nn.Module):
    """MAE's lightweight decoder: visible encoder states + a learned mask token at every hidden
    position, fixed positions, a few Transformer blocks, a linear prediction per position.

    Args:
        dim: encoder width.
        output_dim: length of one predicted vector (the spec's ``input_dim``).
        max_length: most positions in a sample.
        grid: the positions' grid shape (any rank, row-major), or ``None`` for a sequence.
        config: decoder width, depth and heads.
    """

    def __init__(
        self,
        dim: int,
        output_dim: int,
        max_length: int,
        grid: tuple[int, ...] | None,
        config: PatchDecoderConfig,
    ) -> None:
        super().__init__()
        width = config.dim
        self.embed = nn.Linear(dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        shape = tuple(grid) if grid is not None else (max_length,)
        self.register_buffer("positions", sincos_positions(shape, width), persistent=False)
        self.blocks = nn.ModuleList(
            Block(
                dim=width,
                num_heads=config.num_heads,
                mlp_ratio=config.mlp_ratio,
                qkv_bias=True,
                attn_layer=TrunkAttention,
            )
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, output_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(
        self,
        hidden: Tensor,
        mask: Tensor,
        seen: Tensor,
        attention_mask: Tensor,
        context: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Predictions at hidden positions only, (N, output_dim) in row-major order of
        ``mask``.

        The encoder states of the positions it saw stay; every other position gets the learned
        mask token; fixed positions are added. With ``context`` (the encoder states of the
        sample's other modalities, which carry their own positions), those states join the
        sequence after the modality's positions, so that a modality hidden whole can be drawn
        from the others (MultiMAE's decoders read all encoder tokens likewise). The blocks
        attend over every real position, the output projection runs on hidden ones only.

        Args:
            hidden: (B, L, D) encoder states in the modality's layout.
            mask: (B, L) bool hidden positions.
            seen: (B, L) bool positions the encoder saw.
            attention_mask: (B, L) bool real positions.
            context: (B, T, D) states and (B, T) bool real positions, or ``None``.
        """
        length = hidden.shape[1]
        x = self.embed(hidden)  # (B, L, W)
        x = torch.where(seen.unsqueeze(-1), x, self.mask_token.to(x.dtype))
        x = x + self.positions[:length].to(x.dtype)
        real = attention_mask
        if context is not None:
            states, context_real = context
            x = torch.cat([x, self.embed(states)], dim=1)  # (B, L + T, W)
            real = torch.cat([attention_mask, context_real], dim=1)  # (B, L + T)
        attn_mask = None if bool(real.all()) else real[:, None, None, :]  # (B, 1, 1, L + T)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        return self.pred(self.norm(x[:, :length][mask]))  # (N, W) -> (N, output_dim)
