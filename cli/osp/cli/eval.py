"""``osp eval``: evaluate generated videos. ``adherence`` checks prompts of the moving-shapes domain."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from osp.cli.common import console

if TYPE_CHECKING:
    import torch

    from osp.eval.adherence import Request, Scored, SplitScore
    from osp.progress import ProgressDisplay

DEFAULT_OUT = Path("out/eval-adherence")
SHEET_FRAMES = 5  # frames per clip on the contact sheet


@click.group("eval")
def eval_group() -> None:
    """Evaluate videos: `adherence`."""


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
