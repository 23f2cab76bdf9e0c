"""Adherence evaluation: ground truth scores 100%, wrong labels and bad videos score wrong, and `osp eval
adherence` works on a synth folder and end to end on a tiny untrained pipeline."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from osp.cli.main import cli
from osp.dit.latte_t2v import LATTE_T2V_CONFIGS, LatteT2V
from osp.eval.adherence import (
    ATTRIBUTES,
    CIRCLE_MAX_FILL,
    MAX_COLOR_DISTANCE,
    NONE,
    TRIANGLE_MAX_FILL,
    Labels,
    Scored,
    measure,
    plan,
    score,
)
from osp.io.video import read_video
from osp.pipelines.text_to_video import PipelineSpec, TextToVideo
from osp.synth.dataset import read_labels, write_synth_dataset
from osp.synth.shapes import HELD_OUT, SHAPE_SIZE, ShapeClip, all_combos, caption_for, make_clip, render
from osp.text import load_text_encoder
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVideoVAE

# Fill ratios must clear the shape thresholds by this much, colours the palette by MAX_COLOR_DISTANCE.
FILL_MARGIN = 0.03
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _clip(combo: tuple[str, str, str, str], seed: int) -> ShapeClip:
    return make_clip(random.Random(f"test:{seed}:{combo}"), *combo)


def _assert_perfect(scored: list[Scored]) -> None:
    wrong = [(s.expected, s.measurement) for s in scored if not s.all_correct]
    assert not wrong, wrong[:3]
    for s in scored:
        fill, m = s.measurement.fill_ratio, s.measurement
        assert fill is not None and m.color_distance is not None
        assert m.color_distance < MAX_COLOR_DISTANCE / 4
        band = {"triangle": (0, TRIANGLE_MAX_FILL), "circle": (TRIANGLE_MAX_FILL, CIRCLE_MAX_FILL),
                "square": (CIRCLE_MAX_FILL, 2)}[s.expected.shape]  # fmt: skip
        assert band[0] + FILL_MARGIN < fill < band[1] - FILL_MARGIN, (s.expected, fill)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth_dataset(
        tmp_path_factory.mktemp("data") / "shapes", count=48, seed=3, split="all"
    ).folder


def test_rendered_ground_truth_scores_perfectly() -> None:
    combos = all_combos("all")
    clips = [_clip(c, seed) for seed in range(2) for c in combos]
    # The smallest and largest shapes the data holds.
    clips += [dataclasses.replace(_clip(c, 9), size=float(s)) for s in SHAPE_SIZE for c in combos]
    scored, summary = score(clips, [render(c) for c in clips])
    _assert_perfect(scored)
    assert summary["heldout"].count == 4 * 2 * len(HELD_OUT) and summary["all"].count == len(clips)
    for split in ("train", "heldout", "all"):
        assert summary[split].accuracy == dict.fromkeys((*ATTRIBUTES, "all"), 1.0)


def test_mp4_round_trip_scores_perfectly(synth_dir: Path) -> None:
    clips = read_labels(synth_dir / "labels.jsonl")
    assert {c.held_out for c in clips} == {True, False}
    for name in ATTRIBUTES:  # the fixture's seed covers every value of every attribute
        assert len({getattr(c, name) for c in clips}) == {"background": 2, "shape": 3}.get(name, 4)
    videos = [read_video(synth_dir / f"clips/{i:06d}.mp4").frames for i in range(len(clips))]
    scored, summary = score(clips, videos)
    _assert_perfect(scored)
    assert summary["all"].accuracy["all"] == 1.0


def test_wrong_labels_score_wrong() -> None:
    clip = _clip(("white", "blue", "square", "down"), 0)
    video = render(clip)
    for name, value in [
        ("background", "black"),
        ("color", "green"),
        ("shape", "circle"),
        ("direction", "up"),
    ]:
        expected = Labels.of(clip)._replace(**{name: value})
        (result,), summary = score([expected], [video])
        assert result.correct == {n: n != name for n in ATTRIBUTES}
        assert not result.all_correct and summary["all"].accuracy["all"] == 0.0


@pytest.mark.parametrize("background", ["black", "white"])
def test_background_only_video_shows_no_object(background: str) -> None:
    video = np.full((17, 64, 64, 3), 255 if background == "white" else 0, dtype=np.uint8)
    m = measure(video)
    assert m.predicted == Labels(background, NONE, NONE, NONE) and m.object_frames == 0
    noisy = np.clip(video + np.random.default_rng(0).normal(0, 25, video.shape), 0, 255).astype(np.uint8)
    assert measure(noisy).predicted == Labels(background, NONE, NONE, NONE)
    (result,), _ = score([Labels(background, "red", "circle", "left")], [video])
    assert result.correct == {"background": True, "color": False, "shape": False, "direction": False}


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_reversed_time_flips_the_direction(direction: str) -> None:
    video = render(_clip(("black", "yellow", "triangle", direction), 1))
    assert measure(video).direction == direction
    reversed_video = measure(np.ascontiguousarray(video[::-1]))
    assert reversed_video.direction == OPPOSITE[direction]
    assert (reversed_video.color, reversed_video.shape) == ("yellow", "triangle")


def test_a_still_object_has_no_direction() -> None:
    clip = dataclasses.replace(_clip(("white", "green", "circle", "right"), 0), speed=0.0)
    m = measure(torch.from_numpy(render(clip)).permute(0, 3, 1, 2))  # the (T, 3, H, W) layout too
    assert (m.color, m.shape, m.direction) == ("green", "circle", NONE)


def test_plan_gives_each_video_its_own_seed() -> None:
    requests = plan("heldout", 3, base_seed=10)
    assert len(requests) == 3 * 2 * len(HELD_OUT)
    assert [r.seed for r in requests] == list(range(10, 10 + len(requests)))
    assert all(r.labels.held_out for r in requests)
    first = requests[0].labels
    assert requests[0].prompt == caption_for(first.color, first.shape, first.direction, first.background, 0)
    assert len(plan("train", 1, limit=2)) == 2


def test_cli_scores_a_synth_folder_at_100_percent(tmp_path: Path, synth_dir: Path) -> None:
    code, text = run(
        "eval", "adherence", "--labels", str(synth_dir / "labels.jsonl"), "-o", str(tmp_path), "-q"
    )
    assert code == 0, text
    assert "100.0%" in text and "%" not in text.replace("100.0%", "")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["summary"]["all"]["count"] == 48 and len(report["videos"]) == 48
    assert report["videos"][0]["path"] == "clips/000000.mp4"


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--labels", "{tmp}/missing.jsonl"], "missing.jsonl"),
        (["--model", "{tmp}/no-model"], "no-model"),
    ],
)
def test_cli_bad_input(tmp_path: Path, args: list[str], name: str) -> None:
    code, text = run(
        "eval", "adherence", *(a.format(tmp=tmp_path) for a in args), "-o", str(tmp_path / "o"), "-q"
    )
    assert code == 2, text
    assert len(text.strip().splitlines()) == 1 and name in text and "Traceback" not in text
    assert not (tmp_path / "o").exists()


def test_cli_generates_and_reports_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    transformer = LatteT2V(LATTE_T2V_CONFIGS["latte-t2v-tiny"].replace(caption_channels=384))
    for param in transformer.parameters():  # zero-initialised outputs would make every video grey
        param.data.normal_(0, 0.1)
    vae = CausalVideoVAE(CAUSAL_VAE_CONFIGS["causalvae-tiny"]).eval()
    spec = PipelineSpec(frames=9, size=(32, 32), steps=3, guidance=3.0, fps=8)
    model = TextToVideo(transformer.eval(), vae, load_text_encoder("minilm"), spec).save_pretrained(
        tmp_path / "m"
    )
    out = tmp_path / "eval"
    code, text = run("eval", "adherence", "--model", str(model), "--split", "heldout", "--limit", "2",
                     "--seeds", "1", "--steps", "2", "--batch", "1", "-o", str(out), "-q")  # fmt: skip
    assert code == 0, text
    assert "heldout (2)" in text
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == "heldout" and set(report["summary"]) == {"heldout", "all"}
    assert [v["seed"] for v in report["videos"]] == [0, 1]
    for video in report["videos"]:
        assert video["prompt"] == Labels(**video["expected"]).caption() and video["held_out"]
        assert set(video["predicted"]) == set(ATTRIBUTES) and set(video["correct"]) == set(ATTRIBUTES)
        assert video["measurements"]["frames"] == 9
        assert read_video(out / video["path"]).frames.shape == (9, 3, 32, 32)
    assert (out / "contact_sheet.png").stat().st_size > 0
