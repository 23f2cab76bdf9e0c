"""osp's custom ops through torch.onnx.export: standard ONNX that ONNX Runtime runs ("ort"), and one
``osp::attention`` node that TensorRT maps to osp's plugin ("trt")."""

import warnings
from typing import Any

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from osp.kernels.onnx import translation_table  # noqa: E402


class _Tiny(torch.nn.Module):
    def __init__(self, masked: bool) -> None:
        super().__init__()
        self.masked = masked

    def forward(self, q, k, v, mask, x, shift, scale):
        out = torch.ops.osp.attention(q, k, v, mask if self.masked else None, 0.3)
        return out, torch.ops.osp.modulate_norm(x, shift, scale, 1e-6)


def _inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 9, 16, generator=gen) for _ in range(3))
    mask = torch.rand(2, 9, generator=gen) > 0.3
    mask[0] = False
    mask[0, 4] = True  # one key left
    mask[1, 0] = True
    x, shift, scale = (torch.randn(*shape, generator=gen) for shape in ((2, 5, 16), (2, 1, 16), (2, 1, 16)))
    return q, k, v, mask, x, shift, scale


def _export(module: torch.nn.Module, flavour: str, opset: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, _inputs(), dynamo=True, opset_version=opset, verbose=False,
            custom_translation_table=translation_table(flavour, opset),
        )  # fmt: skip
    assert program is not None
    return program.model_proto


@pytest.mark.parametrize("opset", [23, 18])
@pytest.mark.parametrize("masked", [False, True])
def test_ort_flavour_runs_in_onnxruntime(opset: int, masked: bool) -> None:
    module = _Tiny(masked)
    model = _export(module, "ort", opset)
    ops = {node.op_type for node in model.graph.node}
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    assert ("Attention" in ops) == (opset >= 23)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    by_name = dict(
        zip(("q", "k", "v", "mask", "x", "shift", "scale"), _inputs(), strict=True)
    )  # forward's names
    feeds = {i.name: by_name[i.name].numpy() for i in session.get_inputs()}
    got = session.run(None, feeds)
    for a, b in zip(got, module(*_inputs()), strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_trt_flavour_is_one_osp_node(masked: bool) -> None:
    model = _export(_Tiny(masked), "trt", 23)
    osp_nodes = [node for node in model.graph.node if node.domain == "osp"]
    assert [node.op_type for node in osp_nodes] == ["attention_masked" if masked else "attention"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in osp_nodes[0].attribute}
    assert attrs["plugin_namespace"] == b"osp" and attrs["plugin_version"] == b"1"
    assert attrs["scale"] == pytest.approx(0.3)
    assert len(osp_nodes[0].input) == 3 + masked
    assert "LayerNormalization" in {node.op_type for node in model.graph.node}  # modulate-norm: standard ops
    assert any(opset.domain == "osp" for opset in model.opset_import)


def test_translation_table_rejects_unknown_flavour() -> None:
    with pytest.raises(ValueError, match="flavour"):
        translation_table("tvm", 23)
