"""Whether this CPU runs bf16 natively, and the warning for a run that asks for bf16 on one
that does not (``docs/precision.md``).

bf16 autocast on the CPU (``--trainer.precision bf16-mixed``) is fast where the CPU has bf16
instructions (AVX512-BF16, or AMX tiles): oneDNN's matrix multiplies then run at about 2.5x
their fp32 rate. Without them oneDNN emulates bf16 by converting to fp32 and back, which is
slower than fp32 itself, so the run still trains correctly but loses time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch.utilities import rank_zero_warn


@dataclass(frozen=True)
class CpuBf16Support:
    """What torch reports about this CPU's bf16 instructions."""

    capability: str
    """torch's dispatch level (``torch.backends.cpu.get_cpu_capability``: AVX2, AVX512, ...)."""
    native: bool
    """bf16 matrix multiplies run in hardware (AVX512-BF16 or AMX), not emulated."""


def cpu_bf16_support() -> CpuBf16Support:
    """This CPU's bf16 support. torch exposes the instruction checks only as private helpers
    of ``torch.cpu``; where they are missing (an older torch) bf16 counts as not native."""
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return CpuBf16Support(
        capability=torch.backends.cpu.get_cpu_capability(), native=bool(avx512_bf16() or amx())
    )


def warn_if_bf16_is_emulated(precision: str | int | None, device_type: str) -> bool:
    """Warn when a run on the CPU asks for bf16 (``bf16-mixed``, ``bf16-true``) that this CPU
    emulates; returns whether it warned."""
    if device_type != "cpu" or "bf16" not in str(precision):
        return False
    support = cpu_bf16_support()
    if support.native:
        return False
    rank_zero_warn(
        f"--trainer.precision {precision}: this CPU (torch capability {support.capability}) "
        "has no AVX512-BF16 or AMX instructions, so bf16 is emulated and trains slower than "
        "fp32. Use --trainer.precision 32-true here (docs/precision.md)."
    )
    return True
