"""``osp export --target onnx --bundle-for node|web``: one folder from which an application turns a prompt
into a video without Python (the JavaScript runtime in ``examples/js`` reads it).

    BUNDLE/
      manifest.json       format "osp-bundle": sampler, shapes, noise generator, tokenizer, variants + sizes
      tokenizer/          the text encoder's tokenizer.json and tokenizer_config.json (+ special tokens)
      fp32/ fp16/ int8/   one ONNX export folder per weight variant: text_encoder, transformer and
                          vae_decoder .onnx files with their own manifest.json, so that
                          ``osp generate --engine onnx --engine-dir BUNDLE/fp32`` runs the same files

Variants (``variants=``, fp32 by default), each checked against eager PyTorch like every export:

* ``fp32``: the files as exported (flavour ``ort``: stock operators only, which onnxruntime-node and
  onnxruntime-web's WASM and WebGPU backends all run).
* ``fp16``: every float weight of at least :data:`FP16_MIN_VALUES` values stored as float16, with a
  Cast back to float32 in front of its users: half the download, while the arithmetic stays fp32
  (ONNX Runtime folds the casts into float32 weights when it loads the file, on every backend), so
  only the weights' rounding moves the outputs. Chosen over fp16 arithmetic because ONNX Runtime's
  CPU and WASM kernels mostly run float32.
* ``int8``: the transformer's and the text encoder's MatMul weights int8 per output channel with
  activations quantized on every call (ONNX Runtime's dynamic quantization, as ``--precision int8``),
  every other large weight stored as in ``fp16``: the smallest download. The token embedding table,
  a third of MiniLM, is a Gather, not a MatMul, so it is stored fp16.

``target="web"`` refuses a model whose files need ONNX external data (weights above 1 GiB): a browser
loads one file per component.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from osp import __version__
from osp.config import Config
from osp.diffusion import portable_noise
from osp.errors import ConfigError
from osp.export.manifest import (
    MANIFEST_NAME,
    ComponentEntry,
    Manifest,
    file_hash,
    read_manifest,
    staged_folder,
    write_manifest,
)
from osp.export.onnx import INT8_TOLERANCE, OPSETS, component_specs, export_onnx, quantize_int8, verify_onnx
from osp.io.weights import atomic_write_text
from osp.pipelines.text_to_video import TextToVideo, load_pipeline
from osp.text.base import resolve_folders

BundleTarget = Literal["node", "web"]
TARGETS: tuple[str, ...] = ("node", "web")
VARIANTS: tuple[str, ...] = ("fp32", "fp16", "int8")
COMPONENTS = ("text_encoder", "transformer", "vae_decoder")
INT8_COMPONENTS = ("text_encoder", "transformer")  # the MatMul-heavy ones (see the module docstring)
FORMAT = "osp-bundle"
FORMAT_VERSION = 1
FP16_MIN_VALUES = 1024  # smaller weights (norm scales, biases, quantization scales) stay float32
FP16_MAX = 65504.0
# fp16 weights: relative max error of one call. Measured 2e-4 for MiniLM; the bundled transformer and VAE
# were saved with 16-bit weights, so storing them as float16 changes nothing.
FP16_TOLERANCE = 1e-2
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SAMPLERS = ("flow-euler",)  # what examples/js implements
WEIGHTS = {
    "fp32": "float32 weights",
    "fp16": "float32 arithmetic on weights stored as float16",
    "int8": "int8 MatMul weights in the transformer and text encoder (activations quantized per call); "
    "other weights stored as float16",
}


class BundleFile(Config):
    file: str
    bytes: int
    sha256: str


class BundleVariant(Config):
    folder: str
    weights: str
    bytes: int
    files: dict[str, BundleFile]
    max_rel: dict[str, float]  # each component's parity check against eager PyTorch


class BundleSampler(Config):
    scheduler: Literal["flow-euler"]
    steps: int
    guidance: float
    negative_prompt: str
    timestep_scale: float = 1000.0
    sigmas: str = (
        "sigma_i = float32(torch.linspace(1, 0, steps + 1)[i]) (float64, first half 1 + i * step, second half "
        "0 - (steps - i) * step, step = -1 / steps), sigma_steps = 0; the transformer is told "
        "t = float32(sigma_i * timestep_scale)"
    )
    step: str = "x = float32(x + float32(float32(sigma_next - sigma) * v))"
    guidance_rule: str = (
        "one transformer call on the batch [cond; uncond]; v = float32(u + float32(guidance * float32(c - u))); "
        "guidance 1 calls the transformer on cond alone"
    )


class BundleShapes(Config):
    frames: int
    size: tuple[int, int]
    fps: float
    latent: tuple[int, int, int, int]  # (C, t, h, w) of one clip
    text_length: int
    pixels: str = "frame = uint8(clamp(round_half_even(float32(float32(x + 1) * 127.5)), 0, 255))"


class BundleTokenizer(Config):
    folder: str
    files: list[str]
    max_length: int
    pad_id: int
    rule: str = (
        "the prompt's tokens cut to max_length minus the tokenizer's special tokens, then wrapped in them "
        "(as transformers' truncation=True), padded with pad_id to max_length; attention_mask 1 on real tokens"
    )


class BundleManifest(Config):
    format: Literal["osp-bundle"] = "osp-bundle"
    format_version: int = FORMAT_VERSION
    osp_version: str
    target: BundleTarget
    model: str
    source_weights_sha256: str
    opset: int
    sampler: BundleSampler
    shapes: BundleShapes
    latent_scale: float  # the VAE's scaling factor; the decoder file divides by it itself
    noise: dict[str, Any]
    tokenizer: BundleTokenizer
    default_variant: str
    variants: dict[str, BundleVariant]


def read_bundle(folder: str | Path) -> BundleManifest:
    """The manifest of a bundle folder, with an error naming the folder if it is not one."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ConfigError(
            f"{folder}: not an osp bundle (no {MANIFEST_NAME}); make one with osp export --bundle-for"
        )
    return BundleManifest.from_file(path)


def export_bundle(
    model_dir: str | Path,
    out: str | Path,
    *,
    target: BundleTarget = "node",
    variants: Sequence[str] = ("fp32",),
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    opset: int = 23,
    report: Callable[[str], None] | None = None,
) -> BundleManifest:
    """Write the bundle folder ``out`` (replaced only once every variant passed its checks)."""
    model_dir, out = Path(model_dir), Path(out)
    say = report or (lambda _: None)
    if target not in TARGETS:
        raise ConfigError(f"--bundle-for: {target!r} is not one of {', '.join(TARGETS)}")
    unknown = [v for v in variants if v not in VARIANTS]
    if not variants or unknown:
        raise ConfigError(
            f"--variants: choose from {', '.join(VARIANTS)}, got {', '.join(variants) or 'none'}"
        )
    if opset not in OPSETS:
        raise ConfigError(f"opset: {opset} is not supported; use {OPSETS.start}..{OPSETS.stop - 1}")
    pipe = load_pipeline(model_dir)
    if not isinstance(pipe, TextToVideo):
        raise ConfigError("--bundle-for: a bundle turns prompts into videos; this is a class-to-video model")
    if pipe.spec.sampler not in SAMPLERS:
        raise ConfigError(
            f"--bundle-for: the JavaScript runtime samples with {', '.join(SAMPLERS)}; {model_dir} samples "
            f"with {pipe.spec.sampler} (pipeline.json 'sampler')"
        )
    encoder: Any = pipe.text_encoder  # an HFTextEncoder: its folder, tokenizer and length
    tokenizer_dir = resolve_folders(Path(encoder.path))[1]
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise ConfigError(
            f"--bundle-for: {tokenizer_dir} has no tokenizer.json (the fast-tokenizer file JavaScript reads)"
        )
    frames, size = frames or pipe.spec.frames, size or pipe.spec.size
    specs = {s.name: s for s in component_specs(pipe, frames, size, COMPONENTS)}
    ordered = [v for v in VARIANTS if v in variants]
    with staged_folder(out) as stage:
        fp32 = export_onnx(model_dir, stage / "fp32", frames=frames, size=size, opset=opset,
                           components=COMPONENTS, report=say)  # fmt: skip
        if target == "web":
            _refuse_external_data(stage / "fp32")
        for variant in ordered:
            if variant != "fp32":
                _derive(stage / "fp32", stage / variant, variant, fp32, specs)
        if "fp32" not in ordered:
            shutil.rmtree(stage / "fp32")
        shutil.copytree(tokenizer_dir, stage / "tokenizer", ignore=_only(TOKENIZER_FILES))
        manifest = BundleManifest(
            osp_version=__version__, target=target, model=model_dir.resolve().name,
            source_weights_sha256=fp32.source_weights_sha256, opset=opset,
            sampler=BundleSampler(scheduler="flow-euler", steps=pipe.spec.steps, guidance=pipe.spec.guidance,
                                  negative_prompt=pipe.spec.negative_prompt),
            shapes=BundleShapes(frames=frames, size=size, fps=pipe.spec.fps,
                                latent=pipe.latent_shape(frames, size), text_length=encoder.max_length),
            latent_scale=pipe.vae.config.scaling_factor, noise=portable_noise.describe(),
            tokenizer=BundleTokenizer(folder="tokenizer", files=sorted(p.name for p in (stage / "tokenizer").iterdir()),
                                      max_length=encoder.max_length, pad_id=int(encoder.tokenizer.pad_token_id)),
            default_variant=ordered[0], variants={v: _variant_entry(stage, v) for v in ordered},
        )  # fmt: skip
        atomic_write_text(stage / MANIFEST_NAME, manifest.model_dump_json(indent=2) + "\n")
    for name, entry in manifest.variants.items():
        parts = ", ".join(f"{c} {f.bytes / 1e6:.1f}" for c, f in entry.files.items())
        say(f"{name}: {entry.bytes / 1e6:.1f} MB ({parts}); {entry.weights}")
    return manifest


def _only(names: Sequence[str]) -> Callable[[str, list[str]], list[str]]:
    return lambda _folder, entries: [e for e in entries if e not in names]


def _refuse_external_data(folder: Path) -> None:
    extra = [p.name for p in folder.iterdir() if p.suffix != ".onnx" and p.name != MANIFEST_NAME]
    if extra:
        raise ConfigError(
            f"--bundle-for web: {', '.join(extra)} hold weights outside their .onnx files (over 1 GiB), "
            "which a browser cannot load; bundle this model for node"
        )


def _derive(source: Path, folder: Path, variant: str, fp32: Manifest, specs: dict[str, Any]) -> None:
    """The ``variant`` folder from the fp32 files: rewrite the weights, check each file, write its manifest."""
    folder.mkdir()
    components: dict[str, ComponentEntry] = {}
    for name, entry in fp32.components.items():
        for path in source.glob(f"{entry.file}*"):  # the .onnx file and its external data, if any
            shutil.copy2(path, folder / path.name)
        path = folder / entry.file
        quantized = variant == "int8" and name in INT8_COMPONENTS
        store_fp16(path, keep_matmul_weights=quantized)
        if quantized:
            quantize_int8(path)
        check = verify_onnx(specs[name], path, INT8_TOLERANCE if quantized else FP16_TOLERANCE)
        components[name] = entry.replace(verify=check, quantized="int8" if quantized else None)
    write_manifest(folder, fp32.replace(precision=variant, components=components))


def store_fp16(path: Path, *, keep_matmul_weights: bool = False) -> None:
    """Rewrite ``path`` with its large float32 weights stored as float16, each cast back to float32 by
    a Cast node placed first in the graph (so the graph computes what it did, on rounded weights).
    ``keep_matmul_weights``: leave the MatMul weights float32, for the int8 quantizer to take."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    # Linear layers export as MatMul or Gemm; the quantizer takes both (Gemm as MatMul + Add).
    matmuls = {n.input[1] for n in graph.node if n.op_type in ("MatMul", "Gemm")}
    skip = matmuls if keep_matmul_weights else set()
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or init.name in skip:
            continue
        if int(np.prod(init.dims)) < FP16_MIN_VALUES:
            continue
        values = numpy_helper.to_array(init)
        if not np.isfinite(values).all() or np.abs(values).max() > FP16_MAX:
            continue  # float16 would turn these into inf
        name = init.name
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float16), f"{name}.fp16"))
        casts.append(onnx.helper.make_node("Cast", [f"{name}.fp16"], [name], name=f"{name}.to_fp32",
                                           to=onnx.TensorProto.FLOAT))  # fmt: skip
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))


def _variant_entry(stage: Path, variant: str) -> BundleVariant:
    manifest = read_manifest(stage / variant)
    files = {
        name: BundleFile(
            file=f"{variant}/{entry.file}",
            bytes=(stage / variant / entry.file).stat().st_size,
            sha256=file_hash(stage / variant / entry.file),
        )
        for name, entry in manifest.components.items()
    }
    checks = {name: entry.verify.max_rel for name, entry in manifest.components.items() if entry.verify}
    return BundleVariant(folder=variant, weights=WEIGHTS[variant], bytes=sum(f.bytes for f in files.values()),
                         files=files, max_rel=checks)  # fmt: skip
