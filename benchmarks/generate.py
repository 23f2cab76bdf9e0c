"""Sampling time of osp vs diffusers' LattePipeline holding the same Latte-T2V weights.

    python benchmarks/generate.py [--models latte-t2v-tiny,latte-t2v-small] [--steps 50] [--repeats 3]

Both sides start from the same initial latents and the same caption embeddings (MiniLM states of one
prompt and of the empty negative prompt, passed to diffusers as prompt_embeds so that neither side
spends time in the text encoder), use the same DDIM scheduler settings, the same guidance scale and
the same number of steps, and stop at the latents (no VAE decode). Runs alternate between the two
sides; the table reports medians, the ratio osp / diffusers, and the max abs difference of the final
latents. Weights are diffusers' default random init (seeded), which has no zero-initialised layers.

Two more sides run the same osp model compiled (osp.export.compile): "osp compile", its repeated
blocks under torch.compile (what ``osp generate --engine compile`` runs), and "osp frozen", the whole
model compiled with Inductor freezing, weights folded in as constants (``--engine compile --freeze``).
Their compile time is spent in a warm-up run and reported apart.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import machine_info, markdown_table, print_report, write_results
from diffusers import LattePipeline, LatteTransformer3DModel
from rich.console import Console

from osp.diffusion import make_scheduler, sample
from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V, LatteT2VConfig
from osp.export.compile import compile_blocks, compile_frozen
from osp.pipelines.text_to_video import model_denoiser
from osp.text import load_text_encoder

PROMPT = "a red circle moving left on a black background"
# (latent frames, latent height, latent width): what 17 frames at 64x64 / 128x128 px give through 4x8x8.
SHAPES = {"latte-t2v-tiny": (5, 8, 8), "latte-t2v-small": (5, 16, 16)}


def diffusers_transformer(cfg: LatteT2VConfig, frames: int) -> LatteTransformer3DModel:
    return LatteTransformer3DModel(
        num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.num_layers,
        cross_attention_dim=cfg.cross_attention_dim, attention_bias=cfg.attention_bias, sample_size=cfg.sample_size,
        patch_size=cfg.patch_size, activation_fn=cfg.activation_fn, num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=cfg.norm_elementwise_affine, norm_eps=cfg.norm_eps,
        caption_channels=cfg.caption_channels, video_length=frames,
    )  # fmt: skip


def build(name: str, seed: int) -> tuple[LatteT2V, LattePipeline]:
    frames = SHAPES[name][0]
    cfg = LATTE_T2V_CONFIGS[name].replace(video_length=frames, caption_channels=384)  # MiniLM states
    torch.manual_seed(seed)
    reference = diffusers_transformer(cfg, frames).eval()  # diffusers' default init: no zero layers
    ours = LatteT2V.from_state_dict(cfg, reference.state_dict())
    scheduler = make_scheduler("ddim", 50)  # the same DDIM settings osp samples with
    pipe = LattePipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=reference, scheduler=scheduler
    )
    pipe.set_progress_bar_config(disable=True)
    return ours, pipe


def run_case(name: str, steps: int, guidance: float, repeats: int, seed: int) -> dict[str, Any]:
    ours, pipe = build(name, seed)
    encoder = load_text_encoder("minilm")
    cond = encoder.encode([PROMPT])
    uncond = encoder.null(1)
    frames, h, w = SHAPES[name]
    noise = torch.randn(1, 4, frames, h, w, generator=torch.Generator().manual_seed(seed))
    # diffusers' LattePipeline passes no caption mask to the transformer, so neither does osp here.
    cond_kw = {"encoder_hidden_states": cond.states}
    uncond_kw = {"encoder_hidden_states": uncond.states}
    p = ours.config.patch_size

    compiled = compile_blocks(copy.deepcopy(ours), dynamic=False)
    frozen = compile_frozen(copy.deepcopy(ours), dynamic=False)

    def run_osp(model: torch.nn.Module = ours) -> torch.Tensor:
        return sample(model_denoiser(model), noise, sampler="ddim", steps=steps, cond=cond_kw, uncond=uncond_kw,
                      guidance_scale=guidance, learned_sigma=True)  # fmt: skip

    def run_compiled() -> torch.Tensor:
        return run_osp(compiled)

    def run_frozen() -> torch.Tensor:
        return run_osp(frozen)

    def run_diffusers() -> torch.Tensor:
        pipe.scheduler = make_scheduler("ddim", steps)
        out = pipe(
            prompt=None, negative_prompt=None, prompt_embeds=cond.states, negative_prompt_embeds=uncond.states, num_inference_steps=steps,
            guidance_scale=guidance, video_length=frames, height=h * 8, width=w * 8, latents=noise.clone(),
            output_type="latent", return_dict=False, mask_feature=False, clean_caption=False,
        )  # fmt: skip
        return out[0]

    sides = (("diffusers", run_diffusers), ("osp", run_osp), ("osp compile", run_compiled),
             ("osp frozen", run_frozen))  # fmt: skip
    times: dict[str, list[float]] = {label: [] for label, _ in sides}
    results: dict[str, torch.Tensor] = {}
    compile_s: dict[str, float] = {}
    with torch.inference_mode():
        run_osp(), run_diffusers()  # warm-up: allocator, oneDNN primitives
        for label, fn in sides[2:]:  # compiles
            start = time.perf_counter()
            fn()
            compile_s[label] = time.perf_counter() - start
        for _ in range(repeats):
            for label, fn in sides:
                start = time.perf_counter()
                results[label] = fn()
                times[label].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name,
        "parameters": sum(t.numel() for t in ours.parameters()),
        "latents": [1, 4, frames, h, w],
        "pixels": f"{(frames - 1) * 4 + 1}x{h * 8}x{w * 8}",
        "patch": p,
        "steps": steps,
        "guidance": guidance,
        "seconds": times,
        "median_s": med,
        "ratio_osp_over_diffusers": med["osp"] / med["diffusers"],
        "ratio_compiled_over_diffusers": med["osp compile"] / med["diffusers"],
        "ratio_frozen_over_diffusers": med["osp frozen"] / med["diffusers"],
        "compile_and_first_run_s": compile_s,
        "max_abs_diff": (results["osp"] - results["diffusers"]).abs().max().item(),
        "max_abs_diff_compiled": (results["osp compile"] - results["diffusers"]).abs().max().item(),
        "max_abs_diff_frozen": (results["osp frozen"] - results["diffusers"]).abs().max().item(),
        "latent_scale": results["diffusers"].abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="latte-t2v-tiny,latte-t2v-small")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="said in the results, e.g. what else shared the machine")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    console = Console()
    cases = []
    for name in args.models.split(","):
        console.print(f"[bold]{name}[/bold]: {args.repeats} runs per side, {args.steps} DDIM steps")
        cases.append(run_case(name, args.steps, args.guidance, args.repeats, args.seed))
    header = [
        "model", "params", "video", "steps", "diffusers s", "osp s", "osp / diffusers", "max |Δ| latents",
        "osp compile s", "compile / diffusers", "max |Δ| compiled", "osp frozen s", "frozen / diffusers",
        "max |Δ| frozen",
    ]  # fmt: skip
    rows = [
        [c["model"], f"{c['parameters'] / 1e6:.2f}M", c["pixels"], str(c["steps"]), f"{c['median_s']['diffusers']:.2f}",
         f"{c['median_s']['osp']:.2f}", f"{c['ratio_osp_over_diffusers']:.2f}", f"{c['max_abs_diff']:.1e}",
         f"{c['median_s']['osp compile']:.2f}", f"{c['ratio_compiled_over_diffusers']:.2f}",
         f"{c['max_abs_diff_compiled']:.1e}", f"{c['median_s']['osp frozen']:.2f}",
         f"{c['ratio_frozen_over_diffusers']:.2f}", f"{c['max_abs_diff_frozen']:.1e}"]
        for c in cases
    ]  # fmt: skip
    info = machine_info()
    notes = [
        f"Machine: {info.get('cpu')}, {info.get('usable_cores')} cores; torch {torch.__version__}; {info.get('date')}.",
        f"Guidance {args.guidance} (batched cond + uncond), DDIM, learned sigma; medians of {args.repeats} "
        "alternating runs after one warm-up each; sampling only (latents out, no text encoding, no VAE).",
        "Both sides run the same weights from the same initial latents and caption states; 'max |Δ|' is the "
        "largest difference of the final latents (float32 rounding).",
        "osp compile: the blocks under torch.compile (inductor, static shapes); osp frozen: the whole model "
        "compiled with inductor freezing (weights as constants). Compile + first run, outside the timed runs: "
        + "; ".join(
            f"{c['model']} " + ", ".join(f"{k} {v:.0f} s" for k, v in c["compile_and_first_run_s"].items())
            for c in cases
        )
        + ".",
    ]
    if args.note:
        notes.append(args.note)
    print_report("Sampling: osp vs diffusers LattePipeline", header, rows, notes)
    markdown = "# Sampling: osp vs diffusers LattePipeline\n\n" + markdown_table(header, rows) + "\n\n"
    markdown += "\n".join(f"- {n}" for n in notes) + "\n"
    write_results(args.out, "generate", {"machine": info, "cases": cases, "notes": notes}, markdown)


if __name__ == "__main__":
    main()
