"""osp's TensorRT plugins: registration (idempotent) and, on a GPU, an engine built from the "trt" ONNX
export running osp's kernel. Skipped without tensorrt (it cannot be installed on every machine)."""

import pytest
import torch

trt = pytest.importorskip("tensorrt")
trtp = pytest.importorskip("tensorrt.plugin")

from osp.kernels.trt_plugin import register_tensorrt_plugins  # noqa: E402


def test_register_is_idempotent_and_plugins_are_known() -> None:
    register_tensorrt_plugins()
    register_tensorrt_plugins()
    registry = trt.get_plugin_registry()
    names = {(c.name, c.plugin_namespace) for c in registry.all_creators}
    assert ("attention", "osp") in names and ("attention_masked", "osp") in names


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_engine_from_onnx_runs_osp_attention(tmp_path) -> None:
    from osp.kernels import attention_reference
    from osp.kernels.onnx import translation_table

    register_tensorrt_plugins()

    class Tiny(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.ops.osp.attention(q, k, v, None, 72**-0.5)

    q, k, v = (torch.randn(1, 2, 64, 72, device="cuda", dtype=torch.float16) for _ in range(3))
    program = torch.onnx.export(
        Tiny(),
        (q, k, v),
        dynamo=True,
        opset_version=23,
        custom_translation_table=translation_table("trt", 23),
    )
    assert program is not None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(program.model_proto.SerializeToString()), parser.get_error(0)
    engine_bytes = builder.build_serialized_network(network, builder.create_builder_config())
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
    context = engine.create_execution_context()
    out = torch.empty_like(q)
    for i, tensor in enumerate((q, k, v, out)):
        context.set_tensor_address(engine.get_tensor_name(i), tensor.data_ptr())
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    torch.testing.assert_close(
        out.float(), attention_reference(q.float(), k.float(), v.float()), atol=2e-3, rtol=2e-3
    )
