"""Activation checkpointing and regional torch.compile of a transformer's blocks, from outside the model.

The models stay single-device modules that know nothing of training tricks (torchtitan's habit): here
each repeated block (the lists :func:`osp.export.compile.repeated_blocks` finds, the same ones
inference compiles) is wrapped in torch's ``checkpoint_wrapper`` where the run asks for it, then every
block is compiled in place. The wrapper keeps the block's state-dict names (its hooks strip the
``_checkpoint_wrapped_module.`` it adds), so checkpoints, EMA and saved weights do not see it;
``named_parameters`` of the model do see it.

Checkpointing goes inside the compiled region: Dynamo turns the non-reentrant checkpoint into one
higher-order op, so a checkpointed block still compiles to one graph, and the recompute in the
backward pass runs the compiled code.
"""

from __future__ import annotations

from typing import Literal

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    checkpoint_wrapper,
)

from osp.export.compile import compile_blocks, repeated_blocks

Checkpointing = Literal["none", "full", "selective"]


def _checkpointed(count: int, mode: Checkpointing, every: int) -> list[bool]:
    """Which of ``count`` blocks recompute their activations: all (full), blocks 0, k, 2k, ...
    (selective with ``every`` k), or none."""
    if mode == "full":
        return [True] * count
    if mode == "selective":
        return [i % every == 0 for i in range(count)]
    return [False] * count


def apply_checkpointing(model: nn.Module, mode: Checkpointing, every: int = 2) -> int:
    """Wrap the blocks ``mode`` selects in activation checkpointing, in place; returns how many.

    Blocks are counted over the model's block lists in order: LatteT2V's spatial list, then its
    temporal one (``every`` 2 recomputes half of each); Latte's one list alternates spatial and
    temporal blocks (``every`` 2 recomputes its spatial ones). Per recomputed FLOP both kinds free
    about the same memory (see TrainConfig), so which ones does not matter much.
    """
    blocks = repeated_blocks(model)
    chosen = {id(b) for b, on in zip(blocks, _checkpointed(len(blocks), mode, every), strict=True) if on}
    wrapped = 0
    for holder in list(model.modules()):
        if isinstance(holder, nn.ModuleList):
            for i, block in enumerate(holder):
                if id(block) in chosen:
                    # Non-reentrant: takes keyword arguments and inputs that need no grad, and compiles.
                    holder[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
                    wrapped += 1
    return wrapped


def prepare_blocks(
    model: nn.Module, checkpointing: Checkpointing, every: int = 2, *, compile: bool = False
) -> nn.Module:
    """Checkpointing as :func:`apply_checkpointing`, then (``compile``) each block compiled in place
    with ``fullgraph=True``, so a graph break is an error, not a silent slowdown. Returns ``model``."""
    apply_checkpointing(model, checkpointing, every)
    if compile:
        compile_blocks(model)
    return model
