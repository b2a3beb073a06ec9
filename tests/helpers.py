"""Helpers shared by the modality tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mmm.module import MaskedModelingModule


def overfit_loss(
    module: MaskedModelingModule, batch: dict[str, torch.Tensor], steps: int = 150, lr: float = 3e-3
) -> float:
    """Train on one batch with the same mask every step (reseeded), return the final loss in
    eval mode on that mask: a model that can learn drives it to near zero."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr)
    for _ in range(steps):
        torch.manual_seed(0)
        loss = module.forward_masked(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(0)
    return module.eval().forward_masked(batch).loss.item()


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread for the block: tiny matrices gain nothing from more, and on a busy
    machine waiting threads cost far more (a 100-step loop took 90 s on two threads, 6 s on
    one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
