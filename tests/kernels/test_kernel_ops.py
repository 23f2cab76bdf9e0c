"""osp's custom ops on the CPU (reference path): schema/fake/autograd checks, torch.compile and torch.export
holding them as single nodes, eager calls that skip them, gradients against autograd through plain torch,
and the attention registry's "osp" backend."""

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import osp.kernels
from osp.kernels import attention, attention_reference, modulate_norm, modulate_norm_reference
from osp.layers.attention import attention as dispatch
from osp.layers.attention import forced_backend, select_backend


def qkv(batch: int = 2, heads: int = 2, lq: int = 9, lk: int = 9, d: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, heads, n, d, generator=gen, requires_grad=True) for n in (lq, lk, lk)]


def key_mask(batch: int = 2, lk: int = 9) -> torch.Tensor:
    mask = torch.rand(batch, lk, generator=torch.Generator().manual_seed(1)) > 0.4
    mask[:, 0] = True
    return mask


@pytest.mark.parametrize("masked", [False, True])
def test_attention_op_matches_sdpa_forward_and_backward(masked: bool) -> None:
    q, k, v = qkv(lq=7, lk=11)
    mask = key_mask(lk=11) if masked else None
    grad = torch.randn(2, 2, 7, 16)
    sdpa_mask = None if mask is None else mask[:, None, None, :]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, scale=0.3)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    for fn in (lambda: attention(q, k, v, mask, 0.3), lambda: torch.ops.osp.attention(q, k, v, mask, 0.3)):
        out = fn()  # first osp::attention_fwd (grad enabled), then the single-output op
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        for got, ref in zip(torch.autograd.grad(out, (q, k, v), grad), want_grads, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_attention_fully_masked_row_is_zero() -> None:
    q, k, v = qkv()
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1] = False
    out = attention(q, k, v, mask)
    assert out[1].abs().max() == 0 and out[0].abs().max() > 0
    assert all(g.isfinite().all() for g in torch.autograd.grad(out.sum(), (q, k, v)))


def test_opcheck_attention_and_modulate_norm() -> None:
    q, k, v = qkv(lq=5, lk=6, d=8)
    torch.library.opcheck(torch.ops.osp.attention.default, (q, k, v, None, 0.25))
    torch.library.opcheck(torch.ops.osp.attention.default, (q, k, v, key_mask(lk=6), 0.25))
    torch.library.opcheck(torch.ops.osp.attention_fwd.default, (q, k, v, key_mask(lk=6), 0.25))
    x = torch.randn(2, 3, 8, requires_grad=True)
    shift, scale = (torch.randn(2, 1, 8, requires_grad=True) for _ in range(2))
    torch.library.opcheck(torch.ops.osp.modulate_norm.default, (x, shift, scale, 1e-6))


@pytest.mark.parametrize("mod_shape", [(2, 1, 1, 24), (2, 3, 5, 24), (2, 24)])
def test_modulate_norm_op_matches_layer_norm(mod_shape: tuple[int, ...]) -> None:
    x = torch.randn(2, 3, 5, 24, requires_grad=True)
    shift, scale = (torch.randn(*mod_shape, requires_grad=True) for _ in range(2))
    grad = torch.randn(2, 3, 5, 24)
    out = modulate_norm(x, shift, scale)
    view = (2, 1, 1, 24) if len(mod_shape) == 2 else mod_shape
    want = F.layer_norm(x, (24,), eps=1e-6) * (1 + scale.reshape(view)) + shift.reshape(view)
    torch.testing.assert_close(out, want)
    for got, ref in zip(
        torch.autograd.grad(out, (x, shift, scale), grad),
        torch.autograd.grad(want, (x, shift, scale), grad),
        strict=True,
    ):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_modulate_norm_rejects_shapes_that_do_not_broadcast() -> None:
    with pytest.raises(ValueError, match="must broadcast"):
        modulate_norm(torch.randn(2, 3, 8), torch.randn(2, 3, 4), torch.randn(2, 3, 4))


class _Block(torch.nn.Module):
    """The pattern of a DiT block: modulate-norm, then attention over the sequence."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.mod = torch.nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mod(c)[:, None].chunk(2, dim=-1)  # (N, 1, D) each
        h = osp.kernels.modulate_norm(x, shift, scale)
        n, length, dim = h.shape
        q, k, v = self.qkv(h).reshape(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return osp.kernels.attention(q, k, v, mask).transpose(1, 2).reshape(n, length, dim)


def osp_ops_run(fn: Callable[[], object]) -> set[str]:
    """Names of the osp:: custom ops the dispatcher runs during ``fn()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key.startswith("osp::")}


def test_eager_calls_skip_the_custom_ops_and_compute_the_same() -> None:
    """Eager mode runs the kernels (here their reference) through an autograd Function, not the ops: same
    outputs and gradients as the ops, none of their dispatch."""
    block = _Block()
    x, c, mask = torch.randn(2, 10, 32, requires_grad=True), torch.randn(2, 32), key_mask(lk=10)
    grad = torch.randn(2, 10, 32)
    assert osp_ops_run(lambda: block(x, c, mask).backward(grad)) == set()
    with torch.no_grad():
        assert osp_ops_run(lambda: block(x, c, mask)) == set()
    got = block(x, c, mask)
    got_grads = torch.autograd.grad(got, (x, *block.parameters()), grad)
    with _through_the_ops():
        want = block(x, c, mask)
        want_grads = torch.autograd.grad(want, (x, *block.parameters()), grad)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@contextmanager
def _through_the_ops() -> Iterator[None]:
    """The entry points as they run while a graph is recorded: through torch.ops.osp.*."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importlib.import_module("osp.kernels.attention"), "tracing", lambda: True)
        patch.setattr(importlib.import_module("osp.kernels.modulate_norm"), "tracing", lambda: True)
        assert osp_ops_run(lambda: osp.kernels.modulate_norm(*(torch.randn(2, 3, 4) for _ in range(3))))
        yield


def test_compile_fullgraph_matches_eager_and_holds_the_ops() -> None:
    torch._dynamo.reset()
    block = _Block()
    x, c, mask = torch.randn(2, 10, 32), torch.randn(2, 32), key_mask(lk=10)
    want = block(x, c, mask)
    targets: set[Any] = set()

    def recording(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Callable[..., Any]:
        targets.update(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    compiled = torch.compile(block, fullgraph=True, backend=recording)
    torch.testing.assert_close(compiled(x, c, mask), want)
    assert {torch.ops.osp.attention_fwd, torch.ops.osp.modulate_norm} <= targets
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, c, mask), want)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, c, mask), want)
    compiled(x, c, mask).sum().backward()  # the ops' autograd formulas trace too
    assert all(p.grad is not None for p in block.parameters())


def test_export_holds_the_single_output_ops() -> None:
    block = _Block().eval()
    inputs = (torch.randn(2, 10, 32), torch.randn(2, 32), key_mask(lk=10))
    with torch.no_grad():
        program = torch.export.export(block, inputs, strict=True)
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    assert {torch.ops.osp.attention.default, torch.ops.osp.modulate_norm.default} <= targets
    torch.testing.assert_close(program.module()(*inputs), block(*inputs))


def test_registry_forced_osp_matches_sdpa_and_auto_stays_sdpa() -> None:
    q, k, v = qkv()
    mask = key_mask()
    assert select_backend(q, k, v).name == "sdpa"  # no CUDA here: osp never auto-selected
    assert select_backend(q, k, v, mask[:, None, None, :]).name == "sdpa"
    for m in (None, mask):
        want = dispatch(q, k, v, m, backend="sdpa")
        with forced_backend("osp"):
            got = dispatch(q, k, v, m)
            with forced_backend(None):  # None restores automatic selection inside
                torch.testing.assert_close(dispatch(q, k, v, m), want)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend"), forced_backend("nope"):
        pass


def test_forced_osp_backend_rejects_non_key_padding_masks() -> None:
    q, k, v = qkv()
    with forced_backend("osp"), pytest.raises(ValueError, match="key-padding"):
        dispatch(q, k, v, torch.zeros(2, 2, 9, 9, dtype=torch.bool))


def test_reference_is_sdpa_and_plugin_sources_exist() -> None:
    q, k, v = qkv()
    torch.testing.assert_close(attention_reference(q, k, v), F.scaled_dot_product_attention(q, k, v))
    x, shift, scale = torch.randn(2, 4, 8), torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    torch.testing.assert_close(
        modulate_norm_reference(x, shift, scale), F.layer_norm(x, (8,), eps=1e-6) * (1 + scale) + shift
    )
    assert all(path.is_file() for path in osp.kernels.PLUGIN_SOURCE_FILES)
    assert osp.kernels.available() is torch.cuda.is_available()
