"""What the bundled demo model does: the main command's wall time, VAE fidelity and prompt adherence.

    python benchmarks/demo_model.py                        # the bundled osp-demo-t2v
    python benchmarks/demo_model.py --model runs/demo/osp-demo-t2v --sheet docs/demo-heldout.png

Measured, each the way a user gets it:

* ``osp generate PROMPT -o out.mp4`` in a fresh process (imports, model load, sampling, decode, write),
  wall time, median of ``--runs``;
* VAE PSNR (``osp.pipelines.reconstruct``, posterior mean, uint8 frames): 8 held-out synthetic clips
  (``osp data synth --split heldout --seed 1``, never seen in training) and bigbuckbunny at 17x64x64
  (real video the VAE never saw);
* the VAE's own ceiling: 48 held-out clips encoded and decoded, measured by the adherence evaluator
  (what the decoder lets any transformer reach);
* adherence: ``osp eval adherence --seeds 4 --split all`` (background, colour, shape and direction
  read from the pixels, separately for training and held-out combinations);
* with ``--sheet``: ``osp eval adherence --split heldout --seeds 1``'s contact sheet, copied there.

Targets are the demo model's: wall <= 10 s, PSNR >= 32 dB held-out synthetic and >= 24 dB bigbuckbunny,
held-out colour and background >= 95 %, direction >= 90 %, shape >= 80 %.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import machine_info, markdown_report, osp_cli, print_report, write_results

from osp.io.samples import sample_video
from osp.pipelines.bundled import resolve_model
from osp.pipelines.reconstruct import ReconstructConfig, reconstruct
from osp.synth.dataset import write_synth_dataset
from osp.vae import load_causal_vae

PROMPT = "a red circle moving left on a black background"
TARGETS = {"wall_s": 10.0, "psnr_synthetic": 32.0, "psnr_bbb": 24.0, "color": 0.95, "background": 0.95,
           "direction": 0.90, "shape": 0.80}  # fmt: skip


def generate_wall(model: Path, runs: int, work: Path) -> list[float]:
    times = []
    for i in range(runs):
        start = time.perf_counter()
        osp_cli("generate", PROMPT, "--model", str(model), "-o", str(work / f"gen{i}.mp4"), "-q")
        times.append(time.perf_counter() - start)
    return times


def vae_psnr(model: Path, work: Path) -> dict[str, Any]:
    vae = load_causal_vae(model / "vae").eval()
    heldout = write_synth_dataset(work / "heldout", count=8, seed=1, split="heldout")
    clips = sorted((heldout.folder / "clips").glob("*.mp4"))
    synthetic = []
    for clip in clips:
        cfg = ReconstructConfig(video=clip, out=work / "recon" / clip.name, vae=model / "vae", compare=False)
        synthetic.append(reconstruct(cfg, vae).psnr)
    bbb = ReconstructConfig(video=sample_video("bigbuckbunny"), out=work / "recon" / "bbb.mp4",
                            vae=model / "vae", frames=17, size=(64, 64), compare=False)  # fmt: skip
    return {"heldout_synthetic": synthetic, "heldout_synthetic_mean": statistics.mean(synthetic),
            "bigbuckbunny_17x64x64": reconstruct(bbb, vae).psnr}  # fmt: skip


def vae_ceiling(model: Path, work: Path) -> dict[str, Any]:
    """Adherence of the VAE alone: each of 48 held-out clips (the set of scripts/train_demo.sh) encoded,
    decoded from the posterior mean and measured like a generated video. A transformer that produced
    the encoder's own latents would score this, so it bounds what the decoder lets any transformer reach."""
    import torch

    from osp.eval.adherence import ATTRIBUTES, measure
    from osp.io.video import from_model, read_video, to_model

    vae = load_causal_vae(model / "vae").eval()
    heldout = write_synth_dataset(work / "heldout48", count=48, seed=1, split="heldout")
    labels = [json.loads(line) for line in (heldout.folder / "labels.jsonl").read_text().splitlines()]
    correct = dict.fromkeys(ATTRIBUTES, 0)
    for label in labels:
        video = read_video(heldout.folder / label["path"], num_frames=17)
        with torch.inference_mode():
            recon = vae.decode(vae.encode(to_model(video.frames)[None]).mode())
        got = measure(from_model(recon[0].float()))
        for attribute in ATTRIBUTES:
            correct[attribute] += getattr(got, attribute) == label[attribute]
    return {"clips": len(labels), "correct": correct}


def adherence(model: Path, seeds: int, split: str, out: Path) -> dict[str, Any]:
    osp_cli("eval", "adherence", "--model", str(model), "--seeds", str(seeds), "--split", split,
            "--out", str(out), "-q")  # fmt: skip
    return json.loads((out / "report.json").read_text())["summary"]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder or name (default: the bundled model)")
    parser.add_argument("--runs", type=int, default=3, help="fresh-process generate runs")
    parser.add_argument("--seeds", type=int, default=4, help="adherence videos per combination")
    parser.add_argument("--sheet", type=Path, default=None, help="copy the held-out contact sheet here")
    parser.add_argument("--note", default="", help="said in the results, e.g. how the model was trained")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    model = resolve_model(args.model)
    with tempfile.TemporaryDirectory(prefix="osp-demo-bench-") as tmp:
        work = Path(tmp)
        wall = generate_wall(model, args.runs, work)
        psnr = vae_psnr(model, work)
        ceiling = vae_ceiling(model, work)
        summary = adherence(model, args.seeds, "all", work / "eval")
        if args.sheet is not None:
            adherence(model, 1, "heldout", work / "sheet")
            args.sheet.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / "sheet" / "contact_sheet.png", args.sheet)

    size_mb = sum(p.stat().st_size for p in model.rglob("*.safetensors")) / 1e6
    train, held = summary["train"], summary["heldout"]
    rows = [
        ["`osp generate` one prompt, fresh process, wall", f"{statistics.median(wall):.1f} s", "<= 10 s"],
        ["VAE PSNR, 8 held-out synthetic clips (mean)", f"{psnr['heldout_synthetic_mean']:.1f} dB "
         f"({min(psnr['heldout_synthetic']):.1f}-{max(psnr['heldout_synthetic']):.1f})", ">= 32 dB"],
        ["VAE PSNR, bigbuckbunny 17x64x64", f"{psnr['bigbuckbunny_17x64x64']:.1f} dB", ">= 24 dB"],
        ["VAE alone: shape read from 48 held-out clips encoded + decoded",
         f"{ceiling['correct']['shape']}/{ceiling['clips']} (colour {ceiling['correct']['color']}/{ceiling['clips']})",
         "-"],
    ]  # fmt: skip
    for attribute, target in (("background", ">= 95%"), ("color", ">= 95%"), ("shape", ">= 80%"),
                              ("direction", ">= 90%"), ("all", "-")):  # fmt: skip
        rows.append([f"adherence {attribute}: train / held-out",
                     f"{_pct(train['accuracy'][attribute])} / {_pct(held['accuracy'][attribute])}", target])  # fmt: skip
    info = machine_info()
    device = info["gpu"] or f"{info['cpu']}, {info['usable_cores']} cores"
    notes = [
        f"Device: {device}; torch {info['torch']}; {info['date']}.",
        f"Model: {model} ({size_mb:.1f} MB of safetensors).",
        f"Adherence: {args.seeds} seeds x 96 prompts ({train['count']} train, {held['count']} held-out videos), "
        "`osp eval adherence --split all`; targets are on held-out combinations.",
        f'Generate: `osp generate "{PROMPT}" -o out.mp4`, median of {args.runs} fresh processes '
        f"({', '.join(f'{t:.1f}' for t in wall)} s).",
    ]
    if args.note:
        notes.append(args.note)
    title = "The bundled demo model (osp-demo-t2v)"
    header = ["measure", "value", "target"]
    print_report(title, header, rows, notes)
    data = {"machine": info, "model": str(model), "size_mb": size_mb, "generate_wall_s": wall,
            "vae_psnr_db": psnr, "vae_ceiling": ceiling, "adherence": summary, "targets": TARGETS, "notes": notes}  # fmt: skip
    write_results(args.out, "demo_model", data, markdown_report(title, header, rows, notes))


if __name__ == "__main__":
    main()
