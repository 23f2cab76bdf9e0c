"""Released Open-Sora-Plan v1.0 VAE checkpoints load into CausalVideoVAE unchanged."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from osp.cli.main import cli
from osp.errors import ConfigError, WeightsError
from osp.io.convert import OSP_V1_VAE_CONFIG, convert_opensora_vae, opensora_vae_config
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVAEConfig, CausalVideoVAE, load_causal_vae


def release_keys(hidden: int, mult: list[int], num_res_blocks: int) -> set[str]:
    """The state-dict keys the release's CausalVAEModel has, written out from its module tree
    (Encoder/Decoder of opensora/models/ae/videobase/causal_vae, release.json layout)."""
    keys: set[str] = set()

    def conv(prefix: str) -> None:
        keys.update({f"{prefix}.conv.weight", f"{prefix}.conv.bias"})

    def norm(prefix: str) -> None:
        keys.update({f"{prefix}.weight", f"{prefix}.bias"})

    def resnet(prefix: str, c_in: int, c_out: int) -> None:
        norm(f"{prefix}.norm1")
        conv(f"{prefix}.conv1")
        norm(f"{prefix}.norm2")
        conv(f"{prefix}.conv2")
        if c_in != c_out:
            conv(f"{prefix}.nin_shortcut")

    def mid(prefix: str, c: int) -> None:
        resnet(f"{prefix}.block_1", c, c)
        norm(f"{prefix}.attn_1.norm")
        for name in ("q", "k", "v", "proj_out"):
            conv(f"{prefix}.attn_1.{name}")
        resnet(f"{prefix}.block_2", c, c)

    levels = len(mult)
    conv("encoder.conv_in")
    c_in = hidden
    for i in range(levels):
        for j in range(num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", c_in, hidden * mult[i])
            c_in = hidden * mult[i]
        if i < levels - 1:  # SpatialDownsample2x on all but the last level; TimeDownsample2x has no weights
            conv(f"encoder.down.{i}.downsample.conv")
    mid("encoder.mid", c_in)
    norm("encoder.norm_out")
    conv("encoder.conv_out")
    conv("decoder.conv_in")
    mid("decoder.mid", c_in)
    for i in reversed(range(levels)):
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", c_in, hidden * mult[i])
            c_in = hidden * mult[i]
        if i > 0:  # SpatialUpsample2x on all but level 0; TimeUpsample2x has no weights
            conv(f"decoder.up.{i}.upsample.conv")
    norm("decoder.norm_out")
    conv("decoder.conv_out")
    conv("quant_conv")
    conv("post_quant_conv")
    return keys


def test_release_preset_has_exactly_the_release_keys() -> None:
    with torch.device("meta"):
        vae = CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-4x8x8"])
    assert set(vae.state_dict()) == release_keys(128, [1, 2, 4, 4], 2)


# A release-layout config small enough for a test (the release's GroupNorm always has 32 groups).
SMALL_RELEASE = {
    **OSP_V1_VAE_CONFIG,
    "hidden_size": 32,
    "hidden_size_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
}


def release_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the release's key names, shaped like the release's modules."""
    with torch.device("meta"):
        vae = CausalVideoVAE(CausalVAEConfig.from_dict(opensora_vae_config(SMALL_RELEASE)))
    shapes = {k: v.shape for k, v in vae.state_dict().items()}
    assert set(shapes) == release_keys(32, [1, 2, 2, 2], 1)
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in shapes.items()}


def write_release_folder(folder: Path, state: dict[str, torch.Tensor], kind: str) -> Path:
    folder.mkdir(parents=True)
    config = {"_class_name": "CausalVAEModel", "_diffusers_version": "0.27.2", **SMALL_RELEASE}
    (folder / "config.json").write_text(json.dumps(config))
    if kind == "diffusers":
        save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    else:  # a PyTorch Lightning checkpoint: training-only loss.* tensors and bookkeeping around the weights
        extra = {
            "loss.logvar": torch.zeros(()),
            "loss.discriminator.main.0.weight": torch.randn(64, 3, 4, 4),
            "loss.perceptual_loss.net.slice1.0.weight": torch.randn(64, 3, 3, 3),
        }
        ckpt = {"state_dict": {**state, **extra}, "epoch": 3, "global_step": 1200, "lr_schedulers": []}
        torch.save(ckpt, folder / "last.ckpt")
    return folder


def test_release_config_translates_to_the_preset() -> None:
    translated = CausalVAEConfig.from_dict(opensora_vae_config(OSP_V1_VAE_CONFIG))
    assert translated == CAUSAL_VAE_CONFIGS["causalvae-4x8x8"]


@pytest.mark.parametrize("kind", ["diffusers", "lightning"])
def test_released_folder_loads_unchanged(tmp_path: Path, kind: str) -> None:
    state = release_state()
    folder = write_release_folder(tmp_path / kind, state, kind)
    vae = load_causal_vae(folder)
    loaded = vae.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        assert vae.decode(vae.encode(x).mode()).shape == x.shape


def test_convert_command_writes_an_osp_folder(tmp_path: Path) -> None:
    state = release_state()
    folder = write_release_folder(tmp_path / "release", state, "lightning")
    out = tmp_path / "osp-vae"
    result = CliRunner().invoke(
        cli,
        [
            "vae",
            "convert",
            str(folder / "last.ckpt"),
            "--config",
            str(folder / "config.json"),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    vae = CausalVideoVAE.from_pretrained(out)
    assert all(torch.equal(vae.state_dict()[k], state[k]) for k in state)
    assert json.loads((out / "config.json").read_text())["_class_name"] == "CausalVideoVAE"


def test_unsupported_release_module_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    config = {**SMALL_RELEASE, "encoder_resnet_blocks": ["ResnetBlock2D"] * 4}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"x": torch.zeros(1)}, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ConfigError, match="encoder_resnet_blocks"):
        load_causal_vae(folder)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": release_state(), "hyper_parameters": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        convert_opensora_vae(path, config_path=None)


def test_weights_that_do_not_fit_are_listed(tmp_path: Path) -> None:
    state = release_state()
    state.pop("quant_conv.conv.bias")
    state["encoder.extra.weight"] = torch.zeros(1)
    folder = write_release_folder(tmp_path / "bad", state, "diffusers")
    with pytest.raises(
        WeightsError, match=r"1 missing: quant_conv.conv.bias; 1 unexpected: encoder.extra.weight"
    ):
        load_causal_vae(folder)


def test_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="nowhere"):
        load_causal_vae(tmp_path / "nowhere")
