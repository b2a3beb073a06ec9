"""The trunk's attention: timm's ``Attention`` (same parameters and names: fused ``qkv``,
``proj``) with the attention kernel chosen per call.

- A ``flex_attention`` ``BlockMask`` as ``attn_mask`` (packed documents on a GPU,
  ``TransformerEncoder(document_attention="flex")``) goes to ``flex_attention``: compiled on
  CUDA into one fused kernel that skips blocks no document spans; eager elsewhere.
- Under CPU bf16 autocast (``--trainer.precision bf16-mixed`` on the CPU) the
  scaled-dot-product kernel runs in fp32: PyTorch's CPU flash-attention backward is 4-11x
  slower in bf16 than in fp32 (profiled in ``docs/precision.md``), so with it in bf16, bf16
  training was slower than fp32 for every measured config although the matrix multiplies ran
  3-4x faster. The projections around it stay in bf16.
- Otherwise (fp32, or bf16 on a GPU, with a tensor mask or none) it is timm's ``forward``.

timm's fused path is written out here because the kernel call sits in its middle.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention


def cpu_low_precision_autocast(x: Tensor) -> bool:
    """Whether ``x`` is on the CPU inside an autocast region to a 16-bit type."""
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") in (torch.bfloat16, torch.float16)
    )


@cache
def _compiled_flex_attention() -> Callable[..., Tensor]:
    """``flex_attention`` compiled once per process: compiled, it is one fused kernel that
    skips masked-out blocks; eager, it is a reference that materializes the scores."""
    return torch.compile(flex_attention)


class TrunkAttention(Attention):
    """timm's ``Attention`` that also takes a ``BlockMask`` and keeps its kernel in fp32
    under CPU bf16 autocast (see the module docstring)."""

    def forward(
        self, x: Tensor, attn_mask: Tensor | BlockMask | None = None, is_causal: bool = False
    ) -> Tensor:
        flex = isinstance(attn_mask, BlockMask)
        if not flex and not (self.fused_attn and cpu_low_precision_autocast(x)):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        batch, length, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)  # (B,L,3,H,d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, d)
        q, k = self.q_norm(q), self.k_norm(k)
        if flex:
            attend = _compiled_flex_attention() if x.device.type == "cuda" else flex_attention
            x = attend(q, k, v, block_mask=attn_mask)  # (B, H, L, d)
        else:
            x = self._fp32_kernel(q, k, v, attn_mask, is_causal)  # (B, H, L, d) fp32
        x = self.norm(x.transpose(1, 2).reshape(batch, length, self.attn_dim))  # (B, L, H * d)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))

    def _fp32_kernel(
        self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool
    ) -> Tensor:
        """Scaled-dot-product attention on fp32 copies of ``q, k, v``, outside autocast."""
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(
                q.float(),
                k.float(),
                v.float(),
                attn_mask=attn_mask,
                dropout_p=self.attn_drop.p if self.training else 0.0,
                is_causal=is_causal,
            )
