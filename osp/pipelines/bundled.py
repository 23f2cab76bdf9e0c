"""Models that ship inside the osp package, local model folders, and assembling a pipeline folder.

Bundled models live in ``osp/models/<name>/`` (installed with the package), so generation works offline
on a fresh install. Local models are pipeline folders under ``$OSP_MODELS`` (default
``~/.cache/osp/models``); ``osp generate --model NAME`` finds them by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from osp.dit.latte_t2v import load_latte_t2v
from osp.errors import WeightsError
from osp.io.weights import atomic_dir
from osp.pipelines.text_to_video import PIPELINE_NAME, PipelineSpec, VideoPipeline
from osp.vae import load_causal_vae

_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "osp-demo-t2v"


def _pipelines_in(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if (p / PIPELINE_NAME).is_file()}


def bundled_models() -> dict[str, Path]:
    """Name → folder of every bundled pipeline folder present in this installation."""
    return _pipelines_in(_MODELS_DIR)


def local_models_dir() -> Path:
    return Path(os.environ.get("OSP_MODELS", Path.home() / ".cache" / "osp" / "models")).expanduser()


def local_models() -> dict[str, Path]:
    return _pipelines_in(local_models_dir())


def bundled_model_dir(name: str = DEFAULT_MODEL) -> Path:
    models = bundled_models()
    if name not in models:
        have = ", ".join(models) or "none"
        raise WeightsError(f"model: no bundled model {name!r} in this installation (bundled: {have})")
    return models[name]


def resolve_model(model: str | Path | None) -> Path:
    """A model folder from a path, a local or bundled model name, or None (the default bundled model)."""
    if model is None:
        return bundled_model_dir()
    path = Path(model)
    if path.exists():
        return path
    for models in (local_models(), bundled_models()):
        if str(model) in models:
            return models[str(model)]
    raise WeightsError(
        f"model: {model} is neither a folder nor a model name (see `osp models`; local models live in "
        f"{local_models_dir()})"
    )


def assemble_text_to_video(
    transformer: Path, vae: Path, spec: PipelineSpec, out: Path, *, dtype: torch.dtype | None = None
) -> Path:
    """Write a pipeline folder (``pipeline.json``, ``transformer/``, ``vae/``) from trained weights.

    The folder is built under a temporary name and renamed when complete."""
    model = load_latte_t2v(transformer)
    autoencoder = load_causal_vae(vae)
    pipe = VideoPipeline(model, autoencoder, spec)  # the text encoder is named by the spec, not stored
    with atomic_dir(out, overwrite=True) as tmp:
        pipe.save_pretrained(tmp, dtype=dtype)
    return out
