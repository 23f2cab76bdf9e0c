"""``osp generate`` as a function: load a model folder, generate, write videos (and GIF / grid)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field

from osp.config import Config
from osp.diffusion import Denoiser
from osp.errors import ConfigError
from osp.interpolate import Warp
from osp.io.video import write_contact_sheet, write_gif, write_video
from osp.pipelines.finish import Finisher
from osp.pipelines.reconstruct import DTYPES
from osp.pipelines.text_to_video import (
    ClassToVideo,
    Decoder,
    NoiseSource,
    TextToVideo,
    VideoPipeline,
    load_pipeline,
)
from osp.progress import ProgressDisplay


class Engine(Protocol):
    """What a runtime engine gives the pipeline (eager, compiled, ONNX Runtime, TensorRT alike)."""

    def denoiser(self) -> Denoiser: ...

    def decoder(self) -> Decoder | None: ...


EngineFactory = Callable[[VideoPipeline, "GenerateConfig"], Engine]
"""Builds the engine for a loaded pipeline; the CLI passes one (osp.pipelines knows no engines)."""


class GenerateConfig(Config):
    prompts: list[str] = Field(default_factory=list)
    class_labels: list[int] = Field(default_factory=list)
    model: Path
    out: Path = Path("out.mp4")
    engine: Literal["torch", "compile", "onnx", "trt"] = "torch"
    engine_dir: Path | None = None
    freeze: bool = Field(False, description="compile engine: whole model, weights frozen in")
    cuda_graphs: bool = Field(
        False, description="torch / compile engines: replay the denoiser as CUDA graphs"
    )
    frames: int | None = Field(None, gt=0)
    size: tuple[int, int] | None = None
    steps: int | None = Field(None, gt=0)
    guidance: float | None = Field(None, ge=0)
    sampler: str | None = None
    negative_prompt: str | None = None
    seed: int = 0
    noise: NoiseSource = Field(
        "torch", description="portable: the seed's noise in any language (see portable_noise)"
    )
    gif: bool = False
    grid: bool = False
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "cpu"
    # Finishing (osp.pipelines.finish): interpolate to ``interpolate`` x the frame rate, then upscale by
    # ``upscale``; the models are folders or names (None: the bundled ones).
    interpolate: int | None = Field(None, ge=1)
    upscale: int | None = Field(None, ge=1)
    interpolator: str | None = None
    upscaler: str | None = None
    upscale_denoise: float | None = Field(None, ge=0.0, le=1.0)  # blend with the upscaler's -denoise partner
    upscale_denoise_model: str | None = (
        None  # that partner (folder, name or file); None: the -denoise sibling
    )
    upscale_ensemble: bool = False  # the upscaler's 8-symmetry self-ensemble
    interpolate_ensemble: bool = False  # the interpolator's 4-mirror ensemble
    interpolate_warp: Warp | None = None  # None: the interpolator's own final warp


def output_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


Loaded = tuple[VideoPipeline, Engine | None]
"""A loaded pipeline and the engine built for it: what :func:`run_generate` reuses across calls."""


def load_generator(cfg: GenerateConfig, engine: EngineFactory | None = None) -> Loaded:
    """Load the model folder and build the engine, checking that the request fits the model."""
    if (cfg.engine != "torch" or cfg.cuda_graphs) and engine is None:
        raise ConfigError(f"engine: {cfg.engine!r} needs an engine factory (osp generate builds one)")
    pipe = load_pipeline(cfg.model, device=cfg.device, dtype=DTYPES[cfg.dtype])
    text = isinstance(pipe, TextToVideo)
    if text and (not cfg.prompts or cfg.class_labels):
        raise ConfigError(
            "prompts: this is a text-to-video model: give one or more prompts (no --class-label)"
        )
    if not text and (not cfg.class_labels or cfg.prompts):
        raise ConfigError("class_labels: this is a class-conditional model: give --class-label N (no prompt)")
    return pipe, None if engine is None else engine(pipe, cfg)


def run_generate(
    cfg: GenerateConfig,
    progress: ProgressDisplay | None = None,
    engine: EngineFactory | None = None,
    *,
    loaded: Loaded | None = None,
) -> list[Path]:
    """Generate and write the videos; ``engine`` (if given) supplies the denoiser and decoder.

    ``loaded`` (from :func:`load_generator`) skips loading: batch sampling calls this once per clip.
    """
    pipe, built = loaded or load_generator(cfg, engine)
    finish = Finisher.build(interpolate=cfg.interpolate, upscale=cfg.upscale, interpolator=cfg.interpolator,
                            upscaler=cfg.upscaler, upscale_denoise=cfg.upscale_denoise,
                            upscale_denoise_model=cfg.upscale_denoise_model,
                            upscale_ensemble=cfg.upscale_ensemble,
                            interpolate_ensemble=cfg.interpolate_ensemble,
                            interpolate_warp=cfg.interpolate_warp, dtype=DTYPES[cfg.dtype],
                            device=cfg.device, engine=built)  # fmt: skip
    common = dict(frames=cfg.frames, size=cfg.size, steps=cfg.steps, guidance=cfg.guidance, sampler=cfg.sampler,
                  seed=cfg.seed, noise=cfg.noise, progress=progress,
                  denoiser=None if built is None else built.denoiser(),
                  decoder=None if built is None else built.decoder())  # fmt: skip
    if isinstance(pipe, TextToVideo):
        result = pipe.generate(cfg.prompts, negative_prompt=cfg.negative_prompt, **common)  # type: ignore[arg-type]
    else:
        assert isinstance(pipe, ClassToVideo)
        result = pipe.generate(cfg.class_labels, **common)  # type: ignore[arg-type]
    videos, fps = finish(result.videos, result.fps, progress)
    written: list[Path] = []
    for path, video in zip(output_paths(cfg.out, len(videos)), videos, strict=True):
        written.append(write_video(path, video, fps))
        if cfg.gif:
            written.append(write_gif(path.with_suffix(".gif"), video, fps))
    if cfg.grid:
        labels = cfg.prompts or [f"class {label}" for label in cfg.class_labels]
        grid = cfg.out.with_name(f"{cfg.out.stem}_grid.png")
        written.append(write_contact_sheet(grid, videos, labels=[label[:40] for label in labels]))
    return written
