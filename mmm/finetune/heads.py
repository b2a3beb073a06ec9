"""What a fine-tuned model puts on top of the encoder: pooling of a sample's states into one
vector, and the heads that turn vectors into logits or values.

Pooling reads the packed trunk view of a sample (``pack_states``): the real positions of all
its modalities, one after the other in modality order, so that one sample of several
modalities pools into one vector, as ``MaskedModelingModule.embed`` does.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from mmm.models.sequences import Segment, pack_segments

#: ``mean``: over the real positions; ``attention``: a learned query attends over them (one
#: head); ``cls``: the first position (``<cls>`` / ``[CLS]`` / ``<s>`` of sequences), the
#: stock Hugging Face sequence classifiers' choice.
Pooling = Literal["mean", "attention", "cls"]
#: ``linear``: one linear layer (a linear probe; timm's classifier); ``norm_linear``: a
#: BatchNorm without affine parameters, then one linear layer (MAE's linear probe: frozen
#: features of any scale are standardized by the training batches' statistics, which fold into
#: the linear layer afterwards); ``dense``: dense -> tanh -> linear, the head of
#: ``BertForSequenceClassification`` / ``EsmForSequenceClassification``.
HeadKind = Literal["linear", "norm_linear", "dense"]
HEAD_KINDS: tuple[str, ...] = get_args(HeadKind)


def pack_states(
    states: dict[str, Tensor],
    real: dict[str, Tensor],
    rows: dict[str, Tensor | None],
    batch_size: int,
) -> tuple[Tensor, Tensor]:
    """Every sample's real positions of the given modalities in one row.

    Args:
        states: modality -> (B_m, L_m, D) encoder states.
        real: modality -> (B_m, L_m) bool real positions.
        rows: modality -> (B_m,) the samples its rows belong to (``None``: all, in order).

    Returns:
        (B, T, D) states, real positions first in modality order, and (B, T) bool real.
    """
    segments = {name: Segment(x, real[name], rows.get(name)) for name, x in states.items()}
    x, layout = pack_segments(segments, batch_size)  # (B, T, D)
    mask = layout.padding_mask
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return x, mask


class Pooler(nn.Module):
    """(B, T, D) states and (B, T) real positions -> (B, D), by ``mode``.

    The attention query starts at zero, so attention pooling starts as mean pooling and
    learns where to look."""

    def __init__(self, dim: int, mode: Pooling = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "attention", "cls"):
            raise ValueError(f"Pooler: mode must be mean, attention or cls, got {mode!r}")
        self.mode = mode
        self.query = nn.Parameter(torch.zeros(dim)) if mode == "attention" else None

    def forward(self, x: Tensor, real: Tensor) -> Tensor:
        if self.mode == "cls":
            return x[:, 0]  # (B, D)
        if self.mode == "mean":
            weights = real.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
            return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # (B, D)
        scores = (x @ self.query.to(x.dtype)) / math.sqrt(x.shape[-1])  # (B, T)
        scores = scores.float().masked_fill(~real, float("-inf"))
        weights = scores.softmax(dim=-1).to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        return (weights * x).sum(dim=1)  # (B, D)


class ClassifierHead(nn.Module):
    """Pooled vectors (B, D) -> (B, C) logits or values.

    ``kind="dense"`` is the stock sequence classifiers' head (dense -> tanh -> linear),
    ``linear`` one linear layer (a probe, timm's classifier), ``norm_linear`` a BatchNorm
    without affine parameters before it (MAE's linear probe)."""

    def __init__(self, dim: int, num_labels: int, kind: HeadKind = "dense", dropout: float = 0.0):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"ClassifierHead: kind must be one of {HEAD_KINDS}, got {kind!r}")
        self.kind = kind
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6) if kind == "norm_linear" else None
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(dim, dim) if kind == "dense" else None
        self.out = nn.Linear(dim, num_labels)
        for layer in (self.dense, self.out):
            if layer is not None:
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        x = self.dropout(pooled if self.norm is None else self.norm(pooled))  # (B, D)
        if self.dense is not None:
            x = self.dropout(torch.tanh(self.dense(x)))  # (B, D)
        return self.out(x)  # (B, C)

    def output_layer(self) -> tuple[Tensor, Tensor]:
        """The last linear layer as (C, D) weight and (C,) bias, float32, with an eval-mode
        norm folded in: ``norm_linear`` then computes ``pooled @ weight.T + bias``, one
        linear layer, as stock classifiers hold it."""
        weight, bias = linear_parameters(self.out)
        if self.norm is None:
            return weight, bias
        scale = (self.norm.running_var.float() + self.norm.eps).rsqrt()  # (D,)
        folded = weight * scale  # (C, D)
        return folded, bias - folded @ self.norm.running_mean.float()


class PositionClassifier(nn.Module):
    """Per-position states (B, L, D) -> (B, L, C) logits: one linear layer shared by all
    positions (``*ForTokenClassification``'s head)."""

    def __init__(self, dim: int, num_labels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, num_labels)
        nn.init.trunc_normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out(self.dropout(hidden))  # (B, L, C)

    def output_layer(self) -> tuple[Tensor, Tensor]:
        """The linear layer as (C, D) weight and (C,) bias, float32 copies."""
        return linear_parameters(self.out)


def linear_parameters(layer: nn.Linear) -> tuple[Tensor, Tensor]:
    """A linear layer's (C, D) weight and (C,) bias as detached float32 copies."""
    return layer.weight.detach().float().clone(), layer.bias.detach().float().clone()
