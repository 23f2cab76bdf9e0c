"""Pick a text encoder from a short spec string or a :class:`TextEncoderConfig`.

Specs: ``"minilm"`` (bundled, the default), ``"t5:/path"``, ``"clip:/path"``, ``"minilm:/path"``, or a
bare folder path whose config.json ``model_type`` says which family it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from osp.config import Config
from osp.errors import ConfigError
from osp.text.base import HFTextEncoder, read_model_config, resolve_folders
from osp.text.encoders import CLIPTextEncoder, MiniLMEncoder, T5Encoder

TextEncoderKind = Literal["minilm", "t5", "clip"]

TEXT_ENCODERS: dict[str, type[HFTextEncoder]] = {
    "minilm": MiniLMEncoder,
    "t5": T5Encoder,
    "clip": CLIPTextEncoder,
}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class TextEncoderConfig(Config):
    """Which text encoder a pipeline or training run uses.

    ``path`` is required for t5 and clip; for minilm it defaults to the bundled weights.
    ``max_length`` None means the family's default (MiniLM 64, T5 120, CLIP 77).
    """

    kind: TextEncoderKind = "minilm"
    path: str | None = None
    max_length: int | None = Field(default=None, ge=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


def parse_spec(spec: str) -> TextEncoderConfig:
    """``"t5:/weights/t5-xxl"`` -> TextEncoderConfig(kind="t5", path="/weights/t5-xxl")."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("text encoder: empty spec (use 'minilm', 't5:/path', 'clip:/path' or a folder)")
    kind, sep, rest = spec.partition(":")
    if sep and kind.lower() in TEXT_ENCODERS:
        if not rest:
            raise ConfigError(f"text encoder: {spec!r} names no folder after '{kind}:'")
        return TextEncoderConfig(kind=kind.lower(), path=rest)
    if spec.lower() == "minilm":
        return TextEncoderConfig(kind="minilm")
    if spec.lower() in TEXT_ENCODERS:
        raise ConfigError(f"text encoder: {spec!r} needs a folder, e.g. '{spec.lower()}:/path/to/weights'")
    path = Path(spec)
    if path.is_dir():
        return TextEncoderConfig(kind=kind_of_folder(path), path=spec)
    raise ConfigError(
        f"text encoder: unknown spec {spec!r}; use 'minilm', 't5:/path', 'clip:/path' or an existing folder"
    )


def kind_of_folder(path: Path) -> TextEncoderKind:
    """The encoder family of a transformers folder, read from its config.json ``model_type``."""
    model_dir, _ = resolve_folders(path)
    model_type = read_model_config(model_dir).get("model_type")
    for kind, encoder in TEXT_ENCODERS.items():
        if model_type in encoder.model_types:
            return kind  # type: ignore[return-value]
    raise ConfigError(
        f"text encoder: {model_dir / 'config.json'} holds a {model_type!r} model; osp encodes text with "
        "BERT (MiniLM), T5/mT5/UMT5 or CLIP"
    )


def load_text_encoder(
    spec: str | TextEncoderConfig = "minilm",
    *,
    max_length: int | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
) -> HFTextEncoder:
    """Build the text encoder ``spec`` names; ``max_length`` / ``dtype`` override the config's.

    The model behind it is cached per (folder, device, dtype), so calling this again is cheap.
    """
    config = parse_spec(spec) if isinstance(spec, str) else spec
    if config.kind != "minilm" and config.path is None:
        raise ConfigError(f"text encoder: kind {config.kind!r} needs a path to a local weights folder")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError(f"text encoder: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    if max_length is not None and max_length < 1:
        raise ConfigError(f"text encoder: max_length must be at least 1, got {max_length}")
    encoder = TEXT_ENCODERS[config.kind]
    return encoder(
        config.path,  # type: ignore[arg-type]  # None only for minilm, which means the bundled weights
        max_length=config.max_length if max_length is None else max_length,
        dtype=DTYPES[config.dtype] if dtype is None else dtype,
        device=device,
    )
