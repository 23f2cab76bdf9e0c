"""Text-to-video and class-to-video generation: the only code that knows every component.

    pipe = TextToVideo.from_pretrained("model/")
    result = pipe.generate(["a red circle moving left"], frames=17, size=(64, 64), steps=50)

A pipeline folder holds ``pipeline.json`` (a :class:`PipelineSpec`), ``transformer/`` and ``vae/``.
Sampling goes through one *denoiser callable* ``denoiser(x_t, t, cond) -> output``: the eager model
by default, or any engine (compiled, ONNX Runtime, TensorRT) passed as ``denoiser=``; this module never
knows which. Likewise ``decoder=`` replaces the VAE decode (scaled latents -> video) with an engine's,
unless ``tiling=`` names a :class:`TilingConfig`: an explicit tiling is decoded by the pipeline's own
VAE, tile by tile (an engine's decoder takes a clip whole).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import torch
from pydantic import Field

from osp.config import Config
from osp.diffusion import Denoiser, sample, sampler_names
from osp.diffusion.portable_noise import portable_randn
from osp.dit.latte import Latte, LatteConfig
from osp.dit.latte_t2v import load_latte_t2v
from osp.errors import ConfigError, ShapeError, WeightsError
from osp.io.video import from_model
from osp.io.weights import atomic_write_text
from osp.progress import ProgressDisplay, silent
from osp.text import TextEmbeddings, TextEncoder, load_text_encoder
from osp.vae import CausalVideoVAE, TilingConfig, load_causal_vae

PIPELINE_NAME = "pipeline.json"

Decoder = Callable[[torch.Tensor], torch.Tensor]
"""``decoder(latents) -> video``: scaled latents (B, C, t, h, w) -> (B, 3, T, H, W) in about [-1, 1]."""
NoiseSource = Literal["torch", "portable"]
"""Initial noise from torch's generator, or from osp.diffusion.portable_noise (reproducible outside Python)."""


class PipelineSpec(Config):
    """What ``pipeline.json`` says: how the parts fit and the defaults a user starts from."""

    kind: Literal["text-to-video", "class-to-video"] = "text-to-video"
    objective: Literal["iddpm", "flow"] = "iddpm"
    text_encoder: str = Field(
        "minilm", description='"minilm", "t5:PATH", "clip:PATH"; relative paths are inside the folder'
    )
    fps: float = Field(8.0, gt=0)
    frames: int = Field(17, gt=0)
    size: tuple[int, int] = (64, 64)
    sampler: str = "ddim"
    steps: int = Field(50, gt=0)
    guidance: float = Field(4.5, ge=0)
    negative_prompt: str = ""
    class_names: list[str] = Field(default_factory=list)


@dataclass
class Generated:
    """Generated clips as uint8 (T, 3, H, W) frames, with the latents they came from."""

    videos: list[torch.Tensor]
    latents: torch.Tensor
    fps: float


def model_denoiser(model: torch.nn.Module) -> Denoiser:
    """The eager-PyTorch denoiser: ``cond`` entries become keyword arguments of the model."""

    def denoise(x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(x, t, **cond)

    return denoise


def _text_cond(embeddings: TextEmbeddings, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {"encoder_hidden_states": embeddings.states.to(dtype), "encoder_attention_mask": embeddings.mask}


class VideoPipeline:
    """Shared by text- and class-conditioned generation: checks, noise, sampling, decoding."""

    def __init__(self, transformer: torch.nn.Module, vae: CausalVideoVAE, spec: PipelineSpec) -> None:
        self.transformer = transformer
        self.vae = vae
        self.spec = spec

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def latent_shape(self, frames: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(C, t, h, w) for a clip, with a clear error for sizes the VAE or the patching cannot take."""
        patch = int(getattr(self.transformer.config, "patch_size", 1))
        multiple = self.vae.config.spatial_compression * patch
        if size[0] % multiple or size[1] % multiple:
            raise ShapeError(
                f"size {size[0]}x{size[1]}: height and width must be multiples of {multiple} "
                f"(VAE {self.vae.config.spatial_compression}x times patch {patch})"
            )
        return self.vae.latent_shape(frames, *size)

    def save_pretrained(self, folder: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        """``pipeline.json`` + ``transformer/`` + ``vae/`` (the text encoder is named, not copied)."""
        folder = Path(folder)
        self.transformer.save_pretrained(folder / "transformer", dtype=dtype)  # type: ignore[operator]
        self.vae.save_pretrained(folder / "vae", dtype=dtype)
        atomic_write_text(
            folder / PIPELINE_NAME, json.dumps(self.spec.model_dump(mode="json"), indent=2) + "\n"
        )
        return folder

    def request(
        self,
        frames: int | None,
        size: tuple[int, int] | None,
        steps: int | None,
        guidance: float | None,
        sampler: str | None,
    ) -> tuple[int, tuple[int, int], int, float, str]:
        """Fill unset options from the spec and check them before any heavy work."""
        spec = self.spec
        frames, size = frames or spec.frames, size or spec.size
        steps, sampler = steps or spec.steps, sampler or spec.sampler
        guidance = spec.guidance if guidance is None else guidance
        self.latent_shape(frames, size)
        if sampler not in sampler_names():
            raise ConfigError(f"sampler: {sampler!r} is unknown; choose one of {', '.join(sampler_names())}")
        if steps < 1:
            raise ConfigError(f"steps: must be at least 1, got {steps}")
        return frames, size, steps, guidance, sampler

    def noise(
        self, count: int, frames: int, size: tuple[int, int], seed: int, source: NoiseSource = "torch"
    ) -> torch.Tensor:
        """Initial latents; sample i uses seed + i, so a clip is the same alone or inside a batch."""
        shape = self.latent_shape(frames, size)
        if source == "portable":
            parts = [portable_randn(shape, seed + i) for i in range(count)]
        else:
            parts = [
                torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(count)
            ]
        return torch.stack(parts).to(device=self.device, dtype=self.dtype)

    def run(
        self,
        noise: torch.Tensor,
        cond: dict[str, torch.Tensor],
        uncond: dict[str, torch.Tensor],
        *,
        sampler: str,
        steps: int,
        guidance: float,
        seed: int,
        denoiser: Denoiser | None,
        progress: ProgressDisplay,
        tiling: TilingConfig | None,
        decoder: Decoder | None = None,
    ) -> Generated:
        # 3. Sample latents through the one denoiser interface (classifier-free guidance batched).
        learned_sigma = bool(getattr(self.transformer.config, "learned_sigma", False))
        with torch.inference_mode(), progress.step(f"sample ({sampler}, {steps} steps)", steps) as update:
            latents = sample(
                denoiser or model_denoiser(self.transformer),
                noise,
                sampler=sampler,
                steps=steps,
                cond=cond,
                uncond=uncond if guidance != 1.0 else None,
                guidance_scale=guidance,
                learned_sigma=learned_sigma,
                generator=torch.Generator().manual_seed(seed),
                progress=update,
            )
        # 4. Decode latents to frames, tile by tile when the clip is large (an engine's decoder takes
        #    the whole clip: it was exported for the shapes it accepts).
        with torch.inference_mode(), progress.step("decode") as update:
            if decoder is not None:
                pixels = decoder(latents)
            else:
                pixels = self.vae.decode_latents(
                    latents.to(next(self.vae.parameters()).dtype), tiling, update
                )
        videos = [from_model(clip.float().cpu()) for clip in pixels]
        return Generated(videos=videos, latents=latents, fps=self.spec.fps)


def auto_tiling(frames: int, size: tuple[int, int]) -> TilingConfig | None:
    """Tile the decode when a clip is larger than one default tile (33 frames or 256 px)."""
    if frames > 33 or max(size) > 256:
        return TilingConfig()
    return None


class TextToVideo(VideoPipeline):
    def __init__(
        self, transformer: torch.nn.Module, vae: CausalVideoVAE, text_encoder: TextEncoder, spec: PipelineSpec
    ) -> None:
        super().__init__(transformer, vae, spec)
        self.text_encoder = text_encoder

    def generate(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str | None = None,
        frames: int | None = None,
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        seed: int = 0,
        denoiser: Denoiser | None = None,
        progress: ProgressDisplay | None = None,
        tiling: TilingConfig | Literal["auto"] | None = "auto",
        decoder: Decoder | None = None,
        noise: NoiseSource = "torch",
    ) -> Generated:
        if isinstance(prompts, str) or not prompts:
            raise ConfigError("prompts: give a list of one or more prompts")
        # 1. Check the request before any heavy work.
        frames, size, steps, guidance, sampler = self.request(frames, size, steps, guidance, sampler)
        spec = self.spec
        progress = progress or silent()
        # 2. Encode the prompts and the negative prompt (the unconditional branch of guidance).
        with progress.step("encode prompts"):
            cond = self.text_encoder.encode(list(prompts), device=self.device)
            uncond = self.text_encoder.null(
                len(prompts), negative_prompt=spec.negative_prompt if negative_prompt is None else negative_prompt,
                device=self.device,
            )  # fmt: skip
        tiles = auto_tiling(frames, size) if tiling == "auto" else tiling
        decoder = None if isinstance(tiling, TilingConfig) else decoder  # asked for tiles: the VAE's
        return self.run(
            self.noise(len(prompts), frames, size, seed, noise),
            _text_cond(cond, self.dtype),
            _text_cond(uncond, self.dtype),
            sampler=sampler, steps=steps, guidance=guidance, seed=seed, denoiser=denoiser, progress=progress,
            tiling=tiles, decoder=decoder,
        )  # fmt: skip

    # ---- folders ----
    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> TextToVideo:
        folder = Path(folder)
        spec = read_spec(folder, "text-to-video")
        transformer = load_latte_t2v(folder / "transformer", dtype=dtype, device=device)
        vae = load_causal_vae(folder / "vae", device=device)
        encoder = load_text_encoder(_resolve_spec(spec.text_encoder, folder), device=device)
        return cls(transformer, vae, encoder, spec)


class ClassToVideo(VideoPipeline):
    """Class-conditional Latte: the unconditional branch is the model's extra "no class" label."""

    def generate(
        self,
        labels: Sequence[int],
        *,
        frames: int | None = None,
        size: tuple[int, int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        seed: int = 0,
        denoiser: Denoiser | None = None,
        progress: ProgressDisplay | None = None,
        tiling: TilingConfig | Literal["auto"] | None = "auto",
        decoder: Decoder | None = None,
        noise: NoiseSource = "torch",
    ) -> Generated:
        num_classes = cast(LatteConfig, self.transformer.config).num_classes
        bad = [label for label in labels if not 0 <= label < num_classes]
        if not labels or bad:
            raise ConfigError(f"class labels: each must be in [0, {num_classes}), got {list(labels)}")
        frames, size, steps, guidance, sampler = self.request(frames, size, steps, guidance, sampler)
        cond = {"class_labels": torch.tensor(list(labels), device=self.device)}
        uncond = {"class_labels": torch.full((len(labels),), num_classes, device=self.device)}
        tiles = auto_tiling(frames, size) if tiling == "auto" else tiling
        decoder = None if isinstance(tiling, TilingConfig) else decoder  # asked for tiles: the VAE's
        return self.run(
            self.noise(len(labels), frames, size, seed, noise), cond, uncond,
            sampler=sampler, steps=steps, guidance=guidance, seed=seed, denoiser=denoiser,
            progress=progress or silent(), tiling=tiles, decoder=decoder,
        )  # fmt: skip

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> ClassToVideo:
        folder = Path(folder)
        spec = read_spec(folder, "class-to-video")
        transformer = Latte.from_pretrained(folder / "transformer", dtype=dtype, device=device)
        return cls(transformer, load_causal_vae(folder / "vae", device=device), spec)


def read_spec(folder: Path, kind: str | None = None) -> PipelineSpec:
    path = folder / PIPELINE_NAME
    if not path.is_file():
        raise WeightsError(f"{folder}: not an osp model folder (no {PIPELINE_NAME})")
    spec = PipelineSpec.from_file(path)
    if kind is not None and spec.kind != kind:
        raise WeightsError(f"{path}: holds a {spec.kind} model, not a {kind} one")
    return spec


def _resolve_spec(spec: str, folder: Path) -> str:
    """Text-encoder specs may name a path relative to the pipeline folder."""
    kind, sep, path = spec.partition(":")
    if sep and path and not Path(path).is_absolute():
        return f"{kind}:{folder / path}"
    return spec


def load_pipeline(folder: str | Path, **kwargs: object) -> TextToVideo | ClassToVideo:
    """The pipeline a folder holds, text- or class-conditioned."""
    spec = read_spec(Path(folder))
    cls = TextToVideo if spec.kind == "text-to-video" else ClassToVideo
    return cls.from_pretrained(folder, **kwargs)  # type: ignore[arg-type]
