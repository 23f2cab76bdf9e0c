"""A prompt to a video without Python: `osp export --bundle-for`, the portable noise, and the JavaScript
runtime in examples/js (Node.js and headless Chromium) against osp's own ONNX engine.

The JavaScript side needs node (and, for everything but the noise and sampler arithmetic, the packages
of examples/js: `npm ci` there, which the `node_modules` fixture runs once when they are missing); the
page test needs Chromium. Each test skips with the reason when its tool is absent.

The bundle of the bundled model is exported once and kept in pytest's cache (.pytest_cache), keyed by
osp's sources and the exporting packages' versions, so only the first run pays the export (about a
minute of CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from osp.cli.main import cli
from osp.diffusion.guidance import combine_guidance
from osp.diffusion.portable_noise import philox4x32, portable_randn
from osp.diffusion.samplers import make_scheduler
from osp.errors import ConfigError
from osp.export.bundle import VARIANTS, export_bundle, read_bundle
from osp.export.manifest import read_manifest
from osp.export.onnx import onnx_session
from osp.export.runtime import OrtEngine
from osp.io.video import from_model
from osp.pipelines.bundled import bundled_model_dir
from osp.pipelines.text_to_video import TextToVideo, load_pipeline
from osp.text import TextEmbeddings, bundled_minilm_dir

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "examples" / "js"
PROMPT = "a red circle moving left on a black background"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Both sides run the same ONNX files from the same noise; Node's onnxruntime (1.31) and Python's (1.32)
# differ by float rounding, which 30 sampling steps carry to at most one level of 255 on a handful of
# values (measured: 1 of 208,896 values, by 1). The bound leaves room for other CPUs' kernels.
MAX_LEVELS = 2
MAX_DIFFERING = 1e-3


def node(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", *args], cwd=JS, capture_output=True, text=True, timeout=timeout)


def node_eval(script: str) -> str:
    """Run an ES-module snippet in examples/js (its imports resolve there) and return its stdout."""
    done = node("--input-type=module", "-e", script)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="session")
def has_node() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (examples/js needs Node.js 20+)")


@pytest.fixture(scope="session")
def node_modules(has_node: None) -> Path:
    """examples/js/node_modules, installed from the lock file (CPU binaries only) when missing."""
    modules = JS / "node_modules"
    if not (modules / ".package-lock.json").is_file():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed, and examples/js/node_modules is missing")
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}  # no CUDA download
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(
                f"npm ci in examples/js failed (is the npm registry reachable?): {done.stderr[-500:]}"
            )
    return modules


def _bundle_key() -> str:
    digest = hashlib.sha256()
    for folder in (ROOT / "osp", ROOT / "export"):
        for path in sorted(folder.rglob("*.py")):
            digest.update(path.read_bytes())
    for package in ("torch", "onnx", "onnxscript", "onnxruntime", "transformers"):
        digest.update(metadata.version(package).encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`osp export --bundle-for web` of the bundled model with every variant (cached across runs unless
    pytest runs with ``-p no:cacheprovider``)."""
    store = getattr(request.config, "cache", None)
    cache = Path(store.mkdir("osp-embed-bundle")) if store else tmp_path_factory.mktemp("osp-embed-bundle")
    folder = cache / _bundle_key()
    if not (folder / "manifest.json").is_file():
        for old in cache.iterdir():
            shutil.rmtree(old, ignore_errors=True)
        result = CliRunner().invoke(cli, ["export", "--model", "osp-demo-t2v", "--target", "onnx", "--bundle-for",
                                          "web", "--variants", "fp32,fp16,int8", "--out", str(folder)])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "int8: " in result.output and " MB (text_encoder " in result.output
    return folder


class OnnxTextEncoder:
    """The bundle's text encoder file behind osp's TextEncoder interface (tokenized by transformers), so
    that the Python side runs every component from the same files as the JavaScript side."""

    def __init__(self, path: Path, base: Any) -> None:
        self.base = base
        self.session = onnx_session(path)

    @property
    def dim(self) -> int:
        return int(self.base.dim)

    @property
    def max_length(self) -> int:
        return int(self.base.max_length)

    def encode(self, prompts: Sequence[str], **_: Any) -> TextEmbeddings:
        tokens = self.base.tokenizer(list(prompts), padding="max_length", truncation=True,
                                     max_length=self.max_length, return_tensors="np")  # fmt: skip
        feeds = {i.name: tokens[i.name].astype(np.int64) for i in self.session.get_inputs()}
        (states,) = self.session.run(None, feeds)
        return TextEmbeddings(torch.from_numpy(states), torch.from_numpy(tokens["attention_mask"]).bool())

    def null(self, batch: int, *, negative_prompt: str = "", **_: Any) -> TextEmbeddings:
        return self.encode([negative_prompt]).repeat(batch)


def python_clip(bundle: Path, variant: str, seed: int, steps: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of osp's pipeline on the bundle's ONNX files, portable noise."""
    model = bundled_model_dir()
    engine = OrtEngine(bundle / variant, model)
    pipe = load_pipeline(model)
    assert isinstance(pipe, TextToVideo)
    pipe.text_encoder = OnnxTextEncoder(bundle / variant / "text_encoder.onnx", pipe.text_encoder)
    result = pipe.generate([PROMPT], seed=seed, steps=steps, noise="portable", denoiser=engine.denoiser(),
                           decoder=engine.decoder())  # fmt: skip
    return result.videos[0].permute(0, 2, 3, 1).numpy()


def assert_same_clip(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= MAX_LEVELS, f"max difference {diff.max()} levels"
    assert (diff > 0).mean() <= MAX_DIFFERING, f"{(diff > 0).mean():.2%} of values differ"
    assert expected.std() > 10  # a clip with content, not a blank one both sides agree on


def _tie(k: int) -> np.float32:
    """A float32 x whose (x + 1) * 127.5, in float32, is exactly k + 0.5."""
    x = np.float32((k + 0.5) / 127.5 - 1)
    for _ in range(64):
        scaled = (x + np.float32(1)) * np.float32(127.5)
        if scaled == k + 0.5:
            return x
        x = np.nextafter(x, np.float32(2 if scaled < k + 0.5 else -2), dtype=np.float32)
    raise AssertionError(f"no float32 lands on {k}.5")


# ------------------------------------------------------------------------------ the portable noise


def test_philox_matches_random123_known_answers() -> None:
    # Random123's kat_vectors for Philox4x32-10 (the reference implementation's published answers).
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]  # fmt: skip
    for counter, key, expected in cases:
        assert tuple(philox4x32(np.array([counter], dtype=np.uint32), key)[0]) == expected


def test_portable_noise_is_standard_normal_and_per_clip() -> None:
    from scipy import stats

    values = portable_randn((200_000,), 11).double().numpy()
    assert stats.kstest(values, "norm").pvalue > 1e-3
    assert torch.equal(portable_randn((4, 5, 8, 8), 3), portable_randn((4, 5, 8, 8), 3))
    assert not torch.equal(portable_randn((4, 5, 8, 8), 3), portable_randn((4, 5, 8, 8), 4))
    pipe = load_pipeline(bundled_model_dir())
    batch = pipe.noise(2, 17, (64, 64), 5, "portable")
    assert torch.equal(batch[1], portable_randn((4, 5, 8, 8), 6))  # clip i uses seed + i
    for bad in (-1, 2**53, 1.5):
        with pytest.raises(ConfigError, match="seed"):
            portable_randn((2,), bad)  # type: ignore[arg-type]


def test_js_noise_sampler_and_pixels_are_osps_to_the_bit(has_node: None, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cond, uncond, x = (rng.standard_normal(1000).astype(np.float32) for _ in range(3))
    video = rng.uniform(-1.2, 1.2, (1, 3, 2, 4, 5)).astype(np.float32)
    video[0, 0, 0, 0, :3] = [_tie(126), _tie(124), _tie(127)]  # rounding ties: to even 126, 124 and 128
    for name, array in dict(cond=cond, uncond=uncond, x=x, video=video).items():
        array.tofile(tmp_path / f"{name}.f32")
    script = f"""
        import {{ readFileSync }} from 'node:fs';
        import {{ portableNoise }} from './lib/noise.mjs';
        import {{ eulerStep, flowSchedule, guide, toFrames }} from './lib/sampler.mjs';
        const read = (n) => {{
          const bytes = readFileSync('{tmp_path}/' + n + '.f32');
          return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
        }};
        const b64 = (a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64');
        const [c, u, x] = [read('cond'), read('uncond'), read('x')];
        const both = new Float32Array([...c, ...u]);
        const v = guide(both, c.length, 2.7);
        const stepped = x.slice(); eulerStep(stepped, v, Math.fround(0.7333333), Math.fround(0.7));
        const out = {{
          noise: [0, 7, 2 ** 40 + 3].map((seed) => b64(portableNoise(65537, seed))),
          schedules: [1, 7, 30, 1000].map((n) => {{ const s = flowSchedule(n); return [b64(s.sigmas), b64(s.timesteps)]; }}),
          guided: b64(v), stepped: b64(stepped),
          frames: toFrames(read('video'), 2, 4, 5).map((f) => Array.from(f)),
        }};
        console.log(JSON.stringify(out));
    """
    out = json.loads(node_eval(script))

    def f32(text: str) -> np.ndarray:
        import base64

        return np.frombuffer(base64.b64decode(text), dtype=np.float32)

    for got, seed in zip(out["noise"], [0, 7, 2**40 + 3], strict=True):
        assert np.array_equal(f32(got), portable_randn((65537,), seed).numpy())
    for (sigmas, timesteps), steps in zip(out["schedules"], [1, 7, 30, 1000], strict=True):
        scheduler = make_scheduler("flow-euler", steps)  # osp's FlowEuler
        assert np.array_equal(f32(sigmas), scheduler.sigmas.numpy())
        assert np.array_equal(f32(timesteps), scheduler.timesteps.numpy())
    guided = combine_guidance(torch.from_numpy(cond), torch.from_numpy(uncond), 2.7)
    assert np.array_equal(f32(out["guided"]), guided.numpy())
    euler = make_scheduler("flow-euler", 1)
    euler.set_timesteps([0.7333333, 0.7])  # one step from sigma 0.7333333 to 0.7
    stepped = euler.step(guided, euler.timesteps[0], torch.from_numpy(x))[0]
    assert np.array_equal(f32(out["stepped"]), stepped.numpy())
    frames = from_model(torch.from_numpy(video[0])).permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
    got = np.array(out["frames"], dtype=np.uint8).reshape(2, 4, 5, 4)
    assert np.array_equal(got[..., :3], frames) and (got[..., 3] == 255).all()


def test_js_tokenizer_gives_transformers_ids(node_modules: Path) -> None:
    from transformers import AutoTokenizer

    folder = bundled_minilm_dir()
    prompts = ["a red circle moving left on a black background", "", "Crème brûlée, naïve café — OK?!",
               "一只猫 on a skateboard", "word " * 80]  # fmt: skip
    script = f"""
        import {{ readFileSync }} from 'node:fs';
        import {{ Tokenizer }} from '@huggingface/tokenizers';
        import {{ tokenIds }} from './lib/pipeline.mjs';
        const read = (n) => JSON.parse(readFileSync('{folder}/' + n, 'utf8'));
        const tokenizer = new Tokenizer(read('tokenizer.json'), read('tokenizer_config.json'));
        console.log(JSON.stringify({json.dumps(prompts)}.map((p) => tokenIds(tokenizer, p, 64))));
    """
    got = json.loads(node_eval(script))
    reference = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    expected = reference(prompts, truncation=True, max_length=64)["input_ids"]
    assert got == expected
    assert len(got[-1]) == 64  # the long prompt was cut, its closing [SEP] kept


# ------------------------------------------------------------------------------------ the bundle


def test_bundle_holds_everything_a_runtime_needs(bundle: Path) -> None:
    import onnx

    manifest = read_bundle(bundle)
    assert (manifest.format, manifest.format_version, manifest.target) == ("osp-bundle", 1, "web")
    assert (manifest.sampler.scheduler, manifest.sampler.steps, manifest.sampler.guidance) == (
        "flow-euler",
        30,
        2.5,
    )
    assert manifest.shapes.latent == (4, 5, 8, 8) and manifest.shapes.text_length == 64
    assert manifest.noise["name"] == "philox4x32-10-box-muller" and manifest.tokenizer.pad_id == 0
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(manifest.tokenizer.files)
    assert list(manifest.variants) == list(VARIANTS) and manifest.default_variant == "fp32"
    sizes = {}
    for name, variant in manifest.variants.items():
        assert set(variant.files) == {"text_encoder", "transformer", "vae_decoder"}
        for entry in variant.files.values():
            assert (bundle / entry.file).stat().st_size == entry.bytes
        sizes[name] = variant.bytes
        assert read_manifest(bundle / name).precision == name  # each variant is an osp export folder too
    assert 0.45 < sizes["fp16"] / sizes["fp32"] < 0.55 and sizes["int8"] < 0.8 * sizes["fp16"]
    int8 = onnx.load(str(bundle / "int8" / "transformer.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert "MatMulInteger" in ops and not ops & {"MatMul", "Gemm"}  # every linear layer quantized
    fp16 = onnx.load(str(bundle / "fp16" / "vae_decoder.onnx"))
    kinds = {init.data_type for init in fp16.graph.initializer if np.prod(init.dims) >= 1024}
    assert kinds == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_node_generates_the_clip_osps_onnx_engine_generates(
    bundle: Path, node_modules: Path, tmp_path: Path, variant: str
) -> None:
    done = node("cli.mjs", PROMPT, "--bundle", str(bundle), "--variant", variant, "--seed", "3", "-q",
                "-o", str(tmp_path / "clip.png"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)["written"]
    got = np.stack([np.asarray(Image.open(p).convert("RGBA")) for p in written])
    assert (got[..., 3] == 255).all()
    assert_same_clip(got[..., :3], python_clip(bundle, variant, seed=3))


def test_node_writes_a_gif(bundle: Path, node_modules: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip.gif"
    done = node("cli.mjs", PROMPT, "--bundle", str(bundle), "--steps", "2", "-q", "-o", str(out))
    assert done.returncode == 0, done.stderr
    with Image.open(out) as gif:
        assert (gif.n_frames, gif.size) == (17, (64, 64))


def test_osp_generate_runs_a_bundle_variant_with_portable_noise(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    result = CliRunner().invoke(cli, ["generate", PROMPT, "--engine", "onnx", "--engine-dir", str(bundle / "fp16"),
                                      "--noise", "portable", "--steps", "2", "-q", "-o", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0


def test_node_bad_inputs_get_one_clear_line(bundle: Path, node_modules: Path, tmp_path: Path) -> None:
    future = tmp_path / "future"
    future.mkdir()
    data = json.loads((bundle / "manifest.json").read_text())
    (future / "manifest.json").write_text(json.dumps({**data, "format_version": 2}))
    cases = [
        (["--bundle", str(tmp_path / "missing")], "not an osp bundle (no manifest.json)"),
        (["--bundle", str(future)], "bundle format version 2; this library reads version 1"),
        (["--bundle", str(bundle), "--variant", "bf16"], "the bundle holds fp32, fp16, int8, not bf16"),
        (["--bundle", str(bundle), "--seed=-4"], "seed: an integer in [0, 2^53)"),
    ]
    for args, message in cases:
        done = node("cli.mjs", PROMPT, *args, "-q", "-o", str(tmp_path / "x.gif"))
        assert done.returncode == 2 and done.stderr.startswith("error: ")
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = node("cli.mjs", "  ", "--bundle", str(bundle), "-q", "-o", str(tmp_path / "x.gif"))
    assert (done.returncode, done.stderr.strip()) == (2, "error: prompt: give a non-empty prompt")
    assert not (tmp_path / "x.gif").exists()


def test_bundle_export_bad_inputs(tmp_path: Path) -> None:
    model = tmp_path / "ddim-model"
    shutil.copytree(bundled_model_dir(), model)
    spec = json.loads((model / "pipeline.json").read_text())
    (model / "pipeline.json").write_text(json.dumps({**spec, "sampler": "ddim"}))
    with pytest.raises(ConfigError, match=r"samples with flow-euler; .* samples with ddim"):
        export_bundle(model, tmp_path / "out")
    with pytest.raises(ConfigError, match="--variants: choose from fp32, fp16, int8, got bf16"):
        export_bundle(bundled_model_dir(), tmp_path / "out", variants=["bf16"])
    runner = CliRunner()
    for args, message in [
        (["--target", "tensorrt", "--bundle-for", "node"], "a bundle holds ONNX files; use --target onnx"),
        (["--bundle-for", "web", "--precision", "int8"], "choose its weights with --variants"),
        (["--variants", "fp16"], "add --bundle-for node or web"),
    ]:
        result = runner.invoke(
            cli, ["export", "--model", "osp-demo-t2v", "--out", str(tmp_path / "o"), *args]
        )
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------- the web page


def test_web_page_types_a_prompt_and_plays_the_clip(bundle: Path, node_modules: Path, tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    shot, frames = tmp_path / "page.png", tmp_path / "clip.rgba"
    done = node("scripts/web-check.mjs", "--bundle", str(bundle), "--prompt", PROMPT, "--seed", "3",
                "--steps", "8", "--variant", "fp32", "--chromium", CHROMIUM, "--screenshot", str(shot),
                "--frames", str(frames), timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["backend"] == "wasm" and report["status"].startswith(f"“{PROMPT}”: 17 frames at 64×64")
    with Image.open(shot) as page:
        assert page.size == (820, 720)
    got = np.fromfile(frames, dtype=np.uint8).reshape(17, 64, 64, 4)[..., :3]
    assert_same_clip(got, python_clip(bundle, "fp32", seed=3, steps=8))
