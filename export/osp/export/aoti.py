"""Ahead-of-time compiled packages (AOTInductor): torch.compile's speed without its per-process cost.

``osp export --target compile --out DIR`` traces each component with ``torch.export``, compiles it with
Inductor's *freezing* (weights folded in as constants; on CPU every linear and convolution weight is
pre-packed for oneDNN once) into a shared library, and writes it as a ``.pt2`` package beside an
ordinary ``manifest.json``. ``osp generate --engine compile --engine-dir DIR`` loads the packages in a
fraction of a second, where the in-process compile (``--freeze`` without a folder) pays a Dynamo trace
and an Inductor compile per component in every new process.

A package is machine code: it runs only under the torch version and on the device it was built for
(on CPU, the instruction set torch dispatched to, e.g. AVX512). The manifest records all three and the
engine refuses a package built elsewhere with the command that rebuilds it, never loads it on luck.

The traced axes are dynamic by default (the same ranges as the ONNX export, so one folder serves every
batch, length and size in them); ``dynamic=False`` specialises on the traced shape. Every export ends
with a parity check against eager PyTorch at a shape different from the traced one on every dynamic
axis.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.torch_version import TorchVersion

from osp import __version__
from osp.errors import ConfigError
from osp.export.compile import CompileMode
from osp.export.manifest import (
    ComponentEntry,
    EngineMismatchError,
    ExportError,
    Manifest,
    VerifyEntry,
    component_entry,
    staged_folder,
    weights_hash,
    write_manifest,
)
from osp.export.onnx import compare, component_specs
from osp.export.specs import ComponentSpec
from osp.pipelines.text_to_video import load_pipeline

Precision = Literal["fp32", "bf16"]
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_COMPONENTS = ("transformer", "vae_decoder")
# Max abs error relative to max |eager output| at the same precision. bf16 keeps 8 bits of mantissa and
# Inductor fuses (so rounds) in other places than eager does; measured up to ~1e-2 on the bundled model.
BF16_TOLERANCE = 5e-2
PACKAGE_SUFFIX = ".pt2"


def min_torch() -> None:
    """AOTInductor packaging as osp calls it (``aoti_compile_and_package`` with the exported program
    alone, the package loader of ``torch._C._aoti``) needs torch >= 2.6."""
    if TorchVersion(torch.__version__) < "2.6":
        raise ConfigError(
            f"--target compile --out: AOTInductor packages need torch >= 2.6 (this is {torch.__version__})"
        )


def build_info(device: torch.device) -> dict[str, str]:
    """What a package is bound to: the torch version and the device (and CPU instruction set)."""
    info = {"torch": torch.__version__, "device": device.type}
    if device.type == "cpu":
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    else:
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def rebuild_command(manifest: Manifest, folder: Path, device: torch.device) -> str:
    """The ``osp export`` that rebuilds ``folder`` on this machine: same model, shape, precision,
    components and shape mode, for ``device``."""
    first = next(iter(manifest.components.values()))
    parts = [
        f"osp export --model {manifest.source} --target compile --frames {manifest.frames}",
        f"--size {manifest.size[0]}x{manifest.size[1]}",
    ]
    if manifest.precision != "fp32":
        parts.append(f"--precision {manifest.precision}")
    if tuple(manifest.components) != DEFAULT_COMPONENTS:
        parts.append(f"--components {','.join(manifest.components)}")
    if first.build.get("dynamic") == "false":
        parts.append("--static")
    if device.type != "cpu":
        parts.append(f"--device {device.type}")
    return " ".join([*parts, f"--out {folder}"])


def check_build(manifest: Manifest, component: str, folder: Path, device: torch.device) -> None:
    """Refuse a package built for another torch, device type, CPU instruction set or GPU."""
    built = manifest.component(component, folder).build
    here = build_info(device)
    for key in ("torch", "device", "cpu_capability", "gpu"):
        if built.get(key) != here.get(key):
            raise EngineMismatchError(
                f"--engine-dir {folder}: {component} was compiled for {key} {built.get(key) or '-'}, "
                f"this machine has {here.get(key) or '-'}; a compiled package runs only where it was "
                f"built: rebuild it with {rebuild_command(manifest, folder, device)}"
            )


class Package:
    """A loaded package called like the module it was compiled from: positional tensors in, a tensor
    (or a tuple of them) out.

    It drives torch's C++ package loader directly: ``torch._inductor.aoti_load_package`` does the same
    behind a Python wrapper whose imports (Inductor, sympy) cost a new process seconds on a small CPU,
    more than loading and running a small model's package.
    """

    def __init__(self, path: Path, device: torch.device) -> None:
        self.path = path
        loader = torch._C._aoti.AOTIModelPackageLoader
        index = -1 if device.index is None else device.index  # -1: the current device
        try:  # (path, model name, run single-threaded, runners, device index) since torch 2.7
            self.loader = loader(str(path), "model", False, 1, index)
        except TypeError:  # torch 2.6: (path, model name)
            self.loader = loader(str(path), "model")  # type: ignore[call-arg]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.loader.run(list(inputs))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def load_package(path: Path, device: torch.device) -> Package:
    try:
        return Package(path, device)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EngineMismatchError(f"{path}: cannot load the compiled package ({first})") from None


def _cast(spec: ComponentSpec, dtype: torch.dtype) -> ComponentSpec:
    """The spec at ``dtype``: the module's weights and its feature inputs (not timesteps, which need
    fp32's resolution for the sinusoidal embedding, nor masks, labels or ids)."""
    if dtype == torch.float32:
        return spec
    name = {torch.bfloat16: "bfloat16"}[dtype]
    return dataclasses.replace(
        spec,
        module=copy.deepcopy(spec.module).to(dtype),
        inputs=[
            s if s.kind not in ("normal", "image") else dataclasses.replace(s, dtype=name)
            for s in spec.inputs
        ],
        outputs=[dataclasses.replace(s, dtype=name) for s in spec.outputs],
        tolerance=max(spec.tolerance, BF16_TOLERANCE),
    )


def compile_component(spec: ComponentSpec, folder: Path, *, device: torch.device, dynamic: bool = True,
                      mode: CompileMode = "default") -> ComponentEntry:  # fmt: skip
    """Write ``folder/<name>.pt2`` for one component, check it against eager; its manifest entry."""
    import torch._inductor

    module = spec.module.eval().to(device)
    path = folder / f"{spec.name}{PACKAGE_SUFFIX}"
    inputs = tuple(t.to(device) for t in spec.make_inputs(spec.sample))
    configs: dict[str, Any] = {"freezing": True}
    if dynamic and any(a.derived for a in spec.axes.values()):
        # Axes of the form m*k+c (the VAE encoder's 4k+1 frames, 8k pixels): freezing's channels-last
        # pass cannot express output strides in the free k ("materialize_symints: no producer").
        configs["layout_optimization"] = False
    if mode.startswith("max-autotune"):
        configs["max_autotune"] = True
    try:
        with torch.no_grad():
            exported = torch.export.export(
                module, inputs, dynamic_shapes=spec.dynamic_shapes() if dynamic else None, strict=True
            )
            torch._inductor.aoti_compile_and_package(
                exported, package_path=str(path), inductor_configs=configs
            )
    except (RuntimeError, ValueError, TypeError, AssertionError, torch._dynamo.exc.UserError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{spec.name}: AOTInductor compile failed: {first}") from err
    build = {**build_info(device), "mode": mode, "dynamic": str(dynamic).lower(), **spec.source}
    entry = component_entry(spec, path.name, static=not dynamic, build=build)
    return entry.replace(verify=verify_package(spec, path, device, dynamic))


def verify_package(spec: ComponentSpec, path: Path, device: torch.device, dynamic: bool) -> VerifyEntry:
    """Run the package beside eager PyTorch (at ``spec.check`` sizes when dynamic) and compare."""
    sizes = spec.check if dynamic else spec.sample
    inputs = tuple(t.to(device) for t in spec.make_inputs(sizes, seed=1))
    runner = load_package(path, device)
    with torch.no_grad():
        expected = spec.module(*inputs)
        got = runner(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    return compare(
        spec.name, [e.float().cpu().numpy() for e in expected], [g.float().cpu().numpy() for g in got],
        spec.tolerance, sizes, "AOTInductor",
    )  # fmt: skip


def export_compiled(
    model_dir: str | Path,
    out: str | Path,
    *,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    precision: Precision = "fp32",
    components: Sequence[str] = DEFAULT_COMPONENTS,
    dynamic: bool = True,
    mode: CompileMode = "default",
    device: str = "cpu",
    report: Callable[[str], None] | None = None,
    finishers: dict[str, str | Path] | None = None,
    upscale_denoise: float | None = None,
    upscale_denoise_model: str | Path | None = None,
) -> Manifest:
    """Compile a pipeline folder's components to ``out`` (replaced only once everything passed).
    ``finishers``, ``upscale_denoise``, ``upscale_denoise_model``: as
    :func:`osp.export.onnx.export_onnx`'s."""
    min_torch()
    model_dir, out = Path(model_dir), Path(out)
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: compiled packages are fp32 or bf16, not {precision}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device: {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: packages are compiled for cpu or cuda")
    pipe = load_pipeline(model_dir)
    frames, size = frames or pipe.spec.frames, size or pipe.spec.size
    specs = [
        _cast(s, PRECISIONS[precision])
        for s in component_specs(
            pipe,
            frames,
            size,
            components,
            finishers=finishers,
            upscale_denoise=upscale_denoise,
            upscale_denoise_model=upscale_denoise_model,
        )
    ]
    entries = {}
    with staged_folder(out) as stage:
        for spec in specs:
            entries[spec.name] = entry = compile_component(
                spec, stage, device=dev, dynamic=dynamic, mode=mode
            )
            if report is not None and entry.verify is not None:
                check = entry.verify
                report(
                    f"{spec.name}: {entry.file} ({precision}, {'dynamic' if dynamic else 'static'} shapes); "
                    f"max abs error {check.max_abs:.2e} (relative {check.max_rel:.2e}) at {check.sizes}"
                )
        manifest = Manifest(
            osp_version=__version__, target="compile", flavour="aoti", opset=None, precision=precision,
            model_kind=pipe.spec.kind, source=str(model_dir.resolve()),
            source_weights_sha256=weights_hash(model_dir), frames=frames, size=size,
            vae={"scaling_factor": pipe.vae.config.scaling_factor}, components=entries,
        )  # fmt: skip
        write_manifest(stage, manifest)
    return manifest
