"""Distillation: the soft-target loss, teachers from Hugging Face directories, the student's
start from every other teacher block, and a teacher that stays frozen."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mmm.distillation import Distillation, distilled_step, even_layers, soft_target_loss
from mmm.export import export_masked_lm
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.teacher import init_student_from_teacher, load_teacher
from tests.conftest import SENTENCES


def text_module(tokenizer, depth: int, dim: int = 16, **options) -> MaskedModelingModule:
    encoder = TransformerEncoder(dim=dim, depth=depth, num_heads=2, mlp_ratio=2.0, **options)
    return MaskedModelingModule(tokenizer=tokenizer, encoder=encoder)


def text_batch(tokenizer) -> dict:
    return tokenizer.collate([tokenizer.decode_sample({"txt": s.encode()}) for s in SENTENCES[:4]])


def test_soft_target_loss_is_the_kl_by_hand():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        zs = sum(math.exp(v / t) for v in s_row)
        zt = sum(math.exp(v / t) for v in t_row)
        for s_v, t_v in zip(s_row, t_row, strict=True):
            p, q = math.exp(t_v / t) / zt, math.exp(s_v / t) / zs
            expected += p * math.log(p / q)
    expected = expected / 2 * t**2  # mean over the 2 positions, times T^2
    loss = soft_target_loss(student.bfloat16(), teacher.bfloat16(), t)
    assert loss.dtype == torch.float32
    assert soft_target_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-5)
    assert soft_target_loss(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("norm_first", [True, False], ids=["esm", "bert"])
def test_teacher_from_a_hugging_face_directory_gives_its_logits(tokenizer, tmp_path, norm_first):
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    source = text_module(tokenizer, depth=2, norm_first=norm_first, layer_norm_eps=1e-12)
    export_masked_lm(source, tmp_path / "teacher")
    student = text_module(tokenizer, depth=1)
    teacher = load_teacher(str(tmp_path / "teacher"), student)
    batch = text_batch(tokenizer)
    mask = batch["maskable"] & (torch.arange(batch["maskable"].shape[1]) % 3 == 1)  # (B, L)
    ids = batch["input_ids"].masked_fill(mask, tokenizer.spec.mask_token_id)
    shown = {"text": {**batch, "input_ids": ids}}
    with torch.no_grad():
        states, _ = teacher.encode_modalities(shown)
        ours = teacher.modalities["text"].predict(states["text"], mask)  # (N, V)
        hf = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "teacher")).eval()
        theirs = hf(input_ids=ids, attention_mask=batch["attention_mask"].long()).logits[mask]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_student_starts_from_every_other_teacher_block(tokenizer):
    assert even_layers(4, 2) == [0, 2] and even_layers(6, 3) == [0, 2, 4]
    assert even_layers(12, 6) == [0, 2, 4, 6, 8, 10] and even_layers(3, 3) == [0, 1, 2]
    torch.manual_seed(0)
    teacher, student = text_module(tokenizer, depth=4), text_module(tokenizer, depth=2)
    assert init_student_from_teacher(student, teacher) == [0, 2]
    for mine, theirs in [(0, 0), (1, 2)]:
        for a, b in zip(
            student.encoder.blocks[mine].parameters(),
            teacher.encoder.blocks[theirs].parameters(),
            strict=True,
        ):
            assert torch.equal(a, b)
    assert not torch.equal(
        student.encoder.blocks[1].mlp.fc1.weight, teacher.encoder.blocks[1].mlp.fc1.weight
    )
    assert not torch.equal(
        student.encoder.blocks[1].mlp.fc1.weight, teacher.encoder.blocks[3].mlp.fc1.weight
    )
    for a, b in zip(
        student.modalities["text"].state_dict().values(),
        teacher.modalities["text"].state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="norm_first"):
        init_student_from_teacher(text_module(tokenizer, depth=2, norm_first=False), teacher)


def test_teacher_stays_frozen_and_sees_the_students_input(tokenizer):
    """A teacher equal to the student (same weights, no dropout) predicts exactly what the
    student predicts only if it saw the same corrupted input: the KL term is then 0."""
    torch.manual_seed(0)
    student = MaskedModelingModule(
        tokenizer=tokenizer,
        encoder=TransformerEncoder(dim=16, depth=2, num_heads=2),
        distillation=Distillation(teacher="unused", hidden_weight=1.0),
    )
    teacher = copy.deepcopy(student)
    student.distillation.attach(teacher, student)
    student.train()
    assert not teacher.training
    inputs = student.modality_batch(text_batch(tokenizer))
    out, terms = distilled_step(student, inputs, student.distillation)
    assert terms["soft"].item() == pytest.approx(0.0, abs=1e-5)
    assert terms["hidden"].item() == pytest.approx(0.0, abs=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.encoder.parameters())
    assert "teacher" not in " ".join(student.state_dict())  # not saved with the student


def test_a_narrower_student_learns_through_a_projection(tokenizer):
    torch.manual_seed(0)
    teacher = text_module(tokenizer, depth=2, dim=32)
    settings = Distillation(teacher="unused", hard_weight=0.0, hidden_weight=1.0, hidden_loss="mse")
    student = MaskedModelingModule(
        tokenizer=tokenizer,
        encoder=TransformerEncoder(dim=16, depth=1, num_heads=2),
        distillation=settings,
    )
    student.distillation.attach(teacher, student)
    assert student.distillation.projection.weight.shape == (32, 16)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    inputs = student.modality_batch(text_batch(tokenizer))
    losses = []
    for _ in range(5):
        torch.manual_seed(0)
        out, _ = distilled_step(student, inputs, student.distillation)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]


def test_distillation_settings_are_checked():
    with pytest.raises(ValueError, match="temperature"):
        Distillation(teacher="t", temperature=0.0)
    with pytest.raises(ValueError, match="all 0"):
        Distillation(teacher="t", soft_weight=0.0, hard_weight=0.0)
    with pytest.raises(ValueError, match="depth 3 cannot start"):
        even_layers(2, 3)
