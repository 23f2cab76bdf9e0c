"""ONNX translations of osp's custom ops, for ``torch.onnx.export(dynamo=True, custom_translation_table=...)``.

Two flavours:

- ``"trt"``: ``osp::attention`` becomes one node ``attention`` in domain ``osp`` with the attributes the
  TensorRT ONNX parser reads to find a plugin when an op is not built in: the node's op type is the plugin
  name, ``plugin_namespace`` its namespace and ``plugin_version`` its version; the remaining attributes
  (``scale``) are handed to the plugin (see :mod:`osp.kernels.trt_plugin`). With a key-padding mask the
  node is ``attention_masked`` with a fourth, int32 (B, Lk) input: a TensorRT plugin has a fixed number of
  inputs, so the masked form is a second plugin.
- ``"ort"``: standard ONNX that ONNX Runtime runs: opset >= 23 has a native ``Attention`` op; older opsets
  get MatMul -> Softmax -> MatMul.

``osp::modulate_norm`` lowers to LayerNormalization -> Mul -> Add in both flavours: TensorRT fuses
LayerNormalization itself, so no plugin is needed for it. Query rows whose keys are all masked give 0 in
every flavour, as in the kernels.
"""

from typing import Any, Literal

import onnx
import onnxscript
import torch
from onnxscript import opset18

_OSP = onnxscript.values.Opset("osp", 1)


def _register_schema(name: str, inputs: list[tuple[str, str]]) -> onnx.defs.OpSchema:
    """An ONNX schema for a node of domain osp: onnxscript traces only ops that have one."""
    if onnx.defs.has(name, "osp"):
        return onnx.defs.get_schema(name, 1, "osp")
    param = onnx.defs.OpSchema.FormalParameter
    attr = onnx.defs.OpSchema.Attribute
    kinds = onnx.defs.OpSchema.AttrType
    schema = onnx.defs.OpSchema(
        name, "osp", 1,
        inputs=[param(n, t) for n, t in inputs],
        outputs=[param("out", "T")],
        type_constraints=[
            ("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "q, k, v and out"),
            ("M", ["tensor(int32)"], "key-padding mask, nonzero = attend"),
        ],
        attributes=[
            attr("scale", kinds.FLOAT, "softmax scale"),
            attr("plugin_namespace", kinds.STRING, "TensorRT plugin namespace"),
            attr("plugin_version", kinds.STRING, "TensorRT plugin version"),
        ],
    )  # fmt: skip
    onnx.defs.register_schema(schema)
    return schema


_QKV = [("q", "T"), ("k", "T"), ("v", "T")]
_ATTENTION = onnxscript.values.Op(_OSP, "attention", _register_schema("attention", _QKV))
_ATTENTION_MASKED = onnxscript.values.Op(
    _OSP, "attention_masked", _register_schema("attention_masked", [*_QKV, ("key_padding_mask", "M")])
)
PLUGIN_VERSION = "1"


def _ops(opset: int) -> Any:
    try:
        return getattr(__import__("onnxscript", fromlist=[f"opset{opset}"]), f"opset{opset}")
    except AttributeError as err:
        raise ValueError(f"onnxscript {onnxscript.__version__} has no ONNX opset {opset}") from err


def _attention_trt(q: Any, k: Any, v: Any, key_padding_mask: Any = None, scale: float = 1.0) -> Any:
    if key_padding_mask is None:
        return _ATTENTION(q, k, v, scale=scale, plugin_namespace="osp", plugin_version=PLUGIN_VERSION)
    mask = opset18.Cast(key_padding_mask, to=onnxscript.INT32.dtype)
    return _ATTENTION_MASKED(
        q, k, v, mask, scale=scale, plugin_namespace="osp", plugin_version=PLUGIN_VERSION
    )


def _make_attention_ort(opset: int) -> Any:
    op = _ops(opset)

    def attention_ort(q: Any, k: Any, v: Any, key_padding_mask: Any = None, scale: float = 1.0) -> Any:
        mask = None
        if key_padding_mask is not None:
            mask = op.Unsqueeze(key_padding_mask, op.Constant(value_ints=[1, 2]))  # (B, 1, 1, Lk)
            # ONNX Runtime's Attention wants the mask's query axis spelled out: (B, 1, Lq, Lk).
            lq = op.Shape(q, start=2, end=3)
            mask = op.Expand(
                mask, op.Concat(op.Constant(value_ints=[1, 1]), lq, op.Constant(value_ints=[1]), axis=0)
            )
        if opset >= 23:
            # Attention and LayerNormalization have optional extra outputs; tracing returns them all.
            out = (
                op.Attention(q, k, v, mask, scale=scale)
                if mask is not None
                else op.Attention(q, k, v, scale=scale)
            )[0]
        else:
            s = op.Mul(op.MatMul(q, op.Transpose(k, perm=[0, 1, 3, 2])), op.CastLike(scale, q))
            if mask is not None:
                s = op.Where(mask, s, op.CastLike(float("-inf"), s))
            out = op.MatMul(op.Softmax(s, axis=-1), v)
        if mask is None:
            return out
        # A row with no key to attend is NaN after softmax; the kernels define it as 0.
        any_key = op.ReduceMax(
            op.Cast(mask, to=onnxscript.FLOAT.dtype), op.Constant(value_ints=[-1]), keepdims=1
        )
        return op.Where(op.Greater(any_key, op.Constant(value_float=0.0)), out, op.CastLike(0.0, out))

    return attention_ort


def _make_modulate_norm(opset: int) -> Any:
    op = _ops(max(opset, 17))  # LayerNormalization is opset 17

    def modulate_norm(x: Any, shift: Any, scale: Any, eps: float = 1e-6) -> Any:
        ones = op.Expand(op.CastLike(1.0, x), op.Shape(x, start=-1))  # no affine: gamma = 1
        y = op.LayerNormalization(x, ones, axis=-1, epsilon=eps)[0]
        return op.Add(op.Mul(y, op.Add(scale, op.CastLike(1.0, scale))), shift)

    return modulate_norm


def translation_table(flavour: Literal["trt", "ort"], opset: int = 23) -> dict[Any, Any]:
    """``custom_translation_table`` for ``torch.onnx.export``: osp's custom ops -> ONNX functions.

    Importing osp.kernels registers the ops; ``opset`` must match the exporter's ``opset_version``.
    """
    if flavour not in ("trt", "ort"):
        raise ValueError(f"flavour must be 'trt' or 'ort', got {flavour!r}")
    from . import attention as _attention  # noqa: F401  (registers torch.ops.osp.*)
    from . import modulate_norm as _modulate_norm  # noqa: F401

    attention = _attention_trt if flavour == "trt" else _make_attention_ort(opset)
    return {
        torch.ops.osp.attention.default: attention,
        torch.ops.osp.modulate_norm.default: _make_modulate_norm(opset),
    }
