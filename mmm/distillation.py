"""Knowledge distillation (DistilBERT): a student learns from a frozen teacher's distribution
over the vocabulary at the hidden positions, beside or instead of the hard labels.

The student is a ``MaskedModelingModule`` whose ``distillation`` setting names the teacher;
``mmm.teacher.apply_teacher`` (called by ``mmm fit`` before training, as ``init_from`` is)
loads it and attaches it. A training step then

1. draws the student's masks, and shows the teacher the student's very input: the teacher
   pass runs first in a forked RNG, drawing BERT's corruption as the student's pass then
   draws it (``corrupted_batch``);
2. scores the teacher (no gradients, eval mode) on the hidden positions of every discrete
   modality: its logits, and its last hidden states when the alignment term is on;
3. adds to the student's loss ``soft_weight`` x the KL divergence between the teacher's and
   the student's distributions at ``temperature``, times ``temperature**2`` (Hinton et al.:
   the soft gradients shrink as 1/T², the factor keeps their scale), and ``hidden_weight`` x
   the alignment of the student's last hidden states with the teacher's (cosine distance, or
   MSE, after a learned projection when the widths differ) on the real positions; the
   student's own masked-token loss counts ``hard_weight`` times (0: instead of it).

Validation scores the student alone, as any masked model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmm.masking import MaskedPositions

if TYPE_CHECKING:
    from mmm.module import MaskedModelingModule, MaskedOutput
    from mmm.tokenizers.multimodal import ModalityBatch


@dataclass
class Distillation:
    """What a student learns from its teacher, and how much each term counts."""

    teacher: str
    """An mmm checkpoint (``.ckpt``) or a local Hugging Face masked-LM directory (the
    ``BertForMaskedLM``/``EsmForMaskedLM`` layout ``mmm export`` writes) trained with the
    student's tokenizer."""
    temperature: float = 2.0
    """Softmax temperature of both distributions in the KL term."""
    soft_weight: float = 1.0
    """Weight of the KL term (already scaled by ``temperature**2``)."""
    hard_weight: float = 1.0
    """Weight of the student's own masked-token loss on the true tokens (0: KL only)."""
    hidden_weight: float = 0.0
    """Weight of the hidden-state alignment term (0: off)."""
    hidden_loss: Literal["cosine", "mse"] = "cosine"
    """Alignment of last hidden states: cosine distance (DistilBERT) or mean squared error."""
    init_from_teacher: bool = True
    """Start the student from the teacher when the widths match: its embedder, head, final
    norm and every other trunk block (DistilBERT), chosen evenly when depths differ."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"Distillation: temperature must be > 0, got {self.temperature}")
        weights = {
            "soft_weight": self.soft_weight,
            "hard_weight": self.hard_weight,
            "hidden_weight": self.hidden_weight,
        }
        negative = {name: value for name, value in weights.items() if value < 0}
        if negative:
            raise ValueError(f"Distillation: weights must be >= 0, got {negative}")
        if not any(weights.values()):
            raise ValueError("Distillation: soft_weight, hard_weight and hidden_weight are all 0")
        if self.hidden_loss not in ("cosine", "mse"):
            raise ValueError(
                f"Distillation: hidden_loss must be 'cosine' or 'mse', got {self.hidden_loss!r}"
            )


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) of the softened distributions, summed over the vocabulary,
    averaged over positions, times ``temperature**2``; computed in fp32 (also under bf16
    autocast, where the logits arrive in bf16).

    Args:
        student_logits: (N, V), with gradients.
        teacher_logits: (N, V).
    """
    if student_logits.shape[0] == 0:
        return student_logits.float().sum()  # no hidden position: 0, still in the graph
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, V)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (N, V)
    kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def hidden_alignment(
    student: Tensor, teacher: Tensor, real: Tensor, kind: Literal["cosine", "mse"]
) -> Tensor:
    """Mean alignment loss of the student's last hidden states with the teacher's at the
    ``real`` positions, in fp32: ``1 - cos`` (DistilBERT's cosine embedding loss with every
    pair a positive one), or the squared error averaged over features.

    Args:
        student: (B, L, D_t), already projected to the teacher's width.
        teacher: (B, L, D_t).
        real: (B, L) bool.
    """
    s, t = student[real].float(), teacher[real].float()  # (M, D_t)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
    return F.mse_loss(s, t)


def even_layers(teacher_depth: int, student_depth: int) -> list[int]:
    """The teacher blocks a shallower student starts from, spread evenly from the first:
    every other one when the student has half the depth (DistilBERT: 0, 2, 4, ...)."""
    if not 0 < student_depth <= teacher_depth:
        raise ValueError(
            f"a student of depth {student_depth} cannot start from a teacher of depth "
            f"{teacher_depth} (it needs 0 < student depth <= teacher depth)"
        )
    return [i * teacher_depth // student_depth for i in range(student_depth)]


def distilled_modalities(student: MaskedModelingModule, teacher: MaskedModelingModule) -> list[str]:
    """The student's discrete modalities, each of which the teacher must have with the same
    tokenizer: their distributions are over the same vocabulary only then.

    Raises:
        ValueError: naming the modality the teacher lacks or tokenizes otherwise.
    """
    names = [name for name, tokenizer in student.tokenizers.items() if tokenizer.discrete]
    if not names:
        raise ValueError(
            "Distillation: the student has no discrete modality (text, protein, SMILES) to "
            f"distil; its modalities are {list(student.tokenizers)}"
        )
    for name in names:
        theirs = teacher.tokenizers.get(name)
        if theirs is None:
            raise ValueError(
                f"Distillation: the teacher has no {name!r} modality (it has "
                f"{list(teacher.tokenizers)})"
            )
        if theirs.fingerprint() != student.tokenizers[name].fingerprint():
            raise ValueError(
                f"Distillation: the teacher's {name} tokenizer (fingerprint "
                f"{theirs.fingerprint()}) is not the student's ({student.tokenizers[name].fingerprint()}): "
                "teacher and student must share the vocabulary"
            )
    return names


class TeacherPass:
    """What the teacher says about one batch: logits at each modality's hidden positions
    ((N, V) in row-major order of the mask) and last hidden states ((B, L, D_t))."""

    def __init__(self, logits: dict[str, Tensor], states: dict[str, Tensor]) -> None:
        self.logits, self.states = logits, states


@torch.no_grad()
def teacher_pass(
    teacher: MaskedModelingModule,
    inputs: ModalityBatch,
    masked: dict[str, MaskedPositions],
    names: list[str],
) -> TeacherPass:
    """The teacher's logits and states on the student's corrupted input. It runs in a forked
    RNG with the student's modalities' corruption drawn first, so the student's pass that
    follows draws the same replacement tokens."""
    shown = {name: sub for name, sub in inputs.items() if name in names}
    states, seen = teacher.encode_modalities(shown)  # inputs already corrupted: embedded as is
    logits = {
        name: teacher.modalities[name].predict(
            states[name], masked[name].mask, seen[name], shown[name]["attention_mask"]
        )
        for name in names
    }
    return TeacherPass(logits, states)


def corrupted_batch(
    student: MaskedModelingModule, inputs: ModalityBatch, masked: dict[str, MaskedPositions]
) -> ModalityBatch:
    """``inputs`` with every discrete modality's ids corrupted as the student's own pass
    corrupts them next (its modalities in batch order, each drawing from the RNG in turn);
    call it in a forked RNG so that the student's pass draws the same."""
    corrupted = {}
    for name, sub in inputs.items():
        if student.tokenizers[name].discrete:
            sub = {
                **sub,
                "input_ids": student.modalities[name].corrupt(sub["input_ids"], masked[name]),
            }
        corrupted[name] = sub
    return corrupted


class DistillationTerms(nn.Module):
    """The student's side of distillation: the settings, the frozen teacher (held outside
    the module tree: it is neither trained, saved in the student's checkpoint, nor switched
    to train mode with it) and the projection of the student's states to the teacher's width
    (trained with the student, saved in its checkpoint)."""

    def __init__(self, settings: Distillation) -> None:
        super().__init__()
        self.settings = settings
        self.projection: nn.Linear | None = None
        self._teacher: list[MaskedModelingModule] = []  # a list: not a registered submodule
        self.names: list[str] = []

    @property
    def teacher(self) -> MaskedModelingModule | None:
        return self._teacher[0] if self._teacher else None

    def attach(self, teacher: MaskedModelingModule, student: MaskedModelingModule) -> None:
        """Hold ``teacher`` frozen in eval mode; add the projection the alignment term needs
        when the widths differ."""
        self.names = distilled_modalities(student, teacher)
        teacher.eval().requires_grad_(False)
        self._teacher[:] = [teacher]
        if self.settings.hidden_weight > 0:
            self.ensure_projection(student.encoder.dim, teacher.encoder.dim)

    def ensure_projection(self, student_dim: int, teacher_dim: int) -> None:
        """The student -> teacher width projection (none when the widths match)."""
        if student_dim == teacher_dim:
            return
        if self.projection is None:
            self.projection = nn.Linear(student_dim, teacher_dim)
        elif (self.projection.in_features, self.projection.out_features) != (
            student_dim,
            teacher_dim,
        ):
            raise ValueError(
                f"Distillation: the checkpoint's projection maps {self.projection.in_features} "
                f"to {self.projection.out_features} features, but the student is {student_dim} "
                f"wide and the teacher {teacher_dim}"
            )

    def add_to(
        self,
        student: MaskedModelingModule,
        inputs: ModalityBatch,
        masked: dict[str, MaskedPositions],
        taught: TeacherPass,
        out: MaskedOutput,
    ) -> dict[str, Tensor]:
        """Replace ``out.loss`` by the weighted sum of the hard loss, the KL term and the
        alignment term; returns each term (detached) by name, for logging."""
        settings = self.settings
        soft = sum(
            soft_target_loss(out[name].pred, taught.logits[name], settings.temperature)
            for name in self.names
        )
        terms = {"hard": out.loss, "soft": soft}
        if settings.hidden_weight > 0:
            terms["hidden"] = sum(
                hidden_alignment(
                    self._projected(out.states[name]),
                    taught.states[name],
                    inputs[name]["attention_mask"],
                    settings.hidden_loss,
                )
                for name in self.names
            )
        out.loss = (
            settings.hard_weight * out.loss
            + settings.soft_weight * soft
            + settings.hidden_weight * terms.get("hidden", 0.0)
        )
        return {name: value.detach() for name, value in terms.items()}

    def _projected(self, states: Tensor) -> Tensor:
        return states if self.projection is None else self.projection(states)  # (B, L, D_t)


def distilled_step(
    student: MaskedModelingModule, inputs: ModalityBatch, terms: DistillationTerms
) -> tuple[MaskedOutput, dict[str, Tensor]]:
    """One training pass with distillation: the student's masks, the teacher on the
    student's corrupted input, the student's pass, and the combined loss."""
    teacher = terms.teacher
    if teacher is None:
        raise ValueError(
            f"Distillation: the teacher {terms.settings.teacher!r} was never attached; mmm fit "
            "attaches it, in Python call mmm.teacher.apply_teacher(module) first"
        )
    teacher.to(student.device)
    masked = student.choose_masks(inputs)
    devices = [student.device] if student.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        taught = teacher_pass(
            teacher, corrupted_batch(student, inputs, masked), masked, terms.names
        )
    out = student.forward_masked(inputs, masked)
    logged = terms.add_to(student, inputs, masked, taught, out)
    return out, logged
