"""The release-size causal VAE (Open-Sora-Plan v1.0's 4x8x8) decoding a 65x512x512 clip on a CUDA GPU.

    python benchmarks/gpu_vae.py --out DIR [--budget-s 60]
    python benchmarks/gpu_vae.py --out DIR --smoke        # a tiny VAE on the CPU: checks the script

Decodes 1x4x17x64x64 latents (what Latte-XL/2 samples for 65 frames at 512x512) untiled and tiled (the
default tiles: 32 latents = 256 px with 8 of overlap, 9 latent frames with 2 of overlap), bf16, with
seeded random weights (time and memory do not depend on the values). Reports seconds per decode and the
peak GPU memory of each; an untiled decode that runs out of memory is recorded as such. Writes
``<out>/gpu_vae.json`` after every measurement.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import torch


def run(out: Path, budget_s: float, smoke: bool) -> dict[str, Any]:
    from osp.layers.tiling import TilingConfig
    from osp.vae.causal_vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE

    deadline = time.monotonic() + budget_s
    device, preset = ("cpu", "causalvae-tiny") if smoke else ("cuda", "causalvae-4x8x8")
    latent = (1, 4, 2, 8, 12) if smoke else (1, 4, 17, 64, 64)
    tiling = TilingConfig(latent_size=8, latent_overlap=2, latent_frames=2, latent_frame_overlap=1) if smoke \
        else TilingConfig()  # fmt: skip
    torch.manual_seed(0)
    vae = CausalVideoVAE(CAUSAL_VAE_CONFIGS[preset]).eval().to(device, torch.bfloat16)
    z = torch.randn(latent, device=device, dtype=torch.bfloat16)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    res: dict[str, Any] = {"gpu": gpu, "torch": torch.__version__, "preset": preset, "latents": list(latent),
                           "params_m": round(sum(p.numel() for p in vae.parameters()) / 1e6, 1), "decode": {}}  # fmt: skip
    for name, tiles in (("tiled", tiling), ("untiled", None)):
        if time.monotonic() > deadline:
            res["decode"][name] = "skipped: time budget"
            continue
        try:
            with torch.inference_mode():
                vae.decode_latents(z[:, :, :2, :8, :8])  # warm-up: cuDNN picks its convolution algorithms
                if device == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                video = vae.decode_latents(z, tiles)
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
            res["decode"][name] = {"s": round(seconds, 2), "peak_gib": None if peak is None else round(peak, 2),
                                   "video": list(video.shape)}  # fmt: skip
            del video
        except torch.OutOfMemoryError as err:
            res["decode"][name] = f"out of memory: {str(err)[:200]}"
        if device == "cuda":
            torch.cuda.empty_cache()
        print(name, res["decode"][name], flush=True)
        (out / "gpu_vae.json").write_text(json.dumps(res, indent=1))
    return res


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--budget-s", type=float, default=60.0, show_default=True)
@click.option("--smoke", is_flag=True, help="tiny VAE on the CPU, to check the script without a GPU")
def main(out: Path, budget_s: float, smoke: bool) -> None:
    if not smoke and not torch.cuda.is_available():
        click.echo("gpu_vae: no CUDA device; nothing measured")
        return
    out.mkdir(parents=True, exist_ok=True)
    run(out, budget_s, smoke)


if __name__ == "__main__":
    main()
