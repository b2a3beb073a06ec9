"""Seeded blocks of code that leave the surrounding random state untouched.

Evaluation masks and training-time augmentation must be functions of what they apply to (the
batch number, the sample's place in the stream), not of how much randomness ran before: then
a held-out number repeats, and a resumed data stream augments each sample as the
uninterrupted one did.
"""

from __future__ import annotations

import hashlib
import os
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
            # the CPU generator alone unless a GPU is named: torch.manual_seed would also seed
            # CUDA, outside what fork_rng restores, through a lazy call that formats the stack
            # (milliseconds per sample in the loader workers)
            torch.random.default_generator.manual_seed(seed)
            if devices:
                torch.cuda.manual_seed_all(seed)
            random.seed(seed)
            yield
    finally:
        random.setstate(python_state)


def step_seed(seed: int, step: int, micro_batch: int = 0, rank: int = 0) -> int:
    """A 63-bit seed for one training batch: a hash of the run's ``seed``, the optimizer
    ``step``, the ``micro_batch`` within a gradient-accumulation window and the DDP ``rank``.
    Neighbouring steps and ranks get unrelated seeds (a hash, not ``seed + step``, which would
    repeat one run's masks in another run whose seed is one higher)."""
    key = f"{seed}:{step}:{micro_batch}:{rank}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def run_seed() -> int:
    """The seed of this run: ``seed_everything``'s (``PL_GLOBAL_SEED``, which LightningCLI's
    ``seed_everything`` option sets), or 0 when nothing seeded the run."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))
