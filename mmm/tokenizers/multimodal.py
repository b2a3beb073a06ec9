"""Samples with several modalities: each member decoded by its modality's tokenizer, batches
keyed by modality.

A shard sample's members map to modalities by extension (``wav`` -> audio, ``txt`` -> text,
``png`` -> image): each tokenizer reads its own ``sample_keys``. A batch is
``{modality: that tokenizer's collated batch}``; when some samples of the batch lack a
modality (mixed sources: a text-only corpus beside a speech + transcript corpus), its
sub-batch holds only the samples that carry it and ``rows`` (B_m,) names them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmm.tokenizers.base import SampleError, Tokenizer

#: A batch keyed by modality: modality -> that modality's tensors.
ModalityBatch = dict[str, dict[str, Tensor]]


class MultimodalBatcher:
    """Decodes and batches samples for several modalities at once (the data side of a
    ``MaskedModelingModule``; the datamodule runs it in its loader workers).

    Args:
        tokenizers: modality name -> its tokenizer.
        optional: modalities a sample may lack (it has none of their members); a sample
            lacking any other modality is an error naming it, as with one tokenizer. A sample
            must carry at least one modality.
        members: modality -> the sample member it reads instead of its tokenizer's own
            (e.g. ``{"label": "cls"}``: a text modality reading the ``cls`` member).
    """

    def __init__(
        self,
        tokenizers: dict[str, Tokenizer],
        optional: frozenset[str] = frozenset(),
        members: dict[str, str] | None = None,
    ) -> None:
        if not tokenizers:
            raise ValueError("MultimodalBatcher needs at least one modality")
        unknown = set(optional) - set(tokenizers)
        if unknown:
            raise ValueError(
                f"optional modalities {sorted(unknown)} are not among {list(tokenizers)}"
            )
        self.tokenizers = tokenizers
        self.optional = frozenset(optional)
        self.members = dict(members or {})

    @property
    def sample_keys(self) -> tuple[str, ...]:
        """Every member extension some modality reads."""
        return tuple(key for name in self.tokenizers for key in self._keys(name))

    def _keys(self, name: str) -> tuple[str, ...]:
        member = self.members.get(name)
        return (member,) if member is not None else self.tokenizers[name].sample_keys

    def modalities_reading(self, member: str) -> list[str]:
        """The modalities whose tokenizer (or configured member) reads sample member
        ``member`` (``png``, ``seq``): which modality labelled data of that member feeds."""
        return [name for name in self.tokenizers if member in self._keys(name)]

    def only(self, name: str) -> MultimodalBatcher:
        """This batcher reduced to modality ``name`` (its tokenizer and configured member):
        batches of samples that carry that modality alone."""
        members = {name: self.members[name]} if name in self.members else {}
        return MultimodalBatcher({name: self.tokenizers[name]}, members=members)

    def _view(self, name: str, sample: dict[str, Any]) -> dict[str, Any]:
        """The sample as modality ``name``'s tokenizer reads it: a configured member renamed
        to the tokenizer's own extension."""
        member = self.members.get(name)
        if member is None or member not in sample:
            return sample
        own = self.tokenizers[name].sample_keys[0]
        return {**{k: v for k, v in sample.items() if k.startswith("__")}, own: sample[member]}

    def decode_sample(self, sample: dict[str, Any]) -> dict[str, Any]:
        """modality -> its tokenizer's item, for the modalities the sample carries.

        Raises:
            SampleError: naming the sample, when a required modality's member is missing or
                unusable, or when the sample carries none of the modalities.
        """
        items = {}
        for name, tokenizer in self.tokenizers.items():
            if name in self.optional and not any(key in sample for key in self._keys(name)):
                continue
            items[name] = tokenizer.decode_sample(self._view(name, sample))
        if not items:
            members = sorted(key for key in sample if not key.startswith("__"))
            raise SampleError(
                f"carries none of the modalities {list(self.tokenizers)} (members: {members}; "
                f"read: {list(self.sample_keys)})",
                sample.get("__key__"),
                sample.get("__url__"),
            )
        return items

    def collate(self, items: list[dict[str, Any]]) -> ModalityBatch:
        """One sub-batch per modality present in ``items``, each padded by its tokenizer; a
        sub-batch of only some of the samples carries their indices as ``rows``."""
        batch = {}
        for name, tokenizer in self.tokenizers.items():
            rows = [row for row, item in enumerate(items) if name in item]
            if not rows:
                continue
            sub = tokenizer.collate([items[row][name] for row in rows])
            if len(rows) < len(items):
                sub["rows"] = torch.tensor(rows, dtype=torch.long)
            batch[name] = sub
        return batch

    def collate_stream(self, items: list[dict[str, Any]]) -> ModalityBatch:
        """Batch what the loader read. A one-modality batch takes its tokenizer's
        ``collate_stream`` (which may pack several documents into a row); several modalities
        keep one sample per row, so that pairs stay together (``collate``)."""
        if len(self.tokenizers) > 1:
            return self.collate(items)
        [(name, tokenizer)] = self.tokenizers.items()
        return {name: tokenizer.collate_stream([item[name] for item in items])}

    def for_evaluation(self) -> MultimodalBatcher:
        """Every tokenizer without random augmentation (see ``Tokenizer.for_evaluation``)."""
        evaluation = {name: t.for_evaluation() for name, t in self.tokenizers.items()}
        return MultimodalBatcher(evaluation, self.optional, self.members)

    def __repr__(self) -> str:
        return (
            f"MultimodalBatcher({self.tokenizers!r}, optional={sorted(self.optional)}, "
            f"members={self.members})"
        )


#: What a datamodule batches with: one tokenizer (flat batches), or a module's batcher
#: (batches keyed by modality).
Batcher = Tokenizer | MultimodalBatcher
