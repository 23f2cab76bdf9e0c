"""``task: upscale`` and ``task: interpolate``: train the finishing models on clips of real video.

* ``upscale``: each ``data`` clip is the high-resolution target; its input is made in the step by
  osp_train.degrade (blur, downscale, noise, H.264, or a clean bicubic downscale), drawn from the
  step's generator, so a resumed run makes the same pairs. Loss: L1, L1 of the luma, a perceptual term.
* ``interpolate``: the first and last frames of each clip are the inputs, the frames between them the
  targets (a clip of 3 frames teaches t = 1/2, of 5 frames t = 1/4, 1/2, 3/4); clips play backwards
  at random. Loss: L1 on the frames, L1 of each input warped alone, and a first-order smoothness term
  on the flows.

Both reuse the whole training loop (DeepSpeed engine, EMA, checkpoints, exact resume, logging); the
metrics include the baseline each model must beat (bicubic up-sampling, linear blending).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from osp.errors import ConfigError
from osp.interpolate import INTERPOLATOR_CONFIGS, IFNetInterpolator, load_interpolator, warp
from osp.io.video import from_model, to_model
from osp.io.weights import CONFIG_NAME, Pretrained, read_config_json
from osp.layers.symmetry import DIHEDRAL, turn
from osp.metrics import flicker, luma
from osp.upscale import UPSCALER_CONFIGS, SRVGGUpscaler, load_upscaler
from osp_train.config import TrainConfig
from osp_train.degrade import degrade
from osp_train.engine import DistInfo
from osp_train.finish_config import UpscaleTaskConfig
from osp_train.losses import build_perceptual, psnr
from osp_train.samples import MAX_RECONSTRUCTIONS, Sampler
from osp_train.train import Task


def build_finisher(cfg: TrainConfig) -> Pretrained:
    """The upscaler / interpolator from a preset, an osp weights folder or a released checkpoint
    (Real-ESRGAN .pth, RIFE flownet.pkl) to fine-tune, with ``model_overrides`` applied (a larger
    ``num_conv`` deepens a trained upscaler without changing what it computes, a larger ``num_feat``
    widens it, changing it only by the noise that lets the copied channels part)."""
    upscale = cfg.task == "upscale"
    cls: type[Pretrained] = SRVGGUpscaler if upscale else IFNetInterpolator
    presets: dict[str, Any] = UPSCALER_CONFIGS if upscale else INTERPOLATOR_CONFIGS
    path = Path(cfg.model)
    if cfg.model in presets:
        return cls(presets[cfg.model].replace(**cfg.model_overrides)).train()
    if not path.exists():
        raise ConfigError(
            f"model: {cfg.model!r} is neither a {cls.__name__} preset ({', '.join(presets)}) nor weights"
        )
    if (path / CONFIG_NAME).is_file() and read_config_json(path).get("_class_name") != cls.__name__:
        raise ConfigError(f"model: {cfg.model} does not hold a {cls.__name__}; task {cfg.task} trains one")
    loaded = load_upscaler(path) if upscale else load_interpolator(path)
    overrides = dict(cfg.model_overrides)
    if isinstance(loaded, SRVGGUpscaler) and overrides.get("num_conv", 0) > loaded.config.num_conv:
        # A deeper upscaler starts as the loaded one: identity layers between the trained ones.
        loaded = loaded.deepened(overrides.pop("num_conv"))
    if isinstance(loaded, SRVGGUpscaler) and overrides.get("num_feat", 0) > loaded.config.num_feat:
        # A wider one too: copied channels (a little noise on the copies' outgoing weights, so they part).
        loaded = loaded.widened(overrides.pop("num_feat"), noise=0.01, seed=cfg.seed)
    if not overrides:
        return loaded.train()
    # Other overrides must keep every tensor's shape (e.g. factors); the weights are loaded strictly.
    config = loaded.config.replace(**overrides)
    return cls.from_state_dict(config, loaded.state_dict(), source=cfg.model).train()


def finishing_task(cfg: TrainConfig, info: DistInfo, dtype: torch.dtype) -> Task:
    model = build_finisher(cfg)
    model.to(info.device)
    if isinstance(model, SRVGGUpscaler):
        return _upscale_task(cfg, model, info.device, dtype)
    assert isinstance(model, IFNetInterpolator)
    return _interpolate_task(cfg, model, info.device, dtype)


def _frames(video: torch.Tensor) -> torch.Tensor:
    return video.transpose(1, 2).flatten(0, 1)  # (B, C, T, H, W) -> (B*T, C, H, W)


def _step_rng(g: torch.Generator) -> random.Random:
    """A Python RNG for this step's per-clip draws, seeded from the step's generator."""
    return random.Random(int(torch.randint(2**62, (1,), generator=g, device=g.device)))


# ----------------------------------------------------------------------------------------- upscale


def upscale_pairs(
    hr: torch.Tensor, scale: int, spec: UpscaleTaskConfig, rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, T, H, W) clips in [-1, 1] -> (input, target): the targets turned when ``spec.dihedral``,
    each input made from its target by ``spec.degrade``, every draw from ``rng``."""
    if spec.dihedral:
        hr = torch.stack([turn(clip, *DIHEDRAL[rng.randrange(len(DIHEDRAL))]) for clip in hr])
    low = [to_model(degrade(from_model(clip), scale, spec.degrade, rng)) for clip in hr]
    return torch.stack(low), hr


def _upscale_task(cfg: TrainConfig, model: SRVGGUpscaler, device: torch.device, dtype: torch.dtype) -> Task:
    spec = cfg.upscale
    scale = spec.scale or model.config.scale
    if scale != model.config.scale:
        raise ConfigError(f"upscale.scale: {scale}, but the model draws x{model.config.scale}")
    h, w = cfg.data.size
    if h % (2 * scale) or w % (2 * scale):
        raise ConfigError(
            f"data.size: {h}x{w} must be a multiple of 2 * scale = {2 * scale} (the low-resolution "
            "clip is H.264-encoded, which needs even sizes)"
        )
    if spec.dihedral and h != w:
        raise ConfigError(f"upscale.dihedral: transposes a clip, so data.size must be square; it is {h}x{w}")
    if spec.temporal_weight and cfg.data.num_frames < 2:
        raise ConfigError(
            f"upscale.temporal_weight: compares the change between frames; data.num_frames is "
            f"{cfg.data.num_frames}, give 2 or more"
        )
    try:
        perceptual = build_perceptual(spec.perceptual) if spec.perceptual_weight else None
    except ValueError as err:
        raise ConfigError(f"upscale.perceptual: {err}") from None
    if perceptual is not None:
        perceptual.to(device)

    def pairs(batch: dict[str, Any], rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        low, hr = upscale_pairs(batch["video"], scale, spec, rng)
        return low.to(device, dtype), hr.to(device).float()

    def step(engine: Any, batch: dict[str, Any], g: torch.Generator, _: int) -> dict[str, float]:
        low, hr = pairs(batch, _step_rng(g))
        out = engine(low).float()
        real, fake = _frames(hr), _frames(out)
        l1 = (real - fake).abs().mean()
        l2 = (real - fake).pow(2).mean() if spec.l2_weight else torch.zeros_like(l1)
        y = (luma(real) - luma(fake)).abs().mean() if spec.luma_weight else torch.zeros_like(l1)
        p = perceptual(real, fake).mean() if perceptual is not None else torch.zeros_like(l1)
        tl = flicker(out, hr, dim=2) if spec.temporal_weight else torch.zeros_like(l1)  # (B, 3, T, H, W)
        loss = spec.l1_weight * l1 + spec.l2_weight * l2 + spec.luma_weight * y + spec.perceptual_weight * p
        loss = loss + spec.temporal_weight * tl
        engine.backward(loss)
        engine.step()
        with torch.no_grad():
            bicubic = F.interpolate(
                _frames(low.float()), scale_factor=scale, mode="bicubic", align_corners=False
            )
        return {
            "loss": loss.item(),
            "l1": l1.item(),
            "l2": l2.item(),
            "luma": y.item(),
            "perceptual": p.item(),
            "temporal": tl.item(),
            "psnr": psnr(fake.detach().clamp(-1, 1), real).item(),
            "psnr_bicubic": psnr(bicubic.clamp(-1, 1), real).item(),
        }

    def sample(ema: torch.nn.Module, batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[str]]:
        """input (nearest) | osp | target of the first clips, the inputs drawn from a fixed seed."""
        first = {"video": batch["video"][:MAX_RECONSTRUCTIONS]}
        low, hr = pairs(first, random.Random(cfg.seed))
        param = next(ema.parameters())
        with torch.inference_mode():
            out = ema(low.to(param.device, param.dtype)).float().cpu()
        near = low.float().cpu().repeat_interleave(scale, -1).repeat_interleave(scale, -2)
        rows = [torch.cat([from_model(a), from_model(b), from_model(c)], dim=-1) for a, b, c in zip(near, out, hr.cpu(), strict=True)]  # fmt: skip
        return rows, [f"clip {i}: input | osp | target" for i in range(len(rows))]

    sampler: Sampler = sample
    return Task(model, step, sample=sampler)


# ------------------------------------------------------------------------------------- interpolate


def _interpolate_task(
    cfg: TrainConfig, model: IFNetInterpolator, device: torch.device, dtype: torch.dtype
) -> Task:
    spec = cfg.interpolate
    n, m = cfg.data.num_frames, model.config.pad_multiple
    if n < 3:
        raise ConfigError(
            f"data.num_frames: {n}; interpolation clips need the two inputs and a frame between"
        )
    if cfg.data.size[0] % m or cfg.data.size[1] % m:
        raise ConfigError(f"data.size: {list(cfg.data.size)} must be a multiple of the model's {m}")
    inner = n - 2
    times = torch.arange(1, n - 1, device=device, dtype=torch.float32) / (n - 1)  # (n - 2,)

    def triples(batch: dict[str, Any], rng: random.Random) -> tuple[torch.Tensor, ...]:
        video = batch["video"].to(device).float()  # (B, 3, n, H, W)
        backwards = torch.tensor([rng.random() < spec.reverse for _ in range(video.shape[0])], device=device)
        video = torch.where(backwards.view(-1, 1, 1, 1, 1), video.flip(2), video)
        first = video[:, :, :1].expand(-1, -1, inner, -1, -1)
        last = video[:, :, -1:].expand(-1, -1, inner, -1, -1)
        # Inputs in [0, 1] (the network's range), targets in [-1, 1]; one row per (clip, inner frame).
        img0, img1 = (_frames(first) + 1) / 2, (_frames(last) + 1) / 2
        return img0, img1, times.repeat(video.shape[0]), _frames(video[:, :, 1:-1])

    def step(engine: Any, batch: dict[str, Any], g: torch.Generator, _: int) -> dict[str, float]:
        img0, img1, t, target = triples(batch, _step_rng(g))
        # flows() returns the flow for the smoothness term; under ZeRO 0-2 calling the module bypasses
        # only the engine's forward bookkeeping, and engine.backward / step still reduce and update.
        frame, flow, _ = engine.module.flows(img0.to(dtype), img1.to(dtype), t)
        out = frame.float() * 2 - 1
        l1 = (out - target).abs().mean()
        flow = flow.float()
        mode = model.config.final_warp
        warped = torch.cat([warp(img0, flow[:, :2], mode), warp(img1, flow[:, 2:4], mode)]) * 2 - 1
        warp_l1 = (warped - target.repeat(2, 1, 1, 1)).abs().mean()
        smooth = (flow[..., 1:, :] - flow[..., :-1, :]).abs().mean() + (
            flow[..., 1:] - flow[..., :-1]
        ).abs().mean()
        loss = spec.l1_weight * l1 + spec.warp_weight * warp_l1 + spec.smooth_weight * smooth
        engine.backward(loss)
        engine.step()
        linear = (img0 + (img1 - img0) * t.view(-1, 1, 1, 1)) * 2 - 1  # the baseline: a cross-fade
        return {
            "loss": loss.item(),
            "l1": l1.item(),
            "warp_l1": warp_l1.item(),
            "smooth": smooth.item(),
            "psnr": psnr(out.detach().clamp(-1, 1), target).item(),
            "psnr_linear": psnr(linear, target).item(),
        }

    def sample(ema: torch.nn.Module, batch: dict[str, Any]) -> tuple[list[torch.Tensor], list[str]]:
        """linear blend | osp | target, the clips' inner frames in time order."""
        video = batch["video"][:MAX_RECONSTRUCTIONS].float()  # (b, 3, n, H, W)
        param = next(ema.parameters())
        with torch.inference_mode():
            made = ema.interpolate(video.to(param.device, param.dtype), n - 1).float().cpu()  # type: ignore[operator]
        linear = torch.lerp(video[:, :, :1], video[:, :, -1:], (times.cpu() * 1.0).view(1, 1, -1, 1, 1))
        rows = [torch.cat([from_model(a), from_model(b), from_model(c)], dim=-1)
                for a, b, c in zip(linear, made[:, :, 1:-1], video[:, :, 1:-1], strict=True)]  # fmt: skip
        return rows, [f"clip {i}: linear | osp | target" for i in range(len(rows))]

    if cfg.sample_every and n - 1 not in model.config.factors:
        raise ConfigError(f"sample_every: samples interpolate x{n - 1}, which the model does not offer")
    return Task(model, step, sample=sample)
