"""Benchmark (not a test): mmm's MAE training step against Hugging Face ``ViTMAEForPreTraining``.

Both models have the same size (``--preset``: ``default`` image 64, patch 8, width 256, 4
layers, 4 heads, FFN 1024, decoder 128 wide x 2 layers, batch 64; ``image-mae`` the size of
``configs/image_mae.yaml``; ``vit-b16`` ViT-B/16 at 224 pixels with MAE's 512-wide, 8-block
decoder, batch 64; ``tiny`` for smoke runs; options such as ``--width`` override a preset's
value; mask ratio 0.75, per-patch normalized targets) and run in one process on the same
batch, on ``--device`` in ``--precision`` (fp32 or bf16 autocast). A step is forward,
backward and an AdamW update; the reported time is the median over ``--steps`` steps after
``--warmup`` steps, the variants taking turns step by step (fair on a shared, noisy machine),
with the model FLOP/s as a share of the device's measured ``torch.matmul`` rate (MFU).
Also compares mmm's visible-only encoding against encoding every patch at the same ratio.

    python scripts/bench_vision.py --steps 10 --warmup 3 [--preset tiny|default|image-mae|vit-b16]
        [--width 256 --depth 4 --heads 4 ...] [--device cuda] [--precision 32|bf16-mixed]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from mmm.benchmarking import Runtime, add_size_arguments, chosen_sizes, matmul_flops_per_second
from mmm.masking import RandomMasking
from mmm.models import PatchDecoderConfig, TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.image import ImageTokenizer, patchify


@dataclass(frozen=True)
class Sizes:
    """The size both models share (each field is a ``--name`` option)."""

    image: int = 64
    patch: int = 8
    width: int = 256
    depth: int = 4
    heads: int = 4
    ffn: int = 1024
    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    ratio: float = 0.75
    batch_size: int = 64

    @property
    def patches(self) -> int:
        return (self.image // self.patch) ** 2


#: ``--preset``: named sizes; single options (``--width``...) override a preset's.
PRESETS = {
    "tiny": Sizes(16, 4, 16, 1, 2, 32, 16, 1, 2, batch_size=2),
    "default": Sizes(),
    "image-mae": Sizes(64, 8, 128, 4, 4, 512, 96, 2, 3),  # configs/image_mae.yaml
    "vit-b16": Sizes(224, 16, 768, 12, 12, 3072, 512, 8, 16),  # MAE's ViT-B/16 pre-training
}


def model_flops(sizes: Sizes) -> float:
    """Training FLOPs of one MAE step (3x forward, 2 per multiply-add): the patch embedding and
    encoder on the visible patches, the decoder on every patch, the prediction on the hidden
    ones; the same count for both models (they run the same algorithm)."""
    patches, pixels = sizes.patches, 3 * sizes.patch**2
    visible = patches - int(patches * sizes.ratio)

    def blocks(depth: int, width: int, ffn: int, length: int) -> float:
        return depth * length * (4 * width * width + 2 * width * ffn + 2 * length * width)

    forward = (
        visible * pixels * sizes.width
        + blocks(sizes.depth, sizes.width, sizes.ffn, visible)
        + visible * sizes.width * sizes.decoder_width
        + blocks(sizes.decoder_depth, sizes.decoder_width, 4 * sizes.decoder_width, patches)
        + (patches - visible) * sizes.decoder_width * pixels
    )
    return 6.0 * sizes.batch_size * forward


def build_mmm(sizes: Sizes) -> MaskedModelingModule:
    encoder = TransformerEncoder(
        dim=sizes.width, depth=sizes.depth, num_heads=sizes.heads, mlp_ratio=sizes.ffn / sizes.width
    )
    return MaskedModelingModule(
        ImageTokenizer(image_size=sizes.image, patch_size=sizes.patch, channels=3),
        encoder=encoder,
        masking=RandomMasking(ratio=sizes.ratio),
        decoder=PatchDecoderConfig(
            dim=sizes.decoder_width,
            depth=sizes.decoder_depth,
            num_heads=sizes.decoder_heads,
            norm_pix_loss=True,
        ),
    )


def build_hf(sizes: Sizes) -> ViTMAEForPreTraining:
    config = ViTMAEConfig(
        image_size=sizes.image,
        patch_size=sizes.patch,
        num_channels=3,
        hidden_size=sizes.width,
        num_hidden_layers=sizes.depth,
        num_attention_heads=sizes.heads,
        intermediate_size=sizes.ffn,
        decoder_hidden_size=sizes.decoder_width,
        decoder_num_hidden_layers=sizes.decoder_depth,
        decoder_num_attention_heads=sizes.decoder_heads,
        decoder_intermediate_size=4 * sizes.decoder_width,
        mask_ratio=sizes.ratio,
        norm_pix_loss=True,
    )
    return ViTMAEForPreTraining(config)


def mmm_batch(images: torch.Tensor, patch: int) -> dict[str, torch.Tensor]:
    """What ``ImageTokenizer.collate`` returns; patchifying is timed, as HF patchifies inside."""
    patches = patchify(images, patch)  # (B, L, P)
    present = torch.ones(patches.shape[:2], dtype=torch.bool, device=images.device)
    return {"patches": patches, "attention_mask": present, "maskable": present}


def loss_all_patches(module: MaskedModelingModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The MAE loss with the encoder run on every patch (hidden ones included), the decoder
    given only the visible states as usual: what visible-only encoding saves."""
    modality = module.modalities["image"]
    mask = module.choose_masks({"image": batch})["image"].mask
    hidden = module.encoder(modality.embed(batch, None), None)  # (B, L, D), every patch
    seen = batch["attention_mask"] & ~mask
    hidden = hidden * seen.unsqueeze(-1)  # the decoder reads visible states only
    pred = modality.predict(hidden, mask, seen, batch["attention_mask"])
    return modality.loss_and_metrics(pred, modality.targets(batch, mask))[0]


class TimedStep:
    """One training step (forward, backward, AdamW update) of one variant, timed per call."""

    def __init__(
        self,
        loss_fn: Callable[[], torch.Tensor],
        params: list[torch.nn.Parameter],
        runtime: Runtime,
    ):
        self.loss_fn = loss_fn
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        self.runtime = runtime
        self.times: list[float] = []

    def __call__(self, record: bool) -> None:
        start = time.perf_counter()
        with self.runtime.autocast():
            loss = self.loss_fn()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.runtime.synchronize()
        if record:
            self.times.append(time.perf_counter() - start)


def median_step_seconds(steps: dict[str, TimedStep], count: int, warmup: int) -> dict[str, float]:
    """Median step time of each variant. Variants take turns step by step, so that load from
    other processes on a shared machine falls on all of them alike."""
    for index in range(warmup + count):
        for step in steps.values():
            step(record=index >= warmup)
    return {name: statistics.median(step.times) for name, step in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["32", "bf16-mixed"], default="32")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument(
        "--gemm-size", type=int, default=2048, help="matrix side of the peak-rate measurement"
    )
    add_size_arguments(parser, PRESETS)
    args = parser.parse_args()
    sizes = chosen_sizes(args, PRESETS)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    runtime = Runtime(torch.device(args.device), args.precision)
    device = runtime.device
    peak = matmul_flops_per_second(runtime, size=args.gemm_size)
    images = torch.rand(sizes.batch_size, 3, sizes.image, sizes.image, device=device)
    mmm_model, hf_model = build_mmm(sizes).to(device), build_hf(sizes).to(device)
    mmm_model.train()
    hf_model.train()
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    print(f"parameters: mmm {count(mmm_model) / 1e6:.2f}M, HF ViTMAE {count(hf_model) / 1e6:.2f}M")
    print(
        f"batch {sizes.batch_size} of {sizes.image} px, {args.steps} timed steps after "
        f"{args.warmup}, {device}, precision {runtime.precision}, {torch.get_num_threads()} "
        f"threads; measured matmul rate {peak / 1e9:.1f} GFLOP/s"
    )

    steps = {
        "mmm MAE step": TimedStep(
            lambda: mmm_model.forward_masked(mmm_batch(images, sizes.patch)).loss,
            list(mmm_model.parameters()),
            runtime,
        ),
        "HF ViTMAEForPreTraining step": TimedStep(
            lambda: hf_model(pixel_values=images).loss, list(hf_model.parameters()), runtime
        ),
        "mmm step, encoder on all patches": TimedStep(
            lambda: loss_all_patches(mmm_model, mmm_batch(images, sizes.patch)),
            list(mmm_model.parameters()),
            runtime,
        ),
    }
    seconds = median_step_seconds(steps, args.steps, args.warmup)
    flops = model_flops(sizes)
    for name, value in seconds.items():
        mfu = f"MFU {flops / value / peak:5.1%}" if "all patches" not in name else ""
        print(f"{name:36s} {value * 1000:8.1f} ms  {mfu}")
    mmm_time = seconds["mmm MAE step"]
    print(f"HF / mmm: {seconds['HF ViTMAEForPreTraining step'] / mmm_time:.2f}x (target >= 1.3x)")
    print(
        "all patches / visible only: "
        f"{seconds['mmm step, encoder on all patches'] / mmm_time:.2f}x (target >= 2.5x)"
    )


if __name__ == "__main__":
    main()
