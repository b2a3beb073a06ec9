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
    """

    def __init__(
        self, vocab_size: int, dim: int, max_length: int, pad_token_id: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.positions = nn.Embedding(max_length, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.trunc_normal_(self.tokens.weight, std=0.02)
        nn.init.trunc_normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.tokens.weight[pad_token_id].zero_()

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, L) long -> (B, L, D)."""
        length = input_ids.shape[1]
        if length > self.positions.num_embeddings:
            raise ValueError(
                f"sequence of {length} tokens exceeds max_length={self.positions.num_embeddings}"
            )
        x = self.tokens(input_ids) + self.positions.weight[:length]  # (B, L, D)
        return self.dropout(self.norm(x))
