"""Runtime engines side by side: transformer forward latency and full generate time per engine.

    python benchmarks/engines.py [--model latte-t2v-small] [--frames 17] [--size 128] [--steps 10]

One random model folder (Latte-T2V preset + small causal VAE + the bundled MiniLM text encoder) is
exported to ONNX once, then every engine runs in this one process, interleaved round by round, so the
ratios compare runs made under the same machine load:

* ``torch``: eager PyTorch (float32 on CPU; bf16 on a GPU);
* ``compile``: regional torch.compile of the transformer blocks (compile time reported apart);
* ``compile frozen``: the whole transformer and the VAE decoder compiled with their weights frozen
  in as constants (``osp generate --engine compile --freeze``; compile time reported apart);
* ``compiled package``: the same frozen compile done ahead of time (``osp export --target compile``,
  AOTInductor, dynamic shapes) and loaded from its folder (``osp generate --engine compile
  --engine-dir``): export and load times reported apart;
* ``onnx``: ONNX Runtime (CPU provider here), transformer and VAE decoder;
* on CPU, int8: ``onnx int8`` (``osp export --target onnx --precision int8``: the transformer's MatMul
  weights in int8 per output channel, activations quantized on every call, VAE decoder fp32) against
  ``torch int8``, eager PyTorch with the same dynamic quantization of the transformer's Linear layers
  (``torch.ao.quantization.quantize_dynamic``, per channel), its same-precision baseline;
* on a CPU with bf16 matrix instructions (AVX512-BF16, AMX): ``torch bf16`` and ``compile frozen
  bf16`` with the transformer in bf16 as ``osp generate --dtype bf16`` runs it (text encoder and VAE
  stay float32), and ``compiled package bf16``, whose VAE decoder is compiled in bf16 too; each
  engine's speed-up is quoted against eager PyTorch at the same transformer precision (the engine's
  own gain) and against eager float32;
* on a GPU with tensorrt installed: ``trt`` engines from the osp-plugin ONNX and from the plain ONNX
  (TensorRT's own attention), fp16.

"forward" is one transformer call on a classifier-free-guidance batch (2); "generate" is prompt
encoding + sampling + VAE decode of one clip; "VAE decode" is that decode alone (the engine's own
decoder where it has one, else the pipeline's eager VAE). Medians; results go to
benchmarks/results/engines.*.
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
from osp.export.aoti import export_compiled
from osp.export.onnx import component_specs, export_onnx
from osp.export.runtime import AotiEngine, CompiledEngine, OrtEngine, TorchEngine
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


def torch_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Eager PyTorch's dynamic int8 quantization of every Linear (weights per output channel,
    activations per call): the same scheme as the int8 ONNX export, run by PyTorch's own kernels."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao
        warnings.simplefilter("ignore")
        # The timestep embedder reads its Linear's weight dtype, which a quantized Linear does not have;
        # it runs once per call on a (batch, 256) input, so leaving it in float32 costs nothing measurable.
        linears = {
            name: per_channel_dynamic_qconfig
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and "timestep_embedder" not in name
        }
        return quantize_dynamic(model, linears, inplace=True)


def cpu_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 pays."""
    import torch.cpu

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu helpers since torch 2.3
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model_dir = make_model(work / "model", args.model, args.frames, args.size, args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    export_start = time.perf_counter()
    export_onnx(model_dir, work / "onnx", components=["transformer", "vae_decoder"])
    export_s = time.perf_counter() - export_start
    int8_export_s = None
    if device == "cpu" and args.int8:
        start = time.perf_counter()
        export_onnx(
            model_dir, work / "onnx-int8", components=["transformer", "vae_decoder"], precision="int8"
        )
        int8_export_s = time.perf_counter() - start
    has_bf16 = cpu_bf16() if device == "cpu" else None
    bf16_rows = bool(has_bf16 and args.bf16)  # the same engines at the other precision the CPU runs natively
    packages = {"fp32": work / "compiled"}
    if bf16_rows:
        packages["bf16"] = work / "compiled-bf16"
    package_s: dict[str, float] = {}
    for precision, folder in packages.items():
        start = time.perf_counter()
        export_compiled(model_dir, folder, precision=precision, device=device)  # type: ignore[arg-type]
        package_s[precision] = time.perf_counter() - start

    # Every engine gets its own copy of the pipeline in its precision; the sampler, VAE and text
    # encoder of that copy run the generate timings, so a row differs from its baseline only by engine.
    def pipeline(precision: torch.dtype) -> TextToVideo:
        pipe = load_pipeline(model_dir, device=device, dtype=precision)
        assert isinstance(pipe, TextToVideo)
        return pipe

    rows: dict[str, tuple[torch.dtype, Any, TextToVideo]] = {}
    pipe = pipeline(dtype)
    rows["torch"] = (dtype, TorchEngine(pipe.transformer), pipe)
    rows["onnx"] = (dtype, OrtEngine(work / "onnx", model_dir, threads=args.threads), pipeline(dtype))
    if int8_export_s is not None:
        eager_int8 = pipeline(dtype)
        eager_int8.transformer = torch_int8(eager_int8.transformer)
        rows["torch int8"] = (dtype, TorchEngine(eager_int8.transformer), eager_int8)
        rows["onnx int8"] = (
            dtype,
            OrtEngine(work / "onnx-int8", model_dir, threads=args.threads),
            pipeline(dtype),
        )
    regional = pipeline(dtype)
    rows["compile"] = (dtype, CompiledEngine(regional.transformer, dynamic=False), regional)
    frozen = pipeline(dtype)
    rows["compile frozen"] = (
        dtype,
        CompiledEngine(frozen.transformer, dynamic=False, freeze=True, vae=frozen.vae),
        frozen,
    )
    rows["compiled package"] = (
        dtype,
        AotiEngine(packages["fp32"], model_dir, device=device),
        pipeline(dtype),
    )
    if bf16_rows:
        low = pipeline(torch.bfloat16)
        rows["torch bf16"] = (torch.bfloat16, TorchEngine(low.transformer), low)
        low_frozen = pipeline(torch.bfloat16)
        engine = CompiledEngine(low_frozen.transformer, dynamic=False, freeze=True, vae=low_frozen.vae)
        rows["compile frozen bf16"] = (torch.bfloat16, engine, low_frozen)
        packaged = AotiEngine(packages["bf16"], model_dir, device=device)
        rows["compiled package bf16"] = (torch.bfloat16, packaged, pipeline(torch.bfloat16))
    baseline = {
        name: "torch bf16" if precision != dtype else "torch int8" if name.endswith("int8") else "torch"
        for name, (precision, _, _) in rows.items()
    }

    (spec,) = component_specs(pipe, args.frames, args.size, ["transformer"])
    sample = [tensor.to(device) for tensor in spec.make_inputs(spec.sample, seed=1)]

    def inputs(precision: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x, t, states, mask = (
            tensor.to(precision) if tensor.is_floating_point() else tensor for tensor in sample
        )
        return x, t, {"encoder_hidden_states": states, "encoder_attention_mask": mask}

    load_s: dict[str, float] = {}
    for name, (_, engine, _) in rows.items():
        if isinstance(engine, AotiEngine):  # loading the packages is all a new process pays
            load_s[name] = timed(lambda e=engine: (e.model("transformer"), e.model("vae_decoder")))
    calls = {name: (engine.denoiser(), inputs(precision)) for name, (precision, engine, _) in rows.items()}
    compile_s: dict[str, float] = {}
    with torch.inference_mode():
        for name, (denoise, (x, t, cond)) in calls.items():
            if isinstance(rows[name][1], CompiledEngine):
                compile_s[name] = timed(lambda d=denoise, a=(x, t, cond): d(*a))  # compiles
        outputs = {name: denoise(*args_).float() for name, (denoise, args_) in calls.items()}
    max_diff = {name: (out - outputs["torch"]).abs().max().item() for name, out in outputs.items()}
    max_diff_baseline = {
        name: (out - outputs[baseline[name]]).abs().max().item() for name, out in outputs.items()
    }

    forward: dict[str, list[float]] = {name: [] for name in rows}
    generate: dict[str, list[float]] = {name: [] for name in rows}
    decoded: dict[str, list[float]] = {name: [] for name in rows}  # the VAE decode inside generate
    with torch.inference_mode():
        for _ in range(args.repeats):  # interleaved: every engine sees the same machine load
            for name, (denoise, args_) in calls.items():
                forward[name].append(
                    statistics.median(timed(lambda d=denoise, a=args_: d(*a)) for _ in range(5))
                )
        hooks = {
            name: dict(denoiser=calls[name][0], decoder=engine.decoder())
            for name, (_, engine, _) in rows.items()
        }
        for name, hook in hooks.items():  # an engine's own decoder compiles on its first clip
            if hook["decoder"] is not None and isinstance(rows[name][1], CompiledEngine):
                latents = calls[name][1][0][:1]
                compile_s[f"{name} (VAE decoder)"] = timed(lambda h=hook, z=latents: h["decoder"](z))
        for name, (_, _, owner) in rows.items():  # warm-up: the sampler's timestep dtype may recompile once
            owner.generate([PROMPT], steps=1, seed=0, **hooks[name])
        latents = calls["torch"][1][0][:1].float()  # one clip's latents, as a sampler ends with

        def decode(name: str) -> Callable[[], Any]:
            owner, own = rows[name][2], hooks[name]["decoder"]
            if own is not None:
                return lambda: own(latents)
            # cast outside the timing: generate casts once too
            cast = latents.to(next(owner.vae.parameters()).dtype)
            return lambda: owner.vae.decode_latents(cast)

        for _ in range(args.generate_repeats):
            for name, (_, _, owner) in rows.items():
                generate[name].append(
                    timed(lambda o=owner, h=hooks[name]: o.generate([PROMPT], steps=args.steps, seed=0, **h))
                )
                decoded[name].append(timed(decode(name)))
    med_f = {n: statistics.median(v) for n, v in forward.items()}
    med_g = {n: statistics.median(v) for n, v in generate.items()}
    med_d = {n: statistics.median(v) for n, v in decoded.items()}
    x = calls["torch"][1][0]
    return {
        "model": args.model,
        "parameters": sum(p.numel() for p in pipe.transformer.parameters()),
        "video": f"{args.frames}x{args.size[0]}x{args.size[1]}",
        "latents": list(x.shape),
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "dtypes": {name: str(precision).removeprefix("torch.") for name, (precision, _, _) in rows.items()},
        "baseline": baseline,
        "cpu_bf16": has_bf16,
        "steps": args.steps,
        "onnx_export_s": export_s,
        "onnx_int8_export_s": int8_export_s,
        "package_export_s": package_s,
        "package_load_s": load_s,
        "compile_s": compile_s,
        "forward_s": forward,
        "generate_s": generate,
        "median_forward_s": med_f,
        "median_generate_s": med_g,
        "decode_s": decoded,
        "median_decode_s": med_d,
        "speedup_decode_vs_torch": {n: med_d["torch"] / v for n, v in med_d.items()},
        "speedup_forward_vs_torch": {n: med_f["torch"] / v for n, v in med_f.items()},
        "speedup_generate_vs_torch": {n: med_g["torch"] / v for n, v in med_g.items()},
        "speedup_forward_vs_baseline": {n: med_f[baseline[n]] / v for n, v in med_f.items()},
        "speedup_generate_vs_baseline": {n: med_g[baseline[n]] / v for n, v in med_g.items()},
        "max_abs_diff_forward_vs_torch": max_diff,
        "max_abs_diff_forward_vs_baseline": max_diff_baseline,
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
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="On a CPU with bf16 matrix instructions, also time eager and frozen compile in bf16.",
    )
    parser.add_argument(
        "--int8",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="On CPU, also time the int8 ONNX export against eager PyTorch's dynamic int8 quantization.",
    )
    parser.add_argument("--threads", type=int, default=None, help="Threads for PyTorch and ONNX Runtime.")
    parser.add_argument("--note", default="", help="Said in the results, e.g. what else shared the machine.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.size = tuple(args.size)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="osp-engines-") as work:  # models, exports, clips: removed after
        result = run(args, Path(work))
    info = machine_info()
    ref = result["dtype"]
    header = [
        "engine",
        "dtype",
        "forward ms",
        "forward vs eager (same dtype)",
        f"forward vs eager {ref}",
        "generate s",
        "generate vs eager (same dtype)",
        f"generate vs eager {ref}",
        "VAE decode s",
        f"VAE decode vs eager {ref}",
        "max |Δ| forward vs eager (same dtype)",
        f"max |Δ| forward vs eager {ref}",
    ]
    rows = [
        [name, result["dtypes"][name], f"{result['median_forward_s'][name] * 1e3:.1f}",
         f"{result['speedup_forward_vs_baseline'][name]:.2f}x", f"{result['speedup_forward_vs_torch'][name]:.2f}x",
         f"{result['median_generate_s'][name]:.2f}",
         f"{result['speedup_generate_vs_baseline'][name]:.2f}x", f"{result['speedup_generate_vs_torch'][name]:.2f}x",
         f"{result['median_decode_s'][name]:.2f}", f"{result['speedup_decode_vs_torch'][name]:.2f}x",
         f"{result['max_abs_diff_forward_vs_baseline'][name]:.1e}", f"{result['max_abs_diff_forward_vs_torch'][name]:.1e}"]
        for name in result["median_forward_s"]
    ]  # fmt: skip
    device = info.get("gpu") or f"{info.get('cpu')}, {info.get('usable_cores')} cores"
    notes = [
        f"Device: {device}; torch {torch.__version__}; {info.get('date')}.",
        f"{result['model']} ({result['parameters'] / 1e6:.2f}M parameters), causalvae-small decoder, "
        f"{result['video']} video, latents {result['latents']} (batch 2 = classifier-free guidance), "
        f"{result['dtype']} unless the row says bf16; generate = MiniLM prompt encoding + {result['steps']} DDIM steps + VAE decode.",
        f"Medians: forward of {args.repeats} rounds x 5 calls, generate and VAE decode of {args.generate_repeats} runs; engines "
        "interleaved round by round in one process, so the ratios compare runs under the same load.",
        f"One-off costs, not in the table: ONNX export {result['onnx_export_s']:.0f} s (transformer + VAE "
        "decoder, with parity checks); torch.compile (blocks for `compile`, the whole model with frozen weights "
        "for `compile frozen`): "
        + ", ".join(f"{name} {sec:.0f} s" for name, sec in result["compile_s"].items())
        + "; compiled packages (AOTInductor, transformer + VAE decoder, with parity checks): export "
        + ", ".join(f"{name} {sec:.0f} s" for name, sec in result["package_export_s"].items())
        + ", load (transformer + decoder) "
        + ", ".join(f"{name} {sec:.2f} s" for name, sec in result["package_load_s"].items())
        + ".",
        f"TensorRT: {result['tensorrt']}.",
    ]
    if result["onnx_int8_export_s"] is not None:
        notes.append(
            "int8 rows: `onnx int8` is `osp export --target onnx --precision int8` (transformer MatMul weights int8 "
            "per output channel, activations quantized on every call; VAE decoder float32), exported in "
            f"{result['onnx_int8_export_s']:.0f} s; `torch int8` is eager PyTorch with the same dynamic quantization "
            "of the transformer's Linear layers, its same-precision baseline. Their max |Δ| vs eager float32 is the "
            "quantization error, not an engine error."
        )
    if result["cpu_bf16"] is not None and (not result["cpu_bf16"] or "torch bf16" in result["dtypes"]):
        notes.append(
            "bf16 rows: the transformer in bf16 as `osp generate --dtype bf16` loads it (text encoder and VAE stay "
            "float32, so `torch bf16` and `compile frozen bf16` decode in float32), compared with eager bf16; "
            "`compiled package bf16` also has its VAE decoder compiled in bf16, so its generate includes a bf16 "
            "decode. This CPU "
            + (
                "has native bf16 matrix instructions (AVX512-BF16/AMX)."
                if result["cpu_bf16"]
                else "lacks native bf16 matrix instructions, so bf16 rows were not run."
            )
        )
    if args.note:
        notes.append(args.note)
    title = (
        "Engines: eager vs torch.compile (regional, frozen, ahead-of-time package) vs ONNX Runtime, "
        "same-precision ratios"
    )
    print_report(title, header, rows, notes)
    write_results(args.out, "engines", {"machine": info, "result": result, "notes": notes},
                  markdown_report(title, header, rows, notes))  # fmt: skip


if __name__ == "__main__":
    main()
