"""``osp eval``: evaluate videos. ``fvd``, ``clip-score`` and ``recon`` are the field's standard metrics
(their weights come from local files, nothing is downloaded); ``adherence`` checks prompts of the
moving-shapes domain from pixels."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from osp.cli.common import console

if TYPE_CHECKING:
    import torch

    from osp.eval.adherence import Request, Scored, SplitScore
    from osp.progress import ProgressDisplay

DEFAULT_OUT = Path("out/eval-adherence")
RESULTS = Path("out/eval")  # default folder of the metrics' JSON files
SHEET_FRAMES = 5  # frames per clip on the contact sheet


@click.group("eval")
def eval_group() -> None:
    """Evaluate videos: `fvd`, `clip-score`, `recon`, `adherence`."""


@eval_group.command()
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Score the clips of an `osp data synth` folder against its labels.jsonl instead.",
)
@click.option(
    "--model",
    "model",
    default=None,
    help="osp model folder or a name from `osp models`; default: the bundled demo model.",
)
@click.option(
    "--split",
    type=click.Choice(["all", "heldout", "train"]),
    default="all",
    show_default=True,
    help="Which (color, shape, direction) combos to prompt for, on both backgrounds.",
)
@click.option("--seeds", type=click.IntRange(min=1), default=4, show_default=True, help="Videos per combo.")
@click.option("--seed", type=int, default=0, show_default=True, help="Video n uses noise seed SEED + n.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first LIMIT combos.")
@click.option(
    "--steps", type=click.IntRange(min=1), default=None, help="Sampling steps; default from the model."
)
@click.option(
    "--guidance", type=click.FloatRange(min=0), default=None, help="Classifier-free guidance scale."
)
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Prompts per call.")
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--engine",
    type=click.Choice(["torch", "compile", "onnx", "trt"]),
    default="torch",
    show_default=True,
    help="Runtime of the denoiser and VAE decoder, as in osp generate: measures what an export costs in "
    "adherence (an int8 ONNX export, say).",
)
@click.option(
    "--engine-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="onnx / trt / compile engines: the folder osp export wrote for --model.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Folder for report.json, contact_sheet.png and clips/ [default: {DEFAULT_OUT}; "
    "with --labels, only when given].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def adherence(
    labels_path: Path | None, model: str | None, split: str, seeds: int, seed: int, limit: int | None,
    steps: int | None, guidance: float | None, batch: int, device: str, engine: str, engine_dir: Path | None,
    out: Path | None, quiet: bool,
) -> None:  # fmt: skip
    """Does a video show the background, colour, shape and direction its prompt asks for?

    Generates one prompt per combo of the split times --seeds with the model and measures every
    video from its pixels; prints accuracy per attribute for training and held-out combos.
    """
    from osp.errors import ConfigError
    from osp.progress import ProgressDisplay

    with ProgressDisplay(enabled=not quiet) as progress:
        if labels_path is not None:
            if model is not None or engine != "torch" or engine_dir is not None:
                raise ConfigError(
                    "--labels scores existing clips; it takes no --model, --engine or --engine-dir"
                )
            head: dict[str, object] = {"labels": str(labels_path)}
            extras, scored, summary = _score_labels(labels_path, progress)
        else:
            from osp.pipelines.bundled import resolve_model

            out = out or DEFAULT_OUT
            model_dir = resolve_model(model)
            head = {"model": str(model_dir), "split": split, "seeds": seeds, "seed": seed, "limit": limit,
                    "steps": steps, "guidance": guidance, "engine": engine,
                    "engine_dir": None if engine_dir is None else str(engine_dir)}  # fmt: skip
            extras, scored, summary = _generate_and_score(
                model_dir, split, seeds, seed, limit, steps, guidance, batch, device, (engine, engine_dir), out,
                progress,
            )  # fmt: skip
    _print_table(summary)
    if out is not None:
        _write_report(out / "report.json", head, extras, scored, summary)
        console.print(f"wrote {out / 'report.json'}")


Extras = list[dict[str, object]]  # per video: where it is and what made it


def _score_labels(
    path: Path, progress: ProgressDisplay
) -> tuple[Extras, list[Scored], dict[str, SplitScore]]:
    from osp.errors import ConfigError
    from osp.eval.adherence import Labels, score
    from osp.io.video import read_video
    from osp.synth.dataset import read_labels

    if not path.is_file():
        raise ConfigError(f"labels: {path}: no such file")
    clips = read_labels(path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not clips:
        raise ConfigError(f"labels: {path}: has no rows")
    videos = []
    with progress.step("read clips", len(rows)) as update:
        for i, row in enumerate(rows):
            if not isinstance(row.get("path"), str):
                raise ConfigError(f"{path}:{i + 1}: a label row needs a path")
            videos.append(read_video(path.parent / row["path"]).frames)
            update(i + 1, len(rows))
    with progress.step("measure"):
        scored, summary = score([Labels.of(c) for c in clips], videos)
    return [{"path": row["path"]} for row in rows], scored, summary


def _generate_and_score(
    model_dir: Path, split: str, seeds: int, seed: int, limit: int | None, steps: int | None,
    guidance: float | None, batch: int, device: str, runtime: tuple[str, Path | None], out: Path,
    progress: ProgressDisplay,
) -> tuple[Extras, list[Scored], dict[str, SplitScore]]:  # fmt: skip
    from osp.errors import ConfigError
    from osp.eval.adherence import plan, score
    from osp.io.video import write_video
    from osp.pipelines.text_to_video import TextToVideo, load_pipeline

    requests = plan(split, seeds, base_seed=seed, limit=limit)  # type: ignore[arg-type]
    with progress.step("load model"):
        pipe = load_pipeline(model_dir, device=device)
    if not isinstance(pipe, TextToVideo):
        raise ConfigError(f"model: {model_dir} holds a class-to-video model; adherence needs text-to-video")
    denoiser = decoder = None
    if runtime[0] != "torch":
        from osp.export.runtime import make_engine

        with progress.step(f"load {runtime[0]} engine"):
            engine = make_engine(runtime[0], pipe, engine_dir=runtime[1], model_dir=model_dir, batch=2)
            denoiser, decoder = engine.denoiser(), engine.decoder()
        manifest = getattr(engine, "manifest", None)
        if manifest is not None:  # an exported folder: as many prompts per call as its batch axis takes
            batch = min(batch, max(1, manifest.components["transformer"].axes["batch"].max // 2))
    videos: list[torch.Tensor] = []
    fps = pipe.spec.fps
    with progress.step("generate", len(requests)) as update:
        for start in range(0, len(requests), batch):
            chunk = requests[start : start + batch]
            # Clip i of a call uses seed + i, so each request gets exactly its own seed.
            result = pipe.generate(
                [r.prompt for r in chunk], steps=steps, guidance=guidance, seed=chunk[0].seed,
                denoiser=denoiser, decoder=decoder,
            )  # fmt: skip
            videos.extend(result.videos)
            fps = result.fps
            update(len(videos), len(requests))
    with progress.step("measure"):
        scored, summary = score([r.labels for r in requests], videos)
    paths = []
    with progress.step("write clips", len(videos)) as update:
        for n, (request, video) in enumerate(zip(requests, videos, strict=True)):
            name = f"clips/{n:04d}_{'_'.join(request.labels)}_s{request.seed}.mp4"
            write_video(out / name, video, fps)
            paths.append(name)
            update(n + 1, len(videos))
    _write_sheet(out / "contact_sheet.png", requests, videos, scored)
    extras: Extras = [
        {"path": p, "prompt": r.prompt, "seed": r.seed} for p, r in zip(paths, requests, strict=True)
    ]
    return extras, scored, summary


def _write_sheet(
    path: Path, requests: Sequence[Request], videos: Sequence[torch.Tensor], scored: Sequence[Scored]
) -> None:
    import torch

    from osp.io.video import write_contact_sheet

    rows, labels = [], []
    for request, video, result in zip(requests, videos, scored, strict=True):
        pick = torch.linspace(0, video.shape[0] - 1, min(SHEET_FRAMES, video.shape[0])).round().long()
        rows.append(video[pick])
        wrong = [name for name, ok in result.correct.items() if not ok]
        verdict = "ok" if not wrong else "wrong " + ",".join(wrong)
        labels.append(f"{request.prompt} (seed {request.seed}): {verdict}")
    write_contact_sheet(path, rows, columns=SHEET_FRAMES, labels=labels)


def _write_report(
    path: Path,
    head: dict[str, object],
    extras: Extras,
    scored: Sequence[Scored],
    summary: dict[str, SplitScore],
) -> None:
    from dataclasses import asdict

    from osp.io.weights import atomic_write_text

    videos = [
        {
            **extra,
            "held_out": result.expected.held_out,
            "expected": result.expected._asdict(),
            "predicted": result.measurement.predicted._asdict(),
            "correct": result.correct,
            "measurements": result.measurement.to_dict(),
        }
        for extra, result in zip(extras, scored, strict=True)
    ]
    report = {**head, "summary": {name: asdict(s) for name, s in summary.items()}, "videos": videos}
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")


def _print_table(summary: dict[str, SplitScore]) -> None:
    from rich.table import Table

    from osp.eval.adherence import ATTRIBUTES

    splits = list(summary)
    table = Table("attribute", *(f"{name} ({summary[name].count})" for name in splits), title="adherence")
    for attribute in (*ATTRIBUTES, "all"):
        table.add_row(attribute, *(f"{summary[name].accuracy[attribute]:.1%}" for name in splits))
    console.print(table)


# ---------------------------------------------------------------------------- standard video metrics


def _results_option(name: str, what: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return click.option(
        "-o",
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=RESULTS / f"{name}.json",
        show_default=True,
        help=f"Results as JSON: {what}.",
    )


def _weights_file(flag: str, path: Path | None, what: str) -> Path:
    """The weights file a flag names; a missing one is a one-line error naming the flag."""
    from osp.errors import ConfigError

    if path is None:
        raise ConfigError(f"{flag}: {what} (a local path; nothing is downloaded)")
    if not path.exists():
        raise ConfigError(f"{flag}: {path}: no such file or folder; {what}")
    return path


def _jsonable(value: object) -> object:
    """JSON has no infinity (identical clips have infinite PSNR): write it as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _finish(
    out: Path, data: Mapping[str, object], rows: list[tuple[str, str]], title: str, notes: list[str]
) -> None:
    from rich.table import Table

    from osp.io.weights import atomic_write_text

    table = Table("", "", title=title, show_header=False)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    atomic_write_text(out, json.dumps(_jsonable({**data, "notes": notes}), indent=2) + "\n")
    console.print(f"wrote {out}")


@eval_group.command()
@click.argument("real", type=click.Path(path_type=Path))
@click.argument("generated", type=click.Path(path_type=Path))
@click.option(
    "--i3d",
    "i3d_path",
    type=click.Path(path_type=Path),
    default=None,
    help="I3D weights: the .safetensors file `osp eval convert-i3d` writes.",
)
@click.option(
    "--clips", type=click.IntRange(min=2), default=2048, show_default=True, help="Clips per side, at most."
)
@click.option("--frames", type=click.IntRange(min=1), default=16, show_default=True, help="Frames per clip.")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Clips per I3D call.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--no-cache", is_flag=True, help="Neither read nor write the folders' feature caches.")
@_results_option("fvd", "FVD, protocol, I3D weights' digest, the files of each side")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def fvd(
    real: Path, generated: Path, i3d_path: Path | None, clips: int, frames: int, batch: int, device: str,
    no_cache: bool, out: Path, quiet: bool,
) -> None:  # fmt: skip
    """Fréchet Video Distance between the clips of two folders (StyleGAN-V's fvd2048_16f protocol).

    Features of each folder are cached in FOLDER/.osp-cache, so a second comparison against the same
    real set costs only the generated side.
    """
    from osp.eval.fvd import PROTOCOL, file_digest, fvd_folders
    from osp.eval.i3d import load_i3d
    from osp.progress import ProgressDisplay

    weights = _weights_file(
        "--i3d", i3d_path, "FVD needs I3D weights, a .safetensors file from `osp eval convert-i3d`"
    )
    digest = file_digest(weights)
    model = load_i3d(weights, device=device)
    with ProgressDisplay(enabled=not quiet) as progress:
        result = fvd_folders(
            real, generated, model, digest, frames=frames, clips=clips, batch=batch, cache=not no_cache,
            progress=progress,
        )  # fmt: skip
    sides = {
        what: {
            "folder": str(side.folder),
            "clips": len(side.files),
            "from_cache": side.cached,
            "skipped": side.skipped,
            "files": side.files,
        }
        for what, side in (("real", result.real), ("generated", result.generated))
    }
    data = {"metric": "fvd", "fvd": result.fvd, "protocol": {**PROTOCOL, "frames": frames, "clips_max": clips},
            "i3d": {"path": str(weights), "sha256": digest}, **sides}  # fmt: skip
    rows = [("FVD", f"{result.fvd:.2f}")] + [
        (f"{what} clips", f"{len(side.files)} ({side.cached} cached)")
        for what, side in (("real", result.real), ("generated", result.generated))
    ]
    _finish(out, data, rows, f"FVD ({frames} frames, 224x224)", result.notes)


@eval_group.command("clip-score")
@click.argument("generated", type=click.Path(path_type=Path))
@click.option(
    "--clip",
    "clip_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="transformers CLIP folder (config.json, weights, tokenizer, preprocessor_config.json).",
)
@click.option("--device", default="cpu", show_default=True)
@_results_option("clip_score", "per clip and overall, CLIP model")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def clip_score(generated: Path, clip_dir: Path | None, device: str, out: Path, quiet: bool) -> None:
    """CLIP score of each clip of GENERATED against its prompt in GENERATED/manifest.jsonl.

    Per frame max(100·cos, 0), averaged over the clip's frames, then over clips.
    """
    from osp.eval.clip_score import CLIPScorer, clip_score_folder
    from osp.progress import ProgressDisplay

    folder = _weights_file("--clip", clip_dir, "CLIP score needs a CLIP model folder (transformers format)")
    with ProgressDisplay(enabled=not quiet) as progress:
        with progress.step(f"load CLIP from {folder}"):
            scorer = CLIPScorer(folder, device=device)
        result = clip_score_folder(generated, scorer, progress)
    scores = [c["clip_score"] for c in result.clips]
    data = {"metric": "clip_score", "clip_score": result.mean, "clip_model": scorer.name, "clip_path": str(folder),
            "folder": str(generated), "clips": result.clips}  # fmt: skip
    rows = [("CLIP score", f"{result.mean:.3f}"), ("clips", str(len(scores))),
            ("min / max", f"{min(scores):.3f} / {max(scores):.3f}"), ("CLIP", scorer.name)]  # fmt: skip
    _finish(out, data, rows, "CLIP score", result.notes)


@eval_group.command()
@click.argument("real", type=click.Path(path_type=Path))
@click.argument("recon", type=click.Path(path_type=Path))
@click.option(
    "--lpips",
    "lpips_path",
    type=click.Path(path_type=Path),
    default=None,
    help="LPIPS-VGG weights (the file training's `perceptual: lpips:PATH` reads); without it no LPIPS.",
)
@click.option("--device", default="cpu", show_default=True)
@_results_option("recon", "per clip and overall")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def recon(real: Path, recon: Path, lpips_path: Path | None, device: str, out: Path, quiet: bool) -> None:
    """PSNR, SSIM and LPIPS of each clip of RECON against the clip of REAL with the same name."""
    from osp.errors import ConfigError
    from osp.eval.recon import recon_folders
    from osp.progress import ProgressDisplay

    perceptual = None
    if lpips_path is not None:
        from osp_train.losses import LPIPS

        _weights_file("--lpips", lpips_path, "LPIPS needs its VGG + linear-head weights file")
        try:
            perceptual = LPIPS.from_file(lpips_path).to(device)
        except (ValueError, RuntimeError, OSError) as err:
            raise ConfigError(f"--lpips: {err}") from None
    with ProgressDisplay(enabled=not quiet) as progress:
        result = recon_folders(real, recon, perceptual, device=device, progress=progress)
    data = {"metric": "recon", **result.mean, "real": str(real), "recon": str(recon),
            "lpips_weights": None if lpips_path is None else str(lpips_path), "clips": result.clips}  # fmt: skip
    rows = [(name.upper(), f"{value:.4f}") for name, value in result.mean.items()]
    rows.append(("clips", str(len(result.clips))))
    notes = result.notes + ([] if perceptual else ["no --lpips: LPIPS not computed"])
    _finish(out, data, rows, "reconstruction", notes)


@eval_group.command("convert-i3d")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Safetensors file to write [default: SOURCE with the suffix .safetensors].",
)
def convert_i3d(source: Path, out: Path | None) -> None:
    """Convert published I3D weights once into the safetensors file `osp eval fvd --i3d` reads.

    SOURCE: StyleGAN-V's i3d_torchscript.pt (the TF-Hub weights FVD papers report with; loading it runs
    TorchScript deserialisation, so a warning is printed), or a pytorch-i3d rgb_imagenet.pt / VideoGPT
    i3d_pretrained_400.pt state dict (read with weights_only=True).
    """
    import warnings

    from osp.cli.common import err_console
    from osp.eval.fvd import file_digest
    from osp.eval.i3d import convert_checkpoint

    out = out or source.with_suffix(".safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kind = convert_checkpoint(source, out)
    for warning in caught:
        err_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False)
    console.print(f"wrote {out} (from a {kind.replace('_', ' ')}; sha256 {file_digest(out)[:16]})")
