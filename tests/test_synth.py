"""The moving-shapes domain and `osp data`: deterministic clips, shapes inside the frame, held-out
combos kept apart, captions that say what is drawn, and manifests `osp train` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from osp.cli.main import cli
from osp.errors import ConfigError, VideoReadError
from osp.io.samples import SAMPLE_STILLS, sample_still, sample_video
from osp.io.video import read_video, write_video
from osp.synth.cut import pan_windows
from osp.synth.dataset import clip_rng, read_labels, synth_clips, write_synth_dataset
from osp.synth.shapes import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    HELD_OUT,
    SHAPES,
    SIZE,
    all_combos,
    caption_for,
    random_clip,
    render,
)
from osp_train.data.manifest import read_manifest


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_same_seed_same_clip_other_seed_other_clip() -> None:
    a, b = synth_clips(6, seed=1, split="all"), synth_clips(6, seed=1, split="all")
    assert a == b
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(render(x), render(y)) and x.caption == y.caption
    other = synth_clips(6, seed=2, split="all")
    assert all(x != y for x, y in zip(a, other, strict=True))
    assert not np.array_equal(render(a[0]), render(other[0]))
    assert synth_clips(3, seed=1, split="all") == a[:3]  # clip i depends only on (seed, i)


def test_the_shape_stays_inside_the_frame() -> None:
    for clip in synth_clips(200, seed=0, split="all"):
        for t in range(17):
            cx, cy = clip.centre(t)
            half = clip.size / 2
            assert half <= cx <= SIZE - half and half <= cy <= SIZE - half, (clip, t)
    for clip in synth_clips(24, seed=5, split="all"):  # and in pixels: the border is plain background
        video = render(clip).astype(int)
        ring = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
        assert (ring == BACKGROUNDS[clip.background]).all()


def test_held_out_combos_stay_out_of_training() -> None:
    assert len(all_combos("all")) == 2 * 4 * 3 * 4
    assert {c[1:] for c in all_combos("heldout")} == HELD_OUT
    assert not {c[1:] for c in all_combos("train")} & HELD_OUT
    assert not any(c.held_out for c in synth_clips(300, seed=0, split="train"))
    assert all(c.held_out for c in synth_clips(40, seed=0, split="heldout"))


def test_captions_name_what_is_drawn() -> None:
    for template in range(6):
        for bg, color, shape, direction in all_combos("all"):
            words = set(caption_for(color, shape, direction, bg, template).replace(",", " ").split())
            assert {color, shape, bg} <= words and direction in " ".join(words)
            others = (set(COLORS) | set(SHAPES) | set(BACKGROUNDS)) - {color, shape, bg}
            assert not words & others
            assert not words & (set(DIRECTIONS) - {direction})
    clip = random_clip(clip_rng(0, 0), "all")
    assert clip.color in clip.caption and clip.shape in clip.caption and clip.background in clip.caption


def test_synth_dataset_is_a_training_manifest(tmp_path: Path) -> None:
    result = write_synth_dataset(tmp_path / "d", count=5, seed=4)
    entries = read_manifest(result.manifest)
    clips = read_labels(result.labels)
    assert len(entries) == len(clips) == 5
    for entry, clip in zip(entries, clips, strict=True):
        assert entry.path.is_file() and entry.path.parent == (tmp_path / "d" / "clips").resolve()
        assert entry.caption == clip.caption and entry.fps == 8.0
    assert clips == synth_clips(5, seed=4, split="train")


def test_synth_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        write_synth_dataset(out, count=2)
    assert [p.name for p in tmp_path.iterdir()] == ["d"] and [p.name for p in out.iterdir()] == ["keep.txt"]
    code, text = run("data", "synth", str(out), "--count", "2", "-q")
    assert code == 2 and "not empty" in text
    code, text = run("data", "synth", str(out), "--count", "2", "-q", "--overwrite")
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["clips", "labels.jsonl", "manifest.jsonl"]


def test_cut_and_merge_keep_paths_resolvable(tmp_path: Path) -> None:
    try:
        bikes = sample_video("bikes")
    except VideoReadError as err:
        pytest.skip(str(err))
    code, text = run("data", "cut", str(bikes), "-o", str(tmp_path / "cut"), "--count", "2", "--frames", "5",
                     "--size", "32", "-q")  # fmt: skip
    assert code == 0, text
    cut = read_manifest(tmp_path / "cut" / "manifest.jsonl")
    assert len(cut) == 2 and all(e.path.is_file() and e.caption == "a clip of bikes" for e in cut)
    write_synth_dataset(tmp_path / "shapes", count=3)
    merged = tmp_path / "lists" / "all.jsonl"
    code, text = run("data", "merge", str(tmp_path / "cut" / "manifest.jsonl"),
                     str(tmp_path / "shapes" / "manifest.jsonl"), "-o", str(merged))  # fmt: skip
    assert code == 0, text
    rows = [json.loads(line) for line in merged.read_text().splitlines()]
    assert all(row["path"].startswith("../") for row in rows)
    entries = read_manifest(merged)
    assert len(entries) == 5 and all(e.path.is_file() for e in entries)


def _ramp_image(path: Path, height: int = 200, width: int = 300) -> Path:
    """An image whose red channel is the column and green channel the row (scaled to 0..255)."""
    from PIL import Image

    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs * 255 / (width - 1), ys * 255 / (height - 1), np.full_like(xs, 128.0)], -1)
    Image.fromarray(rgb.round().astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("seed", range(20))
def test_pan_windows_stay_inside_and_move_at_constant_speed(seed: int) -> None:
    import random

    h, w, zoom, travel = 180, 320, 0.2, 0.5
    windows = pan_windows(h, w, 17, random.Random(seed), min_scale=0.3, zoom=zoom, travel=travel)
    assert len(windows) == 17
    for top, left, side in windows:
        assert top >= 0 and top + side <= h and left >= 0 and left + side <= w and side >= 0.3 * h - 1
    centres = np.array([(t + s / 2, x + s / 2) for t, x, s in windows])
    sides = np.array([s for _, _, s in windows], dtype=float)
    # constant speed: every step moves the centre by the same amount, up to the 1-pixel rounding
    steps = np.diff(centres, axis=0)
    assert np.abs(steps - steps.mean(0)).max() <= 1.0
    assert abs(sides[-1] / sides[0] - 1) <= zoom + 2 / sides[0]
    assert np.abs(centres[-1] - centres[0]).max() <= travel * sides[0] + 1


def test_pan_clips_show_a_window_moving_across_the_image(tmp_path: Path) -> None:
    image = _ramp_image(tmp_path / "ramp.png")
    code, text = run("data", "pan", str(image), "-o", str(tmp_path / "pan"), "--count", "3", "--frames", "9",
                     "--size", "32", "--travel", "1.0", "--zoom", "0", "-q")  # fmt: skip
    assert code == 0, text
    entries = read_manifest(tmp_path / "pan" / "manifest.jsonl")
    assert len(entries) == 3 and all(e.caption == "a clip of ramp" for e in entries)
    for entry in entries:
        clip = read_video(entry.path).frames.float()  # (9, 3, 32, 32)
        assert clip.shape == (9, 3, 32, 32) and entry.fps == 8.0
        # the red/green means are the window centre's column/row: they move in a straight line at one speed
        centre = clip[:, :2].mean(dim=(2, 3)).numpy()
        steps = np.diff(centre, axis=0)
        assert np.abs(steps - steps.mean(0)).max() < 2.5
        # with zoom 0 the window keeps its side: the red range across a frame stays the same
        spread = (clip[:, 0, :, -4:].mean() - clip[:, 0, :, :4].mean()).item()
        per_frame = (clip[:, 0, :, -4:].mean(dim=(1, 2)) - clip[:, 0, :, :4].mean(dim=(1, 2))).numpy()
        assert np.abs(per_frame - spread).max() < 3.0
    # clip i depends only on (seed, name, i): a second run is the same, another seed is not
    code, text = run("data", "pan", str(image), "-o", str(tmp_path / "again"), "--count", "3", "--frames", "9",
                     "--size", "32", "--travel", "1.0", "--zoom", "0", "-q")  # fmt: skip
    first, again = (read_video(tmp_path / d / "clips" / "ramp_00002.mp4").frames for d in ("pan", "again"))
    assert code == 0 and torch.equal(first, again)
    run("data", "pan", str(image), "-o", str(tmp_path / "other"), "--count", "3", "--frames", "9", "--size", "32",
        "--seed", "1", "-q")  # fmt: skip
    assert not torch.equal(first, read_video(tmp_path / "other" / "clips" / "ramp_00002.mp4").frames)


def test_pan_refuses_videos_small_images_and_unreadable_files(tmp_path: Path) -> None:
    small = _ramp_image(tmp_path / "small.png", 40, 60)
    code, text = run("data", "pan", str(small), "-o", str(tmp_path / "a"), "--size", "64", "-q")
    assert code == 2 and "small.png" in text and "smaller than the clip side 64" in text
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    code, text = run("data", "pan", str(broken), "-o", str(tmp_path / "b"), "-q")
    assert code == 2 and "broken.png" in text and "Traceback" not in text
    clip = tmp_path / "clip.mp4"
    write_video(clip, torch.zeros(4, 3, 64, 64, dtype=torch.uint8), 8.0)
    code, text = run("data", "pan", str(clip), "-o", str(tmp_path / "c"), "-q")
    assert code == 2 and "clip.mp4" in text and "not a still image" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "clip.mp4", "small.png"]


def test_sample_stills_are_colour_photographs(tmp_path: Path) -> None:
    try:
        path = sample_still("coffee")
    except VideoReadError as err:
        pytest.skip(str(err))
    code, text = run("samples", "--stills")
    listed = text.split()
    assert code == 0 and len(listed) == len(SAMPLE_STILLS) and all(Path(p).is_file() for p in listed)
    code, text = run("data", "pan", str(path), "-o", str(tmp_path / "pan"), "--count", "2", "-q")
    assert code == 0, text
    clip = read_video(tmp_path / "pan" / "clips" / "coffee_00000.mp4").frames.float() / 255
    assert clip.shape == (17, 3, 64, 64)
    assert (clip.max(1).values - clip.min(1).values).mean() > 0.15  # colour, not grey
    code, text = run("samples", "--stills", "nope")
    assert code == 2 and "known names" in text
