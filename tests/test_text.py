"""Text: tokenizer training/loading round trips, shard round trips, bad text and bad paths."""

from __future__ import annotations

import logging
import tarfile

import pytest
from transformers import AutoTokenizer

from datamodules import ShardDataModule
from mmm.data.shards import write_shards
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import SampleError
from mmm.tokenizers.text import TextTokenizer, train_tokenizer
from tests.conftest import SENTENCES


@pytest.mark.parametrize("algorithm", ["wordpiece", "bpe"])
def test_trained_tokenizer_round_trips_and_loads_with_auto_tokenizer(tmp_path, algorithm):
    path = tmp_path / algorithm
    train_tokenizer(_write_texts(tmp_path), path, vocab_size=120, algorithm=algorithm)
    tokenizer = TextTokenizer(path=str(path))
    batch = tokenizer.collate(SENTENCES)
    for row, sentence in zip(batch["input_ids"], SENTENCES, strict=True):
        assert tokenizer.decode(row.tolist()).strip() == sentence  # lowercase corpus
    assert AutoTokenizer.from_pretrained(path).mask_token == tokenizer.mask_token


def _write_texts(root) -> str:
    (root / "texts.jsonl").write_text("".join(f'{{"text": "{s}"}}\n' for s in SENTENCES * 4))
    return str(root / "texts.jsonl")


def test_batches_pad_mark_specials_and_word_ids(tokenizer):
    batch = tokenizer.collate([SENTENCES[0], "short"])
    assert batch["input_ids"].shape[1] % 8 == 0
    assert not batch["maskable"][:, 0].any(), "[CLS] must not be maskable"
    assert not (batch["maskable"] & ~batch["attention_mask"]).any(), "padding must not be maskable"
    assert (
        batch["word_ids"][1, 1].item() == 0
        and (batch["word_ids"][1, ~batch["maskable"][1]] == -1).all()
    )


def test_shards_round_trip_every_text_once(tmp_path, tokenizer_dir):
    tokenizer = TextTokenizer(path=str(tokenizer_dir), max_length=128)  # no truncation here
    texts = [f"{a} {b}" for a in SENTENCES[:4] for b in SENTENCES[4:6]]  # 8 distinct texts
    samples = [{"__key__": f"k{i}", "txt": t.encode()} for i, t in enumerate(texts)]
    write_shards(samples, str(tmp_path / "val-%06d.tar"), max_count=5)
    data = ShardDataModule(
        val_shards=str(tmp_path / "val-*.tar"), batcher=tokenizer, batch_size=4, num_workers=0
    )
    decoded = [
        tokenizer.decode(row.tolist()) for b in data.val_dataloader() for row in b["input_ids"]
    ]
    assert sorted(decoded) == sorted(texts)


def test_undecodable_and_empty_text_are_skipped_counted_and_named(tmp_path, tokenizer, caplog):
    samples = [
        {"__key__": "good", "txt": b"a fine sentence"},
        {"__key__": "latin1", "txt": "caf\xe9".encode("latin-1")},
        {"__key__": "blank", "txt": b"   "},
    ]
    write_shards(samples, str(tmp_path / "val-%06d.tar"))
    data = ShardDataModule(
        val_shards=str(tmp_path / "val-*.tar"), batcher=tokenizer, batch_size=4, num_workers=0
    )
    with caplog.at_level(logging.WARNING):
        [batch] = list(data.val_dataloader())
    assert batch["input_ids"].shape[0] == 1 and int(batch["skipped"]) == 2
    assert "'latin1'" in caplog.text and "not valid UTF-8" in caplog.text
    assert "'blank'" in caplog.text and "val-000000.tar" in caplog.text

    strict = ShardDataModule(
        val_shards=str(tmp_path / "val-*.tar"),
        batcher=tokenizer,
        batch_size=4,
        num_workers=0,
        on_error="raise",
    )
    with pytest.raises(SampleError, match="latin1"):
        list(strict.val_dataloader())


def test_missing_shards_name_the_pattern(tmp_path, tokenizer):
    data = ShardDataModule(
        val_shards=str(tmp_path / "nowhere-{000..003}.tar"), batcher=tokenizer, num_workers=0
    )
    with pytest.raises(FileNotFoundError, match="nowhere-000.tar"):
        list(data.val_dataloader())


def test_empty_shard_is_reported_not_silently_dropped(tmp_path, tokenizer, caplog):
    write_shards([{"__key__": "k", "txt": b"some text"}], str(tmp_path / "val-%06d.tar"))
    with tarfile.open(tmp_path / "val-000001.tar", "w"):
        pass  # an empty shard
    data = ShardDataModule(
        val_shards=str(tmp_path / "val-*.tar"), batcher=tokenizer, batch_size=4, num_workers=0
    )
    with caplog.at_level(logging.WARNING):
        batches = list(data.val_dataloader())
    assert sum(b["input_ids"].shape[0] for b in batches) == 1
    assert "val-000001.tar" in caplog.text


def test_a_tokenizer_without_mask_token_is_refused(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    )
    bare.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="no mask or pad token"):
        TextTokenizer(path=str(tmp_path / "bare"))


def test_missing_tokenizer_without_train_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        TextTokenizer(path=str(tmp_path / "absent"))


def test_rows_never_exceed_a_max_length_that_is_no_multiple_of_8(tokenizer_dir):
    """Padding rounds up to a multiple of 8 only when that cannot pass ``max_length``."""
    tokenizer = TextTokenizer(path=str(tokenizer_dir), max_length=30)
    batch = tokenizer.collate([" ".join(SENTENCES)])
    assert batch["input_ids"].shape[1] == 30
    module = MaskedModelingModule(tokenizer=tokenizer, encoder=TransformerEncoder(dim=16, depth=1))
    assert module.forward_masked(batch).loss.isfinite()
