"""A run resumed from a mid-epoch checkpoint ends with the weights of the uninterrupted run.

Each case is a shipped config shrunk by override, trained through the CLI with two loader
workers, validation between the checkpoint and the end, and a checkpoint every 4 steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmm.cli import run

CONFIGS = Path(__file__).parents[1] / "configs"
TINY = [
    "--model.encoder.dim=32",
    "--model.encoder.depth=1",
    "--model.encoder.num_heads=2",
    "--data.batch_size=4",
    "--data.num_workers=2",
]
CASES = {
    "text_mlm": ["--model.tokenizer.max_length=32"],  # packed text; shards from conftest
    "image_mae": [],  # random crops and flips in the loader workers
    "digits_image_text": [  # paired modalities, each dropped at random; 4M budgets, dropout
        '--model.budgets={"visible": 8, "target": 8, "alpha": 0.5}',
        "--model.encoder.dropout=0.1",
    ],
    "protein_mdlm": [],  # masked diffusion: a random time per sample
}


EVERY_4_STEPS = [
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    "--trainer.callbacks.every_n_train_steps=4",
    "--trainer.callbacks.save_top_k=-1",
    "--trainer.callbacks.filename={step}",
]


def _fit(
    config: str, root: Path, overrides: list[str], *more: str, steps: int = 8
) -> dict[str, torch.Tensor]:
    """``mmm fit`` for ``steps`` steps, validating every 3, a checkpoint every 4 under
    ``root/ck``; returns the final state dict."""
    cli = run(
        [
            "fit",
            f"--config={CONFIGS / config}.yaml",
            *TINY,
            *overrides,
            f"--trainer.max_steps={steps}",
            "--trainer.val_check_interval=3",
            "--trainer.limit_val_batches=2",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={root}",
            *EVERY_4_STEPS,
            f"--trainer.callbacks.dirpath={root}/ck",
            *more,
        ]
    )
    assert cli.trainer.global_step == steps
    return {name: value.detach().clone() for name, value in cli.model.state_dict().items()}


def _assert_same_weights(resumed: dict[str, torch.Tensor], straight: dict[str, torch.Tensor]):
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("config", sorted(CASES))
def test_resumed_run_ends_with_the_uninterrupted_weights(
    config, tmp_path, monkeypatch, tokenizer_dir, corpus_dir, one_thread
):
    monkeypatch.chdir(tmp_path)  # embedded data and tokenizers are prepared here
    overrides = list(CASES[config])
    if config == "text_mlm":
        overrides += [
            f"--model.tokenizer.path={tokenizer_dir}",
            f"--data.train_shards={corpus_dir}/train-*.tar",
            f"--data.val_shards={corpus_dir}/val-*.tar",
        ]
    straight = _fit(config, tmp_path / "straight", overrides)
    checkpoint = tmp_path / "straight" / "ck" / "step=4.ckpt"
    resumed = _fit(config, tmp_path / "resumed", overrides, f"--ckpt_path={checkpoint}")
    _assert_same_weights(resumed, straight)


def test_the_checkpoint_at_train_end_resumes_exactly_with_its_own_seed(
    tmp_path, monkeypatch, one_thread
):
    """A run stopped at step 5 (saved at train end: no validation or every-4 checkpoint falls
    on it) and continued to 8 under another seed_everything ends as the straight run: the
    checkpoint's seed wins, loudly."""
    monkeypatch.chdir(tmp_path)
    straight = _fit("protein_mdlm", tmp_path / "straight", [])
    _fit("protein_mdlm", tmp_path / "short", [], steps=5)
    [checkpoint] = (tmp_path / "short" / "ck").glob("*step=5.ckpt")
    with pytest.warns(UserWarning, match="checkpoint's training seed 0, not seed_everything 1"):
        resumed = _fit(
            "protein_mdlm",
            tmp_path / "short",
            [],
            "--seed_everything=1",
            f"--ckpt_path={checkpoint}",
        )
    _assert_same_weights(resumed, straight)


def test_a_run_resumed_with_other_loader_workers_ends_with_the_uninterrupted_weights(
    tmp_path, monkeypatch, one_thread
):
    """Elastic training keeps the global position, not per-worker reader states: resumed from
    step 4 with no loader workers instead of 2, the run trains on the same batches and ends
    with the same weights (see tests/test_elastic.py for other device counts)."""
    monkeypatch.chdir(tmp_path)
    straight = _fit("protein_mdlm", tmp_path / "straight", [])
    checkpoint = tmp_path / "straight" / "ck" / "step=4.ckpt"
    resumed = _fit(
        "protein_mdlm",
        tmp_path / "resumed",
        ["--data.num_workers=0"],
        f"--ckpt_path={checkpoint}",
    )
    _assert_same_weights(resumed, straight)
