"""One EMA of model weights, in fp32, updated after each optimizer step."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from osp.io.weights import WEIGHTS_NAME, Pretrained, check_state_dict, load_safetensors


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` over every floating tensor of the state dict.

    With ``warmup`` the decay of update ``n`` (counted from 0) is ``min(decay, (1 + n) / (10 + n))``, the
    cap diffusers' EMAModel applies: the first updates follow the weights closely, so a short run's EMA
    holds its trained weights instead of a 0.9999-weighted share of the random init (0.9999^2000 = 82%).

    The shadow is a full fp32 copy of the model (a :class:`Pretrained`), so it saves as an ordinary osp
    weights folder that ``from_pretrained`` and the pipelines load. Buffers and frozen parameters (fixed
    sin-cos positions) are copied, not averaged.
    """

    def __init__(self, model: Pretrained, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def decay_at(self, n: int) -> float:
        """The decay of update ``n`` (0 for the first update after step 0)."""
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, n: int) -> None:
        """Fold ``model`` in as update number ``n`` (the optimizer steps taken before this one).

        Tensors pair up by state-dict name, which wrappers such as activation checkpointing's keep
        (their parameter names do not), and must be on the shadow's device.
        """
        decay = self.decay_at(n)
        source = model.state_dict(keep_vars=True)
        for name, shadow in self.model.state_dict(keep_vars=True).items():
            value = source[name]
            if isinstance(value, nn.Parameter) and value.requires_grad:
                shadow.lerp_(value.detach().float(), 1.0 - decay)
            else:
                shadow.copy_(value.detach())

    def save(self, folder: Path) -> Path:
        return self.model.save_pretrained(folder)

    def load(self, folder: Path) -> None:
        """Restore the shadow from a folder written by :meth:`save` (exactly: fp32 in, fp32 out)."""
        state = load_safetensors(folder / WEIGHTS_NAME)
        check_state_dict(self.model, state, str(folder))
        self.model.load_state_dict(state, strict=True)
