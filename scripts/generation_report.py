"""Measure what a masked model generates, against the embedded training data (README, section
"Generation (masked diffusion)").

    python scripts/generation_report.py smiles --checkpoint CKPT --samples 1000
    python scripts/generation_report.py protein --checkpoint CKPT --samples 500 --compare MLM_CKPT
    python scripts/generation_report.py speed --checkpoint CKPT --samples 200 --steps 64 256

- ``smiles``: shares of generated molecules that RDKit parses (valid), that are distinct
  (unique, canonical SMILES) and absent from the training split (novel), against a baseline
  that draws each token independently from its training frequency, lengths as in training.
- ``protein``: KL divergence of the 20 amino acids' composition, training split vs generated
  (and vs uniform, for scale); on the held-out split, the checkpoint's NLL bound per residue
  (masked diffusion, the fixed-t evaluation of ``mmm validate``) and the pseudo-perplexity of
  it and of ``--compare`` (e.g. the BERT-style ``protein_mlm.yaml`` model).
- ``speed``: generated sequences per second at each step count, with and without skipping the
  forward pass of sequences that reveal nothing at a step (MDLM's ``ddpm_cache``).
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter

import torch

from mmm.data.corpora import is_validation_key, iter_corpus
from mmm.generation import SAMPLERS, SamplingSettings, generate
from mmm.inference import load_module, score
from mmm.module import MaskedModelingModule
from mmm.tokenizers.protein import ESM_RESIDUES

AMINO_ACIDS = ESM_RESIDUES[:20]


def split_members(corpus: str, member: str, validation: bool) -> list[str]:
    """One split of an embedded corpus, as ``ensure_embedded_shards`` writes it (5% held out)."""
    return [
        s[member].decode()
        for s in iter_corpus(corpus)
        if is_validation_key(s["__key__"], 0.05) == validation
    ]


def unigram_baseline(module: MaskedModelingModule, train: list[str], count: int) -> list[str]:
    """Sequences whose tokens are drawn independently from their training frequencies, with
    lengths drawn from the training lengths the checkpoint recorded."""
    tokenizer = module.tokenizers[module.modality_named()]
    frequencies = torch.zeros(tokenizer.spec.vocab_size)
    for start in range(0, len(train), 512):
        batch = tokenizer.collate(train[start : start + 512])
        ids = batch["input_ids"][batch["maskable"]]
        frequencies += torch.bincount(ids, minlength=frequencies.shape[0]).float()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.multinomial(
        module.modalities[module.modality_named()].length_counts.float(),
        count,
        True,
        generator=generator,
    )
    return [
        tokenizer.decode(torch.multinomial(frequencies, int(n), True, generator=generator).tolist())
        for n in lengths
    ]


def canonical_forms(smiles: list[str]) -> list[str]:
    """The canonical SMILES of the valid strings of ``smiles``, in order (invalid ones left
    out)."""
    from mmm.data.formats.smiles import canonical_smiles

    canonical = []
    for text in smiles:
        try:
            canonical.append(canonical_smiles(text))
        except ValueError:
            continue
    return canonical


def molecule_shares(smiles: list[str], training: set[str]) -> tuple[float, float, float]:
    """(valid share of all, unique share of valid, novel share of unique valid)."""
    canonical = canonical_forms(smiles)
    unique = set(canonical)
    novel = unique - training
    return (
        len(canonical) / len(smiles),
        len(unique) / max(len(canonical), 1),
        len(novel) / max(len(unique), 1),
    )


def sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    return SamplingSettings(
        steps=args.steps, sampler=args.sampler, temperature=args.temperature, top_p=args.top_p
    )


def report_smiles(args: argparse.Namespace) -> None:
    module = load_module(args.checkpoint)
    train = split_members("smiles-nci-wehi", "smi", validation=False)
    known = set(canonical_forms(train))
    settings = sampling_settings(args)
    generated = generate(module, args.samples, settings=settings, seed=0, progress=True)
    rows = {
        f"{args.sampler}, {args.steps} steps, temperature {args.temperature}, "
        f"top_p {args.top_p}": generated,
        "unigram baseline": unigram_baseline(module, train, args.samples),
    }
    print(f"{len(train)} training molecules; {args.samples} generated")
    for name, smiles in rows.items():
        valid, unique, novel = molecule_shares(smiles, known)
        print(f"{name}: valid {valid:.3f}, unique {unique:.3f}, novel {novel:.3f}")
    print("examples:", *generated[:8], sep="\n  ")


def composition(sequences: list[str]) -> torch.Tensor:
    counts = Counter(residue for sequence in sequences for residue in sequence)
    values = torch.tensor([counts[a] for a in AMINO_ACIDS], dtype=torch.float64) + 0.5
    return values / values.sum()


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p / q).log()).sum())


@torch.no_grad()
def nll_bound(module: MaskedModelingModule, sequences: list[str], batch_size: int = 32) -> float:
    """Held-out NLL bound per token with the checkpoint's fixed-t evaluation masks."""
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        name = module.modality_named()
        batch = module.tokenizers[name].collate(sequences[start : start + batch_size])
        for masked in module.maskings[name].evaluation_masks(batch["maskable"]):
            part = module.forward_masked(batch, masked)[name]
            total += part.loss.item() * part.loss_count
            count += part.loss_count
    return total / count


def report_protein(args: argparse.Namespace) -> None:
    module = load_module(args.checkpoint)
    window = module.tokenizers[module.modality_named()].max_length - 2
    train = split_members("pyhmmer-proteins", "seq", validation=False)
    held_out = [s[:window] for s in split_members("pyhmmer-proteins", "seq", validation=True)]
    generated = generate(module, args.samples, settings=sampling_settings(args), seed=0)
    reference = composition(train)
    uniform = torch.full_like(reference, 1 / 20)
    print(
        f"composition KL(train || generated, {args.samples}): {kl(reference, composition(generated)):.4f} nats"
    )
    print(f"composition KL(train || uniform): {kl(reference, uniform):.4f} nats")
    print("examples:", *generated[:3], sep="\n  ")
    print(f"held out: {len(held_out)} proteins, first {window} residues")
    if hasattr(module.maskings[module.modality_named()], "evaluation_times"):
        bound = nll_bound(module, held_out)
        print(
            f"{args.checkpoint}: NLL bound {bound:.4f} nats/residue, perplexity <= {math.exp(bound):.2f}"
        )
    for path in [args.checkpoint, *([args.compare] if args.compare else [])]:
        scores = score(load_module(path), held_out, batch_size=128)
        pll = sum(s.pll for s in scores) / sum(s.length for s in scores)
        print(f"{path}: pseudo-perplexity {math.exp(-pll):.2f} ({-pll:.4f} nats/residue)")


def report_speed(args: argparse.Namespace) -> None:
    module = load_module(args.checkpoint)
    length = args.length
    print(f"{args.samples} sequences of {length} tokens, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    for steps in args.steps:
        for cache in (True, False):
            settings = SamplingSettings(steps=steps, cache=cache)
            start = time.perf_counter()
            generate(module, args.samples, length, settings, seed=0, batch_size=args.batch_size)
            rate = args.samples / (time.perf_counter() - start)
            print(f"T={steps} cache={cache}: {rate:.1f} sequences/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["smiles", "protein", "speed"])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, nargs="+", default=[64])
    parser.add_argument("--sampler", choices=SAMPLERS, default="ancestral")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--compare", help="another checkpoint to score the held-out split with")
    parser.add_argument("--length", type=int, default=48, help="speed: tokens per sequence")
    parser.add_argument("--batch_size", type=int, default=100)
    args = parser.parse_args()
    if args.what != "speed":
        args.steps = args.steps[0]
    {"smiles": report_smiles, "protein": report_protein, "speed": report_speed}[args.what](args)


if __name__ == "__main__":
    main()
