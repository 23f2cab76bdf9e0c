"""Exported upscaler and interpolator: ONNX (GridSample) and AOTInductor files checked against eager
PyTorch at shapes they were not traced at, the engines' finishers against the eager models, refusal of
other weights or another denoising blend, the exported blend (osp export --upscale-denoise), the CLI's
refusals, and the onnxruntime + numpy upscaling script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import test_export_onnx
import torch
from click.testing import CliRunner
from torch.torch_version import TorchVersion

from osp.cli.main import cli
from osp.errors import ConfigError
from osp.export.aoti import export_compiled
from osp.export.manifest import EngineMismatchError, read_manifest
from osp.export.onnx import export_onnx, finisher_source
from osp.export.runtime import AotiEngine, OrtEngine
from osp.interpolate import INTERPOLATOR_CONFIGS, IFNetInterpolator
from osp.pipelines.finish import Finisher
from osp.upscale import UPSCALER_CONFIGS, SRVGGUpscaler

pytest.importorskip("onnxruntime")
t2v_dir = test_export_onnx.t2v_dir  # the tiny text-to-video model folder fixture (9 frames, 32x48)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finishers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finishers")
    torch.manual_seed(0)
    up = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x4"])
    folders = {
        "upscaler": up.save_pretrained(root / "up"),
        # Bicubic final warps, as the bundled interpolator's (its intermediate warps are bilinear).
        "interpolator": IFNetInterpolator(
            INTERPOLATOR_CONFIGS["rife-tiny"].replace(final_warp="bicubic")
        ).save_pretrained(root / "rife"),
    }
    with torch.no_grad():  # its denoising partner: the same network, other weights
        for p in up.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    up.save_pretrained(root / "up-denoise")
    return folders


@pytest.fixture(scope="module")
def onnx_dir(t2v_dir: Path, finishers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "onnx"
    export_onnx(t2v_dir, out, components=("interpolator", "upscaler"), finishers=dict(finishers))  # type: ignore[arg-type]
    return out


def test_onnx_files_match_eager_at_untraced_shapes(onnx_dir: Path, finishers: dict[str, Path]) -> None:
    manifest = read_manifest(onnx_dir)
    assert sorted(manifest.components) == ["interpolator", "upscaler"]
    for name, entry in manifest.components.items():
        assert entry.verify is not None and entry.verify.max_rel < 1e-4, name
        assert entry.verify.sizes != entry.sample  # every dynamic axis at another size than traced
        assert entry.build["weights_sha256"] == finisher_source(finishers[name])["weights_sha256"]
    up = manifest.components["upscaler"]
    assert [t.shape for t in up.outputs] == [["batch", 3, "frames", "4*height", "4*width"]]
    assert manifest.components["interpolator"].axes["height"].multiple == 8  # rife-tiny pads to 8
    nodes = [node for node in onnx.load(str(onnx_dir / "interpolator.onnx")).graph.node]
    modes = {
        a.s.decode() for n in nodes if n.op_type == "GridSample" for a in n.attribute if a.name == "mode"
    }
    # The warps are ONNX's own GridSample (opset 20 names), not a decomposition.
    assert modes == {"linear", "cubic"}


def test_bicubic_base_upscaler_exports_and_matches_eager(t2v_dir: Path, tmp_path: Path) -> None:
    """base: bicubic (an edge pad and a fixed grouped convolution before the one pixel shuffle) exports
    to stock ONNX operators; the onnxruntime finisher draws what eager PyTorch draws at an untraced size."""
    torch.manual_seed(1)
    config = UPSCALER_CONFIGS["srvgg-tiny-x4"].replace(base="bicubic")
    folder = SRVGGUpscaler(config).save_pretrained(tmp_path / "up")
    export_onnx(t2v_dir, tmp_path / "onnx", components=("upscaler",), finishers={"upscaler": folder})
    entry = read_manifest(tmp_path / "onnx").components["upscaler"]
    assert entry.verify is not None and entry.verify.max_rel < 1e-4
    upscale = OrtEngine(tmp_path / "onnx", t2v_dir).finisher("upscaler", folder)
    assert upscale is not None
    up = SRVGGUpscaler.from_pretrained(folder)
    video = torch.rand(1, 3, 3, 13, 18, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(up.upscale(video, net=upscale), up.upscale(video), atol=1e-4, rtol=0)


def test_ort_finishers_match_the_eager_models(
    onnx_dir: Path, t2v_dir: Path, finishers: dict[str, Path]
) -> None:
    engine = OrtEngine(onnx_dir, t2v_dir)
    interpolate = engine.finisher("interpolator", finishers["interpolator"])
    upscale = engine.finisher("upscaler", finishers["upscaler"])
    assert interpolate is not None and upscale is not None
    rife = IFNetInterpolator.from_pretrained(finishers["interpolator"])
    up = SRVGGUpscaler.from_pretrained(finishers["upscaler"])
    g = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, 4, 30, 42, generator=g) * 2 - 1  # 30x42: padded to 32x48 and cropped back
    with torch.no_grad():
        torch.testing.assert_close(
            rife.interpolate(video, 4, net=interpolate), rife.interpolate(video, 4), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(up.upscale(video, 2, net=upscale), up.upscale(video, 2), atol=1e-4, rtol=0)
        torch.testing.assert_close(  # the 4-mirror ensemble through the engine
            rife.interpolate(video, 2, net=interpolate, ensemble=True),
            rife.interpolate(video, 2, ensemble=True),
            atol=1e-4,
            rtol=0,
        )


def test_the_chain_runs_on_the_exported_finishers(
    onnx_dir: Path, t2v_dir: Path, finishers: dict[str, Path]
) -> None:
    """What osp generate --engine onnx --interpolate 2 --upscale 4 runs after sampling: the same frames
    as the eager chain (to the 8-bit level)."""
    clip = torch.randint(
        0, 256, (5, 3, 24, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(6)
    )
    kwargs = {"interpolate": 2, "upscale": 4, **{k: str(v) for k, v in finishers.items()}}
    eager = Finisher.build(**kwargs)([clip], 8.0)  # type: ignore[arg-type]
    exported = Finisher.build(**kwargs, engine=OrtEngine(onnx_dir, t2v_dir))([clip], 8.0)  # type: ignore[arg-type]
    assert eager[1] == exported[1] == 16.0 and exported[0][0].shape == (9, 3, 96, 128)
    assert (eager[0][0].int() - exported[0][0].int()).abs().max() <= 1
    with pytest.raises(ConfigError, match="--interpolate-warp: an exported interpolator warps as"):
        Finisher.build(**kwargs, interpolate_warp="bicubic", engine=OrtEngine(onnx_dir, t2v_dir))  # type: ignore[arg-type]


def test_engine_refuses_finishers_of_other_weights(onnx_dir: Path, t2v_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    other = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x4"]).save_pretrained(tmp_path / "other")
    with pytest.raises(
        EngineMismatchError,
        match=r"re-export with osp export --model .* --components interpolator,upscaler --upscaler .*other --out",
    ):
        OrtEngine(onnx_dir, t2v_dir).finisher("upscaler", other)


@pytest.fixture(scope="module")
def blended_dir(t2v_dir: Path, finishers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The upscaler exported as osp export --upscale-denoise 0.5 writes it."""
    out = tmp_path_factory.mktemp("exports") / "blended"
    export_onnx(t2v_dir, out, components=("upscaler",), finishers={"upscaler": finishers["upscaler"]},
                upscale_denoise=0.5)  # fmt: skip
    return out


def test_exported_blend_matches_the_eager_blend(
    blended_dir: Path, t2v_dir: Path, finishers: dict[str, Path]
) -> None:
    folder = finishers["upscaler"]
    entry = read_manifest(blended_dir).components["upscaler"]
    assert entry.build["denoise"] == "0.5"
    assert (
        entry.build["denoise_weights_sha256"]
        == finisher_source(folder.with_name("up-denoise"))["weights_sha256"]
    )
    upscale = OrtEngine(blended_dir, t2v_dir).finisher("upscaler", folder, 0.5)
    assert upscale is not None
    model = SRVGGUpscaler.from_pretrained(folder)
    blend = model.blended(SRVGGUpscaler.from_pretrained(folder.with_name("up-denoise")), 0.5)
    video = torch.rand(1, 3, 3, 14, 18, generator=torch.Generator().manual_seed(8)) * 2 - 1
    with torch.no_grad():
        expected, plain = blend.upscale(video, 4), model.upscale(video, 4)
        got = blend.upscale(video, 4, net=upscale)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (plain - expected).abs().max() > 0.01  # the blend is not the model itself


def test_the_chain_runs_the_exported_blend(
    blended_dir: Path, t2v_dir: Path, finishers: dict[str, Path]
) -> None:
    """osp generate --engine onnx --upscale 4 --upscale-denoise 0.5: the eager chain's frames."""
    clip = torch.randint(
        0, 256, (3, 3, 12, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    kwargs = {"upscale": 4, "upscaler": str(finishers["upscaler"]), "upscale_denoise": 0.5}
    eager = Finisher.build(**kwargs)([clip], 8.0)  # type: ignore[arg-type]
    exported = Finisher.build(**kwargs, engine=OrtEngine(blended_dir, t2v_dir))([clip], 8.0)  # type: ignore[arg-type]
    assert exported[0][0].shape == (3, 3, 48, 64)
    assert (eager[0][0].int() - exported[0][0].int()).abs().max() <= 1


@pytest.mark.parametrize(
    ("engine_dir", "denoise", "message"),
    [
        ("blended", None, "blended with .*up-denoise at 0.5, not .*up;"),
        ("blended", 1.0, "at 0.5, not .* at 1; re-export with .* --upscale-denoise 1 --out"),
        ("plain", 0.5, "exported from .*up, not .*up blended with .*up-denoise at 0.5"),
    ],
)
def test_engine_refuses_another_blend(
    onnx_dir: Path, blended_dir: Path, t2v_dir: Path, finishers: dict[str, Path],
    engine_dir: str, denoise: float | None, message: str,
) -> None:  # fmt: skip
    engine = OrtEngine(blended_dir if engine_dir == "blended" else onnx_dir, t2v_dir)
    with pytest.raises(EngineMismatchError, match=message):
        engine.finisher("upscaler", finishers["upscaler"], denoise)


@pytest.fixture(scope="module")
def partnered_dir(
    t2v_dir: Path, finishers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The upscaler exported blended with a partner named by --upscale-denoise-model (not its -denoise
    sibling): (engine folder, partner folder)."""
    root = tmp_path_factory.mktemp("elsewhere")
    partner = SRVGGUpscaler.from_pretrained(finishers["upscaler"])
    with torch.no_grad():
        for p in partner.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    partner.save_pretrained(root / "partner")
    export_onnx(t2v_dir, root / "engine", components=("upscaler",), finishers={"upscaler": finishers["upscaler"]},
                upscale_denoise=0.5, upscale_denoise_model=root / "partner")  # fmt: skip
    return root / "engine", root / "partner"


def test_exported_blend_with_a_named_partner(
    partnered_dir: tuple[Path, Path], t2v_dir: Path, finishers: dict[str, Path]
) -> None:
    """osp export / generate --upscale-denoise-model: the manifest records that partner, the chain on
    the engine draws the eager blend with it, and the engine refuses the sibling partner or none."""
    engine_dir, partner = partnered_dir
    folder = finishers["upscaler"]
    entry = read_manifest(engine_dir).components["upscaler"]
    assert entry.build["denoise_weights_sha256"] == finisher_source(partner)["weights_sha256"]
    assert (
        entry.build["denoise_weights_sha256"]
        != finisher_source(folder.with_name("up-denoise"))["weights_sha256"]
    )
    clip = torch.randint(
        0, 256, (3, 3, 12, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    kwargs = {
        "upscale": 4,
        "upscaler": str(folder),
        "upscale_denoise": 0.5,
        "upscale_denoise_model": str(partner),
    }
    eager = Finisher.build(**kwargs)([clip], 8.0)  # type: ignore[arg-type]
    exported = Finisher.build(**kwargs, engine=OrtEngine(engine_dir, t2v_dir))([clip], 8.0)  # type: ignore[arg-type]
    sibling = Finisher.build(**{**kwargs, "upscale_denoise_model": None})([clip], 8.0)  # type: ignore[arg-type]
    assert (eager[0][0].int() - exported[0][0].int()).abs().max() <= 1
    assert (eager[0][0].int() - sibling[0][0].int()).abs().max() > 1  # the partner made a difference
    engine = OrtEngine(engine_dir, t2v_dir)
    with pytest.raises(
        EngineMismatchError, match=r"blended with .*partner at 0.5, not .*up blended with .*up-denoise at 0.5"
    ):
        engine.finisher("upscaler", folder, 0.5)
    with pytest.raises(
        EngineMismatchError, match=r"--upscale-denoise 0.5 --upscale-denoise-model .*up-denoise --out"
    ):
        engine.finisher("upscaler", folder, 0.5, folder.with_name("up-denoise"))


def test_export_cli_writes_the_blend(t2v_dir: Path, finishers: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "engine"
    result = CliRunner().invoke(cli, ["export", "--model", str(t2v_dir), "--out", str(out), "-q",
                                      "--components", "upscaler", "--upscaler", str(finishers["upscaler"]),
                                      "--upscale-denoise", "0.25"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert OrtEngine(out, t2v_dir).finisher("upscaler", finishers["upscaler"], 0.25) is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upscale-denoise", "0.5"], "--upscale-denoise: applies to the upscaler; add upscaler to --components"),
        (["--components", "upscaler", "--interpolator", "{rife}"], "--interpolator: applies to the interpolator"),
        (["--components", "upscaler", "--upscaler", "{rife}"], "holds an interpolator, not an upscaler"),
        (["--components", "upscaler", "--upscaler", "{rife}", "--upscale-denoise", "0.5"], "holds an interpolator"),
        (["--components", "upscaler", "--upscaler", "{alone}", "--upscale-denoise", "0.5"],
         "alone has no denoising partner (no upscaler folder alone-denoise beside it); name one with --upscale-denoise-model"),
        (["--components", "upscaler", "--upscale-denoise-model", "{up}"], "--upscale-denoise-model: give --upscale-denoise too"),
        (["--upscale-denoise-model", "{up}"], "--upscale-denoise-model: applies to the upscaler"),
        (["--bundle-for", "node", "--upscale-denoise-model", "{up}"], "--bundle-for: a bundle holds"),
        (["--bundle-for", "node", "--upscaler", "{up}"], "--bundle-for: a bundle holds"),
        (["--target", "compile", "--upscaler", "{up}"], "--target compile without --out checks the transformer"),
    ],
)  # fmt: skip
def test_export_refuses_bad_finishing_options(
    t2v_dir: Path, finishers: dict[str, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out" / "engine"
    alone = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x2"]).save_pretrained(tmp_path / "alone")
    names = {"up": finishers["upscaler"], "rife": finishers["interpolator"], "alone": alone}
    argv = ["export", "--model", str(t2v_dir), "-q", *[a.format(**names) for a in args]]
    result = CliRunner().invoke(cli, argv + ([] if "compile" in args else ["--out", str(out)]))
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and not out.parent.exists()


BLOCK_OSP_AND_TORCH = test_export_onnx.BLOCK_OSP_AND_TORCH


def test_upscale_script_needs_neither_osp_nor_torch(
    onnx_dir: Path, finishers: dict[str, Path], tmp_path: Path
) -> None:
    frames = torch.randint(
        0, 256, (20, 12, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5)
    )
    np.save(tmp_path / "frames.npy", frames.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [str(onnx_dir), str(tmp_path / "frames.npy"), str(tmp_path / "out.npy")]
    proc = subprocess.run([sys.executable, "-c", BLOCK_OSP_AND_TORCH, str(ROOT / "examples" / "onnx_upscale.py"), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "out.npy")
    with torch.no_grad():  # the whole clip at once: the script's chunks (16 frames + 3 of context) are exact
        video = SRVGGUpscaler.from_pretrained(finishers["upscaler"])(
            frames.permute(3, 0, 1, 2)[None] / 127.5 - 1
        )
    expected = ((video[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0).numpy()
    assert got.shape == (20, 48, 64, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # rounding at .5 boundaries


@pytest.mark.slow  # an Inductor C++ compile: about a minute on two cores
@pytest.mark.skipif(TorchVersion(torch.__version__) < "2.6", reason="AOTInductor packages need torch >= 2.6")
def test_aoti_interpolator_matches_the_eager_model(
    t2v_dir: Path, finishers: dict[str, Path], tmp_path: Path
) -> None:
    """The interpolator (grid_sample, padded sizes); the upscaler is plain convolutions, which the
    transformer and VAE packages already cover."""
    out = tmp_path / "compiled"
    manifest = export_compiled(
        t2v_dir, out, components=("interpolator",), finishers={"interpolator": finishers["interpolator"]}
    )
    entry = manifest.components["interpolator"]
    assert entry.verify is not None and entry.verify.max_rel < 1e-4 and entry.verify.sizes != entry.sample
    interpolate = AotiEngine(out, t2v_dir).finisher("interpolator", finishers["interpolator"])
    rife = IFNetInterpolator.from_pretrained(finishers["interpolator"])
    video = torch.rand(1, 3, 3, 20, 28, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        expected = rife.interpolate(video, 2)
        torch.testing.assert_close(rife.interpolate(video, 2, net=interpolate), expected, atol=1e-4, rtol=0)
