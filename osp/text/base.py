"""The text-encoder interface, its output, and the machinery shared by the transformers-backed encoders.

A diffusion transformer cross-attends to *per-token* text states, so every encoder returns
``states (B, L, D)`` plus a ``mask (B, L)`` marking real tokens. ``L`` is the encoder's fixed
``max_length``: every batch is padded to it, so the shapes a compiled or exported denoiser sees never
change. Prompts longer than ``L`` are cut with a :class:`PromptTruncatedWarning`, never an error.

Unconditional (CFG) embedding: like Open-Sora-Plan and the diffusers PixArt pipelines, osp uses the
encoding of the negative prompt, by default the empty prompt ``""`` (:meth:`HFTextEncoder.null`). It is
a real encoding — its mask marks the special tokens the tokenizer adds — not a zero or learned vector.

Weights only ever come from a local folder. Loading passes ``local_files_only=True`` and, while it
runs, switches the Hugging Face hub into offline mode, so a missing file is a :class:`WeightsError`
naming the folder instead of a download attempt.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch

from osp.errors import ConfigError, WeightsError

if TYPE_CHECKING:  # transformers takes seconds to import; load it only when a model is built
    from transformers import PreTrainedModel

# Loaded (tokenizer, model) pairs kept alive, keyed by folder, device and dtype. Small: a T5-XXL
# encoder is ~9 GB in half precision, and a pipeline normally uses one encoder.
CACHE_SIZE = 2


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than the encoder's max_length; the tail was dropped."""


@dataclass(frozen=True)
class TextEmbeddings:
    """What a text encoder hands to a denoiser.

    ``states``: (B, L, D) per-token hidden states, the keys/values of cross-attention.
    ``mask``: (B, L) bool, True where the token is real, False on padding.
    ``pooled``: (B, D) one vector per prompt, or None for encoders without one.
    """

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.states.shape[0]

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> TextEmbeddings:
        """Move to ``device``; ``dtype`` applies to the float tensors only (the mask stays bool)."""
        pooled = None if self.pooled is None else self.pooled.to(device=device, dtype=dtype)
        return replace(
            self,
            states=self.states.to(device=device, dtype=dtype),
            mask=self.mask.to(device=device),
            pooled=pooled,
        )

    def repeat(self, times: int) -> TextEmbeddings:
        """Each row repeated ``times`` times in a row (B -> B * times), e.g. several videos per prompt."""
        pooled = None if self.pooled is None else self.pooled.repeat_interleave(times, dim=0)
        return replace(
            self,
            states=self.states.repeat_interleave(times, dim=0),
            mask=self.mask.repeat_interleave(times, dim=0),
            pooled=pooled,
        )

    @staticmethod
    def cat(parts: Sequence[TextEmbeddings]) -> TextEmbeddings:
        """Stack batches along B, e.g. ``cat([uncond, cond])`` for one CFG forward pass."""
        if not parts:
            raise ValueError("TextEmbeddings.cat needs at least one part")
        has_pooled = [p.pooled is not None for p in parts]
        if any(has_pooled) and not all(has_pooled):
            raise ValueError("TextEmbeddings.cat: some parts have pooled embeddings and some do not")
        pooled = torch.cat([p.pooled for p in parts if p.pooled is not None]) if all(has_pooled) else None
        return TextEmbeddings(
            states=torch.cat([p.states for p in parts]),
            mask=torch.cat([p.mask for p in parts]),
            pooled=pooled,
        )


@runtime_checkable
class TextEncoder(Protocol):
    """What pipelines and training code need from a text encoder; fakes in tests only implement this."""

    @property
    def dim(self) -> int:
        """D, the width of each token state."""
        ...

    @property
    def max_length(self) -> int:
        """L, the padded number of tokens of every batch."""
        ...

    def encode(
        self,
        prompts: Sequence[str],
        *,
        max_length: int | None = None,
        device: str | torch.device | None = None,
    ) -> TextEmbeddings:
        """Embed a batch of prompts, padded (or cut) to ``max_length`` tokens (default: the encoder's)."""
        ...

    def null(
        self, batch: int, *, negative_prompt: str = "", device: str | torch.device | None = None
    ) -> TextEmbeddings:
        """The unconditional embedding for classifier-free guidance, ``batch`` rows."""
        ...


@contextmanager
def hub_offline() -> Iterator[None]:
    """Force huggingface_hub's offline mode (the HF_HUB_OFFLINE switch) for the duration.

    ``local_files_only=True`` already keeps from_pretrained off the network; this also makes any other
    request a library might try (model cards, templates) fail at once instead of waiting on a socket.
    The hub reads the flag at request time, so setting the module constant is enough.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # transformers depends on it; without it nothing can reach the hub anyway
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextmanager
def _no_loading_bar() -> Iterator[None]:
    """transformers' own "Loading weights" tqdm bar off for the duration: osp shows its progress with
    its own display (or none, with -q), and a second bar on stderr would tear it."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def read_model_config(folder: Path) -> dict[str, Any]:
    """The transformers ``config.json`` of ``folder``; WeightsError naming the path if absent or broken."""
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such text-encoder folder")
    path = folder / "config.json"
    if not path.is_file():
        raise WeightsError(f"{folder}: not a text-encoder folder (no config.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: must hold a JSON object")
    return data


def resolve_folders(path: Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) for ``path``.

    A plain model folder holds both. A diffusers pipeline folder (PixArt, Stable Diffusion) keeps them
    in ``text_encoder/`` and ``tokenizer/``; accepting it saves users from pointing at subfolders.
    """
    if not path.is_dir():
        raise WeightsError(f"{path}: no such text-encoder folder")
    if not (path / "config.json").is_file() and (path / "text_encoder" / "config.json").is_file():
        tokenizer_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else path / "text_encoder"
        return path / "text_encoder", tokenizer_dir
    return path, path


CacheKey = tuple[str, Path, Path, torch.device, torch.dtype]
_CACHE: OrderedDict[CacheKey, tuple[Any, PreTrainedModel]] = OrderedDict()


def load_pretrained(
    model_class: type[PreTrainedModel],
    model_dir: Path,
    tokenizer_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Any, PreTrainedModel]:
    """(tokenizer, model) from local folders only, in eval mode without grads.

    Kept in a small least-recently-used cache keyed by class, folders, device and dtype, so repeated
    pipeline calls reuse the loaded model instead of reading gigabytes again.
    """
    key: CacheKey = (model_class.__qualname__, model_dir, tokenizer_dir, device, dtype)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    from transformers import AutoTokenizer

    with hub_offline(), _no_loading_bar():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError, ImportError) as err:
            raise WeightsError(f"{tokenizer_dir}: cannot load a tokenizer from this folder ({err})") from None
        try:
            model = model_class.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
            raise WeightsError(f"{model_dir}: cannot load {model_class.__name__} weights ({err})") from None
    # eval() turns dropout off, so the same prompt always gives the same states.
    model.to(device)  # type: ignore[arg-type]  # transformers types its wrapped .to() wrongly
    model.eval().requires_grad_(False)
    _CACHE[key] = (tokenizer, model)
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return tokenizer, model


def clear_cache() -> None:
    """Drop every cached text-encoder model (frees its memory once no encoder object holds it)."""
    _CACHE.clear()


class HFTextEncoder:
    """A transformers model + tokenizer from a local folder, behind :class:`TextEncoder`.

    Subclasses name the model family and say how to run the model (:meth:`_forward`).
    """

    family: ClassVar[str]  # used in messages: "MiniLM", "T5", "CLIP"
    default_max_length: ClassVar[int]
    model_types: ClassVar[tuple[str, ...]]  # config.json model_type values this encoder accepts

    def __init__(
        self,
        path: str | Path,
        *,
        max_length: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        self.path = Path(path)
        model_dir, tokenizer_dir = resolve_folders(self.path)
        config = read_model_config(model_dir)
        model_type = config.get("model_type")
        if model_type not in self.model_types:
            raise WeightsError(
                f"{model_dir / 'config.json'}: holds a {model_type!r} model, not a {self.family} text "
                f"encoder (expected model_type {' or '.join(map(repr, self.model_types))})"
            )
        self.device = torch.device(device)
        self.dtype = dtype
        self.tokenizer: Any
        self.model: PreTrainedModel
        self.tokenizer, self.model = load_pretrained(
            self._model_class(model_type), model_dir.resolve(), tokenizer_dir.resolve(), self.device, dtype
        )
        self._max_length = self._check_max_length(
            self.default_max_length if max_length is None else max_length
        )

    # --- what subclasses provide -------------------------------------------------------------------

    def _model_class(self, model_type: str) -> type[PreTrainedModel]:
        raise NotImplementedError

    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(states (B, L, D), pooled (B, D) or None) for token ids (B, L) and their mask (B, L)."""
        raise NotImplementedError

    def _position_limit(self) -> int | None:
        """The most tokens the model's position embeddings cover; None when unbounded (relative)."""
        return None

    # --- the TextEncoder interface -------------------------------------------------------------------

    @property
    def dim(self) -> int:
        config = self.model.config
        return int(getattr(config, "d_model", None) or config.hidden_size)

    @property
    def max_length(self) -> int:
        return self._max_length

    def encode(
        self,
        prompts: Sequence[str],
        *,
        max_length: int | None = None,
        device: str | torch.device | None = None,
    ) -> TextEmbeddings:
        if isinstance(prompts, str):
            raise ConfigError("encode takes a list of prompts, got a single string")
        if not prompts:
            raise ConfigError("encode needs at least one prompt, got an empty list")
        length = self._max_length if max_length is None else self._check_max_length(max_length)
        self._warn_truncated(prompts, length)
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )
        input_ids = tokens["input_ids"].to(self.device)  # (B, L)
        mask = tokens["attention_mask"].to(self.device).bool()  # (B, L)
        with torch.inference_mode():
            states, pooled = self._forward(input_ids, mask)
        # Clone outside inference mode: inference tensors cannot be saved for backward, and training
        # feeds these states into layers whose weights do get gradients.
        out_device = self.device if device is None else torch.device(device)
        return TextEmbeddings(
            states=states.to(out_device).clone(),
            mask=mask.to(out_device).clone(),
            pooled=None if pooled is None else pooled.to(out_device).clone(),
        )

    def null(
        self, batch: int, *, negative_prompt: str = "", device: str | torch.device | None = None
    ) -> TextEmbeddings:
        if batch < 1:
            raise ConfigError(f"null: batch must be at least 1, got {batch}")
        return self.encode([negative_prompt], device=device).repeat(batch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={str(self.path)!r}, max_length={self.max_length}, dim={self.dim}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # --- helpers -------------------------------------------------------------------------------------

    def _check_max_length(self, max_length: int) -> int:
        # Room for the special tokens the tokenizer adds ([CLS]/[SEP], </s>, BOS/EOS) plus one word.
        least = self.tokenizer.num_special_tokens_to_add() + 1
        limit = self._position_limit()
        if max_length < least:
            raise ConfigError(f"max_length: {self.family} needs at least {least} tokens, got {max_length}")
        if limit is not None and max_length > limit:
            raise ConfigError(
                f"max_length: {self.family} at {self.path} has position embeddings for {limit} tokens, "
                f"got {max_length}"
            )
        return max_length

    def _warn_truncated(self, prompts: Sequence[str], max_length: int) -> None:
        # verbose=False: transformers would otherwise log its own "sequence too long" line here.
        counts = self.tokenizer(list(prompts), truncation=False, padding=False, verbose=False)["input_ids"]
        for index, ids in enumerate(counts):
            dropped = len(ids) - max_length
            if dropped > 0:
                warnings.warn(
                    f"{self.family} text encoder: prompt {index} has {len(ids)} tokens, max_length is "
                    f"{max_length}; dropped the last {dropped}",
                    PromptTruncatedWarning,
                    stacklevel=3,
                )
