"""FVD, CLIP score and reconstruction metrics against independent references: SciPy's sqrtm, the
published I3D architecture, transformers' CLIPModel by hand, scikit-image, training's LPIPS."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from osp.cli.main import cli
from osp.eval.fvd import frechet_distance, fvd, gaussian_stats, i3d_features
from osp.eval.i3d import I3D, load_i3d
from osp.io.video import read_video, write_video
from osp.io.weights import load_safetensors, save_safetensors

scipy_linalg = pytest.importorskip("scipy.linalg")
skimage_metrics = pytest.importorskip("skimage.metrics")


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


# --------------------------------------------------------------------------------- Fréchet distance


def scipy_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """The usual formula with scipy.linalg.sqrtm, whose result is checked before it is trusted."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False, bias=True), np.cov(y, rowvar=False, bias=True)
    root = scipy_linalg.sqrtm(s1 @ s2)
    # SciPy 1.11.2-1.11.3 returned wrong square roots: a reference must square back to the product.
    np.testing.assert_allclose(root @ root, s1 @ s2, rtol=1e-6, atol=1e-8)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root.real))


def test_frechet_distance_matches_scipy_on_random_gaussians() -> None:
    rng = np.random.default_rng(0)
    dim = 24
    for n1, n2, shift in ((400, 300, 0.5), (100, 80, 0.0), (60, 60, 2.0)):  # the last: rank-deficient
        a = rng.standard_normal((dim, dim))
        x = rng.standard_normal((n1, dim)) @ a
        y = rng.standard_normal((n2, dim)) @ (a + 0.3 * rng.standard_normal((dim, dim))) + shift
        ours = fvd(torch.from_numpy(x), torch.from_numpy(y))
        assert ours == pytest.approx(scipy_frechet(x, y), rel=1e-9, abs=1e-9)


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    x = torch.randn(50, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    mu, sigma = gaussian_stats(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * float(sigma.trace())
    # The covariance divides by N by default and by N - 1 on request, like NumPy's bias flag.
    np.testing.assert_allclose(gaussian_stats(x, ddof=1)[1].numpy(), np.cov(x.numpy(), rowvar=False))
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.numpy(), rowvar=False, bias=True))


# ---------------------------------------------------------------------------------------------- I3D


def published_i3d_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of pytorch-i3d's rgb_imagenet.pt, from the architecture: Inception-v1's widths
    (GoogLeNet, Szegedy et al. 2014, table 1) inflated to 3D, 1x1x1 / 3x3x3 kernels, 400 classes."""
    shapes: dict[str, tuple[int, ...]] = {}

    def unit(name: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{name}.conv3d.weight"] = (cout, cin, k, k, k)
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{field}"] = (cout,)

    unit("Conv3d_1a_7x7", 3, 64, 7)
    unit("Conv3d_2b_1x1", 64, 64, 1)
    unit("Conv3d_2c_3x3", 64, 192, 3)
    inception = {  # 1x1, 3x3 reduce, 3x3, 5x5 reduce, "5x5" (3x3 in I3D), pool projection
        "3b": (64, 96, 128, 16, 32, 32), "3c": (128, 128, 192, 32, 96, 64),
        "4b": (192, 96, 208, 16, 48, 64), "4c": (160, 112, 224, 24, 64, 64), "4d": (128, 128, 256, 24, 64, 64),
        "4e": (112, 144, 288, 32, 64, 64), "4f": (256, 160, 320, 32, 128, 128),
        "5b": (256, 160, 320, 32, 128, 128), "5c": (384, 192, 384, 48, 128, 128),
    }  # fmt: skip
    cin = 192
    for block, (one, r3, three, r5, five, pool) in inception.items():
        name = f"Mixed_{block}"
        unit(f"{name}.b0", cin, one, 1)
        unit(f"{name}.b1a", cin, r3, 1)
        unit(f"{name}.b1b", r3, three, 3)
        unit(f"{name}.b2a", cin, r5, 1)
        unit(f"{name}.b2b", r5, five, 3)
        unit(f"{name}.b3b", cin, pool, 1)
        cin = one + three + five + pool
    shapes["logits.conv3d.weight"] = (400, cin, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (400,)
    return shapes


def test_i3d_state_dict_matches_the_published_checkpoint() -> None:
    ours = {k: tuple(v.shape) for k, v in I3D().state_dict().items()}
    assert ours == published_i3d_shapes()


def random_i3d(seed: int = 0) -> I3D:
    """Random weights that keep activations at scale through the 60 layers (He init)."""
    torch.manual_seed(seed)
    model = I3D()
    for name, param in model.named_parameters():
        if name.endswith("conv3d.weight"):
            torch.nn.init.kaiming_normal_(param, nonlinearity="relu")
    return model.eval()


def smooth_clips(count: int, frames: int = 8, size: int = 32) -> list[torch.Tensor]:
    """uint8 (T, 3, H, W) clips of moving colour gradients, each with its own phase and speed."""
    g = torch.Generator().manual_seed(3)
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    clips = []
    for _ in range(count):
        phase, speed = torch.rand(3, generator=g) * 6, torch.rand(1, generator=g) * 2
        t = torch.arange(frames).view(-1, 1, 1, 1)
        waves = torch.sin((x + y * phase.view(1, 3, 1, 1) + speed * t) / 5 + phase.view(1, 3, 1, 1))
        clips.append((127.5 + 100 * waves).round().to(torch.uint8))
    return clips


def test_fvd_rises_with_the_noise_added_to_a_set() -> None:
    model = random_i3d()
    base = smooth_clips(10, frames=4)
    real = i3d_features(model, base, size=32)
    g = torch.Generator().manual_seed(4)
    distances = [0.0]  # a set against itself: see test_frechet_distance_of_a_set_with_itself_is_zero
    for sigma in (6.0, 20.0, 60.0):
        noisy = [
            (c.float() + sigma * torch.randn(c.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
            for c in base
        ]
        distances.append(fvd(real, i3d_features(model, noisy, size=32)))
    assert distances[0] < distances[1] < distances[2] < distances[3], distances


def hassony2_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """StyleGAN-V's TorchScript I3D follows hassony2/kinetics_i3d_pytorch: lower-case end points,
    branch_k Sequentials, batch3d, and conv3d_0c_1x1 for the logits."""
    branches = {"b0": "branch_0", "b1a": "branch_1.0", "b1b": "branch_1.1", "b2a": "branch_2.0",
                "b2b": "branch_2.1", "b3b": "branch_3.1"}  # fmt: skip
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        parts[0] = "conv3d_0c_1x1" if parts[0] == "logits" else parts[0].lower()
        parts = [branches.get(p, p) for p in parts]
        out[".".join(parts).replace(".bn.", ".batch3d.")] = value
    return out


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchscript_with(state: dict[str, torch.Tensor], path: Path) -> None:
    root = _Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node: torch.nn.Module = root
        for part in parents:
            if part not in node._modules:
                node.add_module(part, torch.nn.Module())
            node = node._modules[part]  # type: ignore[assignment]
        node.register_buffer(leaf, value)
    torch.jit.script(root).save(str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_convert_i3d_from_state_dict_and_torchscript(tmp_path: Path) -> None:
    state = random_i3d(1).state_dict()
    # A pytorch-i3d / VideoGPT file: same names, saved from a DataParallel model with step counters.
    legacy = {f"module.{k}": v for k, v in state.items()}
    legacy.update(
        {
            f"module.{k.rsplit('.', 1)[0]}.num_batches_tracked": torch.tensor(0)
            for k in state
            if k.endswith("running_mean")
        }
    )
    torch.save(legacy, tmp_path / "rgb_imagenet.pt")
    code, text = run("eval", "convert-i3d", str(tmp_path / "rgb_imagenet.pt"))
    assert code == 0, text
    converted = load_safetensors(tmp_path / "rgb_imagenet.safetensors")
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)

    torchscript_with(hassony2_names(state), tmp_path / "i3d_torchscript.pt")
    code, text = run(
        "eval", "convert-i3d", str(tmp_path / "i3d_torchscript.pt"), "-o", str(tmp_path / "ts.safetensors")
    )
    assert code == 0, text
    assert "TorchScript" in text and "deserialisation" in text
    model = load_i3d(tmp_path / "ts.safetensors")
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)

    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "other.pt")
    code, text = run("eval", "convert-i3d", str(tmp_path / "other.pt"))
    assert code == 2 and "missing" in text and "Traceback" not in text
    code, text = run("eval", "fvd", str(tmp_path), str(tmp_path), "--i3d", str(tmp_path / "rgb_imagenet.pt"))
    assert code == 2 and "convert-i3d" in text


def write_clips(folder: Path, clips: list[torch.Tensor], names: list[str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"clip{i}" for i in range(len(clips))]
    return [write_video(folder / f"{name}.mp4", clip, 8) for name, clip in zip(names, clips, strict=True)]


def test_fvd_command_caches_features_and_notes_small_sets(tmp_path: Path) -> None:
    weights = tmp_path / "i3d.safetensors"
    save_safetensors(random_i3d().state_dict(), weights)
    clips = smooth_clips(3, frames=2, size=32)
    write_clips(tmp_path / "real", clips[:2])
    write_clips(tmp_path / "gen", clips[1:])
    out = tmp_path / "fvd.json"
    args = ("eval", "fvd", str(tmp_path / "real"), str(tmp_path / "gen"), "--i3d", str(weights), "--frames", "2",
            "-o", str(out), "-q")  # fmt: skip
    code, text = run(*args)
    assert code == 0, text
    first = json.loads(out.read_text())
    assert (
        first["real"]["clips"] == 2 and first["generated"]["clips"] == 2 and first["real"]["from_cache"] == 0
    )
    assert any("below 256" in note for note in first["notes"]) and "below 256" in text
    assert first["protocol"]["covariance"].startswith("divided by N")
    code, text = run(*args)
    second = json.loads(out.read_text())
    assert second["real"]["from_cache"] == 2 and second["fvd"] == first["fvd"]

    code, text = run("eval", "fvd", str(tmp_path / "real"), str(tmp_path / "gen"))
    assert code == 2 and text.count("\n") == 1 and "--i3d" in text


# --------------------------------------------------------------------------------------- CLIP score


def build_clip_model(folder: Path) -> Path:
    """A tiny random CLIP (text + vision), its letter-level BPE tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for word in symbols + [s + "</w>" for s in symbols]:
        vocab[word] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


def test_clip_score_equals_a_hand_computation(tmp_path: Path) -> None:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    clip_dir = build_clip_model(tmp_path / "clip")
    gen = tmp_path / "gen"
    clips = smooth_clips(2, frames=3, size=40)
    write_clips(gen, clips, ["a", "b"])
    prompts = ["a red circle", "a blue square moving to the left and then far away"]  # the second > 16 tokens
    (gen / "manifest.jsonl").write_text(
        "".join(
            json.dumps({"file": f"{n}.mp4", "prompt": p}) + "\n" for n, p in zip("ab", prompts, strict=True)
        )
    )
    out = tmp_path / "clip.json"
    code, text = run("eval", "clip-score", str(gen), "--clip", str(clip_dir), "-o", str(out), "-q")
    assert code == 0, text
    result = json.loads(out.read_text())

    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    processor = AutoImageProcessor.from_pretrained(clip_dir)
    expected = []
    with torch.no_grad():
        for name, prompt in zip("ab", prompts, strict=True):
            frames = read_video(gen / f"{name}.mp4").frames
            tokens = tokenizer([prompt], truncation=True, max_length=16, return_tensors="pt")
            text_emb = model.get_text_features(**tokens)
            text_emb = text_emb if isinstance(text_emb, torch.Tensor) else text_emb.pooler_output
            scores = []
            for frame in frames:
                image = model.get_image_features(**processor(images=[frame], return_tensors="pt"))
                image = image if isinstance(image, torch.Tensor) else image.pooler_output
                cos = torch.nn.functional.cosine_similarity(image, text_emb).item()
                scores.append(max(100 * cos, 0.0))
            expected.append(sum(scores) / len(scores))
    assert [c["clip_score"] for c in result["clips"]] == pytest.approx(expected, abs=1e-4)
    assert result["clip_score"] == pytest.approx(sum(expected) / 2, abs=1e-4)
    assert result["clip_model"] == "clip" and any("truncated" in n for n in result["notes"])

    code, text = run("eval", "clip-score", str(gen))
    assert code == 2 and text.count("\n") == 1 and "--clip" in text


# ----------------------------------------------------------------------------------- reconstruction


def test_recon_matches_scikit_image_and_lpips(tmp_path: Path) -> None:
    from osp_train.losses import LPIPS

    clips = smooth_clips(2, frames=3, size=32)
    g = torch.Generator().manual_seed(5)
    noisy = [
        (c.float() + 15 * torch.randn(c.shape, generator=g)).clamp(0, 255).to(torch.uint8) for c in clips
    ]
    write_clips(tmp_path / "real", clips, ["a", "b"])
    write_clips(tmp_path / "recon", [noisy[0], noisy[1][:2]], ["a", "b"])  # b: one frame short
    torch.manual_seed(0)
    lpips = LPIPS()
    for param in lpips.lins.parameters():
        param.data.uniform_(0, 1)  # LPIPS heads are non-negative
    state = {f"features.{k}": v for k, v in lpips.features.state_dict().items()}
    state.update({f"lin{i}.model.1.weight": lin.weight for i, lin in enumerate(lpips.lins)})
    torch.save(state, tmp_path / "vgg.pth")
    out = tmp_path / "recon.json"
    code, text = run("eval", "recon", str(tmp_path / "real"), str(tmp_path / "recon"), "--lpips", str(tmp_path / "vgg.pth"),
                     "-o", str(out), "-q")  # fmt: skip
    assert code == 0, text
    result = json.loads(out.read_text())
    assert [c["frames"] for c in result["clips"]] == [3, 2] and "differ in length" in text
    for clip, name in zip(result["clips"], "ab", strict=True):
        real = read_video(tmp_path / "real" / f"{name}.mp4").frames
        recon = read_video(tmp_path / "recon" / f"{name}.mp4").frames
        real = real[: recon.shape[0]]
        psnr = skimage_metrics.peak_signal_noise_ratio(real.numpy(), recon.numpy(), data_range=255)
        ssim = np.mean([
            skimage_metrics.structural_similarity(a.numpy(), b.numpy(), channel_axis=0, gaussian_weights=True, sigma=1.5,
                                                  use_sample_covariance=False, data_range=255)
            for a, b in zip(real, recon, strict=True)
        ])  # fmt: skip
        with torch.no_grad():
            lp = lpips(real.float() / 127.5 - 1, recon.float() / 127.5 - 1).mean().item()
        assert clip["psnr"] == pytest.approx(psnr, abs=1e-6)
        assert clip["ssim"] == pytest.approx(ssim, abs=1e-6)
        assert clip["lpips"] == pytest.approx(lp, rel=1e-4)
    assert result["psnr"] == pytest.approx(math.fsum(c["psnr"] for c in result["clips"]) / 2)

    code, text = run(
        "eval", "recon", str(tmp_path / "real"), str(tmp_path / "recon"), "--lpips", str(tmp_path / "no.pth")
    )
    assert code == 2 and text.count("\n") == 1 and "--lpips" in text
