"""osp.layers.norm.modulated_norm: the blocks' adaLN entry point routes to osp::modulate_norm (forced here;
automatic on CUDA) and the models still equal diffusers, forward and backward, through the custom op."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import LatteTransformer3DModel
from torch import nn

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


def count_op_calls(model: nn.Module, run) -> int:  # type: ignore[no-untyped-def]
    """How many times osp::modulate_norm runs during ``run()`` (a profiler sees the dispatcher's op)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return sum(e.count for e in prof.key_averages() if e.key == "osp::modulate_norm")


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
        assert count_op_calls(ours, lambda: ours(x, t, context)) == 9
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
        assert count_op_calls(model, lambda: model(x, t, y)) == 2 * cfg.depth + 1


def test_automatic_selection_off_cuda_is_the_plain_expression() -> None:
    norm = nn.LayerNorm(16, elementwise_affine=False, eps=1e-6)
    x, shift, scale = torch.randn(2, 3, 5, 16), torch.randn(2, 1, 1, 16), torch.randn(2, 1, 1, 16)
    assert count_op_calls(norm, lambda: modulated_norm(norm, x, shift, scale)) == 0
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
        assert count_op_calls(norm, lambda: modulated_norm(norm, x, shift, scale)) == 0
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


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_latte_t2v_on_cuda_selects_the_kernel_and_matches_the_plain_expression(dtype: torch.dtype) -> None:
    pytest.importorskip("triton")
    torch.manual_seed(0)
    model = LatteT2V(TINY_T2V).cuda().to(dtype)
    for param in model.parameters():
        param.data.normal_(0, 0.2)
    x, t, context = (v.cuda() for v in latte_inputs())
    x, context = x.to(dtype), context.to(dtype)
    with torch.no_grad():
        fused = model(x, t, context)
        with norm_backend("torch"):
            plain = model(x, t, context)
    assert count_op_calls(model, lambda: model(x, t, context)) == 9
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(fused.float(), plain.float(), rtol=tol, atol=tol)
