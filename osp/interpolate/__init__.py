"""Frame interpolation: RIFE's IFNet (coarse-to-fine flow, grid_sample warping, a fusion mask)."""

from __future__ import annotations

from pathlib import Path

import torch

from osp.errors import WeightsError
from osp.interpolate.convert import convert_rife
from osp.interpolate.ifnet import (
    INTERPOLATOR_CONFIGS,
    IFNetInterpolator,
    InterpolateTiling,
    InterpolatorConfig,
    Warp,
    flip_ensemble,
    warp,
)
from osp.io.weights import CONFIG_NAME

__all__ = [
    "INTERPOLATOR_CONFIGS",
    "IFNetInterpolator",
    "InterpolateTiling",
    "InterpolatorConfig",
    "Warp",
    "flip_ensemble",
    "load_interpolator",
    "warp",
]


def load_interpolator(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> IFNetInterpolator:
    """An interpolator from an osp weights folder, or straight from a released RIFE ``flownet.pkl``
    (Practical-RIFE v4.2x; opened weights-only)."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return IFNetInterpolator.from_pretrained(path, dtype=dtype, device=device)
    if path.is_dir() and (path / "flownet.pkl").is_file():  # a release's train_log/ folder
        path = path / "flownet.pkl"
    if path.is_file():
        fields, state = convert_rife(path)
        config = InterpolatorConfig.from_dict(fields, source=str(path))
        return IFNetInterpolator.from_state_dict(config, state, source=str(path), dtype=dtype, device=device)
    raise WeightsError(f"interpolator: {path} is neither an osp weights folder nor a RIFE flownet.pkl")
