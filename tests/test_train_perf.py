"""Training speed options against plain torch: checkpointing modes and regional compile keep autograd's
gradients and hold less for the backward pass; bf16 under DeepSpeed steps fp32 master weights at every
ZeRO stage, with torch's fused AdamW as with its default; bad option values are refused by name."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("deepspeed", reason="training needs the train extra: pip install -e '.[train]'")
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from osp.dit.latte import LATTE_CONFIGS, Latte
from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp.errors import ConfigError
from osp.export.compile import is_compiled
from osp_train import engine as engine_module
from osp_train.blocks import apply_checkpointing, prepare_blocks
from osp_train.config import TrainConfig
from osp_train.ema import EMA
from osp_train.engine import build_engine, free_port, init_distributed


def tiny(kind: str) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """A tiny model in training mode with weights away from the adaLN-zero init (so every block has
    gradients), and a loss of it on fixed inputs."""
    torch.manual_seed(0)
    model: nn.Module
    if kind == "latte":
        model = Latte(LATTE_CONFIGS["latte-tiny"].replace(class_dropout_prob=0.0))
        c, frames, size = 4, 5, 8
        cond: dict[str, Any] = {"class_labels": torch.tensor([1, 7])}
    else:
        cfg = LATTE_T2V_CONFIGS["latte-t2v-tiny"]
        model = LatteT2V(cfg)
        c, frames, size = cfg.in_channels, 3, 8
        cond = {
            "encoder_hidden_states": torch.randn(2, 6, cfg.caption_channels),
            "encoder_attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2]),
        }
    x, t = torch.randn(2, c, frames, size, size), torch.tensor([30.0, 800.0])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        target = torch.randn_like(model(x, t, **cond))

    def loss(m: nn.Module) -> torch.Tensor:
        return (m(x, t, **cond) - target).square().mean()

    return model.train(), loss


def grads(
    model: nn.Module, loss: Callable[[nn.Module], torch.Tensor]
) -> tuple[float, dict[str, torch.Tensor]]:
    """(loss, gradient per state-dict name) of one backward pass."""
    model.zero_grad()
    value = loss(model)
    value.backward()
    named = model.state_dict(keep_vars=True).items()
    return value.item(), {
        k: v.grad.clone() for k, v in named if isinstance(v, nn.Parameter) and v.grad is not None
    }


def held_for_backward(model: nn.Module, loss: Callable[[nn.Module], torch.Tensor]) -> int:
    """Bytes of activations autograd holds after the forward pass, for the backward one: distinct
    storages saved by ops outside checkpointed blocks (saved_tensors_hooks; inside one, the checkpoint's
    own hooks replace them by a recompute) plus the inputs each checkpointed block keeps. Weights are
    not activations and are left out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    held: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            held[storage.data_ptr()] = storage.nbytes()
        return t

    def block_inputs(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for value in (*args, *kwargs.values()):
            if torch.is_tensor(value):
                keep(value)

    hooks = [
        m.register_forward_pre_hook(block_inputs, with_kwargs=True)
        for m in model.modules()
        if isinstance(m, CheckpointWrapper)
    ]
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss(model)
    for hook in hooks:
        hook.remove()
    return sum(held.values())


@pytest.mark.parametrize("kind", ["latte", "latte-t2v"])
def test_checkpointing_modes_keep_the_gradients_and_hold_less(kind: str) -> None:
    plain, loss = tiny(kind)
    expected_loss, expected = grads(plain, loss)
    held = {"none": held_for_backward(plain, loss)}
    for mode, wrapped_blocks in (("full", 4), ("selective", 2)):
        model = copy.deepcopy(plain)
        assert apply_checkpointing(model, mode, every=2) == wrapped_blocks  # type: ignore[arg-type]
        assert model.state_dict().keys() == plain.state_dict().keys()
        got_loss, got = grads(model, loss)
        assert got_loss == expected_loss and got.keys() == expected.keys()
        for name in expected:  # the recompute replays the same fp32 ops
            torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-9, msg=name)
        held[mode] = held_for_backward(model, loss)
    assert held["full"] < held["selective"] < held["none"], held
    # Every other block recomputed: its activations are gone, the other half's stay.
    assert held["selective"] < 0.75 * held["none"], held


@pytest.mark.slow
def test_compiled_blocks_match_eager() -> None:
    """Regional compile (with every other block checkpointed inside its compiled region) against the
    eager model: the same loss and gradients up to fp32 reordering by Inductor's fusions."""
    plain, loss = tiny("latte-t2v")
    compiled = prepare_blocks(copy.deepcopy(plain), "selective", 2, compile=True)
    assert is_compiled(compiled)
    expected_loss, expected = grads(plain, loss)
    for _ in range(2):  # the first call compiles; the second runs the cached graphs
        got_loss, got = grads(compiled, loss)
        assert got_loss == pytest.approx(expected_loss, rel=1e-5)
        # Relative to the largest gradient: some (key biases) are zero up to rounding in both.
        scale = max(g.abs().max().item() for g in expected.values())
        worst = max((got[k] - expected[k]).abs().max().item() for k in expected)
        assert worst <= 1e-5 * scale, (worst, scale)


def test_ema_reads_a_checkpointed_model_by_state_dict_name() -> None:
    plain, _ = tiny("latte-t2v")
    wrapped = copy.deepcopy(plain)
    apply_checkpointing(wrapped, "full")
    ema_plain, ema_wrapped = EMA(plain, 0.5), EMA(plain, 0.5)  # type: ignore[arg-type]
    with torch.no_grad():
        for p, q in zip(plain.parameters(), wrapped.parameters(), strict=True):
            p.add_(1.0)
            q.add_(1.0)
    ema_plain.update(plain, 0)
    ema_wrapped.update(wrapped, 0)
    for key, value in ema_plain.model.state_dict().items():
        assert torch.equal(ema_wrapped.model.state_dict()[key], value), key


# ------------------------------------------------------------------------------ bad options, by name

BASE: dict[str, Any] = {"out": "unused", "vae": "unused", "data": {"manifest": "unused.jsonl"}, "steps": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gradient_checkpointing": "partial"}, "gradient_checkpointing: Input should be 'none', 'full' or"),
        (
            {"gradient_checkpointing": "selective", "gradient_checkpointing_every": 0},
            "gradient_checkpointing_every: Input should be greater than or equal to 2",
        ),
        ({"gradient_checkpointing_every": 3}, "gradient_checkpointing_every: only read with"),
        ({"model_overrides": {"gradient_checkpointing": True}}, "model_overrides: gradient_checkpointing is"),
        ({"task": "vae", "vae": None, "compile": True}, "compile: only the dit models"),
        ({"checkpoint_every": 0}, "checkpoint_every: Input should be greater than or equal to 1"),
    ],
)
def test_bad_speed_options_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({**BASE, **change}, source="run.yaml")
    assert message in str(err.value) and str(err.value).count("\n") == 0, str(err.value)


def test_old_boolean_checkpointing_reads_as_a_mode() -> None:
    assert TrainConfig.from_dict({**BASE, "gradient_checkpointing": True}).gradient_checkpointing == "full"
    assert TrainConfig.from_dict({**BASE, "gradient_checkpointing": False}).gradient_checkpointing == "none"


# --------------------------------------------------------------------------- DeepSpeed, one process


@pytest.fixture(scope="module")
def world() -> Iterator[None]:
    """A one-process gloo group for this module, its env vars restored afterwards."""
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    saved = {k: os.environ.get(k) for k in [*env, "MASTER_PORT"]}
    os.environ.update(env, MASTER_PORT=str(free_port()))
    init_distributed()
    yield
    dist.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def step_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 5, 8, 8, generator=g), torch.tensor([30.0, 800.0]), torch.tensor([1, 7])


def bf16_loss(model: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x.bfloat16(), t, y).float().square().mean()


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="bit-exact against torch on the CPU; CUDA: the gpu test"
)
@pytest.mark.parametrize("fused", [False, True], ids=["default-adamw", "fused-adamw"])
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_bf16_steps_fp32_master_weights(
    world: None, stage: int, fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against plain torch: a bf16 copy of the model computes the gradients, AdamW steps fp32 copies of
    the weights, and the bf16 weights are those masters rounded. With a learning rate below half a bf16
    step of most weights, AdamW on the bf16 weights themselves would leave them where they are."""
    if fused:  # CPU has torch's fused AdamW too: this checks it works inside DeepSpeed's optimizers
        monkeypatch.setattr(engine_module, "FUSED_ADAMW_DEVICES", ("cpu",))
    steps, lr = 6, 1e-4
    cfg = TrainConfig.from_dict(
        {
            **BASE,
            "model": "latte-tiny",
            "precision": "bf16",
            "zero_stage": stage,
            "optim": {"lr": lr, "grad_clip": 0.0, "fused": fused},
            "steps": steps,
        }
    )
    model, _ = tiny("latte")
    low = copy.deepcopy(model).bfloat16()  # the reference: bf16 compute ...
    masters = [p.detach().float().clone().requires_grad_() for p in low.parameters() if p.requires_grad]
    reference = torch.optim.AdamW(masters, lr=lr, weight_decay=0.0)  # ... fp32 weights and moments
    pure = copy.deepcopy(low)
    pure_optim = torch.optim.AdamW([p for p in pure.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)

    engine = build_engine(cfg, model, 1)
    x, t, y = step_inputs()
    for _ in range(steps):
        engine.backward(bf16_loss(engine, x, t, y))
        engine.step()
        low.zero_grad()
        bf16_loss(low, x, t, y).backward()
        for master, p in zip(masters, (p for p in low.parameters() if p.requires_grad), strict=True):
            assert p.grad is not None
            master.grad = p.grad.float()
        reference.step()
        with torch.no_grad():
            for master, p in zip(masters, (p for p in low.parameters() if p.requires_grad), strict=True):
                p.copy_(master)
        pure_optim.zero_grad()
        bf16_loss(pure, x, t, y).backward()
        pure_optim.step()

    optimizer = engine.basic_optimizer  # our AdamW, now stepping DeepSpeed's master copies
    assert optimizer.defaults.get("fused") is (True if fused else None)
    stepped = [p for group in optimizer.param_groups for p in group["params"]]
    assert {p.dtype for p in stepped} == {torch.float32}
    assert {v.dtype for p in stepped for v in optimizer.state[p].values()} == {torch.float32}
    flat = torch.cat([p.detach().flatten() for p in stepped])
    want = torch.cat([m.detach().flatten() for m in masters])
    torch.testing.assert_close(flat[: want.numel()], want, rtol=1e-6, atol=1e-9)  # ZeRO pads the tail
    assert next(engine.module.parameters()).dtype == torch.bfloat16
    changed = 0
    for key, value in engine.module.state_dict().items():
        assert torch.equal(value, low.state_dict()[key]), key
        changed += int((value != pure.state_dict()[key]).sum())
    assert changed > 0.5 * want.numel(), (changed, want.numel())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_cuda_runs_fused_adamw_at_every_zero_stage(world: None, stage: int) -> None:
    cfg = TrainConfig.from_dict({**BASE, "model": "latte-tiny", "precision": "bf16", "zero_stage": stage})
    model, _ = tiny("latte")
    engine = build_engine(cfg, model, 1)
    optimizer = engine.basic_optimizer
    assert optimizer.defaults.get("fused") is True
    assert {p.dtype for group in optimizer.param_groups for p in group["params"]} == {torch.float32}
    x, t, y = (v.cuda() for v in step_inputs())
    before = [p.detach().float().clone() for p in engine.module.parameters()]
    engine.backward(bf16_loss(engine, x, t, y))
    engine.step()
    after = [p.detach().float() for p in engine.module.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
