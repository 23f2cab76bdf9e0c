"""Backends chosen by measured speed (osp.layers.dispatch_table): attention and modulate-norm selection
against fake tables on a fake GPU (CPU tensors), the ranges a table's points cover, and the shipped H200
table's picks against the timings it was built from."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import osp.kernels
from osp.layers import dispatch_table
from osp.layers import norm as norm_module
from osp.layers.attention import attention, forced_backend, register_backend, select_backend
from osp.layers.norm import modulated_norm

attention_module = importlib.import_module("osp.layers.attention")  # osp.layers.attention is the function
FAKE_GPU = "Fake GPU 80GB"


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """CPU tensors count as sitting on FAKE_GPU, whose table (when a test writes one) lives in tmp_path;
    two fake backends return constants so a test sees which one ran."""
    monkeypatch.setattr(dispatch_table, "TABLE_DIR", tmp_path)
    monkeypatch.setattr(dispatch_table, "gpu_for", lambda device: FAKE_GPU)
    monkeypatch.setattr(attention_module, "_BACKENDS", dict(attention_module._BACKENDS))
    register_backend("fake-a", lambda q, k, v, mask, scale: torch.full_like(q, 1.0), lambda *args: True)
    register_backend(
        "fake-unmasked",
        lambda q, k, v, mask, scale: torch.full_like(q, 2.0),
        lambda q, k, v, mask: mask is None,
    )
    dispatch_table.reset()
    yield tmp_path
    dispatch_table.reset()


def attention_row(kind: str, length: int, forward: dict[str, float], training: dict[str, float] | None = None,
                  **fields: Any) -> dict[str, Any]:  # fmt: skip
    lk = fields.pop("lk", length)
    return {"class": kind, "dtype": fields.pop("dtype", "bf16"), "head_dim": fields.pop("head_dim", 16),
            "masked": fields.pop("masked", False), "lq": length, "lk": lk, "forward_ms": forward,
            "training_ms": training or forward}  # fmt: skip


def write_table(folder: Path, attention_rows: list[dict], norm_rows: list[dict] | None = None) -> None:
    table = dispatch_table.build_table(
        FAKE_GPU, {"bf16": {"source": "test"}}, attention_rows, norm_rows or []
    )
    dispatch_table.table_path(FAKE_GPU).write_text(json.dumps(table))
    assert dispatch_table.table_path(FAKE_GPU).parent == folder


def qkv(length: int, dtype: torch.dtype = torch.bfloat16, grad: bool = False) -> list[torch.Tensor]:
    return [torch.randn(1, 2, length, 16, dtype=dtype, requires_grad=grad) for _ in range(3)]


def ran(out: torch.Tensor) -> str:
    """Which backend produced ``out``: the fakes' constants, or a real attention."""
    return {1.0: "fake-a", 2.0: "fake-unmasked"}.get(out.flatten()[0].item(), "real")


# -------------------------------------------------------------------------------------------- ranges


def test_spans_reach_halfway_to_the_neighbouring_points() -> None:
    assert dispatch_table.spans([4096, 1024, 16384]) == {1024: (512, 2048), 4096: (2048, 8192),
                                                         16384: (8192, 32768)}  # fmt: skip
    assert dispatch_table.spans([16, 64, 32]) == {16: (11, 23), 32: (23, 45), 64: (45, 91)}
    assert dispatch_table.spans([120]) == {120: (60, 240)}


def test_times_measured_at_one_point_add_up_and_refusals_stay_refusals() -> None:
    norm = [{"dtype": "bf16", "channels": 8, "rows": 64, "forward_ms": {"osp": 1.0, "torch": 2.0}},
            {"dtype": "bf16", "channels": 8, "rows": 64, "forward_ms": {"osp": 4.0, "torch": None}}]  # fmt: skip
    (entry,) = dispatch_table.build_table("x", {}, [], norm)["modulate_norm"]
    assert entry["forward_ms"] == {"osp": 5.0, "torch": None} and entry["rows"] == [32, 128]
    assert dispatch_table.ranking(entry["forward_ms"]) == ("osp",)


# ------------------------------------------------------------------------------------------ attention


def test_cpu_and_unmeasured_gpus_run_sdpa(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    q, k, v = qkv(32)
    assert select_backend(q, k, v).name == "sdpa"  # a CPU has no table
    monkeypatch.setattr(dispatch_table, "TABLE_DIR", tmp_path)  # an empty folder: no GPU was measured
    monkeypatch.setattr(dispatch_table, "gpu_for", lambda device: "Unknown GPU")
    dispatch_table.reset()
    try:
        assert select_backend(q, k, v).name == "sdpa"
        torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    finally:
        dispatch_table.reset()


def test_a_length_between_measured_points_takes_its_ranges_winner(fake_gpu: Path) -> None:
    write_table(fake_gpu, [attention_row("spatial", 1024, {"fake-a": 1.0, "sdpa": 2.0}),
                           attention_row("spatial", 4096, {"fake-a": 3.0, "sdpa": 2.0})])  # fmt: skip
    picks = {n: select_backend(*qkv(n)).name for n in (400, 600, 1024, 2000, 2100, 4096, 8000, 9000)}
    assert picks == {400: "sdpa", 600: "fake-a", 1024: "fake-a", 2000: "fake-a", 2100: "sdpa", 4096: "sdpa",
                     8000: "sdpa", 9000: "sdpa"}  # fmt: skip
    assert ran(attention(*qkv(1500))) == "fake-a"


def test_other_dtypes_take_their_own_entries_or_sdpa(fake_gpu: Path) -> None:
    write_table(fake_gpu, [attention_row("spatial", 64, {"fake-a": 1.0, "sdpa": 2.0}),
                           attention_row("spatial", 64, {"fake-unmasked": 1.0, "sdpa": 2.0}, dtype="fp32")])  # fmt: skip
    assert select_backend(*qkv(64, torch.bfloat16)).name == "fake-a"
    assert select_backend(*qkv(64, torch.float16)).name == "sdpa"  # nobody measured fp16
    assert select_backend(*qkv(64, torch.float32)).name == "fake-unmasked"


def test_inference_and_training_take_their_own_rankings(fake_gpu: Path) -> None:
    write_table(fake_gpu, [attention_row("temporal", 16, {"fake-a": 1.0, "fake-unmasked": 2.0},
                                         {"fake-a": 2.0, "fake-unmasked": 1.0})])  # fmt: skip
    with torch.no_grad():
        assert ran(attention(*qkv(16, grad=True))) == "fake-a"
    assert ran(attention(*qkv(16, grad=True))) == "fake-unmasked"
    assert ran(attention(*qkv(16))) == "fake-a"  # no input needs a gradient: inference


def test_a_winner_that_refuses_the_inputs_gives_way_to_the_next(fake_gpu: Path) -> None:
    write_table(fake_gpu, [attention_row("cross", 256, {"fake-unmasked": 1.0, "fake-a": 2.0, "sdpa": 3.0},
                                         lk=24, masked=True),
                           attention_row("cross", 256, {"fake-unmasked": 1.0, "sdpa": 3.0}, lk=24)])  # fmt: skip
    q, k, v = qkv(256)
    k, v = k[:, :, :24], v[:, :, :24]
    assert ran(attention(q, k, v, torch.ones(1, 24, dtype=torch.bool))) == "fake-a"
    assert ran(attention(q, k, v)) == "fake-unmasked"
    # One measured key length, 24, covers [12, 48).
    assert select_backend(q, k[:, :, :12], v[:, :, :12]).name == "fake-unmasked"
    assert select_backend(q, k[:, :, :11], v[:, :, :11]).name == "sdpa"


def test_the_choice_is_looked_up_once_per_shape(fake_gpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_table(fake_gpu, [attention_row("spatial", 64, {"fake-a": 1.0})])
    lookups = []
    real = dispatch_table.attention_ranking
    monkeypatch.setattr(
        dispatch_table, "attention_ranking", lambda *args: lookups.append(args) or real(*args)
    )
    q, k, v = qkv(64)
    for _ in range(3):
        assert ran(attention(q, k, v)) == "fake-a"
    assert len(lookups) == 1
    attention(*qkv(65))
    assert len(lookups) == 2


def test_forced_backends_and_exported_graphs_bypass_the_table(fake_gpu: Path) -> None:
    q, k, v = qkv(64, torch.float32)
    write_table(fake_gpu, [attention_row("spatial", 64, {"fake-a": 1.0, "sdpa": 2.0}, dtype="fp32")])
    want = F.scaled_dot_product_attention(q, k, v)
    with forced_backend("sdpa"):
        torch.testing.assert_close(attention(q, k, v), want)
        assert ran(attention(q, k, v, backend="fake-unmasked")) == "fake-unmasked"
    assert ran(attention(q, k, v)) == "fake-a"

    class Attend(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return attention(q, k, v)

    exported = torch.export.export(Attend(), (q, k, v))  # a graph that leaves the process: SDPA
    assert "scaled_dot_product_attention" in str(exported.graph)
    torch.testing.assert_close(exported.module()(q, k, v), want)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compiled_graphs_keep_the_measured_choice(fake_gpu: Path, dynamic: bool) -> None:
    """torch.compile graphs run the backend the table picks for each shape: with symbolic sizes the
    range checks become guards, so a length in another range recompiles with that range's winner."""
    write_table(fake_gpu, [attention_row("temporal", 16, {"fake-a": 1.0, "sdpa": 2.0}),
                           attention_row("spatial", 1024, {"sdpa": 1.0, "fake-a": 2.0})])  # fmt: skip
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda q, k, v: attention(q, k, v), fullgraph=True, backend="eager", dynamic=dynamic
    )
    picks = {}
    for n in (16, 20, 1024, 900, 12, 5000):
        q, k, v = qkv(n)
        picks[n] = ran(compiled(q, k, v))
        assert picks[n] == ran(attention(q, k, v))
    # lone points cover a factor of 2 each way: 16 -> [8, 32), 1024 -> [512, 2048); 5000: unmeasured
    assert picks == {16: "fake-a", 20: "fake-a", 1024: "real", 900: "real", 12: "fake-a", 5000: "real"}
    masked = torch.compile(
        lambda q, k, v, m: attention(q, k, v, m), fullgraph=True, backend="eager", dynamic=dynamic
    )
    mask = torch.ones(1, 16, dtype=torch.bool)
    assert ran(masked(*qkv(16), mask)) == "real"  # nobody measured it masked: SDPA inside the graph too


# ------------------------------------------------------------------------------------- modulate-norm


def fused_calls(monkeypatch: pytest.MonkeyPatch, run: Any) -> int:
    calls = []
    real = osp.kernels.modulate_norm
    monkeypatch.setattr(osp.kernels, "modulate_norm", lambda *args: calls.append(1) or real(*args))
    run()
    monkeypatch.setattr(osp.kernels, "modulate_norm", real)
    return len(calls)


def test_norm_fuses_where_measured_faster(fake_gpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(norm_module, "_KERNELS", True)
    write_table(fake_gpu, [], [{"dtype": "bf16", "channels": 16, "rows": 64,
                                "forward_ms": {"osp": 1.0, "torch": 2.0},
                                "training_ms": {"osp": 3.0, "torch": 2.0}}])  # fmt: skip
    norm = nn.LayerNorm(16, elementwise_affine=False, eps=1e-6)

    def inputs(rows: int, grad: bool = False) -> list[torch.Tensor]:
        shapes = ((2, rows // 2, 16), (2, 1, 16), (2, 1, 16))
        return [torch.randn(*s, dtype=torch.bfloat16, requires_grad=grad) for s in shapes]

    torch.manual_seed(0)
    x, shift, scale = inputs(64)
    assert fused_calls(monkeypatch, lambda: modulated_norm(norm, x, shift, scale)) == 1
    x32, shift32, scale32 = x.float(), shift.float(), scale.float()
    want = F.layer_norm(x32, (16,), eps=1e-6) * (1 + scale32) + shift32  # fp32, rounded once below
    got = modulated_norm(norm, x, shift, scale)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.bfloat16().float(), atol=2e-2, rtol=2e-2)
    assert fused_calls(monkeypatch, lambda: modulated_norm(norm, *inputs(100))) == 1  # in [32, 128)
    assert fused_calls(monkeypatch, lambda: modulated_norm(norm, *inputs(200))) == 0  # unmeasured
    assert fused_calls(monkeypatch, lambda: modulated_norm(norm, *inputs(64, grad=True))) == 0  # training
    x32 = [t.float() for t in inputs(64)]
    assert fused_calls(monkeypatch, lambda: modulated_norm(norm, *x32)) == 0  # fp32 was not measured


# ---------------------------------------------------------------------------------- the shipped table


@pytest.mark.parametrize(
    ("head_dim", "length", "training", "fastest"),
    [
        (72, 1024, False, "sdpa"),  # forward ms: SDPA's own choice 0.233, cuDNN 0.236, osp 0.328
        (72, 16384, True, "sdpa-cudnn"),
        (72, 17, False, "osp"),  # 17 latent frames fall in L 9-23: osp 0.151 against SDPA's 0.690
        (72, 17, True, "osp"),
        (72, 64, False, "osp"),  # L 45-91: osp 0.116 against flash's 0.187
        (64, 4096, False, "sdpa"),  # 0.581 against cuDNN's 0.599 and osp's 0.693
        (64, 1024, False, "sdpa"),  # 0.162 against osp's 0.198
    ],
)
def test_the_h200_table_ranks_as_its_baseline_measured(
    head_dim: int, length: int, training: bool, fastest: str
) -> None:
    dispatch_table.reset()
    ranking = dispatch_table.attention_ranking(
        "NVIDIA H200", torch.bfloat16, head_dim, length, length, False, training
    )
    assert ranking[0] == fastest


def test_the_h200_table_leaves_unmeasured_cases_to_the_defaults() -> None:
    dispatch_table.reset()
    rank = dispatch_table.attention_ranking
    assert rank("NVIDIA H200", torch.float16, 72, 1024, 1024, False, False) == ()
    assert rank("NVIDIA H200", torch.bfloat16, 72, 100, 100, False, False) == ()  # below the first range
    assert rank("NVIDIA H200", torch.bfloat16, 64, 1024, 120, True, False) == ()  # cross at 64: not measured
    norm = dispatch_table.norm_ranking
    assert norm("NVIDIA H200", torch.bfloat16, 1152, 2 * 17 * 1024, False) == ("osp", "torch")
    assert norm("NVIDIA H200", torch.bfloat16, 1152, 2 * 17 * 1024, True) == ()  # training: not measured
    assert norm("NVIDIA H200", torch.bfloat16, 1152, 2 * 5 * 256, False) == ()


def test_a_partial_run_replaces_what_it_measured_and_keeps_the_rest(
    fake_gpu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/attention.py --write-dispatch after a time-limited run that measured attention but
    not the norm: the new attention rows replace the old, the old norm rows and fp16 rows stay, and the
    file says where the kept norm rows came from."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("attention")
    norm_row = {"dtype": "bf16", "channels": 16, "rows": 64, "forward_ms": {"osp": 1.0, "torch": 2.0}}
    old = dispatch_table.build_table(
        FAKE_GPU,
        {"bf16": {"source": "first run"}, "fp16": {"source": "fp16 run"}},
        [attention_row("spatial", 64, {"fake-a": 1.0, "sdpa": 2.0}),
         attention_row("spatial", 64, {"fake-a": 1.0, "sdpa": 2.0}, dtype="fp16")],
        [norm_row],
    )  # fmt: skip
    dispatch_table.table_path(FAKE_GPU).write_text(json.dumps(old))
    new = dispatch_table.build_table(
        FAKE_GPU,
        {"bf16": {"source": "second run"}},
        [attention_row("spatial", 64, {"fake-a": 3.0, "sdpa": 2.0})],
        [],
    )
    path = bench.install_dispatch(new)
    dispatch_table.reset()
    assert dispatch_table.attention_ranking(FAKE_GPU, torch.bfloat16, 16, 64, 64, False, False)[0] == "sdpa"
    assert dispatch_table.attention_ranking(FAKE_GPU, torch.float16, 16, 64, 64, False, False)[0] == "fake-a"
    assert dispatch_table.norm_ranking(FAKE_GPU, torch.bfloat16, 16, 64, False) == ("osp", "torch")
    measured = json.loads(path.read_text())["measured"]
    assert measured["bf16"]["source"] == "second run"
    assert measured["bf16"]["modulate_norm_from"] == {"source": "first run"}
    assert measured["fp16"] == {"source": "fp16 run"} and "attention_from" not in measured["bf16"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("length", [17, 1024], ids=["temporal", "spatial"])
def test_compiled_graphs_run_the_backend_eager_picks_on_this_gpu(length: int) -> None:
    """XL/2's head dim: Inductor's graph holds osp's op exactly where the shipped table has eager pick osp."""
    dispatch_table.reset()
    q, k, v = (torch.randn(64, 16, length, 72, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    eager_pick = select_backend(q, k, v).name
    graphs: list[str] = []

    def recording(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Any:
        graphs.append(str(gm.graph))
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, inputs)

    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v: attention(q, k, v), fullgraph=True, backend=recording)
    with torch.no_grad():
        torch.testing.assert_close(compiled(q, k, v), attention(q, k, v), atol=2e-2, rtol=2e-2)
    assert ("osp.attention" in graphs[0]) == (eager_pick == "osp"), (eager_pick, graphs[0])
