"""The training run config: one frozen :class:`TrainConfig`, loaded from YAML, that ``osp train`` resolves.

A run is its config plus its ``out`` folder: re-running the same command with the same config resumes
from the newest complete checkpoint in ``out/checkpoints``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from osp.config import Config
from osp.diffusion import FlowConfig, GaussianConfig
from osp_train.data import DataConfig


class OptimConfig(Config):
    """AdamW with linear warmup, then a constant or cosine learning rate."""

    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = no clipping")


class TrainConfig(Config):
    """Everything one ``task: dit`` run needs. Field paths in errors read like ``optim.lr``."""

    out: Path
    task: Literal["dit"] = "dit"
    # The transformer: a preset of LATTE_CONFIGS / LATTE_T2V_CONFIGS, or an osp weights folder to
    # fine-tune; ``model_overrides`` replaces config fields (e.g. ``caption_channels: 384``).
    model: str = "latte-tiny"
    model_overrides: dict[str, Any] = Field(default_factory=dict)
    objective: Literal["iddpm", "flow"] = "iddpm"
    diffusion: GaussianConfig = GaussianConfig()
    flow: FlowConfig = FlowConfig()
    conditioning: Literal["class", "text"] = "class"
    text_encoder: str = Field("minilm", description="text encoder spec, as osp.text.load_text_encoder")
    text_max_length: int | None = Field(None, ge=1)
    # Classifier-free guidance dropout: text → the empty prompt's embedding; class → the model's
    # "no label" row (None keeps the preset's class_dropout_prob).
    cond_dropout: float | None = Field(None, ge=0, le=1)
    vae: Path = Field(description="frozen causal VAE (osp weights folder or a v1.0 release)")
    vae_sample: bool = Field(True, description="sample the posterior (True) or take its mode")
    data: DataConfig
    num_workers: int = Field(0, ge=0)
    batch_size: int = Field(1, ge=1, description="per rank")
    steps: int = Field(ge=1)
    optim: OptimConfig = OptimConfig()
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    zero_stage: Literal[0, 1, 2] = 0
    cpu_offload: bool = Field(False, description="ZeRO optimizer states in CPU memory (stage 1/2)")
    ema_decay: float = Field(0.9999, ge=0, le=1)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.cpu_offload and self.zero_stage == 0:
            raise ValueError("cpu_offload needs zero_stage 1 or 2")
        if self.data.use_image_num:
            raise ValueError("data.use_image_num: joint image-video training is not in the dit trainer yet")
        return self

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"
