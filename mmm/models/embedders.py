"""Embedders: turn one modality's inputs into (B, L, D) vectors with positions added."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TokenEmbedder(nn.Module):
    """Token ids -> embeddings + learned absolute positions, then LayerNorm and dropout (BERT).

    Args:
        vocab_size: number of token ids.
        dim: embedding width (the encoder's ``dim``).
        max_length: longest sequence, for the position table.
        pad_token_id: its embedding gets no gradient.
        dropout: dropout on the embeddings.
        layer_norm_eps: the LayerNorm's epsilon (the encoder's ``layer_norm_eps``).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        max_length: int,
        pad_token_id: int,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.positions = nn.Embedding(max_length, dim)
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        nn.init.trunc_normal_(self.tokens.weight, std=0.02)
        nn.init.trunc_normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.tokens.weight[pad_token_id].zero_()

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """(B, L) long -> (B, L, D).

        Args:
            input_ids: (B, L) token ids.
            position_ids: (B, L) long position of each token; ``None`` for 0..L-1 in every
                row. Packed rows restart them at every document.
        """
        table = self.positions.num_embeddings
        if position_ids is None:
            length = input_ids.shape[1]
            if length > table:
                raise ValueError(f"sequence of {length} tokens exceeds max_length={table}")
            positions = self.positions.weight[: input_ids.shape[1]]  # (L, D)
        else:
            positions = self.positions(position_ids)  # (B, L, D); out-of-table ids raise
        x = self.tokens(input_ids) + positions  # (B, L, D)
        return self.dropout(self.norm(x))

    @torch.no_grad()
    def add_to_output(self, offset: Tensor) -> None:
        """Make every output ``offset`` (D,) larger: the last step is the LayerNorm's affine
        map, so its bias absorbs it exactly."""
        self.norm.bias += offset


def sincos_positions(shape: tuple[int, ...], dim: int) -> Tensor:
    """Fixed sine-cosine position codes for positions laid out on a grid of ``shape``.

    Each axis gets ``2 * (dim // (2 * len(shape)))`` channels of the Transformer's 1-D code of
    its coordinate, concatenated (MAE's 2-D code for ``shape = (rows, cols)``); channels left
    over when ``dim`` is not a multiple of ``2 * len(shape)`` (a width of 128 on a rank-3 grid)
    are zero. Hand-written because timm's ``build_sincos2d_pos_embed`` covers two axes only.

    Returns:
        (prod(shape), dim) float, positions in row-major order.
    """
    axes = len(shape)
    half = dim // axes // 2
    if half < 1:
        raise ValueError(
            f"sincos_positions: dim={dim} is too small for {axes} axes (>= {2 * axes})"
        )
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)  # (half,)
    coords = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in shape), indexing="ij")
    codes = []
    for coord in coords:
        angles = coord.reshape(-1, 1) * omega  # (N, half)
        codes += [torch.sin(angles), torch.cos(angles)]
    spare = dim - 2 * half * axes
    codes.append(torch.zeros(coords[0].numel(), spare, dtype=torch.float64))
    return torch.cat(codes, dim=1).float()  # (N, dim)


class PatchEmbedder(nn.Module):
    """Continuous vectors (image patches, audio frames) -> linear projection + fixed positions.

    Positions are not learned (MAE): a sine-cosine code over ``grid`` of any rank when positions
    form a grid (1-D patches, 2-D image patches, 3-D video tubelets), else a 1-D code over
    ``max_length``. A sequence shorter than the table takes its
    first rows, so a grid must list the axis that may be cut short first (e.g. time).

    Args:
        input_dim: length of one input vector (e.g. ``channels * patch * patch``).
        dim: embedding width (the encoder's ``dim``).
        max_length: most positions in a sample.
        grid: the positions' grid shape (any rank, row-major), or ``None`` for a sequence.
    """

    def __init__(
        self, input_dim: int, dim: int, max_length: int, grid: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, dim)
        # MAE initializes the patch projection like a flattened conv (xavier on the matrix).
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        shape = tuple(grid) if grid is not None else (max_length,)
        self.register_buffer("positions", sincos_positions(shape, dim), persistent=False)

    def forward(self, patches: Tensor) -> Tensor:
        """(B, L, input_dim) -> (B, L, D)."""
        length = patches.shape[1]
        if length > self.positions.shape[0]:
            raise ValueError(
                f"PatchEmbedder: {length} positions exceed the {self.positions.shape[0]} of "
                "the spec's max_length/grid"
            )
        return self.proj(patches) + self.positions[:length].to(patches.dtype)  # (B, L, D)

    @torch.no_grad()
    def add_to_output(self, offset: Tensor) -> None:
        """Make every output ``offset`` (D,) larger: the positions, added last, absorb it."""
        self.positions += offset
