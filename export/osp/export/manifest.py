"""``manifest.json``: what an export folder holds, enough to run it without osp.

A folder written by ``osp export`` is self-describing: per file the input / output names, shapes with
the dynamic axes named (and their ranges), dtypes, the opset and flavour, the parity check it passed,
the hash of the weights it came from and the osp version. The runtime engines read it to refuse a
folder exported for another model or shape; a plain-onnxruntime script reads it as ordinary JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from osp.config import Config
from osp.errors import ConfigError, OspError, ShapeError, WeightsError
from osp.export.specs import ComponentSpec
from osp.io.weights import atomic_write_text

MANIFEST_NAME = "manifest.json"


class ExportError(OspError, RuntimeError):
    """An export failed (or its artifact disagrees with eager PyTorch); the message names the component."""


class EngineMismatchError(OspError, RuntimeError):
    """An exported artifact was made for other weights, shapes, precision or software; rebuild it."""


class TensorEntry(Config):
    name: str
    shape: list[int | str]
    dtype: str


class AxisEntry(Config):
    min: int
    max: int
    multiple: int = 1
    offset: int = 0


class VerifyEntry(Config):
    runtime: str
    sizes: dict[str, int] = Field(description="axis sizes of the check, unlike the traced ones")
    max_abs: float
    max_rel: float = Field(description="max abs error / max |eager output|")
    tolerance: float


class ComponentEntry(Config):
    file: str
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]
    axes: dict[str, AxisEntry]
    sample: dict[str, int]
    attention_nodes: dict[str, int] = Field(default_factory=dict)
    verify: VerifyEntry | None = None
    quantized: Literal["int8"] | None = Field(
        None, description="int8: MatMul weights stored as int8, activations quantized on every call"
    )
    build: dict[str, str] = Field(
        default_factory=dict,
        description="TensorRT: engine cache key and its parts; compile: torch version and device built for",
    )


class Manifest(Config):
    format: Literal["osp-export"] = "osp-export"
    format_version: int = 1
    osp_version: str
    target: Literal["onnx", "tensorrt", "compile"]
    flavour: Literal["ort", "ort-mha", "trt", "aoti"]
    opset: int | None = Field(None, description="ONNX opset; None for compiled (AOTInductor) packages")
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    model_kind: Literal["text-to-video", "class-to-video"]
    source: str
    source_weights_sha256: str
    frames: int
    size: tuple[int, int]
    vae: dict[str, float] = Field(default_factory=dict)
    components: dict[str, ComponentEntry]

    def component(self, name: str, folder: Path) -> ComponentEntry:
        if name not in self.components:
            raise EngineMismatchError(
                f"--engine-dir {folder}: has no {name} (holds {', '.join(self.components)}); "
                f"export it with osp export --components {name}"
            )
        return self.components[name]

    def check_sizes(self, component: str, sizes: dict[str, int], folder: Path) -> None:
        """Refuse axis sizes outside what ``component`` was exported for, naming the folder."""
        entry = self.component(component, folder)
        for name, size in sizes.items():
            axis = entry.axes.get(name)
            if axis is None:
                continue
            if not axis.min <= size <= axis.max or (size - axis.offset) % axis.multiple:
                raise ShapeError(
                    f"--engine-dir {folder}: {component} was exported for {name} in {axis.min}..{axis.max}"
                    f"{f' (multiples of {axis.multiple})' if axis.multiple > 1 else ''}, not {size}; "
                    "re-export with osp export --frames/--size for this shape"
                )


def component_entry(spec: ComponentSpec, file: str, *, static: bool = False, **fields: Any) -> ComponentEntry:
    """The manifest entry of one exported component: its tensors, its axes (each pinned to the traced
    size when ``static``) and the traced sizes; ``fields`` fill the rest (attention nodes, build, ...)."""
    axes = {
        n: AxisEntry(min=spec.sample[n], max=spec.sample[n]) if static
        else AxisEntry(min=a.min, max=a.max, multiple=a.multiple, offset=a.offset)
        for n, a in spec.axes.items()
    }  # fmt: skip
    return ComponentEntry(
        file=file,
        inputs=[TensorEntry(**t.as_json()) for t in spec.inputs],
        outputs=[TensorEntry(**t.as_json()) for t in spec.outputs],
        axes=axes,
        sample=spec.sample,
        **fields,
    )


def weights_hash(model_dir: Path) -> str:
    """sha256 over a model folder's pipeline.json and its transformer/ and vae/ files (name + bytes)."""
    files = [model_dir / "pipeline.json"]
    for part in ("transformer", "vae"):
        files += sorted(p for p in (model_dir / part).glob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        if not path.is_file():
            raise WeightsError(f"{path}: missing from the model folder")
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        digest.update(file_hash(path).encode())
    return digest.hexdigest()


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of an export folder, with an error naming the folder if it is not one."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ConfigError(f"--engine-dir {folder}: no such folder (create it with osp export)")
    if not path.is_file():
        raise ConfigError(f"--engine-dir {folder}: not an osp export folder (no {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    return Manifest.from_dict(data, source=str(path))


def check_source(manifest: Manifest, model_dir: Path, folder: Path) -> None:
    """Refuse an export made from other weights than ``model_dir`` holds."""
    if manifest.source_weights_sha256 != weights_hash(model_dir):
        raise EngineMismatchError(
            f"--engine-dir {folder}: exported from other weights ({manifest.source}) than --model "
            f"{model_dir}; re-export with osp export --model {model_dir} --out {folder}"
        )


def write_manifest(folder: Path, manifest: Manifest) -> None:
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out`` that replaces it on success and vanishes on failure, so an
    interrupted export never leaves a half-written folder; an existing ``out`` must be an export."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder")
    if out.exists() and not (out / MANIFEST_NAME).is_file() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and is not an osp export folder; choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(stage, 0o777 & ~mask)  # mkdtemp makes 0700; the result should look like any new folder
    try:
        yield stage
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
