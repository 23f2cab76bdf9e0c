"""DiT / SiT: parity with diffusers' DiTTransformer2DModel through the converter, images and 1-frame
videos, save/load, training, SiT's sigma-free output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel

from osp.dit import DIT_CONFIGS, SIT_CONFIGS, DiT, DiTConfig, dit_config_from_diffusers, dit_from_diffusers
from osp.errors import ConfigError, ShapeError, WeightsError

TINY = DIT_CONFIGS["dit-tiny"]


def diffusers_tiny(seed: int = 0, shared_embedder: bool = True) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        num_layers=2, num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10,
    )  # fmt: skip
    for param in model.parameters():  # no zero-initialised shortcuts: every weight matters
        param.data.normal_(0, 0.05)
    if shared_embedder:  # as in every checkpoint converted from DiT: one embedder, copied into each block
        first = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first)
    return model.eval()


def randomised(config: DiTConfig = TINY, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    model = DiT(config)
    for param in model.parameters():
        if param.requires_grad:
            param.data.normal_(0, 0.1)
    return model.eval()


def inputs(batch: int = 3, size: int = 8, seed: int = 1) -> tuple[torch.Tensor, ...]:
    x = torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))
    return x, torch.tensor([0.0, 421.0, 999.0][:batch]), torch.tensor([1, 10, 7][:batch])


def converted(reference: DiTTransformer2DModel) -> DiT:
    config = dit_config_from_diffusers(dict(reference.config))
    return DiT.from_state_dict(config, dit_from_diffusers(reference.state_dict(), config))


def test_parity_with_diffusers() -> None:
    reference = diffusers_tiny()
    ours = converted(reference)
    x, t, y = inputs()  # label 10 is the CFG null class
    with torch.no_grad():
        expected = reference(x, timestep=t, class_labels=y).sample
        got = ours(x, t, y)
        got_video = ours(x[:, :, None], t, y)
    assert got.shape == expected.shape == (3, 8, 8, 8)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got_video.shape == (3, 8, 1, 8, 8)
    torch.testing.assert_close(got_video[:, :, 0], got, rtol=0, atol=0)


def test_diffusers_config_mapping() -> None:
    config = dit_config_from_diffusers(dict(diffusers_tiny().config))
    assert (config.hidden_size, config.num_heads, config.depth, config.input_size) == (32, 2, 2, 8)
    assert (config.num_classes, config.learn_sigma, config.class_dropout_prob) == (10, True, 0.1)
    # The two places where diffusers' DiT computes differently from the DiT release.
    assert (config.timestep_freq_shift, config.mlp_norm_eps) == (1, 1e-5)
    with pytest.raises(ConfigError, match="activation_fn"):
        dit_config_from_diffusers({"activation_fn": "geglu"})
    with pytest.raises(ConfigError, match="out_channels"):
        dit_config_from_diffusers({"in_channels": 4, "out_channels": 6})


def test_release_timestep_embedding_differs_from_diffusers() -> None:
    """Why timestep_freq_shift exists: with the release's frequencies the converted model drifts."""
    reference = diffusers_tiny()
    config = dit_config_from_diffusers(dict(reference.config))
    release = DiT.from_state_dict(
        config.replace(timestep_freq_shift=0), dit_from_diffusers(reference.state_dict(), config)
    )
    x, t, y = inputs()
    with torch.no_grad():
        assert (release(x, t, y) - reference(x, timestep=t, class_labels=y).sample).abs().max() > 1e-3


def test_converter_refuses_per_block_embedders() -> None:
    reference = diffusers_tiny(shared_embedder=False)
    config = dit_config_from_diffusers(dict(reference.config))
    with pytest.raises(WeightsError, match=r"transformer_blocks\.1\.norm1\.emb\..* differs from block 0"):
        dit_from_diffusers(reference.state_dict(), config)


def test_converter_refuses_foreign_keys() -> None:
    reference = diffusers_tiny()
    config = dit_config_from_diffusers(dict(reference.config))
    state = {**reference.state_dict(), "caption_projection.linear_1.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match="caption_projection"):
        dit_from_diffusers(state, config)


@pytest.mark.parametrize("size", [8, 12])
def test_shapes_image_and_one_frame_video(size: int) -> None:
    model = randomised()
    x, t, y = inputs(size=size)
    y = y.clamp(max=9)
    with torch.no_grad():
        image = model(x, t, y)
        video = model(x[:, :, None], t, y)
    assert image.shape == (3, 8, size, size)
    assert video.shape == (3, 8, 1, size, size)
    assert torch.equal(video[:, :, 0], image)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((3, 4, 2, 8, 8), "frames"),
        ((3, 4, 8), "got shape"),
        ((3, 3, 8, 8), "channels"),
        ((3, 4, 8, 9), "multiples of patch_size"),
    ],
)
def test_bad_shapes(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ShapeError, match=match):
        DiT(TINY)(torch.zeros(shape), torch.zeros(3), torch.zeros(3, dtype=torch.long))


def test_untrained_model_predicts_zero() -> None:
    x, t, y = inputs()
    assert torch.equal(DiT(TINY).eval()(x, t, y), torch.zeros(3, 8, 8, 8))


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = randomised()
    model.save_pretrained(tmp_path / "dit")
    loaded = DiT.from_pretrained(tmp_path / "dit")
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_training_step_lowers_loss() -> None:
    torch.manual_seed(0)
    model = DiT(TINY.replace(class_dropout_prob=0.0)).train()
    x, t, _ = inputs()
    y = torch.tensor([1, 2, 3])
    target = torch.randn(3, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(5):
        loss = F.mse_loss(model(x, t, y), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = dict(model.named_parameters())
    assert not torch.equal(after["blocks.1.mlp.fc1.weight"], before["blocks.1.mlp.fc1.weight"])
    assert torch.equal(after["pos_embed"], before["pos_embed"])  # frozen


def test_gradient_checkpointing_matches() -> None:
    plain = randomised(TINY.replace(class_dropout_prob=0.0))
    checkpointed = DiT(TINY.replace(class_dropout_prob=0.0, gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    x, t, _ = inputs()
    y = torch.tensor([1, 2, 3])
    grads = []
    for model in (plain, checkpointed):
        model.train()
        model(x, t, y).square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_sit_returns_in_channels_but_keeps_the_release_head() -> None:
    config = SIT_CONFIGS["sit-tiny"]
    model = randomised(config)
    x, t, y = inputs()
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == (3, 4, 8, 8)
    # The release's SiT head predicts 2C channels and forward drops the second half.
    assert model.state_dict()["final_layer.linear.weight"].shape == (2 * 2 * 8, 64)
    dit = DiT.from_state_dict(config.replace(return_sigma=True), model.state_dict())
    with torch.no_grad():
        assert torch.equal(dit(x, t, y)[:, :4], out)


def test_presets() -> None:
    sizes = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}
    for size, (depth, hidden, heads) in sizes.items():
        for p in (2, 4, 8):
            for registry, family in ((DIT_CONFIGS, "dit"), (SIT_CONFIGS, "sit")):
                cfg = registry[f"{family}-{size}/{p}"]
                assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (
                    depth,
                    hidden,
                    heads,
                    p,
                )
                assert cfg.out_channels == (8 if family == "dit" else 4)
    with torch.device("meta"):
        model = DiT(DIT_CONFIGS["dit-xl/2"])
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 674_834_720  # DiT-XL/2: 675M
