"""The training EMA: the warm-up cap on the decay and the update it gives."""

from __future__ import annotations

import torch

from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp_train.ema import EMA


def test_ema_warmup_follows_the_weights_early_and_the_decay_late() -> None:
    """diffusers' EMAModel cap: update n uses min(decay, (1 + n) / (10 + n)); without warm-up, plain decay."""
    torch.manual_seed(0)
    model = LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema, plain = EMA(model, 0.999), EMA(model, 0.999, warmup=False)
    assert [ema.decay_at(n) for n in (0, 1, 8, 10_000)] == [0.1, 2 / 11, 0.5, 0.999]
    assert plain.decay_at(0) == 0.999
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    for tracker in (ema, plain):
        tracker.update(model, 0)
    name = "proj_out.weight"
    moved = ema.model.state_dict()[name] - start[name]
    torch.testing.assert_close(moved, torch.full_like(moved, 0.9))  # 1 - 0.1 of the way at once
    moved = plain.model.state_dict()[name] - start[name]
    torch.testing.assert_close(moved, torch.full_like(moved, 1e-3), rtol=1e-3, atol=1e-6)
