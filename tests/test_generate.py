"""Text-to-video and class-to-video pipelines and `osp generate` end to end, with tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from osp.cli.main import cli
from osp.dit.latte import LATTE_CONFIGS, Latte
from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp.errors import ConfigError, ShapeError
from osp.io.video import from_model, probe_video, read_video
from osp.pipelines.text_to_video import ClassToVideo, PipelineSpec, TextToVideo, load_pipeline
from osp.text import load_text_encoder
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE, TilingConfig


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    for param in model.parameters():  # zero-initialised outputs would make every video grey
        param.data.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def t2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    transformer = _randomise(LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"].replace(caption_channels=384)))
    vae = CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).eval()
    spec = PipelineSpec(frames=9, size=(32, 48), steps=3, sampler="ddim", guidance=3.0, fps=8)
    pipe = TextToVideo(transformer, vae, load_text_encoder("minilm"), spec)
    return pipe.save_pretrained(tmp_path_factory.mktemp("models") / "t2v")


@pytest.fixture(scope="module")
def c2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    transformer = _randomise(Latte(LATTE_CONFIGS["latte-tiny"]))
    vae = CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).eval()
    spec = PipelineSpec(kind="class-to-video", frames=9, size=(32, 32), steps=2)
    return ClassToVideo(transformer, vae, spec).save_pretrained(tmp_path_factory.mktemp("models") / "c2v")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_generate_writes_a_decodable_video(tmp_path: Path, t2v_dir: Path) -> None:
    out = tmp_path / "clip.mp4"
    code, text = run("generate", "a red circle moving left", "--model", str(t2v_dir), "-o", str(out), "--gif",
                     "--grid", "-q")  # fmt: skip
    assert code == 0, text
    info = probe_video(out)
    assert (info.frames, info.height, info.width) == (9, 32, 48)
    assert read_video(out).fps == pytest.approx(8)
    assert (tmp_path / "clip.gif").is_file() and (tmp_path / "clip_grid.png").is_file()


def test_cli_options_override_the_model_defaults(tmp_path: Path, t2v_dir: Path) -> None:
    out = tmp_path / "v.mp4"
    code, text = run("generate", "one", "two", "--model", str(t2v_dir), "-o", str(out), "--frames", "5",
                     "--size", "16x32", "--steps", "2", "--sampler", "euler", "-q")  # fmt: skip
    assert code == 0, text
    for name in ("v_0.mp4", "v_1.mp4"):
        info = probe_video(tmp_path / name)
        assert (info.frames, info.height, info.width) == (5, 16, 32)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frames", "8"], "4n+1 frames"),
        (["--size", "40"], "multiples of 16"),
        (["--sampler", "warp"], "sampler: 'warp' is unknown"),
        (["--class-label", "3"], "text-to-video model"),
        (["-o", "x.avi"], "must end in .mp4"),
        (["--freeze"], "--freeze: only --engine compile"),
        (
            ["--engine", "compile", "--freeze", "--engine-dir", "{tmp}"],
            "compiled with frozen weights already",
        ),
        (["--cuda-graphs"], "CUDA graphs need --device cuda"),
        (
            ["--cuda-graphs", "--engine", "onnx", "--engine-dir", "{tmp}"],
            "--cuda-graphs: only --engine torch",
        ),
    ],
)
def test_generate_bad_input(tmp_path: Path, t2v_dir: Path, args: list[str], message: str) -> None:
    args = [a.format(tmp=tmp_path) for a in args]
    code, text = run("generate", "a cat", "--model", str(t2v_dir), "-o", str(tmp_path / "o.mp4"), "-q", *args)
    assert code == 2, text
    assert message in text and "Traceback" not in text
    assert list(tmp_path.iterdir()) == []


def test_generate_missing_model(tmp_path: Path) -> None:
    code, text = run("generate", "a cat", "--model", str(tmp_path / "none"), "-q")
    assert code == 2 and "neither a folder nor a model name" in text and str(tmp_path / "none") in text
    (tmp_path / "empty").mkdir()
    code, text = run("generate", "a cat", "--model", str(tmp_path / "empty"), "-q")
    assert code == 2 and "not an osp model folder" in text


def test_seeds_reproduce_and_batching_does_not_change_a_clip(t2v_dir: Path) -> None:
    pipe = load_pipeline(t2v_dir)
    assert isinstance(pipe, TextToVideo)
    a = pipe.generate(["a blue square"], seed=5, steps=2)
    b = pipe.generate(["a blue square"], seed=5, steps=2)
    assert torch.equal(a.latents, b.latents)
    batch = pipe.generate(["a green circle", "a blue square"], seed=4, steps=2)  # clip 1 uses seed 4 + 1
    torch.testing.assert_close(batch.latents[1:], a.latents, rtol=1e-4, atol=1e-4)
    other = pipe.generate(["a blue square"], seed=6, steps=2)
    assert not torch.allclose(other.latents, a.latents)


def test_negative_prompt_and_guidance_matter(t2v_dir: Path) -> None:
    pipe = load_pipeline(t2v_dir)
    assert isinstance(pipe, TextToVideo)
    base = pipe.generate(["a red circle"], steps=2).latents
    assert not torch.allclose(
        pipe.generate(["a red circle"], steps=2, negative_prompt="blurry").latents, base
    )
    assert not torch.allclose(pipe.generate(["a red circle"], steps=2, guidance=1.0).latents, base)


def test_explicit_tiling_decodes_with_the_vae_not_the_engine_decoder(t2v_dir: Path) -> None:
    """An engine's decoder takes whole clips; a caller who names tiles gets the VAE's tiled decode."""
    pipe = load_pipeline(t2v_dir)
    assert isinstance(pipe, TextToVideo)
    calls = []

    def engine_decoder(latents: torch.Tensor) -> torch.Tensor:
        calls.append(latents.shape)
        return pipe.vae.decode_latents(latents)

    tiles = TilingConfig(latent_size=3, latent_overlap=1, latent_frames=2, latent_frame_overlap=1)
    tiled = pipe.generate(["a red circle"], steps=1, tiling=tiles, decoder=engine_decoder)
    assert calls == []
    with torch.inference_mode():
        expected = pipe.vae.decode_latents(tiled.latents, tiles)
    assert torch.equal(tiled.videos[0], from_model(expected[0].float()))
    whole = pipe.generate(["a red circle"], steps=1, decoder=engine_decoder)  # "auto": the engine's
    assert len(calls) == 1 and torch.equal(whole.latents, tiled.latents)


def test_long_prompt_is_truncated_with_a_warning(t2v_dir: Path) -> None:
    pipe = load_pipeline(t2v_dir)
    assert isinstance(pipe, TextToVideo)
    with pytest.warns(UserWarning, match="prompt 0"):
        result = pipe.generate(["a red circle " * 60], steps=1)
    assert len(result.videos) == 1


def test_pipeline_errors(t2v_dir: Path) -> None:
    pipe = load_pipeline(t2v_dir)
    with pytest.raises(ShapeError, match="4n"):
        pipe.generate(["x"], frames=6)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="prompts"):
        pipe.generate("not a list")  # type: ignore[arg-type]


def test_class_to_video(tmp_path: Path, c2v_dir: Path) -> None:
    out = tmp_path / "c.mp4"
    code, text = run("generate", "--class-label", "3", "--model", str(c2v_dir), "-o", str(out), "-q")
    assert code == 0, text
    assert probe_video(out).frames == 9
    code, text = run("generate", "--class-label", "99", "--model", str(c2v_dir), "-o", str(out), "-q")
    assert code == 2 and "class labels" in text
    code, text = run("generate", "a prompt", "--model", str(c2v_dir), "-o", str(out), "-q")
    assert code == 2 and "class-conditional" in text
