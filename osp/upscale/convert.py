"""Released Real-ESRGAN compact checkpoints (``realesr-general-x4v3.pth``, ``realesr-animevideov3.pth``,
...) to an :class:`~osp.upscale.srvgg.UpscalerConfig` and a state dict.

The files are pickled dicts ``{"params": state}`` and/or ``{"params_ema": state}`` (BasicSR's
layout); they are opened with ``torch.load(weights_only=True)`` only, and the EMA weights are taken
when both are there (the released models are the EMA ones). Keys need no renaming: osp's module
names are the release's. The architecture is read from the tensor shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from osp.errors import WeightsError
from osp.io.convert import load_pickled

_BODY = re.compile(r"body\.(\d+)\.(weight|bias)")


def read_realesrgan(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside a Real-ESRGAN ``.pth`` file (``params_ema``, else ``params``, else the dict)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    obj = load_pickled(path)
    if isinstance(obj, Mapping):
        for key in ("params_ema", "params"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: does not hold a state dict of tensors (nor params / params_ema)")
    return dict(obj)


def convert_realesrgan(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(UpscalerConfig fields, state dict) of a released SRVGGNetCompact checkpoint."""
    path = Path(path)
    state = read_realesrgan(path)
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _BODY.fullmatch(key)
        if match is None:
            raise WeightsError(f"{path}: {key!r} is not an SRVGGNetCompact parameter (body.N.weight/bias)")
        layers.setdefault(int(match.group(1)), {})[match.group(2)] = value
    convs = sorted(i for i, p in layers.items() if p["weight"].dim() == 4)
    if len(convs) < 2 or convs != list(range(0, 2 * len(convs) - 1, 2)):
        raise WeightsError(f"{path}: not an SRVGGNetCompact checkpoint (convolutions at body.{convs})")
    first, last = layers[convs[0]]["weight"], layers[convs[-1]]["weight"]
    slopes = [i for i, p in layers.items() if p["weight"].dim() == 1]
    if not slopes:
        # relu / leakyrelu checkpoints store no activation tensors, so nothing tells them apart.
        raise WeightsError(f"{path}: has no PReLU slopes; only act_type prelu checkpoints are converted")
    in_channels, out_channels = first.shape[1], last.shape[0]
    scale = math.isqrt(out_channels // 3)
    if in_channels % 3 or (in_channels // 3) % 2 == 0 or 3 * scale * scale != out_channels:
        raise WeightsError(
            f"{path}: takes {in_channels} and makes {out_channels} channels; expected 3 * (2r + 1) in "
            "and 3 * scale^2 out"
        )
    fields = {
        "scale": scale,
        "num_feat": int(first.shape[0]),
        "num_conv": len(convs) - 2,
        "act_type": "prelu",
        "temporal_radius": (in_channels // 3 - 1) // 2,
    }
    return fields, state
