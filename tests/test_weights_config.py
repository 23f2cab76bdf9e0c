"""Configs (pydantic + YAML) and weights folders (config.json + model.safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from osp.config import Config
from osp.errors import ConfigError, WeightsError
from osp.io.weights import atomic_write_text
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVAEConfig, CausalVideoVAE, TilingConfig


class RunConfig(Config):
    name: str
    tiling: TilingConfig = TilingConfig()
    steps: int = 10


def test_yaml_config_loads_and_is_frozen(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: demo\nsteps: 3\ntiling:\n  latent_size: 16\n")
    cfg = RunConfig.from_file(path)
    assert cfg.steps == 3 and cfg.tiling.latent_size == 16 and cfg.tiling.latent_frames == 9
    with pytest.raises(Exception, match="frozen"):
        cfg.steps = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a\nstepz: 3\n", r"run.yaml: stepz: unknown key"),
        (
            "name: a\ntiling:\n  latent_size: -1\n",
            r"run.yaml: tiling.latent_size: Input should be greater than 0",
        ),
        ("name: a\nsteps: many\n", r"run.yaml: steps: Input should be a valid integer"),
        ("steps: 1\n", r"run.yaml: name: Field required"),
        ("- a\n- b\n", r"run.yaml: the top level must be a mapping"),
        ("name: [unclosed\n", r"run.yaml: not valid YAML"),
    ],
)
def test_bad_config_names_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_file(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        RunConfig.from_file(tmp_path / "nope.yaml")


def test_model_config_cross_field_validation() -> None:
    with pytest.raises(ConfigError, match="spatial_down needs one entry per level"):
        CausalVAEConfig.from_dict({"spatial_down": [True, True]})
    with pytest.raises(ConfigError, match="norm_groups"):
        CausalVAEConfig.from_dict({"hidden_size": 20})


def _tiny() -> CausalVideoVAE:
    torch.manual_seed(0)
    return CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).eval()


def test_save_load_round_trip_is_bit_exact(tmp_path: Path) -> None:
    vae = _tiny()
    folder = vae.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "CausalVideoVAE" and config["norm_per_frame"] is True
    loaded = CausalVideoVAE.from_pretrained(folder)
    assert loaded.config == vae.config
    for key, value in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(x).mode()), vae.decode(vae.encode(x).mode()))


def test_dtype_on_save_and_load(tmp_path: Path) -> None:
    vae = _tiny()
    folder = vae.save_pretrained(tmp_path / "vae16", dtype=torch.float16)
    assert (folder / "model.safetensors").stat().st_size < 0.6 * sum(p.numel() * 4 for p in vae.parameters())
    default = CausalVideoVAE.from_pretrained(folder)  # fp16 files load as fp32 unless a dtype is asked for
    assert {p.dtype for p in default.parameters()} == {torch.float32}
    rounded = vae.encoder.conv_in.conv.weight.half().float()
    assert torch.equal(default.encoder.conv_in.conv.weight, rounded)
    loaded = CausalVideoVAE.from_pretrained(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert not loaded.training


def test_overwrite_leaves_no_temp_files(tmp_path: Path) -> None:
    vae = _tiny()
    vae.save_pretrained(tmp_path / "vae")
    vae.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json", "model.safetensors"]


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import osp.io.weights as weights

    def half_write(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        _tiny().save_pretrained(tmp_path / "vae")
    assert list((tmp_path / "vae").iterdir()) == []


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_loading_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such weights folder"):
        CausalVideoVAE.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=r"no config\.json"):
        CausalVideoVAE.from_pretrained(tmp_path / "empty")

    folder = _tiny().save_pretrained(tmp_path / "vae")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=r"model\.safetensors: not a readable safetensors file"):
        CausalVideoVAE.from_pretrained(folder)

    folder = _tiny().save_pretrained(tmp_path / "vae2")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_sise": 3}))
    with pytest.raises(WeightsError, match=r"config\.json: hidden_sise: unknown key"):
        CausalVideoVAE.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "VQVAE"}))
    with pytest.raises(WeightsError, match="holds a VQVAE, not a CausalVideoVAE"):
        CausalVideoVAE.from_pretrained(folder)


def test_saved_weights_get_the_mode_of_any_new_file(tmp_path: Path) -> None:
    """The temporary file behind an atomic write is 0600, and safetensors replaces it with its own file;
    the result must still carry the usual mode (0666 less the umask), as a file opened for writing would."""
    import os

    from osp.io.weights import save_safetensors

    umask = os.umask(0)
    os.umask(umask)
    save_safetensors({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert (
        (tmp_path / "model.safetensors").stat().st_mode & 0o777
        == plain.stat().st_mode & 0o777
        == 0o666 & ~umask
    )
