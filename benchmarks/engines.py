"""Runtime engines side by side: transformer forward latency and full generate time per engine.

    python benchmarks/engines.py [--model latte-t2v-small] [--frames 17] [--size 128] [--steps 10]

One random model folder (Latte-T2V preset + small causal VAE + the bundled MiniLM text encoder) is
exported to ONNX once, then every engine runs in this one process, interleaved round by round, so the
ratios compare runs made under the same machine load:

* ``torch``: eager PyTorch (float32 on CPU; bf16 on a GPU);
* ``compile``: regional torch.compile of the transformer blocks (compile time reported apart);
* ``compile frozen``: the whole transformer compiled with its weights frozen in as constants
  (``osp generate --engine compile --freeze``; compile time reported apart);
* ``onnx``: ONNX Runtime (CPU provider here), transformer and VAE decoder;
* on a GPU with tensorrt installed: ``trt`` engines from the osp-plugin ONNX and from the plain ONNX
  (TensorRT's own attention), fp16.

"forward" is one transformer call on a classifier-free-guidance batch (2); "generate" is prompt
encoding + sampling + VAE decode of one clip. Medians; results go to benchmarks/results/engines.*.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import machine_info, markdown_report, print_report, write_results

from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp.export.onnx import component_specs, export_onnx
from osp.export.runtime import CompiledEngine, OrtEngine, TorchEngine
from osp.pipelines.text_to_video import PipelineSpec, TextToVideo, load_pipeline
from osp.text import load_text_encoder
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE

PROMPT = "a red circle moving left on a black background"


def make_model(folder: Path, preset: str, frames: int, size: tuple[int, int], seed: int) -> Path:
    torch.manual_seed(seed)
    transformer = LatteT2V(LATTE_T2V_CONFIGS[preset].replace(caption_channels=384)).eval()
    for param in transformer.parameters():  # no zero-initialised layers: every op does real work
        param.data.normal_(0, 0.05)
    vae = CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-small"]).eval()
    spec = PipelineSpec(frames=frames, size=size, steps=10, guidance=4.5)
    return TextToVideo(transformer, vae, load_text_encoder("minilm"), spec).save_pretrained(folder)


def timed(fn: Callable[[], Any]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="osp-engines-"))
    model_dir = make_model(work / "model", args.model, args.frames, args.size, args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    export_start = time.perf_counter()
    export_onnx(model_dir, work / "onnx", components=["transformer", "vae_decoder"])
    export_s = time.perf_counter() - export_start

    pipe = load_pipeline(model_dir, device=device, dtype=dtype)
    assert isinstance(pipe, TextToVideo)
    (spec,) = component_specs(pipe, args.frames, args.size, ["transformer"])
    inputs = [t.to(device) for t in spec.make_inputs(spec.sample, seed=1)]
    inputs = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    x, t, cond = (
        inputs[0],
        inputs[1],
        {"encoder_hidden_states": inputs[2], "encoder_attention_mask": inputs[3]},
    )

    eager_copy = load_pipeline(model_dir, device=device, dtype=dtype).transformer
    onnx = OrtEngine(work / "onnx", model_dir, threads=args.threads)
    engines: dict[str, Any] = {"torch": TorchEngine(eager_copy), "onnx": onnx}
    frozen_copy = load_pipeline(model_dir, device=device, dtype=dtype).transformer
    engines["compile"] = CompiledEngine(pipe.transformer, dynamic=False)
    engines["compile frozen"] = CompiledEngine(frozen_copy, dynamic=False, freeze=True)
    denoisers = {name: engine.denoiser() for name, engine in engines.items()}
    compile_s: dict[str, float] = {}
    with torch.inference_mode():
        for name in ("compile", "compile frozen"):
            compile_s[name] = timed(lambda n=name: denoisers[n](x, t, cond))  # compiles
        reference = denoisers["torch"](x, t, cond).float()
        max_diff = {n: (d(x, t, cond).float() - reference).abs().max().item() for n, d in denoisers.items()}

    forward: dict[str, list[float]] = {name: [] for name in engines}
    generate: dict[str, list[float]] = {name: [] for name in engines}
    with torch.inference_mode():
        for _ in range(args.repeats):  # interleaved: every engine sees the same machine load
            for name, denoise in denoisers.items():
                forward[name].append(
                    statistics.median(timed(lambda d=denoise: d(x, t, cond)) for _ in range(5))
                )
        for name, engine in engines.items():  # warm-up: the sampler's timestep dtype may recompile once
            pipe.generate([PROMPT], steps=1, seed=0, denoiser=denoisers[name], decoder=engine.decoder())
        for _ in range(args.generate_repeats):
            for name, engine in engines.items():
                hooks = dict(denoiser=denoisers[name], decoder=engine.decoder())
                generate[name].append(
                    timed(lambda h=hooks: pipe.generate([PROMPT], steps=args.steps, seed=0, **h))
                )
    med_f = {n: statistics.median(v) for n, v in forward.items()}
    med_g = {n: statistics.median(v) for n, v in generate.items()}
    return {
        "model": args.model,
        "parameters": sum(p.numel() for p in pipe.transformer.parameters()),
        "video": f"{args.frames}x{args.size[0]}x{args.size[1]}",
        "latents": list(x.shape),
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "steps": args.steps,
        "onnx_export_s": export_s,
        "compile_s": compile_s,
        "forward_s": forward,
        "generate_s": generate,
        "median_forward_s": med_f,
        "median_generate_s": med_g,
        "speedup_forward_vs_torch": {n: med_f["torch"] / v for n, v in med_f.items()},
        "speedup_generate_vs_torch": {n: med_g["torch"] / v for n, v in med_g.items()},
        "max_abs_diff_forward_vs_torch": max_diff,
        "tensorrt": "not run: tensorrt is not installed here" if not _has_tensorrt() else "see trt rows",
    }


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="latte-t2v-small", choices=sorted(LATTE_T2V_CONFIGS))
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--generate-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="Threads for PyTorch and ONNX Runtime.")
    parser.add_argument("--note", default="", help="Said in the results, e.g. what else shared the machine.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.size = tuple(args.size)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    info = machine_info()
    header = [
        "engine",
        "forward ms",
        "forward vs torch",
        "generate s",
        "generate vs torch",
        "max |Δ| forward",
    ]
    rows = [
        [name, f"{result['median_forward_s'][name] * 1e3:.1f}", f"{result['speedup_forward_vs_torch'][name]:.2f}x",
         f"{result['median_generate_s'][name]:.2f}", f"{result['speedup_generate_vs_torch'][name]:.2f}x",
         f"{result['max_abs_diff_forward_vs_torch'][name]:.1e}"]
        for name in result["median_forward_s"]
    ]  # fmt: skip
    device = info.get("gpu") or f"{info.get('cpu')}, {info.get('usable_cores')} cores"
    notes = [
        f"Device: {device}; torch {torch.__version__}; {info.get('date')}.",
        f"{result['model']} ({result['parameters'] / 1e6:.2f}M parameters), causalvae-small decoder, "
        f"{result['video']} video, latents {result['latents']} (batch 2 = classifier-free guidance), "
        f"{result['dtype']}; generate = MiniLM prompt encoding + {result['steps']} DDIM steps + VAE decode.",
        f"Medians: forward of {args.repeats} rounds x 5 calls, generate of {args.generate_repeats} runs; engines "
        "interleaved round by round in one process, so the ratios compare runs under the same load.",
        f"One-off costs, not in the table: ONNX export {result['onnx_export_s']:.0f} s (transformer + VAE "
        f"decoder, with parity checks), torch.compile of the blocks {result['compile_s']['compile']:.0f} s, of the "
        f"whole model with frozen weights {result['compile_s']['compile frozen']:.0f} s.",
        f"TensorRT: {result['tensorrt']}.",
    ]
    if args.note:
        notes.append(args.note)
    title = "Engines: eager vs torch.compile (regional, frozen) vs ONNX Runtime"
    print_report(title, header, rows, notes)
    write_results(args.out, "engines", {"machine": info, "result": result, "notes": notes},
                  markdown_report(title, header, rows, notes))  # fmt: skip


if __name__ == "__main__":
    main()
