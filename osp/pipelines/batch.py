"""Batch sampling: a prompts file in, one clip per prompt in a folder out, over any number of processes.

    osp generate --prompts prompts.jsonl -o clips/                               # one process
    osp generate --prompts prompts.jsonl -o clips/ --nproc 4                     # four local processes
    torchrun --nproc_per_node 8 -m osp.cli.generate --prompts prompts.jsonl -o clips/

A ``.jsonl`` file holds one JSON object per line: ``prompt`` and, optionally, ``seed``,
``negative_prompt`` and ``name``; any other file holds one prompt per line. Blank lines are skipped
(error messages still count them). Clip i, in file order, uses seed + i unless its line gives a seed,
and is written to ``<name>.mp4`` or ``<i:05d>_<words of the prompt>.mp4``.

Every clip is sampled alone, with exactly what ``osp generate PROMPT --seed S`` would do, so a clip
does not depend on which process made it or on which others it was made with. Rank r of W makes the
clips i with i % W == r (neighbouring prompts, often alike in cost, land on different ranks);
torch.distributed (gloo on CPU, NCCL on CUDA) joins the ranks, and once all are done rank 0 writes
``manifest.jsonl``: per clip its file, prompt, seed, negative prompt and the model, engine and
sampling settings.

Resuming: files are written under a temporary name and renamed, so a clip whose files exist is
complete, and a re-run skips it. ``run.json`` records the settings and each clip's prompt and seed;
a re-run into the same folder that asks for anything else is refused rather than mixing two sets.

Bit-identical files across process counts need identical arithmetic per clip: on CPU, convolutions
sum in an order that depends on the thread count, so compare runs with the same threads per process
(OMP_NUM_THREADS; ``--nproc N`` gives each process cores / N).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from osp.errors import ConfigError
from osp.io.weights import atomic_write_text
from osp.pipelines.generate import EngineFactory, GenerateConfig, load_generator, run_generate
from osp.pipelines.text_to_video import read_spec
from osp.progress import ProgressDisplay, silent

MANIFEST = "manifest.jsonl"
RUN = "run.json"
_KEYS = ("prompt", "seed", "negative_prompt", "name")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Fields of GenerateConfig that do not change a clip's pixels, or that each clip sets for itself.
_PER_RUN = {"prompts", "class_labels", "out", "seed", "negative_prompt", "gif", "grid"}
# Ranks finish within about one clip of each other; a dead rank is stopped by its launcher, not this.
_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Clip:
    index: int
    prompt: str
    seed: int
    negative_prompt: str | None  # None: the run's --negative-prompt, else the model's default
    file: str  # name inside the output folder
    line: int  # in the prompts file, for messages


# -------------------------------------------------------------------------------------- prompts file


def _slug(prompt: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return words[:40].rstrip("-") or "clip"


def _json_entry(line: str, where: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a JSON object with a 'prompt'")
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (a line may have {', '.join(_KEYS)})")
    if not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
        raise ConfigError(f"{where}: 'prompt' must be a non-empty string")
    seed = entry.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ConfigError(f"{where}: 'seed' must be an integer in [0, 2^63), got {seed!r}")
    if not isinstance(entry.get("negative_prompt", ""), str):
        raise ConfigError(f"{where}: 'negative_prompt' must be a string")
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
        raise ConfigError(f"{where}: 'name' must be 1-100 letters, digits, '.', '_' or '-', got {name!r}")
    return entry


def read_prompts(path: str | Path, seed: int = 0) -> list[Clip]:
    """The clips a prompts file asks for; a bad line is a ConfigError naming ``path:line``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--prompts: {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"--prompts: {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    jsonl = path.suffix.lower() == ".jsonl"
    clips: list[Clip] = []
    lines_of: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        entry: dict[str, Any] = _json_entry(line, where) if jsonl else {"prompt": line.strip()}
        i = len(clips)
        stem = entry.get("name") or f"{i:05d}_{_slug(entry['prompt'])}"
        if stem in lines_of:
            raise ConfigError(f"{where}: name {stem!r} is taken by line {lines_of[stem]}")
        lines_of[stem] = number
        own_seed = entry.get("seed")
        clips.append(
            Clip(i, entry["prompt"], seed + i if own_seed is None else own_seed, entry.get("negative_prompt"),
                 f"{stem}.mp4", number)
        )  # fmt: skip
    if not clips:
        raise ConfigError(f"--prompts: {path}: holds no prompts")
    return clips


# ---------------------------------------------------------------------------------------------- plan


@dataclass
class BatchPlan:
    cfg: GenerateConfig  # the run's options; ``out`` is the folder
    clips: list[Clip]
    settings: dict[str, Any]  # what must match for two runs to share a folder
    recorded: dict[str, Any] = field(default_factory=dict)  # file -> prompt / seed of earlier runs


def _record(clip: Clip) -> dict[str, Any]:
    return {"prompt": clip.prompt, "seed": clip.seed, "negative_prompt": clip.negative_prompt}


def plan_batch(cfg: GenerateConfig, prompts_file: str | Path) -> BatchPlan:
    """Read the prompts and check the output folder, before any model is loaded or process started."""
    if cfg.prompts or cfg.class_labels:
        raise ConfigError(
            "--prompts: the prompts come from the file; give no PROMPT arguments or --class-label"
        )
    if cfg.grid:
        raise ConfigError("--grid: not with --prompts (one sheet of thousands of clips); drop --grid")
    if cfg.out.suffix.lower() == ".mp4" or cfg.out.is_file():
        raise ConfigError(f"out: {cfg.out} must be a folder with --prompts")
    if read_spec(cfg.model).kind != "text-to-video":
        raise ConfigError(f"--prompts: {cfg.model} holds a class-to-video model; batch sampling needs text")
    clips = read_prompts(prompts_file, cfg.seed)
    settings = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _PER_RUN}
    settings["model"] = str(cfg.model.resolve())
    plan = BatchPlan(cfg, clips, settings)
    _check_folder(plan)
    return plan


def _check_folder(plan: BatchPlan) -> None:
    """Refuse a folder whose existing clips were made with other settings, prompts or seeds."""
    path = plan.cfg.out / RUN
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        old_settings, old_clips = old["settings"], old["clips"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: unreadable ({err}); delete it to start the folder afresh") from None
    plan.recorded = old_clips
    changed = sorted(
        k for k in plan.settings.keys() | old_settings.keys() if plan.settings.get(k) != old_settings.get(k)
    )
    if changed:
        key = changed[0]
        raise ConfigError(
            f"out: {plan.cfg.out} holds clips made with {key}={old_settings.get(key)!r}, this run asks for "
            f"{plan.settings.get(key)!r}; write to another folder"
        )
    for clip in plan.clips:
        before = old_clips.get(clip.file)
        if before is not None and before != _record(clip):
            raise ConfigError(
                f"out: {plan.cfg.out / clip.file} was made from {before}, but line {clip.line} now asks for "
                f"{_record(clip)}; write to another folder or delete that clip"
            )


# ----------------------------------------------------------------------------------------------- run


@dataclass
class BatchSummary:
    rank: int
    world_size: int
    made: int  # clips sampled by this run, all ranks
    skipped: int  # clips already in the folder
    total: int
    seconds: float  # sampling time of the slowest rank, model loading excluded
    manifest: Path


def _join(device: str) -> tuple[int, int, str]:
    """(rank, world size, this rank's device); joins the process group when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    cuda = device.startswith("cuda")
    if cuda:  # "cuda" means each process's own GPU
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=_TIMEOUT)
    return rank, world, device


def _done(cfg: GenerateConfig, clip: Clip) -> bool:
    path = cfg.out / clip.file
    return path.is_file() and (not cfg.gif or path.with_suffix(".gif").is_file())


def _drop_partial(cfg: GenerateConfig, clip: Clip) -> None:
    """Temporary files a killed run left for this clip (only its own rank writes them)."""
    for suffix in (".mp4", ".gif"):
        for tmp in cfg.out.glob(f".{Path(clip.file).stem}{suffix}.*.tmp"):
            tmp.unlink(missing_ok=True)


def run_batch(
    plan: BatchPlan, progress: ProgressDisplay | None = None, engine: EngineFactory | None = None
) -> BatchSummary:
    """Make this rank's share of the clips; rank 0 writes the manifest once every rank is done."""
    rank, world, device = _join(plan.cfg.device)
    try:
        cfg = plan.cfg.model_copy(update={"device": device})
        cfg.out.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            clips = {**plan.recorded, **{c.file: _record(c) for c in plan.clips}}
            run = {"settings": plan.settings, "clips": clips}
            atomic_write_text(cfg.out / RUN, json.dumps(run, indent=1) + "\n")
        mine = [clip for clip in plan.clips if clip.index % world == rank]
        todo = [clip for clip in mine if not _done(cfg, clip)]
        made, seconds = 0, 0.0
        if todo:
            first = cfg.model_copy(update={"prompts": [todo[0].prompt]})
            loaded = load_generator(first, engine)
            start = time.perf_counter()
            with (progress or silent()).step(f"clips (rank {rank} of {world})", len(todo)) as update:
                for clip in todo:
                    _drop_partial(cfg, clip)
                    run_generate(_clip_config(cfg, clip), None, engine, loaded=loaded)
                    made += 1
                    update(made, len(todo))
            seconds = time.perf_counter() - start
        where = device if device.startswith("cuda") else "cpu"
        counts = torch.tensor([made, len(mine) - len(todo)], device=where)
        slowest = torch.tensor([seconds], dtype=torch.float64, device=where)
        if world > 1:
            dist.all_reduce(counts)  # also the barrier: every rank has written its clips
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        manifest = cfg.out / MANIFEST
        if rank == 0:
            _write_manifest(plan, manifest)
        return BatchSummary(
            rank, world, int(counts[0]), int(counts[1]), len(plan.clips), float(slowest), manifest
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _negative(cfg: GenerateConfig, clip: Clip) -> str | None:
    return clip.negative_prompt if clip.negative_prompt is not None else cfg.negative_prompt


def _clip_config(cfg: GenerateConfig, clip: Clip) -> GenerateConfig:
    """The ``osp generate PROMPT --seed S -o FILE`` that makes this clip."""
    update = {"prompts": [clip.prompt], "seed": clip.seed, "negative_prompt": _negative(cfg, clip)}
    return cfg.model_copy(update={**update, "out": cfg.out / clip.file})


def _write_manifest(plan: BatchPlan, path: Path) -> None:
    cfg = plan.cfg
    missing = [clip.file for clip in plan.clips if not _done(cfg, clip)]
    if missing:
        raise ConfigError(
            f"out: {len(missing)} clips were not written (first: {missing[0]}); re-run to finish"
        )
    spec = read_spec(cfg.model)
    sampling = {
        "frames": cfg.frames or spec.frames,
        "size": list(cfg.size or spec.size),
        "steps": cfg.steps or spec.steps,
        "guidance": spec.guidance if cfg.guidance is None else cfg.guidance,
        "sampler": cfg.sampler or spec.sampler,
    }
    lines = []
    for clip in plan.clips:
        negative = _negative(cfg, clip)
        row = {"file": clip.file, "prompt": clip.prompt, "seed": clip.seed,
               "negative_prompt": spec.negative_prompt if negative is None else negative,
               "model": plan.settings["model"], "engine": cfg.engine, **sampling}  # fmt: skip
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")


def describe(summary: BatchSummary) -> str:
    """One line for the person who ran it."""
    rate = f", {summary.made / summary.seconds:.3g} clips/s" if summary.made else ""
    return (
        f"{summary.made} clips made, {summary.skipped} already there, {summary.total} in "
        f"{summary.manifest.parent} by {summary.world_size} process(es) (sampling {summary.seconds:.1f} s"
        f"{rate}); manifest: {summary.manifest}"
    )
