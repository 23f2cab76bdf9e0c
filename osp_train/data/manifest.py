"""Training manifests: one row per video or image, with a caption (text-to-video) or a class label.

Two file formats hold the same rows:

* JSONL (``.jsonl``): one object per line, ``{"path": "clips/a.mp4", "caption": "a dog", "fps": 24}``
  or ``{"path": "a.mp4", "class": 3}``. Blank lines are ignored.
* CSV (``.csv``): a header row naming the columns ``path``, ``caption`` and/or ``class``, optional
  ``fps``; an empty cell is an absent value.

Relative paths are relative to the manifest's folder, so a dataset folder can move as a whole. A
manifest is either captioned or labelled, never a mix: the first row decides and every later row must
agree. Unknown keys are errors (Open-Sora-Plan v1.0 JSON uses ``cap``; naming it here catches that).
Files are not opened while reading a manifest: a missing or corrupt file is the dataset's business,
which skips and counts it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osp.errors import ConfigError
from osp.io.video import IMAGE_SUFFIXES
from osp.io.weights import atomic_write_text

_KEYS = frozenset({"path", "caption", "class", "fps"})
_FORMATS = (".jsonl", ".csv")


@dataclass(frozen=True)
class ManifestEntry:
    """One training sample's file and its condition: exactly one of ``caption`` and ``label``."""

    path: Path  # absolute once read from a manifest
    caption: str | None = None
    label: int | None = None  # the manifest's ``class`` column
    fps: float | None = None  # the source frame rate when the container's is wrong or missing

    @property
    def is_image(self) -> bool:
        """Still images (png, jpg, ...) are read as 1-frame videos."""
        return self.path.suffix.lower() in IMAGE_SUFFIXES


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ConfigError(f"{path}: a manifest must be .jsonl or .csv, got {suffix or 'no suffix'!r}")
    return suffix


def _entry(row: Mapping[str, Any], *, where: str, root: Path) -> ManifestEntry:
    """Validate one row; every message starts with ``file:line``."""
    unknown = sorted(set(row) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; a row has path, caption or class, and fps")
    path = row.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"{where}: path is missing or empty")
    caption, label = row.get("caption"), row.get("class")
    if (caption is None) == (label is None):
        both = "both caption and class" if caption is not None else "neither caption nor class"
        raise ConfigError(f"{where}: a row needs exactly one of caption and class, got {both}")
    if caption is not None and (not isinstance(caption, str) or not caption.strip()):
        raise ConfigError(f"{where}: caption must be a non-empty string, got {caption!r}")
    if label is not None:
        # bool is an int subclass in Python, but `true` is never a meant class id.
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            raise ConfigError(f"{where}: class must be an integer >= 0, got {label!r}")
    fps = row.get("fps")
    if fps is not None:
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: fps must be a number, got {fps!r}") from None
        if not math.isfinite(fps) or fps <= 0:
            raise ConfigError(f"{where}: fps must be > 0, got {fps!r}")
    resolved = Path(os.path.expanduser(path.strip()))
    if not resolved.is_absolute():
        resolved = root / resolved
    return ManifestEntry(path=Path(os.path.normpath(resolved)), caption=caption, label=label, fps=fps)


def _jsonl_rows(text: str, source: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{source}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{source}:{number}: a row must be a JSON object, got {type(row).__name__}")
        yield number, row


def _csv_rows(text: str, source: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "path" not in reader.fieldnames:
        raise ConfigError(f"{source}:1: the header row must name a 'path' column, got {reader.fieldnames}")
    for row in reader:
        if None in row:  # DictReader files surplus cells under the key None
            raise ConfigError(f"{source}:{reader.line_num}: more cells than header columns")
        # An empty cell is an absent value, so a captioned CSV may still carry an empty class column.
        yield reader.line_num, {key: value for key, value in row.items() if value not in (None, "")}


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """All rows of a JSONL or CSV manifest; a bad row raises :class:`ConfigError` naming ``file:line``."""
    path = Path(path)
    kind = _format(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such manifest file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read manifest ({err})") from None
    rows = _jsonl_rows(text, path) if kind == ".jsonl" else _csv_rows(text, path)
    root = path.resolve().parent
    entries: list[ManifestEntry] = []
    for number, row in rows:
        entry = _entry(row, where=f"{path}:{number}", root=root)
        if entries and (entry.caption is None) != (entries[0].caption is None):
            first = "caption" if entries[0].caption is not None else "class"
            raise ConfigError(
                f"{path}:{number}: earlier rows have a {first}, this one does not; "
                "a manifest is either captioned or labelled"
            )
        entries.append(entry)
    if not entries:
        raise ConfigError(f"{path}: the manifest has no rows")
    return entries


def _relative(path: Path, root: Path) -> str:
    # Paths under the manifest's folder are written relative, so the folder stays movable.
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path.resolve())


def _row(entry: ManifestEntry, root: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"path": _relative(entry.path, root)}
    if entry.caption is not None:
        row["caption"] = entry.caption
    if entry.label is not None:
        row["class"] = entry.label
    if entry.fps is not None:
        row["fps"] = entry.fps
    return row


def write_manifest(path: str | Path, entries: Iterable[ManifestEntry]) -> Path:
    """Write ``entries`` as JSONL or CSV (by suffix), atomically; :func:`read_manifest` reads it back."""
    path = Path(path)
    kind = _format(path)
    root = path.resolve().parent
    rows: Sequence[dict[str, Any]] = [_row(entry, root) for entry in entries]
    if kind == ".jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        columns = [key for key in ("path", "caption", "class", "fps") if any(key in row for row in rows)]
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    atomic_write_text(path, text)
    return path
