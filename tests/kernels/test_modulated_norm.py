"""osp.layers.norm.modulated_norm: the blocks' adaLN entry point routes to osp's fused modulate-norm (forced
here; on CUDA where a dispatch table says it is faster) and the models still equal diffusers, forward and
backward, through it; the forward kernel's strided reads and its sm_90 code."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import LatteTransformer3DModel
from torch import nn

import osp.kernels
from osp.dit import LATTE_CONFIGS, Latte
from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp.layers.norm import modulated_norm, norm_backend

TINY_T2V = LATTE_T2V_CONFIGS["latte-t2v-tiny"]


def diffusers_latte() -> LatteTransformer3DModel:
    torch.manual_seed(0)
    model = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=32, attention_bias=True, sample_size=8, patch_size=2,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=24, video_length=3,
    )  # fmt: skip
    for param in model.parameters():
        param.data.normal_(0, 0.2)
    return model


def latte_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 3, 8, 8, generator=g),
        torch.tensor([10.0, 700.0]),
        torch.randn(2, 5, 24, generator=g),
    )


def count_fused_calls(run: Callable[[], object]) -> int:
    """How many times osp's fused modulate-norm (``osp.kernels.modulate_norm``) runs during ``run()``."""
    real = osp.kernels.modulate_norm
    calls = []

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(osp.kernels, "modulate_norm", counted)
        run()
    return len(calls)


def test_latte_t2v_through_the_op_equals_diffusers_forward_and_backward() -> None:
    reference = diffusers_latte()
    ours = LatteT2V.from_state_dict(TINY_T2V, reference.state_dict())
    x, t, context = latte_inputs()
    grad = torch.randn(2, 8, 3, 8, 8, generator=torch.Generator().manual_seed(2))

    want = reference(x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
    (want * grad).sum().backward()
    with norm_backend("osp"):
        got = ours(x, t, context)
        (got * grad).sum().backward()
        # 2 spatial + 2 temporal blocks, two norms each, and the output norm.
        assert count_fused_calls(lambda: ours(x, t, context)) == 9
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ref_grads = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        ref = ref_grads[name].grad
        assert param.grad is not None and ref is not None, name
        if name.endswith("to_k.bias"):
            continue  # softmax ignores a bias added to every key: its true gradient is 0, both sides noise
        # Gradients reach ~170 here: compare relative to each tensor's largest (fp32 summation order).
        error = (param.grad - ref).abs().max() / ref.abs().max().clamp_min(1e-12)
        assert error < 1e-5, (name, error.item())


def test_class_latte_same_output_and_gradients_with_the_op_and_without() -> None:
    torch.manual_seed(0)
    model = Latte(LATTE_CONFIGS["latte-tiny"]).eval()  # eval: no label dropout
    for param in model.parameters():
        param.data.normal_(0, 0.2)
    cfg = model.config
    x = torch.randn(2, cfg.in_channels, cfg.num_frames, *cfg.latent_size)
    t, y = torch.tensor([3.0, 500.0]), torch.tensor([0, 1])

    def run(backend: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with norm_backend(backend):
            out = model(x, t, y)
            out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, plain_grads = run("torch")
    fused, fused_grads = run("osp")
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    assert len(fused_grads) == len(plain_grads)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        assert (a - b).abs().max() <= 5e-5 * b.abs().max()  # relative to the tensor's scale, as above
    with norm_backend("osp"):
        assert count_fused_calls(lambda: model(x, t, y)) == 2 * cfg.depth + 1


def test_automatic_selection_off_cuda_is_the_plain_expression() -> None:
    norm = nn.LayerNorm(16, elementwise_affine=False, eps=1e-6)
    x, shift, scale = torch.randn(2, 3, 5, 16), torch.randn(2, 1, 1, 16), torch.randn(2, 1, 1, 16)
    assert count_fused_calls(lambda: modulated_norm(norm, x, shift, scale)) == 0
    torch.testing.assert_close(
        modulated_norm(norm, x, shift, scale), F.layer_norm(x, (16,), eps=1e-6) * (1 + scale) + shift
    )


def test_affine_norm_is_never_fused() -> None:
    """The kernel has no LayerNorm weight or bias: an affine norm keeps nn.LayerNorm even when forced."""
    norm = nn.LayerNorm(16, eps=1e-5)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x, shift, scale = torch.randn(4, 16), torch.randn(4, 16), torch.randn(4, 16)
    with norm_backend("osp"):
        assert count_fused_calls(lambda: modulated_norm(norm, x, shift, scale)) == 0
        got = modulated_norm(norm, x, shift, scale)
    want = F.layer_norm(x, (16,), norm.weight, norm.bias, eps=1e-5) * (1 + scale) + shift
    torch.testing.assert_close(got, want)


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown norm backend 'triton'"), norm_backend("triton"):
        pass


def test_compiled_block_with_the_op_has_no_graph_break() -> None:
    torch._dynamo.reset()
    norm = nn.LayerNorm(32, elementwise_affine=False, eps=1e-6)
    x, shift, scale = torch.randn(2, 4, 32), torch.randn(2, 1, 32), torch.randn(2, 1, 32)

    def block(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x + modulated_norm(norm, x, shift, scale).relu()

    with norm_backend("osp"):
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x, shift, scale), block(x, shift, scale))


def test_strided_activations_are_read_in_place() -> None:
    """A block's transposed (B, N, T, C) view goes to the kernel as it is; the rows it names are x's rows."""
    row_view = importlib.import_module("osp.kernels.modulate_norm")._row_view
    x = torch.randn(2, 5, 3, 8).transpose(1, 2)  # (2, 3, 5, 8), strides (120, 8, 24, 1)
    same, sizes, strides = row_view(x)
    assert same is x
    rows = torch.arange(x.numel() // 8)
    offsets = (rows // (sizes[1] * sizes[2])) * strides[0] + (rows // sizes[2]) % sizes[1] * strides[1]
    offsets += (rows % sizes[2]) * strides[2]
    flat = x.as_strided((x.untyped_storage().nbytes() // 4,), (1,), 0)
    torch.testing.assert_close(flat[offsets[:, None] + torch.arange(8)], x.reshape(-1, 8), rtol=0, atol=0)
    permuted = torch.randn(2, 3, 4, 5, 8).permute(0, 3, 2, 1, 4)  # four row dims that do not merge: a copy
    assert row_view(permuted)[0].is_contiguous()


@pytest.mark.parametrize("channels", [1152, 768, 4096])
@pytest.mark.parametrize("strided", [False, True])
def test_forward_kernel_compiles_for_h100_with_16_byte_accesses_and_no_spills(
    channels: int, strided: bool
) -> None:
    """The real compiler lowers the forward for sm_90 as the launcher configures it for a bf16 activation
    (contiguous: the row dims specialise to 1; strided: three row dims), with ld/st.global.v4 for x and y."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from osp.kernels.offline import ptxas_usage

    module = importlib.import_module("osp.kernels.modulate_norm")
    cfg = module.fwd_config(channels)
    fn = module._modnorm_fwd
    ints = ["n_rows", "C", "sx0", "sx1", "sx2", "rows_per_group", "s_shift", "s_scale"]
    signature = {**dict.fromkeys(["X", "Shift", "Scale", "Y"], "*bf16"), **dict.fromkeys(ints, "i32")}
    signature |= {"eps": "fp32", "S1": "i32", "S2": "i32"}
    constexprs = {"ROWS": cfg["ROWS"], "C0": cfg["C0"], "C1": cfg["C1"], "ONE_GROUP": True}
    if not strided:
        constexprs |= {"S1": 1, "S2": 1}  # what Triton's launcher makes of integer arguments equal to 1
    signature |= dict.fromkeys(constexprs, "constexpr")
    # Launch arguments divisible by 16 are declared so, as the launcher specialises them (widths and
    # strides of Latte's activations are multiples of 16).
    aligned = ["X", "Shift", "Scale", "Y", "C", "sx0", "sx1", "sx2", "s_shift", "s_scale"]
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    src = ASTSource(
        fn=fn, signature={n: signature[n] for n in fn.arg_names}, constexprs=constexprs, attrs=attrs
    )
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg["num_warps"]})
    ptx = kernel.asm["ptx"]
    registers, spill_bytes = ptxas_usage(ptx, 90)
    assert spill_bytes == 0, (cfg, registers)
    # Part 0 of the tile (ROWS x C0 elements of x, and of y) in 16-byte accesses of 8 bf16 per thread.
    per_thread = cfg["ROWS"] * cfg["C0"] // (8 * 32 * cfg["num_warps"])
    assert len(re.findall(r"ld\.global(?:\.\w+)*\.v4\.b32", ptx)) >= per_thread
    assert len(re.findall(r"st\.global(?:\.\w+)*\.v4\.b32", ptx)) >= per_thread


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_latte_t2v_on_cuda_fused_norm_is_as_accurate_as_the_plain_expression(dtype: torch.dtype) -> None:
    """Both norms against the same weights run in fp64: the kernel (fp32 statistics, one rounding) may be no
    further from it than the plain expression (a rounding after each of its three ops in bf16)."""
    pytest.importorskip("triton")
    torch.manual_seed(0)
    model = LatteT2V(TINY_T2V).cuda().double()
    for param in model.parameters():
        param.data.normal_(0, 0.2)
    x, t, context = (v.cuda() for v in latte_inputs())
    with torch.no_grad(), norm_backend("torch"):
        exact = model(x.double(), t, context.double())
    model.to(dtype)
    x, context = x.to(dtype), context.to(dtype)
    with torch.no_grad():
        with norm_backend("osp"):
            fused = model(x, t, context)
            assert count_fused_calls(lambda: model(x, t, context)) == 9
        with norm_backend("torch"):
            plain = model(x, t, context)
    err_fused = (fused.double() - exact).abs().max().item()
    err_plain = (plain.double() - exact).abs().max().item()
    assert err_fused <= 1.25 * err_plain + 1e-6 * exact.abs().max().item(), (err_fused, err_plain)
