"""``task: vae`` and ``task: vqvae``: train the video autoencoders themselves.

* ``vae``: a :class:`~osp.vae.CausalVideoVAE` with Open-Sora-Plan v1.0's recipe (osp_train.losses): L1 +
  perceptual + KL, and a hinge PatchGAN from ``vae_loss.disc_start`` on.
* ``vqvae``: a VideoGPT :class:`~osp.vae.vqvae.VQVAE`: reconstruction MSE + commitment loss; the codebook
  follows its EMA statistics inside ``forward``, so only encoder and decoder take optimizer steps.

Two optimizers, one DeepSpeed engine: the VAE is the engine's module (ZeRO 0/1/2, bf16, clipping, LR
schedule, as for dit); the discriminator is a plain torch module with its own AdamW (``disc_lr``, constant,
clipped at ``optim.grad_clip``), its gradients averaged over ranks by one all-reduce per parameter. It is
small and only ever full-size on every rank, so ZeRO would buy nothing, and keeping it out of DeepSpeed
avoids two engines sharing one process group. Its weights and optimizer state travel inside each
checkpoint (``discriminator.pt``), so resume stays exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from osp.errors import ConfigError
from osp.io.weights import CONFIG_NAME, WEIGHTS_NAME, Pretrained, load_safetensors, read_config_json
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE
from osp.vae.vqvae import VQVAE, VQVAE_CONFIGS
from osp_train.config import TrainConfig
from osp_train.engine import DistInfo
from osp_train.losses import NLayerDiscriminator, adaptive_weight, build_perceptual, hinge_d_loss, psnr
from osp_train.train import Task

DISC_FILE = "discriminator.pt"


def build_autoencoder(cfg: TrainConfig) -> Pretrained:
    """The VAE / VQ-VAE from a preset or an osp weights folder, with ``model_overrides`` applied."""
    cls: type[Pretrained]
    cls, presets = (CausalVideoVAE, CAUSAL_VAE_CONFIGS) if cfg.task == "vae" else (VQVAE, VQVAE_CONFIGS)
    state = None
    if cfg.model in presets:
        base = presets[cfg.model].model_dump()
    elif (Path(cfg.model) / CONFIG_NAME).is_file():
        base = read_config_json(cfg.model)
        name = base.pop("_class_name", None)
        base.pop("_osp_version", None)
        if name != cls.__name__:
            raise ConfigError(f"model: {cfg.model} holds a {name}; task {cfg.task} trains a {cls.__name__}")
        state = load_safetensors(Path(cfg.model) / WEIGHTS_NAME)
    else:
        raise ConfigError(
            f"model: {cfg.model!r} is neither a {cls.__name__} preset ({', '.join(presets)}) "
            "nor an osp weights folder"
        )
    config = cls.config_class.from_dict({**base, **cfg.model_overrides}, source="model_overrides")
    if state is not None:
        return cls.from_state_dict(config, state, source=cfg.model).train()
    return cls(config).train()  # type: ignore[arg-type]  # config is cls.config_class


class EngineWithDiscriminator:
    """The generator engine plus the discriminator and its optimizer, checkpointed together.

    It answers the two calls osp_train.checkpoint makes of an engine, so the discriminator lands in the
    same atomically renamed folder as the engine's states.
    """

    def __init__(
        self, engine: Any, disc: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int
    ) -> None:
        self.engine, self.disc, self.optimizer, self.rank = engine, disc, optimizer, rank

    def save_checkpoint(self, folder: str, tag: str) -> None:
        self.engine.save_checkpoint(folder, tag=tag)
        if self.rank == 0:  # every rank holds the same discriminator: its grads are all-reduced
            state = {"model": self.disc.state_dict(), "optimizer": self.optimizer.state_dict()}
            torch.save(state, Path(folder) / DISC_FILE)

    def load_checkpoint(self, folder: str, tag: str, **kwargs: Any) -> Any:
        result = self.engine.load_checkpoint(folder, tag=tag, **kwargs)
        path = Path(folder) / DISC_FILE
        if not path.is_file():
            raise ConfigError(f"{folder}: no {DISC_FILE}; was it written by a task vae run?")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.disc.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        return result


def _frames(video: torch.Tensor) -> torch.Tensor:
    return video.movedim(2, 1).flatten(0, 1)  # (B, C, T, H, W) -> (B*T, C, H, W)


def autoencoder_task(cfg: TrainConfig, info: DistInfo, dtype: torch.dtype) -> Task:
    model = build_autoencoder(cfg)
    device = info.device
    model.to(device)
    if cfg.task == "vqvae":

        def vq_step(engine: Any, batch: dict[str, Any], g: torch.Generator, step: int) -> dict[str, float]:
            x = batch["video"].to(device, dtype)
            out = engine(x)  # the codebook's EMA update happens here, in training mode
            loss = out.loss.float()
            engine.backward(loss)
            engine.step()
            return {
                "loss": loss.item(),
                "recon_loss": out.recon_loss.item(),
                "commitment_loss": out.commitment_loss.item(),
                "perplexity": out.perplexity.item(),
                "psnr": psnr(out.reconstruction.detach().float(), x.float()).item(),
            }

        return Task(model, vq_step)

    spec = cfg.vae_loss
    try:
        perceptual = build_perceptual(spec.perceptual)
    except ValueError as err:
        raise ConfigError(f"vae_loss.perceptual: {err}") from None
    if perceptual is not None:
        perceptual.to(device)
    disc = NLayerDiscriminator(spec.disc_channels, spec.disc_layers).to(device).train()
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=spec.disc_lr, betas=cfg.optim.betas, eps=cfg.optim.eps)
    world = info.world_size

    # The adaptive weight needs both losses' gradients at the decoder's last layer before the step. A
    # torch.autograd.grad through the engine's outputs would fire DeepSpeed's backward hooks (and ZeRO's
    # reduction) outside engine.backward, so the losses are taken on a detached copy of the output, and
    # their gradients at the last layer are recomputed from that layer's captured input.
    assert isinstance(model, CausalVideoVAE)
    last: torch.nn.Module = model.decoder.conv_out  # recon == last(h), see Decoder.forward
    last_weight = model.get_last_layer()
    captured: dict[str, torch.Tensor] = {}
    last.register_forward_hook(lambda _m, inputs, _out: captured.__setitem__("h", inputs[0]))

    def last_layer_grad(grad_out: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            out = last(captured["h"].detach())
            return torch.autograd.grad(out, last_weight, grad_outputs=grad_out.to(out.dtype))[0]

    def vae_step(engine: Any, batch: dict[str, Any], g: torch.Generator, step: int) -> dict[str, float]:
        x = batch["video"].to(device, dtype)
        recon, posterior = engine(x, sample_posterior=True, generator=g)
        r = recon.detach().float().requires_grad_(True)
        real, fake = _frames(x.float()), _frames(r)  # (B*T, 3, H, W)
        pixels = real[0].numel()
        # The release sums its per-pixel loss over pixels and averages over frames, with the perceptual
        # distance (one value per frame) added at every pixel: hence the ``* pixels``.
        l1 = (real - fake).abs().mean(dim=(1, 2, 3))
        l2 = (real - fake).pow(2).mean(dim=(1, 2, 3))
        p = perceptual(real, fake) if perceptual is not None else torch.zeros_like(l1)
        nll = (spec.l1_weight * l1 + spec.l2_weight * l2 + spec.perceptual_weight * p).mean() * pixels
        kl = posterior.kl().float().mean()  # summed over latent elements, averaged over clips
        grad = torch.autograd.grad(nll, r)[0]  # d nll / d recon
        loss = nll.detach() + spec.kl_weight * kl.detach()
        metrics = {
            "l1": l1.mean().item(),
            "l2": l2.mean().item(),
            "perceptual": p.mean().item(),
            "kl": kl.item(),
        }
        gan = step >= spec.disc_start
        if gan:
            g_loss = -disc(fake).mean()
            g_grad = torch.autograd.grad(g_loss, r)[0]
            d_weight = adaptive_weight(last_layer_grad(grad), last_layer_grad(g_grad), spec.disc_weight)
            grad = grad + d_weight * g_grad
            loss = loss + d_weight * g_loss.detach()
            metrics |= {"g_loss": g_loss.item(), "d_weight": d_weight.item()}
        # Same parameter gradients as backpropagating nll + kl_weight * kl + d_weight * g_loss.
        engine.backward((recon.float() * grad).sum() + spec.kl_weight * kl)
        engine.step()

        if gan:  # the discriminator's step, on the reconstruction the generator step started from
            disc_opt.zero_grad(set_to_none=True)
            logits_real, logits_fake = disc(real.detach()), disc(fake.detach())
            d_loss = hinge_d_loss(logits_real, logits_fake)
            d_loss.backward()
            if world > 1:
                for param in disc.parameters():
                    if param.grad is not None:
                        dist.all_reduce(param.grad)
                        param.grad.div_(world)
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(disc.parameters(), cfg.optim.grad_clip)
            disc_opt.step()
            metrics |= {
                "d_loss": d_loss.item(),
                "logits_real": logits_real.mean().item(),
                "logits_fake": logits_fake.mean().item(),
            }
        metrics["psnr"] = psnr(recon.detach().float(), x.float()).item()
        return {"loss": loss.item(), **metrics}

    return Task(model, vae_step, lambda engine: EngineWithDiscriminator(engine, disc, disc_opt, info.rank))
