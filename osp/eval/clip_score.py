"""CLIP score: how well each generated clip matches its prompt (Hessel et al. 2021, "CLIPScore", w = 100).

A frame scores ``max(100 · cos(E_image(frame), E_text(prompt)), 0)``; a clip scores the mean over its
frames, a folder the mean over its clips (each clip counts once, whatever its length). Conventions:

* the clamp is per frame, CLIPScore's definition and the formula torchmetrics' ``CLIPScore``
  documents; torchmetrics' code clamps the mean of a batch instead. Both agree whenever no frame has a
  negative cosine (trained CLIP models give matching pairs cosines of about 0.15-0.35).
  Open-Sora-Plan's script has no clamp at all;
* frames go through the CLIP folder's own image processor (short side resized, centre crop,
  normalisation), as torchmetrics' ``CLIPProcessor`` does;
* a prompt longer than the text tower's positions is truncated by the tokenizer, which keeps the
  end-of-text token CLIP pools its text embedding from (torchmetrics cuts the token ids and loses it).

CLIP comes from a local transformers folder (``CLIPModel`` + tokenizer + image processor); nothing is
downloaded. Prompts come from the ``manifest.jsonl`` that ``osp generate --prompts`` writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from osp.errors import ConfigError, WeightsError
from osp.io.video import read_video
from osp.progress import ProgressDisplay, silent
from osp.text.base import hub_offline, load_pretrained, read_model_config

MANIFEST = "manifest.jsonl"


def _embedding(out: Any) -> torch.Tensor:
    # transformers 4 returns the projected embedding; 5 returns an output whose pooler_output it is.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class CLIPScorer:
    """A CLIP model, its tokenizer and image processor, loaded from one local folder."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        from transformers import AutoImageProcessor, CLIPModel

        self.folder = Path(folder)
        config = read_model_config(self.folder)
        if config.get("model_type") != "clip":
            raise WeightsError(
                f"{self.folder}: holds a {config.get('model_type')!r} model; CLIP score needs a full "
                "'clip' model (text and vision towers)"
            )
        self.device = torch.device(device)
        self.model: Any  # transformers' CLIPModel (its typed methods return tensors or outputs by version)
        self.tokenizer, self.model = load_pretrained(
            CLIPModel, self.folder.resolve(), self.folder.resolve(), self.device, torch.float32
        )
        with hub_offline():
            try:
                self.processor = AutoImageProcessor.from_pretrained(str(self.folder), local_files_only=True)
            except (OSError, ValueError) as err:
                raise WeightsError(f"{self.folder}: cannot load its image processor ({err})") from None
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    def text_embeddings(self, prompts: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """Unit-length text embeddings ``(P, D)`` and, per prompt, whether it was truncated."""
        full = self.tokenizer(prompts)["input_ids"]
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            out = _embedding(self.model.get_text_features(**tokens)).float()
        return out / out.norm(dim=-1, keepdim=True), [len(ids) > self.max_tokens for ids in full]

    def image_embeddings(self, frames: torch.Tensor, batch: int = 32) -> torch.Tensor:
        """Unit-length embeddings ``(T, D)`` of uint8 ``(T, 3, H, W)`` frames."""
        parts = []
        for chunk in frames.split(batch):
            pixels = self.processor(images=list(chunk), return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                out = _embedding(self.model.get_image_features(pixel_values=pixels.to(self.device))).float()
            parts.append(out / out.norm(dim=-1, keepdim=True))
        return torch.cat(parts)


def frame_scores(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``max(100 · cos, 0)`` of each unit-length image embedding ``(T, D)`` against one text ``(D,)``."""
    return (100 * image @ text).clamp(min=0)


@dataclass
class ClipScoreResult:
    clips: list[dict[str, Any]]  # file, prompt, frames, clip_score
    mean: float
    notes: list[str] = field(default_factory=list)


def read_manifest(folder: Path) -> list[tuple[str, str]]:
    """(file, prompt) of each clip that ``manifest.jsonl`` lists, the line named on a bad entry."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ConfigError(
            f"{folder}: no {MANIFEST}; CLIP score needs each clip's prompt (osp generate --prompts writes it)"
        )
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number}: not JSON ({err.msg})") from None
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("file"), str)
            or not isinstance(row.get("prompt"), str)
        ):
            raise ConfigError(f"{path}:{number}: needs a string 'file' and a string 'prompt'")
        rows.append((row["file"], row["prompt"]))
    if not rows:
        raise ConfigError(f"{path}: lists no clips")
    return rows


def clip_score_folder(
    folder: str | Path, scorer: CLIPScorer, progress: ProgressDisplay | None = None
) -> ClipScoreResult:
    """CLIP score of every clip ``folder/manifest.jsonl`` lists, against its prompt."""
    folder = Path(folder)
    rows = read_manifest(folder)
    progress = progress or silent()
    prompts = sorted({prompt for _, prompt in rows})
    with progress.step("encode prompts"):
        embeddings, truncated = scorer.text_embeddings(prompts)
    text = dict(zip(prompts, embeddings, strict=True))
    notes = [
        f"prompt truncated to {scorer.max_tokens} tokens: {prompt[:60]!r}"
        for prompt, cut in zip(prompts, truncated, strict=True)
        if cut
    ]
    clips: list[dict[str, Any]] = []
    with progress.step("CLIP score", len(rows)) as update:
        for i, (name, prompt) in enumerate(rows):
            frames = read_video(folder / name).frames
            scores = frame_scores(scorer.image_embeddings(frames), text[prompt])
            clips.append(
                {"file": name, "prompt": prompt, "frames": len(scores), "clip_score": float(scores.mean())}
            )
            update(i + 1, len(rows))
    mean = sum(c["clip_score"] for c in clips) / len(clips)
    return ClipScoreResult(clips, mean, notes)
