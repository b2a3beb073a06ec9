"""LoRA vs full fine-tuning: step time and memory on real batches of a real labelled set.

The batches are modlamp's antimicrobial vs UniProt peptides (5,200 labelled sequences shipped
inside the package: nothing to download), tokenized by ``ProteinTokenizer`` and labelled as
``LabelledBatcher`` labels them; the model is a ``FineTuningModule`` on a protein backbone of
the given size (random weights: time and memory do not depend on their values).

Each mode runs in a fresh process of its own, so that one mode's allocations never count
towards the other's. Printed per mode:

- the median time of a training step (forward, backward, AdamW step) after warm-up steps;
- on a GPU, the peak of ``torch.cuda.max_memory_allocated``;
- on the CPU, the bytes of the training state (parameters + gradients + AdamW's two moments,
  summed over tensors: what LoRA saves), and the process's peak resident memory
  (``resource.getrusage``: the interpreter, torch and the activations included);

and the ratio of LoRA's step time to full fine-tuning's.

Usage::

    python scripts/bench_lora.py                      # 256 wide, 4 blocks, 20 steps
    python scripts/bench_lora.py --steps 2 --dim 32   # smoke test
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

MODES = ("full", "lora")


def labelled_batches(batch_size: int, count: int, max_length: int, seed: int = 0) -> list:
    """``count`` batches of AMP peptides and their classes (1 antimicrobial, 0 UniProt)."""
    from mmm.data.corpora.protein import amp_peptides
    from mmm.tokenizers.protein import ProteinTokenizer

    sequences, classes = amp_peptides()  # sorted by class: drawn at random
    tokenizer = ProteinTokenizer(max_length=max_length)
    order = np.random.default_rng(seed).permutation(len(sequences))[: batch_size * count]
    items, labels = [sequences[i] for i in order], classes[order]
    batches = []
    for start in range(0, len(items), batch_size):
        batch = {"protein": tokenizer.collate(items[start : start + batch_size])}
        batch["labels"] = torch.as_tensor(labels[start : start + batch_size], dtype=torch.long)
        batches.append(batch)
    return batches


def build(mode: str, dim: int, depth: int, rank: int, max_length: int):
    """A ``FineTuningModule`` of ``mode`` on a protein backbone ``dim`` wide, ``depth`` deep."""
    from mmm.finetune.module import FineTuningModule
    from mmm.models.encoder import TransformerEncoder
    from mmm.module import MaskedModelingModule
    from mmm.tokenizers.protein import ProteinTokenizer

    torch.manual_seed(0)
    heads = max(1, dim // 64)
    encoder = TransformerEncoder(dim=dim, depth=depth, num_heads=heads)
    backbone = MaskedModelingModule(
        tokenizer=ProteinTokenizer(max_length=max_length), encoder=encoder
    )
    return FineTuningModule(backbone=backbone, num_labels=2, mode=mode, lora_rank=rank)


def state_bytes(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state."""
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    grads = sum(
        p.grad.numel() * p.grad.element_size() for p in module.parameters() if p.grad is not None
    )
    moments = sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value) and value.ndim > 0
    )
    return {"parameters": params, "gradients": grads, "optimizer": moments}


def run_mode(args: argparse.Namespace) -> dict:
    """Train ``args.mode`` for ``args.warmup + args.steps`` steps; its times and memory."""
    device = torch.device(args.device)
    module = build(args.mode, args.dim, args.depth, args.rank, args.max_length).to(device).train()
    optimizer = module.configure_optimizers()["optimizer"]
    batches = labelled_batches(args.batch_size, args.warmup + args.steps, args.max_length)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for index, batch in enumerate(batches):
        batch = {
            k: v.to(device) if torch.is_tensor(v) else {n: t.to(device) for n, t in v.items()}
            for k, v in batch.items()
        }
        start = time.perf_counter()
        loss = module.loss(module(batch), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    result = {
        "mode": args.mode,
        "step_seconds": statistics.median(times),
        "trainable_parameters": trainable,
        "parameters": sum(p.numel() for p in module.parameters()),
        "state_bytes": state_bytes(module, optimizer),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if device.type == "cuda":
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def measure_in_subprocess(args: argparse.Namespace, mode: str) -> dict:
    """``run_mode`` for ``mode`` in a fresh interpreter; its JSON result."""
    command = [sys.executable, __file__, "--worker", mode, *_forwarded(args)]
    root = str(Path(__file__).resolve().parents[1])
    env = {**__import__("os").environ, "PYTHONPATH": root}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench_lora: the {mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _forwarded(args: argparse.Namespace) -> list[str]:
    names = ("steps", "warmup", "dim", "depth", "rank", "batch_size", "max_length", "device")
    return [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in names]


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


def report(results: dict[str, dict], args: argparse.Namespace) -> None:
    print(
        f"AMP peptides, batch {args.batch_size}, protein backbone {args.dim} wide x "
        f"{args.depth} blocks, LoRA rank {args.rank}, {args.device}, median of {args.steps} "
        f"steps after {args.warmup} warm-up"
    )
    for mode, result in results.items():
        state = result["state_bytes"]
        memory = (
            f"CUDA peak {_mib(result['cuda_peak_bytes'])}"
            if "cuda_peak_bytes" in result
            else f"params+grads+AdamW {_mib(sum(state.values()))} "
            f"(grads {_mib(state['gradients'])}, AdamW {_mib(state['optimizer'])}), "
            f"peak RSS {_mib(result['peak_rss_bytes'])}"
        )
        print(
            f"  {mode:<5} {result['step_seconds'] * 1000:8.1f} ms/step  "
            f"{result['trainable_parameters']:>10,} of {result['parameters']:,} trained  {memory}"
        )
    ratio = results["lora"]["step_seconds"] / results["full"]["step_seconds"]
    print(f"  step time LoRA / full: {ratio:.2f}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--dim", type=int, default=256, help="encoder width")
    parser.add_argument("--depth", type=int, default=4, help="encoder blocks")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64, help="tokens per peptide")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default_device)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args = parse(argv)
    if args.worker:
        args.mode = args.worker
        print(json.dumps(run_mode(args)))
        return {}
    results = {mode: measure_in_subprocess(args, mode) for mode in MODES}
    report(results, args)
    return results


if __name__ == "__main__":
    main()
