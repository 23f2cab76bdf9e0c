"""benchmarks/gpu_suite.py runs its parts and merges what they measured; on the CPU in smoke mode (a tiny
preset), so a GPU session finds a suite that already works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def suite(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), *args],
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip


def test_smoke_run_merges_each_parts_results(tmp_path: Path) -> None:
    done = suite("--out", str(tmp_path), "--smoke", "--parts", "forward,vae,aoti")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "suite.json").read_text())
    parts = results["parts"]
    assert parts["aoti"]["status"] == "no smoke mode"
    assert parts["forward"]["status"] == "ok" and parts["vae"]["status"] == "ok", parts
    (case,) = parts["forward"]["result"]["cases"]
    assert {"diffusers", "osp", "osp sdpa+plain norm"} <= set(case["ms"])
    errors = case["bf16_error_vs_own_fp32"]
    # fp32 osp and fp32 diffusers with the same weights agree to rounding; bf16 is far coarser
    assert errors["osp_fp32_vs_diffusers_fp32"]["max_abs"] < 1e-4
    assert errors["osp_bf16_vs_fp32"]["max_abs"] > 1e-3
    assert set(parts["vae"]["result"]["decode"]) == {"tiled", "untiled"}
    assert "Latte-T2V-XL/2 forward" in (tmp_path / "suite.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite.json", "suite.log", "suite.md"]


def test_unknown_part_is_refused(tmp_path: Path) -> None:
    done = suite("--out", str(tmp_path), "--parts", "forward,warp")
    assert done.returncode == 2 and "unknown part(s) warp" in done.stderr


@pytest.mark.slow  # two Inductor C++ compiles
def test_gpu_aoti_checks_itself_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_aoti.py --smoke: tiny packages exported, checked and sampled beside eager."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_aoti.py"), "--out", str(tmp_path),
                           "--smoke"], capture_output=True, text=True, cwd=ROOT, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_aoti.json").read_text())
    assert len(res["export_checks"]) == 2 and res["eager_s"] > 0 and res["aoti_s"] > 0
    assert res["latents_max_abs_diff"] < 1e-3  # fp32 packages against eager, 2 steps
