"""Proteins: the residue alphabet, FASTA reading, cropping, shards, training and fill-mask."""

from __future__ import annotations

import gzip

import pytest
import torch

from datamodules import ShardDataModule
from mmm.commands import shards_command
from mmm.data.corpora import iter_corpus
from mmm.data.formats import protein_samples, read_fasta
from mmm.data.formats.protein import RESIDUES
from mmm.inference import fill_mask
from mmm.masking import RandomMasking
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import SampleError
from mmm.tokenizers.protein import TOKEN_IDS, ProteinTokenizer
from tests.helpers import overfit_loss

# Real proteins: human hemoglobin alpha (start), ubiquitin, insulin B chain.
SEQUENCES = {
    "sp|P69905|HBA_HUMAN": "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADALTNAVAHV",
    "sp|P0CG48|UBC_HUMAN": "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG",
    "ins_b": "FVNQHLCGSHLVEALYLVCGERGFFYTPKT",
}


def _fasta(records: dict[str, str], width: int = 60) -> str:
    """FASTA text with sequences wrapped at ``width`` and a trailing stop on each record."""
    lines = []
    for record_id, sequence in records.items():
        lines.append(f">{record_id} some description")
        padded = sequence + "*"
        lines += [padded[i : i + width] for i in range(0, len(padded), width)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def tokenizer():
    return ProteinTokenizer(max_length=64)


def test_alphabet_is_esm_compatible_and_complete(tokenizer):
    assert [tokenizer.id_to_token(i) for i in range(5)] == ["<cls>", "<pad>", "<eos>", "<unk>", "L"]
    assert TOKEN_IDS["<mask>"] == 32 and TOKEN_IDS["-"] == 30  # ESM-2's ids
    assert set("ACDEFGHIKLMNPQRSTVWY" + "BJOUXZ" + ".-") == set(RESIDUES)
    spec = tokenizer.spec
    assert (spec.vocab_size, spec.pad_token_id, spec.mask_token_id) == (34, 1, 32)
    assert tokenizer.mask_token == "<mask>"


@pytest.mark.parametrize("sequence", [*SEQUENCES.values(), RESIDUES, "M", "AC-DE..FG"])
def test_decode_inverts_encode(tokenizer, sequence):
    assert tokenizer.decode(tokenizer.encode(sequence)) == sequence


def test_case_whitespace_and_stop_are_normalized(tokenizer):
    messy = " mkt\nLLv\r\n  ac\tde*\n"
    assert tokenizer.decode(tokenizer.encode(messy)) == "MKTLLVACDE"
    assert torch.equal(tokenizer.encode("mktllv"), tokenizer.encode("MKTLLV"))


def test_unknown_residue_names_record_and_position(tokenizer):
    with pytest.raises(ValueError, match=r"record 'P1'.*unknown residue '1' at position 4"):
        tokenizer.encode("MKT1LV", name="record 'P1'")
    with pytest.raises(ValueError, match="'\\*' at position 3"):  # only a trailing stop is dropped
        tokenizer.encode("MK*LV")


def test_unknown_residue_maps_to_x_when_asked():
    tokenizer = ProteinTokenizer(on_unknown="x")
    assert tokenizer.decode(tokenizer.encode("MK1L#é")) == "MKXLXX"


def test_collate_pads_to_multiple_of_8_with_cls_and_eos(tokenizer):
    batch = tokenizer.collate(["MKTLLV", "ac", "MKT<mask>LLV"])
    ids = batch["input_ids"]
    assert ids.shape == (3, 16)  # longest: 7 residues + <cls> + <eos> = 9, rounded up to 16
    assert ids[:, 0].eq(TOKEN_IDS["<cls>"]).all()
    assert ids[1, :5].tolist() == [0, TOKEN_IDS["A"], TOKEN_IDS["C"], TOKEN_IDS["<eos>"], 1]
    assert batch["attention_mask"].sum(dim=1).tolist() == [8, 4, 9]
    assert batch["maskable"].sum(dim=1).tolist() == [6, 2, 7]  # residues only
    assert not (batch["maskable"] & ~batch["attention_mask"]).any()
    assert ids[2, 4] == TOKEN_IDS["<mask>"]  # a written mask is one position
    assert [tokenizer.decode(row) for row in ids] == ["MKTLLV", "AC", "MKT<mask>LLV"]


def test_collate_truncates_to_max_length():
    tokenizer = ProteinTokenizer(max_length=10)
    batch = tokenizer.collate(["A" * 50])
    assert batch["input_ids"].shape == (1, 10)
    assert batch["input_ids"][0, -1] == TOKEN_IDS["<eos>"]


def test_decode_sample_crops_long_proteins_and_names_bad_samples():
    tokenizer = ProteinTokenizer(max_length=12)
    long = SEQUENCES["sp|P69905|HBA_HUMAN"]
    crop = tokenizer.decode_sample({"__key__": "hba", "seq": long.encode()})
    assert len(crop) == 10 and crop in long
    with pytest.raises(SampleError, match=r"x.tar, key 'bad'.*unknown residue '1' at position 3"):
        tokenizer.decode_sample({"__key__": "bad", "__url__": "x.tar", "seq": b"MK1"})
    with pytest.raises(SampleError, match="no 'seq' member"):
        tokenizer.decode_sample({"__key__": "empty", "txt": b"MK"})


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_fasta_multiline_records_round_trip(tmp_path, compress):
    text = _fasta(SEQUENCES, width=25)
    path = tmp_path / "proteins.fa"
    if compress:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    records = list(read_fasta(path))
    assert [record_id for record_id, _ in records] == list(SEQUENCES)
    tokenizer = ProteinTokenizer()
    decoded = [tokenizer.decode(tokenizer.encode(raw)) for _, raw in records]
    assert decoded == list(SEQUENCES.values())


def test_fasta_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_text("MKT\n>p1\nMKT\n")
    with pytest.raises(ValueError, match=r"bad.fa:1: sequence text before"):
        list(read_fasta(path))
    path.write_text(">p1\nMKTLV\n>p2\nMKT?LV\n")
    with pytest.raises(ValueError, match=r"bad.fa: record 'p2'.*'\?' at position 4"):
        list(protein_samples([str(path)]))


def test_shards_from_fasta_feed_the_datamodule(tmp_path):
    """``mmm shards --modality protein`` output read back through ShardDataModule."""
    fasta = tmp_path / "proteins.fa.gz"
    fasta.write_bytes(gzip.compress(_fasta(SEQUENCES).encode()))
    summary = shards_command(
        inputs=str(fasta), output=str(tmp_path / "shards" / "train"), modality="protein"
    )
    assert summary.samples == 3
    tokenizer = ProteinTokenizer(max_length=32)
    data = ShardDataModule(
        train_shards=str(tmp_path / "shards" / "train-*.tar"),
        val_shards=str(tmp_path / "shards" / "train-*.tar"),
        batcher=tokenizer,
        batch_size=3,
        num_workers=0,
    )
    batch = next(iter(data.val_dataloader()))
    assert batch["input_ids"].shape == (3, 32)  # every protein cropped to 30 residues
    crops = sorted(tokenizer.decode(row) for row in batch["input_ids"])
    middles = sorted(s[(len(s) - 30) // 2 :][:30] for s in SEQUENCES.values())
    assert crops == middles  # validation reads the middle window, not a random one


def test_embedded_corpus_is_valid_proteins():
    samples = list(iter_corpus("pyhmmer-proteins"))
    assert len(samples) == 2122
    assert len({s["__key__"] for s in samples}) == len(samples)
    tokenizer = ProteinTokenizer()
    assert all(tokenizer.encode(s["seq"].decode()).numel() >= 30 for s in samples[:200])


def _tiny_module(tokenizer: ProteinTokenizer) -> MaskedModelingModule:
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    return MaskedModelingModule(
        tokenizer=tokenizer, encoder=encoder, masking=RandomMasking(ratio=0.3), warmup_steps=0
    )


def test_tiny_model_overfits_one_batch(tokenizer):
    """Same batch, same mask (reseeded each step): the loss must go to near zero."""
    torch.manual_seed(0)
    module = _tiny_module(tokenizer)
    batch = tokenizer.collate([s[:40] for s in SEQUENCES.values()])
    final = overfit_loss(module, batch)
    assert final < 0.05, f"loss after 150 steps: {final:.3f}"


def test_fill_mask_gives_k_residues_with_probabilities(tokenizer):
    torch.manual_seed(0)
    module = _tiny_module(tokenizer).eval()
    results = fill_mask(module, ["MKT<mask>LLV", "m<MASK>tl<mask>"], top_k=4)
    assert [len(masks) for masks in results] == [1, 2]
    for candidates in (c for masks in results for c in masks):
        assert len(candidates) == 4
        probabilities = [c.probability for c in candidates]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0.0 < sum(probabilities) <= 1.0 + 1e-6
        assert all(tokenizer.id_to_token(c.token_id) == c.token for c in candidates)
