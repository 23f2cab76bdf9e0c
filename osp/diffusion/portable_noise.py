"""Initial noise that any language reproduces from the seed alone: Philox4x32-10 + Box-Muller in float64.

``torch.randn`` cannot be reproduced outside PyTorch (its CPU generator is a Mersenne Twister whose
normal transform differs by tensor size and vector width), so a clip generated elsewhere — the
JavaScript runtime in ``examples/js`` — would start from other noise and end as another video. This
generator is specified by integer arithmetic on 32-bit words and a few float64 operations, each of
which JavaScript's ``Number`` does the same way:

1. Key = the seed's two 32-bit halves ``(seed mod 2^32, seed div 2^32)``, seed in [0, 2^53).
2. Element ``n`` of one clip's latent, flattened in C order over (C, T, H, W), belongs to block
   ``b = n div 2``; the block's counter is ``(b mod 2^32, b div 2^32, 0, 0)``.
3. Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"; the
   counter-based generator of cuRAND, JAX and TensorFlow) maps (counter, key) to four words w0..w3.
4. Two 53-bit uniforms: ``u1 = ((w0 >> 5) * 2^26 + (w1 >> 6) + 0.5) / 2^53`` in (0, 1] and
   ``u2 = ((w2 >> 5) * 2^26 + (w3 >> 6)) / 2^53`` in [0, 1).
5. Box-Muller in float64: ``r = sqrt(-2 ln u1)``, element ``2b`` is ``r cos(2π u2)``, element
   ``2b + 1`` is ``r sin(2π u2)``; each is rounded to float32.

Clip ``i`` of a batch uses ``seed + i``, as :meth:`VideoPipeline.noise` does with torch's generator.
Everything but ``ln``, ``cos`` and ``sin`` is exact in IEEE float64; those three are not correctly
rounded by every math library, so the float64 values may differ in the last bit between numpy and a
JavaScript engine, which the rounding to float32 removes unless a value lies within that bit of a
float32 rounding boundary (about one element in 10^8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from osp.errors import ConfigError

NAME = "philox4x32-10-box-muller"
VERSION = 1
MAX_SEED = 2**53  # JavaScript numbers hold integers exactly up to here

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # Philox4x32 multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments (golden ratio, sqrt(3) - 1)
_LOW = np.uint64(0xFFFFFFFF)
_ROUNDS = 10


def philox4x32(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of each row of ``counters`` (N, 4) uint32 under ``key``; returns (N, 4) uint32."""
    c = [counters[:, i].astype(np.uint64) for i in range(4)]
    k0, k1 = key
    for _ in range(_ROUNDS):
        p0, p1 = _M0 * c[0], _M1 * c[2]  # 32 x 32 -> 64-bit products, exact in uint64
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0),
            p1 & _LOW,
            (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
            p0 & _LOW,
        ]
        k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
    return np.stack(c, axis=1).astype(np.uint32)


def normal_float64(count: int, seed: int) -> np.ndarray:
    """The first ``count`` float64 standard normals of ``seed`` (steps 1-5 of the module docstring)."""
    check_seed(seed)
    blocks = np.arange((count + 1) // 2, dtype=np.uint64)
    counters = np.zeros((len(blocks), 4), dtype=np.uint32)
    counters[:, 0] = (blocks & _LOW).astype(np.uint32)
    counters[:, 1] = (blocks >> np.uint64(32)).astype(np.uint32)
    w = philox4x32(counters, (seed & 0xFFFFFFFF, seed >> 32)).astype(np.float64)
    u1 = (np.floor(w[:, 0] / 32) * 2.0**26 + np.floor(w[:, 1] / 64) + 0.5) / 2.0**53
    u2 = (np.floor(w[:, 2] / 32) * 2.0**26 + np.floor(w[:, 3] / 64)) / 2.0**53
    radius, angle = np.sqrt(-2.0 * np.log(u1)), 2.0 * np.pi * u2
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).reshape(-1)[:count]


def portable_randn(shape: Sequence[int], seed: int) -> torch.Tensor:
    """A float32 tensor of ``shape`` filled from ``seed`` (one clip's latent)."""
    count = int(np.prod(shape))
    return torch.from_numpy(normal_float64(count, seed).astype(np.float32).reshape(tuple(shape)))


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ConfigError(f"seed: the portable noise takes an integer in [0, 2^53), got {seed!r}")


def describe() -> dict[str, Any]:
    """The generator's specification, as bundles record it for other runtimes."""
    return {
        "name": NAME,
        "version": VERSION,
        "key": "(seed mod 2^32, floor(seed / 2^32)); seed an integer in [0, 2^53); clip i of a batch uses seed + i",
        "counter": "element n of the C-order flattened (C, T, H, W) latent: block b = floor(n / 2), "
        "counter (b mod 2^32, floor(b / 2^32), 0, 0)",
        "bits": "Philox4x32-10 (Salmon et al. 2011) of (counter, key) -> words w0, w1, w2, w3",
        "uniforms": "u1 = ((w0 >>> 5) * 2^26 + (w1 >>> 6) + 0.5) / 2^53, u2 = ((w2 >>> 5) * 2^26 + (w3 >>> 6)) / 2^53",
        "normals": "float64 Box-Muller: element 2b = sqrt(-2 ln u1) cos(2 pi u2), element 2b + 1 = "
        "sqrt(-2 ln u1) sin(2 pi u2); each rounded to float32",
    }
