"""Score generated molecules with the MOSES metrics (docs/moses.md), beside the paper's table.

    python scripts/moses_eval.py --checkpoint CKPT --samples 1000 --samplers ancestral remdm --steps 64 256
    python scripts/moses_eval.py --smiles mols.smi
    python scripts/moses_eval.py --reference 1000

- ``--checkpoint``: sample ``--samples`` molecules at each sampler and step count (lengths
  drawn from training), time the sampling, and score each set.
- ``--smiles``: score the molecules of a ``.smi`` file (``mmm generate --output x.smi``).
- ``--reference N``: score N molecules of the MOSES test set itself, drawn at random, which
  shows what the metrics give real molecules at that sample size (FCD, Frag and Scaf depend on
  it: the paper scores 30,000 samples).

Each result is printed as one JSON line (``--out`` appends them to a file too). Needs
``pip install --no-deps molsets`` (data) and ``fcd_torch`` (FCD).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from mmm.generation import SAMPLERS, SamplingSettings, generate
from mmm.inference import load_module
from mmm.metrics.moses import moses_metrics, read_moses_smiles


def read_generated(path: Path) -> list[str]:
    """The SMILES of a ``.smi`` file as ``mmm generate`` writes it (``SMILES<TAB>name``), every
    line kept: an invalid or empty SMILES must count against validity, not be skipped."""
    lines = path.read_text().splitlines()
    return [line.split("\t")[0].strip() for line in lines if not line.startswith("#")]


def score_row(name: str, smiles: list[str], **extra: object) -> dict[str, object]:
    """The MOSES metrics of ``smiles`` as one row named ``name`` (with ``extra`` fields)."""
    start = time.perf_counter()
    metrics = moses_metrics(smiles)
    seconds = round(time.perf_counter() - start, 1)
    return {"name": name, "samples": len(smiles), **extra, **metrics, "scoring_s": seconds}


def sampled_rows(args: argparse.Namespace) -> list[dict[str, object]]:
    """Sample and score at each sampler and step count."""
    module = load_module(args.checkpoint, map_location="cpu")
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            settings = SamplingSettings(
                steps=steps,
                sampler=sampler,
                remask=args.remask,
                eta=args.eta,
                temperature=args.temperature,
            )
            start = time.perf_counter()
            smiles = generate(module, args.samples, settings=settings, seed=args.seed)
            seconds = round(time.perf_counter() - start, 1)
            name = f"{sampler}, {steps} steps, temperature {args.temperature}" + (
                f", {args.remask} eta={args.eta}" if sampler == "remdm" else ""
            )
            rows.append(score_row(name, smiles, sampling_s=seconds, examples=smiles[:5]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="sample from this checkpoint")
    source.add_argument("--smiles", help="score the molecules of this .smi/.csv file")
    source.add_argument("--reference", type=int, help="score this many MOSES test molecules")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=["ancestral"])
    parser.add_argument("--steps", type=int, nargs="+", default=[64])
    parser.add_argument("--remask", choices=["cap", "rescale"], default="cap")
    parser.add_argument("--eta", type=float, default=0.02)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="append each result as a JSON line to this file")
    args = parser.parse_args()
    if args.checkpoint:
        rows = sampled_rows(args)
    else:
        if args.smiles:
            smiles, name = read_generated(Path(args.smiles)), args.smiles
        else:
            smiles = random.Random(args.seed).sample(read_moses_smiles("test"), args.reference)
            name = "MOSES test molecules"
        rows = [score_row(name, smiles)]
        print(json.dumps(rows[0]), flush=True)
    if args.out:
        with Path(args.out).open("a") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"MOSES metrics of {len(rows)} sample set(s): done")


if __name__ == "__main__":
    main()
