"""``osp upscale`` and ``osp interpolate`` end to end on tiny models, and their bad inputs: one line,
exit status 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import test_export_onnx
import torch
from click.testing import CliRunner

from osp.cli.main import cli
from osp.interpolate import INTERPOLATOR_CONFIGS, IFNetInterpolator
from osp.io.samples import sample_video
from osp.io.video import from_model, probe_video, read_video, to_model, write_gif, write_video
from osp.upscale import UPSCALER_CONFIGS, SRVGGUpscaler

t2v_dir = test_export_onnx.t2v_dir  # a tiny text-to-video model folder: 9 frames of 32x48


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finish")
    torch.manual_seed(0)
    up = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x4"])
    with torch.no_grad():
        up.body[-1].weight.mul_(0.05)  # a faint residual: the codec keeps what it draws
    up.save_pretrained(root / "up")
    with torch.no_grad():
        up.body[-1].bias.sub_(0.15)  # its partner draws every frame darker
    up.save_pretrained(root / "up-denoise")
    SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x2"]).save_pretrained(root / "up-x2")  # none beside it
    IFNetInterpolator(INTERPOLATOR_CONFIGS["rife-tiny"]).save_pretrained(root / "rife")
    clip = read_video(sample_video("bikes"), num_frames=5, size=(32, 48))
    write_video(root / "clip.mp4", clip.frames, clip.fps)
    write_gif(root / "odd.gif", clip.frames[:, :, :31, :47], clip.fps)  # mp4 files are padded to even
    return root


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_help() -> None:
    for command in ("upscale", "interpolate"):
        code, out = run(command, "--help")
        assert code == 0 and "Usage:" in out


@pytest.mark.parametrize(("scale", "size"), [(4, (128, 192)), (2, (64, 96))])
def test_upscale_end_to_end(tmp_path: Path, assets: Path, scale: int, size: tuple[int, int]) -> None:
    out = tmp_path / "up.mp4"
    code, text = run("upscale", str(assets / "clip.mp4"), "-o", str(out), "--model", str(assets / "up"),
                     "--scale", str(scale), "-q")  # fmt: skip
    assert code == 0, text
    info = probe_video(out)
    assert (info.frames, info.height, info.width) == (5, *size)
    assert info.fps == pytest.approx(probe_video(assets / "clip.mp4").fps)


def test_upscale_ensemble_end_to_end(tmp_path: Path, assets: Path) -> None:
    """--ensemble runs the 8 flips and transposes (tiled too) and writes a video of the plain run's size."""
    for extra in ((), ("--tile", "--tile-size", "24", "--tile-overlap", "8")):
        out = tmp_path / f"ens{len(extra)}.mp4"
        code, text = run("upscale", str(assets / "clip.mp4"), "-o", str(out), "--model", str(assets / "up"),
                         "--scale", "4", "--ensemble", "-q", *extra)  # fmt: skip
        assert code == 0, text
        assert (probe_video(out).frames, probe_video(out).height, probe_video(out).width) == (5, 128, 192)


def test_upscale_denoise_blends_the_model_with_its_partner(tmp_path: Path, assets: Path) -> None:
    """--denoise S runs the blend of the model and the '-denoise' folder beside it (0: the model,
    1: the partner); --denoise-model names another partner, e.g. a released .pth file."""
    from osp.upscale import load_upscaler

    clip = read_video(assets / "clip.mp4").frames
    model, partner = load_upscaler(assets / "up").eval(), load_upscaler(assets / "up-denoise").eval()

    def expected(net: SRVGGUpscaler) -> torch.Tensor:
        with torch.inference_mode():
            return from_model(net.upscale(to_model(clip)[None], 4)[0])

    def upscaled(*extra: str) -> torch.Tensor:
        out = tmp_path / f"dn{len(list(tmp_path.iterdir()))}.mp4"
        code, text = run("upscale", str(assets / "clip.mp4"), "-o", str(out), "--model", str(assets / "up"),
                         "--scale", "4", "--no-tile", "-q", *extra)  # fmt: skip
        assert code == 0, text
        return read_video(out).frames

    # Each video is nearest the network expected to draw it (an mp4 round trip is lossy, so nearest
    # rather than equal).
    refs = [expected(model), expected(model.blended(partner, 0.5)), expected(partner)]

    def nearest(video: torch.Tensor) -> int:
        return min(range(3), key=lambda i: (video.float() - refs[i].float()).abs().mean().item())

    drawn = [nearest(upscaled(*extra)) for extra in ((), ("--denoise", "0.5"), ("--denoise", "1"))]
    assert drawn == [0, 1, 2]
    torch.save({"params_ema": partner.state_dict()}, tmp_path / "partner.pth")
    assert nearest(upscaled("--denoise", "1", "--denoise-model", str(tmp_path / "partner.pth"))) == 2


def test_upscale_tiled_from_a_released_checkpoint(tmp_path: Path, assets: Path) -> None:
    """--weights takes a Real-ESRGAN .pth ({"params_ema": state}); --tile runs it tile by tile."""
    state = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x2"].replace(temporal_radius=0)).state_dict()
    torch.save({"params_ema": state}, tmp_path / "realesr-tiny-x2.pth")
    out = tmp_path / "up.mp4"
    code, text = run("upscale", str(assets / "clip.mp4"), "-o", str(out), "--weights",
                     str(tmp_path / "realesr-tiny-x2.pth"), "--tile", "--tile-size", "24", "--tile-overlap", "8", "-q")  # fmt: skip
    assert code == 0, text
    assert (probe_video(out).height, probe_video(out).width) == (64, 96)


@pytest.mark.parametrize("factor", [2, 4])
def test_interpolate_end_to_end(tmp_path: Path, assets: Path, factor: int) -> None:
    out = tmp_path / "more.mp4"
    code, text = run("interpolate", str(assets / "clip.mp4"), "-o", str(out), "--model", str(assets / "rife"),
                     "--factor", str(factor), "-q")  # fmt: skip
    assert code == 0, text
    info, source = probe_video(out), probe_video(assets / "clip.mp4")
    assert (info.frames, info.height, info.width) == (4 * factor + 1, 32, 48)
    assert info.fps == pytest.approx(source.fps * factor, rel=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["upscale", "{clip}", "--model", "{up}", "--scale", "3"], "--scale 3: this upscaler makes x2 or x4"),
        (["interpolate", "{clip}", "--model", "{rife}", "--factor", "3"], "--factor 3: this interpolator makes x2 or x4"),
        (["upscale", "{notes}", "--model", "{up}"], "notes.mp4: not a readable video file"),
        (["interpolate", "{odd}", "--model", "{rife}"], "odd.gif: is 47x31; width and height must be even"),
        (["upscale", "{odd}", "--model", "{up}"], "width and height must be even"),
        (["interpolate", "{clip}", "--model", "{up}"], "holds an upscaler, not an interpolator"),
        (["upscale", "{clip}", "--model", "no-such-upscaler"], "no-such-upscaler is neither a folder"),
        (["upscale", "{clip}", "--model", "{up}", "--weights", "{up}/model.safetensors"], "not both"),
        (["upscale", "{clip}", "--model", "{up}", "--tile-size", "16", "--tile-overlap", "16"], "overlap 16 must be smaller than size 16"),
        (["upscale", "{clip}", "--model", "{upx2}", "--denoise", "0.5"], "up-x2 has no denoising partner (no upscaler folder up-x2-denoise beside it); name one with --denoise-model"),
        (["upscale", "{clip}", "--model", "{up}", "--denoise", "0.5", "--denoise-model", "{upx2}"], "only fine-tunes of one network blend"),
        (["upscale", "{clip}", "--model", "{up}", "--denoise-model", "{up}"], "--denoise-model: give --denoise too"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, assets: Path, args: list[str], message: str
) -> None:
    (assets / "notes.mp4").write_text("not a video")
    names = {"clip": assets / "clip.mp4", "odd": assets / "odd.gif", "notes": assets / "notes.mp4",
             "up": assets / "up", "rife": assets / "rife", "upx2": assets / "up-x2"}  # fmt: skip
    out = tmp_path / "out" / "x.mp4"
    code, text = run(*[a.format(**names) for a in args], "-o", str(out), "-q")
    assert code == 2, text
    assert message in text and "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert not out.parent.exists()


def test_interpolate_and_chain_ensemble(tmp_path: Path, assets: Path, t2v_dir: Path) -> None:
    """``osp interpolate --ensemble`` and ``osp generate --interpolate-ensemble``: the new frames are the
    model's 4-mirror ensemble of the input (made here by hand from the decoded input), nearer to it
    than to the plain model's frames (both are re-encoded, so not equal: mean errors 1.59 against 1.69
    levels for osp interpolate, 2.81 against 2.84 for the chain, whose base clip was not yet encoded)."""
    model = IFNetInterpolator.from_pretrained(assets / "rife").eval()
    base = tmp_path / "base.mp4"
    common = ["generate", "a red circle", "--model", str(t2v_dir), "--steps", "2", "-q"]
    assert run(*common, "-o", str(base))[0] == 0
    for source, command in (
        (
            assets / "clip.mp4",
            ["interpolate", str(assets / "clip.mp4"), "--model", str(assets / "rife"), "--ensemble", "-q"],
        ),
        (
            base,
            [*common, "--interpolate", "2", "--interpolator", str(assets / "rife"), "--interpolate-ensemble"],
        ),
    ):
        out = tmp_path / f"{command[0]}.mp4"
        code, text = run(*command, "-o", str(out))
        assert code == 0, text
        with torch.inference_mode():
            clip = to_model(read_video(source).frames)[None]
            expected = from_model(model.interpolate(clip, 2, ensemble=True)[0])[1::2]
            plain = from_model(model.interpolate(clip, 2)[0])[1::2]
        got = read_video(out).frames[1::2]
        assert got.shape == expected.shape
        errors = [(got.float() - ref.float()).abs().mean().item() for ref in (expected, plain)]
        assert errors[0] < errors[1], (command[0], errors)


def test_final_warp_reaches_the_interpolator(
    tmp_path: Path, assets: Path, t2v_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """osp interpolate --final-warp and osp generate --interpolate-warp set the loaded model's final
    warp (seen where the clip is handed to it); the chain then makes exactly the frames of the same
    weights under final_warp: bicubic (a bilinear model here, as released RIFE weights are)."""
    from osp.interpolate import load_interpolator
    from osp.pipelines import finish

    seen: list[str] = []
    original = finish.interpolate_clip

    def spy(model: IFNetInterpolator, *args: object, **kwargs: object) -> finish.ClipFn:
        seen.append(model.config.final_warp)
        return original(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(finish, "interpolate_clip", spy)
    rife = str(assets / "rife")
    code, text = run("interpolate", str(assets / "clip.mp4"), "-o", str(tmp_path / "a.mp4"), "--model", rife,
                     "--final-warp", "bicubic", "-q")  # fmt: skip
    assert code == 0, text
    code, text = run("generate", "a red circle", "--model", str(t2v_dir), "--steps", "2", "-o", str(tmp_path / "b.mp4"),
                     "--interpolate", "2", "--interpolator", rife, "--interpolate-warp", "bicubic", "-q")  # fmt: skip
    assert code == 0, text
    assert seen == ["bicubic", "bicubic"]
    model = load_interpolator(assets / "rife").eval()
    assert model.config.final_warp == "bilinear"
    bicubic = IFNetInterpolator.from_state_dict(
        model.config.replace(final_warp="bicubic"), model.state_dict()
    )
    clip = read_video(assets / "clip.mp4").frames
    chain = finish.Finisher.build(interpolate=2, interpolator=rife, interpolate_warp="bicubic")
    assert chain.interpolate is not None
    got = chain.interpolate(clip, lambda done, total: None)
    with torch.inference_mode():
        expected = from_model(bicubic.eval().interpolate(to_model(clip)[None], 2)[0])
        bilinear = from_model(model.interpolate(to_model(clip)[None], 2)[0])
    assert torch.equal(got, expected) and not torch.equal(got, bilinear)


def test_generate_chains_interpolator_then_upscaler(tmp_path: Path, assets: Path, t2v_dir: Path) -> None:
    """base model (9 frames, 32x48) -> x2 frames (17) -> x4 size (128x192), at twice the frame rate."""
    out = tmp_path / "chain.mp4"
    code, text = run("generate", "a red circle", "--model", str(t2v_dir), "--steps", "2", "-o", str(out),
                     "--interpolate", "2", "--upscale", "4", "--interpolator", str(assets / "rife"),
                     "--upscaler", str(assets / "up"), "-q")  # fmt: skip
    assert code == 0, text
    info = probe_video(out)
    assert (info.frames, info.height, info.width, info.fps) == (17, 128, 192, pytest.approx(16.0))


def test_generate_upscales_with_denoise_and_ensemble(tmp_path: Path, assets: Path, t2v_dir: Path) -> None:
    """--upscale-denoise / --upscale-ensemble reach the chain's upscaler: the output is the blended
    model's self-ensemble of the base model's clip (the same seed, upscaled here by hand)."""
    from osp.upscale import load_upscaler

    base, out = tmp_path / "base.mp4", tmp_path / "finished.mp4"
    common = ["generate", "a red circle", "--model", str(t2v_dir), "--steps", "2", "-q"]
    assert run(*common, "-o", str(base))[0] == 0
    code, text = run(*common, "-o", str(out), "--upscale", "4", "--upscaler", str(assets / "up"),
                     "--upscale-denoise", "0.5", "--upscale-ensemble")  # fmt: skip
    assert code == 0, text
    blend = load_upscaler(assets / "up").blended(load_upscaler(assets / "up-denoise"), 0.5).eval()
    with torch.inference_mode():
        clip = to_model(read_video(base).frames)[None]
        expected = from_model(blend.upscale(clip, 4, ensemble=True)[0])
        plain = from_model(blend.upscale(clip, 4)[0])
    got = read_video(out).frames
    assert got.shape == expected.shape == (9, 3, 128, 192)
    # The chain upscales the clip before it is encoded, this test the decoded clip: nearest, not equal
    # (mean errors 9.9 and 14.3 levels here).
    errors = [(got.float() - ref.float()).abs().mean().item() for ref in (expected, plain)]
    assert errors[0] < errors[1]


def test_generate_blends_with_a_named_partner(tmp_path: Path, assets: Path, t2v_dir: Path) -> None:
    """--upscale-denoise-model names a partner other than the upscaler's -denoise sibling (here a
    released-style .pth whose frames are brighter, the sibling's darker): at strength 1 the chain draws
    the named partner's frames."""
    from osp.upscale import load_upscaler

    base, out = tmp_path / "base.mp4", tmp_path / "finished.mp4"
    common = ["generate", "a red circle", "--model", str(t2v_dir), "--steps", "2", "-q"]
    assert run(*common, "-o", str(base))[0] == 0
    model, sibling = load_upscaler(assets / "up").eval(), load_upscaler(assets / "up-denoise").eval()
    named = load_upscaler(assets / "up").eval()
    with torch.no_grad():
        named.body[-1].bias.add_(0.15)
    torch.save({"params_ema": named.state_dict()}, tmp_path / "partner.pth")
    code, text = run(*common, "-o", str(out), "--upscale", "4", "--upscaler", str(assets / "up"),
                     "--upscale-denoise", "1", "--upscale-denoise-model", str(tmp_path / "partner.pth"))  # fmt: skip
    assert code == 0, text
    with torch.inference_mode():
        clip = to_model(read_video(base).frames)[None]
        refs = [from_model(net.upscale(clip, 4)[0]) for net in (named, sibling, model)]
    got = read_video(out).frames
    errors = [(got.float() - ref.float()).abs().mean().item() for ref in refs]
    assert errors[0] < min(errors[1:]), errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upscale", "3"], "--upscale 3: this upscaler makes x2 or x4"),
        (["--interpolate", "3"], "--interpolate 3: this interpolator makes x2 or x4"),
        (["--upscale", "2", "--upscaler", "{rife}"], "holds an interpolator, not an upscaler"),
        (
            ["--upscale", "2", "--upscaler", "{upx2}", "--upscale-denoise", "0.5"],
            "--upscale-denoise: "
            "{upx2} has no denoising partner (no upscaler folder up-x2-denoise beside it); name one with --upscale-denoise-model",
        ),
        (
            ["--upscale", "4", "--upscale-denoise-model", "{upx2}"],
            "--upscale-denoise-model: give --upscale-denoise too",
        ),
    ],
)
def test_generate_refuses_a_bad_chain_before_sampling(
    tmp_path: Path, assets: Path, t2v_dir: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out" / "chain.mp4"
    names = {"rife": assets / "rife", "upx2": assets / "up-x2"}
    code, text = run("generate", "a red circle", "--model", str(t2v_dir), "-o", str(out), "--upscaler",
                     str(assets / "up"), "--interpolator", str(assets / "rife"),
                     *[a.format(**names) for a in args], "-q")  # fmt: skip
    message = message.format(**names)
    assert code == 2 and message in text and "Traceback" not in text, text
    assert not out.parent.exists()
