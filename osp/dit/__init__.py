"""Diffusion transformers: Latte text-to-video and class-conditional (video), DiT / SiT (images)."""

from osp.dit.dit import (
    DIT_CONFIGS,
    SIT_CONFIGS,
    DiT,
    DiTConfig,
    dit_config_from_diffusers,
    dit_from_diffusers,
)
from osp.dit.latte import LATTE_CONFIGS, Latte, LatteConfig
from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V, LatteT2VConfig, load_latte_t2v

__all__ = [
    "DIT_CONFIGS",
    "LATTE_CONFIGS",
    "LATTE_T2V_CONFIGS",
    "SIT_CONFIGS",
    "DiT",
    "DiTConfig",
    "Latte",
    "LatteConfig",
    "LatteT2V",
    "LatteT2VConfig",
    "dit_config_from_diffusers",
    "dit_from_diffusers",
    "load_latte_t2v",
]
