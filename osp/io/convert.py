"""Checkpoint converters: released Open-Sora-Plan / Latte / diffusers files to osp state dicts.

Converters work on plain dicts (config values and tensors) and never import model classes, so
``osp.io`` stays below the model packages. Legacy pickled checkpoints are opened with
``torch.load(weights_only=True)`` only: tensors and plain containers, never arbitrary objects.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from osp.errors import ConfigError, WeightsError
from osp.io.weights import load_safetensors

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHT_FILE_NAMES = (
    "model.safetensors",
    "diffusion_pytorch_model.safetensors",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin",
)


def load_pickled(path: Path, hint: str = "") -> object:
    """A legacy pickled checkpoint opened with ``weights_only=True`` (tensors and plain containers only);
    anything else is a WeightsError naming the file, never code run from it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise WeightsError(
            f"{path}: cannot be opened safely (weights_only=True refuses arbitrary pickled objects): "
            f"{str(err).splitlines()[0]}.{hint}"
        ) from None


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a legacy ``.ckpt/.pt/.pth/.bin`` (Lightning or plain)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise WeightsError(
            f"{path}: unknown checkpoint type (expected .safetensors or {', '.join(PICKLE_SUFFIXES)})"
        )
    obj = load_pickled(path, hint=" Re-save its state_dict as .safetensors and convert that.")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # PyTorch Lightning checkpoint
    elif isinstance(obj, Mapping) and isinstance(obj.get("ema"), Mapping):
        obj = obj["ema"]  # DiT / Latte training checkpoints keep {"model", "ema", "opt"}; EMA is the release
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: does not hold a state dict of tensors")
    return dict(obj)


def drop_prefixes(state: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def find_weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    ckpts = sorted(folder.glob("*.ckpt"))
    if ckpts:
        return ckpts[-1]
    raise WeightsError(f"{folder}: no weights file ({', '.join(WEIGHT_FILE_NAMES)} or *.ckpt)")


# ---- Open-Sora-Plan v1.0 CausalVAEModel -------------------------------------------------------------

# Release config keys that only concern its training loop or bookkeeping.
_OSP_VAE_IGNORED = {
    "lr",
    "loss_type",
    "loss_params",
    "resolution",
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
}
_OSP_VAE_COPIED = ("hidden_size", "hidden_size_mult", "z_channels", "embed_dim", "num_res_blocks", "dropout")
# Module choices of the release that osp builds, and what they become in CausalVAEConfig.
_OSP_VAE_REQUIRED = {
    "q_conv": "CausalConv3d",
    "encoder_conv_in": "CausalConv3d",
    "encoder_conv_out": "CausalConv3d",
    "decoder_conv_in": "CausalConv3d",
    "decoder_conv_out": "CausalConv3d",
    "encoder_mid_resnet": "ResnetBlock3D",
    "decoder_mid_resnet": "ResnetBlock3D",
}
_SPATIAL_DOWN = {"SpatialDownsample2x": True, "": False}
_SPATIAL_UP = {"SpatialUpsample2x": True, "": False}
_TEMPORAL_DOWN = {"TimeDownsample2x": "avg", "TimeDownsampleRes2x": "res", "": ""}
_TEMPORAL_UP = {"TimeUpsample2x": "trilinear", "TimeUpsampleRes2x": "res", "": ""}
_ATTENTION = {"AttnBlock3D": True, "AttnBlock3DFix": False}

# The defaults of the released CausalVAEModel_4x8x8 (scripts/causalvae/release.json).
OSP_V1_VAE_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "hidden_size_mult": [1, 2, 4, 4],
    "z_channels": 4,
    "embed_dim": 4,
    "num_res_blocks": 2,
    "dropout": 0.0,
    "double_z": True,
    "attn_resolutions": [],
    "encoder_attention": "AttnBlock3D",
    "decoder_attention": "AttnBlock3D",
    "encoder_resnet_blocks": ["ResnetBlock3D"] * 4,
    "decoder_resnet_blocks": ["ResnetBlock3D"] * 4,
    "encoder_spatial_downsample": ["SpatialDownsample2x", "SpatialDownsample2x", "SpatialDownsample2x", ""],
    "encoder_temporal_downsample": ["TimeDownsample2x", "TimeDownsample2x", "", ""],
    "decoder_spatial_upsample": ["", "SpatialUpsample2x", "SpatialUpsample2x", "SpatialUpsample2x"],
    "decoder_temporal_upsample": ["", "", "TimeUpsample2x", "TimeUpsample2x"],
    **_OSP_VAE_REQUIRED,
}


def _lookup(raw: Mapping[str, Any], key: str, table: Mapping[str, Any], source: str) -> list[Any]:
    values = raw.get(key, OSP_V1_VAE_CONFIG[key])
    out = []
    for v in values:
        if v not in table:
            raise ConfigError(f"{source}: {key}: {v!r} is not supported by osp (supported: {sorted(table)})")
        out.append(table[v])
    return out


def opensora_vae_config(raw: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """Translate an Open-Sora-Plan ``CausalVAEModel`` config.json into CausalVAEConfig fields."""
    known = set(OSP_V1_VAE_CONFIG) | _OSP_VAE_IGNORED
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown CausalVAEModel keys: {', '.join(unknown)}")
    for key, expected in _OSP_VAE_REQUIRED.items():
        if raw.get(key, expected) != expected:
            raise ConfigError(f"{source}: {key}: {raw[key]!r} is not supported by osp (only {expected!r})")
    for key in ("encoder_resnet_blocks", "decoder_resnet_blocks"):
        if any(b != "ResnetBlock3D" for b in raw.get(key, OSP_V1_VAE_CONFIG[key])):
            raise ConfigError(f"{source}: {key}: only ResnetBlock3D is supported by osp")
    if not raw.get("double_z", True):
        raise ConfigError(f"{source}: double_z: false is not supported (osp's VAE is a Gaussian VAE)")
    if raw.get("attn_resolutions", []):
        raise ConfigError(
            f"{source}: attn_resolutions: per-level attention is not supported (the release uses [])"
        )
    attention = {raw.get(k, "AttnBlock3D") for k in ("encoder_attention", "decoder_attention")}
    if len(attention) != 1 or next(iter(attention)) not in _ATTENTION:
        raise ConfigError(f"{source}: encoder/decoder_attention must both be one of {sorted(_ATTENTION)}")
    config = {k: raw[k] for k in _OSP_VAE_COPIED if k in raw}
    config.update(
        spatial_down=_lookup(raw, "encoder_spatial_downsample", _SPATIAL_DOWN, source),
        temporal_down=_lookup(raw, "encoder_temporal_downsample", _TEMPORAL_DOWN, source),
        spatial_up=_lookup(raw, "decoder_spatial_upsample", _SPATIAL_UP, source),
        temporal_up=_lookup(raw, "decoder_temporal_upsample", _TEMPORAL_UP, source),
        attention_legacy_reshape=_ATTENTION[next(iter(attention))],
    )
    return config


def convert_opensora_vae(
    src: str | Path, config_path: str | Path | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(CausalVAEConfig fields, state dict) from a released Open-Sora-Plan v1.0 VAE.

    ``src`` is a folder (config.json + diffusion_pytorch_model.safetensors, or a Lightning *.ckpt) or a
    single weights file; ``config_path`` overrides the config (default: the folder's config.json, else
    the v1.0 release config). Training-only tensors (``loss.*``: LPIPS, discriminator) are dropped.
    """
    src = Path(src)
    if src.is_dir():
        weights = find_weights_file(src)
        config_path = config_path or (src / "config.json" if (src / "config.json").is_file() else None)
    elif src.exists():
        weights = src
    else:
        raise WeightsError(f"{src}: no such file or folder")
    raw: dict[str, Any] = dict(OSP_V1_VAE_CONFIG)
    if config_path is not None:
        try:
            raw = json.loads(Path(config_path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{config_path}: cannot read config ({err})") from None
        if raw.get("_class_name", "CausalVAEModel") != "CausalVAEModel":
            raise ConfigError(
                f"{config_path}: holds a {raw['_class_name']}, not an Open-Sora-Plan CausalVAEModel"
            )
    config = opensora_vae_config(raw, str(config_path or "release config"))
    state = drop_prefixes(read_checkpoint(weights), ("loss.",))
    return config, state


# ---- Latte text-to-video: diffusers LatteTransformer3DModel and Open-Sora-Plan v1.0 LatteT2V ---------

_LATTE_COPIED = (
    "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers", "dropout",
    "cross_attention_dim", "attention_bias", "patch_size", "activation_fn", "norm_elementwise_affine", "norm_eps",
    "caption_channels", "video_length",
)  # fmt: skip
# Keys that only concern bookkeeping, or options whose only supported value is checked below.
_LATTE_IGNORED = {
    "_class_name", "_diffusers_version", "_name_or_path", "num_embeds_ada_norm", "attention_mode",
    "use_linear_projection", "upcast_attention", "norm_num_groups", "num_vector_embeds",
}  # fmt: skip
_LATTE_REQUIRED = {
    "norm_type": "ada_norm_single",
    "patch_size_t": 1,
    "only_cross_attention": False,
    "double_self_attention": False,
    "attention_type": "default",
}
# Tensors of Open-Sora-Plan's LatteT2V that no computation reads (its caption projection keeps an unused
# random "y_embedding" buffer).
LATTE_T2V_UNUSED_KEYS = ("caption_projection.y_embedding",)


def latte_t2v_config(raw: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """LatteT2VConfig fields from a diffusers ``LatteTransformer3DModel`` or Open-Sora-Plan ``LatteT2V``
    config.json. Open-Sora-Plan scales its temporal positions by max(video_length // 5, 1)."""
    unknown = sorted(set(raw) - set(_LATTE_COPIED) - _LATTE_IGNORED - set(_LATTE_REQUIRED) - {"sample_size"})
    if unknown:
        raise ConfigError(f"{source}: unknown Latte config keys: {', '.join(unknown)}")
    for key, expected in _LATTE_REQUIRED.items():
        if key in raw and raw[key] != expected:
            raise ConfigError(f"{source}: {key}: {raw[key]!r} is not supported by osp (only {expected!r})")
    config = {k: raw[k] for k in _LATTE_COPIED if k in raw and raw[k] is not None}
    size = raw.get("sample_size", 64)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ConfigError(f"{source}: sample_size: {size} — only square training sizes are supported")
        size = size[0]
    config["sample_size"] = size
    if raw.get("_class_name") == "LatteT2V":
        config["temporal_interpolation_scale"] = float(max(int(raw.get("video_length", 16)) // 5, 1))
    return config


def convert_latte_t2v(src: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(LatteT2VConfig fields, state dict) from a diffusers / Open-Sora-Plan transformer folder
    (config.json + diffusion_pytorch_model.safetensors, or a training .pt/.ckpt next to a config.json)."""
    src = Path(src)
    folder = src if src.is_dir() else src.parent
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{folder}: no config.json beside the transformer weights")
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{folder / 'config.json'}: cannot read config ({err})") from None
    config = latte_t2v_config(raw, str(folder / "config.json"))
    weights = find_weights_file(src) if src.is_dir() else src
    state = {k: v for k, v in read_checkpoint(weights).items() if k not in LATTE_T2V_UNUSED_KEYS}
    return config, state
