"""Helpers shared by the modality tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from datamodules import ShardDataModule
from mmm.module import MaskedModelingModule
from mmm.tokenizers.multimodal import Batcher


def overfit_loss(
    module: MaskedModelingModule, batch: dict[str, torch.Tensor], steps: int = 150, lr: float = 3e-3
) -> float:
    """Train on one batch with the same mask every step (reseeded), return the final loss in
    eval mode on that mask: a model that can learn drives it to near zero."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr)
    for _ in range(steps):
        torch.manual_seed(0)
        loss = module.forward_masked(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(0)
    return module.eval().forward_masked(batch).loss.item()


def step_losses(
    module: MaskedModelingModule, batch: dict[str, torch.Tensor], steps: int, lr: float = 3e-3
) -> list[float]:
    """Train on one batch for ``steps`` AdamW steps (fresh masks each step); each step's
    loss."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = module.forward_masked(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def fit_checkpoint(tmp_path: Path, config: str, settings: dict[str, str], *overrides: str) -> Path:
    """``mmm fit`` of ``configs/<config>`` with ``settings`` (``--key=value``) and then
    ``overrides``, writing under ``tmp_path``; returns the one checkpoint it wrote."""
    from mmm.cli import run

    path = Path(__file__).parents[1] / "configs" / config
    common = {"trainer.enable_progress_bar": "false", "trainer.default_root_dir": str(tmp_path)}
    options = {**common, **settings}
    run(["fit", f"--config={path}", *(f"--{k}={v}" for k, v in options.items()), *overrides])
    [checkpoint] = sorted(tmp_path.rglob("*.ckpt"))
    return checkpoint


def fit_protein_checkpoint(tmp_path: Path, proteins: list[str], *overrides: str) -> Path:
    """``mmm shards`` of ``proteins`` -> ``mmm fit`` (the protein YAML, shrunk to 2 steps of a
    16-wide encoder, ``overrides`` last) in ``tmp_path``; returns the checkpoint."""
    from mmm.cli import run

    fasta = tmp_path / "proteins.fasta"
    fasta.write_text("".join(f">prot{i}\n{s}\n" for i, s in enumerate(proteins)))
    shards = tmp_path / "shards"
    run(["shards", f"--inputs={fasta}", f"--output={shards}/train", "--modality=protein"])
    return fit_checkpoint(tmp_path, "protein_mlm.yaml", protein_settings(shards), *overrides)


def protein_settings(shards: Path) -> dict[str, str]:
    """The protein YAML's settings shrunk to 2 steps of a 16-wide encoder on ``shards``."""
    return {
        "model.tokenizer.max_length": "48",
        "model.encoder.dim": "16",
        "model.encoder.depth": "1",
        "model.encoder.num_heads": "2",
        "data.train_shards": f"{shards}/train-*.tar",
        "data.val_shards": f"{shards}/train-*.tar",
        "data.num_workers": "0",
        "data.batch_size": "4",
        "trainer.max_steps": "2",
        "trainer.val_check_interval": "2",
    }


@contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread for the block: tiny matrices gain nothing from more, and on a busy
    machine waiting threads cost far more (a 100-step loop took 90 s on two threads, 6 s on
    one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def folder_data(
    folder: Path, batcher: Batcher, batch_size: int, **options: object
) -> ShardDataModule:
    """The ``train-*.tar`` and ``val-*.tar`` shards of ``folder``, batched by ``batcher`` in
    this process (no loader workers): the data of most in-process fits."""
    return ShardDataModule(
        train_shards=str(folder / "train-*.tar"),
        val_shards=str(folder / "val-*.tar"),
        batcher=batcher,
        batch_size=batch_size,
        num_workers=0,
        **options,
    )
