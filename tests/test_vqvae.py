"""VideoGPT VQ-VAE: shapes, release parameter names, axial attention, codebook EMA, save/load, training."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from osp.errors import ConfigError, ShapeError
from osp.vae.vqvae import (
    VQVAE,
    VQVAE_CONFIGS,
    AxialBlock,
    Codebook,
    VQVAEConfig,
    config_from_videogpt,
)

TINY = VQVAE_CONFIGS["vqvae-tiny"]


def tiny_model(seed: int = 0, **changes: object) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(TINY.replace(**changes) if changes else TINY)


def smooth_clips(n: int, T: int = 8, H: int = 16, W: int = 16, seed: int = 0) -> torch.Tensor:
    """Moving colour gratings in [-1, 1]: smooth in space and time, different per clip."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T).view(T, 1, 1).float()
    y = torch.linspace(0, 1, H).view(1, H, 1)
    x = torch.linspace(0, 1, W).view(1, 1, W)
    clips = []
    for _ in range(n):
        freq = 1 + 2 * torch.rand(3, 2, generator=g)
        speed = 0.3 * torch.randn(3, generator=g)
        phase = 2 * math.pi * torch.rand(3, generator=g)
        channels = [
            torch.sin(2 * math.pi * (freq[c, 0] * x + freq[c, 1] * y) + speed[c] * t + phase[c])
            for c in range(3)
        ]
        clips.append(0.8 * torch.stack(channels))
    return torch.stack(clips)  # (n, 3, T, H, W)


# ----------------------------------------------------------------------------------------------------
# Shapes and bad input
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("thw", [(8, 16, 16), (4, 8, 12), (12, 20, 4)])
def test_shapes(thw: tuple[int, int, int]) -> None:
    model = tiny_model().eval()
    x = torch.rand(2, 3, *thw) * 2 - 1
    latent = model.latent_shape(*thw)
    assert latent == tuple(s // 4 for s in thw)
    with torch.no_grad():
        out = model(x)
        codes, emb = model.encode(x, return_embeddings=True)
        video = model.decode(codes)
    assert out.reconstruction.shape == x.shape
    assert out.encodings.shape == (2, *latent) and out.encodings.dtype == torch.long
    assert codes.shape == (2, *latent) and codes.dtype == torch.long
    assert emb.shape == (2, TINY.embedding_dim, *latent)
    assert torch.equal(codes, out.encodings)
    assert video.shape == x.shape
    assert torch.allclose(video, out.reconstruction, atol=1e-5)


@pytest.mark.parametrize("downsample", [(2, 4, 4), (4, 8, 8), (1, 4, 2)])
def test_unequal_factors(downsample: tuple[int, int, int]) -> None:
    model = tiny_model(downsample=downsample).eval()
    x = torch.rand(1, 3, 8, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.encodings.shape == (1, 8 // downsample[0], 16 // downsample[1], 16 // downsample[2])


def test_bad_input_raises_shape_error() -> None:
    model = tiny_model().eval()
    with pytest.raises(ShapeError, match="4-D"):
        model(torch.zeros(3, 8, 16, 16))
    with pytest.raises(ShapeError, match="channel"):
        model(torch.zeros(1, 1, 8, 16, 16))
    with pytest.raises(ShapeError, match="T = 6"):
        model(torch.zeros(1, 3, 6, 16, 16))
    with pytest.raises(ShapeError, match="H = 10"):
        model.encode(torch.zeros(1, 3, 8, 10, 16))
    with pytest.raises(ShapeError, match="W = 18"):
        model(torch.zeros(1, 3, 8, 16, 18))
    with pytest.raises(ShapeError, match=r"\(B, t, h, w\)"):
        model.decode(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ShapeError, match="integer"):
        model.decode(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ShapeError, match=r"\[0, 64\)"):
        model.decode(torch.full((1, 2, 4, 4), 64))


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        VQVAEConfig.from_dict({"downsample": [4, 3, 4]})
    with pytest.raises(ConfigError, match="at least one factor"):
        VQVAEConfig.from_dict({"downsample": [1, 1, 1]})
    with pytest.raises(ConfigError, match="even"):
        VQVAEConfig.from_dict({"n_hiddens": 33, "n_head": 1})
    with pytest.raises(ConfigError, match="unknown key"):
        VQVAEConfig.from_dict({"resolution": 128})
    assert set(VQVAE_CONFIGS) >= {"videogpt-4x4x4", "videogpt-4x8x8", "vqvae-tiny"}
    assert VQVAE_CONFIGS["videogpt-4x8x8"].downsample == (4, 8, 8)


# ----------------------------------------------------------------------------------------------------
# Release parity: parameter names and axial attention
# ----------------------------------------------------------------------------------------------------


def release_keys(n_res_layers: int, n_down: int) -> list[str]:
    """State-dict keys of VideoGPT / Open-Sora-Plan v1.0's VQVAEModel, written from its naming pattern."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    attn = [
        f"attn_{a}.{p}"
        for a in "wht"
        for p in ("w_qs.weight", "w_ks.weight", "w_vs.weight", "fc.weight", "fc.bias")
    ]

    def res_stack(prefix: str) -> list[str]:
        keys = []
        for i in range(n_res_layers):
            block = f"{prefix}.res_stack.{i}.block"
            keys += [f"{block}.0.{b}" for b in bn]
            keys += [f"{block}.2.conv.weight"]
            keys += [f"{block}.3.{b}" for b in bn]
            keys += [f"{block}.5.conv.weight"]
            keys += [f"{block}.6.{b}" for b in bn]
            keys += [f"{block}.8.{a}" for a in attn]
        keys += [f"{prefix}.res_stack.{n_res_layers}.{b}" for b in bn]
        return keys

    keys = [f"encoder.convs.{i}.conv.{p}" for i in range(n_down) for p in ("weight", "bias")]
    keys += ["encoder.conv_last.conv.weight", "encoder.conv_last.conv.bias"]
    keys += res_stack("encoder")
    keys += res_stack("decoder")
    keys += [f"decoder.convts.{i}.convt.{p}" for i in range(n_down) for p in ("weight", "bias")]
    keys += ["pre_vq_conv.conv.weight", "pre_vq_conv.conv.bias", "post_vq_conv.conv.weight"]
    keys += ["post_vq_conv.conv.bias", "codebook.embeddings", "codebook.N", "codebook.z_avg"]
    return keys


@pytest.mark.parametrize(("n_res_layers", "downsample", "n_down"), [(1, (4, 4, 4), 2), (2, (2, 4, 8), 3)])
def test_state_dict_keys_match_release(
    n_res_layers: int, downsample: tuple[int, int, int], n_down: int
) -> None:
    model = tiny_model(n_res_layers=n_res_layers, downsample=downsample)
    assert list(model.state_dict().keys()) == release_keys(n_res_layers, n_down)
    # Release shapes that differ by position: the first conv sees RGB, the last transposed conv emits RGB.
    state = model.state_dict()
    assert state["encoder.convs.0.conv.weight"].shape == (TINY.n_hiddens, 3, 4, 4, 4)
    assert state[f"decoder.convts.{n_down - 1}.convt.weight"].shape == (TINY.n_hiddens, 3, 4, 4, 4)
    n = TINY.n_hiddens
    assert state["encoder.res_stack.0.block.2.conv.weight"].shape == (n // 2, n, 3, 3, 3)
    assert state["codebook.embeddings"].shape == (TINY.n_codes, TINY.embedding_dim)


def reference_axial(block: AxialBlock, x: torch.Tensor, n_head: int) -> torch.Tensor:
    """VideoGPT's axial attention in plain torch: matmul, softmax, matmul along each of W, H, T."""
    xs = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C)
    total = torch.zeros_like(xs)

    def heads(w: torch.Tensor, axis: int) -> torch.Tensor:
        t = (xs @ w.t()).unflatten(-1, (n_head, -1))  # (B, T, H, W, heads, d)
        t = t.movedim(4, 1)  # (B, heads, T, H, W, d)
        return t.movedim(axis + 1, -2)  # attended axis next to d

    for attn, axis in ((block.attn_w, 3), (block.attn_h, 2), (block.attn_t, 1)):
        q, k, v = (heads(lin.weight, axis) for lin in (attn.w_qs, attn.w_ks, attn.w_vs))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        out = (weights @ v).movedim(-2, axis + 1).movedim(1, 4).flatten(-2)  # (B, T, H, W, C)
        total = total + out @ attn.fc.weight.t() + attn.fc.bias
    return total.permute(0, 4, 1, 2, 3)


@pytest.mark.parametrize("n_head", [2, 4])
def test_axial_attention_matches_reference(n_head: int) -> None:
    torch.manual_seed(0)
    block = AxialBlock(16, n_head)
    x = torch.randn(2, 16, 3, 4, 5)
    with torch.no_grad():
        assert torch.allclose(block(x), reference_axial(block, x, n_head), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Codebook
# ----------------------------------------------------------------------------------------------------


def test_straight_through_gradient() -> None:
    torch.manual_seed(0)
    codebook = Codebook(n_codes=8, embedding_dim=4).eval()
    z = torch.randn(2, 4, 2, 3, 3, requires_grad=True)
    q = codebook(z)
    e_st = q.embeddings
    e_st.retain_grad()
    assert torch.allclose(e_st, codebook.lookup(q.encodings).movedim(-1, 1), atol=1e-6)
    (e_st.pow(3) * torch.linspace(-1, 1, e_st.numel()).view_as(e_st)).sum().backward()
    assert z.grad is not None and e_st.grad is not None
    assert torch.equal(z.grad, e_st.grad)


def test_commitment_loss_and_perplexity() -> None:
    torch.manual_seed(0)
    codebook = Codebook(n_codes=8, embedding_dim=4, commitment_cost=0.25).eval()
    z = torch.randn(1, 4, 2, 2, 2)
    q = codebook(z)
    e = codebook.lookup(q.encodings).movedim(-1, 1)
    assert torch.allclose(q.commitment_loss, 0.25 * ((z - e) ** 2).mean())
    counts = torch.bincount(q.encodings.flatten(), minlength=8).float()
    p = counts / counts.sum()
    assert torch.allclose(q.perplexity, torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


def test_ema_update_matches_hand_computation() -> None:
    decay, eps = 0.9, 1e-7
    codebook = Codebook(n_codes=4, embedding_dim=3, decay=decay).train()
    codebook.needs_init = False
    e0 = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    n0 = torch.tensor([5.0, 3.0, 2.0, 4.0])
    codebook.embeddings.copy_(e0)
    codebook.N.copy_(n0)
    codebook.z_avg.copy_(e0 * n0[:, None])
    # Six vectors: three near code 0, two near code 1, one near code 3, none near code 2.
    points = torch.tensor(
        [
            [0.1, 0.2, 0.0],
            [-0.3, 0.1, 0.2],
            [0.0, -0.2, 0.1],
            [4.8, 0.3, 0.0],
            [5.2, -0.1, 0.1],
            [0.2, 0.1, 4.7],
        ]
    )
    z = points.t().reshape(1, 3, 1, 2, 3)  # (B, D, t, h, w) holding the points in row-major (t, h, w) order
    q = codebook(z)

    codes = torch.cdist(points, e0).argmin(dim=1)
    assert codes.tolist() == [0, 0, 0, 1, 1, 3]
    assert q.encodings.flatten().tolist() == codes.tolist()
    onehot = F.one_hot(codes, 4).float()
    n1 = decay * n0 + (1 - decay) * onehot.sum(0)
    z_avg1 = decay * e0 * n0[:, None] + (1 - decay) * onehot.t() @ points
    total = n1.sum()
    sizes = (n1 + eps) / (total + 4 * eps) * total
    assert torch.allclose(codebook.N, n1, rtol=1e-6)
    assert torch.allclose(codebook.z_avg, z_avg1, rtol=1e-6)
    assert torch.allclose(codebook.embeddings, z_avg1 / sizes[:, None], rtol=1e-6, atol=1e-7)


def test_first_training_batch_initialises_codebook(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    codebook = Codebook(n_codes=8, embedding_dim=4).train()
    monkeypatch.setattr(codebook, "_ema_update", lambda flat, onehot: None)
    z = torch.randn(2, 4, 2, 2, 2)  # 16 vectors >= 8 codes: codes are exact copies, no tiling noise
    codebook.eval()(z)
    assert codebook.needs_init  # eval mode never initialises
    codebook.train()(z)
    assert not codebook.needs_init
    rows = z.movedim(1, -1).reshape(-1, 4)
    assert torch.cdist(codebook.embeddings, rows).min(dim=1).values.max() < 1e-6
    assert torch.equal(codebook.z_avg, codebook.embeddings)
    assert torch.equal(codebook.N, torch.ones(8))


def test_dead_codes_are_restarted() -> None:
    torch.manual_seed(0)
    codebook = Codebook(n_codes=8, embedding_dim=4).train()
    codebook.needs_init = False
    live = torch.eye(4) * 3
    dead = torch.full((4, 4), 100.0)  # far from every input: never chosen
    n0 = torch.tensor([10.0] * 4 + [0.5] * 4)
    codebook.embeddings.copy_(torch.cat([live, dead]))
    codebook.N.copy_(n0)
    codebook.z_avg.copy_(codebook.embeddings * n0[:, None])
    rows = live.repeat(4, 1) + 0.1 * torch.randn(16, 4)  # 16 inputs near the 4 live codes
    codebook(rows.t().reshape(1, 4, 1, 4, 4))
    assert (codebook.N[4:] < 1).all() and (codebook.N[:4] >= 1).all()
    # Dead codes now sit on encoder outputs; live codes kept their EMA means near the data.
    assert torch.cdist(codebook.embeddings[4:], rows).min(dim=1).values.max() < 1e-6
    assert torch.cdist(codebook.embeddings[:4], live).diagonal().max() < 0.5


def test_training_uses_many_codes() -> None:
    model = tiny_model().train()
    clips = smooth_clips(4)
    with torch.no_grad():
        for step in range(3):
            out = model(clips[step % 2 * 2 : step % 2 * 2 + 2] + 0.1 * torch.randn(2, 3, 8, 16, 16))
    assert out.perplexity.item() > 1.0
    assert out.encodings.unique().numel() > 1
    assert not model.codebook.needs_init


def test_encode_never_updates_codebook() -> None:
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.codebook.state_dict().items()}
    model.encode(smooth_clips(2))
    assert model.codebook.needs_init
    for key, value in model.codebook.state_dict().items():
        assert torch.equal(value, before[key])


# ----------------------------------------------------------------------------------------------------
# Weights and training
# ----------------------------------------------------------------------------------------------------


def test_deterministic_in_eval() -> None:
    model = tiny_model().eval()
    x = smooth_clips(2)
    with torch.no_grad():
        assert torch.equal(model(x).reconstruction, model(x).reconstruction)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model().train()
    clips = smooth_clips(2)
    with torch.no_grad():
        for _ in range(2):
            model(clips)
    model.save_pretrained(tmp_path)
    loaded = VQVAE.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert not loaded.codebook.needs_init
    model.eval()
    with torch.no_grad():
        a, b = model(clips), loaded(clips)
    assert torch.equal(a.reconstruction, b.reconstruction)
    assert torch.equal(a.encodings, b.encodings)

    # The next training step continues the EMA: identical to the original model's, no re-initialisation.
    model.train()
    loaded.train()
    x = smooth_clips(2, seed=1)
    with torch.no_grad():
        torch.manual_seed(5)
        model(x)
        torch.manual_seed(5)
        loaded(x)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_release_state_dict_loads() -> None:
    trained = tiny_model().train()
    with torch.no_grad():
        trained(smooth_clips(2))
    # A released checkpoint's plain state dict (same key names) loads without a key map.
    loaded = VQVAE.from_state_dict(TINY, dict(trained.state_dict()))
    assert not loaded.codebook.needs_init
    trained.eval()
    x = smooth_clips(1, seed=3)
    with torch.no_grad():
        assert torch.equal(trained(x).reconstruction, loaded(x).reconstruction)
    # An untrained state dict (all-zero EMA counts) still asks for the data-dependent init.
    fresh = VQVAE.from_state_dict(TINY, tiny_model(seed=1).state_dict())
    assert fresh.codebook.needs_init


def test_config_from_videogpt() -> None:
    config = config_from_videogpt(
        {
            "embedding_dim": 4,
            "n_codes": 2048,
            "n_hiddens": 240,
            "n_res_layers": 4,
            "downsample": "4,8,8",
            "resolution": 256,
            "sequence_length": 17,
            "no_pos_embd": True,
            "lr": 7e-4,
            "_name_or_path": "x",
        }
    )
    assert config == VQVAEConfig(embedding_dim=4, downsample=(4, 8, 8))
    namespace = argparse.Namespace(n_codes=1024, downsample=(2, 4, 4), batch_size=32)
    assert config_from_videogpt(namespace) == VQVAEConfig(n_codes=1024, downsample=(2, 4, 4))
    assert config_from_videogpt({"downsample": [4, 4, 4]}) == VQVAE_CONFIGS["videogpt-4x4x4"]
    with pytest.raises(ConfigError, match="downsample"):
        config_from_videogpt({"downsample": "4,x,4"})


def test_training_lowers_reconstruction_loss() -> None:
    model = tiny_model().train()
    clips = smooth_clips(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        out = model(clips)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.recon_loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
