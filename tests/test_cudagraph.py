"""CUDA-graph sampling (osp.export.cudagraph): inputs that need a new graph, refusal off CUDA, and on a GPU
the replayed denoiser against the eager one at every step of a sampling run."""

from __future__ import annotations

import pytest
import torch

from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp.errors import ConfigError
from osp.export.cudagraph import GraphedDenoiser, signature
from osp.export.runtime import TorchEngine
from osp.pipelines.text_to_video import model_denoiser


def test_signature_tells_apart_what_a_graph_is_specialised_to() -> None:
    x, t = torch.zeros(2, 4, 3, 8, 8), torch.zeros(2)
    states, mask = torch.zeros(2, 5, 24), torch.ones(2, 5, dtype=torch.bool)
    base = signature(x, t, {"encoder_hidden_states": states, "encoder_attention_mask": mask})
    assert base == signature(x + 1, t + 3, {"encoder_attention_mask": mask, "encoder_hidden_states": states})
    assert base != signature(torch.zeros(2, 4, 5, 8, 8), t, {"encoder_hidden_states": states,
                                                              "encoder_attention_mask": mask})  # fmt: skip
    assert base != signature(x.half(), t, {"encoder_hidden_states": states, "encoder_attention_mask": mask})
    assert base != signature(x, t, {"encoder_hidden_states": states, "encoder_attention_mask": None})


def test_cuda_graphs_are_refused_off_cuda() -> None:
    model = LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"])
    with pytest.raises(ConfigError, match="need a CUDA device"):
        TorchEngine(model, cuda_graphs=True)
    with pytest.raises(ConfigError, match="need a CUDA device"):
        GraphedDenoiser(model_denoiser(model), "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replay_equals_eager_at_every_step(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"]).cuda().to(dtype).eval()
    eager = model_denoiser(model)
    graphed = GraphedDenoiser(eager, "cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    cond = {"encoder_hidden_states": torch.randn(2, 5, 24, device="cuda", dtype=dtype, generator=g),
            "encoder_attention_mask": torch.ones(2, 5, device="cuda", dtype=torch.bool)}  # fmt: skip
    with torch.inference_mode():
        for step, frames in enumerate((3, 3, 3, 5, 3)):  # a new frame count captures a second graph
            x = torch.randn(2, 4, frames, 8, 8, device="cuda", dtype=dtype, generator=g)
            t = torch.full((2,), 900.0 - 100 * step, device="cuda")
            # cuBLAS may pick other algorithms under capture: rounding-sized differences; a stale
            # input buffer would differ by the size of the output itself
            tol = 1e-4 if dtype == torch.float32 else 3e-2
            torch.testing.assert_close(graphed(x, t, cond), eager(x, t, cond), rtol=tol, atol=tol)
    assert len(graphed.graphs) == 2
