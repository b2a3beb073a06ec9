"""timm's ``Attention`` with scaled-dot-product attention kept in fp32 under CPU bf16
autocast (``--trainer.precision bf16-mixed`` on the CPU).

PyTorch's CPU flash-attention backward is 4-11x slower in bf16 than in fp32 (profiled in
``docs/precision.md``): with it in bf16, bf16 training was slower than fp32 for every
measured config although the matrix multiplies ran 3-4x faster. Here the projections (qkv,
out) still run in bf16; only the attention kernel gets fp32 inputs. Elsewhere (fp32, GPUs)
this is timm's ``Attention`` unchanged, with the same parameters and names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor


def cpu_low_precision_autocast(x: Tensor) -> bool:
    """Whether ``x`` is on the CPU inside an autocast region to a 16-bit type."""
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") in (torch.bfloat16, torch.float16)
    )


class CpuAutocastAttention(Attention):
    """timm's ``Attention``; under CPU bf16 autocast its attention kernel runs in fp32.

    The fused path of timm's ``forward`` (timm 1.0), written out because the kernel call sits
    in its middle: the projections around it stay under autocast."""

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        if not (self.fused_attn and cpu_low_precision_autocast(x)):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        batch, length, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, d)
        q, k = self.q_norm(q), self.k_norm(k)
        with torch.autocast("cpu", enabled=False):
            x = F.scaled_dot_product_attention(
                q.float(),
                k.float(),
                v.float(),
                attn_mask=attn_mask,
                dropout_p=self.attn_drop.p if self.training else 0.0,
                is_causal=is_causal,
            )  # (B, H, L, d) fp32
        x = self.norm(x.transpose(1, 2).reshape(batch, length, self.attn_dim))  # (B, L, H*d)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))
