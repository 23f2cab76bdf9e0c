"""TensorRT engines from osp's ONNX exports (TensorRT 10.x Python API), and a runner for them.

Two routes, same builder:

* ``trt`` flavour ONNX: attention is the ``osp::attention`` node; the parser maps it to osp's Triton
  plugin (``osp.kernels.trt_plugin``), which must be registered in every process that builds or loads.
* ``ort`` flavour ONNX: stock operators; TensorRT fuses attention itself. Opset 18 is used by default
  for this route: the decomposed MatMul-Softmax-MatMul pattern is what TensorRT's fusion recognises.

Each engine is written with a key record (:mod:`osp.export.cache`); loading an engine recomputes the
key for the current request and refuses a mismatch. tensorrt is imported lazily, only here.

Written against the documented TensorRT 10 API; osp's CI has no TensorRT, so this module is exercised
only on a GPU machine with tensorrt installed (the tests skip otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from osp.errors import ConfigError
from osp.export.cache import (
    EngineKey,
    Profiles,
    check_engine,
    engine_key,
    graph_hash,
    plugin_hash,
    write_record,
)
from osp.export.manifest import ExportError

WORKSPACE_BYTES = 8 << 30


def require_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise ConfigError(
            "--target tensorrt: TensorRT is not installed here (pip install tensorrt on a CUDA machine); "
            "use --target onnx or --target compile"
        ) from None
    if not torch.cuda.is_available():
        raise ConfigError("--target tensorrt: needs a CUDA GPU; none is visible")
    return tensorrt


def register_plugins(flavour: str) -> None:
    """TensorRT's own plugin library always; osp's attention plugin for the ``trt`` flavour."""
    trt = require_tensorrt()
    trt.init_libnvinfer_plugins(trt.Logger(trt.Logger.WARNING), "")
    if flavour == "trt":
        from osp.kernels.trt_plugin import register_tensorrt_plugins

        register_tensorrt_plugins()


def current_key(
    onnx_path: Path, weights_sha256: str, precision: str, profiles: Profiles, flavour: str
) -> EngineKey:
    """The key an engine for this request must carry (needs tensorrt and the GPU for their names)."""
    trt = require_tensorrt()
    plugin = "none"
    if flavour == "trt":
        from osp.kernels import PLUGIN_SOURCE_FILES

        plugin = plugin_hash(PLUGIN_SOURCE_FILES)
    return engine_key(
        graph_sha256=graph_hash(onnx_path), weights_sha256=weights_sha256, precision=precision,
        profiles=profiles, tensorrt_version=trt.__version__, gpu=torch.cuda.get_device_name(0),
        plugin_sha256=plugin,
    )  # fmt: skip


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    key: EngineKey,
    precision: str,
    profiles: Profiles,
    timing_cache: Path | None = None,
) -> Path:
    """Parse ``onnx_path``, build with one optimization profile per entry of ``profiles``, write the
    serialized engine and its key record. The timing cache is read and written back when given."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path.stem}: TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"{onnx_path.stem}: TensorRT failed to build an engine (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    write_record(engine_path, key)
    return engine_path


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT64": torch.int64,
                 "INT32": torch.int32, "BOOL": torch.bool}  # fmt: skip


class TrtRunner:
    """Runs one engine on torch CUDA tensors; the key is checked before the engine is deserialised."""

    def __init__(
        self, engine_path: Path, expected: EngineKey, rebuild: str, cuda_graph: bool = False
    ) -> None:
        check_engine(engine_path, expected, rebuild)
        trt = require_tensorrt()
        self.trt = trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise ExportError(f"{engine_path}: TensorRT could not load this engine; rebuild with: {rebuild}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.stream = torch.cuda.Stream()
        self.cuda_graph = cuda_graph
        self._graph: tuple[tuple[tuple[int, ...], ...], torch.cuda.CUDAGraph, dict[str, torch.Tensor],
                           dict[str, torch.Tensor]] | None = None  # fmt: skip

    def _dtype(self, name: str) -> torch.dtype:
        return _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]

    def _launch(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name in self.inputs:
            self.context.set_input_shape(name, tuple(feeds[name].shape))
            self.context.set_tensor_address(name, feeds[name].data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT execution failed")
        return outs

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feeds = {n: inputs[n].to(device="cuda", dtype=self._dtype(n)).contiguous() for n in self.inputs}
        shapes = tuple(tuple(feeds[n].shape) for n in self.inputs)
        with torch.cuda.stream(self.stream):
            if not self.cuda_graph:
                outs = self._launch(feeds)
            else:
                # Static shapes: capture once, then replay (no per-call launch overhead). A new shape
                # captures again; the static input buffers are refilled in place before each replay.
                if self._graph is None or self._graph[0] != shapes:
                    static_in = {n: t.clone() for n, t in feeds.items()}
                    self._launch(static_in)  # TensorRT allocates lazily on the first run: not captured
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self.stream):
                        static_out = self._launch(static_in)
                    self._graph = (shapes, graph, static_in, static_out)
                _, graph, static_in, static_out = self._graph
                for n, t in feeds.items():
                    static_in[n].copy_(t)
                graph.replay()
                outs = {n: t.clone() for n, t in static_out.items()}
        self.stream.synchronize()
        return outs


def engine_name(component: str, precision: str) -> str:
    return f"{component}.{precision}.engine"


def rebuild_command(
    model_dir: Path, out: Path, flavour: str, precision: str, extra: Sequence[str] = ()
) -> str:
    return " ".join(["osp export", f"--model {model_dir}", "--target tensorrt", f"--flavour {flavour}",
                     f"--precision {precision}", f"--out {out}", *extra])  # fmt: skip


def export_tensorrt(
    model_dir: str | Path,
    out: str | Path,
    *,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    flavour: str = "trt",
    precision: str = "fp16",
    opset: int | None = None,
    components: Sequence[str] = ("transformer", "vae_decoder"),
    timing_cache: Path | None = None,
    report: Any = None,
    finishers: dict[str, str | Path] | None = None,
    upscale_denoise: float | None = None,
    upscale_denoise_model: str | Path | None = None,
) -> Any:
    """ONNX export, then one engine per component, each checked against eager PyTorch on the GPU.
    ``finishers``, ``upscale_denoise``, ``upscale_denoise_model``: as :func:`osp.export.onnx.export_onnx`'s."""
    import json

    from osp import __version__
    from osp.export.manifest import Manifest, staged_folder, weights_hash, write_manifest
    from osp.export.onnx import compare, component_specs, export_component
    from osp.pipelines.text_to_video import load_pipeline

    if precision not in ("fp32", "fp16", "bf16"):
        raise ConfigError(f"--precision: TensorRT engines are fp32, fp16 or bf16, not {precision}")
    register_plugins(flavour)
    model_dir, out = Path(model_dir), Path(out)
    opset = opset or (23 if flavour == "trt" else 18)
    pipe = load_pipeline(model_dir)  # traced on the CPU; moved to the GPU for the parity check
    frames, size = frames or pipe.spec.frames, size or pipe.spec.size
    weights = weights_hash(model_dir)
    tolerance = 1e-3 if precision == "fp32" else 3e-2
    entries = {}
    with staged_folder(out) as stage:
        specs = component_specs(pipe, frames, size, components, max_batch=2, finishers=finishers,
                                upscale_denoise=upscale_denoise,
                                upscale_denoise_model=upscale_denoise_model)  # fmt: skip
        for spec in specs:
            entry = export_component(spec, stage, flavour=flavour, opset=opset, verify=flavour == "ort")
            lo = {n: a.min for n, a in spec.axes.items()}
            hi = {n: min(max(spec.sample[n], spec.check[n]), a.max) for n, a in spec.axes.items()}
            profiles = [spec.profile(lo, spec.sample, hi)]
            onnx_path = stage / entry.file
            key = current_key(onnx_path, weights, precision, profiles, flavour)
            engine_path = stage / engine_name(spec.name, precision)
            build_engine(onnx_path, engine_path, key=key, precision=precision, profiles=profiles,
                         timing_cache=timing_cache)  # fmt: skip
            runner = TrtRunner(engine_path, key, rebuild_command(model_dir, out, flavour, precision))
            inputs = spec.make_inputs(spec.check, seed=1)
            with torch.no_grad():
                expected = spec.module.to("cuda")(*[t.cuda() for t in inputs])
            expected = expected if isinstance(expected, tuple) else (expected,)
            got = runner({s.name: t for s, t in zip(spec.inputs, inputs, strict=True)})
            check = compare(spec.name, [e.float().cpu().numpy() for e in expected],
                            [got[s.name].float().cpu().numpy() for s in spec.outputs], tolerance, spec.check,
                            f"tensorrt {precision}")  # fmt: skip
            # the ONNX entry's own build facts (a finisher's source hash among them) stay beside the engine's
            build = {
                **entry.build,
                **key.parts(),
                "engine": engine_path.name,
                "profiles_json": json.dumps(profiles),
            }
            entries[spec.name] = entry.replace(verify=check, build=build)
            if report is not None:
                report(f"{spec.name}: {engine_path.name}, max abs error {check.max_abs:.2e} at {spec.check}")
        manifest = Manifest(
            osp_version=__version__, target="tensorrt", flavour=flavour, opset=opset,
            precision=precision, model_kind=pipe.spec.kind, source=str(model_dir.resolve()),
            source_weights_sha256=weights, frames=frames, size=size,
            vae={"scaling_factor": pipe.vae.config.scaling_factor}, components=entries,
        )  # fmt: skip
        write_manifest(stage, manifest)
    return manifest
