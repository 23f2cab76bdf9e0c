"""Decode diffusion latents to video frames with an exported osp VAE decoder, using only onnxruntime
and numpy (no osp, no torch).

    python examples/onnx_decode.py EXPORT_DIR latents.npy frames.npy

EXPORT_DIR is a folder written by ``osp export --target onnx``; its manifest.json names the decoder
file and its input / output tensors. ``latents.npy`` holds scaled latents (B, C, t, h, w) as the
sampler produces them; ``frames.npy`` receives uint8 frames (B, T, H, W, 3).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def decode(export_dir: Path, latents: np.ndarray) -> np.ndarray:
    """(B, C, t, h, w) latents -> (B, 3, T, H, W) float video in about [-1, 1]."""
    manifest = json.loads((export_dir / "manifest.json").read_text())
    decoder = manifest["components"]["vae_decoder"]
    (latents_input,) = decoder["inputs"]
    expected_channels = latents_input["shape"][1]
    if latents.ndim != 5 or latents.shape[1] != expected_channels:
        raise SystemExit(f"latents must be (B, {expected_channels}, t, h, w), got {latents.shape}")
    session = ort.InferenceSession(str(export_dir / decoder["file"]), providers=["CPUExecutionProvider"])
    (video,) = session.run(
        [decoder["outputs"][0]["name"]], {latents_input["name"]: latents.astype(np.float32)}
    )
    return video


def to_frames(video: np.ndarray) -> np.ndarray:
    """[-1, 1] (B, 3, T, H, W) -> uint8 (B, T, H, W, 3), as osp writes videos."""
    pixels = np.clip((video + 1.0) * 127.5, 0.0, 255.0).round().astype(np.uint8)
    return pixels.transpose(0, 2, 3, 4, 1)


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    export_dir, latents_path, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    video = decode(export_dir, np.load(latents_path))
    np.save(out_path, to_frames(video))
    print(f"decoded {video.shape[0]} clip(s) of {video.shape[2]} frames at {video.shape[3]}x{video.shape[4]}")


if __name__ == "__main__":
    main()
