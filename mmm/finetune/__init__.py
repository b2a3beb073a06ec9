"""Fine-tuning: any mmm encoder plus a task head, trained on labelled samples.

- ``module``: ``FineTuningModule`` (full, LoRA and probe modes; the backbone from a checkpoint,
  a model section, or random);
- ``batching``: ``LabelledBatcher`` (the backbone's batches plus ``labels``);
- ``heads``: pooling (mean, attention, cls) and the task heads;
- ``layer_decay``: layer-wise learning-rate decay parameter groups;
- ``lora``: peft LoRA on the trunk's linear layers;
- ``metrics``: the torchmetrics of each task;
- ``predict``: ``mmm predict`` (a CSV of predictions for new inputs).
"""

from mmm.finetune.batching import LabelledBatcher
from mmm.finetune.module import FineTuningModule

__all__ = ["FineTuningModule", "LabelledBatcher"]
