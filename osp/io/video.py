"""Video files in and out, with PyAV.

Frames travel as ``(T, C, H, W)`` uint8 RGB tensors (what files hold); models take ``(C, T, H, W)``
floats in [-1, 1] (:func:`to_model` / :func:`from_model` convert). Every file written goes through
:func:`osp.io.weights.atomic_path`, so a failed write leaves nothing behind. Every unreadable input
raises :class:`VideoReadError` with one sentence naming the file, never a raw PyAV/Pillow traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from osp.errors import ShapeError, VideoReadError
from osp.io.weights import atomic_path

if TYPE_CHECKING:
    import av.container
    import av.video.stream

# Suffixes read with Pillow as 1-frame videos; everything else goes to FFmpeg.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# A still image has no frame rate; 1 fps makes its duration one second, which nothing relies on.
STILL_FPS = 1.0
# Frames resized per interpolate call: bounds the float copy of a long 1080p clip to a few hundred MB.
_RESIZE_CHUNK = 16
# swscale's default YUV<->RGB path is biased by about -1 level per channel (measured: -1.2 mean error on
# an RGB->yuv420p->RGB round trip, 44 dB); accurate rounding + full chroma interpolation removes the bias
# (0.01 mean, 53 dB) for ~25% more conversion time: the flags sws_flags() gives.
# AVCOL_SPC_SMPTE170M / AVCOL_PRI_SMPTE170M / AVCOL_TRC_SMPTE170M / AVCOL_RANGE_MPEG: BT.601 limited
# range, which is what swscale converts with when a file carries no colour tags.
_BT601_TAGS = {"colorspace": 6, "color_primaries": 6, "color_trc": 6, "color_range": 1}
_PIL_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError)


def _av() -> Any:
    """PyAV, imported when a video is first read or written: importing osp (a model, a pipeline, the
    training loop) needs no FFmpeg libraries, only touching a video file does."""
    import av
    import av.error

    return av


def sws_flags() -> Any:
    """swscale flags for osp's RGB <-> YUV conversions (PyAV's ``interpolation=``)."""
    from av.video.reformatter import Interpolation

    return Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def x264_options(crf: int) -> dict[str, str]:
    """libx264 options for osp's H.264 encodes: ``crf``, and x264's lookahead run on the encoding
    threads (``sync-lookahead=0``), not on a thread of its own. With its own thread, writing the same
    9-frame 32x32 pan clip gave another file in 7 of 150 runs (pixels off by up to 2 levels), so
    ``osp data pan`` / ``osp data cut`` did not always repeat a data set; with it, none in 200 there,
    but a rarer difference remains (its cause not found), so an encode is not yet always repeatable."""
    return {"crf": str(crf), "x264-params": "sync-lookahead=0"}


# eq=False: a generated __eq__ would compare tensors with ==, whose truth value is ambiguous.
@dataclass(frozen=True, eq=False)
class Video:
    """Decoded frames and their rate."""

    frames: torch.Tensor  # (T, C, H, W) uint8 RGB
    fps: float

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def height(self) -> int:
        return self.frames.shape[2]

    @property
    def width(self) -> int:
        return self.frames.shape[3]

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a file's first video stream, without decoding it."""

    frames: int
    fps: float
    width: int
    height: int
    duration: float  # seconds
    frames_exact: bool  # False when ``frames`` was estimated from duration × fps


# --------------------------------------------------------------------------------------------- reading


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"{path}: no such file")
    if not path.is_file():
        raise VideoReadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"{path}: file is empty (0 bytes)")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _open_container(path: Path) -> av.container.InputContainer:
    av = _av()
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoReadError(f"{path}: not a readable video file ({_reason(err)})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: has no video stream")
    return container


def _reason(err: BaseException) -> str:
    # PyAV messages repeat the file name after a colon; keep only the FFmpeg reason.
    text = getattr(err, "strerror", None) or str(err)
    return str(text).split(": '")[0]


# Frames a whole-file read may come up short of the container's count before it is called truncated:
# headers of intact files are often one over (an encoder's edit list hides the last decoded frame,
# e.g. OpenCV's sample box.mp4 declares 456 and decodes 455); a cut-off file loses far more.
DECLARED_SLACK = 1


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, fps, size and duration from the container header (nothing is decoded).

    When the container does not store a frame count (``stream.frames == 0``, e.g. webm or gif), it is
    estimated as ``round(duration * fps)`` and ``frames_exact`` is False.
    """
    av = _av()
    path = Path(path)
    _check_file(path)
    if _is_image(path):
        try:
            with Image.open(path) as img:
                width, height = img.size
        except _PIL_ERRORS as err:
            raise VideoReadError(f"{path}: not a readable image ({err})") from None
        return VideoInfo(1, STILL_FPS, width, height, 1 / STILL_FPS, True)
    with _open_container(path) as container:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        exact = stream.frames > 0
        frames = stream.frames if exact else round(duration * fps)
        if not duration and fps:
            duration = frames / fps
        return VideoInfo(frames, fps, stream.width, stream.height, duration, exact)


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))  # (H, W, 3), writable for torch.from_numpy
    except _PIL_ERRORS as err:
        raise VideoReadError(f"{path}: not a readable image ({err})") from None


def _target_index(i: int, start: int, step: float) -> int:
    # Round half up (not Python's round-half-to-even), so step 2.5 picks 0, 3, 5, 8, ...
    return start + math.floor(i * step + 0.5)


def read_video(
    path: str | Path,
    *,
    num_frames: int | None = None,
    sample_rate: int = 1,
    target_fps: float | None = None,
    start_frame: int = 0,
    size: int | tuple[int, int] | None = None,
) -> Video:
    """Decode frames ``start_frame + round(i * step)`` for ``i < num_frames`` of a video or image.

    ``step`` is ``sample_rate``, or ``source_fps / target_fps`` when ``target_fps`` is given (then the
    returned fps is ``target_fps``, else ``source_fps / sample_rate``). ``num_frames=None`` takes every
    sampled frame the file has. Decoding is sequential from the first frame (exact, no keyframe seeking)
    and stops at the last needed frame. A file with too few frames raises :class:`VideoReadError`; fewer
    frames are never returned silently. ``size`` resizes and center-crops, see :func:`resize_crop`.
    Still images (png, jpg, ...) are 1-frame videos at :data:`STILL_FPS`.
    """
    av = _av()
    sws = sws_flags()
    path = Path(path)
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be >= 1 or None, got {num_frames}")
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be >= 1, got {sample_rate}")
    if target_fps is not None and (target_fps <= 0 or sample_rate != 1):
        raise ValueError("target_fps must be > 0 and cannot be combined with sample_rate")
    if start_frame < 0:
        raise ValueError(f"start_frame must be >= 0, got {start_frame}")
    _check_file(path)

    container = None
    declared = 0  # frame count stored in the container, 0 when it stores none
    if _is_image(path):
        source_fps = STILL_FPS
        decoded_frames: Iterator[Any] = iter([_read_image(path)])
    else:
        container = _open_container(path)
        stream = container.streams.video[0]
        source_fps, declared = _stream_fps(stream), stream.frames
        if target_fps is not None and source_fps <= 0:
            container.close()
            raise VideoReadError(f"{path}: the container has no frame rate, so target_fps cannot be used")
        stream.thread_type = "AUTO"  # frame + slice threads; frames still come out in order
        decoded_frames = container.decode(stream)
    step = source_fps / target_fps if target_fps is not None else float(sample_rate)
    fps = target_fps if target_fps is not None else source_fps / sample_rate
    needed = None if num_frames is None else _target_index(num_frames - 1, start_frame, step) + 1

    picked: list[torch.Tensor] = []
    decoded = 0
    try:
        # Convert only the frames we keep; decoding itself must still visit every frame in order.
        for frame in decoded_frames:
            index = decoded
            decoded += 1
            target = _target_index(len(picked), start_frame, step)
            if target == index:
                rgb = frame if container is None else frame.to_ndarray(format="rgb24", interpolation=sws)
                tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)  # (C, H, W)
                while target == index and (num_frames is None or len(picked) < num_frames):
                    picked.append(tensor)  # the same frame repeats when target_fps > source fps
                    target = _target_index(len(picked), start_frame, step)
            if needed is not None and decoded >= needed:
                break
    except av.error.FFmpegError as err:
        raise VideoReadError(
            f"{path}: decoding failed after {decoded} frames ({_reason(err)})"
            + (f"; the request needs {needed}" if needed is not None else "")
        ) from None
    finally:
        if container is not None:
            container.close()

    if needed is not None and decoded < needed:
        raise VideoReadError(
            f"{path}: has only {decoded} frames but the request (num_frames={num_frames}, step={step:g}, "
            f"start_frame={start_frame}) needs {needed}"
        )
    if num_frames is None and 0 < decoded < declared - DECLARED_SLACK:
        # FFmpeg ends a cut-off mp4 quietly, so a short read is the only sign of truncation.
        raise VideoReadError(
            f"{path}: the container declares {declared} frames but only {decoded} decode; "
            "the file is probably truncated"
        )
    if not picked:
        raise VideoReadError(f"{path}: has {decoded} frames, none at or after start_frame={start_frame}")
    video = torch.stack(picked)  # (T, C, H, W)
    if size is not None:
        video = resize_crop(video, size)
    return Video(video, fps)


# ----------------------------------------------------------------------------------- tensor helpers


def _check_frames(frames: torch.Tensor, name: str = "frames") -> None:
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        got = frames.dtype if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ShapeError(f"{name}: must be a uint8 tensor, got {got}")
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ShapeError(f"{name}: must be (T, 3, H, W) RGB, got shape {tuple(frames.shape)}")
    if min(frames.shape) == 0:
        raise ShapeError(f"{name}: has an empty dimension, shape {tuple(frames.shape)}")


def resize_crop(frames: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize ``(T, C, H, W)`` uint8 frames to cover ``size``, then center-crop to it exactly.

    ``size`` int: the short side becomes ``size`` and the crop is square. ``(H, W)``: scale by
    ``max(H / h, W / w)`` so the frame covers H×W. Resizing is antialiased bilinear on float, so
    downscaling does not alias; results are rounded back to uint8.
    """
    if frames.ndim != 4 or frames.dtype != torch.uint8:
        raise ShapeError(
            f"frames: resize_crop takes (T, C, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}"
        )
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if out_h < 1 or out_w < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = frames.shape[-2:]
    scale = max(out_h / h, out_w / w)
    # max(...) guards against rounding a covering size just below the crop.
    new_h, new_w = max(out_h, round(h * scale)), max(out_w, round(w * scale))
    if (new_h, new_w) != (h, w):
        chunks = []
        for chunk in frames.split(_RESIZE_CHUNK):
            x = F.interpolate(
                chunk.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
            )
            chunks.append(x.round_().clamp_(0, 255).to(torch.uint8))
        frames = torch.cat(chunks)
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return frames[..., top : top + out_h, left : left + out_w].contiguous()


def to_model(frames: torch.Tensor) -> torch.Tensor:
    """``(T, C, H, W)`` uint8 → ``(C, T, H, W)`` float32 in [-1, 1], the layout VAEs consume."""
    if frames.ndim != 4 or frames.dtype != torch.uint8:
        raise ShapeError(
            f"frames: to_model takes (T, C, H, W) uint8, got {tuple(frames.shape)} {frames.dtype}"
        )
    return frames.permute(1, 0, 2, 3).float().div_(127.5).sub_(1.0)


def from_model(x: torch.Tensor) -> torch.Tensor:
    """``(C, T, H, W)`` float in [-1, 1] → ``(T, C, H, W)`` uint8 (clamped, rounded)."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ShapeError(f"x: from_model takes (C, T, H, W) float, got {tuple(x.shape)} {x.dtype}")
    out = (x.detach().float() + 1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)
    return out.permute(1, 0, 2, 3).contiguous()


def side_by_side(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate two ``(T, C, H, W)`` videos horizontally, e.g. input | reconstruction."""
    if a.ndim != 4 or b.ndim != 4 or a.shape[:3] != b.shape[:3] or a.dtype != b.dtype:
        raise ShapeError(
            f"side_by_side: videos must share T, C, H and dtype, got {tuple(a.shape)} {a.dtype} "
            f"and {tuple(b.shape)} {b.dtype}"
        )
    return torch.cat([a, b], dim=-1)


def _pad_even(frames: torch.Tensor) -> torch.Tensor:
    # yuv420p halves chroma resolution, so x264 needs even sides; repeat the last row/column.
    if frames.shape[2] % 2:
        frames = torch.cat([frames, frames[:, :, -1:]], dim=2)
    if frames.shape[3] % 2:
        frames = torch.cat([frames, frames[:, :, :, -1:]], dim=3)
    return frames


def _hwc(frames: torch.Tensor) -> np.ndarray:
    return frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # (T, H, W, C)


# ------------------------------------------------------------------------------------------ writing


def write_video(path: str | Path, frames: torch.Tensor, fps: float | Fraction, *, crf: int = 18) -> Path:
    """Write ``(T, 3, H, W)`` uint8 RGB as H.264 (libx264, yuv420p) mp4 at ``fps`` (may be fractional).

    An odd width or height is padded to even by repeating the last row/column, so the file can be one
    pixel larger than ``frames``. ``crf`` 18 is visually lossless; lower is larger and closer.
    """
    av = _av()
    sws = sws_flags()
    _check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in [0, 51] (libx264), got {crf}")
    # NTSC rates arrive as floats (29.97002997...); limit_denominator recovers 30000/1001.
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    path = Path(path)
    frames = _pad_even(frames)
    with atomic_path(path) as tmp:
        # The temp name ends in .tmp, so the container format must be named, not guessed. faststart
        # puts the index first, so players (and truncated downloads) can start without the tail.
        container = av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        with container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = frames.shape[3], frames.shape[2]
            stream.pix_fmt = "yuv420p"
            stream.time_base = 1 / rate
            stream.options = x264_options(crf)
            for name, value in _BT601_TAGS.items():
                setattr(stream.codec_context, name, value)  # so players convert back with the same matrix
            for i, array in enumerate(_hwc(frames)):
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame = frame.reformat(format="yuv420p", dst_colorspace="itu601", interpolation=sws)
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))  # flush the encoder's delayed frames
    return path


def write_gif(path: str | Path, frames: torch.Tensor, fps: float) -> Path:
    """Write ``(T, 3, H, W)`` uint8 RGB as a looping GIF (Pillow, one adaptive palette per frame).

    GIF stores delays in 10 ms steps, so the rate is approximate; Pillow merges identical consecutive
    frames into one longer frame.
    """
    _check_frames(frames)
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    images = [Image.fromarray(a) for a in _hwc(frames)]
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
        )
    return path


def write_contact_sheet(
    path: str | Path,
    frames_or_list: torch.Tensor | Sequence[torch.Tensor],
    *,
    columns: int | None = None,
    labels: Sequence[str] | None = None,
    padding: int = 2,
) -> Path:
    """Write a PNG grid of frames: one video per row (wrapped every ``columns`` frames).

    Pass one ``(T, 3, H, W)`` uint8 video, or a list of them (same H and W, T may differ) to compare
    videos row by row, e.g. ``[input, reconstruction]``. ``labels`` (one per video) are drawn left of
    each video's first row with Pillow's default font.
    """
    videos = [frames_or_list] if isinstance(frames_or_list, torch.Tensor) else list(frames_or_list)
    if not videos:
        raise ShapeError("frames_or_list: no videos given")
    for i, video in enumerate(videos):
        _check_frames(video, f"frames_or_list[{i}]")
        if video.shape[2:] != videos[0].shape[2:]:
            raise ShapeError(
                f"frames_or_list[{i}]: frame size {tuple(video.shape[2:])} differs from {tuple(videos[0].shape[2:])}"
            )
    if labels is not None and len(labels) != len(videos):
        raise ValueError(f"labels: got {len(labels)} labels for {len(videos)} videos")
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    cols = columns or max(v.shape[0] for v in videos)
    h, w = videos[0].shape[2:]
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 0
    if labels:
        label_w = max(int(probe.textlength(text, font=font)) for text in labels) + 2 * padding + 4
    rows = [math.ceil(v.shape[0] / cols) for v in videos]
    sheet_w = label_w + cols * (w + padding) + padding
    sheet_h = sum(rows) * (h + padding) + padding
    sheet = Image.new("RGB", (sheet_w, sheet_h), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    row = 0
    for v, video in enumerate(videos):
        for t, array in enumerate(_hwc(video)):
            r, c = row + t // cols, t % cols
            sheet.paste(
                Image.fromarray(array), (label_w + padding + c * (w + padding), padding + r * (h + padding))
            )
        if labels:
            draw.text(
                (padding + 2, padding + row * (h + padding) + 2), labels[v], fill=(240, 240, 240), font=font
            )
        row += rows[v]
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
