"""The ``mmm`` command as a user runs it: fit, resume, validate/test/predict, tools."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmm.callbacks import TrainingProgressBar
from mmm.cli import run
from tests.conftest import SENTENCES

TEXT_CONFIG = Path(__file__).parents[1] / "configs" / "text_mlm.yaml"


@pytest.fixture
def fit_args(tmp_path, tokenizer_dir, corpus_dir):
    return [
        f"--config={TEXT_CONFIG}",
        f"--model.tokenizer.path={tokenizer_dir}",
        "--model.tokenizer.max_length=32",
        "--model.encoder.dim=32",
        "--model.encoder.depth=1",
        "--model.encoder.num_heads=2",
        "--model.masking.ratio=0.3",
        f"--data.train_shards={corpus_dir}/train-*.tar",
        f"--data.val_shards={corpus_dir}/val-*.tar",
        "--data.num_workers=0",
        "--data.batch_size=8",
        "--trainer.max_steps=4",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]


def _checkpoint(root: Path) -> Path:
    [checkpoint] = sorted(root.rglob("*.ckpt"))
    return checkpoint


def test_overrides_reach_the_objects(fit_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run(["fit", *fit_args])
    assert cli.model.maskings["text"].ratio == 0.3
    assert cli.model.encoder.dim == 32
    assert cli.datamodule.batcher is cli.model.batcher
    assert cli.trainer.global_step == 4
    for metric in ("train/loss", "train/text/masked_accuracy", "train/text/perplexity", "val/loss"):
        assert metric in cli.trainer.callback_metrics


def test_resume_validate_test_predict_and_fill_mask(fit_args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run(["fit", *fit_args])
    checkpoint = _checkpoint(tmp_path)

    resumed = run(["fit", *fit_args, "--trainer.max_steps=6", f"--ckpt_path={checkpoint}"])
    assert resumed.trainer.global_step == 6  # continued from step 4, not from 0

    for subcommand in ("validate", "test"):
        cli = run([subcommand, *fit_args, f"--ckpt_path={checkpoint}"])
        assert f"{'val' if subcommand == 'validate' else 'test'}/loss" in (
            cli.trainer.callback_metrics
        )
    predicted = run(["pretrain", "predict", *fit_args, f"--ckpt_path={checkpoint}"])
    assert predicted.trainer.predict_loop.predictions  # predict ran and returned outputs

    capsys.readouterr()
    sentence = SENTENCES[0].replace("fox", "[MASK]")
    run(["fill-mask", f"--checkpoint={checkpoint}", f"--text={sentence}", "--top_k=3"])
    printed = capsys.readouterr().out
    assert sentence in printed and "mask 1:" in printed
    assert len(printed.strip().splitlines()[-1].split()) == 2 + 2 * 3  # "mask 1:" + 3 pairs


def test_fill_mask_without_a_mask_token_names_the_text(fit_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(["fit", *fit_args])
    with pytest.raises(ValueError, match="no mask token in 'plain text'"):
        run(["fill-mask", f"--checkpoint={_checkpoint(tmp_path)}", "--text=plain text"])


def test_shards_and_tokenizer_tools_round_trip(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("first paragraph\n\nsecond paragraph")
    (tmp_path / "docs" / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    summary = run(
        ["shards", f"--inputs={tmp_path}/docs", f"--output={tmp_path}/out/train", "--max_count=2"]
    )
    assert summary.samples == 3 and len(summary.shards) == 2
    output = run(
        [
            "tokenizer",
            f"--source={tmp_path}/out/train-*.tar",
            f"--output={tmp_path}/tok",
            "--vocab_size=60",
            "--algorithm=bpe",
        ]
    )
    assert Path(output, "tokenizer.json").exists()


def test_progress_bar_counts_the_epochs_max_steps_reaches(fit_args):
    """The quickstart is bounded by max_steps (max_epochs -1): the bar shows `Epoch 1/1`, not
    Lightning's `Epoch 1/-2`, and no `v_num`."""
    args = [a for a in fit_args if not a.startswith("--trainer.enable_progress_bar")]
    cli = run(["fit", *args, "--trainer.max_steps=6", "--trainer.limit_train_batches=4"])
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, TrainingProgressBar)
    assert bar._get_train_description(current_epoch=1).strip() == "Epoch 1/1"  # 6 steps / 4
    assert "v_num" not in bar.get_metrics(cli.trainer, cli.model)


def test_predict_has_one_meaning_and_mixed_options_are_named():
    """``mmm predict`` is the CSV tool; LightningCLI's predict is ``mmm pretrain predict`` or
    ``mmm finetune predict``. The options of one given to the other name the right command."""
    with pytest.raises(
        ValueError, match=r"--ckpt_path, --config, --model are LightningCLI options: .* `mmm "
        r"finetune predict --config X.yaml --ckpt_path BEST.ckpt`"
    ):  # fmt: skip
        run(["predict", "--config=x.yaml", "--ckpt_path=y.ckpt", "--model.lr=1", "--inputs=a"])
    for lightning in ("pretrain", "finetune"):
        with pytest.raises(ValueError, match=rf"mmm {lightning} predict is LightningCLI's predict "
                           r".*--checkpoint, --inputs are options of the CSV tool"):  # fmt: skip
            run([lightning, "predict", "--checkpoint=a.ckpt", "--inputs=b.png", "--model.x=1"])
