"""bf16 autocast on the CPU (``--trainer.precision bf16-mixed``): every modality of the
tokenizer contract trains a few steps with finite fp32 losses and fp32 weights; masked
diffusion trains and samples; a Lightning bf16 run exports fp32 weights."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from mmm.experiment import QUIET_TRAINER
from mmm.export import export_masked_lm
from mmm.generation import SamplingSettings, generate
from mmm.masking import DiffusionMasking
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.precision import cpu_bf16_support, warn_if_bf16_is_emulated
from mmm.tokenizers import ProteinTokenizer
from tests.helpers import folder_data
from tests.test_tokenizer_contract import case  # noqa: F401  (the contract's cases fixture)


def bf16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def train_steps(module: MaskedModelingModule, batch: dict, steps: int = 3) -> list[float]:
    """``steps`` AdamW steps under bf16 autocast; each step's loss, checked to be fp32 and
    finite, with the predictions computed in bf16 (autocast did act)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        with bf16():
            out = module.forward_masked(batch)
        assert out.loss.dtype == torch.float32 and out.loss.isfinite()
        part = out[module.modality_named()]
        assert part.pred.dtype == torch.bfloat16, "autocast ran the head in fp32"
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert all(p.dtype == torch.float32 and p.isfinite().all() for p in module.parameters())
    return losses


def test_every_modality_trains_under_bf16_autocast(case):  # noqa: F811
    built, samples = case
    torch.manual_seed(0)
    module = MaskedModelingModule(
        tokenizer=built, encoder=TransformerEncoder(dim=32, depth=1, num_heads=2)
    )
    train_steps(module, built.collate_stream([built.decode_sample(s) for s in samples]))


def test_masked_diffusion_trains_and_samples_under_bf16_autocast():
    torch.manual_seed(0)
    tokenizer = ProteinTokenizer(max_length=24)
    module = MaskedModelingModule(
        tokenizer=tokenizer,
        encoder=TransformerEncoder(dim=32, depth=1, num_heads=2),
        masking=DiffusionMasking(),
    )
    batch = tokenizer.collate([tokenizer.decode_sample({"seq": s}) for s in (b"MKTAYIAK", b"GIGK")])
    train_steps(module, batch)
    with bf16():
        sequences = generate(module.eval(), 3, length=8, settings=SamplingSettings(steps=4))
    assert len(sequences) == 3 and all(len(s) == 8 for s in sequences)


def test_a_lightning_bf16_run_exports_fp32_weights(tiny_module, corpus_dir, tmp_path):

    data = folder_data(corpus_dir, tiny_module.batcher, batch_size=8)
    trainer = L.Trainer(
        precision="bf16-mixed",
        accelerator="cpu",
        max_steps=2,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        **QUIET_TRAINER,
    )
    trainer.fit(tiny_module, datamodule=data)
    assert trainer.callback_metrics["val/loss"].isfinite()
    hf = export_masked_lm(tiny_module, tmp_path / "export")
    from safetensors.torch import load_file

    weights = load_file(str(hf / "model.safetensors"))
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}


def test_emulated_bf16_is_named(monkeypatch):
    assert not warn_if_bf16_is_emulated("32-true", "cpu")
    assert not warn_if_bf16_is_emulated("bf16-mixed", "cuda")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not cpu_bf16_support().native
    with pytest.warns(UserWarning, match="bf16 is emulated"):
        assert warn_if_bf16_is_emulated("bf16-mixed", "cpu")


def test_the_attention_kernel_runs_in_fp32_under_cpu_bf16_autocast(monkeypatch):
    """PyTorch's CPU flash-attention backward is several times slower in bf16
    (``docs/precision.md``): the trunk hands it fp32, the projections stay in bf16."""
    import mmm.models.attention as attention

    seen = []
    kernel = attention.F.scaled_dot_product_attention

    def recording(q, k, v, **options):
        seen.append((q.dtype, torch.is_autocast_enabled("cpu")))
        return kernel(q, k, v, **options)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    torch.manual_seed(0)
    encoder = TransformerEncoder(dim=32, depth=1, num_heads=2)
    x = torch.randn(2, 6, 32)
    reference = encoder(x)
    with bf16():
        mixed = encoder(x)
        assert encoder.blocks[0].attn.qkv(x).dtype == torch.bfloat16
    assert seen == [(torch.float32, False), (torch.float32, False)]
    torch.testing.assert_close(mixed.float(), reference, atol=0.05, rtol=0.05)
