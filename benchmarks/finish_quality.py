"""How much the finishing models add over the classic baselines, on video none of them trained on.

    python benchmarks/finish_quality.py                                  # the bundled models
    python benchmarks/finish_quality.py --upscaler runs/finish/upscale/ema --interpolator runs/finish/interpolate/ema

Upscaler, on bigbuckbunny (held out of every osp training run): four 17-frame clips resized and
centre-cropped to 256x256 are the ground truth; the input is that clip made smaller two ways:

* ``bicubic``: antialiased bicubic downscaling (the classic SR benchmark, and what a base model's
  clean low-resolution output is closest to);
* ``degraded``: the training degradations (blur, downscale, noise, H.264; those of
  configs/demo/upscale.yaml, never the clean case), four fixed draws per clip (``--draws``).

Measured against bicubic up-sampling of the same input: PSNR on luma (BT.601 Y, ``scale`` pixels of
border cropped, as the SR literature measures), SSIM on luma, and temporal flicker, mean over pixels
and frame pairs of |Δt(output) - Δt(ground truth)| in 8-bit luma levels (0 = the output changes from
frame to frame exactly as the truth does). Each scale is made by the bundled model for it (x2:
osp-demo-upscale-x2, x4: osp-demo-upscale-x4), or by ``--upscaler`` at each scale it makes (a x4 model
makes x2 by area-downsampling its output); each plainly and as a self-ensemble (``osp upscale
--ensemble``: the mean over the frame's 8 flips and transposes), and, where the model has a denoising
partner (``<model>-denoise`` beside it), blended with it at ``osp upscale --denoise 0.5`` and ``1``.

Interpolator: every other frame of a 33-frame clip (x2), or three of every four (x4), is dropped and
restored; PSNR (RGB) of the restored frames against the dropped ones, against linear blending of the
two kept neighbours at the frame's time; plainly and as the mirror ensemble (``osp interpolate
--ensemble``: each new frame the mean over the pair mirrored 4 ways). On bigbuckbunny at 256x256 and at 64x64 (the size osp
generate interpolates), and on 8 held-out synthetic shape clips (``osp data synth --split heldout
--seed 1``, 17 frames: 8 restored each at x2, 12 at x4).

Targets: upscaler >= +1.5 dB over bicubic at x2, >= +1.0 dB at x4, on both inputs, SSIM above
bicubic's, flicker no worse than bicubic's; interpolator >= +2 dB over linear blending on
bigbuckbunny. Writes finish_quality.{json,md} and contact sheets (input | bicubic | osp | truth,
linear | osp | truth) to --out.
"""

from __future__ import annotations

import argparse
import itertools
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import json_number, machine_info, markdown_report, print_report, write_results

from osp.interpolate import IFNetInterpolator
from osp.io.samples import sample_video
from osp.io.video import from_model, read_video, to_model, write_contact_sheet
from osp.metrics import flicker, luma, psnr, ssim
from osp.pipelines.finish import denoise_partner, load_finisher, resolve_finisher
from osp.synth.dataset import write_synth_dataset
from osp.upscale import SRVGGUpscaler, load_upscaler
from osp_train.config import TrainConfig
from osp_train.degrade import degrade, downscale
from osp_train.finish_config import DegradeConfig

ROOT = Path(__file__).resolve().parents[1]
STARTS = (0, 36, 72, 108)  # four 17-frame bigbuckbunny clips (it has 132 frames)
TARGETS = {"x2": 1.5, "x4": 1.0, "interpolate": 2.0}


def upscale_metrics(out: torch.Tensor, truth: torch.Tensor, border: int) -> dict[str, float]:
    """PSNR / SSIM on luma with ``border`` pixels cropped, and temporal flicker, of uint8 clips."""
    y, t = luma(out), luma(truth)
    crop = (slice(None), slice(None), slice(border, -border), slice(border, -border))
    return {
        "psnr": psnr(y[crop], t[crop], data_range=255.0),
        "ssim": ssim(y[crop], t[crop], data_range=255.0),
        "flicker": flicker(y, t, dim=0).item(),
    }


def bicubic_up(low: torch.Tensor, scale: int) -> torch.Tensor:
    """uint8 (T, 3, h, w) -> uint8 (T, 3, s*h, s*w), plain bicubic interpolation."""
    up = F.interpolate(low.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    return up.round().clamp(0, 255).to(torch.uint8)


def run_upscaler(model: SRVGGUpscaler, low: torch.Tensor, scale: int, ensemble: bool = False) -> torch.Tensor:
    with torch.inference_mode():
        return from_model(model.upscale(to_model(low)[None], scale, ensemble=ensemble)[0])


def evaluate_upscaler(
    models: dict[int, SRVGGUpscaler],
    sheets: Path,
    degradations: DegradeConfig,
    partners: dict[int, SRVGGUpscaler] | None = None,
    draws: int = 4,
) -> list[dict[str, Any]]:
    """One row per (scale, variant, input kind); ``models[scale]`` makes that scale, plainly, as a
    self-ensemble and, with a denoising partner in ``partners[scale]``, blended with it at 0.5 and 1;
    the degraded rows average ``draws`` degradations of each clip."""
    rows = []
    clips = [
        read_video(sample_video("bigbuckbunny"), num_frames=17, start_frame=s, size=256).frames
        for s in STARTS
    ]
    degraded = degradations.replace(clean=0.0)
    for scale, model in sorted(models.items()):
        partner = (partners or {}).get(scale)
        variants: list[tuple[bool, float | None]] = [(False, None), (True, None)]
        variants += [(False, 0.5), (False, 1.0)] if partner is not None else []
        for (ensemble, denoise), kind in itertools.product(variants, ("bicubic", "degraded")):
            net = model if partner is None or denoise is None else model.blended(partner, denoise)
            totals: dict[str, list[float]] = {}
            for i, truth in enumerate(clips):
                for draw, low in enumerate(inputs(truth, scale, kind, degraded, i, draws)):
                    ours, base = run_upscaler(net, low, scale, ensemble), bicubic_up(low, scale)
                    for name, video in (("osp", ours), ("bicubic", base)):
                        for key, value in upscale_metrics(video, truth, scale).items():
                            totals.setdefault(f"{name}_{key}", []).append(value)
                    if i == 0 and draw == 0 and not ensemble and denoise in (None, 1.0):
                        near = low.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
                        picks = [0, 8, 16]
                        write_contact_sheet(
                            sheets / f"upscale_x{scale}_{kind}{'' if denoise is None else '_denoise'}.png",
                            [near[picks], base[picks], ours[picks], truth[picks]],
                            labels=["input", "bicubic", "osp", "truth"],
                        )
            mean = {k: sum(v) / len(v) for k, v in totals.items()}
            rows.append({"scale": scale, "input": kind, "ensemble": ensemble, "denoise": denoise,
                         "inputs": len(totals["osp_psnr"]), **mean, "gain_db": mean["osp_psnr"] - mean["bicubic_psnr"]})  # fmt: skip
    return rows


def inputs(
    truth: torch.Tensor, scale: int, kind: str, degraded: DegradeConfig, clip: int, draws: int
) -> list[torch.Tensor]:
    """The low-resolution inputs made from one ground-truth clip: its bicubic downscale, or ``draws``
    degradations, each a fixed function of (scale, clip, draw) (draw 0 is the benchmark's first)."""
    if kind == "bicubic":
        return [downscale(truth.float(), scale).round().clamp(0, 255).to(torch.uint8)]
    seeds = [f"bench:{scale}:{clip}" + (f":{d}" if d else "") for d in range(draws)]
    return [degrade(truth, scale, degraded, random.Random(seed)) for seed in seeds]


def restore(
    model: IFNetInterpolator, clip: torch.Tensor, factor: int, ensemble: bool = False
) -> tuple[torch.Tensor, ...]:
    """Keep every ``factor``-th frame of a (T, 3, H, W) uint8 clip ((T - 1) % factor == 0) and restore
    the others: (osp, linear blend, truth) frames, each (T - T // factor - 1, 3, H, W)."""
    kept = clip[::factor]
    with torch.inference_mode():
        made = from_model(model.interpolate(to_model(kept)[None], factor, ensemble=ensemble)[0])
    new = [i for i in range(len(clip)) if i % factor]
    a, b = kept[:-1].float(), kept[1:].float()
    blends = [((1 - k / factor) * a + k / factor * b).round().to(torch.uint8) for k in range(1, factor)]
    linear = torch.stack(blends, dim=1).flatten(0, 1)  # pair-major, as ``new`` runs
    return made[new], linear, clip[new]


def evaluate_interpolator(model: IFNetInterpolator, sheets: Path, work: Path) -> list[dict[str, Any]]:
    sets: dict[str, list[torch.Tensor]] = {
        f"bigbuckbunny {s}x{s}": [
            read_video(sample_video("bigbuckbunny"), num_frames=33, start_frame=start, size=s).frames
            for start in (0, 50, 99)
        ]
        for s in (256, 64)
    }
    heldout = write_synth_dataset(work / "heldout", count=8, seed=1, split="heldout")
    sets["synthetic held-out 64x64"] = [
        read_video(p).frames for p in sorted((heldout.folder / "clips").glob("*.mp4"))
    ]
    rows = []
    for factor, ensemble, (name, clips) in itertools.product((2, 4), (False, True), sets.items()):
        ours_db, linear_db = [], []
        for i, clip in enumerate(clips):
            ours, linear, truth = restore(model, clip, factor, ensemble)
            ours_db.append(psnr(ours, truth))
            linear_db.append(psnr(linear, truth))
            if i == 0 and not ensemble:
                picks = [0, len(truth) // 2, len(truth) - 1]
                suffix = "" if factor == 2 else f"_x{factor}"
                write_contact_sheet(
                    sheets / f"interpolate_{name.split()[0]}_{clip.shape[-1]}{suffix}.png",
                    [linear[picks], ours[picks], truth[picks]],
                    labels=["linear", "osp", "truth"],
                )
        osp_mean, linear_mean = sum(ours_db) / len(ours_db), sum(linear_db) / len(linear_db)
        rows.append({"factor": factor, "ensemble": ensemble, "set": name, "clips": len(clips), "osp_psnr": osp_mean,
                     "linear_psnr": linear_mean, "gain_db": osp_mean - linear_mean})  # fmt: skip
    return rows


def _relative(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--upscaler", default=None, help="folder or name (default: the bundled one per scale)"
    )
    parser.add_argument("--interpolator", default=None, help="folder or name (default: the bundled one)")
    parser.add_argument("--degrade-from", type=Path, default=ROOT / "configs" / "demo" / "upscale.yaml",
                        help="the training config whose upscale.degrade makes the degraded inputs")  # fmt: skip
    parser.add_argument("--draws", type=int, default=4, help="degradations of each clip (default 4)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.draws < 1:
        parser.error(f"--draws: give 1 or more, got {args.draws}")
    torch.manual_seed(0)
    ups = {scale: load_finisher("upscaler", args.upscaler, scale=scale) for scale in (2, 4)}
    rife = load_finisher("interpolator", args.interpolator)
    assert isinstance(rife, IFNetInterpolator)
    models = {s: up for s, up in ups.items() if isinstance(up, SRVGGUpscaler) and s in up.config.scales}
    folders = {s: resolve_finisher(args.upscaler, "upscaler", s) for s in models}
    made_by = {s: _relative(folder) for s, folder in folders.items()}
    found = {s: denoise_partner(folder) for s, folder in folders.items()}
    partners = {s: load_upscaler(path) for s, path in found.items() if path is not None}
    sheets = args.out / "finish_sheets"
    sheets.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        upscale_rows = evaluate_upscaler(
            models, sheets, TrainConfig.from_file(args.degrade_from).upscale.degrade, partners, args.draws
        )
        interpolate_rows = evaluate_interpolator(rife, sheets, Path(tmp))

    header = [
        "model",
        "data",
        "osp",
        "baseline",
        "gain",
        "target",
        "SSIM osp / bicubic",
        "flicker osp / bicubic",
    ]
    table = []
    for r in upscale_rows:
        target = TARGETS[f"x{r['scale']}"]
        variant = (
            " + ensemble" if r["ensemble"] else "" if r["denoise"] is None else f" --denoise {r['denoise']:g}"
        )
        table.append([f"upscaler x{r['scale']}{variant}",
                      f"bigbuckbunny 256x256, {r['input']} input",
                      f"{r['osp_psnr']:.2f} dB", f"{r['bicubic_psnr']:.2f} dB (bicubic)", f"{r['gain_db']:+.2f} dB",
                      f">= +{target} dB", f"{r['osp_ssim']:.4f} / {r['bicubic_ssim']:.4f}",
                      f"{r['osp_flicker']:.2f} / {r['bicubic_flicker']:.2f}"])  # fmt: skip
    for r in interpolate_rows:
        table.append([f"interpolator x{r['factor']}{' + ensemble' if r['ensemble'] else ''}",
                      f"{r['set']} ({r['clips']} clips)", f"{r['osp_psnr']:.2f} dB",
                      f"{r['linear_psnr']:.2f} dB (linear)", f"{r['gain_db']:+.2f} dB",
                      f">= +{TARGETS['interpolate']} dB" if r["set"].startswith("bigbuckbunny") and r["factor"] == 2 else "-", "-", "-"])  # fmt: skip
    notes = [
        "upscaler: "
        + ", ".join(f"x{s} {m}" for s, m in made_by.items())
        + f"; interpolator: {args.interpolator or 'bundled'}; "
        f"degraded inputs: {_relative(args.degrade_from)}'s upscale.degrade, clean draws excluded, "
        f"{args.draws} draws of each clip",
        "PSNR / SSIM of the upscaler on BT.601 luma with `scale` pixels of border cropped; flicker = mean "
        "|Δt(output) - Δt(truth)| in 8-bit luma levels (lower is steadier).",
        "a x4 model without a x2 one beside it makes x2 by area-downsampling its x4 output by 2.",
        "+ ensemble: `osp upscale --ensemble`, the mean over each frame's 8 flips and transposes (8x the time).",
        "--denoise S: `osp upscale --denoise S`, the model's weights blended with its -denoise partner's "
        "(trained on degraded input only): (1 - S) * model + S * partner.",
        "interpolator: every other frame (x2) or three of every four (x4) dropped and restored; PSNR over "
        "RGB of the restored frames; linear = the blend of the two kept neighbours at the frame's time; "
        "+ ensemble: `osp interpolate --ensemble`, each new frame the mean over the pair's 4 mirror images "
        "(4x the time).",
        f"machine: {machine_info()['cpu']}",
    ]
    print_report("Finishing models on held-out video", header, table, notes)
    data = {"machine": machine_info(), "targets": TARGETS, "upscaler": made_by,
            "denoise_partner": {s: _relative(path) for s, path in found.items() if path is not None},
            "interpolator": args.interpolator or "bundled",
            "upscale": [{k: json_number(v) if isinstance(v, float) else v for k, v in r.items()} for r in upscale_rows],
            "interpolate": [{k: json_number(v) if isinstance(v, float) else v for k, v in r.items()}
                            for r in interpolate_rows]}  # fmt: skip
    write_results(
        args.out,
        "finish_quality",
        data,
        markdown_report("Finishing models on held-out video", header, table, notes),
    )


if __name__ == "__main__":
    main()
