"""Regional torch.compile, the engine-cache key, and TensorRT builds (GPU machines with tensorrt only)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from osp.dit.latte import LATTE_CONFIGS, Latte
from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp.export.cache import check_engine, engine_key, plugin_hash, record_path, write_record
from osp.export.compile import compile_blocks, compile_frozen, is_compiled, repeated_blocks
from osp.export.manifest import EngineMismatchError
from osp.export.specs import transformer_spec, trt_profiles


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    for param in model.parameters():
        if param.requires_grad:
            param.data.normal_(0, 0.1)
    return model.eval()


def test_regional_compile_matches_eager_without_graph_breaks() -> None:
    torch.manual_seed(0)
    model = _randomise(Latte(LATTE_CONFIGS["latte-tiny"]))
    spec = transformer_spec(model, (3, 4, 4))
    inputs = spec.make_inputs(spec.sample, seed=1)
    compiled = compile_blocks(copy.deepcopy(model))  # fullgraph=True: a graph break would raise
    assert is_compiled(compiled) and len(repeated_blocks(compiled)) == 4
    assert not any(getattr(m, "_compiled_call_impl", None) for m in (compiled, compiled.final_layer))
    torch._dynamo.reset()
    with torch.no_grad():
        expected = model(*inputs)
        torch.testing.assert_close(compiled(*inputs), expected, rtol=1e-4, atol=1e-5)


def test_t2v_blocks_trace_as_one_graph_each() -> None:
    """Both block kinds of LatteT2V (spatial with cross-attention, temporal without): zero graph breaks."""
    torch.manual_seed(0)
    model = LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"]).eval()
    b, t, n, d = 2, 3, 16, model.config.inner_dim
    t_mod, context = torch.randn(b, 6, d), torch.randn(b, 7, d)
    valid = torch.ones(b, 7, dtype=torch.bool)
    spatial, temporal = model.transformer_blocks[0], model.temporal_transformer_blocks[0]
    for block, args in ((spatial, (torch.randn(b, t, n, d), t_mod, context, valid, None, None, (4, 4))),
                        (temporal, (torch.randn(b, n, t, d), t_mod, None, None, None, None, None))):  # fmt: skip
        explanation = torch._dynamo.explain(block)(*args)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    torch._dynamo.reset()


def test_frozen_compile_matches_eager_and_holds_the_weights_it_was_compiled_with() -> None:
    """The whole LatteT2V under one graph (fullgraph: a break would raise) with Inductor freezing: equal to
    eager with gradients off; and the weights are constants of the compiled code, so changing the model's
    weights afterwards changes eager outputs but not the frozen ones."""
    torch.manual_seed(0)
    model = _randomise(LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"]))
    spec = transformer_spec(model, (3, 4, 4), text_length=7)
    inputs = spec.make_inputs(spec.sample, seed=1)
    frozen = compile_frozen(model)
    torch._dynamo.reset()
    with torch.inference_mode():
        expected = model(*inputs)
        torch.testing.assert_close(frozen(*inputs), expected, rtol=1e-4, atol=1e-5)
        model.proj_out.weight.mul_(2.0)
        changed = model(*inputs)
        assert (changed - expected).abs().max() > 1e-3
        torch.testing.assert_close(frozen(*inputs), expected, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def test_frozen_engine_decodes_like_the_vae_and_tiles_large_clips_eagerly() -> None:
    """The compile engine with ``freeze`` also compiles the VAE decoder with frozen weights: its decode of
    a clip within one tile equals the VAE's own ``decode_latents`` (the reference), and frozen means a
    later weight change is not seen; a clip larger than one tile goes through the VAE's tiled decode."""
    from osp.export.runtime import CompiledEngine
    from osp.layers.tiling import TilingConfig
    from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE

    torch.manual_seed(0)
    vae = _randomise(CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]))
    transformer = LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"]).eval()
    decode = CompiledEngine(transformer, freeze=True, vae=vae).decoder()
    assert (
        decode is not None and CompiledEngine(transformer).decoder() is None
    )  # regional: the VAE stays eager
    small = torch.randn(1, vae.latent_channels, 3, 4, 4)
    large = torch.randn(1, vae.latent_channels, 2, 40, 4)  # 40 latents wide: wider than one 32-latent tile
    torch._dynamo.reset()
    with torch.inference_mode():
        expected = vae.decode_latents(small)
        torch.testing.assert_close(decode(small), expected, rtol=1e-4, atol=1e-5)
        tiled = vae.decode_latents(large, TilingConfig())
        torch.testing.assert_close(decode(large), tiled)
        vae.decoder.conv_out.conv.weight.mul_(2.0)
        assert (vae.decode_latents(small) - expected).abs().max() > 1e-3
        torch.testing.assert_close(decode(small), expected, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def _key(**changes: object) -> str:
    base: dict[str, object] = dict(
        graph_sha256="g", weights_sha256="w", precision="fp16", tensorrt_version="10.8.0", gpu="NVIDIA H100",
        profiles=[{"latents": [[1, 4, 2, 8, 8], [2, 4, 5, 8, 8], [2, 4, 5, 8, 8]]}], plugin_sha256="p",
    )  # fmt: skip
    base.update(changes)
    return engine_key(**base).digest()


def test_engine_key_changes_with_every_input() -> None:
    assert _key() == _key()
    changes = dict(
        weights_sha256="w2", graph_sha256="g2", precision="bf16", tensorrt_version="10.9.0", gpu="NVIDIA H200",
        plugin_sha256="p2", profiles=[{"latents": [[1, 4, 2, 8, 8], [2, 4, 5, 8, 8], [2, 4, 9, 8, 8]]}],
    )  # fmt: skip
    keys = {_key(**{name: value}) for name, value in changes.items()}
    assert len(keys) == len(changes) and _key() not in keys


def test_plugin_hash_follows_the_sources(tmp_path: Path) -> None:
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    before = plugin_hash([a, b])
    assert plugin_hash([b, a]) == before  # order of the list does not matter
    a.write_text("x = 3\n")
    assert plugin_hash([a, b]) != before


def test_mismatched_engine_is_refused_with_the_rebuild_command(tmp_path: Path) -> None:
    args: dict[str, object] = dict(graph_sha256="g", weights_sha256="w", precision="fp16", tensorrt_version="10.8",
                                   gpu="H100", profiles=[], plugin_sha256="p")  # fmt: skip
    built = engine_key(**args)
    engine = tmp_path / "transformer.fp16.engine"
    rebuild = "osp export --model m --target tensorrt --out e"
    with pytest.raises(EngineMismatchError, match="no engine"):
        check_engine(engine, built, rebuild)
    engine.write_bytes(b"serialized")
    write_record(engine, built)
    check_engine(engine, built, rebuild)  # the same request: accepted
    for change in (
        {"weights_sha256": "w2"},
        {"precision": "bf16"},
        {"profiles": [{"latents": [[1], [2], [3]]}]},
    ):
        wanted = engine_key(**{**args, **change})
        with pytest.raises(EngineMismatchError, match=f"{next(iter(change))}.*rebuild with: {rebuild}"):
            check_engine(engine, wanted, rebuild)
    record_path(engine).write_text(json.dumps({"key": "garbage"}))
    with pytest.raises(EngineMismatchError, match="never reused"):
        check_engine(engine, built, rebuild)


def test_trt_profiles_cover_cfg_batches_per_resolution_bucket() -> None:
    model = LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"])
    spec = transformer_spec(model, (5, 8, 8), 16)
    buckets = [{"latent_frames": 5, "latent_height": 8, "latent_width": 8, "text_length": 16},
               {"latent_frames": 5, "latent_height": 8, "latent_width": 12, "text_length": 16}]  # fmt: skip
    profiles = trt_profiles(spec, buckets)
    assert len(profiles) == 2
    lo, opt, hi = profiles[1]["latents"]
    assert (lo[0], opt[0], hi[0]) == (1, 2, 2)  # batch 1..2: classifier-free guidance doubles it
    assert lo[3:] == opt[3:] == hi[3:] == [8, 12]  # the bucket's latent size, fixed
    assert (lo[2], hi[2]) == (2, 5)  # latent frames up to the bucket's


@pytest.mark.gpu
def test_tensorrt_engine_matches_eager(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from osp.dit.latte_t2v import LATTE_T2V_CONFIGS as CONFIGS
    from osp.export.runtime import TrtEngine
    from osp.export.tensorrt import export_tensorrt
    from osp.pipelines.text_to_video import PipelineSpec, TextToVideo
    from osp.text import load_text_encoder
    from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE

    transformer = _randomise(LatteT2V(CONFIGS["latte-t2v-tiny"].replace(caption_channels=384)))
    vae = CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).eval()
    spec = PipelineSpec(frames=9, size=(32, 48), steps=2)
    model_dir = TextToVideo(transformer, vae, load_text_encoder("minilm"), spec).save_pretrained(
        tmp_path / "m"
    )
    for flavour in ("ort", "trt"):
        out = tmp_path / flavour
        manifest = export_tensorrt(model_dir, out, flavour=flavour, precision="fp16")
        assert manifest.components["transformer"].verify is not None  # checked against eager on the GPU
        engine = TrtEngine(out, model_dir)
        assert engine.denoiser() is not None
