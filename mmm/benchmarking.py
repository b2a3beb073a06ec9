"""What the benchmark scripts share: where and in what precision steps run, and the device's
measured matrix-multiply rate that model-FLOP utilization (MFU) is taken against.

MFU is measured against this machine's own ``torch.matmul`` rate at the step's precision,
not a datasheet peak: the same script then reports comparable figures on a laptop CPU and on
a GPU, and a CPU's figure does not depend on which vector units its datasheet assumes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch

#: The precisions the scripts compare, by Lightning's names: fp32, or bf16 autocast with fp32
#: weights and optimizer (``mmm fit --trainer.precision bf16-mixed``).
Precision = Literal["32", "32-true", "bf16-mixed"]  # "32-true": Lightning's name for "32"


@dataclass(frozen=True)
class Runtime:
    """Where and in what precision the steps run."""

    device: torch.device
    precision: Precision = "32"

    def __post_init__(self) -> None:
        if self.precision not in ("32", "32-true", "bf16-mixed"):
            raise ValueError(
                f"Runtime: precision {self.precision!r}; choose '32' ('32-true') or 'bf16-mixed'"
            )

    @property
    def matmul_dtype(self) -> torch.dtype:
        """The dtype autocast runs matrix multiplies in."""
        return torch.bfloat16 if self.precision == "bf16-mixed" else torch.float32

    def autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed"
        )

    def to_device(self, batch: dict) -> dict:
        """The batch's tensors (also those of nested per-modality batches) on the device."""
        return {
            key: self.to_device(value)
            if isinstance(value, dict)
            else value.to(self.device, non_blocking=True)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in batch.items()
        }

    def synchronize(self) -> None:
        """Wait for the device, so that a step's time includes its queued kernels."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def matmul_flops_per_second(runtime: Runtime, size: int = 2048, repeats: int = 10) -> float:
    """The device's ``torch.matmul`` rate (FLOP/s, best of ``repeats``) on square matrices of
    side ``size`` in the dtype the runtime's precision multiplies in."""
    a, b = (
        torch.randn(size, size, device=runtime.device, dtype=runtime.matmul_dtype) for _ in range(2)
    )
    torch.matmul(a, b)  # warm-up
    runtime.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        runtime.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def add_size_arguments(
    parser: argparse.ArgumentParser, presets: dict[str, Any], default: str = "default"
) -> None:
    """``--preset NAME`` and one option per field of the presets' dataclass (``--hidden``,
    ``--batch-size``...), which overrides the preset's value; read back with
    ``chosen_sizes``."""
    parser.add_argument("--preset", choices=sorted(presets), default=default)
    for size in fields(presets[default]):
        parser.add_argument(
            f"--{size.name.replace('_', '-')}",
            dest=size.name,
            type=type(size.default),
            default=None,
            help=f"(default: the preset's; {default}: {size.default})",
        )


def chosen_sizes(args: argparse.Namespace, presets: dict[str, Any]) -> Any:
    """The preset that ``args`` names with the size options given on the command line."""
    preset = presets[args.preset]
    given = {size.name: getattr(args, size.name) for size in fields(preset)}
    return replace(preset, **{name: value for name, value in given.items() if value is not None})
