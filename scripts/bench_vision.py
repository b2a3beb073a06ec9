"""Benchmark (not a test): mmm's MAE training step against Hugging Face ``ViTMAEForPreTraining``.

Both models have the same size (by default image 64, patch 8, width 256, 4 layers, 4 heads,
FFN 1024, decoder 128 wide x 2 layers, mask ratio 0.75, per-patch normalized targets; options
change them) and run in one process on the same batch, fp32, on CPU by default. A step is forward, backward and an AdamW
update; the reported time is the median over ``--steps`` steps after ``--warmup`` steps, the
variants taking turns step by step (fair on a shared, noisy machine).
Also compares mmm's visible-only encoding against encoding every patch at the same ratio.

    python scripts/bench_vision.py --steps 10 --warmup 3 [--width 256 --depth 4 --heads 4 ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

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

    def __init__(self, loss_fn: Callable[[], torch.Tensor], params: list[torch.nn.Parameter]):
        self.loss_fn = loss_fn
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        self.times: list[float] = []

    def __call__(self, record: bool) -> None:
        start = time.perf_counter()
        loss = self.loss_fn()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if loss.device.type == "cuda":
            torch.cuda.synchronize()
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
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    for size in fields(Sizes):
        parser.add_argument(
            f"--{size.name.replace('_', '-')}", type=type(size.default), default=size.default
        )
    args = parser.parse_args()
    sizes = Sizes(**{size.name: getattr(args, size.name) for size in fields(Sizes)})
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    device = torch.device(args.device)
    images = torch.rand(args.batch_size, 3, sizes.image, sizes.image, device=device)
    mmm_model, hf_model = build_mmm(sizes).to(device), build_hf(sizes).to(device)
    mmm_model.train()
    hf_model.train()
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    print(f"parameters: mmm {count(mmm_model) / 1e6:.2f}M, HF ViTMAE {count(hf_model) / 1e6:.2f}M")
    print(
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, {device}, "
        f"{torch.get_num_threads()} threads"
    )

    steps = {
        "mmm MAE step": TimedStep(
            lambda: mmm_model.forward_masked(mmm_batch(images, sizes.patch)).loss,
            list(mmm_model.parameters()),
        ),
        "HF ViTMAEForPreTraining step": TimedStep(
            lambda: hf_model(pixel_values=images).loss, list(hf_model.parameters())
        ),
        "mmm step, encoder on all patches": TimedStep(
            lambda: loss_all_patches(mmm_model, mmm_batch(images, sizes.patch)),
            list(mmm_model.parameters()),
        ),
    }
    seconds = median_step_seconds(steps, args.steps, args.warmup)
    for name, value in seconds.items():
        print(f"{name:36s} {value * 1000:8.1f} ms")
    mmm_time = seconds["mmm MAE step"]
    print(f"HF / mmm: {seconds['HF ViTMAEForPreTraining step'] / mmm_time:.2f}x (target >= 1.3x)")
    print(
        "all patches / visible only: "
        f"{seconds['mmm step, encoder on all patches'] / mmm_time:.2f}x (target >= 2.5x)"
    )


if __name__ == "__main__":
    main()
