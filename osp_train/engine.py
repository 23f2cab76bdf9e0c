"""DeepSpeed from the outside: process group, the generated DeepSpeed config, and ``deepspeed.initialize``.

The model stays a plain single-device ``nn.Module``; ZeRO, mixed precision, gradient clipping and the
LR schedule are all DeepSpeed's, configured here from a :class:`~osp_train.config.TrainConfig`.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def build_engine(cfg: TrainConfig, model: nn.Module, world_size: int) -> Any:
    """``deepspeed.initialize`` with torch AdamW and a LambdaLR schedule; returns the engine."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o, cfg.steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world_size),
    )
    return engine
