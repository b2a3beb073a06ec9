"""Shared fixtures: a tiny tokenizer, tiny text shards and a tiny module, all under tmp dirs."""

from __future__ import annotations

import pytest

from mmm.data.shards import write_shards
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.text import TextTokenizer
from tests.helpers import folder_data, single_thread

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
    "return the absolute value of the number passed as argument",
    "open the file and return a stream of bytes read from it",
    "the parser reads tokens and builds a syntax tree from them",
    "sort the list in place using only comparisons between items",
    "raise an error when the argument is not a valid path name",
    "join two or more path components into a single path string",
]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """Text shards: 4 training shards and 1 validation shard of repeated real sentences."""
    root = tmp_path_factory.mktemp("corpus")
    samples = [
        {"__key__": f"s{i:04d}", "txt": SENTENCES[i % len(SENTENCES)].encode()} for i in range(96)
    ]
    write_shards(samples[:80], str(root / "train-%06d.tar"), max_count=20)
    write_shards(samples[80:], str(root / "val-%06d.tar"), max_count=20)
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_dir):
    """A small WordPiece tokenizer trained on the corpus shards."""
    path = tmp_path_factory.mktemp("tok") / "wordpiece"
    TextTokenizer(path=str(path), train_source=str(corpus_dir / "train-*.tar"), vocab_size=200)
    return path


@pytest.fixture
def tokenizer(tokenizer_dir):
    return TextTokenizer(path=str(tokenizer_dir), max_length=32)


@pytest.fixture
def corpus_data(corpus_dir, tokenizer):
    """``corpus_dir``'s shards batched by ``tokenizer``, 8 documents a batch, in-process."""
    return folder_data(corpus_dir, tokenizer, batch_size=8)


@pytest.fixture
def tiny_module(tokenizer):
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    return MaskedModelingModule(tokenizer=tokenizer, encoder=encoder, lr=3e-3, warmup_steps=0)


@pytest.fixture
def one_thread():
    """Run the test on one CPU thread (see ``single_thread``)."""
    with single_thread():
        yield
