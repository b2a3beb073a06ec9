"""Sequence packing of text: every token once, positions restart, documents stay apart."""

from __future__ import annotations

import shutil
from itertools import pairwise

import numpy as np
import pytest
import torch

from datamodules import ShardDataModule
from mmm.data.shards import write_shards
from mmm.inference import fill_mask
from mmm.masking import whole_word_mask
from mmm.models.encoder import HFEncoder, TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import copy_with
from mmm.tokenizers.text import TextTokenizer, pack_rows
from tests.conftest import SENTENCES

#: Documents of very different lengths; one is longer than max_length (32) and is cut; the
#: two short ones share a row however the session's tokenizer splits their words.
DOCUMENTS = [SENTENCES[0], "short", SENTENCES[2], " ".join(SENTENCES[3:7]), SENTENCES[1], "tiny"]


@pytest.fixture
def packer(tokenizer_dir) -> TextTokenizer:
    return TextTokenizer(path=str(tokenizer_dir), max_length=32, pack=True)


def documents_of(batch: dict[str, torch.Tensor]) -> list[tuple[int, torch.Tensor]]:
    """(row, bool (L,) positions) of every packed document of the batch."""
    return [
        (row, batch["document_ids"][row] == doc)
        for row in range(batch["document_ids"].shape[0])
        for doc in batch["document_ids"][row].unique().tolist()
        if doc >= 0
    ]


def test_packing_keeps_every_token_once_and_restarts_positions(packer):
    batch = packer.collate_stream(DOCUMENTS)
    assert batch["input_ids"].shape[0] < len(DOCUMENTS), "documents share rows"
    hf = packer.hf
    content = packer.max_length - 2  # tokens of a piece besides [CLS] and [SEP]
    expected = []
    for text in DOCUMENTS:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        expected += [tuple(ids[i : i + content]) for i in range(0, len(ids), content)]
    found = []
    for row, positions in documents_of(batch):
        ids = batch["input_ids"][row, positions].tolist()
        assert ids[0] == hf.cls_token_id and ids[-1] == hf.sep_token_id
        assert batch["position_ids"][row, positions].tolist() == list(range(len(ids)))
        assert not batch["maskable"][row, positions][[0, -1]].any(), "specials are not maskable"
        found.append(tuple(ids[1:-1]))
    assert sorted(found) == sorted(expected)
    padding = batch["document_ids"] < 0
    assert not (batch["attention_mask"] & padding).any()
    assert (batch["input_ids"][padding] == hf.pad_token_id).all()


def test_word_ids_are_distinct_across_documents_and_whole_words_stay_inside(packer):
    batch = packer.collate_stream(DOCUMENTS)
    for row, positions in documents_of(batch):
        inside = set(batch["word_ids"][row, positions].tolist()) - {-1}
        outside = set(batch["word_ids"][row, ~positions].tolist()) - {-1}
        assert inside and not inside & outside
    generator = torch.Generator().manual_seed(0)
    mask = whole_word_mask(batch["word_ids"], batch["maskable"], 0.5, generator)
    for row in range(mask.shape[0]):
        for word in batch["word_ids"][row, mask[row]].unique().tolist():
            tokens = batch["word_ids"][row] == word
            assert mask[row, tokens].all(), "a word is hidden whole"
            assert batch["document_ids"][row, tokens].unique().numel() == 1


def test_unpacked_word_ids_match_the_tokenizer(tokenizer):
    batch = tokenizer.collate(DOCUMENTS)
    encoding = tokenizer.hf(DOCUMENTS, padding="longest", truncation=True, max_length=32)
    for row in range(len(DOCUMENTS)):
        expected = [-1 if w is None else w for w in encoding.word_ids(row)]
        assert batch["word_ids"][row, : len(expected)].tolist() == expected


def test_across_attention_gives_positions_but_no_document_ids(tokenizer_dir):
    packer = TextTokenizer(path=str(tokenizer_dir), max_length=32, pack=True, attention="across")
    batch = packer.collate_stream(DOCUMENTS)
    assert "document_ids" not in batch and batch["position_ids"].shape == batch["input_ids"].shape


def test_a_document_is_encoded_as_if_it_were_alone(packer):
    """Block-diagonal attention plus restarting positions: a packed document's hidden states
    equal those of the document encoded in a row of its own."""
    torch.manual_seed(0)
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    module = MaskedModelingModule(tokenizer=packer, encoder=encoder).eval()
    texts = DOCUMENTS[:3]
    batch = packer.collate_stream(texts)
    with torch.no_grad():
        packed = module(batch)["text"]  # (R, L, D)
        for row, positions in documents_of(batch):
            ids = batch["input_ids"][row, positions]
            alone = module(packer.collate([packer.decode(ids.tolist())]))["text"][0, : len(ids)]
            torch.testing.assert_close(packed[row, positions], alone, atol=1e-5, rtol=1e-4)


def test_inference_keeps_one_row_per_text(packer):
    """Only the loader packs: fill-mask on a module trained with packing answers per text,
    as an unpacked module with the same weights does."""
    torch.manual_seed(0)
    encoder = TransformerEncoder(dim=32, depth=1, num_heads=2)
    module = MaskedModelingModule(tokenizer=packer, encoder=encoder).eval()
    texts = [f"the quick brown {packer.mask_token} jumps", f"open the {packer.mask_token}"]
    packed = fill_mask(module, texts, top_k=3)
    module.tokenizers["text"] = copy_with(packer, pack=False)
    assert len(packed) == 2 and packed == fill_mask(module, texts, top_k=3)


HF_BERT = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1}
HF_BERT.update(num_attention_heads=2, intermediate_size=32, vocab_size=10)


ENCODERS = {
    "mmm pre-LN": lambda: TransformerEncoder(dim=16, depth=2, num_heads=2),
    "mmm post-LN": lambda: TransformerEncoder(dim=16, depth=2, num_heads=2, norm_first=False),
    "hf": lambda: HFEncoder(config=HF_BERT),
}


@pytest.mark.parametrize("name", list(ENCODERS))
def test_perturbing_one_document_leaves_the_others_unchanged(name):
    torch.manual_seed(0)
    encoder = ENCODERS[name]().eval()
    documents = torch.tensor([[0, 0, 0, 1, 1, 1, 1, -1]])  # (1, L)
    x = torch.randn(1, 8, 16)
    y = x.clone()
    y[:, 3:7] += torch.randn(1, 4, 16)  # document 1 changes
    with torch.no_grad():
        before, after = encoder(x, document_ids=documents), encoder(y, document_ids=documents)
        across = encoder(y)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, :3], across[:, :3]), "without ids, documents mix"
    assert torch.isfinite(after).all(), "padding attends to padding, never to nothing"


def test_packed_evaluation_reads_every_document_once(tmp_path, tokenizer_dir):
    packer = TextTokenizer(path=str(tokenizer_dir), max_length=128, pack=True)
    texts = [f"{a} {b}" for a in SENTENCES[:4] for b in SENTENCES[4:6]]  # 8 distinct texts
    samples = [{"__key__": f"k{i}", "txt": t.encode()} for i, t in enumerate(texts)]
    write_shards(samples, str(tmp_path / "val-%06d.tar"), max_count=5)
    data = ShardDataModule(
        val_shards=str(tmp_path / "val-*.tar"), batcher=packer, batch_size=4, num_workers=0
    )
    runs = []
    for _ in range(2):
        decoded = []
        for batch in data.val_dataloader():
            documents = [
                packer.decode(batch["input_ids"][row, positions].tolist())
                for row, positions in documents_of(batch)
            ]
            assert batch["input_ids"].shape[0] < len(documents), "short texts share rows"
            decoded += documents
        runs.append(decoded)
    assert sorted(runs[0]) == sorted(texts) and runs[0] == runs[1]


def test_pack_rows_first_fit_decreasing():
    lengths = np.array([5, 9, 3, 7, 2])
    row, offset, index = pack_rows(lengths, capacity=10)
    assert row.max() + 1 == 3  # 26 tokens need at least 3 rows of 10
    for r in range(row.max() + 1):
        spans = sorted((offset[i], offset[i] + lengths[i]) for i in np.flatnonzero(row == r))
        assert spans[-1][1] <= 10 and all(a[1] == b[0] for a, b in pairwise(spans))
        assert sorted(index[row == r].tolist()) == list(range(int((row == r).sum())))


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile needs a C compiler on CPU")
def test_compiled_trunk_matches_eager():
    torch.manual_seed(0)
    eager = TransformerEncoder(dim=16, depth=1, num_heads=2)
    compiled = TransformerEncoder(dim=16, depth=1, num_heads=2, compile=True)
    compiled.load_state_dict(eager.state_dict())  # the same parameter names
    x = torch.randn(2, 8, 16)
    torch.testing.assert_close(compiled(x), eager(x), atol=1e-5, rtol=1e-4)


def test_generation_lengths_count_documents_not_packed_rows(packer):
    """Packed rows hold several documents; the lengths generation samples from are those of
    the documents."""
    module = MaskedModelingModule(tokenizer=packer, encoder=TransformerEncoder(dim=16, depth=1))
    batch = packer.collate_stream(DOCUMENTS)
    module.modalities["text"].count_lengths(batch)
    counts = module.modalities["text"].length_counts
    expected = [int(row.sum()) for row in packer.collate(DOCUMENTS)["maskable"]]
    pieces = int((batch["position_ids"] == 0).logical_and(batch["attention_mask"]).sum())
    assert int(counts.sum()) == pieces >= len(DOCUMENTS)
    assert int((counts * torch.arange(len(counts))).sum()) == int(batch["maskable"].sum())
    assert all(counts[length] > 0 for length in expected if length < packer.max_length - 2)


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-LN", "post-LN"])
def test_flex_attention_equals_the_dense_document_mask(packer, norm_first):
    """The ``flex_attention`` block mask (a GPU's path) computes what the dense (B, 1, L, L)
    mask does, padding included, in fp32 on the CPU (forward only: torch has no flex backward
    on the CPU)."""
    torch.manual_seed(0)
    dense = TransformerEncoder(dim=16, depth=2, num_heads=2, norm_first=norm_first)
    flex = TransformerEncoder(
        dim=16, depth=2, num_heads=2, norm_first=norm_first, document_attention="flex"
    )
    flex.load_state_dict(dense.state_dict())  # the same parameter names
    documents = packer.collate_stream(DOCUMENTS)["document_ids"]  # (B, L), -1 at padding
    assert (documents == -1).any() and documents.max() > 0  # padding and several documents
    x = torch.randn(*documents.shape, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            flex(x, document_ids=documents), dense(x, document_ids=documents)
        )


def test_document_attention_auto_is_dense_on_the_cpu_and_flex_refuses_attention_dropout():
    assert not TransformerEncoder(dim=16, depth=1, num_heads=2)._flex(torch.device("cpu"))
    assert TransformerEncoder(dim=16, depth=1, num_heads=2)._flex(torch.device("cuda"))
    with pytest.raises(ValueError, match="attention_dropout=0.1"):
        TransformerEncoder(dim=16, document_attention="flex", attention_dropout=0.1)
    with pytest.raises(ValueError, match="document_attention='sparse'"):
        TransformerEncoder(dim=16, document_attention="sparse")


def test_activation_checkpointing_gives_the_plain_trunks_gradients(packer):
    """Recomputing each block in the backward pass (dropout included: its random state is
    replayed) changes no gradient."""
    torch.manual_seed(0)
    plain = TransformerEncoder(dim=16, depth=2, num_heads=2, dropout=0.1, drop_path=0.1)
    recomputed = TransformerEncoder(
        dim=16, depth=2, num_heads=2, dropout=0.1, drop_path=0.1, activation_checkpointing=True
    )
    recomputed.load_state_dict(plain.state_dict())
    documents = packer.collate_stream(DOCUMENTS)["document_ids"]  # (B, L)
    x = torch.randn(*documents.shape, 16)
    gradients = []
    for trunk in (plain, recomputed):
        torch.manual_seed(1)  # the same dropout masks
        trunk(x, document_ids=documents).square().sum().backward()
        gradients.append({name: p.grad for name, p in trunk.named_parameters()})
    torch.testing.assert_close(gradients[1], gradients[0])
