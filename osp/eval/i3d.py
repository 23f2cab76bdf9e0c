"""I3D (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?"), the network FVD embeds clips with.

Inception-v1 inflated to 3D, RGB stream, 400 Kinetics classes, inference only. Parameter names and
shapes are those of pytorch-i3d's ``InceptionI3d`` (its ``rgb_imagenet.pt``; VideoGPT's
``i3d_pretrained_400.pt`` uses the same names), so ``I3D().state_dict()`` has exactly that checkpoint's
keys: no ``num_batches_tracked`` (batch norm here is a frozen affine map, :class:`FrozenBatchNorm3d`).

Behaviour follows the TF-Hub model that FVD was defined with (Unterthiner et al. 2018):

* TF "SAME" padding, computed from the input size at run time (a stride-2 layer pads differently for
  even and odd sizes), zeros for convolutions and for max pooling; every max pool follows a ReLU, so
  zero padding selects what TF's ignored padding selects;
* batch norm epsilon 1e-3 (Sonnet's default; VideoGPT's PyTorch copy uses 1e-5);
* the logits of every remaining time step after the final 2x7x7 average pool are averaged, as TF-Hub's
  ``RGB/inception_i3d/Mean`` does (pytorch-i3d returns them per time step). A 16-frame 224x224 clip
  has exactly one.

:func:`convert_checkpoint` turns the published files into osp's safetensors: pytorch-i3d / VideoGPT
state dicts (read with ``weights_only=True``), and StyleGAN-V's ``i3d_torchscript.pt`` (a port of the
TF-Hub weights whose modules follow hassony2's ``kinetics_i3d_pytorch`` names), which only
``torch.jit.load`` can read. Evaluation loads safetensors only (:func:`load_i3d`).
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from osp.errors import WeightsError
from osp.io.weights import check_state_dict, load_safetensors, save_safetensors

NUM_CLASSES = 400
BN_EPS = 1e-3
# The final average pool: 2 frames x 7x7, the feature map a 16-frame 224x224 clip leaves.
HEAD_POOL = (2, 7, 7)

Triple = tuple[int, int, int]


def _same_pad(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """Zero-pad (N, C, T, H, W) as TF "SAME" does: output size ceil(size / stride), the odd pixel after."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - (size % s or s), 0)
        pads += [total // 2, total - total // 2]  # F.pad takes the last dim first
    return F.pad(x, pads)


class FrozenBatchNorm3d(nn.Module):
    """Batch norm with fixed statistics: ``(x - mean) / sqrt(var + eps) * weight + bias`` per channel."""

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(channels), requires_grad=False)
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=BN_EPS
        )


class Unit3D(nn.Module):
    """SAME-padded 3D convolution, then batch norm and ReLU (the logits layer has a bias and neither)."""

    def __init__(
        self, cin: int, cout: int, kernel: Triple, stride: Triple = (1, 1, 1), *, head: bool = False
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.head = kernel, stride, head
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=head)
        self.bn = None if head else FrozenBatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is None:
            return x
        return F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 | 3x3 max pool -> 1x1, concatenated on channels."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        one, three = (1, 1, 1), (3, 3, 3)
        self.b0 = Unit3D(cin, widths[0], one)
        self.b1a = Unit3D(cin, widths[1], one)
        self.b1b = Unit3D(widths[1], widths[2], three)
        self.b2a = Unit3D(cin, widths[3], one)
        self.b2b = Unit3D(widths[3], widths[4], three)
        self.b3a = MaxPool3dSame(three, (1, 1, 1))
        self.b3b = Unit3D(cin, widths[5], one)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class I3D(nn.Module):
    """``(N, 3, T, H, W)`` in [-1, 1] -> ``(N, 400)`` logits (before the softmax), averaged over time."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        # pytorch-i3d's end points (TF's variable scopes), in data-flow order; widths from Inception-v1.
        self.trunk = [
            ("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
            ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(64, 64, (1, 1, 1))),
            ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3))),
            ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Mixed_3b", Mixed(192, (64, 96, 128, 16, 32, 32))),
            ("Mixed_3c", Mixed(256, (128, 128, 192, 32, 96, 64))),
            ("MaxPool3d_4a_3x3", MaxPool3dSame((3, 3, 3), (2, 2, 2))),
            ("Mixed_4b", Mixed(480, (192, 96, 208, 16, 48, 64))),
            ("Mixed_4c", Mixed(512, (160, 112, 224, 24, 64, 64))),
            ("Mixed_4d", Mixed(512, (128, 128, 256, 24, 64, 64))),
            ("Mixed_4e", Mixed(512, (112, 144, 288, 32, 64, 64))),
            ("Mixed_4f", Mixed(528, (256, 160, 320, 32, 128, 128))),
            ("MaxPool3d_5a_2x2", MaxPool3dSame((2, 2, 2), (2, 2, 2))),
            ("Mixed_5b", Mixed(832, (256, 160, 320, 32, 128, 128))),
            ("Mixed_5c", Mixed(832, (384, 192, 384, 48, 128, 128))),
        ]
        for name, module in self.trunk:
            self.add_module(name, module)  # top-level names, as the published checkpoints have them
        self.logits = Unit3D(1024, num_classes, (1, 1, 1), head=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, module in self.trunk:
            x = module(x)
        # At the protocol's 16x224x224 the pool covers the whole (2, 7, 7) map; smaller inputs pool what
        # there is, so the network also runs on the small clips of tests and previews.
        pool = tuple(min(k, s) for k, s in zip(HEAD_POOL, x.shape[2:], strict=True))
        x = self.logits(F.avg_pool3d(x, pool, stride=1))  # (N, classes, t, h, w)
        return x.mean(dim=(2, 3, 4))


# ---------------------------------------------------------------------------------------- weights

# hassony2/kinetics_i3d_pytorch names (StyleGAN-V's TorchScript port) -> pytorch-i3d names.
_HASSONY2 = (
    (r"^conv3d_0c_1x1\.", "logits."),
    (r"^conv3d_(\w+?)\.", r"Conv3d_\1."),
    (r"^mixed_(\w+?)\.", r"Mixed_\1."),
    (r"\.branch_0\.", ".b0."),
    (r"\.branch_1\.0\.", ".b1a."),
    (r"\.branch_1\.1\.", ".b1b."),
    (r"\.branch_2\.0\.", ".b2a."),
    (r"\.branch_2\.1\.", ".b2b."),
    (r"\.branch_3\.1\.", ".b3b."),
    (r"\.batch3d\.", ".bn."),
)


def osp_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a pytorch-i3d, VideoGPT or hassony2-style I3D state dict to :class:`I3D`'s names.

    ``module.`` prefixes (DataParallel) and batch-norm step counters are dropped; other names pass
    through unchanged, so :func:`check_state_dict` reports whatever does not fit.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.endswith("num_batches_tracked"):
            continue
        for pattern, repl in _HASSONY2:
            name = re.sub(pattern, repl, name)
        out[name] = value.detach().float().contiguous()
    return out


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry their code (``<archive>/code/...``); ``torch.save`` files do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False  # a legacy (pre-1.6) torch.save file is not a zip


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict in osp names, source format) of a published I3D file; checked against :class:`I3D`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if _is_torchscript(path):
        warnings.warn(
            f"{path}: loading a TorchScript file runs its deserialisation code (load only files you "
            "trust); this happens once, evaluation then reads the safetensors written here",
            stacklevel=2,
        )
        try:
            with warnings.catch_warnings():  # torch >= 2.9 flags TorchScript as deprecated: not news here
                warnings.simplefilter("ignore", DeprecationWarning)
                raw = torch.jit.load(str(path), map_location="cpu").state_dict()
        except RuntimeError as err:
            raise WeightsError(f"{path}: not a loadable TorchScript file ({err})") from None
        kind = "torchscript"
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, ValueError, EOFError) as err:
            raise WeightsError(f"{path}: not a readable state dict ({err})") from None
        for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
            if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise WeightsError(f"{path}: holds no state dict of tensors")
        kind = "state_dict"
    state = osp_names(raw)
    check_state_dict(I3D(), state, str(path))
    return state, kind


def convert_checkpoint(src: str | Path, dst: str | Path) -> str:
    """Write ``src`` (pytorch-i3d / VideoGPT .pt, StyleGAN-V TorchScript) as safetensors; returns its format."""
    state, kind = read_checkpoint(src)
    save_safetensors(
        state, dst, metadata={"format": "osp-i3d", "source": Path(src).name, "source_format": kind}
    )
    return kind


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> I3D:
    """The I3D network from a safetensors file (see :func:`convert_checkpoint`), in eval mode."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise WeightsError(
            f"{path}: evaluation reads safetensors only; convert the file once with `osp eval convert-i3d`"
        )
    state = load_safetensors(path)
    model = I3D()
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model.eval().requires_grad_(False).to(device)
