"""ONNX export of osp's components with the dynamo exporter, each file checked against eager PyTorch.

Three flavours, all with attention as one node:

* ``ort``: stock operators only. From opset 23 attention is the native ``Attention`` op (ONNX Runtime
  runs it on CPU in fp32 / fp16); below 23 the exporter spells it out as MatMul / Softmax.
* ``ort-mha``: attention is ONNX Runtime's contrib ``com.microsoft::MultiHeadAttention``, the node its
  CUDA provider runs with fused flash / memory-efficient kernels (its CPU provider runs it too, which
  is how the parity check runs here). Key-padding masks go in as its int32 ``key_padding_mask``.
* ``trt``: attention is the ``osp::attention`` custom node that TensorRT maps to osp's Triton plugin.
  No stock runtime executes it, so these files are checked when TensorRT builds them.

The two ONNX Runtime flavours also spell two of the VAE's operations the way its CPU kernels run
fast, with the same values: nearest up-sampling by whole factors as copies instead of ``Resize``, and
GroupNorm's statistics reduced one run of adjacent axes at a time. Together they took the bundled
demo VAE's decoder at 17x128x128 from 0.65 to about 0.5 s on a 2-core AMD EPYC.

``precision="int8"`` (CPU deployment) stores the transformer's MatMul weights as int8, per output
channel, and quantizes their activations on every call (ONNX Runtime's dynamic quantization, run after
the fp32 export). The VAE stays fp32 (its convolutions draw the pixels), and so does the text encoder:
quantized the same way, MiniLM's states moved by 6% (relative max error), three times the transformer's.

Every export ends with a parity check: the exported file runs at a shape different from the traced
one on every dynamic axis, and its output must match eager PyTorch within the component's tolerance,
else the export fails with an :class:`ExportError` naming the component and nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from osp import __version__
from osp.errors import ConfigError
from osp.export.manifest import (
    ComponentEntry,
    ExportError,
    Manifest,
    VerifyEntry,
    component_entry,
    file_hash,
    staged_folder,
    weights_hash,
    write_manifest,
)
from osp.export.specs import (
    ComponentSpec,
    interpolator_spec,
    text_encoder_spec,
    transformer_spec,
    upscaler_spec,
    vae_decoder_spec,
    vae_encoder_spec,
)
from osp.interpolate import IFNetInterpolator
from osp.pipelines.finish import (
    Kind,
    load_finisher,
    load_upscaler_blend,
    require_denoise_partner,
    resolve_finisher,
)
from osp.pipelines.text_to_video import TextToVideo, VideoPipeline, load_pipeline

Flavour = Literal["ort", "ort-mha", "trt"]
OnnxPrecision = Literal["fp32", "int8"]
ORT_FLAVOURS = ("ort", "ort-mha")  # the flavours ONNX Runtime runs, so the export checks them
COMPONENTS = ("transformer", "vae_decoder", "vae_encoder", "text_encoder", "upscaler", "interpolator")
# The finishing models run after the pipeline: the interpolator at its frames' size, the upscaler on
# the interpolated clip (the --interpolate / --upscale chain of osp generate).
FINISHERS = ("upscaler", "interpolator")
DEFAULT_COMPONENTS = ("transformer", "vae_decoder", "vae_encoder")
OPSETS = range(18, 26)  # measured: 18..25 export and run; 26 breaks the exporter
EXTERNAL_DATA_BYTES = 1 << 30  # protobuf files stop at 2 GiB; larger weights go to a side file
INT8_COMPONENTS = ("transformer",)  # the rest stays fp32 (see the module docstring)
# int8 parity: relative max abs error of one call. Measured 1.7-3% (the demo transformer, a random one);
# almost all of it is the per-call rounding of activations to 8 bits, which fp32 weights cannot remove.
INT8_TOLERANCE = 0.1
ATTENTION_OPS = {"Attention", "MultiHeadAttention", "attention", "attention_masked"}


# ----------------------------------------------------------------------------- attention translation


def _ort_attention(
    query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
    scale: float | None = None, enable_gqa: bool = False,
) -> Any:  # fmt: skip
    """SDPA -> one opset-23 ``Attention`` node. ONNX Runtime's CPU kernel refuses a mask that
    broadcasts over the query axis (osp's key-padding masks are (B, 1, 1, Lk)), so the mask is
    expanded to (..., Lq, Lk) first: one cheap Expand in front of the fused node."""
    from onnxscript import opset23 as op

    if attn_mask is not None:
        target = op.Concat(
            op.Shape(attn_mask, start=0, end=-2),
            op.Shape(query, start=-2, end=-1),
            op.Shape(key, start=-2, end=-1),
            axis=0,
        )
        attn_mask = op.Expand(attn_mask, target)
    y, _, _, _ = op.Attention(query, key, value, attn_mask, scale=scale, is_causal=is_causal)
    return y


def _contrib_mha() -> Any:
    """onnxscript's handle on com.microsoft::MultiHeadAttention (v1). The schema lives in ONNX Runtime,
    not in onnx, and onnxscript traces only ops it has a schema for, so the inputs osp uses are
    declared here (names and order as ONNX Runtime's contrib-op documentation)."""
    import onnx
    import onnxscript

    name, domain = "MultiHeadAttention", "com.microsoft"
    if onnx.defs.has(name, domain):
        schema = onnx.defs.get_schema(name, 1, domain)
    else:
        param, optional = (
            onnx.defs.OpSchema.FormalParameter,
            onnx.defs.OpSchema.FormalParameterOption.Optional,
        )
        kinds = onnx.defs.OpSchema.AttrType
        schema = onnx.defs.OpSchema(
            name, domain, 1,
            inputs=[param("query", "T"), param("key", "T", param_option=optional),
                    param("value", "T", param_option=optional), param("bias", "T", param_option=optional),
                    param("key_padding_mask", "M", param_option=optional),
                    param("attention_bias", "T", param_option=optional)],
            outputs=[param("output", "T")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "q, k, v, out"),
                              ("M", ["tensor(int32)"], "key padding mask, 1 = attend")],
            attributes=[onnx.defs.OpSchema.Attribute("num_heads", kinds.INT, "heads"),
                        onnx.defs.OpSchema.Attribute("scale", kinds.FLOAT, "softmax scale")],
        )  # fmt: skip
        onnx.defs.register_schema(schema)
    return onnxscript.values.Op(onnxscript.values.Opset(domain, 1), name, schema)


def _mha_attention(
    query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
    scale: float | None = None, enable_gqa: bool = False,
) -> Any:  # fmt: skip
    """SDPA (B, H, L, d) -> com.microsoft::MultiHeadAttention on (B, L, H*d), and back.

    A (B, 1, 1, Lk) boolean mask (osp's key-padding masks) becomes the node's (B, Lk) int32
    key_padding_mask, which keeps ONNX Runtime on its fused kernels; any other mask is expanded to an
    additive (B, 1, Lq, Lk) attention_bias.
    """
    import onnx
    import onnxscript

    op: Any = onnxscript.opset18  # untyped: onnxscript's per-op stubs reject traced values
    if is_causal:
        raise ValueError("flavour ort-mha: causal attention is not exported (osp's models have none)")
    heads, head_dim = query.shape[1], query.shape[3]
    if not isinstance(heads, int) or not isinstance(head_dim, int):
        raise ValueError("flavour ort-mha: the head count and head width must be static")

    def merge(x: Any) -> Any:  # (B, H, L, d) -> (B, L, H*d)
        return op.Reshape(
            op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, heads * head_dim])
        )

    padding = bias = None
    if attn_mask is not None and attn_mask.shape[1] == 1 and attn_mask.shape[2] == 1:
        keys = op.Concat(op.Shape(attn_mask, start=0, end=1), op.Shape(key, start=2, end=3), axis=0)
        padding = op.Cast(op.Reshape(attn_mask, keys), to=onnx.TensorProto.INT32)
    elif attn_mask is not None:
        target = op.Concat(
            op.Shape(attn_mask, start=0, end=-2), op.Shape(query, start=-2, end=-1),
            op.Shape(key, start=-2, end=-1), axis=0,
        )  # fmt: skip
        # -3e38 is finite in float32, so a masked key's weight is exactly 0 without inf arithmetic;
        # float16 rounds it to -inf, which is harmless as long as a row keeps one key (osp's always do).
        bias = op.Where(op.Expand(attn_mask, target), op.CastLike(0.0, query), op.CastLike(-3.0e38, query))
    out = _contrib_mha()(
        merge(query), merge(key), merge(value), None, padding, bias,
        num_heads=heads, scale=scale if scale is not None else head_dim**-0.5,
    )  # fmt: skip
    out = op.Reshape(out, op.Constant(value_ints=[0, 0, heads, head_dim]))  # (B, L, H, d)
    return op.Transpose(out, perm=[0, 2, 1, 3])


def _nearest_upsample(x: Any, output_size: Any = None, scale_factors: Sequence[float] | None = None) -> Any:
    """Nearest up-sampling by whole factors, spelled for ONNX Runtime's CPU kernels.

    The exporter's ``Resize`` runs element by element there (80 ms for the VAE's largest up-sampling,
    (1, 32, 17, 64, 64) -> 128x128, on a 2-core AMD EPYC; 13 ms in PyTorch). Here the last axis is widened
    by a MatMul with a 0/1 matrix (row i has ones at columns f*i .. f*i+f-1, built from the input's
    own width, so the axis stays dynamic) and the other axes by Unsqueeze -> Expand -> Reshape, which
    copies whole rows: 10 ms for the same tensor. Both give the exact values of ``Resize`` (each output
    is one input times 1 plus zeros; a non-finite input would also spill NaN into its row). Other
    scales keep ``Resize``."""
    import onnx
    import onnxscript

    op: Any = onnxscript.opset18
    resize = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if output_size is not None:  # sizes asked for: PyTorch's nearest is Resize's floor(out * in / size)
        sizes = [op.Constant(value_ints=[n]) if isinstance(n, int) else op.Reshape(n, op.Constant(value_ints=[1]))
                 for n in output_size]  # fmt: skip
        return op.Resize(x, None, None, op.Concat(op.Shape(x, start=0, end=2), *sizes, axis=0), **resize)
    scales = [float(s) for s in scale_factors or []]
    if not scales:
        raise ValueError("upsample_nearest3d: neither output sizes nor scale factors")
    if any(s != int(s) or s < 1 for s in scales):
        return op.Resize(x, None, op.Constant(value_floats=[1.0, 1.0, *scales]), **resize)
    factors = [int(s) for s in scales]
    rank = len(factors) + 2
    if factors[-1] > 1:
        width = op.Shape(x, start=rank - 1, end=rank)
        zero, one = op.Constant(value_int=0), op.Constant(value_int=1)
        rows = op.Range(zero, op.Squeeze(width), one)
        cols = op.Range(zero, op.Squeeze(op.Mul(width, op.Constant(value_ints=[factors[-1]]))), one)
        source = op.Div(cols, op.Constant(value_int=factors[-1]))
        widen = op.Equal(
            op.Unsqueeze(rows, op.Constant(value_ints=[1])), op.Unsqueeze(source, op.Constant(value_ints=[0]))
        )
        x = op.MatMul(x, op.CastLike(op.Cast(widen, to=onnx.TensorProto.FLOAT), x))
    grow = [i for i, f in enumerate(factors[:-1]) if f > 1]  # the other spatial axes, counted from 2
    if not grow:
        return op.Identity(x)
    # (B, C, D1, D2, ...) -> (B, C, D1, 1, D2, ...) -> (B, C, D1, f1, D2, ...) -> (B, C, D1*f1, D2, ...)
    blocks = op.Unsqueeze(x, op.Constant(value_ints=[3 + i + n for n, i in enumerate(grow)]))
    batch_channels = op.Shape(x, start=0, end=2)
    spread, merged = [batch_channels], [batch_channels]
    for i in range(rank - 2):
        size = op.Shape(x, start=2 + i, end=3 + i)
        spread.append(size)
        if i in grow:
            spread.append(op.Constant(value_ints=[factors[i]]))
            size = op.Mul(size, op.Constant(value_ints=[factors[i]]))
        merged.append(size)
    return op.Reshape(op.Expand(blocks, op.Concat(*spread, axis=0)), op.Concat(*merged, axis=0))


def _var_mean(x: Any, dim: Sequence[int] | None = None, unbiased: bool | None = None,
              keepdim: bool = False, *, correction: float | None = None) -> Any:  # fmt: skip
    """``var_mean`` reduced one run of adjacent axes at a time, the innermost run first.

    ONNX Runtime's CPU ``ReduceMean`` over axes that are not adjacent (GroupNorm's per-frame
    statistics reduce (C/G, H*W) of (B, G, C/G, T, H*W)) runs 7x slower than over the innermost axis
    followed by the next (3.7 ms against 0.5 ms at 128x128). A mean of equal-sized means is the mean,
    so the result is the same up to float rounding. Serves ``var_mean.dim`` (``unbiased``) and
    ``var_mean.correction``."""
    import onnxscript

    op: Any = onnxscript.opset18
    rank = len(x.shape)
    axes = sorted({d % rank for d in dim} if dim else set(range(rank)))
    runs: list[list[int]] = []
    for axis in axes:
        if runs and runs[-1][-1] == axis - 1:
            runs[-1].append(axis)
        else:
            runs.append([axis])

    def mean(v: Any) -> Any:
        for run in reversed(runs):
            v = op.ReduceMean(v, op.Constant(value_ints=run), keepdims=1)
        return v

    mu = mean(x)
    centred = op.Sub(x, mu)
    var = mean(op.Mul(centred, centred))
    if correction is None:
        correction = 1.0 if unbiased is None or unbiased else 0.0
    if correction:  # n / (n - correction), n the number of elements reduced
        count = op.CastLike(
            op.ReduceProd(op.Gather(op.Shape(x), op.Constant(value_ints=axes)), keepdims=0), x
        )
        var = op.Mul(var, op.Div(count, op.Sub(count, op.CastLike(float(correction), x))))
    if not keepdim:
        squeeze = op.Constant(value_ints=axes)
        var, mu = op.Squeeze(var, squeeze), op.Squeeze(mu, squeeze)
    return var, mu


@contextlib.contextmanager
def _flavour(flavour: Flavour, opset: int) -> Iterator[dict[Any, Callable[..., Any]] | None]:
    """The translation table for the exporter, with the attention routing the flavour needs (and, for
    ONNX Runtime, the faster spellings of the VAE's up-sampling and GroupNorm statistics)."""
    aten = torch.ops.aten
    ort_table: dict[Any, Callable[..., Any]] = {
        aten.upsample_nearest3d.vec: _nearest_upsample,
        aten.var_mean.dim: _var_mean,
        aten.var_mean.correction: _var_mean,
    }
    if flavour == "ort":
        yield ort_table | ({aten.scaled_dot_product_attention.default: _ort_attention} if opset >= 23 else {})
        return
    if flavour == "ort-mha":
        yield ort_table | {aten.scaled_dot_product_attention.default: _mha_attention}
        return
    try:
        from osp.kernels.onnx import translation_table
        from osp.layers.attention import forced_backend
    except ImportError as err:
        raise ExportError(
            f"flavour trt: needs osp.kernels' osp::attention op and its ONNX translation ({err}); "
            "use --flavour ort"
        ) from None
    with forced_backend("osp"):  # every attention call becomes the one custom op while tracing
        yield translation_table("trt", opset=opset)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The exporter (and the quantizer, on the root logger) log per-operator notes and warnings; an
    export reports its own outcome."""
    loggers = [logging.getLogger(name) for name in names or ("torch.onnx",)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# ------------------------------------------------------------------------------------------ export


def export_component(spec: ComponentSpec, folder: Path, *, flavour: Flavour = "ort", opset: int = 23,
                     verify: bool = True, precision: OnnxPrecision = "fp32") -> ComponentEntry:  # fmt: skip
    """Write ``folder/<name>.onnx`` for one component and check it; returns its manifest entry."""
    if opset not in OPSETS:
        raise ConfigError(f"opset: {opset} is not supported; use {OPSETS.start}..{OPSETS.stop - 1}")
    spec.module.eval()
    path = folder / f"{spec.name}.onnx"
    inputs = spec.make_inputs(spec.sample)
    nbytes = sum(p.numel() * p.element_size() for p in spec.module.parameters())
    try:
        with _quiet(), torch.no_grad(), _flavour(flavour, opset) as table:
            # torch.export first, on its own: it refuses (instead of silently specialising) a model
            # whose code pins a dynamic axis, and says which axis and why. Strict (dynamo) tracing,
            # under which the sin-cos position tables are built in the graph, not taken from their cache.
            exported = torch.export.export(
                spec.module, inputs, dynamic_shapes=spec.dynamic_shapes(), strict=True
            )
            program = torch.onnx.export(
                exported, inputs, dynamo=True, opset_version=opset, custom_translation_table=table,
                input_names=[s.name for s in spec.inputs], output_names=[s.name for s in spec.outputs],
                verbose=False,
            )  # fmt: skip
    except (RuntimeError, ValueError, TypeError, AssertionError, torch._dynamo.exc.UserError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{spec.name}: ONNX export failed: {first}") from err
    assert program is not None
    _name_dims(program, spec)
    with _quiet():
        program.save(path, external_data=nbytes > EXTERNAL_DATA_BYTES)
    quantized = precision == "int8" and spec.name in INT8_COMPONENTS
    if quantized:
        quantize_int8(path, external_data=nbytes > EXTERNAL_DATA_BYTES)
    entry = component_entry(
        spec, path.name, attention_nodes=count_attention(path), quantized="int8" if quantized else None,
        build=dict(spec.source),
    )  # fmt: skip
    if verify and flavour in ORT_FLAVOURS:
        entry = entry.replace(verify=verify_onnx(spec, path, INT8_TOLERANCE if quantized else None))
    return entry


def quantize_int8(path: Path, *, external_data: bool = False) -> None:
    """Rewrite ``path`` with int8 MatMul weights (per output channel) and per-call activation
    quantization. Attention nodes stay fp32: their inputs are activations, not weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    staging = Path(tempfile.mkdtemp(prefix=f".{path.stem}.int8.", dir=path.parent))
    try:  # same file name, so an external-data file keeps the name the graph refers to
        with _quiet("", "onnxruntime"):
            quantize_dynamic(
                path, staging / path.name, weight_type=QuantType.QInt8, per_channel=True,
                op_types_to_quantize=["MatMul"], use_external_data_format=external_data,
            )  # fmt: skip
        for old in path.parent.glob(f"{path.name}*"):  # the fp32 file and its external data, if any
            old.unlink()
        for new in staging.iterdir():
            os.replace(new, path.parent / new.name)
    except Exception as err:  # the quantizer raises whatever its graph walk meets
        raise ExportError(f"{path.stem}: int8 quantization failed: {err}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _name_dims(program: Any, spec: ComponentSpec) -> None:
    """Give the graph's inputs and outputs the spec's axis names instead of the tracer's s0, s1..."""
    import onnx_ir as ir

    graph = program.model.graph
    for value, tensor in zip(
        list(graph.inputs) + list(graph.outputs), spec.inputs + spec.outputs, strict=True
    ):
        value.shape = ir.Shape(list(tensor.dims))


def count_attention(path: Path) -> dict[str, int]:
    """Attention nodes per op type (the fused op the flavour promises, never a decomposition)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = Counter(
        f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in model.graph.node if n.op_type in ATTENTION_OPS
    )
    return dict(counts)


def onnx_session(path: Path, providers: Sequence[str] | None = None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("engine onnx: needs onnxruntime (pip install onnxruntime)") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are not the user's business
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def verify_onnx(spec: ComponentSpec, path: Path, tolerance: float | None = None) -> VerifyEntry:
    """Run ``path`` in ONNX Runtime at ``spec.check`` sizes and compare with eager PyTorch (within
    ``tolerance``, by default the component's own)."""
    inputs = spec.make_inputs(spec.check, seed=1)
    with torch.no_grad():
        expected = spec.module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = onnx_session(path)
    got = session.run(None, {s.name: t.numpy() for s, t in zip(spec.inputs, inputs, strict=True)})
    return compare(
        spec.name, [e.float().numpy() for e in expected], got, spec.tolerance if tolerance is None else tolerance, spec.check,
        "onnxruntime",
    )  # fmt: skip


def compare(component: str, expected: Sequence[np.ndarray], got: Sequence[np.ndarray], tolerance: float,
            sizes: dict[str, int], runtime: str) -> VerifyEntry:  # fmt: skip
    """Max abs and relative error over all outputs; beyond ``tolerance`` (relative) the export fails."""
    max_abs, scale = 0.0, 0.0
    for e, g in zip(expected, got, strict=True):
        if e.shape != g.shape:
            raise ExportError(f"{component}: {runtime} output shape {g.shape} != eager {e.shape} at {sizes}")
        max_abs = max(max_abs, float(np.abs(e - g.astype(np.float32)).max()))
        scale = max(scale, float(np.abs(e).max()))
    max_rel = max_abs / max(scale, 1e-12)
    if not max_rel <= tolerance:  # also catches NaN
        raise ExportError(
            f"{component}: {runtime} differs from eager PyTorch at {sizes}: max abs error {max_abs:.3g}, "
            f"relative {max_rel:.3g} > tolerance {tolerance:g}"
        )
    return VerifyEntry(runtime=runtime, sizes=sizes, max_abs=max_abs, max_rel=max_rel, tolerance=tolerance)


def _folder_sha256(folder: Path) -> str:
    """The sha256 of a weights folder's files (names and contents), or of a released weights file."""
    if folder.is_file():
        return file_hash(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.glob("*") if p.is_file()):
        digest.update(path.name.encode() + b"\0" + file_hash(path).encode())
    return digest.hexdigest()


def finisher_source(
    folder: Path, denoise: float | None = None, partner: Path | None = None
) -> dict[str, str]:
    """Where a finishing model came from: its folder and the sha256 of its config and weights; for an
    upscaler blended with its denoising partner (``osp upscale --denoise``; ``partner``, else the
    folder's ``-denoise`` sibling), also the strength and the partner's folder or file and sha256."""
    source = {"weights": str(folder.resolve()), "weights_sha256": _folder_sha256(folder)}
    if denoise is not None:
        partner = partner or require_denoise_partner(folder, "--upscale-denoise")
        source |= {"denoise": f"{denoise:g}", "denoise_weights": str(partner.resolve()),
                   "denoise_weights_sha256": _folder_sha256(partner)}  # fmt: skip
    return source


def component_specs(pipe: VideoPipeline, frames: int, size: tuple[int, int], names: Sequence[str],
                    max_batch: int = 4, finishers: dict[str, str | Path] | None = None,
                    upscale_denoise: float | None = None,
                    upscale_denoise_model: str | Path | None = None) -> list[ComponentSpec]:  # fmt: skip
    """The specs of the named components of a loaded pipeline, traced at ``frames`` x ``size``.
    ``finishers`` names the upscaler / interpolator (folder or model name; default the bundled ones);
    ``upscale_denoise`` blends the upscaler with its denoising partner (``osp upscale --denoise``):
    ``upscale_denoise_model`` (folder, name or released file), else the upscaler's ``-denoise`` sibling.
    Any of them for a component not in ``names`` is refused."""
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise ConfigError(f"components: unknown {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    applies = {f"--{name}": name for name in finishers or {}}  # each finishing option's component
    applies |= {"--upscale-denoise": "upscaler"} if upscale_denoise is not None else {}
    applies |= {"--upscale-denoise-model": "upscaler"} if upscale_denoise_model is not None else {}
    for option, component in applies.items():
        if component not in names:
            raise ConfigError(f"{option}: applies to the {component}; add {component} to --components")
    _, t, h, w = pipe.latent_shape(frames, size)
    specs = []
    for name in names:
        if name == "transformer":
            text_length = pipe.text_encoder.max_length if isinstance(pipe, TextToVideo) else 0
            specs.append(transformer_spec(pipe.transformer, (t, h, w), text_length, max_batch))
        elif name == "vae_decoder":
            specs.append(vae_decoder_spec(pipe.vae, (t, h, w), max_batch))
        elif name == "vae_encoder":
            specs.append(vae_encoder_spec(pipe.vae, frames, size, max_batch))
        elif name in FINISHERS:
            kind: Kind = "upscaler" if name == "upscaler" else "interpolator"
            folder = resolve_finisher((finishers or {}).get(name), kind)
            if not folder.is_dir():
                raise ConfigError(f"{name}: exports take an osp weights folder, not {folder}")
            if kind == "upscaler":
                partner = (
                    None if upscale_denoise_model is None else resolve_finisher(upscale_denoise_model, kind)
                )
                up = load_upscaler_blend(folder, None, upscale_denoise, partner, option="--upscale-denoise")
                source = finisher_source(folder, upscale_denoise, partner)
                specs.append(upscaler_spec(up, frames, size, max_batch, source))
            else:
                inter = load_finisher(kind, folder)
                assert isinstance(inter, IFNetInterpolator)
                batch = max(64, 16 * max_batch)  # new frames of a batch of clips, each (frames - 1) * (f - 1)
                specs.append(interpolator_spec(inter, size, batch, finisher_source(folder)))
        else:
            if not isinstance(pipe, TextToVideo):
                raise ConfigError("components: a class-to-video model has no text_encoder")
            encoder = pipe.text_encoder
            use_mask = type(encoder).__name__ != "CLIPTextEncoder"  # CLIP runs unmasked (causal)
            specs.append(text_encoder_spec(encoder.model, encoder.max_length, use_mask, max_batch))  # type: ignore[attr-defined]
    return specs


def export_onnx(
    model_dir: str | Path,
    out: str | Path,
    *,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    flavour: Flavour = "ort",
    opset: int = 23,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    precision: OnnxPrecision = "fp32",
    report: Callable[[str], None] | None = None,
    finishers: dict[str, str | Path] | None = None,
    upscale_denoise: float | None = None,
    upscale_denoise_model: str | Path | None = None,
) -> Manifest:
    """Export a pipeline folder's components to ``out`` (replaced only once everything passed).
    ``finishers``: the upscaler / interpolator folders or names (default: the bundled ones);
    ``upscale_denoise``, ``upscale_denoise_model``: the upscaler blended with its denoising partner
    (``osp upscale --denoise`` / ``--denoise-model``)."""
    model_dir, out = Path(model_dir), Path(out)
    if opset not in OPSETS:
        raise ConfigError(f"opset: {opset} is not supported; use {OPSETS.start}..{OPSETS.stop - 1}")
    if precision not in ("fp32", "int8"):
        raise ConfigError(
            f"--precision: ONNX files are fp32 or int8, not {precision} (TensorRT picks fp16/bf16 itself)"
        )
    if precision == "int8" and flavour == "trt":
        raise ConfigError(
            "--precision: int8 is for ONNX Runtime (flavours ort, ort-mha), not the trt flavour"
        )
    pipe = load_pipeline(model_dir)
    frames, size = frames or pipe.spec.frames, size or pipe.spec.size
    specs = component_specs(
        pipe, frames, size, components, finishers=finishers, upscale_denoise=upscale_denoise,
        upscale_denoise_model=upscale_denoise_model,
    )  # fmt: skip
    entries = {}
    with staged_folder(out) as stage:
        for spec in specs:
            entries[spec.name] = export_component(
                spec, stage, flavour=flavour, opset=opset, precision=precision
            )
            if report is not None:
                report(_summary(spec.name, entries[spec.name]))
        manifest = Manifest(
            osp_version=__version__, target="onnx", flavour=flavour, opset=opset, precision=precision,
            model_kind=pipe.spec.kind, source=str(model_dir.resolve()),
            source_weights_sha256=weights_hash(model_dir), frames=frames, size=size,
            vae={"scaling_factor": pipe.vae.config.scaling_factor}, components=entries,
        )  # fmt: skip
        write_manifest(stage, manifest)
    return manifest


def _summary(name: str, entry: ComponentEntry) -> str:
    attention = ", ".join(f"{v} {k}" for k, v in entry.attention_nodes.items()) or "no attention nodes"
    check = entry.verify
    verdict = (
        f"max abs error {check.max_abs:.2e} (relative {check.max_rel:.2e}) at {check.sizes}"
        if check is not None
        else "not run here (checked when TensorRT builds it)"
    )
    weights = " (int8 MatMul weights)" if entry.quantized else ""
    return f"{name}: {entry.file}{weights}, {attention}; {verdict}"
