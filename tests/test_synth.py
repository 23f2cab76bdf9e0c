"""The moving-shapes domain and `osp data`: deterministic clips, shapes inside the frame, held-out
combos kept apart, captions that say what is drawn, and manifests `osp train` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from osp.cli.main import cli
from osp.errors import ConfigError, VideoReadError
from osp.io.samples import sample_video
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
