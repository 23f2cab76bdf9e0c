"""Video super-resolution: Real-ESRGAN's compact network with temporal context."""

from __future__ import annotations

from pathlib import Path

import torch

from osp.errors import WeightsError
from osp.io.weights import CONFIG_NAME
from osp.layers.symmetry import DIHEDRAL, turn
from osp.upscale.convert import convert_realesrgan
from osp.upscale.srvgg import UPSCALER_CONFIGS, SRVGGUpscaler, UpscalerConfig, UpscaleTiling

__all__ = [
    "DIHEDRAL",
    "UPSCALER_CONFIGS",
    "SRVGGUpscaler",
    "UpscaleTiling",
    "UpscalerConfig",
    "load_upscaler",
    "turn",
]


def load_upscaler(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> SRVGGUpscaler:
    """An upscaler from an osp weights folder, or straight from a released Real-ESRGAN compact
    checkpoint (``realesr-general-x4v3.pth``: ``params`` / ``params_ema``, opened weights-only)."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return SRVGGUpscaler.from_pretrained(path, dtype=dtype, device=device)
    if path.is_file():
        fields, state = convert_realesrgan(path)
        config = UpscalerConfig.from_dict(fields, source=str(path))
        return SRVGGUpscaler.from_state_dict(config, state, source=str(path), dtype=dtype, device=device)
    raise WeightsError(f"upscaler: {path} is neither an osp weights folder nor a Real-ESRGAN .pth file")
