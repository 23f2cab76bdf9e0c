"""Released RIFE ``flownet.pkl`` files (Practical-RIFE v4.2x, the IFNet_HDv3 family with a feature
head) to an :class:`~osp.interpolate.ifnet.InterpolatorConfig` and a state dict.

The file is a pickled state dict saved from a DistributedDataParallel wrapper, so every key starts
with ``module.``; it is opened with ``torch.load(weights_only=True)`` only. Keys are otherwise osp's
own. Some releases also carry modules their inference never runs (a distillation ``teacher`` block,
``caltime``); those are dropped, anything else unknown is refused. The architecture is read from the
tensor shapes; the block scales are the release's (1/16 .. 1 for five blocks).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from osp.errors import WeightsError
from osp.io.convert import load_pickled

# Modules some releases train but never run at inference.
UNUSED_PREFIXES = ("teacher.", "caltime.")
_BLOCK = re.compile(r"block(\d+)\.")


def read_flownet(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a RIFE ``flownet.pkl``, ``module.`` prefixes and unused modules removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    obj = load_pickled(path)
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}


def convert_rife(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(InterpolatorConfig fields, state dict) of a released RIFE flownet.pkl."""
    path = Path(path)
    state = read_flownet(path)
    blocks = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    if not blocks or blocks != list(range(len(blocks))) or "encode.cnn0.weight" not in state:
        raise WeightsError(
            f"{path}: not an IFNet with a feature head (Practical-RIFE v4.2x: block0.., encode.*)"
        )
    channels = tuple(int(state[f"block{k}.conv0.1.0.weight"].shape[0]) for k in blocks)
    res = {int(m.group(1)) for k in state if (m := re.match(r"block0\.convblock\.(\d+)\.", k))}
    outputs = int(state["block0.lastconv.0.weight"].shape[1]) // 4  # flow 4 + mask 1 + features
    fields = {
        "block_channels": channels,
        "scales": tuple(2 ** (len(blocks) - 1 - k) for k in blocks),
        "res_blocks": len(res),
        "head_channels": int(state["encode.cnn0.weight"].shape[0]),
        "feat_channels": outputs - 5,
    }
    return fields, state
