"""Multivariate time series: ``.ts`` (the UCR/UEA archives' format), ``.npy`` and ``.csv``
files -> one ``npy`` member per series, a float32 array (channels, time steps).

``.ts`` files are read with aeon's loader (``pip install mmm[timeseries]``); ``.npy`` and
``.csv`` need nothing beyond numpy. A ``.npy`` file holds one series (T,), (C, T), or a set of
series (N, C, T); a ``.csv`` file holds one series, one column per channel and one row per
time step (a header row of names is skipped).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmm.data.formats.base import SKIPPED, Sample, register_source, sample_key
from mmm.data.members import SERIES_MEMBER
from mmm.optional import require

#: The member that holds a series in a shard sample.
TIMESERIES_EXTENSIONS = (".ts", ".npy", ".csv")


def encode_series(values: np.ndarray) -> bytes:
    """A series as the bytes of its ``npy`` member: float32 (channels, time steps)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(as_channels_first(values), dtype=np.float32))
    return buffer.getvalue()


def decode_series(data: bytes) -> np.ndarray:
    """The float32 (channels, time steps) array of an ``npy`` member.

    Raises:
        ValueError: when the bytes are no ``.npy`` array of rank 1 or 2.
    """
    values = np.load(io.BytesIO(data), allow_pickle=False)
    return as_channels_first(values).astype(np.float32, copy=False)


def as_channels_first(values: np.ndarray) -> np.ndarray:
    """(T,) -> (1, T); (C, T) unchanged; any other rank is an error."""
    if values.ndim == 1:
        return values[None, :]
    if values.ndim != 2:
        raise ValueError(f"a series must be (time,) or (channels, time), got shape {values.shape}")
    return values


def read_ts_file(path: str | Path) -> tuple[list[np.ndarray], list[str]]:
    """The series of a UCR/UEA ``.ts`` file, each (channels, time steps) float64 (series of
    unequal length keep their own length), and their class labels as strings."""
    datasets = require(
        "aeon.datasets",
        feature="Reading .ts files",
        fix="Install it with: pip install mmm[timeseries]",
    )
    values, labels = datasets.load_from_ts_file(str(path))
    return [np.asarray(series, dtype=np.float64) for series in values], [str(y) for y in labels]


def read_series_file(path: str | Path) -> list[np.ndarray]:
    """The series of one ``.ts``, ``.npy`` or ``.csv`` file, each (channels, time steps).

    Raises:
        ValueError: naming the file when its suffix is none of these or its array has the
            wrong rank.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ts":
        return read_ts_file(path)[0]
    if suffix == ".npy":
        values = np.load(path, allow_pickle=False)
        if values.ndim == 3:  # (N, C, T): a set of series
            return list(values)
        try:
            return [as_channels_first(values)]
        except ValueError as error:
            raise ValueError(f"{path}: {error} or (series, channels, time)") from error
    if suffix == ".csv":
        text = path.read_text(encoding="utf-8")
        first = text.splitlines()[0] if text.strip() else ""
        skip = 0 if all(_is_number(cell) for cell in first.split(",")) else 1
        table = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=skip, ndmin=2)  # (T, C)
        return [table.T]
    raise ValueError(f"{path}: not a time series file (suffixes: {TIMESERIES_EXTENSIONS})")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@register_source("timeseries", per_file=True, extensions=TIMESERIES_EXTENSIONS)
def timeseries_samples(paths: list[str], root: str | None = None) -> Iterator[Sample]:
    """``npy`` samples of the series in ``.ts``/``.npy``/``.csv`` files, keyed
    ``<file stem>-<index>``. A series with a missing value (NaN) or inf is left out and
    counted (a skip note naming the file and series)."""
    for path in paths:
        stem = Path(path).relative_to(root).with_suffix("") if root else Path(path).stem
        for index, series in enumerate(read_series_file(path)):
            source = f"{path}: series {index}"
            bad = int((~np.isfinite(series)).sum())
            if bad:
                yield {SKIPPED: f"{source} holds {bad} missing or infinite values"}
                continue
            yield {
                "__key__": sample_key(f"{stem}-{index:06d}"),
                "__source__": source,
                SERIES_MEMBER: encode_series(series),
            }
