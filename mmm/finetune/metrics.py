"""The held-out metrics of each task, from ``torchmetrics`` (synchronized across DDP ranks):

- ``classification``: accuracy, macro-F1, macro AUROC (one-vs-rest);
- ``multilabel``: accuracy (per label), macro-F1, macro AUROC;
- ``regression``: R², RMSE, Spearman's rank correlation;
- ``token_classification``: token accuracy and macro-F1 over labelled units.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelF1Score,
)
from torchmetrics.regression import MeanSquaredError, R2Score, SpearmanCorrCoef

from mmm.finetune.batching import IGNORE, Task

#: The metric a config monitors for the best checkpoint, and whether higher is better.
DEFAULT_MONITOR: dict[str, tuple[str, str]] = {
    "classification": ("val/accuracy", "max"),
    "multilabel": ("val/f1_macro", "max"),
    "regression": ("val/rmse", "min"),
    "token_classification": ("val/token_accuracy", "max"),
}


def task_metrics(task: Task, num_labels: int, prefix: str) -> MetricCollection:
    """The metrics of ``task`` with ``num_labels`` classes (or regression targets), named
    ``<prefix><metric>`` (``val/accuracy``)."""
    if task == "classification":
        metrics = {
            "accuracy": MulticlassAccuracy(num_labels, average="micro"),
            "f1_macro": MulticlassF1Score(num_labels, average="macro"),
            "auroc": MulticlassAUROC(num_labels, average="macro"),
        }
    elif task == "multilabel":
        metrics = {
            "accuracy": MultilabelAccuracy(num_labels, average="micro"),
            "f1_macro": MultilabelF1Score(num_labels, average="macro"),
            "auroc": MultilabelAUROC(num_labels, average="macro"),
        }
    elif task == "regression":
        metrics = {
            "r2": R2Score(multioutput="uniform_average"),
            "rmse": MeanSquaredError(squared=False),
            "spearman": SpearmanCorrCoef(num_outputs=num_labels),
        }
    else:
        metrics = {
            "token_accuracy": MulticlassAccuracy(num_labels, average="micro"),
            "token_f1_macro": MulticlassF1Score(num_labels, average="macro"),
        }
    return MetricCollection(metrics, prefix=prefix)


def metric_inputs(task: Task, outputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Predictions and targets in the form ``task_metrics`` takes: class probabilities and
    indices, label probabilities and 0/1 targets, values (squeezed for one target), or the
    (N, C) probabilities of the labelled units only."""
    if task == "classification":
        return outputs.float().softmax(dim=-1), labels
    if task == "multilabel":
        return outputs.float().sigmoid(), labels.long()
    if task == "regression":
        values = outputs.float()
        return (values.squeeze(-1), labels) if labels.ndim == 1 else (values, labels)
    labelled = labels != IGNORE  # (B_m, L_m)
    return outputs[labelled].float().softmax(dim=-1), labels[labelled]


def is_updated(metrics: MetricCollection) -> bool:
    """Whether ``metrics`` saw a batch since their last reset."""
    return any(metric.update_called for metric in metrics.values())


@torch.no_grad()
def computed(metrics: MetricCollection) -> dict[str, Tensor]:
    """The metrics' epoch values, then reset."""
    values = metrics.compute()
    metrics.reset()
    return values
