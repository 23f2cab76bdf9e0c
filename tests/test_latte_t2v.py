"""LatteT2V: parity with diffusers' LatteTransformer3DModel, and the roadmap options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import LatteTransformer3DModel

from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V, LatteT2VConfig
from osp.errors import ConfigError, ShapeError

TINY = LATTE_T2V_CONFIGS["latte-t2v-tiny"]


def diffusers_tiny(activation: str = "gelu-approximate", seed: int = 0) -> LatteTransformer3DModel:
    torch.manual_seed(seed)
    model = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=32, attention_bias=True, sample_size=8, patch_size=2, activation_fn=activation,
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        caption_channels=24, video_length=3,
    )  # fmt: skip
    for param in model.parameters():  # no zero-initialised shortcuts: every weight matters
        param.data.normal_(0, 0.2)
    return model.eval()


def diffusers_latte1(num_layers: int, sample_size: int, video_length: int) -> LatteTransformer3DModel:
    """diffusers' Latte-1 transformer at its released widths (16 heads of 72, 4096-wide captions)."""
    return LatteTransformer3DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=num_layers,
        cross_attention_dim=1152, attention_bias=True, sample_size=sample_size, patch_size=2,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096, video_length=video_length,
    )  # fmt: skip


def tiny(seed: int = 0, **changes: object) -> LatteT2V:
    torch.manual_seed(seed)
    model = LatteT2V(TINY.replace(**changes) if changes else TINY)
    for param in model.parameters():
        param.data.normal_(0, 0.2)
    return model.eval()


def inputs(
    batch: int = 2, frames: int = 3, size: tuple[int, int] = (8, 8), seed: int = 1
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, *size, generator=g)
    t = torch.tensor([10.0, 700.0][:batch])
    context = torch.randn(batch, 5, 24, generator=g)
    return x, t, context


@pytest.mark.parametrize("activation", ["gelu-approximate", "geglu"])
def test_parity_with_diffusers(activation: str) -> None:
    reference = diffusers_tiny(activation)
    ours = LatteT2V.from_state_dict(TINY.replace(activation_fn=activation), reference.state_dict())
    x, t, context = inputs()
    with torch.no_grad():
        expected = reference(x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
        got = ours(x, t, context)
    assert got.shape == (2, 8, 3, 8, 8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_parity_without_temporal_blocks_is_not_claimed_but_single_frame_matches() -> None:
    """An image (1 latent frame): diffusers skips the temporal position, and so do we."""
    reference = diffusers_tiny()
    ours = LatteT2V.from_state_dict(TINY, reference.state_dict())
    x, t, context = inputs(frames=1)
    with torch.no_grad():
        expected = reference(x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
        torch.testing.assert_close(ours(x, t, context), expected, rtol=1e-5, atol=1e-5)


def test_more_heads_than_a_cuda_grid_holds_run_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporal attention folds each token's frames into the heads (N*H of them, 32 here); past the
    limit of a CUDA grid axis they run in chunks, with diffusers' outputs still."""
    import osp.layers.dit_blocks

    monkeypatch.setattr(osp.layers.dit_blocks, "MAX_GRID_HEADS", 5)
    reference = diffusers_tiny()
    ours = LatteT2V.from_state_dict(TINY, reference.state_dict())
    x, t, context = inputs()
    with torch.no_grad():
        expected = reference(x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
        torch.testing.assert_close(ours(x, t, context), expected, rtol=1e-5, atol=1e-5)


def test_exported_layout_gives_the_same_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exported graphs attend over frames with the tokens moved into the batch (a static head count):
    diffusers' outputs still, and a padded clip's temporal key mask still keeps its padding out (the
    clip alone is the reference there: diffusers' temporal positions only take video_length frames)."""
    import osp.layers.dit_blocks

    monkeypatch.setattr(osp.layers.dit_blocks, "_exporting", lambda: True)
    reference = diffusers_tiny()
    ours = LatteT2V.from_state_dict(TINY, reference.state_dict())
    x, t, context = inputs()
    small = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    padded = torch.cat([small, torch.zeros(1, 4, 1, 8, 8)], dim=2).expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        expected = reference(x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
        torch.testing.assert_close(ours(x, t, context), expected, rtol=1e-5, atol=1e-5)
        clip = ours(small, t[:1], context[:1])
        out = ours(padded, t, context, latent_sizes=[[2, 8, 8], [3, 8, 8]])
    torch.testing.assert_close(out[:1, :, :2], clip, rtol=1e-4, atol=1e-5)


def test_state_dict_keys_are_diffusers_keys() -> None:
    assert set(tiny().state_dict()) == set(diffusers_tiny().state_dict())


def test_latte1_preset_matches_diffusers_parameter_count() -> None:
    with torch.device("meta"):
        ours = LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-xl/2-latte1"])
        reference = diffusers_latte1(num_layers=28, sample_size=64, video_length=16)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    assert set(ours.state_dict()) == set(reference.state_dict())


def test_latte1_widths_match_diffusers_outputs() -> None:
    """The released XL widths (16 heads of 72, 4096-wide captions), two blocks: diffusers' outputs.
    Open-Sora-Plan's latte-t2v-xl/2 differs from it only in its temporal position table (scale 3)."""
    cfg = LATTE_T2V_CONFIGS["latte-t2v-xl/2-latte1"].replace(num_layers=2, video_length=5, sample_size=8)
    torch.manual_seed(0)
    reference = diffusers_latte1(num_layers=2, sample_size=8, video_length=5).eval()
    ours = LatteT2V.from_state_dict(cfg, reference.state_dict()).eval()
    g = torch.Generator().manual_seed(1)
    x, t, context = (
        torch.randn(2, 4, 5, 8, 8, generator=g),
        torch.tensor([10.0, 700.0]),
        torch.randn(2, 7, 4096, generator=g),
    )
    with torch.no_grad():
        expected = reference(x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
        torch.testing.assert_close(ours(x, t, context), expected, rtol=1e-4, atol=1e-4)
        scaled = LatteT2V.from_state_dict(
            cfg.replace(temporal_interpolation_scale=3.0), reference.state_dict()
        )
        assert (scaled.eval()(x, t, context) - expected).abs().max() > 0.01


def test_caption_mask_equals_dropping_the_padding() -> None:
    model = tiny()
    x, t, context = inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        masked = model(x, t, context, mask)
        short = model(x[:1], t[:1], context[:1, :3])
    torch.testing.assert_close(masked[:1], short, rtol=1e-5, atol=1e-5)


def test_dynamic_masks_padding_does_not_change_real_outputs() -> None:
    """FiT-style: a 2x4x6 latent clip padded into a 3x8x8 batch gives the same outputs as alone."""
    model = tiny()
    g = torch.Generator().manual_seed(3)
    small = torch.randn(1, 4, 2, 4, 6, generator=g)
    big = torch.randn(1, 4, 3, 8, 8, generator=g)
    batch = torch.zeros(2, 4, 3, 8, 8)
    batch[0, :, :2, :4, :6] = small[0]
    batch[1] = big[0]
    t = torch.tensor([300.0, 300.0])
    context = torch.randn(2, 5, 24, generator=g)
    with torch.no_grad():
        padded = model(batch, t, context, latent_sizes=[[2, 4, 6], [3, 8, 8]])
        alone = model(small, t[:1], context[:1])
        full = model(big, t[1:], context[1:])
    torch.testing.assert_close(padded[0, :, :2, :4, :6], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded[1], full[0], rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(padded[0, :, 2:]) == 0 and torch.count_nonzero(padded[0, :, :, 4:]) == 0


def test_rope_runs_at_an_unseen_size_and_changes_outputs() -> None:
    model = tiny(rope=True)
    plain = tiny()
    x, t, context = inputs(size=(12, 16))  # trained on 8x8 latents (4x4 tokens), run at 6x8 tokens
    with torch.no_grad():
        out = model(x, t, context)
        assert out.shape == (2, 8, 3, 12, 16) and torch.isfinite(out).all()
        assert not torch.allclose(out, plain(x, t, context))


def test_rope_interpolates_positions_beyond_the_training_grid() -> None:
    rope = tiny(rope=True).rope
    assert rope is not None
    seen = rope.angles(4, 4, torch.device("cpu"))
    bigger = rope.angles(8, 8, torch.device("cpu"))
    # Position interpolation keeps every angle of the 8x8 grid within the range trained on 4x4.
    assert bigger.abs().max() <= seen.abs().max() + 1e-6


def test_kv_compression_shrinks_keys_and_runs() -> None:
    model = tiny(kv_compress=2)
    block = model.transformer_blocks[0].attn1
    tokens = torch.randn(3, 4 * 6, 32)
    keys, valid = block.compress(tokens, (4, 6), None)
    assert keys.shape == (3, 2 * 3, 32) and valid is None  # 4x fewer keys: 4x less attention work
    x, t, context = inputs(size=(10, 8))  # 5x4 tokens: odd rows are padded and masked
    with torch.no_grad():
        assert model(x, t, context).shape == (2, 8, 3, 10, 8)
    assert "transformer_blocks.0.attn1.kv_compress.weight" in model.state_dict()


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    x, t, context = inputs()
    grads = []
    for flag in (False, True):
        model = tiny(gradient_checkpointing=flag).train()
        model(x, t, context).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_training_step_lowers_the_loss() -> None:
    model = tiny().train()
    x, t, context = inputs()
    target = torch.randn(2, 8, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = (model(x, t, context) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = tiny()
    loaded = LatteT2V.from_pretrained(model.save_pretrained(tmp_path / "latte"))
    x, t, context = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, context), loaded(x, t, context))


def test_bad_inputs() -> None:
    model = tiny()
    x, t, context = inputs()
    with pytest.raises(ShapeError, match="multiples of patch_size"):
        model(x[..., :7], t, context)
    with pytest.raises(ShapeError, match="encoder_hidden_states"):
        model(x, t, context[..., :10])
    with pytest.raises(ShapeError, match=r"latents must be \(B, 4"):
        model(x[:, :3], t, context)
    with pytest.raises(ConfigError, match="cross_attention_dim"):
        LatteT2VConfig.from_dict({"cross_attention_dim": 100})


def test_diffusers_folder_loads(tmp_path: Path) -> None:
    from osp.dit.latte_t2v import load_latte_t2v

    reference = diffusers_tiny()
    reference.save_pretrained(tmp_path / "transformer")
    ours = load_latte_t2v(tmp_path / "transformer")
    x, t, context = inputs()
    with torch.no_grad():
        expected = reference(x, timestep=t, encoder_hidden_states=context, return_dict=False)[0]
        torch.testing.assert_close(ours(x, t, context), expected, rtol=1e-5, atol=1e-5)
    # An osp folder of the same model loads through the same function.
    assert torch.equal(
        load_latte_t2v(ours.save_pretrained(tmp_path / "osp")).proj_out.weight, ours.proj_out.weight
    )


def test_open_sora_plan_config_translates() -> None:
    from osp.io.convert import latte_t2v_config

    release = {
        "_class_name": "LatteT2V", "_diffusers_version": "0.26.3", "activation_fn": "gelu-approximate",
        "attention_bias": True, "attention_head_dim": 72, "attention_mode": "xformers", "attention_type": "default",
        "caption_channels": 4096, "cross_attention_dim": 1152, "double_self_attention": False, "dropout": 0.0,
        "in_channels": 4, "norm_elementwise_affine": False, "norm_eps": 1e-06, "norm_num_groups": 32,
        "norm_type": "ada_norm_single", "num_attention_heads": 16, "num_embeds_ada_norm": 1000, "num_layers": 28,
        "num_vector_embeds": None, "only_cross_attention": False, "out_channels": 8, "patch_size": 2,
        "patch_size_t": 1, "sample_size": [64, 64], "upcast_attention": False, "use_linear_projection": False,
        "video_length": 17,
    }  # fmt: skip
    config = LatteT2VConfig.from_dict(latte_t2v_config(release))
    assert config == LATTE_T2V_CONFIGS["latte-t2v-xl/2"]
    with pytest.raises(ConfigError, match="norm_type"):
        latte_t2v_config({**release, "norm_type": "ada_norm_zero"})


def test_joint_images_match_diffusers_video_and_images_apart() -> None:
    """Joint image-video (Open-Sora-Plan v1.0 use_image_num): the video frames come out as diffusers
    gives the clip alone, each image as diffusers gives it alone with temporal attention off."""
    reference = diffusers_tiny()
    ours = LatteT2V.from_state_dict(TINY, reference.state_dict())
    g = torch.Generator().manual_seed(5)
    video, images = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(2, 4, 2, 8, 8, generator=g)
    captions = torch.randn(2, 3, 5, 24, generator=g)  # (B, 1 + n, L, D): the clip's, then each image's
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[1, 2, 3:] = False  # the second sample's second image has a 3-token caption
    t = torch.tensor([10.0, 700.0])
    with torch.no_grad():
        joint = ours(torch.cat([video, images], dim=2), t, captions, mask, num_images=2)
        expected_video = reference(
            video, timestep=t, encoder_hidden_states=captions[:, 0], return_dict=False
        )[0]
        torch.testing.assert_close(joint[:, :, :3], expected_video, rtol=1e-5, atol=1e-5)
        for i in range(2):
            expected = reference(
                images[:, :, i : i + 1], timestep=t, encoder_hidden_states=captions[:, 1 + i],
                encoder_attention_mask=mask[:, 1 + i], enable_temporal_attentions=False, return_dict=False,
            )[0]  # fmt: skip
            torch.testing.assert_close(joint[:, :, 3 + i : 4 + i], expected, rtol=1e-5, atol=1e-5)


def test_joint_images_with_dynamic_masks_keep_padding_out() -> None:
    """A padded clip with images: its real outputs and its images' outputs are those of the unpadded clip."""
    model = tiny()
    g = torch.Generator().manual_seed(6)
    clip, image = torch.randn(1, 4, 2, 4, 6, generator=g), torch.randn(1, 4, 1, 4, 6, generator=g)
    padded = torch.zeros(1, 4, 4, 8, 8)
    padded[:, :, :2, :4, :6], padded[:, :, 3:, :4, :6] = clip, image
    captions = torch.randn(1, 2, 5, 24, generator=g)
    t = torch.tensor([300.0])
    with torch.no_grad():
        out = model(padded, t, captions, latent_sizes=[[2, 4, 6]], num_images=1)
        alone = model(torch.cat([clip, image], dim=2), t, captions, num_images=1)
    torch.testing.assert_close(out[:, :, :2, :4, :6], alone[:, :, :2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out[:, :, 3:, :4, :6], alone[:, :, 2:], rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(out[:, :, 2]) == 0  # the padded video frame


def test_joint_images_bad_inputs() -> None:
    model = tiny()
    x, t, context = inputs()
    with pytest.raises(ShapeError, match=r"1\+num_images=2"):
        model(x, t, context, num_images=1)  # (B, L, D) captions, but images need one caption each
    with pytest.raises(ShapeError, match="num_images must be in"):
        model(x, t, context[:, None].expand(-1, 4, -1, -1), num_images=3)  # no video frame left
    with pytest.raises(ShapeError, match="encoder_attention_mask"):
        model(x, t, context, torch.ones(2, 4))
