"""ELECTRA (``mmm.electra``): the discriminator's labels, which losses reach which weights,
and an ELECTRA run through the CLI that exports and fine-tunes as a masked LM's does."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel

from mmm.cli import run
from mmm.data.labels import LABEL_MEMBER, LabelSpec
from mmm.data.shards import write_shards
from mmm.electra import ElectraConfig, replaced_labels
from mmm.inference import fill_mask, load_module
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from tests.conftest import SENTENCES
from tests.helpers import fit_checkpoint


def _electra_module(tokenizer, share_embeddings: bool = True) -> MaskedModelingModule:
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0)
    electra = ElectraConfig(width_fraction=0.5, share_embeddings=share_embeddings)
    return MaskedModelingModule(tokenizer=tokenizer, encoder=encoder, electra=electra)


def test_a_sampled_token_equal_to_the_original_counts_as_original():
    original = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    replaced = torch.tensor([[5, 4, 7, 3], [8, 8, 0, 0]])  # (0, 0) and (0, 2): same token
    real = torch.tensor([[True, True, True, False], [True, True, False, False]])
    labels = replaced_labels(original, replaced, real)
    assert labels.tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]  # padding (0, 3) is left out


@pytest.mark.filterwarnings("ignore:No positive samples")  # nothing replaced: AUROC is 0
def test_the_discriminator_reads_the_samples_and_labels_each_real_position(
    tokenizer, monkeypatch, one_thread
):
    """A generator whose every sample is the original token: nothing is replaced; one whose
    every sample is another token: exactly the hidden positions are."""
    module = _electra_module(tokenizer)
    batch = tokenizer.collate(SENTENCES[:4])
    torch.manual_seed(0)
    masked = module.choose_masks(module.modality_batch(batch))["text"]
    original = batch["input_ids"][masked.mask]  # (N,)
    hidden, real = int(masked.mask.sum()), int(batch["attention_mask"].sum())
    for sampled, share in [(original, 0.0), ((original + 1) % 200, hidden / real)]:
        monkeypatch.setattr("mmm.electra.sample_replacements", lambda *a, s=sampled: s)
        part = module.forward_masked(batch, masked)["text"]
        assert part.metrics["replaced_share"].item() == pytest.approx(share)
        assert part.counts["replaced_accuracy"] == real


@pytest.mark.parametrize("share_embeddings", [True, False])
def test_the_generator_learns_from_its_mlm_loss_only(tokenizer, share_embeddings, one_thread):
    """The discriminator loss reaches no generator weight, the generator's MLM loss no trunk
    or discriminator-head weight; the shared embedder (token and position tables, LayerNorm)
    learns from both, and from the discriminator only when not shared."""
    module = _electra_module(tokenizer, share_embeddings)
    inputs = module.modality_batch(tokenizer.collate(SENTENCES[:4]))
    torch.manual_seed(0)
    masked = module.choose_masks(inputs)
    [out] = module.electra(
        inputs, masked, module.modalities, lambda shown: module.encode_modalities(shown)[0]
    ).values()
    embedder = list(module.modalities["text"].embedder.parameters())
    shared = {id(p) for p in embedder}
    generator = [p for p in module.electra.generators.parameters() if id(p) not in shared]
    discriminator = [*module.encoder.parameters(), *module.electra.discriminators.parameters()]

    def reached(loss, params) -> list[bool]:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return [g is not None and bool(g.abs().sum() > 0) for g in grads]

    assert not any(reached(out.discriminator_loss, generator))
    assert all(reached(out.discriminator_loss, discriminator))
    assert not any(reached(out.generator_loss, discriminator))
    assert all(reached(out.generator_loss, generator[-4:]))  # the head's transform and bias
    assert any(reached(out.generator_loss, embedder)) == share_embeddings
    assert all(reached(out.discriminator_loss, embedder[1:]))  # positions, LayerNorm
    frozen = [p for p in module.modalities["text"].head.parameters() if not p.requires_grad]
    assert len(frozen) == 5  # the unused masked-LM head, less its tied token table


def test_electra_refuses_a_continuous_modality_and_bad_settings():
    from mmm.tokenizers.image import ImageTokenizer

    with pytest.raises(ValueError, match=r"\['image'\] are continuous"):
        MaskedModelingModule(tokenizer=ImageTokenizer(), electra=ElectraConfig())
    with pytest.raises(ValueError, match="width_fraction must lie in"):
        ElectraConfig(width_fraction=0.0)


def _labelled_text(root) -> str:
    """Sentences labelled by whether they mention a path."""
    samples = [
        {
            "__key__": f"s{i}",
            "txt": text.encode(),
            LABEL_MEMBER: json.dumps(int("path" in text)).encode(),
        }
        for i, text in enumerate(SENTENCES * 2)
    ]
    write_shards(samples, str(root / "train-%06d.tar"), max_count=8)
    write_shards(samples, str(root / "val-%06d.tar"), max_count=8)
    LabelSpec("classification", ("other", "path"), "txt").save(root)
    return str(root)


def test_an_electra_run_exports_its_discriminator_and_fine_tunes(
    tmp_path, corpus_dir, tokenizer_dir, one_thread
):
    """``mmm fit`` of configs/text_electra.yaml, shrunk -> validation logs both models'
    metrics -> ``mmm export`` gives a stock model whose states are the discriminator's ->
    ``mmm finetune fit --model.checkpoint`` trains on its trunk."""
    checkpoint = fit_checkpoint(
        tmp_path / "fit",
        "text_electra.yaml",
        {
            "model.tokenizer.init_args.path": str(tokenizer_dir),
            "model.tokenizer.init_args.max_length": "32",
            "model.encoder.init_args.dim": "16",
            "model.encoder.init_args.depth": "1",
            "data.embedded": "null",
            "data.train_shards": f"{corpus_dir}/train-*.tar",
            "data.val_shards": f"{corpus_dir}/val-*.tar",
            "data.num_workers": "0",
            "data.batch_size": "8",
            "trainer.max_steps": "2",
            "trainer.val_check_interval": "2",
            "trainer.limit_val_batches": "1",
        },
    )
    saved = torch.load(checkpoint, weights_only=True)
    assert any(key.startswith("electra.generators.text.") for key in saved["state_dict"])
    module = load_module(str(checkpoint))
    with pytest.raises(ValueError, match="ELECTRA model"):
        fill_mask(module, ["the [MASK] fox"])
    run(["export", f"--checkpoint={checkpoint}", f"--output={tmp_path / 'exported'}"])
    stock = AutoModel.from_pretrained(str(tmp_path / "exported")).eval()
    batch = module.tokenizers["text"].collate(SENTENCES[:2])
    ours = module(batch)["text"]  # (B, L, D) discriminator states
    theirs = stock(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].long())
    real = batch["attention_mask"]
    torch.testing.assert_close(theirs.last_hidden_state[real], ours[real], atol=1e-4, rtol=1e-4)

    labelled = _labelled_text(tmp_path / "labelled")
    cli = run(
        [
            "finetune",
            "fit",
            f"--model.checkpoint={checkpoint}",
            "--model.task=classification",
            f"--data.train_shards={labelled}/train-*.tar",
            f"--data.val_shards={labelled}/val-*.tar",
            "--data.num_workers=0",
            "--data.batch_size=8",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.logger=false",
        ]
    )
    assert cli.trainer.global_step == 2
    assert cli.model.backbone.electra is None  # generator and discriminator head dropped
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
