"""The work one transformer forward issues, counted on the CPU with attention on SDPA and the plain
norm: no more aten ops and no more copies than diffusers' model with the same weights, no copies but
the latents in and the prediction out, and a forward that runs on the meta device (no host tensor is
made or read inside it, and a sync such as ``.item()`` would fail there)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from diffusers import DiTTransformer2DModel, LatteTransformer3DModel
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from osp.dit import (
    DIT_CONFIGS,
    LATTE_CONFIGS,
    LATTE_T2V_CONFIGS,
    DiT,
    Latte,
    LatteT2V,
    dit_config_from_diffusers,
    dit_from_diffusers,
)
from osp.layers.attention import forced_backend
from osp.layers.norm import norm_backend

LAYERS = 4  # per-layer work shows over the fixed work of embedding and output


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops a call dispatches (views included: each costs host time)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


class _HostTensors(TorchDispatchMode):
    """Records every op that takes or makes a tensor off the meta device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        self.seen += [f"{func} {t.device} {tuple(t.shape)}" for t in tensors if t.device.type != "meta"]
        return out


@contextmanager
def plain_backends() -> Iterator[None]:
    with forced_backend("sdpa"), norm_backend("torch"), torch.no_grad():
        yield


def aten_ops(call: Callable[[], object]) -> int:
    call()  # warm: tables cached on first use are not per-forward work
    with _OpCounter() as counter:
        call()
    return counter.count


def copies(call: Callable[[], object]) -> list[tuple[str, int]]:
    """(op, elements) of each copy a call makes, op the outermost aten op that made it (``aten::reshape``
    for a reshape that could not be a view, ``aten::native_layer_norm`` for a norm's input, ...).

    Counted with torch.profiler, which also sees the copies kernels make inside themselves: a layer
    norm of a non-contiguous input copies it first, below the level a dispatch mode sees. Left out:
    the bias a CPU ``addmm`` copies into its output before the product (CUDA fuses it into the
    matmul) and 0-dim copies (Python numbers cast to the tensor's dtype).
    """
    call()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        call()
    found = []
    for event in prof.events():
        parent = event.cpu_parent
        if event.name != "aten::copy_" or (parent is not None and parent.name == "aten::addmm"):
            continue
        elements = 1
        for size in event.input_shapes[0]:
            elements *= size
        if event.input_shapes[0]:
            outermost = event
            while outermost.cpu_parent is not None and outermost.cpu_parent.name.startswith("aten::"):
                outermost = outermost.cpu_parent
            found.append((outermost.name, elements))
    return found


# ---- the text-to-video model against diffusers' LatteTransformer3DModel --------------------------------

T2V = LATTE_T2V_CONFIGS["latte-t2v-tiny"].replace(num_layers=LAYERS)


def t2v_pair() -> tuple[LatteT2V, LatteTransformer3DModel]:
    torch.manual_seed(0)
    reference = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=LAYERS,
        cross_attention_dim=32, attention_bias=True, sample_size=8, patch_size=2,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=24, video_length=3,
    ).eval()  # fmt: skip
    for param in reference.parameters():
        param.data.normal_(0, 0.2)
    return LatteT2V.from_state_dict(T2V, reference.state_dict()), reference


def test_latte_t2v_issues_no_more_ops_or_copies_than_diffusers() -> None:
    ours, reference = t2v_pair()
    g = torch.Generator().manual_seed(1)
    x, context = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 5, 24, generator=g)
    t = torch.tensor([10.0, 700.0])

    def osp_call() -> torch.Tensor:
        return ours(x, t, context)

    def diffusers_call() -> torch.Tensor:
        return reference(x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]

    with plain_backends():
        torch.testing.assert_close(osp_call(), diffusers_call(), rtol=1e-5, atol=1e-5)  # the same work
        assert aten_ops(osp_call) <= aten_ops(diffusers_call)
        ours_copied, theirs_copied = copies(osp_call), copies(diffusers_call)
    assert len(ours_copied) <= len(theirs_copied), (ours_copied, theirs_copied)
    assert sum(n for _, n in ours_copied) <= sum(n for _, n in theirs_copied), (ours_copied, theirs_copied)


# ---- DiT against diffusers' DiTTransformer2DModel -------------------------------------------------------


def test_dit_issues_no_more_ops_or_copies_than_diffusers() -> None:
    torch.manual_seed(0)
    reference = DiTTransformer2DModel(
        num_layers=LAYERS, num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10,
    ).eval()  # fmt: skip
    for param in reference.parameters():
        param.data.normal_(0, 0.05)
    shared = reference.transformer_blocks[0].norm1.emb.state_dict()  # one embedder, as DiT has
    for block in reference.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(shared)
    config = dit_config_from_diffusers(dict(reference.config))
    ours = DiT.from_state_dict(config, dit_from_diffusers(reference.state_dict(), config))
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t, y = torch.tensor([0.0, 421.0, 999.0]), torch.tensor([1, 10, 7])

    def osp_call() -> torch.Tensor:
        return ours(x, t, y)

    def diffusers_call() -> torch.Tensor:
        return reference(x, timestep=t, class_labels=y).sample

    with plain_backends():
        torch.testing.assert_close(osp_call(), diffusers_call(), rtol=1e-5, atol=1e-5)
        assert aten_ops(osp_call) <= aten_ops(diffusers_call)
        ours_copied, theirs_copied = copies(osp_call), copies(diffusers_call)
    assert len(ours_copied) <= len(theirs_copied), (ours_copied, theirs_copied)
    assert sum(n for _, n in ours_copied) <= sum(n for _, n in theirs_copied), (ours_copied, theirs_copied)


# ---- every model: copies, meta device ------------------------------------------------------------------


Inputs = Callable[[int, int, int], tuple[torch.Tensor, ...]]


def _models(device: str) -> dict[str, tuple[torch.nn.Module, Inputs]]:
    """name -> (model, inputs(frames, height, width)), both on ``device``; DiT takes the one-frame
    video layout (B, C, 1, H, W) and ignores ``frames``."""
    with torch.device(device):
        t2v = LatteT2V(T2V).eval()
        latte = Latte(LATTE_CONFIGS["latte-tiny"].replace(depth=2 * LAYERS)).eval()
        dit = DiT(DIT_CONFIGS["dit-tiny"].replace(depth=LAYERS)).eval()

    def t2v_inputs(frames: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
        with torch.device(device):
            return torch.randn(2, 4, frames, height, width), torch.rand(2), torch.randn(2, 5, 24)

    def class_inputs(frames: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
        with torch.device(device):
            return torch.randn(2, 4, frames, height, width), torch.rand(2), torch.zeros(2, dtype=torch.long)

    return {
        "latte_t2v": (t2v, t2v_inputs),
        "latte": (latte, class_inputs),
        "dit": (dit, lambda frames, height, width: class_inputs(1, height, width)),
    }


@pytest.mark.parametrize("name", ["latte_t2v", "latte", "dit"])
def test_forward_copies_only_the_latents_and_the_prediction(name: str) -> None:
    """Patchifying reads the latents into token order once and unpatchifying writes the prediction
    once; hidden states are never copied (no transposes around temporal blocks, no non-contiguous
    input to a norm or a matmul)."""
    model, make_inputs = _models("cpu")[name]
    inputs = make_inputs(5, 8, 8)
    with plain_backends():
        out = model(*inputs)
        copied = copies(lambda: model(*inputs))
    assert sum(n for _, n in copied) <= inputs[0].numel() + out.numel(), copied


@pytest.mark.parametrize("name", ["latte_t2v", "latte", "dit"])
@pytest.mark.parametrize("size", [(5, 8, 8), (3, 12, 8)], ids=["training size", "other size"])
def test_forward_runs_on_meta_without_host_tensors(name: str, size: tuple[int, int, int]) -> None:
    model, make_inputs = _models("meta")[name]
    inputs = make_inputs(*size)
    with plain_backends(), _HostTensors() as host:
        out = model(*inputs)
    assert host.seen == []
    frames = 1 if name == "dit" else size[0]
    assert out.device.type == "meta" and tuple(out.shape) == (2, 8, frames, *size[1:])


def test_latte_t2v_masks_and_joint_images_run_on_meta() -> None:
    with torch.device("meta"):
        model = LatteT2V(T2V).eval()
        x, t = torch.randn(2, 4, 5, 8, 8), torch.rand(2)
        captions, mask = torch.randn(2, 3, 5, 24), torch.ones(2, 3, 5, dtype=torch.bool)
    with plain_backends(), _HostTensors() as host:
        masked = model(x, t, captions[:, 0], mask[:, 0])
        joint = model(x, t, captions, mask, num_images=2)
    assert host.seen == []
    assert masked.shape == joint.shape == (2, 8, 5, 8, 8)
