"""With the repository root on sys.path (python -m, torchrun -m, pytest, a notebook in the clone), every
import still resolves to where it should: the installed third-party packages, and osp's own folders only
under the osp namespace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, importlib.metadata, json, sys
found = {}
for name in ("kernels", "osp.kernels", "osp.cli", "osp.export", "transformers.models.bert.modeling_bert",
             "diffusers.models"):
    try:
        found[name] = importlib.import_module(name).__file__
    except ImportError as err:
        found[name] = "ImportError: " + str(err)
try:
    dist = importlib.metadata.distribution("kernels")
    found["kernels-dist"] = str(dist.locate_file(""))
except importlib.metadata.PackageNotFoundError:
    found["kernels-dist"] = None
found["path0"] = sys.path[0]
print(json.dumps(found))
"""


def _run_in_root(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def imports() -> dict[str, str | None]:
    # -c puts the working directory (the root) first on sys.path, as python -m does.
    done = _run_in_root("-c", PROBE)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_root_is_on_the_path(imports: dict[str, str | None]) -> None:
    assert imports["path0"] in ("", str(ROOT))


def test_third_party_kernels_is_not_shadowed(imports: dict[str, str | None]) -> None:
    where = imports["kernels"]
    assert where is not None
    if imports["kernels-dist"] is None:  # not installed: then nothing of osp may answer to the name
        assert where.startswith("ImportError") or not where.startswith(str(ROOT)), where
    else:
        assert Path(where).is_relative_to(imports["kernels-dist"]), where
        assert not Path(where).is_relative_to(ROOT / "kernels"), where


@pytest.mark.parametrize("name", ["kernels", "cli", "export"])
def test_osp_folders_answer_only_under_osp(imports: dict[str, str | None], name: str) -> None:
    where = imports[f"osp.{name}"]
    assert where is not None and not where.startswith("ImportError"), where
    assert Path(where).parts[-3:] == ("osp", name, "__init__.py"), where
    assert not (ROOT / name / "__init__.py").exists()  # so the bare name is never a package here


@pytest.mark.parametrize("name", ["transformers.models.bert.modeling_bert", "diffusers.models"])
def test_libraries_import_from_their_installs(imports: dict[str, str | None], name: str) -> None:
    where = imports[name]
    assert where is not None and not where.startswith("ImportError"), where
    assert not Path(where).is_relative_to(ROOT) or ".venv" in Path(where).parts, where


@pytest.mark.parametrize("module", ["osp.cli.main", "osp.cli.train"])
def test_python_dash_m_from_the_root(module: str) -> None:
    done = _run_in_root("-m", module, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage:" in done.stdout


NO_PYAV = """
import importlib, pkgutil, sys
sys.modules["av"] = None  # as if PyAV were not installed: any import of it raises ImportError
import osp, osp_train
failed = []
for package in (osp, osp_train):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.endswith("__main__"):
            try:
                importlib.import_module(info.name)
            except ImportError as err:
                failed.append(f"{info.name}: {err}")
print("\\n".join(failed))
"""


def test_every_osp_module_imports_without_pyav(tmp_path: Path) -> None:
    """Only reading or writing a video file needs PyAV (and its FFmpeg libraries): models, pipelines,
    exporters and the training loop import without it, e.g. on a GPU image that lacks it."""
    done = subprocess.run([sys.executable, "-c", NO_PYAV], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", done.stdout
