"""Runtime engines: eager, compiled, AOT-compiled, ONNX Runtime and TensorRT behind one interface.

Every engine offers ``denoiser()`` — the pipeline's ``denoiser(x_t, t, cond) -> output`` — and
``decoder()`` — scaled latents (B, C, t, h, w) -> video (B, 3, T, H, W), or None to let the pipeline
decode with its own VAE (tiled when the clip is large). Sampling code never knows which engine runs.
Exported engines also offer ``finisher(kind, folder)``: the exported upscaler or interpolator of
``osp generate --upscale / --interpolate``, checked against the weights in ``folder`` (None when the
folder holds no such component: the chain then runs the eager model).

Exported engines (AOTInductor packages, ONNX Runtime, TensorRT) check before the first step that their
folder was exported from the same weights and covers the requested shape, and say how to re-export if
not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

from osp.diffusion import Denoiser
from osp.errors import ConfigError
from osp.export.aoti import Package, check_build, load_package
from osp.export.compile import CompileMode, compile_blocks, compile_frozen
from osp.export.cudagraph import GraphedDenoiser
from osp.export.manifest import EngineMismatchError, Manifest, check_source, read_manifest
from osp.export.onnx import finisher_source
from osp.export.specs import DTYPES, VaeDecoder
from osp.pipelines.text_to_video import TextToVideo, VideoPipeline, auto_tiling, model_denoiser
from osp.vae import CausalVideoVAE

Decoder = Callable[[torch.Tensor], torch.Tensor]
EngineName = Literal["torch", "compile", "onnx", "trt"]
ENGINES: tuple[str, ...] = ("torch", "compile", "onnx", "trt")
_NUMPY = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "bool": np.bool_}


def _timesteps(t: torch.Tensor, batch: int) -> torch.Tensor:
    return t.reshape(1).expand(batch) if t.dim() == 0 else t


class TorchEngine:
    """Eager PyTorch: the reference every other engine is checked against.

    ``cuda_graphs``: the denoiser runs through CUDA graphs, captured once per input shape and replayed at
    every step (osp.export.cudagraph), which removes the host's launch cost at small token counts.
    """

    name = "torch"

    def __init__(self, transformer: nn.Module, cuda_graphs: bool = False) -> None:
        self.transformer = transformer
        self.cuda_graphs = cuda_graphs
        device = next(transformer.parameters()).device
        if cuda_graphs and device.type != "cuda":
            raise ConfigError(f"--cuda-graphs: CUDA graphs need a CUDA device, the model is on {device}")

    def denoiser(self) -> Denoiser:
        if self.cuda_graphs:
            return GraphedDenoiser(
                model_denoiser(self.transformer), next(self.transformer.parameters()).device
            )
        return model_denoiser(self.transformer)

    def decoder(self) -> Decoder | None:
        return None


class CompiledEngine(TorchEngine):
    """torch.compile of the transformer: its repeated blocks (regional), or with ``freeze`` the whole
    model with its weights folded in as constants (inference only; see osp.export.compile).

    With ``freeze`` and a ``vae``, the VAE decoder is compiled with frozen weights too: at sampling
    sizes the decode costs as much as the denoising steps together (a 17x128x128 clip: 2.4 s eager,
    1.5 s frozen on a 2-core CPU). A clip larger than one decode tile is decoded tile by tile, eagerly,
    so memory stays bounded as with the torch engine.
    """

    name = "compile"

    def __init__(
        self,
        transformer: nn.Module,
        mode: CompileMode = "default",
        dynamic: bool | None = None,
        freeze: bool = False,
        vae: CausalVideoVAE | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        if freeze:
            super().__init__(compile_frozen(transformer, mode=mode, dynamic=dynamic), cuda_graphs)
        else:
            super().__init__(compile_blocks(transformer, mode=mode, dynamic=dynamic), cuda_graphs)
        self.vae = vae if freeze else None
        self._decode = compile_frozen(VaeDecoder(vae), mode=mode, dynamic=dynamic) if self.vae else None

    def decoder(self) -> Decoder | None:
        vae, compiled = self.vae, self._decode
        if vae is None or compiled is None:
            return None
        dtype = next(vae.parameters()).dtype
        ct, cs = vae.config.temporal_compression, vae.config.spatial_compression

        def decode(latents: torch.Tensor) -> torch.Tensor:
            latents = latents.to(dtype)
            t, h, w = latents.shape[2:]
            tiling = auto_tiling((t - 1) * ct + 1, (h * cs, w * cs))  # the pipeline's own rule
            return compiled(latents) if tiling is None else vae.decode_latents(latents, tiling)

        return decode


def _weights_of(source: dict[str, str]) -> str:
    """A finishing model's source as a person reads it: its folder, and any denoising blend."""
    weights = source.get("weights", "-")
    if "denoise" in source:
        return f"{weights} blended with {source.get('denoise_weights', '-')} at {source['denoise']}"
    return weights


class _Exported:
    """Shared by the exported engines (compiled packages, ONNX Runtime, TensorRT): the manifest and its
    checks, and the denoiser and decoder, built on each engine's ``first_output``."""

    target = "onnx"

    def __init__(self, folder: str | Path, model_dir: str | Path | None = None) -> None:
        self.folder = Path(folder)
        self.manifest: Manifest = read_manifest(self.folder)
        if self.manifest.target != self.target:
            raise EngineMismatchError(
                f"--engine-dir {self.folder}: holds a {self.manifest.target} export, not {self.target}; "
                f"export it with osp export --target {self.target} --out {self.folder}"
            )
        self.model_dir = None if model_dir is None else Path(model_dir)
        if self.model_dir is not None:
            check_source(self.manifest, self.model_dir, self.folder)

    def check_request(self, pipe: VideoPipeline, batch: int, frames: int, size: tuple[int, int]) -> None:
        """Refuse a request the exported shapes do not cover, before any sampling."""
        if self.manifest.model_kind != pipe.spec.kind:
            raise EngineMismatchError(
                f"--engine-dir {self.folder}: exported from a {self.manifest.model_kind} model"
            )
        _, t, h, w = pipe.latent_shape(frames, size)
        sizes = {"batch": batch, "latent_frames": t, "latent_height": h, "latent_width": w}
        if isinstance(pipe, TextToVideo):
            sizes["text_length"] = pipe.text_encoder.max_length
        self.manifest.check_sizes("transformer", sizes, self.folder)
        if "vae_decoder" in self.manifest.components:
            self.manifest.check_sizes("vae_decoder", {**sizes, "batch": max(1, batch // 2)}, self.folder)

    def _feeds(self, component: str, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:  # fmt: skip
        feeds = {"latents": x, "timestep": _timesteps(t, x.shape[0]), **cond}
        names = [i.name for i in self.manifest.components[component].inputs]
        missing = [n for n in names if n not in feeds]
        if missing:
            raise ConfigError(f"--engine-dir {self.folder}: the {component} needs {', '.join(missing)}")
        return {n: feeds[n] for n in names}

    def first_output(self, component: str) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        """Load ``component`` now (a broken or foreign file fails before sampling) and return a function
        from its named inputs to its first output, a torch tensor."""
        raise NotImplementedError

    def denoiser(self) -> Denoiser:
        run = self.first_output("transformer")

        def denoise(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
            return run(self._feeds("transformer", x, t, cond)).to(device=x.device, dtype=x.dtype)

        return denoise

    def decoder(self) -> Decoder | None:
        if "vae_decoder" not in self.manifest.components:
            return None
        run = self.first_output("vae_decoder")
        return lambda latents: run({"latents": latents}).float().to(latents.device)

    def finisher(
        self, kind: str, folder: Path, denoise: float | None = None, denoise_model: Path | None = None
    ) -> Callable[..., torch.Tensor] | None:
        """The exported ``upscaler`` (video -> video) or ``interpolator`` ((frame0, frame1, t) ->
        frame, any size: padded to the exported multiple and cropped, in chunks of the exported batch),
        refused if it was exported from other weights than ``folder`` holds (for an upscaler, blended
        by ``denoise`` with its denoising partner, ``denoise_model`` or the folder's ``-denoise``
        sibling, or not blended); None if not exported."""
        entry = self.manifest.components.get(kind)
        if entry is None:
            return None
        if "weights_sha256" not in entry.build:
            raise EngineMismatchError(
                f"--engine-dir {self.folder}: its {kind} records no source weights, so it cannot be checked "
                f"against {folder}; re-export it with osp export --target onnx or compile --components {kind}"
            )
        wanted = finisher_source(Path(folder), denoise, denoise_model)
        if any(
            entry.build.get(k) != wanted.get(k)
            for k in ("weights_sha256", "denoise", "denoise_weights_sha256")
        ):
            m = self.manifest
            command = (
                f"osp export --model {m.source} --target {m.target} --components {','.join(m.components)} "
                f"--{kind} {folder}"
                + (f" --upscale-denoise {wanted['denoise']}" if "denoise" in wanted else "")
                + (f" --upscale-denoise-model {denoise_model}" if denoise_model is not None else "")
            )
            raise EngineMismatchError(
                f"--engine-dir {self.folder}: its {kind} was exported from {_weights_of(entry.build)}, not "
                f"{_weights_of(wanted)}; re-export with {command} --out {self.folder}"
            )
        run = self.first_output(kind)
        if kind == "upscaler":

            def upscale(video: torch.Tensor) -> torch.Tensor:
                b, _, t, h, w = video.shape
                self.manifest.check_sizes(
                    kind, {"batch": b, "frames": t, "height": h, "width": w}, self.folder
                )
                return run({"video": video}).to(video.device, video.dtype)

            return upscale
        multiple, most = entry.axes["height"].multiple, entry.axes["batch"].max

        def interpolate(frame0: torch.Tensor, frame1: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            h, w = frame0.shape[2:]
            sizes = {"height": h + -h % multiple, "width": w + -w % multiple}
            self.manifest.check_sizes(kind, sizes, self.folder)
            pad = (0, -w % multiple, 0, -h % multiple)  # edges repeated, as IFNetInterpolator.forward pads
            a, b = (torch.nn.functional.pad(f, pad, mode="replicate") for f in (frame0, frame1))
            parts = [
                run(
                    {"frame0": a[i : i + most], "frame1": b[i : i + most], "timestep": timestep[i : i + most]}
                )
                for i in range(0, a.shape[0], most)
            ]
            return torch.cat(parts)[:, :, :h, :w].to(frame0.device, frame0.dtype)

        return interpolate


def _default_providers() -> list[str]:
    """CUDA when both this onnxruntime build and torch see a GPU, with CPU behind it; else CPU."""
    import onnxruntime as ort

    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtEngine(_Exported):
    """ONNX Runtime sessions over an ``osp export --target onnx`` folder (on CUDA when onnxruntime-gpu
    and a GPU are there, else CPU; ``providers`` overrides)."""

    name = "onnx"

    def __init__(self, folder: str | Path, model_dir: str | Path | None = None,
                 providers: list[str] | None = None, threads: int | None = None) -> None:  # fmt: skip
        super().__init__(folder, model_dir)
        self.providers = providers
        self.threads = threads
        self._sessions: dict[str, Any] = {}

    def session(self, component: str) -> Any:
        if component not in self._sessions:
            import onnxruntime as ort

            entry = self.manifest.component(component, self.folder)
            options = ort.SessionOptions()
            options.log_severity_level = 3
            if self.threads:
                options.intra_op_num_threads = self.threads
            providers = self.providers or _default_providers()
            self._sessions[component] = ort.InferenceSession(
                str(self.folder / entry.file), options, providers=providers
            )
        return self._sessions[component]

    def run(self, component: str, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
        entry = self.manifest.components[component]
        arrays: dict[str, np.ndarray] = {
            i.name: feeds[i.name].detach().cpu().numpy().astype(_NUMPY[i.dtype], copy=False)
            for i in entry.inputs
        }
        return self.session(component).run(None, arrays)

    def first_output(self, component: str) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        self.session(component)
        return lambda feeds: torch.from_numpy(self.run(component, feeds)[0])


class AotiEngine(_Exported):
    """AOTInductor packages from ``osp export --target compile --out DIR``: the frozen compile's speed,
    loaded in a fraction of a second instead of compiled in every process. Each package is checked
    against the torch version and device it was built for before it is loaded."""

    name = "compile"
    target = "compile"

    def __init__(self, folder: str | Path, model_dir: str | Path | None = None, device: str | torch.device = "cpu"
                 ) -> None:  # fmt: skip
        super().__init__(folder, model_dir)
        self.device = torch.device(device)
        self._models: dict[str, Package] = {}

    def model(self, component: str) -> Package:
        if component not in self._models:
            entry = self.manifest.component(component, self.folder)
            check_build(self.manifest, component, self.folder, self.device)
            self._models[component] = load_package(self.folder / entry.file, self.device)
        return self._models[component]

    def _args(self, component: str, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The inputs in the package's order, each at the dtype it was compiled for."""
        return [
            feeds[i.name].to(device=self.device, dtype=DTYPES[i.dtype])
            for i in self.manifest.components[component].inputs
        ]

    def first_output(self, component: str) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        model = self.model(component)
        return lambda feeds: cast(torch.Tensor, model(*self._args(component, feeds)))  # one output


class TrtEngine(_Exported):
    """TensorRT engines from ``osp export --target tensorrt``; each one's key is checked on load."""

    name = "trt"
    target = "tensorrt"

    def __init__(
        self, folder: str | Path, model_dir: str | Path | None = None, cuda_graph: bool = False
    ) -> None:
        super().__init__(folder, model_dir)
        self.cuda_graph = cuda_graph
        self._runners: dict[str, Any] = {}

    def runner(self, component: str) -> Any:
        from osp.export import tensorrt as ostrt

        if component not in self._runners:
            entry = self.manifest.component(component, self.folder)
            m = self.manifest
            ostrt.register_plugins(m.flavour)
            key = ostrt.current_key(self.folder / entry.file, m.source_weights_sha256, m.precision,
                                    json.loads(entry.build.get("profiles_json", "[]")), m.flavour)  # fmt: skip
            rebuild = ostrt.rebuild_command(Path(m.source), self.folder, m.flavour, m.precision)
            engine = self.folder / entry.build.get("engine", ostrt.engine_name(component, m.precision))
            self._runners[component] = ostrt.TrtRunner(engine, key, rebuild, cuda_graph=self.cuda_graph)
        return self._runners[component]

    def first_output(self, component: str) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        runner = self.runner(component)
        name = self.manifest.components[component].outputs[0].name
        return lambda feeds: runner(feeds)[name]


def make_engine(
    name: str,
    pipe: VideoPipeline,
    *,
    engine_dir: Path | None = None,
    model_dir: Path | None = None,
    batch: int = 2,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    compile_mode: CompileMode = "default",
    freeze: bool = False,
    cuda_graphs: bool = False,
) -> TorchEngine | AotiEngine | OrtEngine | TrtEngine:
    """The engine ``name`` for a loaded pipeline, with every input checked before sampling starts.
    ``freeze``: the compile engine compiles the whole transformer and the VAE decoder with frozen weights.
    The compile engine with an ``engine_dir`` loads the packages ``osp export --target compile`` wrote
    (compiled ahead of time, weights frozen) instead of compiling in this process. ``cuda_graphs``: the
    torch and compile engines replay the denoiser as CUDA graphs (CUDA only)."""
    if name not in ENGINES:
        raise ConfigError(f"engine: {name!r} is unknown; choose one of {', '.join(ENGINES)}")
    if cuda_graphs and (name not in ("torch", "compile") or engine_dir is not None):
        raise ConfigError(
            "--cuda-graphs: only the torch and compile engines (compiling in this process) capture CUDA graphs"
        )
    if freeze and name != "compile":
        raise ConfigError(f"--freeze: only the compile engine freezes weights, not {name!r}")
    if freeze and engine_dir is not None:
        raise ConfigError("--freeze: the packages in --engine-dir were compiled with frozen weights already")
    if name == "torch":
        return TorchEngine(pipe.transformer, cuda_graphs)
    if name == "compile" and engine_dir is None:
        return CompiledEngine(
            pipe.transformer, compile_mode, freeze=freeze, vae=pipe.vae, cuda_graphs=cuda_graphs
        )
    if engine_dir is None:
        raise ConfigError(f"--engine-dir: the {name} engine runs an exported folder; give --engine-dir DIR")
    engine: AotiEngine | OrtEngine | TrtEngine
    if name == "compile":
        engine = AotiEngine(engine_dir, model_dir, device=pipe.device)
    elif name == "onnx":
        engine = OrtEngine(engine_dir, model_dir)
    else:
        engine = TrtEngine(engine_dir, model_dir)
    engine.check_request(pipe, batch, frames or pipe.spec.frames, size or pipe.spec.size)
    return engine
