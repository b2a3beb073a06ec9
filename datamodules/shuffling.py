"""Seeded, resumable mixing of several sources and the shuffle buffer of a training reader."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from datamodules.state import Address


def weighted_interleave(
    sources: list[Iterator[Any]], weights: list[float], rng: random.Random
) -> Iterator[Any]:
    """Draw each next item from source ``i`` with probability ``weights[i] / sum(weights)``.

    Hand-written because webdataset's ``RandomMix`` draws from the global ``random`` state,
    which is neither seeded per reader nor reproducible on resume.
    """
    indices = list(range(len(sources)))
    while True:
        [index] = rng.choices(indices, weights=weights)
        yield next(sources[index])


class ShuffleBuffer:
    """Pipeline stage: a seeded shuffle buffer whose contents can be saved and restored.

    Each incoming sample joins the buffer; once it holds ``size`` samples, a random one leaves.
    Hand-written because webdataset's ``shuffle`` keeps its buffer private: a reader rebuilt
    after a resume could not hold the same samples, so its order would differ.
    """

    def __init__(self, size: int, rng: random.Random, contents: list[dict[str, Any]]) -> None:
        self.size = size
        self.rng = rng
        self.contents = contents

    def addresses(self) -> list[Address]:
        return [sample["__address__"] for sample in self.contents]

    def __call__(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        buffer = self.contents
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.size:
                index = self.rng.randrange(len(buffer))
                buffer[index], buffer[-1] = buffer[-1], buffer[index]
                yield buffer.pop()
        while buffer:  # a finite stream (not used in training) drains the buffer
            yield buffer.pop(self.rng.randrange(len(buffer)))
