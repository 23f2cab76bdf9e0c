"""The engine cache key: a TensorRT engine is only valid for the exact inputs that built it.

An engine bakes in the graph, the weights, the precision, the optimization profiles, the TensorRT
version, the GPU it was tuned on and (for the ``trt`` flavour) the plugin's source. The key hashes all
of them; an engine whose recorded key differs from the one the current request computes is refused
with a message saying what changed and how to rebuild, never silently reused. Pure Python: no
TensorRT needed to compute or check a key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from osp.export.manifest import EngineMismatchError, file_hash
from osp.io.weights import atomic_write_text

Profiles = Sequence[Mapping[str, Sequence[Sequence[int]]]]


@dataclass(frozen=True)
class EngineKey:
    graph_sha256: str  # the ONNX file (and its external data): graph and weights as exported
    weights_sha256: str  # the model folder the ONNX came from
    precision: str
    profiles: str  # canonical JSON of the optimization profiles
    tensorrt_version: str
    gpu: str
    plugin_sha256: str  # osp's plugin sources; "none" when TensorRT's own attention is used

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def parts(self) -> dict[str, str]:
        return {**asdict(self), "key": self.digest()}


def graph_hash(onnx_path: Path) -> str:
    """The ONNX file plus any external-data files beside it that share its stem."""
    digest = hashlib.sha256(file_hash(onnx_path).encode())
    for extra in sorted(onnx_path.parent.glob(onnx_path.name + ".*")):
        digest.update(extra.name.encode() + file_hash(extra).encode())
    return digest.hexdigest()


def plugin_hash(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def engine_key(
    *,
    graph_sha256: str,
    weights_sha256: str,
    precision: str,
    profiles: Profiles,
    tensorrt_version: str,
    gpu: str,
    plugin_sha256: str = "none",
) -> EngineKey:
    canonical = json.dumps(
        [{k: [list(s) for s in v] for k, v in p.items()} for p in profiles], sort_keys=True
    )
    return EngineKey(graph_sha256, weights_sha256, precision, canonical, tensorrt_version, gpu, plugin_sha256)


def record_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".key.json")


def write_record(engine_path: Path, key: EngineKey) -> None:
    atomic_write_text(record_path(engine_path), json.dumps(key.parts(), indent=2) + "\n")


def check_engine(engine_path: Path, expected: EngineKey, rebuild: str) -> None:
    """Refuse ``engine_path`` unless it was built for ``expected``; ``rebuild`` is the command to run."""
    record = record_path(engine_path)
    if not engine_path.is_file() or not record.is_file():
        raise EngineMismatchError(
            f"{engine_path}: no engine (or no key record) here; build it with: {rebuild}"
        )
    try:
        found: dict[str, Any] = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        found = {}
    if found.get("key") == expected.digest():
        return
    changed = [name for name, value in expected.parts().items() if name != "key" and found.get(name) != value]
    raise EngineMismatchError(
        f"{engine_path}: built for another {', '.join(changed) or 'configuration'}; "
        f"it is never reused across changes: rebuild with: {rebuild}"
    )
