"""The training run config: one frozen :class:`TrainConfig`, loaded from YAML, that ``osp train`` resolves.

A run is its config plus its ``out`` folder: re-running the same command with the same config resumes
from the newest complete checkpoint in ``out/checkpoints``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from osp.config import Config
from osp.diffusion import FlowConfig, GaussianConfig
from osp_train.data import DataConfig
from osp_train.finish_config import InterpolateTaskConfig, UpscaleTaskConfig


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
    # torch's fused AdamW kernel (one pass over weights, grads and moments instead of several foreach
    # passes) when every parameter it steps is a CUDA floating tensor; elsewhere torch's default.
    fused: bool = True


class VAELossConfig(Config):
    """``task: vae``: Open-Sora-Plan v1.0's CausalVAE objective (VQGAN recipe), see osp_train.losses.

    Generator loss = sum over pixels / frames of (l1_weight * |x - x̂| + l2_weight * (x - x̂)² +
    perceptual_weight * P(x, x̂)) + kl_weight * KL (summed, per clip) + [step >= disc_start] *
    adaptive_weight * (-D(x̂)).

    ``l2_weight`` is not in the release recipe. L1's gradient has the same size at every pixel, so on
    clips that are mostly flat background the background's pixels outvote a small object's and a
    young VAE sits for thousands of steps drawing the background alone; a squared-error term weighs
    each pixel by its error and gets past that (osp's demo VAE trains with it).
    """

    l1_weight: float = Field(1.0, ge=0)
    l2_weight: float = Field(0.0, ge=0)
    perceptual_weight: float = Field(1.0, ge=0)
    # "lpips:/path/to/weights.pth" (LPIPS-VGG16, see osp_train.losses.LPIPS), "fallback" (multi-scale
    # image-gradient L1, no weights needed) or "none".
    perceptual: str = "fallback"
    kl_weight: float = Field(1e-6, ge=0)
    disc_start: int = Field(2001, ge=0, description="first step that trains and uses the discriminator")
    disc_weight: float = Field(0.5, ge=0, description="times the adaptive weight of the generator GAN term")
    disc_lr: float = Field(1e-4, gt=0)
    disc_channels: int = Field(64, ge=1, description="width of the PatchGAN's first conv")
    disc_layers: int = Field(3, ge=1, le=6)

    @field_validator("perceptual")
    @classmethod
    def _perceptual_spec(cls, value: str) -> str:
        if value in ("none", "fallback"):
            return value
        if not value.startswith("lpips:"):
            raise ValueError(f"expected 'lpips:/path/to/weights.pth', 'fallback' or 'none', got {value!r}")
        if not Path(value.removeprefix("lpips:")).is_file():
            raise ValueError(f"no LPIPS weights file at {value.removeprefix('lpips:')!r}")
        return value


class TrainConfig(Config):
    """Everything one run needs. Field paths in errors read like ``optim.lr``.

    ``task``: ``dit`` trains a diffusion transformer on frozen-VAE latents; ``vae`` trains a causal video
    VAE (L1 + perceptual + KL + PatchGAN, ``vae_loss``); ``vqvae`` trains a VideoGPT VQ-VAE; ``upscale``
    and ``interpolate`` train the finishing models (osp_train.finish_task; settings in ``upscale`` /
    ``interpolate``).

    Speed and memory of ``task: dit``, applied to the transformer's blocks from outside the model
    (osp_train.blocks). ``gradient_checkpointing``: ``none`` keeps every activation for the backward
    pass; ``full`` keeps each block's input only and recomputes the block (one more forward, about a
    third more FLOPs per step); ``selective`` recomputes blocks 0, k, 2k, ... with k =
    ``gradient_checkpointing_every``, so memory saved and recompute paid both fall by k. Whole blocks,
    not parts of each, because a block frees about the most memory per recomputed FLOP. Counted with
    saved-tensor hooks and FlopCounterMode on one LatteT2V-XL/2 layer (8x32x32 latents, fp32, eager),
    per token: a spatial block saves 32 D values for backward and costs 28 D^2 FLOPs to recompute; its
    feed-forward alone 13.5 D for 16 D^2, its self-attention 7.3 D for 8 D^2, its cross-attention 5.4 D
    for 4.2 D^2. Recomputing only the feed-forward frees 1.35x less memory per FLOP than the whole block
    (the norm, modulation and gate tensors between the sub-modules go only with the block); only the
    cross-attention does slightly better, and it holds a sixth of the block. Recomputing just the cheap
    pointwise ops is what torch.compile's partitioner already does inside compiled blocks, so
    ``compile: true`` takes that part. ``true`` / ``false`` from older configs read as ``full`` /
    ``none``. ``compile``: each block torch.compile'd (regionally, one compile per block class, as
    osp.export.compile does for inference); the first steps pay the compile time.
    """

    out: Path
    task: Literal["dit", "vae", "vqvae", "upscale", "interpolate"] = "dit"
    # dit: a preset of LATTE_CONFIGS / LATTE_T2V_CONFIGS, or an osp weights folder to fine-tune.
    # vae / vqvae: a preset of CAUSAL_VAE_CONFIGS / VQVAE_CONFIGS, or an osp weights folder.
    # upscale / interpolate: a preset of UPSCALER_CONFIGS / INTERPOLATOR_CONFIGS, an osp weights folder,
    # or a released Real-ESRGAN .pth / RIFE flownet.pkl to fine-tune.
    # ``model_overrides`` replaces config fields (e.g. ``caption_channels: 384``).
    model: str = "latte-tiny"
    model_overrides: dict[str, Any] = Field(default_factory=dict)
    # Parameters kept fixed: module-name prefixes of the model (e.g. ``[encoder, quant_conv]`` fine-tunes a
    # VAE's decoder alone, so the latents a transformer was trained on stay the same; ``[pos_embed]``).
    freeze: list[str] = Field(default_factory=list)
    objective: Literal["iddpm", "flow"] = "iddpm"
    diffusion: GaussianConfig = GaussianConfig()
    flow: FlowConfig = FlowConfig()
    conditioning: Literal["class", "text"] = "class"
    text_encoder: str = Field("minilm", description="text encoder spec, as osp.text.load_text_encoder")
    text_max_length: int | None = Field(None, ge=1)
    # Classifier-free guidance dropout: text → the empty prompt's embedding; class → the model's
    # "no label" row (None keeps the preset's class_dropout_prob).
    cond_dropout: float | None = Field(None, ge=0, le=1)
    vae: Path | None = Field(
        None, description="dit: the frozen causal VAE (osp weights folder or a v1.0 release)"
    )
    vae_sample: bool = Field(True, description="sample the posterior (True) or take its mode")
    # dit: a folder from ``osp extract`` (osp_train.extract); the run trains on its stored latents and
    # text states, with no VAE or text encoder in the loop. ``data`` is then not read.
    features: Path | None = None
    vae_loss: VAELossConfig = VAELossConfig()
    upscale: UpscaleTaskConfig = UpscaleTaskConfig()
    interpolate: InterpolateTaskConfig = InterpolateTaskConfig()
    data: DataConfig
    num_workers: int = Field(0, ge=0)
    batch_size: int = Field(1, ge=1, description="per rank")
    steps: int = Field(ge=1)
    optim: OptimConfig = OptimConfig()
    # bf16: DeepSpeed runs the model in bf16 and steps fp32 master weights with fp32 AdamW moments at
    # every ZeRO stage (osp_train.engine checks it at start).
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: Literal["none", "full", "selective"] = "none"
    gradient_checkpointing_every: int = Field(
        2, ge=2, description="selective: recompute blocks 0, k, 2k, ... of each block list"
    )
    compile: bool = Field(False, description="task dit: torch.compile each transformer block")
    zero_stage: Literal[0, 1, 2] = 0
    cpu_offload: bool = Field(False, description="ZeRO optimizer states in CPU memory (stage 1/2)")
    ema_decay: float = Field(0.9999, ge=0, le=1)
    ema_warmup: bool = Field(True, description="cap update n's decay at (1 + n) / (10 + n), as diffusers")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1)
    log_tensorboard: bool = Field(
        True, description="rank 0 also writes every logged metric to out/tensorboard"
    )
    # Every ``sample_every`` steps (0 = never) rank 0 writes out/samples/step-XXXXXXX.{mp4,png} from the EMA
    # model: dit samples ``sample_prompts`` (text) or ``sample_labels`` (class; default the first four
    # classes) through the run's VAE; vae / vqvae reconstruct the first batch the process trained on.
    sample_every: int = Field(0, ge=0)
    sample_prompts: list[str] = Field(default_factory=list)
    sample_labels: list[int] = Field(default_factory=list)
    sample_steps: int = Field(10, ge=1)
    sample_guidance: float = Field(4.5, ge=0)
    seed: int = 0

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _checkpointing_flag(cls, value: Any) -> Any:
        if isinstance(value, bool):  # the older on / off switch
            return "full" if value else "none"
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.cpu_offload and self.zero_stage == 0:
            raise ValueError("cpu_offload needs zero_stage 1 or 2")
        if self.data.use_image_num and (self.task != "dit" or self.conditioning != "text"):
            raise ValueError(
                "data.use_image_num: joint image-video training is for task dit with text conditioning "
                "(LatteT2V's num_images)"
            )
        if self.data.use_image_num and self.features is not None:
            raise ValueError(
                "data.use_image_num: features hold no images; joint image-video training runs with the "
                "VAE in the loop (drop features)"
            )
        if self.data.color_jitter is not None and self.task == "dit":
            raise ValueError(
                "data.color_jitter: changes the colours that captions and labels name; it is for task vae"
            )
        if self.task == "dit" and self.vae is None and self.features is None:
            raise ValueError("vae: task dit needs the frozen VAE that makes its latents (or features)")
        if self.features is not None and self.task != "dit":
            raise ValueError(f"features: only task dit trains from features (this is task {self.task})")
        if self.features is not None and self.vae_sample and "vae_sample" in self.model_fields_set:
            raise ValueError("vae_sample: features hold the posterior mode; set vae_sample: false")
        if self.task != "dit" and self.gradient_checkpointing != "none":
            raise ValueError("gradient_checkpointing: only the dit models support it")
        if (
            self.gradient_checkpointing != "selective"
            and "gradient_checkpointing_every" in self.model_fields_set
        ):
            raise ValueError(
                "gradient_checkpointing_every: only read with gradient_checkpointing: selective "
                f"(this run has {self.gradient_checkpointing})"
            )
        if "gradient_checkpointing" in self.model_overrides:
            raise ValueError(
                "model_overrides: gradient_checkpointing is a run setting; set gradient_checkpointing: "
                "none | full | selective instead"
            )
        if self.task != "dit" and self.compile:
            raise ValueError(f"compile: only the dit models' blocks are compiled (this is task {self.task})")
        if self.sample_every and self.task == "dit" and self.vae is None:
            raise ValueError("vae: sample_every needs the VAE that decodes the samples (features hold none)")
        if (
            self.sample_every
            and self.task == "dit"
            and self.conditioning == "text"
            and not self.sample_prompts
        ):
            raise ValueError("sample_prompts: sample_every with text conditioning needs at least one prompt")
        if self.task != "vae" and "vae_loss" in self.model_fields_set:
            raise ValueError(f"vae_loss: only task vae reads it (this is task {self.task})")
        for task in ("upscale", "interpolate"):
            if self.task != task and task in self.model_fields_set:
                raise ValueError(f"{task}: only task {task} reads it (this is task {self.task})")
        return self

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"
