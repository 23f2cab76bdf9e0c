"""Finishing a video: frame interpolation and super-resolution, for files and after generation.

``osp upscale`` / ``osp interpolate`` build an :class:`UpscaleConfig` / :class:`InterpolateConfig`
and call :func:`run_upscale` / :func:`run_interpolate`; ``osp generate --interpolate N --upscale S``
builds a :class:`Finisher` before sampling (so a bad factor fails before any heavy work) and runs it
on the generated clips: base model -> interpolator -> upscaler, each a step of the same progress
display. Interpolating first is cheaper (the interpolator runs at the base model's small size) and
lets the upscaler's temporal window see the new frames.

Finishing models are osp weights folders (``config.json`` + ``model.safetensors``) found by path, by
name among the bundled ones (``osp/models/<name>/``) and the local ones (``$OSP_MODELS``), or
released checkpoints: a Real-ESRGAN compact ``.pth`` or a RIFE ``flownet.pkl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar, runtime_checkable

import torch
from pydantic import Field

from osp.config import Config
from osp.errors import ConfigError, ShapeError, WeightsError
from osp.interpolate import IFNetInterpolator, InterpolateTiling, Warp, load_interpolator
from osp.io.video import from_model, probe_video, read_video, to_model, write_video
from osp.io.weights import CONFIG_NAME, read_config_json
from osp.pipelines.bundled import local_models_dir
from osp.progress import ProgressDisplay, Update, silent
from osp.upscale import SRVGGUpscaler, UpscaleTiling, load_upscaler

_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_UPSCALER = "osp-demo-upscale-x4"
DEFAULT_INTERPOLATOR = "osp-demo-interpolate-x2"
Kind = Literal["upscaler", "interpolator"]
KINDS: dict[str, Kind] = {SRVGGUpscaler.__name__: "upscaler", IFNetInterpolator.__name__: "interpolator"}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Finishing steps work on uint8 (T, 3, H, W) clips: ``fn(clip, update) -> clip``.
ClipFn = Callable[[torch.Tensor, Update], torch.Tensor]
Net = Callable[..., torch.Tensor]


@runtime_checkable
class FinishingEngine(Protocol):
    """What an exported engine (osp.export.runtime) gives the chain: its upscaler or interpolator,
    checked against the weights in ``folder`` (an upscaler blended by ``denoise`` with its denoising
    partner, ``denoise_model`` or the folder's ``-denoise`` sibling, as exported), or None when it holds
    none (the eager model runs)."""

    def finisher(
        self, kind: str, folder: Path, denoise: float | None = None, denoise_model: Path | None = None
    ) -> Net | None: ...


# ------------------------------------------------------------------------------------------ models


def _finishers_in(folder: Path) -> dict[str, tuple[Kind, Path]]:
    found: dict[str, tuple[Kind, Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if (path / CONFIG_NAME).is_file():
                kind = KINDS.get(str(read_config_json(path).get("_class_name")))
                if kind is not None:
                    found[path.name] = (kind, path)
    return found


def finishing_models() -> dict[str, dict[str, tuple[Kind, Path]]]:
    """``{"bundled": {name: (kind, folder)}, "local": {...}}`` for every finishing model present."""
    return {"bundled": _finishers_in(_MODELS_DIR), "local": _finishers_in(local_models_dir())}


def default_upscaler(scale: int | None = None) -> str:
    """The bundled upscaler made for ``scale`` (``osp-demo-upscale-x2`` for 2), else the default x4 one,
    which also makes x2 by area-downsampling its x4 output."""
    named = f"osp-demo-upscale-x{scale}"
    return named if scale is not None and named in _finishers_in(_MODELS_DIR) else DEFAULT_UPSCALER


def resolve_finisher(model: str | Path | None, kind: Kind, scale: int | None = None) -> Path:
    """A finishing model's folder or file from a path, a local or bundled name, or None (the default;
    for an upscaler, the bundled one made for ``scale`` where there is one)."""
    if model is None:
        model = default_upscaler(scale) if kind == "upscaler" else DEFAULT_INTERPOLATOR
    path = Path(model)
    if path.exists():
        return path
    for found in finishing_models().values():
        if str(model) in found:
            got, folder = found[str(model)]
            if got != kind:
                raise WeightsError(f"model: {model} is an {got}, not an {kind}")
            return folder
    raise WeightsError(
        f"model: {model} is neither a folder, a file nor an {kind} name "
        f"(see `osp models`; local models live in {local_models_dir()})"
    )


def load_finisher(
    kind: Kind,
    model: str | Path | None = None,
    weights: Path | None = None,
    *,
    scale: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> SRVGGUpscaler | IFNetInterpolator:
    """The upscaler or interpolator named by ``model`` (folder or name) or ``weights`` (a released file);
    neither: the bundled default (for an upscaler, the one made for ``scale`` where there is one)."""
    if model is not None and weights is not None:
        raise ConfigError("--weights: give a released weights file or --model, not both")
    path = weights if weights is not None else resolve_finisher(model, kind, scale)
    if weights is not None and not weights.exists():
        raise WeightsError(f"--weights: {weights}: no such file")
    if (path / CONFIG_NAME).is_file():
        held = KINDS.get(str(read_config_json(path).get("_class_name")))
        if held != kind:
            raise WeightsError(
                f"model: {path} holds {f'an {held}' if held else 'another model'}, not an {kind}"
            )
    if kind == "upscaler":
        return load_upscaler(path, dtype=dtype, device=device)
    return load_interpolator(path, dtype=dtype, device=device)


def with_final_warp(model: IFNetInterpolator, mode: Warp) -> None:
    """Resample the frames along the final flows by ``mode`` from now on: released RIFE weights warp
    bilinearly, and bicubic keeps detail that moved a fraction of a pixel (small frames); the weights
    are unchanged, so the flows and mask are those the model learnt."""
    model.config = model.config.replace(final_warp=mode)


DENOISE_SUFFIX = "-denoise"


def denoise_partner(upscaler: Path) -> Path | None:
    """The folder beside an upscaler named like it with ``-denoise``, if there is one: its denoising
    partner (:func:`load_upscaler_blend`)."""
    sibling = upscaler.with_name(upscaler.name + DENOISE_SUFFIX)
    return sibling if (sibling / CONFIG_NAME).is_file() else None


def require_denoise_partner(upscaler: Path, option: str) -> Path:
    """:func:`denoise_partner`, or a ConfigError naming ``option``, the missing folder and the option
    that names a partner instead (``option`` + ``-model``: osp upscale's ``--denoise-model``, osp generate's
    and osp export's ``--upscale-denoise-model``)."""
    partner = denoise_partner(upscaler)
    if partner is None:
        raise ConfigError(
            f"{option}: {upscaler} has no denoising partner (no upscaler folder "
            f"{upscaler.name}{DENOISE_SUFFIX} beside it); name one with {option}-model"
        )
    return partner


def load_upscaler_blend(
    model: str | Path | None,
    weights: Path | None,
    denoise: float | None,
    denoise_model: str | Path | None = None,
    *,
    scale: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    option: str = "--denoise",
) -> SRVGGUpscaler:
    """The upscaler ``load_finisher`` gives, blended with its denoising partner by ``denoise`` in
    [0, 1] (:meth:`SRVGGUpscaler.blended`; 0 is the model itself, 1 the partner). The partner is
    ``denoise_model`` (a folder, name or released file; the option ``option`` + ``-model``), else the
    folder beside the model named like it with ``-denoise`` (as the bundled x2 upscaler has)."""
    up = load_finisher("upscaler", model, weights, scale=scale, dtype=dtype, device=device)
    assert isinstance(up, SRVGGUpscaler)
    if denoise is None:
        if denoise_model is not None:
            raise ConfigError(f"{option}-model: give {option} too (the strength of the blend)")
        return up
    if denoise_model is None:
        base = weights if weights is not None else resolve_finisher(model, "upscaler", scale)
        denoise_model = require_denoise_partner(base, option)
    partner = load_finisher("upscaler", denoise_model, dtype=dtype, device=device)
    assert isinstance(partner, SRVGGUpscaler)
    return up.blended(partner, denoise)


# ------------------------------------------------------------------------------------------ chain


def upscale_clip(
    model: SRVGGUpscaler,
    scale: int,
    tiling: UpscaleTiling | Literal["auto"] | None,
    net: Net | None = None,
    ensemble: bool = False,
) -> ClipFn:
    """A uint8 clip -> the clip at ``scale`` x the size, tile by tile when ``tiling`` is given (each
    chunk of frames converted back to uint8 as it is done, so only the output is held in full);
    "auto" tiles large clips (:func:`auto_tile`). ``net``: an exported engine of ``model`` that runs
    instead of it, on whole clips (as an engine's VAE decoder does). ``ensemble``: the mean over the
    frame's 8 flips and transposes (:meth:`SRVGGUpscaler.upscale`)."""

    def run(clip: torch.Tensor, update: Update) -> torch.Tensor:
        param = next(model.parameters())
        x = to_model(clip)[None].to(param.device, param.dtype)  # (1, 3, T, h, w)
        tiles = _tiles(tiling, UpscaleTiling(), clip) if net is None else None
        with torch.inference_mode():
            if tiles is None:
                return from_model(model.upscale(x, scale, net=net, ensemble=ensemble)[0].float().cpu())
            r, t = model.config.temporal_radius, x.shape[2]
            parts = []
            for start in range(0, t, tiles.frames):  # each chunk with its r frames of context
                stop = min(start + tiles.frames, t)
                lo, hi = max(0, start - r), min(t, stop + r)
                y = model.upscale(x[:, :, lo:hi], scale, tiles.replace(frames=hi - lo), ensemble=ensemble)
                y = y[:, :, start - lo : stop - lo]
                parts.append(from_model(y[0].float().cpu()))
                update(stop, t)
            return torch.cat(parts)

    return run


def interpolate_clip(
    model: IFNetInterpolator,
    factor: int,
    tiling: InterpolateTiling | Literal["auto"] | None,
    net: Net | None = None,
    ensemble: bool = False,
) -> ClipFn:
    """A uint8 clip of T frames -> (T - 1) * factor + 1 frames (``tiling``, ``net``: as upscale_clip's;
    ``ensemble``: each new frame the mean over the pair's 4 mirror images, see
    :meth:`IFNetInterpolator.interpolate`)."""

    def run(clip: torch.Tensor, update: Update) -> torch.Tensor:
        param = next(model.parameters())
        x = to_model(clip)[None].to(param.device, param.dtype)
        tiles = _tiles(tiling, InterpolateTiling(), clip) if net is None else None
        with torch.inference_mode():
            y = model.interpolate(x, factor, tiles, update, net=net, ensemble=ensemble)
        return from_model(y[0].float().cpu())

    return run


def auto_tile(frames: int, height: int, width: int) -> bool:
    """Tile when a clip is larger than the sizes osp generates (33 frames, 256 px)."""
    return frames > 33 or max(height, width) > 256


T = TypeVar("T", UpscaleTiling, InterpolateTiling)


def _tiles(tiling: T | Literal["auto"] | None, default: T, clip: torch.Tensor) -> T | None:
    if tiling != "auto":
        return tiling
    return default if auto_tile(clip.shape[0], clip.shape[2], clip.shape[3]) else None


@dataclass
class Finisher:
    """The finishing steps of ``osp generate``: interpolate, then upscale, each optional."""

    interpolate: ClipFn | None = None
    factor: int = 1
    upscale: ClipFn | None = None
    scale: int = 1

    @classmethod
    def build(
        cls,
        *,
        interpolate: int | None = None,
        upscale: int | None = None,
        interpolator: str | Path | None = None,
        upscaler: str | Path | None = None,
        upscale_denoise: float | None = None,
        upscale_denoise_model: str | Path | None = None,
        upscale_ensemble: bool = False,
        interpolate_ensemble: bool = False,
        interpolate_warp: Warp | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        engine: object | None = None,
    ) -> Finisher:
        """Load the models and check the factors (before any generation). An ``engine`` with a
        ``finisher`` method (an exported folder's) runs the models it holds instead of the eager ones.
        ``upscale_denoise``, ``upscale_denoise_model``, ``upscale_ensemble``: as ``osp upscale --denoise``
        / ``--denoise-model`` / ``--ensemble``; ``interpolate_ensemble``, ``interpolate_warp``: as ``osp
        interpolate --ensemble`` / ``--final-warp``."""
        finisher = cls()

        def net(kind: Kind, model: str | Path | None, denoise: float | None = None) -> Net | None:
            if not isinstance(engine, FinishingEngine):
                return None
            partner = None
            if kind == "upscaler" and denoise is not None and upscale_denoise_model is not None:
                partner = resolve_finisher(upscale_denoise_model, "upscaler")
            return engine.finisher(kind, resolve_finisher(model, kind), denoise, partner)

        if interpolate is not None and interpolate != 1:
            inter = load_finisher("interpolator", interpolator, dtype=dtype, device=device)
            assert isinstance(inter, IFNetInterpolator)
            check_factor(inter, interpolate, "--interpolate")
            exported = net("interpolator", interpolator)
            if interpolate_warp is not None:
                if exported is not None:
                    raise ConfigError(
                        "--interpolate-warp: an exported interpolator warps as its weights folder's config "
                        "said when it was exported (final_warp); set it there and export again"
                    )
                with_final_warp(inter, interpolate_warp)
            run = interpolate_clip(inter, interpolate, "auto", exported, ensemble=interpolate_ensemble)
            finisher.interpolate, finisher.factor = run, interpolate
        if upscale is not None and upscale != 1:
            # An engine runs the upscaler it was exported with (the default x4 unless one was named),
            # refusing other weights or another blend; eager, the default is the bundled model made
            # for this scale.
            exported = net("upscaler", upscaler, upscale_denoise)
            scale = None if exported is not None else upscale
            up = load_upscaler_blend(upscaler, None, upscale_denoise, upscale_denoise_model, scale=scale,
                                     dtype=dtype, device=device, option="--upscale-denoise")  # fmt: skip
            check_scale(up, upscale, "--upscale")
            run = upscale_clip(up, upscale, "auto", exported, ensemble=upscale_ensemble)
            finisher.upscale, finisher.scale = run, upscale
        return finisher

    def __call__(
        self, videos: list[torch.Tensor], fps: float, progress: ProgressDisplay | None = None
    ) -> tuple[list[torch.Tensor], float]:
        """uint8 clips (T, 3, H, W) and their rate -> the finished clips and theirs."""
        progress = progress or silent()
        if self.interpolate is not None:
            with progress.step(f"interpolate x{self.factor}") as update:
                videos = [self.interpolate(v, update) for v in videos]
            fps *= self.factor
        if self.upscale is not None:
            with progress.step(f"upscale x{self.scale}") as update:
                videos = [self.upscale(v, update) for v in videos]
        return videos, fps


def check_scale(model: SRVGGUpscaler, scale: int, option: str = "--scale") -> None:
    if scale not in model.config.scales:
        makes = " or x".join(map(str, model.config.scales))
        raise ConfigError(f"{option} {scale}: this upscaler makes x{makes}")


def check_factor(model: IFNetInterpolator, factor: int, option: str = "--factor") -> None:
    if factor not in model.config.factors:
        makes = " or x".join(map(str, model.config.factors))
        raise ConfigError(f"{option} {factor}: this interpolator makes x{makes} the frame rate")


# ------------------------------------------------------------------------------------------- files


class FinishConfig(Config):
    video: Path
    out: Path
    model: str | None = None  # a folder, or a bundled / local model name; None: the bundled default
    weights: Path | None = None  # a released checkpoint file instead (.pth / flownet.pkl)
    tile: bool | None = None  # None: tile when the clip is large (see auto_tile)
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "cpu"


class UpscaleConfig(FinishConfig):
    scale: int | None = Field(None, ge=1, description="None: the model's own scale")
    tiling: UpscaleTiling = UpscaleTiling()
    ensemble: bool = Field(
        False, description="the mean over each frame's 8 flips and transposes (8x the time)"
    )
    denoise: float | None = Field(
        None, ge=0.0, le=1.0, description="blend with the denoising partner: 0 none, 1 all of it"
    )
    denoise_model: str | None = None  # the partner (folder, name or file); None: the model's -denoise


class InterpolateConfig(FinishConfig):
    factor: int = Field(2, ge=1)
    tiling: InterpolateTiling = InterpolateTiling()
    final_warp: Warp | None = Field(
        None, description="how the frames are resampled along the final flows; None: the model's own"
    )
    ensemble: bool = Field(
        False, description="each new frame the mean over the pair's 4 mirror images (4x the time)"
    )


@dataclass
class FinishResult:
    frames: int
    height: int
    width: int
    fps: float
    seconds: dict[str, float] = field(default_factory=dict)
    written: Path | None = None


def _check_input(cfg: FinishConfig) -> int:
    """Refuse a bad output name, an unreadable input or odd sizes before any model is loaded."""
    if cfg.out.suffix.lower() != ".mp4":
        raise ConfigError(f"out: {cfg.out} must end in .mp4")
    info = probe_video(cfg.video)
    if info.height % 2 or info.width % 2:
        # H.264 stores colour at half resolution (4:2:0), so osp writes even sizes only; an odd input
        # would come back one pixel larger than it went in.
        raise ShapeError(f"{cfg.video}: is {info.width}x{info.height}; width and height must be even")
    return info.frames


def run_upscale(cfg: UpscaleConfig, progress: ProgressDisplay | None = None) -> FinishResult:
    progress = progress or silent()
    seconds: dict[str, float] = {}
    # 1. Check the request, then load the model (small) and check the scale, before reading frames.
    _check_input(cfg)
    t0 = time.perf_counter()
    model = load_upscaler_blend(
        cfg.model, cfg.weights, cfg.denoise, cfg.denoise_model,
        scale=cfg.scale, dtype=DTYPES[cfg.dtype], device=cfg.device,
    )  # fmt: skip
    scale = cfg.scale or model.config.scale
    check_scale(model, scale)
    with progress.step("read video"):
        video = read_video(cfg.video)
    seconds["load"] = time.perf_counter() - t0
    # 2. Upscale (tiled for large clips), then write.
    tiling: UpscaleTiling | Literal["auto"] | None = (
        "auto" if cfg.tile is None else cfg.tiling if cfg.tile else None
    )
    t0 = time.perf_counter()
    with progress.step(f"upscale x{scale}") as update:
        out = upscale_clip(model, scale, tiling, ensemble=cfg.ensemble)(video.frames, update)
    seconds["upscale"] = time.perf_counter() - t0
    with progress.step("write"):
        written = write_video(cfg.out, out, video.fps)
    return FinishResult(out.shape[0], out.shape[2], out.shape[3], video.fps, seconds, written)


def run_interpolate(cfg: InterpolateConfig, progress: ProgressDisplay | None = None) -> FinishResult:
    progress = progress or silent()
    seconds: dict[str, float] = {}
    frames = _check_input(cfg)
    if frames < 2:
        raise ShapeError(f"{cfg.video}: has {frames} frame; interpolation needs at least 2")
    t0 = time.perf_counter()
    model = load_finisher("interpolator", cfg.model, cfg.weights, dtype=DTYPES[cfg.dtype], device=cfg.device)
    assert isinstance(model, IFNetInterpolator)
    check_factor(model, cfg.factor)
    if cfg.final_warp is not None:
        with_final_warp(model, cfg.final_warp)
    with progress.step("read video"):
        video = read_video(cfg.video)
    seconds["load"] = time.perf_counter() - t0
    tiles: InterpolateTiling | Literal["auto"] | None = (
        "auto" if cfg.tile is None else cfg.tiling if cfg.tile else None
    )
    t0 = time.perf_counter()
    with progress.step(f"interpolate x{cfg.factor}") as update:
        out = interpolate_clip(model, cfg.factor, tiles, ensemble=cfg.ensemble)(video.frames, update)
    seconds["interpolate"] = time.perf_counter() - t0
    fps = video.fps * cfg.factor
    with progress.step("write"):
        written = write_video(cfg.out, out, fps)
    return FinishResult(out.shape[0], out.shape[2], out.shape[3], fps, seconds, written)
