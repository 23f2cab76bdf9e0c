"""Sample videos during training (``sample_every``): what each task draws, and the files it writes.

A task's sampler takes the EMA model and the first batch this process trained on, and returns clips as
uint8 ``(T, 3, H, W)`` with one label each. dit generates through the inference pipelines
(:class:`~osp.pipelines.text_to_video.ClassToVideo` / ``TextToVideo``), so a sample here is what
``osp generate`` would make from the EMA weights; vae / vqvae show input | reconstruction.

Training randomness is untouched: the pipelines draw from their own generators seeded by ``seed``, a
reconstruction takes the posterior mode, and the loop reseeds the global generator before every step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from osp.io.video import from_model, side_by_side, write_contact_sheet, write_video
from osp.pipelines.text_to_video import ClassToVideo, PipelineSpec, TextToVideo
from osp.vae import CausalVideoVAE, load_causal_vae
from osp_train.config import TrainConfig

Sampler = Callable[[torch.nn.Module, dict[str, Any]], tuple[list[torch.Tensor], list[str]]]
FPS = 8.0
MAX_RECONSTRUCTIONS = 4


def dit_sampler(
    cfg: TrainConfig, device: torch.device, vae: CausalVideoVAE | None = None, encoder: Any = None
) -> Sampler:
    """Class- or text-conditioned samples of ``data.num_frames`` x ``data.size``, decoded by the run's VAE.

    ``vae`` / ``encoder``: the ones the task already holds; with ``features`` they are loaded here.
    """
    if vae is None:
        assert cfg.vae is not None  # TrainConfig requires it when sample_every is set
        vae = load_causal_vae(cfg.vae, device=device).requires_grad_(False).eval()
    if cfg.conditioning == "text" and encoder is None:
        from osp.text import load_text_encoder

        encoder = load_text_encoder(cfg.text_encoder, max_length=cfg.text_max_length, device=device)
    spec = PipelineSpec(
        kind="text-to-video" if cfg.conditioning == "text" else "class-to-video",
        objective=cfg.objective,
        text_encoder=cfg.text_encoder,
        fps=FPS,
        frames=cfg.data.num_frames,
        size=cfg.data.size,
        sampler="flow-euler" if cfg.objective == "flow" else "ddim",
        steps=cfg.sample_steps,
        guidance=cfg.sample_guidance,
    )

    def sample(model: torch.nn.Module, _: dict[str, Any]) -> tuple[list[torch.Tensor], list[str]]:
        # The pipelines sample on the transformer's device; an EMA shadow kept elsewhere visits the VAE's.
        home = next(model.parameters()).device
        model.to(device)
        try:
            if cfg.conditioning == "text":
                made = TextToVideo(model, vae, encoder, spec).generate(cfg.sample_prompts, seed=cfg.seed)
                return made.videos, list(cfg.sample_prompts)
            config: Any = model.config
            num_classes = int(config.num_classes)
            labels = cfg.sample_labels or list(range(min(4, num_classes)))
            # A model trained without label dropout has no "no class" row to guide against.
            guidance = cfg.sample_guidance if config.class_dropout_prob > 0 else 1.0
            made = ClassToVideo(model, vae, spec).generate(labels, guidance=guidance, seed=cfg.seed)
            return made.videos, [f"class {label}" for label in labels]
        finally:
            model.to(home)

    return sample


def reconstruction_sampler(cfg: TrainConfig) -> Sampler:
    """Input | reconstruction of up to four clips of the first batch (posterior mode / nearest codes)."""

    def sample(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[str]]:
        param = next(model.parameters())
        x = batch["video"][:MAX_RECONSTRUCTIONS].to(param.device, param.dtype)  # (B, 3, T, H, W)
        with torch.inference_mode():
            if cfg.task == "vae":
                recon = model(x, sample_posterior=False)[0]
            else:
                recon = model.decode(model.encode(x))  # type: ignore[operator]
        videos = [side_by_side(from_model(a), from_model(b)) for a, b in zip(x, recon, strict=True)]
        return videos, [f"clip {i}" for i in range(len(videos))]

    return sample


def write_samples(
    folder: Path, step: int, model: torch.nn.Module, batch: dict[str, Any], sampler: Sampler
) -> tuple[Path, Path]:
    """``step-XXXXXXX.mp4`` (the samples side by side) and ``step-XXXXXXX.png`` (one row per sample)."""
    videos, labels = sampler(model, batch)
    name = f"step-{step:07d}"
    folder.mkdir(parents=True, exist_ok=True)
    video = write_video(folder / f"{name}.mp4", torch.cat(videos, dim=-1), FPS)  # (T, 3, H, N*W)
    sheet = write_contact_sheet(folder / f"{name}.png", videos, labels=labels)
    return video, sheet
