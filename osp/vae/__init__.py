"""Video autoencoders: the causal video VAE (Open-Sora-Plan v1.0) and the VideoGPT VQ-VAE."""

from __future__ import annotations

from pathlib import Path

import torch

from osp.errors import WeightsError
from osp.io.convert import convert_opensora_vae
from osp.io.weights import CONFIG_NAME, read_config_json
from osp.layers.tiling import TilingConfig
from osp.vae.causal_vae import CAUSAL_VAE_CONFIGS, CausalVAEConfig, CausalVideoVAE, DiagonalGaussian

__all__ = [
    "CAUSAL_VAE_CONFIGS",
    "CausalVAEConfig",
    "CausalVideoVAE",
    "DiagonalGaussian",
    "TilingConfig",
    "load_causal_vae",
]


def load_causal_vae(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> CausalVideoVAE:
    """A CausalVideoVAE from an osp weights folder, or straight from a released Open-Sora-Plan
    v1.0 VAE (its folder with config.json + diffusion_pytorch_model.safetensors, or a .ckpt file)."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        class_name = read_config_json(path).get("_class_name")
        if class_name == CausalVideoVAE.__name__:
            return CausalVideoVAE.from_pretrained(path, dtype=dtype, device=device)
        if class_name not in (None, "CausalVAEModel"):
            raise WeightsError(f"{path / CONFIG_NAME}: holds a {class_name}, not a causal video VAE")
    fields, state = convert_opensora_vae(path)
    config = CausalVAEConfig.from_dict(fields, source=str(path))
    return CausalVideoVAE.from_state_dict(config, state, source=str(path), dtype=dtype, device=device)
