"""The training loop: a task step (dit: pixels → frozen VAE latents → diffusion loss, or stored latents
from ``osp extract`` with ``features``; vae / vqvae: see osp_train.vae_task; upscale / interpolate: see
osp_train.finish_task) → DeepSpeed step → EMA.

:func:`train` is the one function ``osp train`` calls, in every process of the run. It resumes from the
newest complete checkpoint in ``out/checkpoints`` when there is one, so an interrupted run continues by
re-running the same command, bit-exact on CPU fp32.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset

from osp.diffusion import GaussianDiffusion, flow, sample_timesteps
from osp.dit.latte import LATTE_CONFIGS, Latte
from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp.errors import ConfigError
from osp.io.weights import CONFIG_NAME, WEIGHTS_NAME, Pretrained, load_safetensors, read_config_json
from osp.progress import ProgressDisplay
from osp.vae import CausalVideoVAE, load_causal_vae
from osp_train.blocks import prepare_blocks
from osp_train.checkpoint import (
    TrainerState,
    clean_partial,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from osp_train.config import TrainConfig
from osp_train.data import BucketSampler, SkipCounter, VideoDataset, collate, derive_seed
from osp_train.ema import EMA
from osp_train.engine import DistInfo, build_engine, init_distributed
from osp_train.logging import TensorBoardLog
from osp_train.samples import Sampler, dit_sampler, reconstruction_sampler, write_samples

MODEL_CLASSES: dict[str, type[Pretrained]] = {"Latte": Latte, "LatteT2V": LatteT2V}


@dataclass(frozen=True)
class TrainSummary:
    out: str
    steps: int
    resumed_from: int  # 0: a fresh run
    last_loss: float | None
    requests: int
    skipped: int
    world_size: int
    weights_sha256: list[str]  # per rank: ZeRO must leave every rank with the same weights


def build_model(cfg: TrainConfig) -> Pretrained:
    """The transformer from a preset or weights folder, with ``model_overrides`` applied.

    Its own checkpointing switch is off: the run's ``gradient_checkpointing`` is applied from outside
    (osp_train.blocks), also to a weights folder saved with the switch on.
    """
    overrides: dict[str, Any] = {**cfg.model_overrides, "gradient_checkpointing": False}
    if cfg.conditioning == "class" and cfg.cond_dropout is not None:
        overrides["class_dropout_prob"] = cfg.cond_dropout
    state = None
    cls: type[Pretrained]
    if cfg.model in LATTE_CONFIGS:
        cls, base = Latte, LATTE_CONFIGS[cfg.model].model_dump()
    elif cfg.model in LATTE_T2V_CONFIGS:
        cls, base = LatteT2V, LATTE_T2V_CONFIGS[cfg.model].model_dump()
    elif (Path(cfg.model) / CONFIG_NAME).is_file():
        base = read_config_json(cfg.model)
        name = base.pop("_class_name", None)
        base.pop("_osp_version", None)
        if name not in MODEL_CLASSES:
            raise ConfigError(f"model: {cfg.model} holds a {name}, not one of {', '.join(MODEL_CLASSES)}")
        cls, state = MODEL_CLASSES[name], load_safetensors(Path(cfg.model) / WEIGHTS_NAME)
    else:
        presets = ", ".join([*LATTE_CONFIGS, *LATTE_T2V_CONFIGS])
        raise ConfigError(f"model: {cfg.model!r} is neither a preset ({presets}) nor an osp weights folder")
    config = cls.config_class.from_dict({**base, **overrides}, source="model_overrides")
    want = Latte if cfg.conditioning == "class" else LatteT2V
    if cls is not want:
        raise ConfigError(
            f"conditioning: {cfg.conditioning!r} needs a {want.__name__} model, got a {cls.__name__}"
        )
    if state is not None:
        return cls.from_state_dict(config, state, source=cfg.model).train()
    return cls(config).train()  # type: ignore[arg-type]  # config is cls.config_class


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _batches(
    loader: DataLoader[Any], sampler: BucketSampler, epoch: int, batch: int
) -> Iterator[tuple[int, int, Any]]:
    """Endless (epoch, batches consumed in it, batch), starting ``batch`` batches into ``epoch``."""
    while True:
        sampler.set_epoch(epoch, batch)
        for item in loader:
            batch += 1
            yield epoch, batch, item
        epoch, batch = epoch + 1, 0


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past ``step`` that a killed run wrote after its last checkpoint."""
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def training_loss(
    cfg: TrainConfig, model: Pretrained, device: torch.device
) -> Callable[..., dict[str, torch.Tensor]]:
    """``loss_fn(model_fn, x0, cond, generator)`` for the configured objective, checked against the model."""
    learned_sigma = bool(model.config.learned_sigma)  # type: ignore[attr-defined]
    if cfg.objective == "flow":
        if learned_sigma:
            raise ConfigError(
                "objective: flow predicts a velocity; set model_overrides so the model has no learned sigma"
            )
        f = cfg.flow

        def flow_loss(
            model_fn: Any, x0: torch.Tensor, cond: Any, g: torch.Generator
        ) -> dict[str, torch.Tensor]:
            sigma = flow.sample_sigmas(
                x0.shape[0],
                method=f.sigma_sampling,
                mean=f.logit_mean,
                std=f.logit_std,
                shift=f.shift,
                generator=g,
                device=device,
            )
            noise = torch.randn(x0.shape, generator=g, device=device)
            return flow.training_losses(model_fn, x0, sigma, cond, noise)

        return flow_loss
    diffusion = GaussianDiffusion.from_config(cfg.diffusion.replace(learn_sigma=learned_sigma))

    def iddpm_loss(model_fn: Any, x0: torch.Tensor, cond: Any, g: torch.Generator) -> dict[str, torch.Tensor]:
        t = sample_timesteps(x0.shape[0], diffusion.num_timesteps, generator=g, device=device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        return diffusion.training_losses(model_fn, x0, t, cond, noise)

    return iddpm_loss


@dataclass(frozen=True)
class Task:
    """What differs between ``task: dit``, ``vae`` and ``vqvae``: the module DeepSpeed wraps and one step."""

    model: Pretrained
    # step(engine, batch, generator, step) runs forward, backward and the optimizer step(s) and returns
    # this step's metrics as floats, "loss" among them; ``generator`` is seeded from (seed, rank, step).
    step: Callable[[Any, dict[str, Any], torch.Generator, int], dict[str, float]]
    # What save_checkpoint / load_checkpoint drive: the engine itself, or a wrapper that adds state
    # living outside it (the VAE's discriminator).
    checkpointable: Callable[[Any], Any] = lambda engine: engine
    # sample(ema_model, first_batch) -> (uint8 clips, labels) for ``sample_every`` (osp_train.samples).
    sample: Sampler | None = None


def _dit_task(cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> Task:
    """Frozen VAE (+ text encoder), or stored features, and the transformer; a step is encode →
    diffusion loss → update."""
    model = build_model(cfg)
    in_channels = model.config.in_channels  # type: ignore[attr-defined]
    encode: Callable[[dict[str, Any], torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    held: tuple[CausalVideoVAE | None, Any] = (None, None)  # the frozen VAE and text encoder, if loaded
    if cfg.features is not None:
        # Offline features (osp extract): the stored latents / text states stand in for the encoders.
        from osp_train.data.features import load_null_text, read_features_info

        info = read_features_info(cfg.features)
        if info["latent_channels"] != in_channels:
            raise ConfigError(
                f"model_overrides: in_channels is {in_channels} but {cfg.features} holds "
                f"{info['latent_channels']}-channel latents"
            )
        if info["conditioning"] != cfg.conditioning:
            raise ConfigError(
                f"features: {cfg.features} was extracted for {info['conditioning']} conditioning, "
                f"the run has conditioning: {cfg.conditioning}"
            )
        made_with = (info["text_encoder"], info["text_max_length"])
        if cfg.conditioning == "text" and made_with != (cfg.text_encoder, cfg.text_max_length):
            raise ConfigError(
                f"features: {cfg.features} holds states of text_encoder {made_with[0]!r} "
                f"(max length {made_with[1]}), the run asks for {cfg.text_encoder!r} ({cfg.text_max_length})"
            )
        stored_null = load_null_text(cfg.features, device) if cfg.conditioning == "text" else None

        def encode(batch: dict[str, Any], g: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            x0 = batch["latents"].to(device).float()
            return x0, _condition(cfg, batch, None, stored_null, g, device)

    else:
        # The frozen VAE runs in bf16 only on GPU: CPU kernels such as avg_pool3d have no bf16 version.
        vae_dtype = dtype if device.type == "cuda" else torch.float32
        assert cfg.vae is not None  # TrainConfig requires it for task dit without features
        vae = load_causal_vae(cfg.vae, dtype=vae_dtype, device=device).requires_grad_(False).eval()
        if vae.config.embed_dim != in_channels:
            raise ConfigError(
                f"model_overrides: in_channels is {in_channels} but the VAE makes "
                f"{vae.config.embed_dim}-channel latents"
            )
        encoder = null_text = None
        if cfg.conditioning == "text":
            from osp.text import load_text_encoder

            encoder = load_text_encoder(cfg.text_encoder, max_length=cfg.text_max_length, device=device)
            null_text = encoder.null(1, device=device)
        held = (vae, encoder)

        def encode(batch: dict[str, Any], g: torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
            x0 = vae.encode_latents(batch["video"].to(device, vae_dtype), sample=cfg.vae_sample, generator=g)
            cond = _condition(cfg, batch, encoder, null_text, g, device)
            if "images" in batch:
                # Joint image-video training: each image is a 1-frame video to the causal VAE, and its
                # latent frame follows the clip's along T (Open-Sora-Plan v1.0's use_image_num).
                images = batch["images"].to(device, vae_dtype)  # (B, n, C, H, W)
                b, n = images.shape[:2]
                z = vae.encode_latents(images.flatten(0, 1)[:, :, None], sample=cfg.vae_sample, generator=g)
                z = z.unflatten(0, (b, n)).squeeze(3).transpose(1, 2)  # (B*n, c, 1, h, w) -> (B, c, n, h, w)
                x0 = torch.cat([x0, z.to(x0.dtype)], dim=2)
                cond["num_images"] = n
            return x0.float(), cond

    loss_fn = training_loss(cfg, model, device)

    def step(engine: Any, batch: dict[str, Any], g: torch.Generator, _: int) -> dict[str, float]:
        def model_fn(x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
            cast = {
                k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in cond.items()
            }
            return engine(x_t.to(dtype), t, **cast).float()

        with torch.no_grad():
            x0, cond = encode(batch, g)
        loss = loss_fn(model_fn, x0, cond, g)["loss"].mean()
        engine.backward(loss)
        engine.step()
        return {"loss": loss.item()}

    sampler = dit_sampler(cfg, device, *held) if cfg.sample_every else None
    return Task(model, step, sample=sampler)


def freeze_parameters(model: nn.Module, prefixes: list[str]) -> int:
    """Turn off gradients for every parameter under a module-name prefix; returns how many were frozen.
    A prefix that names no module of the model is a config error (a typo would silently train it)."""
    names = {name for name, _ in model.named_modules() if name}
    for prefix in prefixes:
        if prefix not in names:
            near = sorted(n for n in names if "." not in n)
            raise ConfigError(
                f"freeze: {prefix!r} is not a module of the model; its top-level modules: {', '.join(near)}"
            )
    frozen = 0
    for name, param in model.named_parameters():
        if any(name == p or name.startswith(p + ".") for p in prefixes) and param.requires_grad:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def train(cfg: TrainConfig, *, progress: bool = True, console: Console | None = None) -> TrainSummary:
    """Run (or resume) the training ``cfg`` describes, in this process of the process group."""
    info: DistInfo = init_distributed()
    device, main = info.device, info.is_main
    console = console or Console(stderr=True)
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32

    # 1. The trainable model and what its task needs besides (same init on every rank).
    torch.manual_seed(cfg.seed)
    if cfg.task == "dit":
        task = _dit_task(cfg, device, dtype)
    elif cfg.task in ("upscale", "interpolate"):
        from osp_train.finish_task import finishing_task

        task = finishing_task(cfg, info, dtype)
    else:
        from osp_train.vae_task import autoencoder_task

        task = autoencoder_task(cfg, info, dtype)
        if cfg.sample_every:
            task = replace(task, sample=reconstruction_sampler(cfg))
    model = task.model.to(device)
    frozen = freeze_parameters(model, cfg.freeze)
    if frozen and main:
        console.print(f"freeze: {frozen:,} parameters kept fixed ({', '.join(cfg.freeze)})")
    # Before DeepSpeed casts the module to bf16: the EMA keeps fp32 weights, on the training device.
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup) if main else None
    if cfg.task == "dit":  # after the EMA's copy: the shadow stays a plain eager model
        prepare_blocks(
            model, cfg.gradient_checkpointing, cfg.gradient_checkpointing_every, compile=cfg.compile
        )
    engine = build_engine(cfg, model, info.world_size)
    checkpointable = task.checkpointable(engine)

    # 2. Data: every rank its own share of single-bucket batches, in an order fixed by (seed, epoch).
    dataset: Dataset[dict[str, Any]]
    sampler: BucketSampler
    if cfg.features is not None:
        from osp_train.data.features import FeatureDataset, FeatureSampler, collate_features

        dataset = features = FeatureDataset(cfg.features)
        sampler = FeatureSampler(
            features, cfg.batch_size, rank=info.rank, world_size=info.world_size, seed=cfg.seed
        )
        collate_fn: Callable[[Any], dict[str, Any]] = collate_features
    else:
        dataset = videos = VideoDataset(cfg.data)
        buckets = cfg.data.buckets or ((cfg.data.num_frames, *cfg.data.size),)
        sampler = BucketSampler(
            videos, cfg.batch_size, buckets=buckets, rank=info.rank, world_size=info.world_size, seed=cfg.seed
        )
        collate_fn = collate
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.num_workers)
    skips = SkipCounter(cfg.data.max_skip_fraction, source=str(cfg.features or cfg.data.manifest))

    # 3. Resume from the newest complete checkpoint, if any.
    state = TrainerState(world_size=info.world_size)
    if main:
        clean_partial(cfg.checkpoints)
    dist.barrier()
    found = list_checkpoints(cfg.checkpoints)
    if found:
        state = load_checkpoint(found[-1], checkpointable, ema, info.world_size)
    resumed_from = state.step
    metrics_path = cfg.out / "metrics.jsonl"
    if main:
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2) + "\n")
        _truncate_metrics(metrics_path, state.step)
        if resumed_from:
            console.print(f"resuming from {found[-1]} (step {resumed_from})")
    board = (
        TensorBoardLog(cfg.out / "tensorboard", state.step, console) if main and cfg.log_tensorboard else None
    )

    def totals() -> tuple[int, int]:  # collective
        requests, skipped = _all_sum([skips.requests, skips.skipped], device)
        return state.requests + int(requests), state.skipped + int(skipped)

    # 4. The loop.
    step, epoch, batch_in_epoch = state.step, state.epoch, state.batch
    window: dict[str, list[float]] = {}  # metric -> [sum, count] since the last log line
    window_start, last_loss = time.perf_counter(), None
    first_batch: dict[str, Any] | None = None  # what vae / vqvae samples reconstruct
    stream = _batches(loader, sampler, epoch, batch_in_epoch)
    with (
        ProgressDisplay(enabled=progress and main, console=console) as display,
        display.step("train", total=cfg.steps) as update,
    ):
        update(step, cfg.steps)
        while step < cfg.steps:
            epoch, batch_in_epoch, batch = next(stream)
            skips.update(batch)
            first_batch = first_batch or batch
            # Every draw of this step comes from (seed, rank, step): the step counter is the RNG state.
            g = torch.Generator(device).manual_seed(derive_seed(cfg.seed, info.rank, step))
            # Model-internal draws (label dropout, codebook restarts) use the global generator.
            torch.manual_seed(derive_seed(cfg.seed, info.rank, step, 1))
            for key, value in task.step(engine, batch, g, step).items():
                total = window.setdefault(key, [0.0, 0])
                total[0], total[1] = total[0] + value, total[1] + 1
            if ema is not None:
                ema.update(engine.module, step)
            step += 1
            if ema is not None and task.sample and cfg.sample_every and step % cfg.sample_every == 0:
                assert first_batch is not None
                write_samples(cfg.out / "samples", step, ema.model, first_batch, task.sample)
            update(step, cfg.steps)

            if step % cfg.log_every == 0 or step == cfg.steps:
                keys = sorted(window)  # the same on every rank: a step's metrics depend on the step only
                sums = _all_sum([v for k in keys for v in window[k]], device)
                means = {k: sums[2 * i] / sums[2 * i + 1] for i, k in enumerate(keys)}
                requests, skipped = totals()
                elapsed = time.perf_counter() - window_start
                last_loss = means["loss"]
                if main:
                    n = sums[2 * keys.index("loss") + 1]
                    record = {
                        "step": step,
                        "loss": last_loss,
                        **means,
                        "lr": engine.get_lr()[0],
                        "samples_per_s": n * cfg.batch_size / elapsed,
                        "epoch": epoch,
                        "skipped": skipped,
                        "requests": requests,
                    }
                    with metrics_path.open("a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    if board is not None:
                        board.write(record)
                    extra = "".join(f"  {k} {v:.4g}" for k, v in means.items() if k != "loss")
                    console.print(
                        f"step {step}/{cfg.steps}  loss {last_loss:.4f}{extra}  lr {record['lr']:.2e}  "
                        f"{record['samples_per_s']:.1f} samples/s  skipped {skipped}"
                    )
                window, window_start = {}, time.perf_counter()

            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                requests, skipped = totals()
                saved = replace(
                    state, step=step, epoch=epoch, batch=batch_in_epoch, requests=requests, skipped=skipped
                )
                save_checkpoint(
                    cfg.checkpoints, checkpointable, ema, saved, rank=info.rank, keep_last=cfg.keep_last
                )

    if board is not None:
        board.close()

    # 5. Final weights beside the checkpoints, and a check that ZeRO left every rank the same model.
    requests, skipped = totals()
    hashes: list[Any] = [None] * info.world_size
    dist.all_gather_object(hashes, _weights_hash(engine.module))
    summary = TrainSummary(
        str(cfg.out), step, resumed_from, last_loss, requests, skipped, info.world_size, hashes
    )
    if main:
        engine.module.save_pretrained(cfg.out / "model")
        if ema is not None:
            ema.save(cfg.out / "ema")
        (cfg.out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    dist.barrier()
    return summary


def _condition(
    cfg: TrainConfig,
    batch: dict[str, Any],
    encoder: Any,
    null_text: Any,
    g: torch.Generator,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Model keyword arguments for a batch; text conditions dropped to the empty prompt for CFG.

    With joint images (``image_captions``) the states are (B, 1 + n, L, D): the clip's caption, then
    each image's, every one dropped on its own.
    """
    if cfg.conditioning == "class":
        if "label" not in batch:
            raise ConfigError(f"data.manifest: conditioning is class but {cfg.data.manifest} has captions")
        return {"class_labels": batch["label"].to(device)}
    if "caption" not in batch:
        raise ConfigError(f"data.manifest: conditioning is text but {cfg.data.manifest} has class labels")
    if "text_states" in batch:  # offline features
        states, mask = batch["text_states"].to(device), batch["text_mask"].to(device)
    elif "image_captions" in batch:
        rows = [
            [caption, *images]
            for caption, images in zip(batch["caption"], batch["image_captions"], strict=True)
        ]
        text = encoder.encode([c for row in rows for c in row], device=device)
        states = text.states.unflatten(0, (len(rows), -1))  # (B, 1 + n, L, D)
        mask = text.mask.unflatten(0, (len(rows), -1))  # (B, 1 + n, L)
    else:
        text = encoder.encode(batch["caption"], device=device)
        states, mask = text.states, text.mask
    if cfg.cond_dropout:
        drop = torch.rand(states.shape[:-2], generator=g, device=device) < cfg.cond_dropout  # (B[, 1+n])
        states = torch.where(drop[..., None, None], null_text.states[0].expand_as(states), states)
        mask = torch.where(drop[..., None], null_text.mask[0].expand_as(mask), mask)
    return {"encoder_hidden_states": states, "encoder_attention_mask": mask}
