"""ONNX export of tiny models, ONNX Runtime parity at shapes other than the traced ones, the export folder
read without osp, and `osp export` / `osp generate --engine onnx` end to end with their bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from osp.cli.main import cli
from osp.dit.latte import LATTE_CONFIGS, Latte
from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp.errors import OspError
from osp.export.manifest import ExportError, read_manifest
from osp.export.onnx import compare, export_component, onnx_session
from osp.export.runtime import OrtEngine
from osp.export.specs import (
    Axis,
    ComponentSpec,
    TensorSpec,
    transformer_spec,
    vae_decoder_spec,
    vae_encoder_spec,
)
from osp.io.video import read_video
from osp.pipelines.text_to_video import PipelineSpec, TextToVideo, load_pipeline
from osp.text import load_text_encoder
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    for param in model.parameters():
        if param.requires_grad:  # Latte's frozen sin-cos tables stay what they are
            param.data.normal_(0, 0.1)
    return model.eval()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def t2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    transformer = _randomise(LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"].replace(caption_channels=384)))
    vae = CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).eval()
    spec = PipelineSpec(frames=9, size=(32, 48), steps=3, sampler="ddim", guidance=3.0, fps=8)
    pipe = TextToVideo(transformer, vae, load_text_encoder("minilm"), spec)
    return pipe.save_pretrained(tmp_path_factory.mktemp("models") / "t2v")


@pytest.fixture(scope="module")
def onnx_dir(t2v_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`osp export` of the transformer and VAE decoder and encoder, traced at 9 frames x 32x48."""
    out = tmp_path_factory.mktemp("exports") / "onnx"
    code, text = run("export", "--model", str(t2v_dir), "--target", "onnx", "--out", str(out))
    assert code == 0, text
    assert "transformer: transformer.onnx, 6 ai.onnx::Attention; max abs error" in text
    return out


def _ort_vs_eager(path: Path, spec_inputs: list[str], module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]
                  ) -> float:  # fmt: skip
    with torch.no_grad():
        expected = module(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = onnx_session(path).run(None, {n: t.numpy() for n, t in zip(spec_inputs, inputs, strict=True)})
    check = compare("test", [e.numpy() for e in expected], got, 1e-4, {}, "onnxruntime")
    return check.max_rel


def test_manifest_describes_the_export(onnx_dir: Path, t2v_dir: Path) -> None:
    data = json.loads((onnx_dir / "manifest.json").read_text())
    assert (data["target"], data["flavour"], data["opset"], data["model_kind"]) == (
        "onnx",
        "ort",
        23,
        "text-to-video",
    )
    transformer = data["components"]["transformer"]
    assert [i["name"] for i in transformer["inputs"]] == [
        "latents", "timestep", "encoder_hidden_states", "encoder_attention_mask"
    ]  # fmt: skip
    assert transformer["inputs"][0]["shape"] == ["batch", 4, "latent_frames", "latent_height", "latent_width"]
    assert transformer["inputs"][3]["dtype"] == "bool"
    assert transformer["attention_nodes"] == {"ai.onnx::Attention": 6}  # 2 layers x (self, cross, temporal)
    decoder = data["components"]["vae_decoder"]
    assert decoder["outputs"][0]["shape"] == [
        "batch",
        3,
        "4*latent_frames-3",
        "8*latent_height",
        "8*latent_width",
    ]
    assert decoder["verify"]["max_rel"] < 1e-4 and decoder["verify"]["sizes"] != decoder["sample"]
    import onnx

    graph = onnx.load(str(onnx_dir / "vae_decoder.onnx")).graph
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [
        "batch", 4, "latent_frames", "latent_height", "latent_width"
    ]  # fmt: skip
    assert read_manifest(onnx_dir).source_weights_sha256 == data["source_weights_sha256"]


def test_t2v_transformer_and_decoder_run_at_other_shapes(onnx_dir: Path, t2v_dir: Path) -> None:
    pipe = load_pipeline(t2v_dir)
    # Traced at batch 2, 3 latent frames, 4x6 latents, 64 tokens; run at batch 1 / 3, 5 frames, 6x4, 20.
    spec = transformer_spec(pipe.transformer, (3, 4, 6), 64)
    for sizes in ({"batch": 1, "latent_frames": 5, "latent_height": 6, "latent_width": 4, "text_length": 20},
                  {"batch": 3, "latent_frames": 2, "latent_height": 2, "latent_width": 8, "text_length": 7}):  # fmt: skip
        inputs = spec.make_inputs(sizes, seed=3)
        assert (
            _ort_vs_eager(onnx_dir / "transformer.onnx", [s.name for s in spec.inputs], spec.module, inputs)
            < 1e-4
        )
    dec = vae_decoder_spec(pipe.vae, (3, 4, 6))
    inputs = dec.make_inputs({"batch": 2, "latent_frames": 4, "latent_height": 3, "latent_width": 5})
    assert _ort_vs_eager(onnx_dir / "vae_decoder.onnx", ["latents"], dec.module, inputs) < 1e-4


def test_vae_encoder_export_is_dynamic_in_batch_frames_and_size(onnx_dir: Path, t2v_dir: Path) -> None:
    entry = read_manifest(onnx_dir).components["vae_encoder"]
    assert entry.verify is not None and entry.verify.max_rel < 1e-4
    assert entry.outputs[0].shape == ["batch", 4, "(frames-1)/4+1", "height/8", "width/8"]
    spec = vae_encoder_spec(load_pipeline(t2v_dir).vae, 9, (32, 48))
    inputs = spec.make_inputs({"batch": 3, "frames": 17, "height": 32, "width": 8}, seed=5)
    assert _ort_vs_eager(onnx_dir / "vae_encoder.onnx", ["video"], spec.module, inputs) < 1e-4


def _tokens(encoder, prompts: list[str], length: int) -> dict[str, np.ndarray]:
    tokens = encoder.tokenizer(
        prompts, padding="max_length", truncation=True, max_length=length, return_tensors="np"
    )
    return {
        "input_ids": tokens["input_ids"].astype(np.int64),
        "attention_mask": tokens["attention_mask"].astype(np.int64),
    }


def test_text_encoder_export_gives_the_encoders_states(t2v_dir: Path, tmp_path: Path) -> None:
    """MiniLM exported alone, run by ONNX Runtime at batch sizes and token counts other than the traced
    ones, against what the text encoder itself (transformers) hands the denoiser."""
    out = tmp_path / "text"
    code, text = run("export", "--model", str(t2v_dir), "--target", "onnx", "--out", str(out),
                     "--components", "text_encoder")  # fmt: skip
    assert code == 0, text
    manifest = read_manifest(out)
    assert list(manifest.components) == ["text_encoder"]
    entry = manifest.components["text_encoder"]
    assert [i.name for i in entry.inputs] == ["input_ids", "attention_mask"]
    assert entry.verify is not None and entry.verify.max_rel < 1e-4
    encoder = load_pipeline(t2v_dir).text_encoder
    session = onnx_session(out / entry.file)
    for prompts, length in ((["a red circle moving left"], 12),
                            (["a blue square", "on a white background a yellow triangle slides up", "x"], 24)):  # fmt: skip
        expected = encoder.encode(prompts, max_length=length)
        (got,) = session.run(None, _tokens(encoder, prompts, length))
        np.testing.assert_allclose(got, expected.states.numpy(), rtol=1e-4, atol=1e-4)


def test_class_latte_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # One spatial + one temporal block: every code path of the tiny preset at half its export time.
    model = _randomise(Latte(LATTE_CONFIGS["latte-tiny"].replace(depth=2)))
    spec = transformer_spec(model, (3, 6, 6))  # not the 5x8x8 training size, where stored tables are used
    entry = export_component(spec, tmp_path, opset=23)
    assert entry.attention_nodes == {"ai.onnx::Attention": 2}
    names = [s.name for s in spec.inputs]
    assert names == ["latents", "timestep", "class_labels"]
    for sizes in ({"batch": 1, "latent_frames": 5, "latent_height": 8, "latent_width": 8},
                  {"batch": 4, "latent_frames": 2, "latent_height": 4, "latent_width": 10}):  # fmt: skip
        inputs = spec.make_inputs(sizes, seed=2)
        assert _ort_vs_eager(tmp_path / "transformer.onnx", names, spec.module, inputs) < 1e-4


def test_parity_failure_names_the_component() -> None:
    with pytest.raises(ExportError, match="vae_decoder: onnxruntime differs"):
        compare("vae_decoder", [np.ones((1, 3))], [np.zeros((1, 3))], 1e-3, {"batch": 1}, "onnxruntime")
    with pytest.raises(ExportError, match=r"transformer: .* shape"):
        compare("transformer", [np.ones((1, 3))], [np.ones((1, 4))], 1e-3, {}, "onnxruntime")


BLOCK_OSP_AND_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("osp", "torch"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_decode_script_needs_neither_osp_nor_torch(onnx_dir: Path, t2v_dir: Path, tmp_path: Path) -> None:
    latents = torch.randn(1, 4, 4, 3, 5, generator=torch.Generator().manual_seed(7))
    np.save(tmp_path / "latents.npy", latents.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = ROOT / "examples" / "onnx_decode.py"
    args = [str(onnx_dir), str(tmp_path / "latents.npy"), str(tmp_path / "frames.npy")]
    proc = subprocess.run([sys.executable, "-c", BLOCK_OSP_AND_TORCH, str(script), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    frames = np.load(tmp_path / "frames.npy")
    with torch.no_grad():
        video = load_pipeline(t2v_dir).vae.decode_latents(latents)
    expected = ((video + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    assert frames.shape == (1, 13, 24, 40, 3)
    assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1  # rounding at .5 boundaries


def test_ort_engine_generates_what_torch_generates(onnx_dir: Path, t2v_dir: Path) -> None:
    pipe = load_pipeline(t2v_dir)
    assert isinstance(pipe, TextToVideo)
    engine = OrtEngine(onnx_dir, t2v_dir)
    eager = pipe.generate(["a red circle"], seed=3, steps=2)
    onnx = pipe.generate(
        ["a red circle"], seed=3, steps=2, denoiser=engine.denoiser(), decoder=engine.decoder()
    )
    torch.testing.assert_close(onnx.latents, eager.latents, rtol=1e-3, atol=1e-3)  # float32 rounding, 2 steps
    diff = max((a.int() - b.int()).abs().max().item() for a, b in zip(onnx.videos, eager.videos, strict=True))
    assert diff <= 1


def test_generate_with_onnx_engine_writes_a_matching_video(
    onnx_dir: Path, t2v_dir: Path, tmp_path: Path
) -> None:
    videos = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / f"{engine}.mp4"
        code, text = run("generate", "a blue square", "--model", str(t2v_dir), "-o", str(out), "--steps", "2",
                         "--engine", engine, "--engine-dir", str(onnx_dir), "-q")  # fmt: skip
        assert code == 0, text
        videos[engine] = read_video(out).frames.float()
    assert videos["onnx"].shape == (9, 3, 32, 48)
    # Float rounding flips a few uint8 values and the encoder's choices then move the decoded frames by
    # about one level on average (seen: 0.6-1.06 between runs); a wrong engine is tens of levels off.
    assert (videos["onnx"] - videos["torch"]).abs().mean() < 3.0  # same pixels up to the video codec


def test_export_and_generate_bad_input(onnx_dir: Path, t2v_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(onnx_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["source_weights_sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    gen = ["generate", "a cat", "--model", str(t2v_dir), "-o", str(tmp_path / "o.mp4"), "-q"]
    cases = [
        (["export", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "x")], "none is neither a folder nor a model name"),
        (["export", "--model", str(t2v_dir), "--target", "coreml"], "Invalid value for '--target'"),
        (["export", "--model", str(t2v_dir)], "--out"),
        (["export", "--model", str(t2v_dir), "--out", str(tmp_path / "x"), "--opset", "30"], "opset: 30"),
        (["export", "--model", str(t2v_dir), "--out", str(tmp_path / "x"), "--components", "refiner"],
         "components: unknown refiner"),
        ([*gen, "--engine", "onnx"], "--engine-dir"),
        ([*gen, "--engine", "onnx", "--engine-dir", str(tmp_path / "missing")], "no such folder"),
        ([*gen, "--engine", "onnx", "--engine-dir", str(t2v_dir)], "not an osp export folder"),
        ([*gen, "--engine", "onnx", "--engine-dir", str(other)], "exported from other weights"),
        ([*gen, "--engine", "onnx", "--engine-dir", str(onnx_dir), "--frames", "161"], "latent_frames"),
        ([*gen, "a dog", "a bird", "--engine", "onnx", "--engine-dir", str(onnx_dir)], "batch"),
    ]  # fmt: skip
    for args, message in cases:
        code, text = run(*args)
        assert code == 2, (args, text)
        assert message in text and "Traceback" not in text, (args, text)
        assert len([line for line in text.splitlines() if line.startswith("Error")]) == 1, text
    assert not (tmp_path / "x").exists() and not (tmp_path / "o.mp4").exists()


def test_tensorrt_target_without_tensorrt_is_a_clear_error(t2v_dir: Path, tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    code, text = run("export", "--model", str(t2v_dir), "--target", "tensorrt", "--out", str(tmp_path / "e"))
    assert code == 2 and "TensorRT is not installed" in text and "Traceback" not in text


def test_trt_flavour_holds_one_osp_attention_node_per_call(tmp_path: Path) -> None:
    pytest.importorskip("osp.kernels.onnx")
    torch.manual_seed(0)
    model = _randomise(LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"].replace(num_layers=1)))
    spec = transformer_spec(model, (3, 4, 6), 16)
    try:
        entry = export_component(spec, tmp_path, flavour="trt")
    except OspError as err:
        pytest.fail(f"trt flavour export failed: {err}")
    # Self-attention (spatial, temporal) has no mask; cross-attention carries the caption mask.
    assert entry.attention_nodes == {"osp::attention": 2, "osp::attention_masked": 1}


def test_ort_mha_flavour_runs_in_onnx_runtime_at_other_shapes(t2v_dir: Path, tmp_path: Path) -> None:
    """flavour ort-mha: every attention call is one com.microsoft::MultiHeadAttention node (the caption
    mask as its key_padding_mask), and ONNX Runtime's CPU provider matches eager at other shapes."""
    pipe = load_pipeline(t2v_dir)
    spec = transformer_spec(pipe.transformer, (3, 4, 6), 16)
    entry = export_component(spec, tmp_path, flavour="ort-mha")
    layers = pipe.transformer.config.num_layers
    assert entry.attention_nodes == {"com.microsoft::MultiHeadAttention": 3 * layers}
    assert entry.verify is not None and entry.verify.max_rel < 1e-4
    import onnx

    graph = onnx.load(str(tmp_path / "transformer.onnx")).graph
    masked = [n for n in graph.node if n.op_type == "MultiHeadAttention" and len(n.input) > 4 and n.input[4]]
    assert len(masked) == layers  # the cross-attention of each spatial block
    inputs = spec.make_inputs(
        {"batch": 3, "latent_frames": 2, "latent_height": 2, "latent_width": 8, "text_length": 7}, seed=4
    )
    inputs[3][0, 3:] = False  # a short caption: padding keys must be ignored
    assert (
        _ort_vs_eager(tmp_path / "transformer.onnx", [s.name for s in spec.inputs], spec.module, inputs)
        < 1e-4
    )


def test_ort_mha_flavour_is_refused_for_tensorrt(t2v_dir: Path, tmp_path: Path) -> None:
    code, text = run("export", "--model", str(t2v_dir), "--target", "tensorrt", "--flavour", "ort-mha",
                     "--out", str(tmp_path / "e"))  # fmt: skip
    assert code == 2 and "TensorRT cannot parse" in text and "Traceback" not in text
    assert not (tmp_path / "e").exists()


def test_int8_export_quantizes_the_transformer_and_keeps_the_vae(t2v_dir: Path, tmp_path: Path) -> None:
    """--precision int8: the transformer's MatMul weights become int8 (a smaller file, integer matmuls),
    the VAE decoder stays fp32, and the int8 transformer still tracks eager PyTorch at another shape."""
    import onnx

    out = tmp_path / "int8"
    code, text = run("export", "--model", str(t2v_dir), "--target", "onnx", "--precision", "int8",
                     "--components", "transformer,vae_decoder", "--out", str(out))  # fmt: skip
    assert code == 0, text
    assert "transformer: transformer.onnx (int8 MatMul weights)" in text
    manifest = read_manifest(out)
    assert manifest.precision == "int8"
    transformer, decoder = manifest.components["transformer"], manifest.components["vae_decoder"]
    assert transformer.quantized == "int8" and decoder.quantized is None
    ops = {name: {n.op_type for n in onnx.load(str(out / f"{name}.onnx")).graph.node}
           for name in ("transformer", "vae_decoder")}  # fmt: skip
    assert "MatMulInteger" in ops["transformer"] and "MatMulInteger" not in ops["vae_decoder"]
    assert transformer.attention_nodes == {"ai.onnx::Attention": 6}  # attention itself stays fp32
    pipe = load_pipeline(t2v_dir)
    spec = transformer_spec(pipe.transformer, (3, 4, 6), 16)
    fp32 = tmp_path / "fp32"
    fp32.mkdir()
    export_component(spec, fp32, verify=False)
    assert (out / "transformer.onnx").stat().st_size < (fp32 / "transformer.onnx").stat().st_size
    for path, want in ((fp32, True), (out, False)):  # no weight matrix left in fp32 after quantization
        graph = onnx.load(str(path / "transformer.onnx")).graph
        weights = {
            i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
        }
        assert any(n.op_type == "MatMul" and n.input[1] in weights for n in graph.node) is want
    assert transformer.verify is not None and decoder.verify is not None
    assert 1e-4 < transformer.verify.max_rel < 0.1  # really quantized, still close
    assert decoder.verify.max_rel < 1e-4
    inputs = spec.make_inputs(
        {"batch": 2, "latent_frames": 2, "latent_height": 4, "latent_width": 8, "text_length": 9}, seed=5
    )
    with torch.no_grad():
        expected = pipe.transformer(*inputs).numpy()
    got = onnx_session(out / "transformer.onnx").run(
        None, {s.name: t.numpy() for s, t in zip(spec.inputs, inputs, strict=True)}
    )[0]
    rms = float(np.sqrt(((got - expected) ** 2).mean() / (expected**2).mean()))
    assert rms < 0.05, rms
    eager = pipe.generate(["a red circle"], seed=3, steps=2)
    engine = OrtEngine(out, t2v_dir)
    int8 = pipe.generate(
        ["a red circle"], seed=3, steps=2, denoiser=engine.denoiser(), decoder=engine.decoder()
    )
    pixels = (int8.videos[0].float() - eager.videos[0].float()).abs().mean().item()
    assert 0 < pixels < 8, pixels  # 0..255 pixels: close to eager, not the same file


def test_int8_bad_precision_and_flavour(t2v_dir: Path, tmp_path: Path) -> None:
    cases = [
        (["--precision", "int8", "--flavour", "trt"], "int8 is for ONNX Runtime"),
        (["--precision", "fp16"], "ONNX files are fp32 or int8, not fp16"),
    ]
    for args, message in cases:
        code, text = run(
            "export", "--model", str(t2v_dir), "--target", "onnx", "--out", str(tmp_path / "e"), *args
        )
        assert code == 2 and message in text and "Traceback" not in text, text
    assert not (tmp_path / "e").exists()


def test_eval_adherence_runs_through_an_exported_engine(
    onnx_dir: Path, t2v_dir: Path, tmp_path: Path
) -> None:
    """`osp eval adherence --engine onnx` samples with ONNX Runtime: the same clips as eager, same seeds."""
    reports = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / engine
        code, text = run("eval", "adherence", "--model", str(t2v_dir), "--split", "train", "--limit", "2",
                         "--seeds", "1", "--steps", "2", "--engine", engine, "--engine-dir", str(onnx_dir),
                         "-o", str(out), "-q")  # fmt: skip
        assert code == 0, text
        reports[engine] = json.loads((out / "report.json").read_text())
    assert reports["onnx"]["engine"] == "onnx" and reports["torch"]["engine"] == "torch"
    for a, b in zip(reports["torch"]["videos"], reports["onnx"]["videos"], strict=True):
        assert a["seed"] == b["seed"]
        clips = [
            read_video(tmp_path / engine / v["path"]).frames.float()
            for engine, v in (("torch", a), ("onnx", b))
        ]
        assert (clips[0] - clips[1]).abs().mean() < 3.0  # same pixels up to the video codec
    code, text = run("eval", "adherence", "--labels", str(tmp_path / "x.jsonl"), "--engine", "onnx", "-q")
    assert code == 2 and "takes no --model, --engine or --engine-dir" in text


class _Upsample(torch.nn.Module):
    def __init__(self, scale: tuple[float, float, float] | None) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:  # sizes instead of factors, following the input's own (dynamic) sizes
            size = (x.shape[2], 2 * x.shape[3], x.shape[4] + 3)
            return torch.nn.functional.interpolate(x, size=size, mode="nearest")
        return torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")


class _VarMean(torch.nn.Module):
    def __init__(self, dims: tuple[int, ...], keepdim: bool, correction: int) -> None:
        super().__init__()
        self.dims, self.keepdim, self.correction = dims, keepdim, correction

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.var_mean(x, dim=self.dims, correction=self.correction, keepdim=self.keepdim)


def _video_spec(name: str, module: torch.nn.Module, outputs: list[TensorSpec]) -> ComponentSpec:
    axes = {a: Axis(a, 2, 16) for a in ("batch", "frames", "height", "width")}
    inputs = [TensorSpec("x", ("batch", 3, "frames", "height", "width"))]
    sample = {"batch": 2, "frames": 3, "height": 4, "width": 6}
    return ComponentSpec(name, module.eval(), inputs, outputs, axes, sample, check={**sample, "width": 7})


@pytest.mark.parametrize(
    "scale", [(1.0, 2.0, 2.0), (2.0, 1.0, 1.0), (2.0, 3.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1.5, 2.0), None]
)
def test_nearest_upsampling_exports_exactly(scale: tuple[float, float, float] | None, tmp_path: Path) -> None:
    """Whole-factor nearest up-sampling leaves the exported graph without a Resize (osp spells it as
    copies) and gives PyTorch's values exactly at untraced sizes; a fractional factor or sizes instead
    of factors keep Resize."""
    import onnx

    out = ("batch", 3, "frames_out", "height_out", "width_out")
    spec = _video_spec("upsample", _Upsample(scale), [TensorSpec("y", out)])
    export_component(spec, tmp_path)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "upsample.onnx")).graph.node}
    assert ("Resize" in ops) is (scale in ((1.0, 1.5, 2.0), None)), ops
    session = onnx_session(tmp_path / "upsample.onnx")
    for shape in ((1, 3, 2, 5, 9), (3, 3, 4, 3, 2)):
        x = torch.randn(shape)
        expected = _Upsample(scale)(x)
        got = session.run(None, {"x": x.numpy()})[0]
        assert got.shape == expected.shape and np.array_equal(got, expected.numpy())


@pytest.mark.parametrize(
    ("dims", "keepdim", "correction"), [((2, 4), True, 0), ((1, 2, 4), False, 1), ((-1,), True, 2)]
)
def test_var_mean_exports_to_pytorchs_values(
    dims: tuple[int, ...], keepdim: bool, correction: int, tmp_path: Path
) -> None:
    """GroupNorm's statistics (var_mean over non-adjacent axes), reduced axis run by axis run in the
    exported graph, match PyTorch's, with or without kept dims and with Bessel-type corrections."""
    x = torch.randn(3, 3, 5, 4, 7) * 3 + 2
    module = _VarMean(dims, keepdim, correction)
    with torch.no_grad():
        var, mean = module(x)
    outs = [TensorSpec("var", tuple(f"v{i}" for i in range(var.dim()))),
            TensorSpec("mean", tuple(f"m{i}" for i in range(mean.dim())))]  # fmt: skip
    spec = _video_spec("var_mean", module, outs)
    export_component(spec, tmp_path)
    got_var, got_mean = onnx_session(tmp_path / "var_mean.onnx").run(None, {"x": x.numpy()})
    assert got_var.shape == var.shape and got_mean.shape == mean.shape
    np.testing.assert_allclose(got_mean, mean.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_var, var.numpy(), rtol=1e-5, atol=1e-5)
