"""DeepSpeed from the outside: process group, the generated DeepSpeed config, and ``deepspeed.initialize``.

The model stays a plain single-device ``nn.Module``; ZeRO, mixed precision, gradient clipping and the
LR schedule are all DeepSpeed's, configured here from a :class:`~osp_train.config.TrainConfig`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from osp.errors import ConfigError
from osp.launch import free_port
from osp_train.config import OptimConfig, TrainConfig


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join (or, alone, create) the process group: gloo on CPU, NCCL on CUDA.

    A plain ``python -m osp.cli train`` is a world of one; the env vars torchrun / deepspeed / our
    ``--nproc`` launcher set are filled in when absent, so every run goes through the same code.
    """
    import deepspeed

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=local_rank,
        device=torch.device("cuda", local_rank) if cuda else torch.device("cpu"),
    )


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``cfg`` (optimizer and scheduler are passed as objects)."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.batch_size * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "zero_optimization": zero,
        # Our AdamW is torch's: DeepSpeed's fused/CPU Adam would need its C++ ops built.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def lr_lambda(optim: OptimConfig, total_steps: int) -> Any:
    """Multiplier of ``optim.lr`` after ``step`` optimizer steps: linear warmup, then constant or cosine."""

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        if optim.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cosine

    return factor


# Where AdamW runs torch's fused kernel (CUDA has one in every torch osp supports). CPU has one too
# since torch 2.4, but CPU runs stay on torch's default path, the one osp's CPU results were made with.
FUSED_ADAMW_DEVICES: tuple[str, ...] = ("cuda",)


def adamw(
    params: list[nn.Parameter], optim: OptimConfig, fused_devices: tuple[str, ...]
) -> torch.optim.AdamW:
    """torch's AdamW for ``params``: the fused kernel when ``optim.fused`` and every parameter is a
    floating tensor on one of ``fused_devices``, else torch's default (foreach on CUDA).

    DeepSpeed later swaps the parameters for its own fp32 copies on the same device (the bf16 masters,
    ZeRO 1/2's flat partitions), which the fused kernel steps as well; with ``cpu_offload`` those live
    in CPU memory, so the caller passes no fused device then.
    """
    fused = optim.fused and all(p.device.type in fused_devices and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        params,
        lr=optim.lr,
        betas=optim.betas,
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        **({"fused": True} if fused else {}),
    )


def build_engine(cfg: TrainConfig, model: nn.Module, world_size: int) -> Any:
    """``deepspeed.initialize`` with torch AdamW and a LambdaLR schedule; returns the engine.

    The model moves to this rank's device first (DeepSpeed would move it too), so the optimizer sees
    the parameters where they train and can pick its fused kernel.
    """
    import deepspeed

    if torch.cuda.is_available():
        model.to(torch.device("cuda", torch.cuda.current_device()))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, cfg.optim, () if cfg.cpu_offload else FUSED_ADAMW_DEVICES)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, cfg.steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world_size),
    )
    # DeepSpeed's bf16 optimizer at ZeRO 0 primes AdamW with one zero-gradient step: the moments stay
    # zero but the step count runs one ahead, so Adam's bias correction shrinks the first updates (by
    # about a quarter at step 1) against ZeRO 1/2 and fp32. Without state, AdamW starts at step 1.
    optimizer.state.clear()
    if cfg.precision == "bf16":
        # DeepSpeed has replaced our optimizer's parameters with its master copies (per parameter at
        # ZeRO 0, flat partitions at 1/2); AdamW's moments are created in their dtype at the first step.
        masters = {str(p.dtype) for group in optimizer.param_groups for p in group["params"]}
        if masters != {"torch.float32"}:
            raise ConfigError(
                f"precision: bf16 needs fp32 master weights, but DeepSpeed {deepspeed.__version__} steps "
                f"{', '.join(sorted(masters))} parameters at zero_stage {cfg.zero_stage}"
            )
    return engine
