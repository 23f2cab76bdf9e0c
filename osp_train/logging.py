"""Where rank 0's metric records go besides ``metrics.jsonl``: TensorBoard, when it is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console


class TensorBoardLog:
    """Every numeric field of a metrics record as a scalar, tagged ``train/<name>``, in ``folder``.

    ``resume_step``: events a killed run wrote past its last checkpoint are purged, as
    ``metrics.jsonl`` lines are, so a resumed run's curves have no doubled segment.
    """

    def __init__(self, folder: Path, resume_step: int, console: Console) -> None:
        self.writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            console.print(
                "log_tensorboard: the tensorboard package is not installed; logging to metrics.jsonl only"
            )
            return
        self.writer = SummaryWriter(str(folder), purge_step=resume_step or None)

    def write(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
