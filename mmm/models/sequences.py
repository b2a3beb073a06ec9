"""Packing and unpacking of the trunk's sequence: the one place where positions move.

Every modality embeds its own positions, (B_m, L_m, D) for the B_m samples of the batch that
carry it. The trunk sees, per sample, one sequence: the concatenation of the sample's
modality segments, keeping only the positions the encoder may see (all real positions of a
BERT-style modality, the visible ones of an MAE-style one), packed to the front and padded to
the longest sample. ``pack_segments`` builds that sequence and ``unpack_segments`` puts the
trunk's states back where they came from, so that every head reads its modality's positions
in their original layout. This is MAE's ``random_masking`` / ``ids_restore`` pair and 4M's
concatenation of modality segments, generalized to several modalities and to samples that
lack some of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def visible_indices(visible: Tensor) -> tuple[Tensor, Tensor]:
    """Pack the visible positions of each sample to the front.

    Args:
        visible: (B, L) bool.

    Returns:
        ``ids_keep`` (B, V) long, the positions to gather, visible ones first in their original
        order, and ``keep_valid`` (B, V) bool, ``False`` where a row has fewer than ``V`` visible
        positions (padding). ``V`` is the largest visible count in the batch.
    """
    order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)  # (B, L) visible first
    counts = visible.sum(dim=1)  # (B,)
    width = int(counts.max().item()) if counts.numel() else 0
    ids_keep = order[:, :width]  # (B, V)
    keep_valid = torch.arange(width, device=visible.device) < counts.unsqueeze(1)  # (B, V)
    return ids_keep, keep_valid


def gather_positions(x: Tensor, ids: Tensor) -> Tensor:
    """Select positions ``ids`` (B, K) of ``x`` (B, L, D) -> (B, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass(frozen=True)
class Segment:
    """One modality's embedded positions and which of them the encoder sees.

    Attributes:
        x: (B_m, L_m, D) embeddings of every position.
        keep: (B_m, L_m) bool, positions passed to the encoder.
        rows: (B_m,) long, the sample of the batch each row belongs to, or ``None`` when the
            modality's rows are the batch's samples in order (every sample carries it).
        documents: (B_m, L_m) long, the packed document of each position (-1 at padding),
            when rows hold several documents that must not attend to each other
            (``TextTokenizer(pack=True, attention="document")``); one-modality batches only.
    """

    x: Tensor
    keep: Tensor
    rows: Tensor | None = None
    documents: Tensor | None = None


@dataclass(frozen=True)
class TrunkLayout:
    """Where each trunk position came from, to route its state back.

    Attributes:
        ids_keep: (B, T) long, position of each trunk row in the concatenated (B, S) sequence of
            all segments, or ``None`` when the kept positions are the first T of every row
            (no gather needed; the tail was cut).
        padding_mask: (B, T) bool, ``True`` at real trunk positions, or ``None`` when none is
            padding (lets attention take its unmasked, fastest kernel).
        spans: modality -> (start, length) of its segment in the concatenated sequence.
        rows: modality -> its segment's ``rows`` (``None``: all samples, in order).
        batch_size: B, the number of samples.
        document_ids: (B, T) long packed document of each trunk position (-1 at padding), or
            ``None`` when attention may cross the whole row.
    """

    ids_keep: Tensor | None
    padding_mask: Tensor | None
    spans: dict[str, tuple[int, int]]
    rows: dict[str, Tensor | None]
    batch_size: int
    document_ids: Tensor | None = None


def _spread(values: Tensor, rows: Tensor | None, batch_size: int) -> Tensor:
    """A segment tensor (B_m, L_m, ...) laid out over all B samples, zeros for the rows that
    lack the modality."""
    if rows is None:
        return values
    spread = values.new_zeros((batch_size, *values.shape[1:]))
    return spread.index_copy(0, rows, values)


def pack_segments(segments: dict[str, Segment], batch_size: int) -> tuple[Tensor, TrunkLayout]:
    """One trunk sequence per sample from the kept positions of its segments.

    Returns:
        ``x`` (B, T, D), the kept positions of each sample first, in segment order, then
        padding; and the layout that ``unpack_segments`` needs. T is the largest number of
        kept positions of a sample.
    """
    parts, keeps, spans, rows, start = [], [], {}, {}, 0
    for name, segment in segments.items():
        length = segment.x.shape[1]
        parts.append(_spread(segment.x, segment.rows, batch_size))  # (B, L_m, D)
        keeps.append(_spread(segment.keep, segment.rows, batch_size))  # (B, L_m)
        spans[name], rows[name] = (start, length), segment.rows
        start += length
    x = torch.cat(parts, dim=1)  # (B, S, D)
    keep = torch.cat(keeps, dim=1)  # (B, S)
    documents = _documents(segments)  # (B, S) or None
    if bool(keep.all()):
        return x, TrunkLayout(None, None, spans, rows, batch_size, documents)
    counts = keep.sum(dim=1, keepdim=True)  # (B, 1)
    width = int(counts.max())
    prefix = torch.arange(width, device=keep.device) < counts  # (B, T)
    if bool((keep[:, :width] == prefix).all()) and not bool(keep[:, width:].any()):
        # Kept positions already lead every row (padded text of one modality): cut the
        # padding tail instead of sorting, gathering and scattering back.
        padding_mask = None if bool(prefix.all()) else prefix
        cut = None if documents is None else documents[:, :width]
        layout = TrunkLayout(None, padding_mask, spans, rows, batch_size, cut)
        return x[:, :width], layout  # (B, T, D)
    ids_keep, valid = visible_indices(keep)  # (B, T)
    padding_mask = None if bool(valid.all()) else valid
    if documents is not None:
        documents = torch.gather(documents, 1, ids_keep).masked_fill(~valid, -1)  # (B, T)
    layout = TrunkLayout(ids_keep, padding_mask, spans, rows, batch_size, documents)
    return gather_positions(x, ids_keep), layout  # (B, T, D)


def _documents(segments: dict[str, Segment]) -> Tensor | None:
    """The document ids of a one-modality packed batch, or ``None``."""
    packed = [segment for segment in segments.values() if segment.documents is not None]
    if not packed:
        return None
    if len(segments) > 1 or packed[0].rows is not None:
        raise ValueError(
            "packed documents (attention='document') are for one-modality batches; a batch of "
            f"several modalities ({list(segments)}) keeps one sample per row"
        )
    return packed[0].documents


def unpack_segments(hidden: Tensor, layout: TrunkLayout) -> dict[str, Tensor]:
    """The trunk's states routed back to each modality's layout.

    Args:
        hidden: (B, T, D) trunk states.

    Returns:
        modality -> (B_m, L_m, D) states, zeros at the positions the encoder did not see.
    """
    length = sum(span for _, span in layout.spans.values())
    if layout.padding_mask is not None:  # padding rows land on unseen positions as zeros
        hidden = hidden * layout.padding_mask.unsqueeze(-1).to(hidden.dtype)
    if layout.ids_keep is not None:
        index = layout.ids_keep.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (B, T, D)
        # A row's ids are distinct, so the scatter writes each kept position exactly once.
        full = hidden.new_zeros(layout.batch_size, length, hidden.shape[-1]).scatter(
            1, index, hidden
        )  # (B, S, D)
    else:  # kept positions lead each row: pad the cut tail back with zeros
        full = torch.nn.functional.pad(hidden, (0, 0, 0, length - hidden.shape[1]))  # (B, S, D)
    states = {}
    for name, (start, size) in layout.spans.items():
        segment = full[:, start : start + size]  # (B, L_m, D)
        rows = layout.rows[name]
        states[name] = segment if rows is None else segment.index_select(0, rows)
    return states


def context_of(
    name: str,
    states: dict[str, Tensor],
    seen: dict[str, Tensor],
    rows: dict[str, Tensor | None],
    batch_size: int,
) -> tuple[Tensor, Tensor] | None:
    """The states the encoder produced for the other modalities of the samples that carry
    modality ``name``: what an MAE decoder needs beside its own visible positions to predict a
    modality hidden whole (an image from its caption).

    Returns:
        (B_m, T', D) states, packed per sample as ``pack_segments`` does, and (B_m, T') bool
        real context positions (none for a sample with no other modality); ``None`` when the
        batch holds no other modality.
    """
    others = {k: Segment(states[k], seen[k], rows[k]) for k in states if k != name}
    if not others:
        return None
    x, layout = pack_segments(others, batch_size)  # (B, T', D)
    real = layout.padding_mask  # None: every packed position is real
    if real is None:
        real = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    own = rows[name]
    return (x, real) if own is None else (x[own], real[own])
