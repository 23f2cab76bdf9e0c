"""Models that ship inside the osp package, so generation works offline on a fresh install."""

from __future__ import annotations

from pathlib import Path

from osp.errors import WeightsError

_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "osp-demo-t2v"


def bundled_models() -> dict[str, Path]:
    """Name → folder of every bundled pipeline folder present in this installation."""
    if not _MODELS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(_MODELS_DIR.iterdir()) if (p / "pipeline.json").is_file()}


def bundled_model_dir(name: str = DEFAULT_MODEL) -> Path:
    models = bundled_models()
    if name not in models:
        have = ", ".join(models) or "none"
        raise WeightsError(f"model: no bundled model {name!r} in this installation (bundled: {have})")
    return models[name]
