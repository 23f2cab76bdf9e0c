"""`osp generate --prompts`: the same files from 1 or 2 processes (gloo), resuming a killed run, and
prompts files that name their bad line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from osp.cli.main import cli
from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp.io.video import probe_video
from osp.pipelines.text_to_video import PipelineSpec, TextToVideo
from osp.text import load_text_encoder
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE

PROMPTS = [
    {"prompt": "a red circle moving left"},
    {"prompt": "a blue square", "seed": 42},
    {"prompt": "a green triangle moving up", "negative_prompt": "blurry"},
    {"prompt": "a yellow circle", "name": "yellow"},
    {"prompt": "a white square on black"},
    {"prompt": "a red triangle moving right"},
]
FILES = [
    "00000_a-red-circle-moving-left.mp4", "00001_a-blue-square.mp4", "00002_a-green-triangle-moving-up.mp4",
    "yellow.mp4", "00004_a-white-square-on-black.mp4", "00005_a-red-triangle-moving-right.mp4",
]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    transformer = LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"].replace(caption_channels=384))
    for param in transformer.parameters():  # zero-initialised outputs would make every clip grey
        param.data.normal_(0, 0.1)
    vae = CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).eval()
    spec = PipelineSpec(frames=5, size=(32, 32), steps=2, sampler="ddim", guidance=3.0, fps=8)
    pipe = TextToVideo(transformer.eval(), vae, load_text_encoder("minilm"), spec)
    return pipe.save_pretrained(tmp_path_factory.mktemp("models") / "t2v")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    return path


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every process computes with one thread: CPU convolutions sum in a thread-count-dependent order."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, prompts_file: Path
) -> dict[str, bytes]:
    """The six clips made by one process, one thread."""
    out = tmp_path_factory.mktemp("one") / "clips"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, text = run(
            "generate", "--prompts", str(prompts_file), "-o", str(out), "--model", str(model_dir), "-q"
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0, text
    assert "6 clips made, 0 already there" in text
    return contents(out)


def test_one_process_writes_the_clips_and_their_manifest(
    reference: dict[str, bytes], model_dir: Path
) -> None:
    assert sorted(reference) == sorted([*FILES, "manifest.jsonl", "run.json"])
    rows = [json.loads(line) for line in reference["manifest.jsonl"].decode().splitlines()]
    assert [r["file"] for r in rows] == FILES
    assert [r["seed"] for r in rows] == [0, 42, 2, 3, 4, 5]  # clip i: seed + i, unless its line says
    assert [r["negative_prompt"] for r in rows] == ["", "", "blurry", "", "", ""]
    assert {(r["model"], r["engine"], r["steps"], r["sampler"]) for r in rows} == {
        (str(model_dir.resolve()), "torch", 2, "ddim")
    }
    assert len(set(reference[f] for f in FILES)) == 6  # six different clips


def test_two_processes_write_the_same_bytes_as_one(
    tmp_path: Path, model_dir: Path, prompts_file: Path, reference: dict[str, bytes], one_thread: None
) -> None:
    out = tmp_path / "clips"
    code, text = run("generate", "--prompts", str(prompts_file), "-o", str(out), "--model", str(model_dir), "-q",
                     "--nproc", "2")  # fmt: skip
    assert code == 0, text
    assert contents(out) == reference
    info = probe_video(out / FILES[0])
    assert (info.frames, info.height, info.width) == (5, 32, 32)


def test_a_killed_run_resumes_without_redoing_finished_clips(
    tmp_path: Path, model_dir: Path, prompts_file: Path, reference: dict[str, bytes], one_thread: None
) -> None:
    out = tmp_path / "clips"
    command = [sys.executable, "-m", "osp.cli.generate", "--prompts", str(prompts_file), "-o", str(out),
               "--model", str(model_dir), "-q"]  # fmt: skip
    proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.mp4"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.mp4")}
    assert 2 <= len(finished) < len(FILES), "the run was to be killed midway"
    assert not (out / "manifest.jsonl").exists()

    code, text = run(
        "generate", "--prompts", str(prompts_file), "-o", str(out), "--model", str(model_dir), "-q"
    )
    assert code == 0, text
    assert f"{len(FILES) - len(finished)} clips made, {len(finished)} already there" in text
    assert {
        name: (p.stat().st_ino, p.stat().st_mtime_ns) for name in finished for p in [out / name]
    } == finished
    assert contents(out) == reference, "temporary files left, or clips that differ from one clean run"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prompt": "a"}\n\n{"prompt": "b"\n', "prompts.jsonl:3: not JSON"),
        ('{"prompt": "a", "neg": "x"}\n', "prompts.jsonl:1: unknown key 'neg'"),
        ('{"prompt": "a"}\n{"prompt": "b", "seed": "7"}\n', "prompts.jsonl:2: 'seed' must be an integer"),
        ('{"seed": 1}\n', "prompts.jsonl:1: 'prompt' must be a non-empty string"),
        (
            '{"prompt": "a", "name": "x"}\n{"prompt": "b", "name": "x"}\n',
            "prompts.jsonl:2: name 'x' is taken by line 1",
        ),
        ('{"prompt": "a", "name": "../x"}\n', "prompts.jsonl:1: 'name' must be"),
        ("\n\n", "holds no prompts"),
    ],
)
def test_a_malformed_prompts_file_names_the_line(
    tmp_path: Path, model_dir: Path, text: str, message: str
) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(text, encoding="utf-8")
    code, output = run(
        "generate", "--prompts", str(path), "-o", str(tmp_path / "out"), "--model", str(model_dir)
    )
    assert code == 2, output
    assert message in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()


def test_batch_options_that_do_not_fit(tmp_path: Path, model_dir: Path, prompts_file: Path) -> None:
    base = ("generate", "--model", str(model_dir), "-o", str(tmp_path / "out"))
    for args, message in [
        (("a cat", "--prompts", str(prompts_file)), "give no PROMPT arguments"),
        (("--prompts", str(prompts_file), "--grid"), "--grid: not with --prompts"),
        (("a cat", "--nproc", "2"), "--nproc: several processes share a --prompts file"),
        (("--prompts", str(tmp_path / "none.txt")), "none.txt: no such file"),
    ]:
        code, output = run(*base, *args)
        assert code == 2 and message in output, output
    assert not (tmp_path / "out").exists()


def test_text_prompts_and_a_folder_made_with_other_settings(
    tmp_path: Path, model_dir: Path, reference: dict[str, bytes]
) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("  a red circle moving left \n\n{not json, just words}\n", encoding="utf-8")
    out = tmp_path / "clips"
    out.mkdir()
    (out / "run.json").write_bytes(reference["run.json"])  # the folder of the reference run
    code, text = run(
        "generate", "--prompts", str(path), "-o", str(out), "--model", str(model_dir), "--steps", "1"
    )
    assert code == 2 and "holds clips made with steps=None, this run asks for 1" in text
    code, text = run(
        "generate", "--prompts", str(path), "-o", str(out), "--model", str(model_dir), "--seed", "9"
    )
    assert code == 2 and "00000_a-red-circle-moving-left.mp4 was made from" in text and "line 1" in text
