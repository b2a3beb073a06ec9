"""The objective: loss only on hidden positions, learning, checkpoints, encoders."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules import ShardDataModule
from mmm.masking import SpanMasking, WholeWordMasking
from mmm.models.encoder import HFEncoder, TransformerEncoder
from mmm.module import MaskedModelingModule
from tests.conftest import SENTENCES
from tests.helpers import overfit_loss


def _batch(tokenizer, n: int = 8):
    return tokenizer.collate(SENTENCES[:n])


def test_loss_ignores_unmasked_positions(tiny_module, tokenizer):
    """Changing logits at visible positions leaves the loss unchanged; at hidden ones it moves."""
    torch.manual_seed(0)
    batch = _batch(tokenizer)
    out = tiny_module.forward_masked(batch)
    vocab = tokenizer.spec.vocab_size
    full_logits = torch.randn(*batch["input_ids"].shape, vocab)  # (B, L, V)
    loss = tiny_module.modalities["text"].loss_and_metrics(
        full_logits[out["text"].mask], out["text"].target
    )[0]
    perturbed = full_logits.clone()
    perturbed[~out["text"].mask] += 100.0 * torch.randn_like(perturbed[~out["text"].mask])
    same = tiny_module.modalities["text"].loss_and_metrics(
        perturbed[out["text"].mask], out["text"].target
    )[0]
    assert torch.equal(loss, same)
    perturbed[out["text"].mask] += 5.0 * torch.randn_like(perturbed[out["text"].mask])
    moved = tiny_module.modalities["text"].loss_and_metrics(
        perturbed[out["text"].mask], out["text"].target
    )[0]
    assert not torch.isclose(loss, moved)


def test_head_runs_on_hidden_positions_only(tiny_module, tokenizer):
    torch.manual_seed(0)
    out = tiny_module.forward_masked(_batch(tokenizer))
    assert out["text"].pred.shape == (int(out["text"].mask.sum()), tokenizer.spec.vocab_size)
    assert not (out["text"].mask & ~_batch(tokenizer)["maskable"]).any()


def test_tiny_model_overfits_one_batch(tiny_module, tokenizer):
    """Same batch, same mask (reseeded each step): the loss must go to near zero."""
    batch = _batch(tokenizer)
    final = overfit_loss(tiny_module, batch)
    assert final < 0.05, f"loss after 150 steps: {final:.3f}"


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    settings = {
        "max_steps": 6,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "limit_val_batches": 1,
        "val_check_interval": 3,
        "check_val_every_n_epoch": None,
        "accelerator": "cpu",
    }
    settings.update(kwargs)
    return L.Trainer(**settings)


def test_library_use_trains_and_resumes_from_checkpoint(tmp_path, tokenizer, corpus_dir):
    """The README's library example: build parts in Python, fit, resume with ckpt_path."""
    L.seed_everything(0)
    module = MaskedModelingModule(
        tokenizer=tokenizer,
        encoder=TransformerEncoder(dim=32, depth=1, num_heads=2),
        masking=SpanMasking(ratio=0.2),
    )
    data = ShardDataModule(
        train_shards=str(corpus_dir / "train-*.tar"),
        val_shards=str(corpus_dir / "val-{000000..000000}.tar"),
        batcher=tokenizer,
        batch_size=8,
        num_workers=0,
    )
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 6
    assert {"val/loss", "val/text/masked_accuracy", "val/text/perplexity"} <= set(
        trainer.callback_metrics
    )
    checkpoint = tmp_path / "last.ckpt"
    trainer.save_checkpoint(checkpoint)

    resumed = MaskedModelingModule(
        tokenizer=tokenizer, encoder=TransformerEncoder(dim=32, depth=1, num_heads=2)
    )
    trainer = _trainer(tmp_path, max_steps=9)
    trainer.fit(resumed, datamodule=data, ckpt_path=checkpoint)
    assert trainer.global_step == 9
    for name, value in module.state_dict().items():  # resumed from the saved weights
        assert value.shape == resumed.state_dict()[name].shape


def test_whole_word_masking_trains(tokenizer):
    module = MaskedModelingModule(
        tokenizer=tokenizer,
        encoder=TransformerEncoder(dim=32, depth=1, num_heads=2),
        masking=WholeWordMasking(ratio=0.3),
    )
    batch = _batch(tokenizer)
    out = module.forward_masked(batch)
    words = batch["word_ids"]
    for row in range(words.shape[0]):
        for word in words[row][out["text"].mask[row]].unique():
            assert out["text"].mask[row][words[row] == word].all()
    out.loss.backward()


def test_hugging_face_encoder_behind_the_same_interface(tokenizer):
    encoder = HFEncoder(
        config={
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 8,
        }
    )
    module = MaskedModelingModule(tokenizer=tokenizer, encoder=encoder)
    out = module.forward_masked(_batch(tokenizer))
    assert out.loss.isfinite()
    out.loss.backward()
    assert encoder.model.encoder.layer[0].attention.self.query.weight.grad is not None


def test_padding_does_not_change_encodings(tiny_module, tokenizer):
    """A sequence encodes the same alone and beside a longer one (the padding mask works)."""
    tiny_module.eval()
    alone = tokenizer.collate([SENTENCES[0]])
    padded = tokenizer.collate([SENTENCES[0], SENTENCES[1] + " " + SENTENCES[2]])
    length = int(alone["attention_mask"].sum())
    with torch.no_grad():
        a = tiny_module(alone)["text"][0, :length]
        b = tiny_module(padded)["text"][0, :length]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_mixed_precision_trains_text(tmp_path, tokenizer, corpus_data):
    """`--trainer.precision bf16-mixed` works for the discrete path (CPU autocast here; the
    same code path runs under CUDA autocast)."""
    module = MaskedModelingModule(
        tokenizer=tokenizer, encoder=TransformerEncoder(dim=32, depth=1, num_heads=2)
    )
    data = corpus_data
    trainer = _trainer(tmp_path, max_steps=3, precision="bf16-mixed")
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def _shown_at_hidden(module: MaskedModelingModule, run_pass) -> torch.Tensor:
    """The token ids the embedder received at the hidden positions during ``run_pass()``."""
    text = module.modalities["text"]
    masks, ids = [], []
    embed, embedder = text.embed, text.embedder.forward

    def recorded_embed(batch, masked):
        masks.append(masked)
        return embed(batch, masked)

    def recorded_embedder(input_ids, *rest):
        ids.append(input_ids)
        return embedder(input_ids, *rest)

    text.embed, text.embedder.forward = recorded_embed, recorded_embedder
    run_pass()
    return torch.cat([shown[masked.mask] for shown, masked in zip(ids, masks, strict=True)])


@pytest.mark.parametrize("mask_only", [True, False])
def test_held_out_batches_show_hidden_tokens_as_the_mask_token_only(tokenizer, mask_only):
    """BERT's 80/10/10 leaves 10% of hidden tokens unchanged, which a model scores by
    copying: the held-out accuracy counts only the mask token unless asked otherwise.
    Training keeps BERT's corruption."""
    encoder = TransformerEncoder(dim=32, depth=1, num_heads=2)
    module = MaskedModelingModule(
        tokenizer=tokenizer, encoder=encoder, evaluation_mask_only=mask_only
    )
    module.maskings["text"].ratio = 0.5
    batch, mask_id = _batch(tokenizer), tokenizer.spec.mask_token_id
    held_out = _shown_at_hidden(module, lambda: module.validation_step(batch, 0))
    assert held_out.numel() > 20
    assert bool((held_out == mask_id).all()) is mask_only
    torch.manual_seed(0)
    trained = _shown_at_hidden(module, lambda: module.forward_masked(batch))
    assert 0 < int((trained != mask_id).sum()) < trained.numel() // 2


@pytest.mark.parametrize("max_steps", [50, None], ids=["cosine", "constant"])
def test_warmup_schedule_matches_transformers(max_steps):
    """mmm's schedule (written to keep transformers.trainer_utils out of the import path)
    gives transformers' warm-up + cosine / constant factors at every step."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    from mmm.module import warmup_schedule

    ours = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    mine = warmup_schedule(ours, 10, max_steps)
    if max_steps:
        reference = get_cosine_schedule_with_warmup(theirs, 10, max_steps)
    else:
        reference = get_constant_schedule_with_warmup(theirs, 10)
    for _ in range(60):
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], abs=1e-12)
        ours.step(), theirs.step(), mine.step(), reference.step()
