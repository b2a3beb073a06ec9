"""Masked diffusion (MDLM) training, generation, infilling and scoring."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mmm.cli import run
from mmm.data.shards import write_shards
from mmm.generation import (
    SamplingSettings,
    TokenSampler,
    _remdm_step,
    encode_templates,
    expand_template,
    fill_masked,
    generate,
    infill,
    sample_lengths,
)
from mmm.inference import load_module, read_sequences, score, score_mutations
from mmm.masking import NOISE_SCHEDULES, DiffusionMasking, MaskedPositions, RandomMasking
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.scoring import parse_mutations
from mmm.tokenizers import ProteinTokenizer
from mmm.tokenizers.protein import TOKEN_IDS
from tests.helpers import single_thread

CORPUS = ["MKTAYIAK", "GIGKFLHS", "MNVWEPLC", "ACDEFGHI"]
PROTEIN_MDLM = Path(__file__).parents[1] / "configs" / "protein_mdlm.yaml"


def _protein_module(masking=None, dim: int = 32) -> MaskedModelingModule:
    encoder = TransformerEncoder(dim=dim, depth=2, num_heads=2, mlp_ratio=2.0)
    return MaskedModelingModule(
        tokenizer=ProteinTokenizer(max_length=32),
        encoder=encoder,
        masking=masking or DiffusionMasking(),
    ).eval()


@pytest.fixture(scope="module")
def memorizer() -> MaskedModelingModule:
    """A tiny diffusion model trained on four proteins until it knows them by heart."""
    torch.manual_seed(0)
    module = _protein_module().train()
    batch = module.tokenizers["protein"].collate(CORPUS * 16)
    optimizer = torch.optim.AdamW(module.parameters(), lr=5e-3)
    steps = 400
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    with single_thread():
        for _ in range(steps):
            loss = module.forward_masked(batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return module.eval()


# ---------------------------------------------------------------------------- the objective
def test_elbo_loss_matches_a_hand_computed_case():
    """Two proteins with 4 and 6 residues at t = 0.25 and 0.5 (linear: weights 4 and 2), 2 and
    3 residues hidden, uniform logits (cross-entropy log V per hidden residue): the loss is
    (4 * 2 + 2 * 3) * log V / 10 maskable residues."""
    module = _protein_module()
    batch = module.tokenizers["protein"].collate(["MKTA", "GIGKFL"])
    maskable = batch["maskable"]
    mask = torch.zeros_like(maskable)
    mask[0, 1:3] = True
    mask[1, 1:4] = True
    ratio, weight = module.maskings["protein"].noise_levels(torch.tensor([0.25, 0.5]))
    masked = MaskedPositions(mask, ratio, weight)
    vocab = module.tokenizers["protein"].spec.vocab_size
    pred = torch.zeros(int(mask.sum()), vocab)
    target = batch["input_ids"][mask]
    loss, _ = module.modalities["protein"].loss_and_metrics(
        pred, target, masked.position_weights(maskable)
    )
    assert loss.item() == pytest.approx((4 * 2 + 2 * 3) * math.log(vocab) / 10, rel=1e-6)
    assert masked.loss_count(maskable) == 10
    out = module.forward_masked(batch, masked)  # the module applies the same weights
    per_position = F.cross_entropy(out["protein"].pred, out["protein"].target, reduction="none")
    expected = (per_position * torch.tensor([4.0, 4.0, 2.0, 2.0, 2.0])).sum() / 10
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(NOISE_SCHEDULES))
def test_elbo_weight_is_minus_alpha_derivative_over_one_minus_alpha(name):
    schedule = NOISE_SCHEDULES[name]
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    alpha_derivative = -(schedule.mask_probability(t + h) - schedule.mask_probability(t - h)) / (
        2 * h
    )
    expected = -alpha_derivative / schedule.mask_probability(t)
    torch.testing.assert_close(schedule.elbo_weight(t), expected, rtol=1e-5, atol=1e-6)


def test_linear_schedule_hides_t_and_weighs_one_over_t():
    ratio, weight = DiffusionMasking(schedule="linear").noise_levels(torch.tensor([0.1, 0.5, 1.0]))
    torch.testing.assert_close(ratio, torch.tensor([0.1, 0.5, 1.0]))
    torch.testing.assert_close(weight, torch.tensor([10.0, 2.0, 1.0]))


@pytest.mark.parametrize("name", sorted(NOISE_SCHEDULES))
def test_times_near_zero_and_one_are_numerically_safe(name):
    module = _protein_module(DiffusionMasking(schedule=name)).train()
    batch = module.tokenizers["protein"].collate(CORPUS * 4)
    for t in (1e-7, 1e-4, 1.0 - 1e-7, 1.0):
        ratio, weight = module.maskings["protein"].noise_levels(torch.full((16,), t))
        assert ((ratio >= 0) & (ratio <= 1)).all() and weight.isfinite().all()
        assert (weight >= 0).all()
        mask = module.maskings["protein"].select(batch["maskable"], ratio, None, None, None)
        out = module.forward_masked(batch, MaskedPositions(mask, ratio, weight))
        out.loss.backward()
        assert out.loss.isfinite(), f"t={t}"
        assert all(p.grad.isfinite().all() for p in module.parameters() if p.grad is not None)
        module.zero_grad()


def test_training_times_are_stratified_and_hidden_tokens_show_the_mask():
    masking = DiffusionMasking(schedule="linear", min_t=1e-3)
    t, weight = masking.sample_ratios(16, 0, torch.device("cpu"), torch.Generator().manual_seed(0))
    bins = ((t - 1e-3) / (1 - 1e-3) * 16).floor().long().sort().values
    assert bins.tolist() == list(range(16)), "one time in each of the 16 bins"
    torch.testing.assert_close(weight, 1.0 / t)
    module = _protein_module(masking)
    assert (
        module.modalities["protein"].mask_replace_prob == 1.0
        and module.modalities["protein"].random_replace_prob == 0.0
    )


def test_evaluation_uses_fixed_times_and_reproducible_masks():
    module = _protein_module(DiffusionMasking(eval_times=4))
    batch = module.tokenizers["protein"].collate(CORPUS)
    first = module.maskings["protein"].evaluation_masks(batch["maskable"])
    second = module.maskings["protein"].evaluation_masks(batch["maskable"])
    times = (torch.arange(4) + 0.5) / 4 * (1 - 1e-3) + 1e-3
    torch.testing.assert_close(torch.stack([m.ratio[0] for m in first]), times)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.mask, b.mask)
        assert module.forward_masked(batch, a).loss == module.forward_masked(batch, b).loss


# ------------------------------------------------------------------ generation and infilling
def test_expand_template_writes_out_repeated_masks():
    assert expand_template("MKT<mask>x3GL<mask>", "<mask>") == "MKT" + "<mask>" * 3 + "GL<mask>"
    assert expand_template("[MASK]×2 end", "[MASK]") == "[MASK][MASK] end"
    assert expand_template("<mask>xG", "<mask>") == "<mask>xG"  # x without a count: residue X


@pytest.mark.parametrize("sampler", ["ancestral", "maskgit", "remdm"])
def test_infill_never_changes_fixed_positions(sampler):
    module = _protein_module()
    templates = ["MKT<mask>x5GLS", "<mask>AAAA<mask>", "W<mask>x12", "<mask>"]
    settings = SamplingSettings(steps=8, sampler=sampler, remask="rescale", eta=1.0)
    results = infill(module, templates * 3, settings=settings, seed=0, batch_size=5)
    residues = set("LAGVSERTIDPKQNFYMHWCXBUZO.-J")
    for template, result in zip(templates * 3, results, strict=True):
        expanded = expand_template(template, "<mask>").replace("<mask>", "?")
        assert len(result) == len(expanded)
        assert all(want in ("?", got) for want, got in zip(expanded, result, strict=True))
        assert set(result) <= residues, "special tokens are never generated"


def test_remdm_hides_generated_tokens_again_but_never_template_tokens():
    """One ReMDM step with nothing left to reveal: only remasking acts (no model call)."""
    ids = torch.arange(4 * 12).reshape(4, 12) + 10  # (B, L) all revealed
    fill = torch.zeros(4, 12, dtype=torch.bool)
    fill[:, 3:9] = True  # generated positions; the rest is the template
    settings = SamplingSettings(sampler="remdm", remask="rescale", eta=1.0)
    sampler = TokenSampler(settings, torch.zeros(60, dtype=torch.bool), torch.Generator())
    before = ids.clone()
    hidden = torch.zeros_like(fill)
    _remdm_step(None, ids, None, fill, hidden, 0.5, 0.4, settings, sampler, mask_id=1)
    assert torch.equal(ids[~fill], before[~fill])
    remasked = (ids == 1).sum().item()
    assert 0 < remasked < fill.sum().item()  # sigma = 0.4 / 0.5 of 24 positions


def test_remdm_sigma_follows_cap_and_rescale_and_is_zero_at_the_end():
    cap = SamplingSettings(sampler="remdm", remask="cap", eta=0.1)
    rescale = SamplingSettings(sampler="remdm", remask="rescale", eta=0.5)
    # sigma_max = min(1, (1 - alpha_s) / alpha_t) with hidden shares now = 0.8, after = 0.6
    assert cap.remask_probability(0.8, 0.6) == pytest.approx(0.1)
    assert rescale.remask_probability(0.8, 0.6) == pytest.approx(0.5)
    assert rescale.remask_probability(0.2, 0.1) == pytest.approx(0.5 * 0.1 / 0.8)
    assert cap.remask_probability(0.1, 0.0) == 0.0  # the last step hides nothing
    assert SamplingSettings().remask_probability(0.8, 0.6) == 0.0  # ancestral never remasks
    with pytest.raises(ValueError, match="eta must lie in"):
        SamplingSettings(sampler="remdm", eta=1.5)


def test_remdm_with_eta_zero_is_the_ancestral_sampler(one_thread):
    module = _protein_module()
    ancestral = generate(module, 4, length=8, settings=SamplingSettings(steps=8), seed=1)
    plain = SamplingSettings(steps=8, sampler="remdm", eta=0.0)
    assert generate(module, 4, length=8, settings=plain, seed=1) == ancestral


def test_text_infill_fills_a_span_of_the_chosen_length_and_keeps_the_rest(tiny_module):
    """Token by token: decoded text may join a generated ``##`` piece to a fixed word."""
    batch, fill = encode_templates(
        tiny_module.tokenizers["text"], ["return the [MASK]x3 of the list"]
    )
    assert fill.sum() == 3
    ids = fill_masked(
        tiny_module.eval(), batch, fill, SamplingSettings(steps=4), torch.Generator().manual_seed(0)
    )
    assert torch.equal(ids[~fill], batch["input_ids"][~fill])
    assert not torch.isin(
        ids[fill], torch.tensor(sorted(tiny_module.tokenizers["text"].special_token_ids))
    ).any()


def test_generation_is_reproducible_with_a_seed(one_thread):
    module = _protein_module()
    settings = SamplingSettings(steps=16)
    first = generate(module, 6, length=10, seed=3, batch_size=4, settings=settings)
    assert generate(module, 6, length=10, seed=3, batch_size=4, settings=settings) == first
    assert generate(module, 6, length=10, seed=4, batch_size=4, settings=settings) != first
    uncached = SamplingSettings(steps=16, cache=False)
    assert generate(module, 6, length=10, seed=3, batch_size=4, settings=uncached) == first
    assert all(len(sequence) == 10 for sequence in first)


@pytest.mark.parametrize(
    ("sampler", "least"), [("ancestral", 0.6), ("maskgit", 0.9), ("remdm", 0.6)]
)
def test_a_model_of_a_tiny_corpus_regenerates_it(memorizer, sampler, least, one_thread):
    settings = SamplingSettings(steps=32, sampler=sampler, eta=0.05)
    samples = generate(memorizer, 40, length=8, settings=settings, seed=0)
    share = sum(sample in CORPUS for sample in samples) / len(samples)
    assert share >= least, f"{sampler}: {share:.2f} of samples are corpus sequences: {samples}"


def test_lengths_are_drawn_from_those_seen_in_training():
    module = _protein_module()
    module.modalities["protein"].count_lengths(
        module.tokenizers["protein"].collate(["MKTAY", "GIG", "MKTAY"])
    )
    assert sorted(set(sample_lengths(module, 50, seed=0))) == [3, 5]
    assert {len(s) for s in generate(module, 8, settings=SamplingSettings(steps=4))} <= {3, 5}
    with pytest.raises(ValueError, match="pass a length"):
        sample_lengths(_protein_module(), 1)


def test_bad_templates_are_named():
    module = _protein_module()
    with pytest.raises(ValueError, match="template 1 .* has no <mask>"):
        infill(module, ["M<mask>", "MKT"])
    with pytest.raises(ValueError, match="template 0 .* does not fit"):
        infill(module, ["<mask>x40"])


# -------------------------------------------------------------------------------- scoring
def _masked_log_probs(module, sequence: str, position: int) -> torch.Tensor:
    """log p(. | sequence with residue ``position`` (1-based) hidden), computed directly."""
    batch = module.tokenizers["protein"].collate([sequence])
    batch["input_ids"][0, position] = TOKEN_IDS["<mask>"]  # <cls> sits at column 0
    hidden = module(batch)["protein"]  # (1, L, D)
    return module.modalities["protein"].head(hidden[0, position]).log_softmax(dim=-1)


def test_pseudo_log_likelihood_sums_single_position_log_probs():
    module = _protein_module()
    [result] = score(module, ["MKTAYIAK"], batch_size=3)
    with torch.no_grad():
        direct = sum(
            _masked_log_probs(module, "MKTAYIAK", i)[TOKEN_IDS[r]].item()
            for i, r in enumerate("MKTAYIAK", start=1)
        )
    assert result.length == 8 and result.pll == pytest.approx(direct, abs=1e-4)
    assert result.pseudo_perplexity == pytest.approx(math.exp(-direct / 8), rel=1e-4)


def test_mutation_syntax_errors_name_the_mutation():
    assert parse_mutations("a23g:K45R")[0].mutant == "G"
    with pytest.raises(ValueError, match="'A0G' is not"):
        parse_mutations("A0G")
    with pytest.raises(ValueError, match="has 'K' at position 2, not 'A'"):
        score_mutations(_protein_module(), "MKTA", ["A2G"])


@pytest.fixture
def protein_checkpoint(tmp_path, monkeypatch):
    """A tiny protein_mdlm.yaml run through the CLI on a few proteins in tmp shards."""
    monkeypatch.chdir(tmp_path)
    samples = [{"__key__": f"p{i}", "seq": s.encode()} for i, s in enumerate(CORPUS * 4)]
    write_shards(samples, str(tmp_path / "train-%06d.tar"), max_count=8)
    write_shards(samples[:4], str(tmp_path / "val-%06d.tar"), max_count=8)
    run(
        [
            "fit",
            f"--config={PROTEIN_MDLM}",
            "--data.embedded=null",
            f"--data.train_shards={tmp_path}/train-*.tar",
            f"--data.val_shards={tmp_path}/val-*.tar",
            "--data.num_workers=0",
            "--data.batch_size=4",
            "--model.encoder.dim=32",
            "--model.encoder.depth=1",
            "--model.encoder.num_heads=2",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    [checkpoint] = sorted(tmp_path.rglob("*.ckpt"))
    return checkpoint


def test_score_and_generate_commands(protein_checkpoint, tmp_path):
    wild_type = "MKTAYIAKQRQISFVKSHFSRQ"
    table = tmp_path / "dms.csv"
    table.write_text("mutant,note\nA4G,one\nK2R:A4C,two\n")
    run(["score", f"--checkpoint={protein_checkpoint}", f"--mutations={table}",
         f"--sequence={wild_type}"])  # fmt: skip
    assert table.read_text() == "mutant,note\nA4G,one\nK2R:A4C,two\n", "the input is kept"
    rows = list(csv.DictReader((tmp_path / "dms.scored.csv").open()))
    assert [row["note"] for row in rows] == ["one", "two"]
    module = load_module(str(protein_checkpoint))
    with torch.no_grad():
        at4, at2 = (_masked_log_probs(module, wild_type, p) for p in (4, 2))
    direct = at4[TOKEN_IDS["G"]] - at4[TOKEN_IDS["A"]]
    assert float(rows[0]["score"]) == pytest.approx(direct.item(), abs=1e-5)
    double = at2[TOKEN_IDS["R"]] - at2[TOKEN_IDS["K"]] + at4[TOKEN_IDS["C"]] - at4[TOKEN_IDS["A"]]
    assert float(rows[1]["score"]) == pytest.approx(double.item(), abs=1e-5)

    output = tmp_path / "generated.fasta"
    run(["generate", f"--checkpoint={protein_checkpoint}", f"--output={output}",
         "--num_samples=3", "--steps=4", "--progress=false"])  # fmt: skip
    generated = read_sequences(output)
    assert [name for name, _ in generated] == ["generated_1", "generated_2", "generated_3"]
    assert all(len(sequence.strip()) == 8 for _, sequence in generated), "training lengths: 8"


@pytest.mark.parametrize("sampler", ["ancestral", "maskgit"])
def test_a_bert_style_checkpoint_generates_with_the_linear_schedule(sampler):
    module = _protein_module(RandomMasking(ratio=0.15))
    settings = SamplingSettings(steps=6, sampler=sampler)
    assert settings.noise(module) is NOISE_SCHEDULES["linear"]
    samples = generate(module, 3, length=7, settings=settings, seed=0)
    assert [len(sample) for sample in samples] == [7, 7, 7]
