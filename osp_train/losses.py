"""Autoencoder training losses: perceptual nets, the PatchGAN discriminator, hinge loss, adaptive weight.

The recipe is the VQGAN one (Esser et al. 2021, "Taming Transformers") that Open-Sora-Plan v1.0 trains its
causal VAE with: pixel L1 + LPIPS perceptual distance + a small KL term, and, from ``disc_start`` on, a
hinge-loss PatchGAN (Isola et al. 2017) whose generator term is scaled so its gradient at the decoder's
last layer matches the reconstruction loss's (VQGAN eq. 7).

Perceptual nets are pluggable behind one signature ``net(x, y) -> (N,)``, both inputs (N, 3, H, W) in
[-1, 1]: :class:`LPIPS` (VGG16 + LPIPS linear heads, from a local weights file; nothing is downloaded) or
:class:`GradientLoss`, a parameter-free fallback for when no LPIPS weights are at hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------
# Perceptual nets
# ----------------------------------------------------------------------------------------------------

# torchvision's vgg16().features layout: conv widths, "M" = 2x2 max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the ReLU outputs at these ``features`` indices.
_TAPS = (3, 8, 15, 22, 29)
_WIDTHS = (64, 128, 256, 512, 512)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            channels = int(item)
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity (Zhang et al. 2018), VGG16 variant, frozen.

    Built without torchvision: the VGG16 trunk is the plain conv stack above, so the weights file must
    hold it. Accepted key layouts, in one ``torch.save``-d state dict:

    * taming-transformers' ``vgg.pth`` / full LPIPS state: ``net.slice{k}.{i}.weight`` + ``lin{k}.model.1.weight``;
    * torchvision's ``vgg16`` state (``features.{i}.weight``) merged with LPIPS' ``lin{k}.model.1.weight``.
    """

    # LPIPS' ScalingLayer: inputs in [-1, 1] are shifted/scaled to ImageNet statistics.
    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _WIDTHS)

    @classmethod
    def from_file(cls, path: str | Path) -> LPIPS:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        state: dict[str, torch.Tensor] = {}
        for key, value in raw.items():
            if m := re.fullmatch(r"(?:net\.slice\d\.|features\.)(\d+)\.(weight|bias)", key):
                state[f"features.{m.group(1)}.{m.group(2)}"] = value
            elif m := re.fullmatch(r"lin(\d)\.model\.1\.weight", key):
                state[f"lins.{m.group(1)}.weight"] = value
        net = cls()
        missing, _ = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in ("shift", "scale")]
        if missing:
            raise ValueError(f"{path}: not LPIPS-VGG16 weights; missing {', '.join(missing[:4])} ...")
        return net.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, y]).sub(self.shift).div(self.scale)  # one trunk pass for both
        total = x.new_zeros(x.shape[0])
        tap = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i == _TAPS[tap]:
                fx, fy = F.normalize(h, dim=1, eps=1e-10).chunk(2)  # unit-length channel vectors
                total = total + self.lins[tap]((fx - fy).pow(2)).mean(dim=(1, 2, 3))
                tap += 1
                if tap == len(_TAPS):
                    break
        return total


class GradientLoss(nn.Module):
    """Fallback perceptual term with no weights to load: L1 between image gradients (finite differences)
    at 3 scales, which penalises blurred edges the way pixel L1 alone does not. It is *not* a learned
    perceptual metric; give LPIPS weights (``perceptual: lpips:/path``) to train the release recipe."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0])
        for _ in range(3):
            d = x - y
            dx, dy = d[..., :, 1:] - d[..., :, :-1], d[..., 1:, :] - d[..., :-1, :]
            total = total + dx.abs().mean(dim=(1, 2, 3)) + dy.abs().mean(dim=(1, 2, 3))
            if min(x.shape[-2:]) < 4:
                break
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        return total


def build_perceptual(spec: str) -> nn.Module | None:
    """``"lpips:/path/weights.pth"`` → :class:`LPIPS`; ``"fallback"`` → :class:`GradientLoss`; ``"none"`` → None."""
    if spec == "none":
        return None
    if spec == "fallback":
        return GradientLoss()
    return LPIPS.from_file(spec.removeprefix("lpips:"))


# ----------------------------------------------------------------------------------------------------
# Discriminator and GAN losses
# ----------------------------------------------------------------------------------------------------


class NLayerDiscriminator(nn.Module):
    """pix2pix PatchGAN on single frames: (N, 3, H, W) → (N, 1, h, w) real/fake logits per patch.

    ``n_layers`` stride-2 4x4 convs (widths ``channels * min(2**i, 8)``), one stride-1 conv, a 1-channel
    head; BatchNorm between, as in taming-transformers and Open-Sora-Plan v1.0.
    """

    def __init__(self, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, n_layers + 1):
            out = channels * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(width, out, 4, stride, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DCGAN init (Radford et al. 2016): convs N(0, 0.02), norm scales N(1, 0.02)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.main(frames)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss (Lim & Ye 2017): push real logits above 1 and fake ones below -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll_grad: torch.Tensor, g_grad: torch.Tensor, disc_weight: float) -> torch.Tensor:
    """VQGAN eq. 7: ``||∇_L nll|| / (||∇_L g_loss|| + 1e-4)``, clamped to [0, 1e4], times ``disc_weight``.

    The arguments are the two losses' gradients w.r.t. ``L``, the decoder's last layer. The result is
    a detached scale, not a path for gradients.
    """
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach() * disc_weight


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of videos in [-1, 1] (the reconstruction is clamped first)."""
    mse = ((x.clamp(-1, 1) - y) / 2).pow(2).mean()
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
