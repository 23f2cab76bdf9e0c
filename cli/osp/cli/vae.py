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


@vae.command()
@click.argument("vae_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--frames", type=click.IntRange(min=1), default=17, show_default=True)
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True)
def calibrate(vae_dir: Path, videos: tuple[Path, ...], frames: int, size: int) -> None:
    """Set VAE_DIR's scaling_factor to 1 / std of its latents over VIDEOS (unit-variance diffusion input).

    Stable Diffusion's 0.18215 was measured the same way for its own VAE; a VAE trained by osp needs its
    own value, or the diffusion model sees latents far from the unit variance its noise assumes."""
    import json

    import torch

    from osp.io.video import read_video, to_model
    from osp.io.weights import atomic_write_text, read_config_json
    from osp.vae import load_causal_vae

    model = load_causal_vae(vae_dir).eval()
    latents = []
    with torch.no_grad():
        for path in videos:
            x = to_model(read_video(path, num_frames=frames, size=size).frames).unsqueeze(0)
            latents.append(model.encode(x).mode().flatten())
    std = float(torch.cat(latents).std())
    config = read_config_json(vae_dir)
    config["scaling_factor"] = round(1.0 / std, 6)
    atomic_write_text(vae_dir / "config.json", json.dumps(config, indent=2) + "\n")
    console.print(
        f"latent std {std:.4f} over {len(videos)} clips: scaling_factor = {config['scaling_factor']}"
    )
