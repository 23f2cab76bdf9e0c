"""Latte (class-conditional): parity with an independent plain-torch re-statement of the Vchitect
release (its layout, einsum attention, explicit modulate), release key names, CFG, variable sizes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from osp.dit import LATTE_CONFIGS, Latte, LatteConfig
from osp.errors import ConfigError, ShapeError

TINY = LATTE_CONFIGS["latte-tiny"]


def randomised(config: LatteConfig = TINY, seed: int = 0) -> Latte:
    """A model whose every trainable weight matters (the adaLN-Zero init would hide most of them)."""
    torch.manual_seed(seed)
    model = Latte(config)
    for param in model.parameters():
        if param.requires_grad:
            param.data.normal_(0, 0.1)
    return model.eval()


def inputs(
    batch: int = 2, frames: int = 5, size: tuple[int, int] = (8, 8), seed: int = 1
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, *size, generator=g)
    t = torch.tensor([7.0, 613.0, 999.0][:batch])
    y = torch.tensor([3, 9, 0][:batch])
    return x, t, y


# ---- the release, restated: numpy positions, (B, F, C, H, W) layout, per-frame / per-token batches ----


def release_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def release_2d(dim: int, grid_size: int) -> np.ndarray:
    grid = np.stack(
        np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    )
    return np.concatenate([release_1d(dim // 2, grid[0]), release_1d(dim // 2, grid[1])], axis=1)


def reference_block(
    x: torch.Tensor, c: torch.Tensor, sd: dict[str, torch.Tensor], pre: str, heads: int
) -> torch.Tensor:
    """DiT / Latte block on x (N, L, D) with conditioning c (N, D), written out by hand."""
    n, length, dim = x.shape
    mods = F.linear(F.silu(c), sd[f"{pre}.adaLN_modulation.1.weight"], sd[f"{pre}.adaLN_modulation.1.bias"])
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)
    h = F.layer_norm(x, (dim,), eps=1e-6) * (1 + scale_msa[:, None]) + shift_msa[:, None]
    qkv = F.linear(h, sd[f"{pre}.attn.qkv.weight"], sd[f"{pre}.attn.qkv.bias"])
    q, k, v = qkv.reshape(n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    weights = torch.einsum("nhqd,nhkd->nhqk", q, k).mul(1 / math.sqrt(dim // heads)).softmax(dim=-1)
    h = torch.einsum("nhqk,nhkd->nqhd", weights, v).reshape(n, length, dim)
    x = x + gate_msa[:, None] * F.linear(h, sd[f"{pre}.attn.proj.weight"], sd[f"{pre}.attn.proj.bias"])
    h = F.layer_norm(x, (dim,), eps=1e-6) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    h = F.gelu(F.linear(h, sd[f"{pre}.mlp.fc1.weight"], sd[f"{pre}.mlp.fc1.bias"]), approximate="tanh")
    return x + gate_mlp[:, None] * F.linear(h, sd[f"{pre}.mlp.fc2.weight"], sd[f"{pre}.mlp.fc2.bias"])


def reference_forward(model: Latte, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The release's forward on x (B, F, C, H, W) -> (B, F, C_out, H, W), in eval mode."""
    cfg, sd = model.config, model.state_dict()
    b, frames, c, height, width = x.shape
    p, d, heads = cfg.patch_size, cfg.hidden_size, cfg.num_heads
    h, w = height // p, width // p
    pos = torch.from_numpy(release_2d(d, h)).float()[None]
    temp = torch.from_numpy(release_1d(d, np.arange(frames))).float()[None]

    tokens = F.conv2d(
        x.reshape(b * frames, c, height, width),
        sd["x_embedder.proj.weight"],
        sd["x_embedder.proj.bias"],
        stride=p,
    )
    tokens = tokens.flatten(2).transpose(1, 2) + pos  # (B*F, N, D)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    t_freq = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=-1)
    t_emb = F.linear(F.silu(F.linear(t_freq, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                     sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])  # fmt: skip
    c_emb = t_emb + sd["y_embedder.embedding_table.weight"][y]
    c_spatial = c_emb.repeat_interleave(frames, dim=0)  # (B*F, D), as the release's repeat
    c_temporal = c_emb.repeat_interleave(h * w, dim=0)  # (B*N, D)

    for i in range(0, cfg.depth, 2):
        tokens = reference_block(tokens, c_spatial, sd, f"blocks.{i}", heads)
        tokens = tokens.reshape(b, frames, h * w, d).transpose(1, 2).reshape(b * h * w, frames, d)
        if i == 0:
            tokens = tokens + temp
        tokens = reference_block(tokens, c_temporal, sd, f"blocks.{i + 1}", heads)
        tokens = tokens.reshape(b, h * w, frames, d).transpose(1, 2).reshape(b * frames, h * w, d)

    shift, scale = F.linear(F.silu(c_spatial), sd["final_layer.adaLN_modulation.1.weight"],
                            sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=1)  # fmt: skip
    tokens = F.layer_norm(tokens, (d,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    tokens = F.linear(tokens, sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    out = torch.einsum("nhwpqc->nchpwq", tokens.reshape(b * frames, h, w, p, p, cfg.out_channels))
    return out.reshape(b, frames, cfg.out_channels, height, width)


def test_positions_are_the_release_tables() -> None:
    model = Latte(TINY)
    torch.testing.assert_close(
        model.pos_embed, torch.from_numpy(release_2d(64, 4)).float()[None], rtol=0, atol=1e-7
    )
    torch.testing.assert_close(
        model.temp_embed, torch.from_numpy(release_1d(64, np.arange(5))).float()[None], rtol=0, atol=1e-7
    )
    assert not model.pos_embed.requires_grad and not model.temp_embed.requires_grad


def test_parity_with_release_restatement() -> None:
    model = randomised()
    x, t, y = inputs(batch=3)
    with torch.no_grad():
        got = model(x, t, y)  # (B, C, T, H, W)
        expected = reference_forward(model, x.transpose(1, 2), t, y)  # release layout (B, F, C, H, W)
    assert got.shape == (3, 8, 5, 8, 8)
    torch.testing.assert_close(got.transpose(1, 2), expected, rtol=1e-5, atol=1e-5)


def test_more_heads_than_a_cuda_grid_holds_run_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Temporal blocks fold each token's frames into the heads (N*H = 64 here); past the limit of a
    CUDA grid axis they run in chunks, with the release's outputs still."""
    import osp.layers.dit_blocks

    monkeypatch.setattr(osp.layers.dit_blocks, "MAX_GRID_HEADS", 7)
    model = randomised()
    x, t, y = inputs()
    with torch.no_grad():
        expected = reference_forward(model, x.transpose(1, 2), t, y)
        torch.testing.assert_close(model(x, t, y).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)


def test_exported_layout_gives_the_same_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exported graphs attend over frames with the tokens moved into the batch (a static head count)."""
    import osp.layers.dit_blocks

    monkeypatch.setattr(osp.layers.dit_blocks, "_exporting", lambda: True)
    model = randomised()
    x, t, y = inputs()
    with torch.no_grad():
        expected = reference_forward(model, x.transpose(1, 2), t, y)
        torch.testing.assert_close(model(x, t, y).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)


def test_state_dict_keys_are_the_release_names() -> None:
    top = ["pos_embed", "temp_embed", "x_embedder.proj.weight", "x_embedder.proj.bias",
           "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
           "y_embedder.embedding_table.weight",
           "final_layer.linear.weight", "final_layer.linear.bias",
           "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"]  # fmt: skip
    per_block = ["attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                 "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
                 "adaLN_modulation.1.weight", "adaLN_modulation.1.bias"]  # fmt: skip
    release = set(top) | {f"blocks.{i}.{name}" for i in range(4) for name in per_block}
    model = Latte(TINY)
    assert TINY.depth == 4
    assert set(model.state_dict()) == release
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["y_embedder.embedding_table.weight"] == (11, 64)  # 10 classes + the CFG null row
    assert shapes["blocks.0.attn.qkv.weight"] == (192, 64)
    assert shapes["final_layer.linear.weight"] == (2 * 2 * 8, 64)


def test_unconditional_release_layout() -> None:
    """The release's FFS / Sky / Taichi models (extras=1) have no label embedder."""
    model = randomised(TINY.replace(num_classes=0))
    assert not any(k.startswith("y_embedder") for k in model.state_dict())
    x, t, y = inputs()
    with torch.no_grad():
        assert model(x, t).shape == (2, 8, 5, 8, 8)
    with pytest.raises(ShapeError, match="not taken"):
        model(x, t, y)
    with pytest.raises(ShapeError, match="required"):
        Latte(TINY)(x, t)


def test_xl2_parameter_count() -> None:
    with torch.device("meta"):
        model = Latte(LATTE_CONFIGS["latte-xl/2"])
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 674_834_720
    assert sum(p.numel() for p in model.parameters()) == 675_148_064  # + frozen pos_embed / temp_embed


def test_presets() -> None:
    sizes = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}
    for size, (depth, hidden, heads) in sizes.items():
        for p in (2, 4, 8):
            cfg = LATTE_CONFIGS[f"latte-{size}/{p}"]
            assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (depth, hidden, heads, p)
            assert (cfg.input_size, cfg.num_frames, cfg.num_classes, cfg.learn_sigma) == (32, 16, 1000, True)
    assert len(LATTE_CONFIGS) == 13


def test_bad_config_is_refused() -> None:
    with pytest.raises(ConfigError, match="depth"):
        TINY.replace(depth=3)
    with pytest.raises(ConfigError, match="num_heads"):
        TINY.replace(num_heads=5)
    with pytest.raises(ConfigError, match="patch_size"):
        TINY.replace(input_size=(8, 9))


def test_untrained_model_predicts_zero() -> None:
    model = Latte(TINY).eval()
    x, t, y = inputs()
    assert torch.equal(model(x, t, y), torch.zeros(2, 8, 5, 8, 8))


def test_cfg_label_dropout() -> None:
    model = randomised(TINY.replace(class_dropout_prob=1.0))
    x, t, _ = inputs()
    null = torch.full((2,), 10)
    with torch.no_grad():
        unconditional = model(x, t, null)
        model.train()
        dropped_a = model(x, t, torch.tensor([1, 2]))
        dropped_b = model(x, t, torch.tensor([7, 9]))
        model.eval()
        conditional = model(x, t, torch.tensor([1, 2]))
    torch.testing.assert_close(dropped_a, unconditional, rtol=0, atol=0)
    torch.testing.assert_close(dropped_b, unconditional, rtol=0, atol=0)
    assert not torch.allclose(conditional, unconditional, atol=1e-4)


@pytest.mark.parametrize(("frames", "size"), [(7, (8, 8)), (3, (12, 12)), (5, (8, 12)), (1, (4, 6))])
def test_variable_latent_size(frames: int, size: tuple[int, int]) -> None:
    model = randomised()
    x, t, y = inputs(frames=frames, size=size)
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == (2, 8, frames, *size)
    assert torch.isfinite(out).all()


def test_variable_size_positions_extend_the_stored_ones() -> None:
    model = Latte(TINY)
    spatial, temporal = model._positions(7, 4, 4, torch.zeros(()))
    assert spatial is not None and torch.equal(spatial, model.pos_embed)
    torch.testing.assert_close(temporal[:, :5], model.temp_embed)
    torch.testing.assert_close(model.temporal_positions(7), model._positions(7, 4, 4, torch.zeros(()))[1])


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 4, 8, 8), "Latte takes latents"),
        ((2, 3, 5, 8, 8), "channels"),
        ((2, 4, 5, 8, 7), "multiples of patch_size"),
    ],
)
def test_bad_shapes(shape: tuple[int, ...], match: str) -> None:
    model = Latte(TINY)
    with pytest.raises(ShapeError, match=match):
        model(torch.zeros(shape), torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_bad_conditioning_shapes() -> None:
    model = Latte(TINY)
    x, t, y = inputs()
    with pytest.raises(ShapeError, match="timesteps"):
        model(x, t[:1], y)
    with pytest.raises(ShapeError, match="class_labels"):
        model(x, t, y[:, None])
    assert model(x, torch.tensor(5.0), y).shape == (2, 8, 5, 8, 8)  # a scalar t is broadcast


def loss_and_grads(model: Latte) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, t, y = inputs()
    model.train()
    model.zero_grad()
    loss = model(x, t, y).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_matches() -> None:
    plain = randomised(TINY.replace(class_dropout_prob=0.0))
    checkpointed = Latte(TINY.replace(class_dropout_prob=0.0, gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    loss_a, grads_a = loss_and_grads(plain)
    loss_b, grads_b = loss_and_grads(checkpointed)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == sum(
        p.requires_grad for p in plain.parameters()
    )
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = randomised()
    model.save_pretrained(tmp_path / "latte")
    loaded = Latte.from_pretrained(tmp_path / "latte")
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x, t, y = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model(x, t, y))


def test_frames_mix_only_in_temporal_blocks() -> None:
    model = randomised()
    after_first_spatial: list[torch.Tensor] = []
    model.blocks[0].register_forward_hook(lambda module, args, out: after_first_spatial.append(out))
    x, t, y = inputs()
    changed = x.clone()
    changed[:, :, 2] += 1.0
    with torch.no_grad():
        out, out_changed = model(x, t, y), model(changed, t, y)
    spatial, spatial_changed = after_first_spatial  # (B, T, N, D) each
    assert torch.equal(spatial[:, 0], spatial_changed[:, 0])  # the spatial block kept frames apart
    assert not torch.equal(spatial[:, 2], spatial_changed[:, 2])
    assert (out[:, :, 0] - out_changed[:, :, 0]).abs().max() > 1e-4  # the temporal block mixed them


def test_training_step_lowers_loss() -> None:
    torch.manual_seed(0)
    model = Latte(TINY.replace(class_dropout_prob=0.0)).train()
    x, t, y = inputs()
    target = torch.randn(2, 8, 5, 8, 8, generator=torch.Generator().manual_seed(3))
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
    assert not torch.equal(after["blocks.1.attn.qkv.weight"], before["blocks.1.attn.qkv.weight"])
    assert torch.equal(after["pos_embed"], before["pos_embed"])  # frozen
