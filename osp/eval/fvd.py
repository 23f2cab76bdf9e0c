"""Fréchet Video Distance (Unterthiner et al. 2018) under StyleGAN-V's ``fvd2048_16f`` protocol.

FVD is the Fréchet distance between two Gaussians fitted to I3D logits of real and generated clips.
Implementations differ in details that move the number; osp's choices (also written into every result
as :data:`PROTOCOL`):

* features: the 400 Kinetics logits before the softmax (TF-Hub's ``RGB/inception_i3d/Mean``), from
  weights converted out of StyleGAN-V's TorchScript port of the TF-Hub model. pytorch-i3d's
  ``rgb_imagenet.pt`` and VideoGPT's ``i3d_pretrained_400.pt`` load too but are other weights: their
  FVD is not comparable with papers that report StyleGAN-V / TF numbers;
* clips: the first 16 frames of each file at its own frame rate (StyleGAN-V reads real clips from a
  random offset), files too short are skipped and counted; up to 2048 clips per side, files taken in
  sorted order;
* pixels: decoded to uint8 (both sides pass through 8-bit video files, as StyleGAN-V quantises its
  generator's output), scaled to [-1, 1] by ``2x/255 - 1``, then every frame resized to 224x224 with
  bilinear interpolation (PyTorch's half-pixel centres, no antialiasing): the aspect ratio is not kept
  and nothing is cropped, as in StyleGAN-V and TF's ``resize_bilinear`` (whose TF1 default samples at
  corner-aligned positions, a sub-pixel shift). VideoGPT / Open-Sora-Plan instead resize the short
  side and centre-crop;
* statistics: mean and covariance of *all* clips of a side at once, covariance divided by N as in
  StyleGAN-V (TF-GAN, VideoGPT and ``np.cov`` divide by N - 1: larger by N / (N - 1), 0.05% at 2048).
  Open-Sora-Plan's script averages FVDs of batches of 10 clips, where a 400-d covariance has rank at
  most 9; that number measures the batch size as much as the videos, and is not computed here;
* distance: float64, with the trace of the matrix square root from symmetric eigendecompositions
  (:func:`frechet_distance`), not ``scipy.linalg.sqrtm`` (SciPy 1.11.2-1.11.3 returned wrong values).

FVD is biased upwards at small N; below :data:`MIN_CLIPS` clips a side it is dominated by that bias, so
:func:`fvd_folders` adds a note.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from osp.errors import VideoReadError, WeightsError
from osp.eval.folders import CACHE_DIR, list_videos
from osp.eval.i3d import I3D
from osp.io.video import read_video
from osp.io.weights import load_safetensors, save_safetensors
from osp.progress import ProgressDisplay, silent

FRAMES = 16
SIZE = 224
CLIPS = 2048
MIN_CLIPS = 256

PROTOCOL = {
    "name": "fvd2048_16f (StyleGAN-V)",
    "features": "I3D Kinetics-400 logits (400-d, before softmax)",
    "clip": "first FRAMES frames of each file, native frame rate; shorter files skipped",
    "pixels": "uint8 -> 2x/255 - 1, each frame resized to 224x224 bilinear (half-pixel, no antialias), "
    "aspect not kept, no crop",
    "covariance": "divided by N (StyleGAN-V); TF-GAN / VideoGPT divide by N - 1",
    "distance": "float64; trace sqrt via symmetric eigendecompositions",
}


# ----------------------------------------------------------------------------------------- distance


def gaussian_stats(features: torch.Tensor, ddof: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64) of ``(N, D)`` features; ``ddof=0`` divides by N, 1 by N - 1."""
    x = features.double()
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - ddof)


def _nonzero(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix with those under the rounding floor set to 0 (the rank tolerance of
    ``numpy.linalg.matrix_rank``): below N clips most are, and the square root would magnify their noise."""
    tol = w.abs().max() * w.shape[0] * torch.finfo(w.dtype).eps
    return torch.where(w > tol, w, torch.zeros_like(w))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(matrix)
    return (v * _nonzero(w).sqrt()) @ v.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)`` in float64.

    ``S1 S2`` is not symmetric, but ``A S2 A`` with ``A = S1^½`` is, and has the same eigenvalues
    (``S1 S2 = A (A S2 A) A⁻¹``; for singular ``S1`` by continuity), so ``tr (S1 S2)^½`` is the sum of
    the square roots of ``A S2 A``'s eigenvalues: two symmetric eigendecompositions, no general sqrtm.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root = _psd_sqrt(sigma1)
    inner = root @ sigma2 @ root
    trace_sqrt = _nonzero(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt)


def fvd(real: torch.Tensor, generated: torch.Tensor) -> float:
    """FVD between two ``(N, 400)`` sets of I3D features."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(generated))


# ----------------------------------------------------------------------------------------- features


def preprocess(clip: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)`` -> float ``(3, T, size, size)`` in [-1, 1], each frame stretched to size²."""
    x = clip.float() * (2 / 255) - 1
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.transpose(0, 1)


@contextmanager
def _exact_fp32() -> Iterator[None]:
    # cuDNN convolutions default to TF32 on Ampere and newer: a 10-bit mantissa would move the features.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def i3d_features(model: I3D, clips: Sequence[torch.Tensor], size: int = SIZE) -> torch.Tensor:
    """Logits ``(N, 400)`` float32 of uint8 ``(T, 3, H, W)`` clips (all with the same T), in one batch."""
    device = next(model.parameters()).device
    batch = torch.stack([preprocess(clip.to(device), size) for clip in clips])
    with torch.inference_mode(), _exact_fp32():
        return model(batch).float().cpu()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, read in chunks (weights are tens of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class FolderFeatures:
    """I3D features of one folder's clips, with what was left out and why."""

    folder: Path
    files: list[str]  # relative paths, one per feature row
    features: torch.Tensor  # (N, 400) float32
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> reason
    cached: int = 0  # rows that came from the folder's cache
    notes: list[str] = field(default_factory=list)


def _stamp(path: Path) -> list[object]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _read_cache(path: Path) -> dict[str, tuple[list[object], torch.Tensor]]:
    """relative path -> (size / mtime stamp, feature row); empty when there is no usable cache."""
    if not path.is_file():
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("files", "[]"))
        rows = load_safetensors(path)["features"]
    except (WeightsError, KeyError, OSError, ValueError):
        return {}  # a cache is an optimisation: a broken one is recomputed, never an error
    return {name: (stamp, rows[i]) for i, (name, stamp) in enumerate(meta) if i < len(rows)}


def folder_features(
    folder: str | Path,
    model: I3D,
    weights_id: str,
    *,
    frames: int = FRAMES,
    clips: int = CLIPS,
    batch: int = 8,
    cache: bool = True,
    progress: ProgressDisplay | None = None,
    what: str = "folder",
) -> FolderFeatures:
    """I3D features of up to ``clips`` files of ``folder``, reusing its cache where files are unchanged.

    The cache, ``<folder>/.osp-cache/fvd-<weights>-<frames>f.safetensors``, keeps one row per file
    with its size and modification time; a changed, added or removed file costs only its own row.
    """
    folder = Path(folder)
    progress = progress or silent()
    paths = list_videos(folder, what)
    cache_path = folder / CACHE_DIR / f"fvd-{weights_id[:16]}-{frames}f.safetensors"
    known = _read_cache(cache_path) if cache else {}
    result = FolderFeatures(folder, [], torch.empty(0, 400))
    rows: list[torch.Tensor] = []
    pending: list[tuple[str, torch.Tensor]] = []

    def flush() -> None:
        if pending:
            feats = i3d_features(model, [clip for _, clip in pending])
            for (name, _), row in zip(pending, feats, strict=True):
                result.files.append(name)
                rows.append(row)
            pending.clear()

    stamps: dict[str, list[object]] = {}
    with progress.step(f"I3D features of {folder}", min(clips, len(paths))) as update:
        for path in paths:
            if len(result.files) + len(pending) >= clips:
                break
            name = path.relative_to(folder).as_posix()
            stamps[name] = _stamp(path)
            if name in known and known[name][0] == stamps[name]:
                flush()  # keep the rows in file order
                result.files.append(name)
                rows.append(known[name][1])
                result.cached += 1
            else:
                try:
                    pending.append((name, read_video(path, num_frames=frames).frames))
                except VideoReadError as err:
                    result.skipped[name] = str(err)
                    continue
                if len(pending) == batch:
                    flush()
            update(len(result.files) + len(pending), min(clips, len(paths)))
        flush()
    result.features = torch.stack(rows) if rows else torch.empty(0, 400)
    if cache and result.cached < len(result.files):
        _write_cache(cache_path, result, stamps, known)
    if result.skipped:
        first = next(iter(result.skipped.items()))
        result.notes.append(
            f"{what}: skipped {len(result.skipped)} files shorter than {frames} frames or unreadable "
            f"(first: {first[0]}: {first[1]})"
        )
    return result


def _write_cache(
    path: Path,
    result: FolderFeatures,
    stamps: dict[str, list[object]],
    known: dict[str, tuple[list[object], torch.Tensor]],
) -> None:
    """The earlier rows (a run with fewer --clips keeps them) updated with this run's."""
    rows = dict(known)
    rows.update({name: (stamps[name], row) for name, row in zip(result.files, result.features, strict=True)})
    meta = json.dumps([[name, stamp] for name, (stamp, _) in rows.items()])
    features = torch.stack([row for _, row in rows.values()])
    try:
        save_safetensors({"features": features}, path, metadata={"files": meta})
    except OSError as err:  # a read-only dataset folder: evaluate without a cache
        result.notes.append(f"{result.folder}: feature cache not written ({err.strerror or err})")


@dataclass
class FVDResult:
    fvd: float
    real: FolderFeatures
    generated: FolderFeatures
    notes: list[str]


def fvd_folders(
    real: str | Path,
    generated: str | Path,
    model: I3D,
    weights_id: str,
    *,
    frames: int = FRAMES,
    clips: int = CLIPS,
    batch: int = 8,
    cache: bool = True,
    progress: ProgressDisplay | None = None,
) -> FVDResult:
    """FVD between the clips of two folders (see the module docstring for the protocol)."""
    sides = [
        folder_features(
            folder,
            model,
            weights_id,
            frames=frames,
            clips=clips,
            batch=batch,
            cache=cache,
            progress=progress,
            what=what,
        )
        for folder, what in ((real, "real"), (generated, "generated"))
    ]
    notes = [note for side in sides for note in side.notes]
    for side, what in zip(sides, ("real", "generated"), strict=True):
        if len(side.files) < 2:
            raise VideoReadError(
                f"{what}: {side.folder} has {len(side.files)} usable clips; FVD needs at least 2"
            )
        if len(side.files) < MIN_CLIPS:
            notes.append(
                f"{what}: only {len(side.files)} clips; below {MIN_CLIPS} a side FVD mostly measures the "
                f"sample size (its estimate is biased upwards as N falls, and a {side.features.shape[1]}-d "
                f"covariance from N clips has rank at most N - 1): compare only numbers with equal N, and "
                f"report {CLIPS} for papers"
            )
    return FVDResult(fvd(sides[0].features, sides[1].features), sides[0], sides[1], notes)
