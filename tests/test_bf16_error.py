"""osp's bf16 arithmetic is no less accurate than diffusers': with the same weights, each model's bf16 output
is compared against its own fp32 output (CPU; the GPU suite measures the same at Latte-T2V-XL/2 size)."""

from __future__ import annotations

import torch
from diffusers import LatteTransformer3DModel

from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V

CFG = LATTE_T2V_CONFIGS["latte-t2v-tiny"].replace(video_length=3, sample_size=8)


def pair(dtype: torch.dtype) -> tuple[LatteTransformer3DModel, LatteT2V]:
    """diffusers' model and osp's from the same seeded fp32 weights, then cast (buffers included)."""
    torch.manual_seed(0)
    ref = LatteTransformer3DModel(
        num_attention_heads=CFG.num_attention_heads, attention_head_dim=CFG.attention_head_dim,
        in_channels=CFG.in_channels, out_channels=CFG.out_channels, num_layers=CFG.num_layers,
        cross_attention_dim=CFG.cross_attention_dim, attention_bias=CFG.attention_bias, sample_size=8,
        patch_size=CFG.patch_size, activation_fn=CFG.activation_fn, num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=CFG.norm_elementwise_affine, norm_eps=CFG.norm_eps,
        caption_channels=CFG.caption_channels, video_length=3,
    ).eval()  # fmt: skip
    ours = LatteT2V.from_state_dict(CFG, ref.state_dict()).eval()
    return ref.to(dtype), ours.to(dtype)


def test_bf16_error_no_larger_than_diffusers() -> None:
    ref16, ours16 = pair(torch.bfloat16)
    ref32, ours32 = pair(torch.float32)
    rms = {"osp": [], "diffusers": []}
    peak = {"osp": [], "diffusers": []}
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 4, 3, 8, 8, generator=g)
        t = torch.tensor([10.0, 700.0])
        c = torch.randn(2, 8, CFG.caption_channels, generator=g)
        with torch.no_grad():
            outs = {
                "diffusers": (
                    ref16(x.bfloat16(), encoder_hidden_states=c.bfloat16(), timestep=t, return_dict=False)[0],
                    ref32(x, encoder_hidden_states=c, timestep=t, return_dict=False)[0],
                ),
                "osp": (ours16(x.bfloat16(), t, c.bfloat16()), ours32(x, t, c)),
            }
        torch.testing.assert_close(outs["osp"][1], outs["diffusers"][1], rtol=1e-5, atol=1e-5)  # same model
        for side, (low, high) in outs.items():
            err = low.float() - high
            rms[side].append(err.pow(2).mean().sqrt().item())
            peak[side].append(err.abs().max().item())
    mean = {side: sum(v) / len(v) for side, v in rms.items()}
    assert mean["osp"] <= mean["diffusers"], mean
    # single extreme elements move either way by a few bf16 steps; on average they must not be worse
    assert sum(peak["osp"]) <= 1.25 * sum(peak["diffusers"]), peak
