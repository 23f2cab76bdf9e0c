"""Folders of clips as the metrics read them: which files count as videos, and in which order."""

from __future__ import annotations

from pathlib import Path

from osp.errors import ConfigError

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif"})
CACHE_DIR = ".osp-cache"  # inside an evaluated folder; hidden, so never listed as clips


def list_videos(folder: str | Path, what: str = "folder") -> list[Path]:
    """Every video file under ``folder`` (subfolders too), sorted by relative path; hidden paths skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{what}: {folder} is not a folder")
    found = [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in VIDEO_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    if not found:
        raise ConfigError(f"{what}: {folder} holds no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())
