"""What each exported component looks like from outside: tensor names, dtypes, dynamic axes with their
ranges, sample inputs and TensorRT optimization profiles.

The specs live here, beside the export code, and not in the models: a model only computes; how a
runtime sees it (which inputs, which axes may change, which shapes to optimise for) is export's
business. Every runtime input is named after the model keyword it feeds (``encoder_hidden_states``,
``class_labels``), so an engine maps a denoiser's ``cond`` dict onto inputs without a table.

Components: ``transformer`` (LatteT2V or class Latte), ``vae_encoder``, ``vae_decoder``,
``text_encoder`` (the BERT / T5 / CLIP model behind an osp text encoder; tokenisation stays in Python),
and the finishing models ``upscaler`` (SRVGGUpscaler) and ``interpolator`` (IFNetInterpolator).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.export import Dim

from osp.dit.latte import Latte
from osp.dit.latte_t2v import LatteT2V
from osp.errors import ShapeError
from osp.interpolate import IFNetInterpolator
from osp.upscale import SRVGGUpscaler
from osp.vae import CausalVideoVAE

# normal: randn; image: uniform in [-1, 1] (frames); fraction: uniform in [0, 1) (a time between frames)
Kind = Literal["normal", "image", "fraction", "timestep", "label", "mask", "ids"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class Axis:
    """A dynamic axis whose size is ``multiple * k + offset`` for integer k; sizes run from min to max."""

    name: str
    min: int
    max: int
    multiple: int = 1
    offset: int = 0

    def valid(self, size: int) -> bool:
        return self.min <= size <= self.max and (size - self.offset) % self.multiple == 0

    @property
    def derived(self) -> bool:
        """Sizes follow ``multiple * k + offset`` rather than every integer in range."""
        return self.multiple > 1 or self.offset != 0

    def describe(self) -> str:
        form = f"{self.multiple}k+{self.offset}" if self.offset else f"{self.multiple}k"
        return f"{self.min}..{self.max}" + (f" ({form})" if self.derived else "")

    def dim(self) -> Any:
        """The ``torch.export`` dimension: derived from a free ``k`` when sizes follow a multiple."""
        if not self.derived:
            return Dim(self.name, min=self.min, max=self.max)
        k = Dim(
            f"{self.name}_k",
            min=math.ceil((self.min - self.offset) / self.multiple),
            max=(self.max - self.offset) // self.multiple,
        )
        return self.multiple * k + self.offset


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: dims are ints (static) or axis names / expressions of them (dynamic)."""

    name: str
    dims: tuple[int | str, ...]
    dtype: str = "float32"
    kind: Kind = "normal"

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.dims)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.dims), "dtype": self.dtype}


@dataclass
class ComponentSpec:
    """An exportable component: a module with positional tensor inputs, and how it may be called."""

    name: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    axes: dict[str, Axis]
    sample: dict[str, int]  # axis sizes traced at export (and the "opt" shape of TensorRT profiles)
    check: dict[str, int]  # different axis sizes, to verify that the export really is dynamic
    limits: dict[str, int] = field(default_factory=dict)  # vocabulary size, number of labels
    tolerance: float = 1e-3  # max abs error relative to max |reference|, in float32
    # What a component was made from when it is not the pipeline folder (a finishing model's folder
    # and the sha256 of its files); recorded in its manifest entry's ``build``.
    source: dict[str, str] = field(default_factory=dict)

    def make_inputs(self, sizes: dict[str, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs of the given axis sizes, each of a kind the component really receives."""
        gen = torch.Generator().manual_seed(seed)
        out = []
        for spec in self.inputs:
            shape = spec.shape(sizes)
            if spec.kind == "timestep":
                tensor = torch.rand(shape, generator=gen) * 999
            elif spec.kind == "image":
                tensor = torch.rand(shape, generator=gen) * 2 - 1
            elif spec.kind == "fraction":
                tensor = torch.rand(shape, generator=gen)
            elif spec.kind == "label":
                tensor = torch.randint(0, self.limits["labels"], shape, generator=gen)
            elif spec.kind == "ids":
                tensor = torch.randint(0, self.limits["vocab"], shape, generator=gen)
            elif spec.kind == "mask":
                tensor = torch.ones(shape, dtype=torch.bool)
                tensor[0, shape[1] // 2 :] = False  # padded tokens, which must not change the result
                if spec.dtype == "int64":
                    tensor = tensor.long()
            else:
                tensor = torch.randn(shape, generator=gen)
            out.append(tensor.to(DTYPES[spec.dtype]) if tensor.is_floating_point() else tensor)
        return tuple(out)

    def dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        """``torch.export`` dynamic shapes keyed by the wrapper's argument names (= input names)."""
        dims = {name: axis.dim() for name, axis in self.axes.items()}
        return {
            spec.name: {i: dims[d] for i, d in enumerate(spec.dims) if isinstance(d, str)}
            for spec in self.inputs
        }

    def check_sizes(self, sizes: dict[str, int], what: str) -> None:
        for name, size in sizes.items():
            axis = self.axes.get(name)
            if axis is not None and not axis.valid(size):
                raise ShapeError(
                    f"{what}: {self.name} axis {name}={size} is outside the exported range {axis.describe()}"
                )

    def profile(self, sizes_min: dict[str, int], sizes_opt: dict[str, int], sizes_max: dict[str, int]
                ) -> dict[str, list[list[int]]]:  # fmt: skip
        """One TensorRT optimization profile: input name -> [min shape, opt shape, max shape]."""
        return {
            s.name: [list(s.shape(sizes_min)), list(s.shape(sizes_opt)), list(s.shape(sizes_max))]
            for s in self.inputs
        }


# ------------------------------------------------------------------------------------ wrappers
# Each wrapper has positional tensor arguments named like the runtime inputs, which is what the
# dynamo exporter and TensorRT want; they only re-route to the model's own forward.


class T2VTransformer(nn.Module):
    def __init__(self, model: LatteT2V) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        return self.model(latents, timestep, encoder_hidden_states, encoder_attention_mask)


class ClassTransformer(nn.Module):
    """Latte reads its stored sin-cos tables at the training size and computes them at other sizes: a
    branch on the input shape that would pin the exported axes. The wrapper runs a shallow copy of the
    model (same parameters and submodules) that computes them at every size; :func:`transformer_spec`
    first checks that the stored tables are those sin-cos values, so the numbers are the same."""

    def __init__(self, model: Latte) -> None:
        super().__init__()
        view = copy.copy(model)  # shares _parameters / _modules with ``model``; only this attribute differs

        def positions(frames: int, h: int, w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return model.spatial_positions(h, w).to(like), model.temporal_positions(frames).to(like)

        view._positions = positions  # type: ignore[method-assign]
        self.model = view

    def forward(
        self, latents: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor
    ) -> torch.Tensor:
        return self.model(latents, timestep, class_labels)


class VaeDecoder(nn.Module):
    """Diffusion latents (scaled) -> video in about [-1, 1]: what a pipeline's last step does."""

    def __init__(self, vae: CausalVideoVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_latents(latents)


class VaeEncoder(nn.Module):
    """Video in [-1, 1] -> posterior mean and log-variance (unscaled; multiply by scaling_factor)."""

    def __init__(self, vae: CausalVideoVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.vae.quant_conv(self.vae.encoder(video)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class Upscaler(nn.Module):
    """Video in [-1, 1] -> the video ``scale`` times larger, every frame with its temporal window."""

    def __init__(self, model: SRVGGUpscaler) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.model(video)


class Interpolator(nn.Module):
    """Two frames in [-1, 1] and a time in (0, 1) -> the frame between them. Sizes are multiples of the
    model's ``pad_multiple``: the runtime pads (edges repeated) and crops, as the model's forward does,
    because a padding computed from the size would pin the exported height and width."""

    def __init__(self, model: IFNetInterpolator) -> None:
        super().__init__()
        self.model = model

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.model.predict(frame0, frame1, timestep)


class TextModel(nn.Module):
    """Token ids and mask -> per-token states of a transformers encoder model."""

    def __init__(self, model: nn.Module, use_mask: bool) -> None:
        super().__init__()
        self.model = model
        self.use_mask = use_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask if self.use_mask else None
        return self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state


# --------------------------------------------------------------------------------------- specs


def transformer_spec(model: nn.Module, latent: tuple[int, int, int], text_length: int = 64,
                     max_batch: int = 4) -> ComponentSpec:  # fmt: skip
    """A denoiser at latent (frames, height, width); frames >= 2 (the temporal-position branch)."""
    t, h, w = latent
    if t < 2:
        raise ShapeError(f"transformer export: needs at least 2 latent frames (5 video frames), got {t}")
    config: Any = model.config
    p, c = int(config.patch_size), int(config.in_channels)
    axes = {
        "batch": Axis("batch", 1, max_batch),
        "latent_frames": Axis("latent_frames", 2, max(2 * t, 32)),
        "latent_height": Axis("latent_height", p, max(2 * h, 128), multiple=p),
        "latent_width": Axis("latent_width", p, max(2 * w, 128), multiple=p),
    }
    latents = TensorSpec("latents", ("batch", c, "latent_frames", "latent_height", "latent_width"))
    timestep = TensorSpec("timestep", ("batch",), kind="timestep")
    out_c = int(config.out_channels or config.in_channels)
    output = TensorSpec("model_output", ("batch", out_c, "latent_frames", "latent_height", "latent_width"))
    sample = {"batch": 2, "latent_frames": t, "latent_height": h, "latent_width": w}
    check = {"batch": 1, "latent_frames": t + 1, "latent_height": h + p, "latent_width": w + 2 * p}
    if isinstance(model, LatteT2V):
        axes["text_length"] = Axis("text_length", 2, 512)
        width = model.config.caption_channels
        inputs = [
            latents, timestep,
            TensorSpec("encoder_hidden_states", ("batch", "text_length", width)),
            TensorSpec("encoder_attention_mask", ("batch", "text_length"), "bool", "mask"),
        ]  # fmt: skip
        sample["text_length"], check["text_length"] = text_length, max(2, text_length // 2 + 1)
        return ComponentSpec("transformer", T2VTransformer(model), inputs, [output], axes, sample, check)
    if isinstance(model, Latte):
        _check_frozen_positions(model)
        labels = TensorSpec("class_labels", ("batch",), "int64", "label")
        limits = {"labels": model.config.num_classes + 1}
        return ComponentSpec("transformer", ClassTransformer(model), [latents, timestep, labels], [output],
                             axes, sample, check, limits)  # fmt: skip
    raise ShapeError(f"transformer export: {type(model).__name__} is not a LatteT2V or Latte")


def _check_frozen_positions(model: Latte) -> None:
    """Latte uses its stored sin-cos tables at the training size and computes them elsewhere; the
    exported graph always computes them, which is only the same model if the tables are untouched."""
    grid, frames = model.config.grid, model.config.num_frames
    same = torch.allclose(model.pos_embed.float(), model.spatial_positions(*grid).float(), atol=1e-5) and (
        torch.allclose(model.temp_embed.float(), model.temporal_positions(frames).float(), atol=1e-5)
    )
    if not same:
        raise ShapeError("transformer export: Latte's pos_embed / temp_embed differ from sin-cos tables")


def vae_decoder_spec(vae: CausalVideoVAE, latent: tuple[int, int, int], max_batch: int = 4) -> ComponentSpec:
    t, h, w = latent
    if t < 3:
        raise ShapeError(f"vae_decoder export: needs at least 3 latent frames (9 video frames), got {t}")
    ct, cs = vae.config.temporal_compression, vae.config.spatial_compression
    axes = {
        "batch": Axis("batch", 1, max_batch),
        # The temporal up-sampling takes other branches for 1 and 2 latent frames: clips start at 3.
        "latent_frames": Axis("latent_frames", 3, max(2 * t, 32)),
        "latent_height": Axis("latent_height", 2, max(2 * h, 128)),
        "latent_width": Axis("latent_width", 2, max(2 * w, 128)),
    }
    latents = TensorSpec(
        "latents", ("batch", vae.latent_channels, "latent_frames", "latent_height", "latent_width")
    )
    video = TensorSpec("video", ("batch", 3, f"{ct}*latent_frames-{ct - 1}", f"{cs}*latent_height",
                                 f"{cs}*latent_width"))  # fmt: skip
    # Traced at batch 2: the exporter would specialise a traced size of 1 to a constant.
    sample = {"batch": 2, "latent_frames": t, "latent_height": h, "latent_width": w}
    check = {"batch": 1, "latent_frames": t + 1, "latent_height": h + 1, "latent_width": w + 2}
    return ComponentSpec("vae_decoder", VaeDecoder(vae), [latents], [video], axes, sample, check)


def vae_encoder_spec(
    vae: CausalVideoVAE, frames: int, size: tuple[int, int], max_batch: int = 4
) -> ComponentSpec:
    ct, cs = vae.config.temporal_compression, vae.config.spatial_compression
    axes = {
        "batch": Axis("batch", 1, max_batch),
        "frames": Axis("frames", ct + 1, max(2 * frames, 129), multiple=ct, offset=1),
        "height": Axis("height", cs, max(2 * size[0], 1024), multiple=cs),
        "width": Axis("width", cs, max(2 * size[1], 1024), multiple=cs),
    }
    video = TensorSpec("video", ("batch", 3, "frames", "height", "width"))
    c = vae.latent_channels
    lat = ("batch", c, f"(frames-1)/{ct}+1", f"height/{cs}", f"width/{cs}")
    outputs = [TensorSpec("mean", lat), TensorSpec("logvar", lat)]
    sample = {"batch": 2, "frames": frames, "height": size[0], "width": size[1]}
    check = {"batch": 1, "frames": frames + ct, "height": size[0] + cs, "width": size[1] + 2 * cs}
    return ComponentSpec("vae_encoder", VaeEncoder(vae), [video], outputs, axes, sample, check)


def text_encoder_spec(
    model: nn.Module, max_length: int, use_mask: bool = True, max_batch: int = 4
) -> ComponentSpec:
    """The transformers model behind an osp text encoder (``encoder.model``), ids in, states out."""
    config: Any = model.config
    width = int(getattr(config, "d_model", None) or config.hidden_size)
    axes = {"batch": Axis("batch", 1, max_batch), "text_length": Axis("text_length", 2, max(max_length, 2))}
    inputs = [
        TensorSpec("input_ids", ("batch", "text_length"), "int64", "ids"),
        TensorSpec("attention_mask", ("batch", "text_length"), "int64", "mask"),
    ]
    outputs = [TensorSpec("encoder_hidden_states", ("batch", "text_length", width))]
    sample = {"batch": 2, "text_length": max_length}
    check = {"batch": 1, "text_length": max(2, max_length // 2)}
    return ComponentSpec("text_encoder", TextModel(model, use_mask), inputs, outputs, axes, sample, check,
                         {"vocab": int(config.vocab_size)})  # fmt: skip


def upscaler_spec(model: SRVGGUpscaler, frames: int, size: tuple[int, int], max_batch: int = 4,
                  source: dict[str, str] | None = None) -> ComponentSpec:  # fmt: skip
    """The upscaler on clips of ``frames`` x ``size`` (its input size), batch and all three axes dynamic."""
    h, w, s = size[0], size[1], model.config.scale
    axes = {
        "batch": Axis("batch", 1, max_batch),
        "frames": Axis("frames", 1, max(2 * frames, 129)),
        "height": Axis("height", 8, max(2 * h, 1088)),
        "width": Axis("width", 8, max(2 * w, 1920)),
    }
    video = TensorSpec("video", ("batch", 3, "frames", "height", "width"), kind="image")
    out = TensorSpec("upscaled", ("batch", 3, "frames", f"{s}*height", f"{s}*width"))
    sample = {"batch": 2, "frames": frames, "height": h, "width": w}
    check = {"batch": 1, "frames": frames + 2, "height": h + 2, "width": w + 6}
    return ComponentSpec(
        "upscaler", Upscaler(model), [video], [out], axes, sample, check, source=source or {}
    )


def interpolator_spec(model: IFNetInterpolator, size: tuple[int, int], max_batch: int = 64,
                      source: dict[str, str] | None = None) -> ComponentSpec:  # fmt: skip
    """The interpolator on frames of ``size`` (padded up to ``pad_multiple``); batch = new frames."""
    m = model.config.pad_multiple
    h, w = (-(-size[0] // m) * m, -(-size[1] // m) * m)
    axes = {
        "batch": Axis("batch", 1, max_batch),
        "height": Axis("height", m, max(2 * h, 1088 // m * m + m), multiple=m),
        "width": Axis("width", m, max(2 * w, 1920 // m * m + m), multiple=m),
    }
    frame = ("batch", 3, "height", "width")
    inputs = [
        TensorSpec("frame0", frame, kind="image"),
        TensorSpec("frame1", frame, kind="image"),
        TensorSpec("timestep", ("batch",), kind="fraction"),
    ]
    sample = {"batch": 2, "height": h, "width": w}
    check = {"batch": 3, "height": h + m, "width": w + 2 * m}
    return ComponentSpec("interpolator", Interpolator(model), inputs, [TensorSpec("frame", frame)], axes, sample,
                         check, source=source or {})  # fmt: skip


def trt_profiles(spec: ComponentSpec, buckets: list[dict[str, int]]) -> list[dict[str, list[list[int]]]]:
    """One TensorRT profile per resolution bucket: batch 1..2 (2 = classifier-free guidance), the
    bucket's spatial size fixed, other axes from 2 up to the bucket's value (frames) or the axis max."""
    profiles = []
    for bucket in buckets:
        lo, opt, hi = dict(bucket), dict(bucket), dict(bucket)
        for name, axis in spec.axes.items():
            if name == "batch":
                lo[name], opt[name], hi[name] = 1, min(2, axis.max), min(2, axis.max)
            elif name not in ("latent_height", "latent_width", "height", "width"):
                lo[name], hi[name] = axis.min, max(bucket.get(name, axis.min), axis.min)
        profiles.append(spec.profile(lo, opt, hi))
    return profiles
