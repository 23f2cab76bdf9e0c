"""SRVGGUpscaler: the released Real-ESRGAN compact architecture (keys, shapes, numerics against a plain
restatement of the published forward), the converter, temporal context, tiling, presets, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from osp.errors import ConfigError, ShapeError, WeightsError
from osp.metrics import psnr
from osp.upscale import UPSCALER_CONFIGS, SRVGGUpscaler, UpscaleTiling, load_upscaler


def published_keys(num_feat: int, num_conv: int, scale: int, in_channels: int = 3) -> dict[str, tuple]:
    """The state dict of Real-ESRGAN's ``SRVGGNetCompact(num_in_ch, 3, num_feat, num_conv, upscale,
    act_type='prelu')``, from its published layout: body = [conv, prelu, (conv, prelu) * num_conv, conv]."""
    keys: dict[str, tuple] = {}
    for i in range(num_conv + 1):
        cin = in_channels if i == 0 else num_feat
        keys[f"body.{2 * i}.weight"] = (num_feat, cin, 3, 3)
        keys[f"body.{2 * i}.bias"] = (num_feat,)
        keys[f"body.{2 * i + 1}.weight"] = (num_feat,)  # PReLU, one slope per channel
    last = 2 * (num_conv + 1)
    keys[f"body.{last}.weight"] = (3 * scale * scale, num_feat, 3, 3)
    keys[f"body.{last}.bias"] = (3 * scale * scale,)
    return keys


def published_forward(
    state: dict[str, torch.Tensor], x: torch.Tensor, num_conv: int, scale: int
) -> torch.Tensor:
    """The published forward in plain torch: [0, 1] images in, [0, 1] images out."""
    out = x
    for i in range(num_conv + 1):
        out = F.conv2d(out, state[f"body.{2 * i}.weight"], state[f"body.{2 * i}.bias"], padding=1)
        out = F.prelu(out, state[f"body.{2 * i + 1}.weight"])
    last = 2 * (num_conv + 1)
    out = F.conv2d(out, state[f"body.{last}.weight"], state[f"body.{last}.bias"], padding=1)
    return F.pixel_shuffle(out, scale) + F.interpolate(x, scale_factor=scale, mode="nearest")


def random_state(keys: dict[str, tuple], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(shape, generator=g) * (0.05 if len(shape) == 4 else 0.2) for k, shape in keys.items()
    }


def test_general_x4v3_has_the_published_keys() -> None:
    model = SRVGGUpscaler(UPSCALER_CONFIGS["realesr-general-x4v3"])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == published_keys(64, 32, 4)
    assert sum(p.numel() for p in model.parameters()) == 1_213_296  # "~1.2M" in the release notes


def test_converter_loads_params_ema_and_matches_the_published_forward(tmp_path: Path) -> None:
    keys = published_keys(16, 3, 4)
    ema, plain = random_state(keys, 0), random_state(keys, 1)
    path = tmp_path / "realesr-small-x4.pth"
    torch.save({"params": plain, "params_ema": ema}, path)
    model = load_upscaler(path)
    assert (model.config.scale, model.config.num_feat, model.config.num_conv) == (4, 16, 3)
    assert model.config.temporal_radius == 0 and not model.training
    x = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        got = model(x[:, :, None] * 2 - 1)[:, :, 0]  # (B, 3, T=1, h, w) in [-1, 1]
    expected = published_forward(ema, x, 3, 4) * 2 - 1
    assert torch.allclose(got, expected, atol=1e-5)
    torch.save({"params": plain}, path)  # without EMA weights, "params" is the model
    assert torch.equal(load_upscaler(path).body[0].weight, plain["body.0.weight"])


def test_converter_refuses_foreign_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"params": {"conv_first.weight": torch.zeros(4, 3, 3, 3)}}, bad)
    with pytest.raises(WeightsError, match="not an SRVGGNetCompact parameter"):
        load_upscaler(bad)
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="cannot be opened safely"):
        load_upscaler(tmp_path / "junk.pth")
    with pytest.raises(WeightsError, match="neither"):
        load_upscaler(tmp_path / "missing")


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_base_is_the_published_forward_over_bicubic_upsampling(scale: int) -> None:
    """base: bicubic swaps only the residual's base, the nearest up-sampling, for PyTorch's bicubic
    (``F.interpolate``, edges clamped), and keeps the release's state dict: same keys, same shapes."""
    config = UPSCALER_CONFIGS["srvgg-tiny-x4"].replace(scale=scale, temporal_radius=0, base="bicubic")
    state = random_state(published_keys(config.num_feat, config.num_conv, scale), seed=scale)
    model = SRVGGUpscaler.from_state_dict(config, state).eval()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in state.items()
    }
    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(1))
    nearest = F.interpolate(x, scale_factor=scale, mode="nearest")
    bicubic = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    expected = published_forward(state, x, config.num_conv, scale) - nearest + bicubic
    with torch.no_grad():
        torch.testing.assert_close(model.forward_frames(x), expected, atol=1e-5, rtol=0)
        half = model.to(torch.bfloat16).forward_frames(x.bfloat16()).float()
    assert (half - expected).abs().max() < 0.05


def test_temporal_window_repeats_the_edge_frames() -> None:
    """With radius 1 the network sees (t-1, t, t+1); frame 0 sees (0, 0, 1) and the last (T-2, T-1, T-1)."""
    torch.manual_seed(0)
    model = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x2"]).eval()
    video = torch.rand(1, 3, 4, 6, 6) * 2 - 1
    with torch.no_grad():
        out = model(video)
        x = (video[0] + 1) / 2  # (3, T, h, w)
        for t, (a, b, c) in enumerate([(0, 0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 3)]):
            window = torch.cat([x[:, a], x[:, b], x[:, c]])[None]  # (1, 9, h, w)
            assert torch.allclose(out[0, :, t], model.forward_frames(window)[0] * 2 - 1, atol=1e-6)
    # A frame's output changes when a neighbour changes: the context is really used.
    changed = video.clone()
    changed[:, :, 2] = -changed[:, :, 2]
    with torch.no_grad():
        assert not torch.allclose(model(changed)[:, :, 1], out[:, :, 1])
        assert torch.equal(model(changed)[:, :, 0], out[:, :, 0])


@pytest.mark.parametrize("name", sorted(UPSCALER_CONFIGS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_preset_shapes_and_dtypes(name: str, dtype: torch.dtype) -> None:
    config = UPSCALER_CONFIGS[name]
    model = SRVGGUpscaler(config).to(dtype).eval()
    video = (torch.rand(1, 3, 3, 8, 6) * 2 - 1).to(dtype)
    with torch.no_grad():
        for scale in config.scales:
            y = model.upscale(video, scale)
            assert y.shape == (1, 3, 3, 8 * scale, 6 * scale) and y.dtype == dtype


def test_bf16_follows_fp32() -> None:
    torch.manual_seed(0)
    model = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-demo-x4"]).eval()
    video = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        full = model(video)
        half = model.to(torch.bfloat16)(video.bfloat16()).float()
    assert (half - full).abs().max() < 0.05 * full.abs().max()


def test_scale_outside_the_models_set_is_refused() -> None:
    model = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x4"])
    assert model.config.scales == (2, 4)
    with pytest.raises(ShapeError, match=r"scale 3: this upscaler makes x2 or x4"):
        model.upscale(torch.zeros(1, 3, 1, 8, 8), 3)
    with pytest.raises(ShapeError, match=r"\(B, 3, T, H, W\)"):
        model.upscale(torch.zeros(1, 3, 8, 8))


def test_tiled_matches_untiled() -> None:
    """Time chunks are exact (a frame depends on its window only); space tiles cross-fade, so they are
    close: at an overlap of 2x the receptive radius (4 convolutions -> 4 px) the seams are within 50 dB."""
    torch.manual_seed(0)
    model = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x4"]).eval()
    video = torch.rand(1, 3, 7, 40, 36) * 2 - 1
    with torch.no_grad():
        whole = model(video)
        in_time = model.upscale(video, tiling=UpscaleTiling(size=64, overlap=0, frames=3))
        tiled = model.upscale(video, tiling=UpscaleTiling(size=16, overlap=8, frames=3))
    assert torch.allclose(in_time, whole, atol=1e-5)
    assert psnr(tiled, whole, data_range=2.0) > 50


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x4"]).eval()
    folder = model.save_pretrained(tmp_path / "up", dtype=torch.float16)
    loaded = load_upscaler(folder)
    assert loaded.config == model.config
    video = torch.rand(1, 3, 2, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded(video), model.half().float()(video), atol=1e-5)


@pytest.mark.parametrize("act_type", ["prelu", "relu"])
def test_deepened_computes_what_it_computed(act_type: str) -> None:
    """Identity layers between the trained ones: the deeper network's output equals the shallower
    one's, its trained layers are kept, and the new ones are there to train."""
    torch.manual_seed(0)
    model = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x4"].replace(act_type=act_type)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # no slope or bias left at its initial value
    deeper = model.deepened(5).eval()
    assert deeper.config.num_conv == 5 and len(deeper.body) == len(model.body) + 6
    assert sum(p.numel() for p in deeper.parameters()) > sum(p.numel() for p in model.parameters())
    video = torch.rand(1, 3, 4, 12, 10) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(deeper(video), model(video), atol=1e-6, rtol=1e-5)
        deeper.body[4].weight.add_(0.05)  # an added layer now changes the output
        assert not torch.allclose(deeper(video), model(video), atol=1e-3)
    with pytest.raises(ShapeError, match=r"num_conv: a network is only deepened"):
        model.deepened(1)
    leaky = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x4"].replace(act_type="leakyrelu"))
    with pytest.raises(ShapeError, match="leaky-ReLU"):
        leaky.deepened(4)


@pytest.mark.parametrize("act_type", ["prelu", "relu", "leakyrelu"])
def test_widened_computes_what_it_computed(act_type: str) -> None:
    """Net2Net's wider network: every hidden layer gains copied channels whose outgoing weights are
    shared out, so the output is the narrower network's; with noise the copies part a little."""
    torch.manual_seed(0)
    model = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x4"].replace(act_type=act_type)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    wider = model.widened(13).eval()
    assert wider.config.num_feat == 13 and wider.body[0].weight.shape[0] == 13
    assert wider.body[-1].weight.shape == (48, 13, 3, 3)  # 3 * 4 * 4 output channels, as before
    video = torch.rand(1, 3, 4, 12, 10) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(wider(video), model(video), atol=1e-5, rtol=1e-5)
        noisy = model.widened(13, noise=0.01).eval()(video)
        assert 0 < (noisy - model(video)).abs().max() < 0.05
    with pytest.raises(ShapeError, match=r"num_feat: a network is only widened"):
        model.widened(4)


def test_ensemble_is_equivariant_to_flips_and_transposes() -> None:
    """The self-ensemble averages the 8 symmetries of the square, so (unlike the network itself) its
    output flips and transposes with its input; tiled, it stays within the tiling's 50 dB; the progress
    it reports runs once from 0 to the end over the 8 passes."""
    torch.manual_seed(0)
    model = SRVGGUpscaler(UPSCALER_CONFIGS["srvgg-tiny-x4"]).eval()
    video = torch.rand(1, 3, 3, 12, 10) * 2 - 1
    turns = [lambda v: v.flip(-1), lambda v: v.flip(-2), lambda v: v.transpose(-1, -2)]
    with torch.no_grad():
        plain, ens = model.upscale(video), model.upscale(video, ensemble=True)
        assert ens.shape == plain.shape and not torch.allclose(ens, plain, atol=1e-3)
        for turn in turns:
            torch.testing.assert_close(
                model.upscale(turn(video), ensemble=True), turn(ens), atol=1e-5, rtol=0
            )
        assert not torch.allclose(model.upscale(video.flip(-1)), plain.flip(-1), atol=1e-3)
        seen: list[tuple[int, int]] = []
        tiled = model.upscale(video, tiling=UpscaleTiling(size=8, overlap=4), ensemble=True,
                              progress=lambda done, total: seen.append((done, total)))  # fmt: skip
        assert psnr(tiled, ens, data_range=2.0) > 50
        assert seen[-1][0] == seen[-1][1] and len({t for _, t in seen}) == 1
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        half = model.to(torch.bfloat16).upscale(video.bfloat16(), ensemble=True)
        assert half.dtype == torch.bfloat16 and (half.float() - ens).abs().max() < 0.05


def test_blended_is_the_published_forward_of_the_mixed_weights() -> None:
    """Real-ESRGAN's denoise strength: every parameter is (1 - w) * a + w * b, so the blend at w runs the
    published forward of those weights; 0 and 1 give back the two networks; only like networks blend."""
    config = UPSCALER_CONFIGS["srvgg-tiny-x4"].replace(temporal_radius=0)
    keys = published_keys(config.num_feat, config.num_conv, 4)
    a, b = random_state(keys, 1), random_state(keys, 2)
    nets = []
    for state in (a, b):
        net = SRVGGUpscaler(config).eval()
        net.load_state_dict(state)
        nets.append(net)
    x = torch.rand(2, 3, 10, 12)
    with torch.no_grad():
        for w in (0.0, 0.3, 1.0):
            mixed = {k: (1 - w) * a[k] + w * b[k] for k in keys}
            torch.testing.assert_close(
                nets[0].blended(nets[1], w).forward_frames(x), published_forward(mixed, x, config.num_conv, 4),
                atol=1e-5, rtol=1e-5,
            )  # fmt: skip
    other = SRVGGUpscaler(config.replace(num_feat=config.num_feat + 1))
    with pytest.raises(WeightsError, match="only fine-tunes of one network blend"):
        nets[0].blended(other, 0.5)
    with pytest.raises(ConfigError, match=r"denoise: 1.5 is outside \[0, 1\]"):
        nets[0].blended(nets[1], 1.5)
