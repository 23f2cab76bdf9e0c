"""AOTInductor packages on a CUDA GPU: built by ``osp export --target compile --device cuda``, loaded as
``osp generate``'s compile engine, and timed against eager sampling.

    python benchmarks/gpu_aoti.py --out DIR
    python benchmarks/gpu_aoti.py --out DIR --smoke        # tiny presets on the CPU: checks the script

A class-conditioned pipeline (Latte-B/2 and the small causal VAE, seeded random weights; the speed does
not depend on the values) needs neither a text encoder nor a video file, so it runs on a bare GPU machine.
Its transformer and VAE decoder are exported as bf16 packages with dynamic shapes (the export checks them
against eager at a shape other than the traced one), then two class labels are sampled at 17x256x256
(10 steps, CFG) by eager PyTorch and by the packages. Reports the export time, each side's seconds per
clip (after one warm-up clip), their ratio and the largest latent difference. Writes ``<out>/gpu_aoti.json``
after every stage.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import torch


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Seeded random trainable weights (osp zero-initialises the adaLN and output layers, which would make
    every prediction zero); Latte's frozen sin-cos tables stay what they are."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.02)
    return model.eval()


def _timed(fn: Any, device: str) -> tuple[Any, float]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def run(out: Path, smoke: bool) -> dict[str, Any]:
    from osp.dit.latte import LATTE_CONFIGS, Latte
    from osp.export.aoti import export_compiled
    from osp.export.runtime import make_engine
    from osp.pipelines.text_to_video import ClassToVideo, PipelineSpec
    from osp.vae.causal_vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE

    device = "cpu" if smoke else "cuda"
    latte, vae_preset = ("latte-tiny", "causalvae-tiny") if smoke else ("latte-b/2", "causalvae-small")
    frames, size, steps = (9, (32, 32), 2) if smoke else (17, (256, 256), 10)
    precision, dtype = ("fp32", torch.float32) if smoke else ("bf16", torch.bfloat16)
    res: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch": torch.__version__,
        "model": f"{latte} + {vae_preset}",
        "clip": f"{frames}x{size[0]}x{size[1]}, {steps} steps, CFG, 2 labels",
        "precision": precision,
    }
    path = out / "gpu_aoti.json"

    def save() -> None:
        path.write_text(json.dumps(res, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        transformer = _randomise(Latte(LATTE_CONFIGS[latte]))
        vae = CausalVideoVAE(CAUSAL_VAE_CONFIGS[vae_preset]).eval()
        spec = PipelineSpec(kind="class-to-video", frames=frames, size=size, steps=steps)
        folder = ClassToVideo(transformer, vae, spec).save_pretrained(Path(tmp) / "c2v")
        checks: list[str] = []
        _, seconds = _timed(
            lambda: export_compiled(folder, Path(tmp) / "packages", precision=precision, device=device,
                                    components=("transformer", "vae_decoder"), report=checks.append),
            device,
        )  # fmt: skip
        res["export_s"] = round(seconds, 1)
        res["export_checks"] = checks
        save()
        print(f"export: {res['export_s']} s", *checks, sep="\n  ", flush=True)

        pipe = ClassToVideo.from_pretrained(folder, device=device, dtype=dtype)
        engine = make_engine("compile", pipe, engine_dir=Path(tmp) / "packages", model_dir=folder)
        sides = {"eager": {}, "aoti": {"denoiser": engine.denoiser(), "decoder": engine.decoder()}}
        latents = {}
        for name, kwargs in sides.items():
            with torch.inference_mode():
                pipe.generate([0, 1], seed=0, **kwargs)  # warm-up
                made, seconds = _timed(lambda kwargs=kwargs: pipe.generate([0, 1], seed=0, **kwargs), device)
            latents[name] = made.latents.float()
            res[f"{name}_s"] = round(seconds, 3)
            save()
            print(name, res[f"{name}_s"], "s per clip", flush=True)
        res["aoti_vs_eager"] = round(res["aoti_s"] / res["eager_s"], 3)
        res["latents_max_abs_diff"] = float((latents["aoti"] - latents["eager"]).abs().max())
        save()
    return res


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--smoke", is_flag=True, help="tiny presets on the CPU (checks the script)")
def main(out: Path, smoke: bool) -> None:
    if not smoke and not torch.cuda.is_available():
        click.echo("gpu_aoti: no CUDA device; nothing measured (--smoke runs tiny presets on the CPU)")
        return
    out.mkdir(parents=True, exist_ok=True)
    run(out, smoke)


if __name__ == "__main__":
    main()
