"""``osp vae``: list presets, create a fresh VAE, convert released checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from osp.cli.common import DTYPE_CHOICE, console


@click.group()
def vae() -> None:
    """Video autoencoder presets and weights."""


@vae.command()
def presets() -> None:
    """List the causal video VAE presets with their sizes."""
    import torch
    from rich.table import Table

    from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE

    table = Table("preset", "compression (t, h, w)", "latent channels", "parameters")
    for name, cfg in CAUSAL_VAE_CONFIGS.items():
        with torch.device("meta"):  # count parameters without allocating them
            params = sum(p.numel() for p in CausalVideoVAE(cfg).parameters())
        table.add_row(
            name,
            f"{cfg.temporal_compression}x{cfg.spatial_compression}x{cfg.spatial_compression}",
            str(cfg.embed_dim),
            f"{params / 1e6:.2f}M",
        )
    console.print(table)


@vae.command()
@click.argument("preset")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
def init(preset: str, out: Path, seed: int) -> None:
    """Write a randomly initialised VAE of PRESET to OUT (a starting point for training)."""
    import torch

    from osp.errors import ConfigError
    from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE

    if preset not in CAUSAL_VAE_CONFIGS:
        raise ConfigError(f"preset: {preset!r} is unknown; choose one of {', '.join(CAUSAL_VAE_CONFIGS)}")
    torch.manual_seed(seed)
    CausalVideoVAE(CAUSAL_VAE_CONFIGS[preset]).save_pretrained(out)
    console.print(f"wrote {preset} (random init, seed {seed}) to {out}")


@vae.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The release's config.json, if SRC is a bare weights file with a non-default layout.",
)
@click.option("--dtype", type=DTYPE_CHOICE, default="fp32", show_default=True)
def convert(src: Path, out: Path, config_path: Path | None, dtype: str) -> None:
    """Convert a released Open-Sora-Plan v1.0 VAE (folder, .ckpt or .safetensors) to an osp weights folder."""
    from osp.io.convert import convert_opensora_vae
    from osp.pipelines.reconstruct import DTYPES
    from osp.vae import CausalVAEConfig, CausalVideoVAE

    fields, state = convert_opensora_vae(src, config_path)
    config = CausalVAEConfig.from_dict(fields, source=str(config_path or src))
    model = CausalVideoVAE.from_state_dict(config, state, source=str(src))
    model.save_pretrained(out, dtype=DTYPES[dtype])
    console.print(
        f"converted {src} -> {out} ({sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters)"
    )
