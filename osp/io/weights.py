"""Weights folders: ``config.json`` + ``model.safetensors``.

Every osp model mixes in :class:`Pretrained`. ``save_pretrained(dir)`` writes the typed config and the
state dict; ``from_pretrained(dir)`` rebuilds the model from the config and loads the tensors, in the
requested dtype and on the requested device. Files are written to a temporary name and renamed, so a
crash never leaves a half-written file behind. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from osp.config import Config
from osp.errors import ConfigError, WeightsError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

M = TypeVar("M", bound="Pretrained")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600, and writers that replace the file (safetensors does) keep their own mode:
        # the result should look like any new file
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, else it is deleted.

    Without ``overwrite`` an existing non-empty ``path`` is refused before anything is written."""
    path = Path(path)
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"out: {path} exists and is not empty (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors atomically; views and shared storage are made contiguous copies first."""
    plain = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=metadata)


def load_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None


def read_config_json(folder: str | Path) -> dict[str, Any]:
    """The raw ``config.json`` of a weights folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such weights folder")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise WeightsError(f"{folder}: not an osp weights folder (no {CONFIG_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: must hold a JSON object")
    return data


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse missing, unexpected or mis-shaped tensors with a message that lists them."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise WeightsError(f"{source}: weights do not fit {type(model).__name__}: " + "; ".join(problems))


class Pretrained(nn.Module):
    """Mixin for models built from one typed config and stored as a weights folder.

    Subclasses set ``config_class`` and take the config as their only constructor argument.
    """

    config_class: ClassVar[type[Config]]
    config: Config

    def save_pretrained(self, folder: str | Path, *, dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created if needed).

        ``dtype`` casts floating-point tensors on the way out (e.g. fp16 to ship small files).
        """
        folder = Path(folder)
        state = self.state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        from osp import __version__

        save_safetensors(
            state, folder / WEIGHTS_NAME, metadata={"format": "pt", "osp_class": type(self).__name__}
        )
        payload = {
            "_class_name": type(self).__name__,
            "_osp_version": __version__,
            **self.config.model_dump(mode="json"),
        }
        atomic_write_text(folder / CONFIG_NAME, json.dumps(payload, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(
        cls: type[M],
        folder: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ) -> M:
        """Rebuild the model from ``folder`` in eval mode. Parameters take ``dtype`` if given, else the
        model's own (float32), whatever dtype the file stores."""
        folder = Path(folder)
        raw = read_config_json(folder)
        class_name = raw.pop("_class_name", None)
        raw.pop("_osp_version", None)
        if class_name is not None and class_name != cls.__name__:
            raise WeightsError(f"{folder / CONFIG_NAME}: holds a {class_name}, not a {cls.__name__}")
        try:
            config = cls.config_class.from_dict(raw, source=str(folder / CONFIG_NAME))
        except ConfigError as err:
            raise WeightsError(str(err)) from None
        state = load_safetensors(folder / WEIGHTS_NAME)
        return cls.from_state_dict(
            config, state, source=str(folder / WEIGHTS_NAME), dtype=dtype, device=device
        )

    @classmethod
    def from_state_dict(
        cls: type[M],
        config: Config,
        state: Mapping[str, torch.Tensor],
        *,
        source: str = "state dict",
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        key_map: Callable[[str], str] | None = None,
    ) -> M:
        """Build from ``config`` and load ``state`` strictly (after renaming keys with ``key_map``)."""
        if key_map is not None:
            state = {key_map(k): v for k, v in state.items()}
        model = cls(config)
        check_state_dict(model, state, source)
        model.load_state_dict(state, strict=True)
        if dtype is not None:
            model = model.to(dtype=dtype)
        return model.to(device=device).eval()
