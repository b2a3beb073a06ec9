"""Argument checks shared by every configurable class.

A bad value in a YAML file reaches a constructor far from the user's eyes; these checks give
every refusal one wording, naming the class, the argument, what it must be and what it got.
"""

from __future__ import annotations

from collections.abc import Iterable


def require_at_least(owner: str, minimum: float, **values: float | None) -> None:
    """Raise ``ValueError`` for the first of ``values`` below ``minimum``; ``None`` (unset)
    passes.

    >>> require_at_least("Sizes", 1, depth=0)
    Traceback (most recent call last):
    ValueError: Sizes: depth must be >= 1, got 0
    """
    for name, value in values.items():
        if value is not None and value < minimum:
            raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")


def require_one_of(owner: str, name: str, value: object, choices: Iterable[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (pass a ``Literal``'s
    ``typing.get_args``, so that the check follows the type).

    >>> require_one_of("Pooler", "mode", "max", ("mean", "cls"))
    Traceback (most recent call last):
    ValueError: Pooler: mode must be 'mean' or 'cls', got 'max'
    """
    options = list(choices)
    if value not in options:
        listed = ", ".join(repr(option) for option in options[:-1])
        listed = f"{listed} or {options[-1]!r}" if listed else repr(options[-1])
        raise ValueError(f"{owner}: {name} must be {listed}, got {value!r}")
