"""IFNetInterpolator: the released Practical-RIFE v4.25 architecture (keys, shapes, numerics against a
plain restatement of the published forward), the flownet.pkl converter, warping, x2 / x4 in time,
tiling, presets, save/load and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from osp.errors import ShapeError, WeightsError
from osp.interpolate import (
    INTERPOLATOR_CONFIGS,
    IFNetInterpolator,
    InterpolateTiling,
    load_interpolator,
    warp,
)
from osp.metrics import psnr

# Practical-RIFE v4.25's IFNet: five blocks of these widths, 8 residual convs each, a 16-channel head,
# 8 feature channels handed between blocks; inputs of block 0: 3 + 3 + 16 + 16 + 1 = 39, of the others
# 39 + mask 1 + features 8 + flow 4 = 52.
V425 = {"widths": (192, 128, 96, 64, 32), "res": 8, "head": 16, "feat": 8}


def published_keys(widths: tuple[int, ...], res: int, head: int, feat: int) -> dict[str, tuple]:
    first, later, out = 7 + 2 * head, 7 + 2 * head + 1 + feat + 4, 4 * (5 + feat)
    keys: dict[str, tuple] = {}
    for k, c in enumerate(widths):
        p = f"block{k}."
        keys |= {p + "conv0.0.0.weight": (c // 2, first if k == 0 else later, 3, 3), p + "conv0.0.0.bias": (c // 2,),
                 p + "conv0.1.0.weight": (c, c // 2, 3, 3), p + "conv0.1.0.bias": (c,)}  # fmt: skip
        for j in range(res):
            q = f"{p}convblock.{j}."
            keys |= {q + "conv.weight": (c, c, 3, 3), q + "conv.bias": (c,), q + "beta": (1, c, 1, 1)}
        keys |= {p + "lastconv.0.weight": (c, out, 4, 4), p + "lastconv.0.bias": (out,)}
    for n in range(3):
        keys |= {f"encode.cnn{n}.weight": (head, 3 if n == 0 else head, 3, 3), f"encode.cnn{n}.bias": (head,)}
    keys |= {"encode.cnn3.weight": (head, head, 4, 4), "encode.cnn3.bias": (head,)}
    return keys


def published_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    n, _, h, w = flow.shape
    gx = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w).expand(n, -1, h, -1)
    gy = torch.linspace(-1.0, 1.0, h).view(1, 1, h, 1).expand(n, -1, -1, w)
    f = torch.cat([flow[:, :1] / ((w - 1.0) / 2.0), flow[:, 1:2] / ((h - 1.0) / 2.0)], 1)
    grid = (torch.cat([gx, gy], 1) + f).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def published_forward(s: dict[str, torch.Tensor], img0: torch.Tensor, img1: torch.Tensor, t: float,
                      widths: tuple[int, ...], res: int) -> torch.Tensor:  # fmt: skip
    """IFNet_HDv3 (v4.25) inference in plain torch, scale_list 2^(n-1) .. 1; images in [0, 1]."""
    lrelu = lambda x: F.leaky_relu(x, 0.2)  # noqa: E731

    def head(x: torch.Tensor) -> torch.Tensor:
        x = lrelu(F.conv2d(x, s["encode.cnn0.weight"], s["encode.cnn0.bias"], stride=2, padding=1))
        x = lrelu(F.conv2d(x, s["encode.cnn1.weight"], s["encode.cnn1.bias"], padding=1))
        x = lrelu(F.conv2d(x, s["encode.cnn2.weight"], s["encode.cnn2.bias"], padding=1))
        return F.conv_transpose2d(x, s["encode.cnn3.weight"], s["encode.cnn3.bias"], stride=2, padding=1)

    def block(k: int, x: torch.Tensor, flow: torch.Tensor | None, scale: float) -> tuple:
        p = f"block{k}."
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) / scale
            x = torch.cat((x, flow), 1)
        x = lrelu(F.conv2d(x, s[p + "conv0.0.0.weight"], s[p + "conv0.0.0.bias"], stride=2, padding=1))
        x = lrelu(F.conv2d(x, s[p + "conv0.1.0.weight"], s[p + "conv0.1.0.bias"], stride=2, padding=1))
        for j in range(res):
            q = f"{p}convblock.{j}."
            x = lrelu(F.conv2d(x, s[q + "conv.weight"], s[q + "conv.bias"], padding=1) * s[q + "beta"] + x)
        x = F.conv_transpose2d(x, s[p + "lastconv.0.weight"], s[p + "lastconv.0.bias"], stride=2, padding=1)
        x = F.interpolate(F.pixel_shuffle(x, 2), scale_factor=scale, mode="bilinear", align_corners=False)
        return x[:, :4] * scale, x[:, 4:5], x[:, 5:]

    scales = [2.0 ** (len(widths) - 1 - k) for k in range(len(widths))]
    tmap = img0[:, :1] * 0 + t
    f0, f1 = head(img0), head(img1)
    flow, mask, feat = block(0, torch.cat((img0, img1, f0, f1, tmap), 1), None, scales[0])
    w0, w1 = published_warp(img0, flow[:, :2]), published_warp(img1, flow[:, 2:4])
    for k in range(1, len(widths)):
        wf0, wf1 = published_warp(f0, flow[:, :2]), published_warp(f1, flow[:, 2:4])
        fd, mask, feat = block(k, torch.cat((w0, w1, wf0, wf1, tmap, mask, feat), 1), flow, scales[k])
        flow = flow + fd
        w0, w1 = published_warp(img0, flow[:, :2]), published_warp(img1, flow[:, 2:4])
    m = torch.sigmoid(mask)
    return w0 * m + w1 * (1 - m)


def random_state(keys: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(shape, generator=g) * (0.03 if len(shape) == 4 else 0.1) for k, shape in keys.items()
    }


def test_v425_has_the_published_keys() -> None:
    model = IFNetInterpolator(INTERPOLATOR_CONFIGS["rife-v4.25"])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == published_keys(V425["widths"], V425["res"], V425["head"], V425["feat"])
    assert sum(p.numel() for p in model.parameters()) == 5_723_156  # "~5.7M" for v4.25


@pytest.fixture(scope="module")
def flownet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A v4.25-shaped flownet.pkl as the release saves it: DDP's ``module.`` prefix, plus an unused
    distillation block that its inference never runs."""
    state = random_state(published_keys(V425["widths"], V425["res"], V425["head"], V425["feat"]), 0)
    saved = {f"module.{k}": v for k, v in state.items()}
    saved["module.teacher.conv0.0.0.weight"] = torch.zeros(8, 8, 3, 3)
    path = tmp_path_factory.mktemp("rife") / "flownet.pkl"
    torch.save(saved, path)
    return path, state


def test_converter_loads_flownet_and_matches_the_published_forward(
    flownet: tuple[Path, dict[str, torch.Tensor]],
) -> None:
    path, state = flownet
    model = load_interpolator(path.parent)  # the release's train_log/ folder works as well as the file
    assert model.config.model_dump() == INTERPOLATOR_CONFIGS["rife-v4.25"].model_dump()
    g = torch.Generator().manual_seed(1)
    img0, img1 = torch.rand(1, 3, 64, 128, generator=g), torch.rand(1, 3, 64, 128, generator=g)
    with torch.no_grad():
        expected = published_forward(state, img0, img1, 0.3, V425["widths"], V425["res"])
        got = model(img0 * 2 - 1, img1 * 2 - 1, torch.full((1,), 0.3))
    assert torch.allclose((got + 1) / 2, expected, atol=1e-4)


def test_converter_refuses_foreign_files(tmp_path: Path) -> None:
    torch.save({"module.conv.weight": torch.zeros(1)}, tmp_path / "flownet.pkl")
    with pytest.raises(WeightsError, match="not an IFNet"):
        load_interpolator(tmp_path / "flownet.pkl")
    torch.save({"a": [1, 2]}, tmp_path / "list.pkl")
    with pytest.raises(WeightsError, match="state dict of tensors"):
        load_interpolator(tmp_path / "list.pkl")


def test_warp_moves_pixels_by_the_flow() -> None:
    """A flow of (+2, -1) everywhere samples each pixel 2 right and 1 up (edges clamped)."""
    x = torch.arange(6 * 8, dtype=torch.float32).view(1, 1, 6, 8)
    flow = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 6, 8)
    out = warp(x, flow)[0, 0]
    for y in range(6):
        for c in range(8):
            assert out[y, c].item() == pytest.approx(x[0, 0, max(y - 1, 0), min(c + 2, 7)].item(), abs=1e-4)


def keys_warp(x: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """(H, W) image sampled at p + flow(p) by Keys' cubic convolution (a = -0.75, the kernel of
    PyTorch's and OpenCV's bicubic), each of the 4 x 4 taps clamped to the image's edge."""
    h, w = x.shape

    def weights(d: np.ndarray) -> list[np.ndarray]:  # taps at -1, 0, 1, 2 for a fraction d in [0, 1)
        a = -0.75
        near = lambda u: ((a + 2) * u - (a + 3)) * u * u + 1  # noqa: E731  |u| <= 1
        far = lambda u: ((a * u - 5 * a) * u + 8 * a) * u - 4 * a  # noqa: E731  1 < |u| < 2
        return [far(d + 1), near(d), near(1 - d), far(2 - d)]

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    px, py = xs + flow[0], ys + flow[1]
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    wx, wy = weights(px - x0), weights(py - y0)
    out = np.zeros((h, w))
    for j in range(4):
        for i in range(4):
            tap = x[np.clip(y0 + j - 1, 0, h - 1), np.clip(x0 + i - 1, 0, w - 1)]
            out += wy[j] * wx[i] * tap
    return out


def test_bicubic_warp_is_keys_cubic_convolution() -> None:
    """warp(..., "bicubic") against a NumPy restatement of cubic convolution, on random sub-pixel and
    multi-pixel flows that reach past the edges."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 9, 11, generator=g, dtype=torch.float64)
    flow = (torch.rand(1, 2, 9, 11, generator=g, dtype=torch.float64) - 0.5) * 6
    expected = keys_warp(x[0, 0].numpy(), flow[0].numpy())
    np.testing.assert_allclose(warp(x, flow, "bicubic")[0, 0].numpy(), expected, atol=1e-9)


def test_final_warp_resamples_the_frame_by_the_final_flows() -> None:
    """final_warp: bicubic changes only the last resampling: the same weights give the same flows and
    mask, and the frame is the mask's mix of the inputs warped bicubically (NumPy reference) by them.
    On a frame moved by a fraction of a pixel that keeps detail bilinear blurs: nearer the truth."""
    torch.manual_seed(0)
    linear = IFNetInterpolator(INTERPOLATOR_CONFIGS["rife-tiny"]).double().eval()
    cubic = IFNetInterpolator(linear.config.replace(final_warp="bicubic")).double().eval()
    cubic.load_state_dict(linear.state_dict())
    g = torch.Generator().manual_seed(1)
    img0, img1 = torch.rand(2, 1, 3, 16, 16, generator=g, dtype=torch.float64)
    t = torch.tensor([0.5], dtype=torch.float64)
    with torch.no_grad():
        frame_l, flow_l, mask_l = linear.flows(img0, img1, t)
        frame_c, flow_c, mask_c = cubic.flows(img0, img1, t)
    assert torch.equal(flow_l, flow_c) and torch.equal(mask_l, mask_c) and not torch.equal(frame_l, frame_c)
    weight = torch.sigmoid(mask_c)[0, 0].numpy()
    for c in range(3):
        a = keys_warp(img0[0, c].numpy(), flow_c[0, :2].numpy())
        b = keys_warp(img1[0, c].numpy(), flow_c[0, 2:].numpy())
        np.testing.assert_allclose(frame_c[0, c].numpy(), weight * a + (1 - weight) * b, atol=1e-9)
    # Detail (a 4-pixel-period wave) moved 0.4 px between the frames: the middle frame is it moved 0.2 px
    # from each side. Warped there by the true flows, bilinear resampling blurs it below the plain
    # cross-fade of the two frames (why a bilinear interpolator barely beats blending on small frames);
    # bicubic resampling draws it far nearer the truth than either.
    xs = torch.arange(24, dtype=torch.float64).expand(1, 3, 16, 24)
    wave = lambda shift: 0.5 + 0.4 * torch.sin((xs + shift) * torch.pi / 2)  # noqa: E731
    flow = lambda d: torch.tensor([d, 0.0], dtype=torch.float64).view(1, 2, 1, 1).expand(1, 2, 16, 24)  # noqa: E731
    inner, truth = (..., slice(3, -3)), wave(0.2)[..., 3:-3]
    db = {"blend": psnr(((wave(0.0) + wave(0.4)) / 2)[inner], truth, data_range=1.0)}
    for mode in ("bilinear", "bicubic"):
        middle = (warp(wave(0.0), flow(0.2), mode) + warp(wave(0.4), flow(-0.2), mode)) / 2
        db[mode] = psnr(middle[inner], truth, data_range=1.0)
    assert db["bilinear"] + 5 < db["blend"] < db["bicubic"] - 5, db


def test_output_is_a_convex_mix_of_the_inputs() -> None:
    """Identical inputs come back unchanged whatever the (random) flows: warping a constant is a constant."""
    torch.manual_seed(0)
    model = IFNetInterpolator(INTERPOLATOR_CONFIGS["rife-tiny"]).eval()
    grey = torch.full((1, 3, 20, 28), 0.25)
    with torch.no_grad():
        assert torch.allclose(model(grey, grey, torch.tensor([0.5])), grey, atol=1e-6)


@pytest.mark.parametrize("name", sorted(INTERPOLATOR_CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_preset_shapes_and_dtypes(name: str, dtype: torch.dtype) -> None:
    model = IFNetInterpolator(INTERPOLATOR_CONFIGS[name]).to(dtype).eval()
    video = (torch.rand(1, 3, 2, 16, 24) * 2 - 1).to(dtype)  # not a multiple of any pad_multiple
    with torch.no_grad():
        for factor in model.config.factors:
            y = model.interpolate(video, factor)
            assert y.shape == (1, 3, factor + 1, 16, 24) and y.dtype == dtype
            assert torch.equal(y[:, :, ::factor], video)  # the input frames are kept as they are


def test_x4_is_one_call_per_time() -> None:
    torch.manual_seed(0)
    model = IFNetInterpolator(INTERPOLATOR_CONFIGS["rife-tiny"]).eval()
    video = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model.interpolate(video, 4)
        for t, k in ((0.25, 1), (0.5, 2), (0.75, 3)):
            direct = model(video[:, :, 1], video[:, :, 2], torch.full((2,), t))
            assert torch.allclose(out[:, :, 4 + k], direct, atol=1e-6)


def test_recursive_x4_is_x2_of_x2_at_the_middle_only() -> None:
    """A recursive model makes x4 from t = 0.5 calls only: first between the kept frames, then between
    each kept frame and the new middle one; the kept frames stay, and progress runs once to the end."""
    torch.manual_seed(0)
    model = IFNetInterpolator(INTERPOLATOR_CONFIGS["rife-tiny"].replace(recursive=True)).eval()
    video = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    times: list[float] = []

    def net(frame0: torch.Tensor, frame1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        times.extend(t.tolist())
        return model(frame0, frame1, t)

    seen: list[tuple[int, int]] = []
    with torch.no_grad():
        out = model.interpolate(video, 4, net=net, progress=lambda done, total: seen.append((done, total)))
        half = torch.full((2,), 0.5)
        middle = model(video[:, :, 1], video[:, :, 2], half)
        assert out.shape == (2, 3, 9, 16, 16) and torch.equal(out[:, :, ::4], video)
        assert torch.allclose(out[:, :, 6], middle, atol=1e-6)
        assert torch.allclose(out[:, :, 5], model(video[:, :, 1], middle, half), atol=1e-5)
        assert torch.allclose(out[:, :, 7], model(middle, video[:, :, 2], half), atol=1e-5)
    assert set(times) == {0.5} and len(times) == 2 * 3 * 2  # 3 new frames per pair, 2 pairs, batch 2
    assert seen[-1] == (12, 12) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    with pytest.raises(ValueError, match="powers of two only"):
        INTERPOLATOR_CONFIGS["rife-tiny"].replace(recursive=True, factors=(2, 3))


def test_factor_outside_the_models_set_is_refused() -> None:
    model = IFNetInterpolator(INTERPOLATOR_CONFIGS["rife-tiny"])
    with pytest.raises(ShapeError, match=r"factor 3: this interpolator makes x2 or x4"):
        model.interpolate(torch.zeros(1, 3, 3, 8, 8), 3)
    with pytest.raises(ShapeError, match=r"T >= 2"):
        model.interpolate(torch.zeros(1, 3, 1, 8, 8), 2)


def test_tiled_matches_untiled_on_smooth_motion() -> None:
    """Tiles see zero padding at their borders, which moves the coarse flow a little; on a smooth moving
    pattern with tiles of 48 px and 16 px of overlap the result stays within 40 dB of the untiled one."""
    torch.manual_seed(0)
    model = IFNetInterpolator(INTERPOLATOR_CONFIGS["rife-tiny"]).eval()
    y, x = torch.meshgrid(torch.arange(80.0), torch.arange(96.0), indexing="ij")
    frames = [torch.sin((x + 2 * t) / 9) * torch.cos((y - t) / 11) for t in range(3)]
    video = torch.stack(frames)[None, None].expand(1, 3, 3, 80, 96) * 0.8
    with torch.no_grad():
        whole = model.interpolate(video, 2)
        tiled = model.interpolate(video, 2, InterpolateTiling(size=48, overlap=16, frames=1))
    assert psnr(tiled, whole) > 40


def test_ensemble_is_the_mean_over_the_pairs_mirror_images() -> None:
    """Each new frame of the ensemble is the mean of the network's frames for the pair as is, mirrored
    left-right, upside down and both, each mirrored back (made here call by call, mirroring by index);
    so, unlike the network's own, its frames mirror with the input. Recursive x4, an engine's ``net``,
    tiles and bf16 take the same path."""
    torch.manual_seed(0)
    model = IFNetInterpolator(INTERPOLATOR_CONFIGS["rife-tiny"].replace(recursive=True)).eval()
    video = torch.rand(1, 3, 3, 16, 24) * 2 - 1  # multiples of the model's 8: no padding to mirror
    rows, cols = torch.arange(15, -1, -1), torch.arange(23, -1, -1)
    mirrors = [
        lambda v: v,
        lambda v: v[..., cols],
        lambda v: v[..., rows, :],
        lambda v: v[..., rows, :][..., cols],
    ]
    with torch.no_grad():
        ens = model.interpolate(video, 2, ensemble=True)
        a, b, half = video[:, :, 0], video[:, :, 1], torch.full((1,), 0.5)
        expected = sum(m(model(m(a), m(b), half)) for m in mirrors) / 4
        torch.testing.assert_close(ens[:, :, 1], expected, atol=1e-6, rtol=0)
        assert torch.equal(ens[:, :, ::2], video)
        plain = model.interpolate(video, 2)
        assert not torch.allclose(ens, plain, atol=1e-3)
        for m in mirrors[1:]:
            torch.testing.assert_close(
                model.interpolate(m(video), 2, ensemble=True), m(ens), atol=1e-5, rtol=0
            )
        assert not torch.allclose(model.interpolate(mirrors[1](video), 2), mirrors[1](plain), atol=1e-3)

        calls: list[int] = []

        def net(frame0: torch.Tensor, frame1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            calls.append(frame0.shape[0])
            return model(frame0, frame1, t)

        x4 = model.interpolate(video, 4, net=net, ensemble=True)
        assert calls == [2] * 4 + [4] * 4  # per pass, the pass's new frames at once, once per mirror
        torch.testing.assert_close(x4[:, :, ::2], ens, atol=1e-6, rtol=0)
        half_precision = model.to(torch.bfloat16).interpolate(video.bfloat16(), 2, ensemble=True)
        assert half_precision.dtype == torch.bfloat16 and (half_precision.float() - ens).abs().max() < 0.05
    y, x = torch.meshgrid(torch.arange(80.0), torch.arange(96.0), indexing="ij")
    wave = torch.stack([torch.sin((x + 2 * t) / 9) * torch.cos((y - t) / 11) for t in range(3)])
    wave = wave[None, None].expand(1, 3, 3, 80, 96) * 0.8
    with torch.no_grad():
        whole = model.float().interpolate(wave, 2, ensemble=True)
        tiled = model.interpolate(wave, 2, InterpolateTiling(size=48, overlap=16, frames=1), ensemble=True)
    assert psnr(tiled, whole) > 40


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = IFNetInterpolator(INTERPOLATOR_CONFIGS["rife-tiny"]).eval()
    loaded = load_interpolator(model.save_pretrained(tmp_path / "rife"))
    assert loaded.config == model.config
    a, b = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(a, b, torch.tensor([0.5])), model(a, b, torch.tensor([0.5])))
