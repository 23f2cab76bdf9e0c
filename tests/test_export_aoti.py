"""`osp export --target compile --out`: AOTInductor packages of a tiny text-to-video model, checked
against eager PyTorch at shapes other than the traced one, loaded by `osp generate --engine compile
--engine-dir`, and refused when built for another torch, CPU or shape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import test_export_onnx
import torch
from torch.torch_version import TorchVersion

from osp.export.aoti import build_info, load_package
from osp.export.manifest import read_manifest
from osp.export.runtime import AotiEngine, make_engine
from osp.io.video import read_video
from osp.pipelines.text_to_video import TextToVideo, load_pipeline

run = test_export_onnx.run
t2v_dir = test_export_onnx.t2v_dir  # the tiny text-to-video model folder fixture, shared

pytestmark = [
    pytest.mark.slow,  # Inductor C++ compiles of every component: about 4 minutes on two cores
    pytest.mark.skipif(
        TorchVersion(torch.__version__) < "2.6", reason="AOTInductor packages need torch >= 2.6"
    ),
]


@pytest.fixture(scope="module")
def package_dir(t2v_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Transformer and VAE decoder, fp32, dynamic shapes, traced at 9 frames x 32x48."""
    out = tmp_path_factory.mktemp("exports") / "compiled"
    code, text = run("export", "--model", str(t2v_dir), "--target", "compile", "--out", str(out))
    assert code == 0, text
    assert "transformer: transformer.pt2 (fp32, dynamic shapes); max abs error" in text
    assert "vae_decoder: vae_decoder.pt2 (fp32, dynamic shapes); max abs error" in text
    return out


def test_manifest_names_what_the_packages_are_bound_to(package_dir: Path, t2v_dir: Path) -> None:
    manifest = read_manifest(package_dir)
    assert (manifest.target, manifest.flavour, manifest.opset, manifest.precision) == (
        "compile",
        "aoti",
        None,
        "fp32",
    )
    assert sorted(manifest.components) == ["transformer", "vae_decoder"]
    for entry in manifest.components.values():
        assert (package_dir / entry.file).is_file()
        assert entry.build["torch"] == torch.__version__ and entry.build["device"] == "cpu"
        assert entry.build["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert entry.verify is not None and entry.verify.max_rel < 1e-4
        assert entry.verify.sizes != entry.sample  # checked at a shape it was not traced at
    assert (
        manifest.components["transformer"].axes["latent_frames"].max
        > manifest.components["transformer"].sample["latent_frames"]
    )


@pytest.mark.parametrize("frames,size", [(9, (32, 48)), (13, (48, 32))])
def test_compiled_engine_generates_what_eager_generates(
    package_dir: Path,
    t2v_dir: Path,
    frames: int,
    size: tuple[int, int],
) -> None:
    """One folder of dynamic-shape packages serves the traced shape and another length and size."""
    pipe = load_pipeline(t2v_dir)
    assert isinstance(pipe, TextToVideo)
    engine = make_engine("compile", pipe, engine_dir=package_dir, model_dir=t2v_dir, frames=frames, size=size)
    assert isinstance(engine, AotiEngine)
    eager = pipe.generate(["a red circle"], seed=3, steps=2, frames=frames, size=size)
    compiled = pipe.generate(
        ["a red circle"], seed=3, steps=2, frames=frames, size=size,
        denoiser=engine.denoiser(), decoder=engine.decoder(),
    )  # fmt: skip
    assert compiled.videos[0].shape == (frames, 3, *size)
    torch.testing.assert_close(
        compiled.latents, eager.latents, rtol=1e-3, atol=1e-3
    )  # fp32 rounding, 2 steps
    diff = max(
        (a.int() - b.int()).abs().max().item() for a, b in zip(compiled.videos, eager.videos, strict=True)
    )
    assert diff <= 1


def test_generate_with_packages_writes_the_eager_video(
    package_dir: Path, t2v_dir: Path, tmp_path: Path
) -> None:
    videos = {}
    for engine in ("torch", "compile"):
        out = tmp_path / f"{engine}.mp4"
        code, text = run("generate", "a blue square", "--model", str(t2v_dir), "-o", str(out), "--steps", "2",
                         "--engine", engine, "--engine-dir", str(package_dir), "-q")  # fmt: skip
        assert code == 0, text
        videos[engine] = read_video(out).frames.float()
    assert videos["compile"].shape == (9, 3, 32, 48)
    assert (videos["compile"] - videos["torch"]).abs().mean() < 3.0  # same pixels up to the video codec


def test_vae_encoder_and_text_encoder_packages_match_eager(t2v_dir: Path, tmp_path: Path) -> None:
    """The components `osp generate` does not load, packaged for other programs: run from the .pt2 files
    at shapes other than the traced ones, against the VAE's posterior and the text encoder's states."""
    out = tmp_path / "encoders"
    code, text = run("export", "--model", str(t2v_dir), "--target", "compile", "--out", str(out),
                     "--components", "vae_encoder,text_encoder")  # fmt: skip
    assert code == 0, text
    manifest = read_manifest(out)
    assert sorted(manifest.components) == ["text_encoder", "vae_encoder"]
    pipe = load_pipeline(t2v_dir)
    assert isinstance(pipe, TextToVideo)
    encode = load_package(out / manifest.components["vae_encoder"].file, torch.device("cpu"))
    video = (
        torch.rand(2, 3, 13, 48, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    )  # traced: 9x32x48
    mean, logvar = encode(video)
    with torch.no_grad():
        posterior = pipe.vae.encode(video)
    torch.testing.assert_close(mean, posterior.mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logvar, posterior.logvar, rtol=1e-4, atol=1e-4)
    states = load_package(out / manifest.components["text_encoder"].file, torch.device("cpu"))
    encoder = pipe.text_encoder
    prompts = ["a red circle moving left", "on a white background a yellow triangle slides up", "x"]
    tokens = test_export_onnx._tokens(encoder, prompts, 20)
    got = states(torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"]))
    torch.testing.assert_close(got, encoder.encode(prompts, max_length=20).states, rtol=1e-4, atol=1e-4)


def _edited(package_dir: Path, tmp_path: Path, name: str, edit: dict[str, str]) -> Path:
    folder = tmp_path / name
    shutil.copytree(package_dir, folder)
    data = json.loads((folder / "manifest.json").read_text())
    for entry in data["components"].values():
        entry["build"].update(edit)
    (folder / "manifest.json").write_text(json.dumps(data))
    return folder


def test_packages_built_elsewhere_or_for_other_shapes_are_refused(
    package_dir: Path,
    t2v_dir: Path,
    tmp_path: Path,
) -> None:
    other_torch = _edited(package_dir, tmp_path, "torch", {"torch": "2.5.0"})
    other_cpu = _edited(package_dir, tmp_path, "cpu", {"cpu_capability": "NO_AVX"})
    gen = ["generate", "a cat", "--model", str(t2v_dir), "-o", str(tmp_path / "o.mp4"), "-q"]
    export = ["export", "--model", str(t2v_dir), "--target", "compile", "--out", str(tmp_path / "x")]
    cases = [
        ([*gen, "--engine", "compile", "--engine-dir", str(other_torch)], "compiled for torch 2.5.0"),
        ([*gen, "--engine", "compile", "--engine-dir", str(other_cpu)], "compiled for cpu_capability NO_AVX"),
        ([*gen, "--engine", "compile", "--engine-dir", str(other_cpu)], "--target compile --frames 9 --size 32x48"),
        ([*gen, "--engine", "onnx", "--engine-dir", str(package_dir)], "holds a compile export, not onnx"),
        ([*gen, "--engine", "compile", "--engine-dir", str(package_dir), "--frames", "161"], "latent_frames"),
        ([*gen, "--engine", "compile", "--engine-dir", str(t2v_dir)], "not an osp export folder"),
        ([*export, "--precision", "fp16"], "--precision: compiled packages are fp32 or bf16"),
        ([*export, "--components", "refiner"], "components: unknown refiner"),
        ([*export, "--device", "mps"], "--device mps: packages are compiled for cpu or cuda"),
        ([*export, "--device", "banana"], "--device: 'banana' is not a device"),
        (["export", "--model", str(t2v_dir), "--out", str(tmp_path / "x"), "--device", "cuda"],
         "--device: only --target compile --out"),
    ]  # fmt: skip
    for args, message in cases:
        code, text = run(*args)
        assert code == 2, (args, text)
        assert message in text and "Traceback" not in text, (args, text)
    assert not (tmp_path / "x").exists() and not (tmp_path / "o.mp4").exists()
    assert build_info(torch.device("cpu"))["torch"] == torch.__version__


def test_static_bf16_package_holds_one_shape(t2v_dir: Path, tmp_path: Path) -> None:
    """bf16 transformer specialised on the traced shape: parity within bf16's tolerance, a request for
    any other shape refused before sampling, and sampling still close to eager fp32."""
    out = tmp_path / "bf16"
    code, text = run("export", "--model", str(t2v_dir), "--target", "compile", "--out", str(out), "--static",
                     "--precision", "bf16", "--components", "transformer")  # fmt: skip
    assert code == 0, text
    manifest = read_manifest(out)
    entry = manifest.components["transformer"]
    assert manifest.precision == "bf16" and list(manifest.components) == ["transformer"]
    assert {i.name: i.dtype for i in entry.inputs}["latents"] == "bfloat16"
    assert {i.name: i.dtype for i in entry.inputs}["timestep"] == "float32"  # sinusoids need fp32
    assert all(a.min == a.max == entry.sample[n] for n, a in entry.axes.items())
    pipe = load_pipeline(t2v_dir)
    assert isinstance(pipe, TextToVideo)
    engine = make_engine("compile", pipe, engine_dir=out, model_dir=t2v_dir)
    assert engine.decoder() is None  # no packaged decoder: the pipeline decodes with its own VAE
    eager = pipe.generate(["a red circle"], seed=3, steps=2)
    compiled = pipe.generate(["a red circle"], seed=3, steps=2, denoiser=engine.denoiser())
    scale = eager.latents.abs().max()
    assert (compiled.latents - eager.latents).abs().max() < 0.05 * scale
    code, text = run("generate", "a cat", "--model", str(t2v_dir), "-o", str(tmp_path / "o.mp4"), "-q",
                     "--engine", "compile", "--engine-dir", str(out), "--frames", "13")  # fmt: skip
    assert code == 2 and "re-export" in text and "Traceback" not in text, text
    manifest.components["transformer"].build["torch"] = "0.0"  # the rebuild command keeps every choice
    (out / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json")))
    code, text = run("generate", "a cat", "--model", str(t2v_dir), "-o", str(tmp_path / "o.mp4"), "-q",
                     "--engine", "compile", "--engine-dir", str(out))  # fmt: skip
    assert code == 2 and "--precision bf16 --components transformer --static" in " ".join(text.split()), text
