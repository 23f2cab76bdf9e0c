"""Training for osp models: datasets and buckets, DeepSpeed engine setup, EMA, losses, resume.

This is the only package that imports deepspeed; ``osp`` itself never imports ``osp_train``.
"""

from typing import Any

# Lazy, so ``import osp_train.data`` does not pull in the diffusion stack and DeepSpeed.
_EXPORTS = {
    "TrainConfig": "osp_train.config",
    "OptimConfig": "osp_train.config",
    "TrainSummary": "osp_train.train",
    "train": "osp_train.train",
    "build_model": "osp_train.train",
    "EMA": "osp_train.ema",
    "TrainerState": "osp_train.checkpoint",
    "list_checkpoints": "osp_train.checkpoint",
    "deepspeed_config": "osp_train.engine",
    "init_distributed": "osp_train.engine",
    "launch": "osp_train.launch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'osp_train' has no attribute {name!r}")
