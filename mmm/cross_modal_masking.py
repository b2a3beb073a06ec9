"""Masking across modalities: what a sample shows of each of its modalities.

Each modality's own ``Masking`` chooses hidden positions within it. Two strategies act across
the modalities of a sample, so that one modality is learned from the others:

- ``drop_modalities``: with a per-modality probability, hide every position of a modality of a
  sample (FLAVA / MultiMAE style): the model must produce it from the sample's other
  modalities. A sample always keeps at least one of its modalities.
- ``TokenBudgets``: 4M's per-sample budgets. A sample shows ``visible`` positions and predicts
  ``target`` positions in all; how each budget splits across the sample's modalities is drawn
  from a symmetric Dirichlet, so some samples see mostly audio and predict text, others the
  reverse. Positions in neither budget are left out of the encoder and of the loss.

Both draw from torch's global RNG (evaluation runs them under ``mmm.rng.seeded``, so held-out
masks repeat). Modality tensors come as dicts keyed by modality name, each (B_m, L_m) over
the B_m samples that carry the modality, with ``rows`` (B_m,) naming those samples.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from mmm.masking import MaskedPositions


def _rows(rows: Tensor | None, count: int, device: torch.device) -> Tensor:
    return rows if rows is not None else torch.arange(count, device=device)


def presence(
    maskable: dict[str, Tensor], rows: dict[str, Tensor | None], batch_size: int
) -> Tensor:
    """(B, M) bool: which sample has which modality (with at least one maskable position),
    modalities in the order of ``maskable``."""
    device = next(iter(maskable.values())).device
    present = torch.zeros(batch_size, len(maskable), dtype=torch.bool, device=device)
    for column, (name, positions) in enumerate(maskable.items()):
        index = _rows(rows[name], positions.shape[0], device)
        present[index, column] = positions.any(dim=1)
    return present


def drop_modalities(
    masked: dict[str, MaskedPositions],
    maskable: dict[str, Tensor],
    rows: dict[str, Tensor | None],
    probabilities: dict[str, float],
    batch_size: int,
) -> dict[str, MaskedPositions]:
    """Hide whole modalities of some samples, each with its ``probabilities[name]``.

    A dropped modality of a sample has every maskable position hidden (ratio 1), shown as the
    mask token only, and none left out. When every modality of a sample is drawn, one of them,
    chosen at random, is kept as its own masking chose.
    """
    if not any(probabilities.get(name, 0.0) > 0 for name in masked):
        return masked
    present = presence(maskable, rows, batch_size)  # (B, M)
    device = present.device
    chance = torch.tensor([probabilities.get(name, 0.0) for name in maskable], device=device)
    draw = torch.rand(present.shape, device=device)  # (B, M)
    drop = present & (draw < chance)
    everything = (drop == present).all(dim=1) & present.any(dim=1)  # (B,)
    keeper = torch.where(present, torch.rand(present.shape, device=device), -1.0).argmax(dim=1)
    drop[everything, keeper[everything]] = False
    dropped = {}
    for column, (name, positions) in enumerate(maskable.items()):
        index = _rows(rows[name], positions.shape[0], device)
        gone = drop[index, column]  # (B_m,)
        dropped[name] = _hide_rows(masked[name], positions, gone)
    return dropped


def _hide_rows(masked: MaskedPositions, maskable: Tensor, gone: Tensor) -> MaskedPositions:
    """``masked`` with every maskable position of the ``gone`` (B_m,) rows hidden."""
    mask = torch.where(gone.unsqueeze(1), maskable, masked.mask)  # (B_m, L_m)
    mask_only = gone if masked.mask_only is None else gone | masked.mask_only
    left_out = None if masked.left_out is None else masked.left_out & ~gone.unsqueeze(1)
    ratio = torch.where(gone, torch.ones_like(masked.ratio), masked.ratio)
    return replace(masked, mask=mask, ratio=ratio, mask_only=mask_only, left_out=left_out)


def _dirichlet_shares(present: Tensor, alpha: float) -> Tensor:
    """(B, M) shares summing to 1 over each sample's present modalities: a symmetric
    Dirichlet draw (normalized Gamma(alpha) variables), 0 for absent modalities."""
    gamma = torch.distributions.Gamma(
        torch.tensor(alpha, device=present.device), torch.tensor(1.0, device=present.device)
    )
    draws = gamma.sample(present.shape) * present  # (B, M)
    return draws / draws.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _random_ranks(maskable: Tensor) -> Tensor:
    """(B, L) long: a random order of each row's maskable positions (0, 1, ...), others last."""
    scores = torch.rand(maskable.shape, device=maskable.device).masked_fill(~maskable, 2.0)
    return scores.argsort(dim=1).argsort(dim=1)


@dataclass
class TokenBudgets:
    """4M's masking across modalities: per sample, ``visible`` positions are shown to the
    encoder and ``target`` positions predicted, each budget split across the sample's
    modalities by a symmetric Dirichlet(``alpha``) draw (small ``alpha``: most of a budget on
    one modality; 1: uniform over splits). A modality gets at most the positions it has;
    positions in neither budget are left out. Targets show the mask token only. Positions that
    are never maskable (special tokens) stay visible beyond the budget."""

    visible: int = 128
    """Positions shown to the encoder per sample, over all its modalities."""
    target: int = 128
    """Positions predicted per sample, over all its modalities."""
    alpha: float = 1.0
    """Concentration of the symmetric Dirichlet that splits each budget across modalities."""

    def __post_init__(self) -> None:
        if self.visible < 1 or self.target < 1:
            raise ValueError(
                f"TokenBudgets: visible and target must be >= 1, got {self.visible}, {self.target}"
            )
        if self.alpha <= 0:
            raise ValueError(f"TokenBudgets: alpha must be > 0, got {self.alpha}")

    def __call__(
        self, maskable: dict[str, Tensor], rows: dict[str, Tensor | None], batch_size: int
    ) -> dict[str, MaskedPositions]:
        """The hidden and left-out positions of every modality of a batch."""
        present = presence(maskable, rows, batch_size)  # (B, M)
        counts = torch.zeros(present.shape, dtype=torch.long, device=present.device)
        for column, (name, positions) in enumerate(maskable.items()):
            index = _rows(rows[name], positions.shape[0], present.device)
            counts[index, column] = positions.sum(dim=1)
        shown = _budget(_dirichlet_shares(present, self.alpha), self.visible, counts)  # (B, M)
        predicted = _budget(_dirichlet_shares(present, self.alpha), self.target, counts - shown)
        masked = {}
        for column, (name, positions) in enumerate(maskable.items()):
            index = _rows(rows[name], positions.shape[0], present.device)
            visible, target = shown[index, column, None], predicted[index, column, None]  # (B_m, 1)
            ranks = _random_ranks(positions)  # (B_m, L_m)
            mask = positions & (ranks >= visible) & (ranks < visible + target)
            left_out = positions & (ranks >= visible + target)
            ratio = target.squeeze(1).float() / counts[index, column].clamp_min(1).float()
            mask_only = torch.ones_like(ratio, dtype=torch.bool)
            masked[name] = MaskedPositions(mask, ratio, None, mask_only, left_out)
        return masked


def _budget(shares: Tensor, total: int, available: Tensor) -> Tensor:
    """(B, M) long: ``total`` positions split by ``shares``, at most ``available`` each; what
    rounding down and exhausted modalities leave is handed to the others in turn, so a sample
    spends its whole budget whenever it has the positions."""
    split = torch.minimum(torch.floor(shares * total).long(), available)  # (B, M)
    for column in range(split.shape[1]):  # M is a handful of modalities
        left = total - split.sum(dim=1)  # (B,)
        room = available[:, column] - split[:, column]
        split[:, column] += torch.minimum(left, room)
    return split
