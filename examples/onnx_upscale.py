"""Upscale a clip with an exported osp upscaler, using only onnxruntime and numpy (no osp, no torch).

    python examples/onnx_upscale.py EXPORT_DIR frames.npy upscaled.npy

EXPORT_DIR is a folder written by ``osp export --components upscaler``; its manifest.json names the
upscaler file and its input / output tensors. ``frames.npy`` holds uint8 frames (T, H, W, 3);
``upscaled.npy`` receives uint8 frames (T, s*H, s*W, 3).

The clip goes through in chunks of ``CHUNK`` frames, each with ``CONTEXT`` real frames on either side
(osp upscalers see at most 3 neighbours each way), so memory stays bounded on long clips and every
output frame is the one the whole clip would give.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

CHUNK = 16
CONTEXT = 3


def upscale(export_dir: Path, frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, s*H, s*W, 3)."""
    manifest = json.loads((export_dir / "manifest.json").read_text())
    upscaler = manifest["components"]["upscaler"]
    (video_input,) = upscaler["inputs"]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise SystemExit(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    session = ort.InferenceSession(str(export_dir / upscaler["file"]), providers=["CPUExecutionProvider"])
    video = frames.transpose(3, 0, 1, 2)[None].astype(np.float32) / 127.5 - 1.0  # (1, 3, T, H, W) in [-1, 1]
    count = frames.shape[0]
    out = []
    for start in range(0, count, CHUNK):
        stop = min(start + CHUNK, count)
        lo, hi = max(0, start - CONTEXT), min(count, stop + CONTEXT)
        (y,) = session.run(None, {video_input["name"]: video[:, :, lo:hi]})
        out.append(y[0, :, start - lo : stop - lo])  # (3, n, s*H, s*W)
    pixels = np.clip((np.concatenate(out, axis=1) + 1.0) * 127.5, 0.0, 255.0).round().astype(np.uint8)
    return pixels.transpose(1, 2, 3, 0)


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    export_dir, frames_path, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    frames = np.load(frames_path)
    upscaled = upscale(export_dir, frames)
    np.save(out_path, upscaled)
    print(f"upscaled {frames.shape[0]} frames from {frames.shape[1]}x{frames.shape[2]} to "
          f"{upscaled.shape[1]}x{upscaled.shape[2]}")  # fmt: skip


if __name__ == "__main__":
    main()
