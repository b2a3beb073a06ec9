"""Seeded blocks of code that leave the surrounding random state untouched.

Evaluation masks and training-time augmentation must be functions of what they apply to (the
batch number, the sample's place in the stream), not of how much randomness ran before: then
a held-out number repeats, and a resumed data stream augments each sample as the
uninterrupted one did.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run a block with torch's RNG (CPU, and ``device`` when it is a GPU) and Python's
    ``random`` seeded with ``seed``; the previous states come back afterwards."""
    devices = [device] if device is not None and device.type == "cuda" else []
    python_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            random.seed(seed)
            yield
    finally:
        random.setstate(python_state)
