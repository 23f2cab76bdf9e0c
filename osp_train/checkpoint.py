"""Checkpoints that are either complete or absent: ``out/checkpoints/step-XXXXXXX``.

Each holds ``engine/`` (DeepSpeed's model, optimizer and scheduler states, one shard per rank under
ZeRO), ``ema/`` (the EMA model as an osp weights folder, loadable by every pipeline) and
``trainer.json`` (step, epoch, batch in epoch, skip counts, world size). All ranks write into a hidden
``.tmp-step-XXXXXXX`` folder; rank 0 renames it into place once everyone is done, so a kill at any
moment leaves either the previous checkpoints or the new one, never half of it.

No RNG states are stored: every random draw of step ``s`` on rank ``r`` comes from generators seeded
with ``derive_seed(seed, r, s)``, and data order from ``(seed, epoch)``, so the step counter is the
whole random state.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from osp.errors import ConfigError
from osp.io.weights import atomic_write_text
from osp_train.ema import EMA

_STEP = re.compile(r"step-(\d{7,})")
ENGINE_TAG = "engine"


@dataclass(frozen=True)
class TrainerState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch the next batch comes from
    batch: int = 0  # batches of ``epoch`` already consumed on this rank
    requests: int = 0  # samples served so far, summed over ranks
    skipped: int = 0  # of which came from unreadable files
    world_size: int = 1


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary folders are never listed)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    root: Path, engine: Any, ema: EMA | None, state: TrainerState, *, rank: int, keep_last: int
) -> Path:
    """Collective: every rank calls it. Returns the final folder."""
    final = step_dir(root, state.step)
    tmp = root / f".tmp-{final.name}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp), tag=ENGINE_TAG)  # collective; each rank writes its shards
    _barrier()
    if rank == 0:
        if ema is not None:
            ema.save(tmp / "ema")
        atomic_write_text(tmp / "trainer.json", json.dumps(asdict(state), indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)  # a rerun that re-saves the same step
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def clean_partial(root: Path) -> None:
    """Remove temporary folders a killed run left behind (rank 0, before anyone saves)."""
    if root.is_dir():
        for p in root.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(folder: Path, engine: Any, ema: EMA | None, world_size: int) -> TrainerState:
    """Restore engine (+ optimizer, scheduler) and EMA from ``folder``; returns the trainer state."""
    state = TrainerState(**json.loads((folder / "trainer.json").read_text(encoding="utf-8")))
    if state.world_size != world_size:
        raise ConfigError(
            f"{folder}: was written by {state.world_size} processes; resume with the same --nproc "
            f"(got {world_size}), or start a new out folder"
        )
    path, _ = engine.load_checkpoint(
        str(folder), tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise ConfigError(f"{folder}: DeepSpeed found no engine checkpoint in it")
    if ema is not None:
        ema.load(folder / "ema")
    return state
