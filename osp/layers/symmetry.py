"""The square's symmetries on (..., H, W) tensors: the views a self-ensemble averages over and the
turns a training clip is drawn in."""

from __future__ import annotations

import torch

View = tuple[bool, tuple[int, ...]]  # (transpose first, then flip these dims)

# The 8 symmetries of a square; the first is the identity.
DIHEDRAL: tuple[View, ...] = tuple(
    (transpose, dims) for transpose in (False, True) for dims in ((), (-1,), (-2,), (-2, -1))
)
# Those without a transpose (as is, left-right, upside down, both): the symmetries of any rectangle.
MIRRORS: tuple[View, ...] = tuple(view for view in DIHEDRAL if not view[0])


def turn(x: torch.Tensor, transpose: bool, dims: tuple[int, ...]) -> torch.Tensor:
    """(..., H, W) transposed, then flipped along ``dims``: one of :data:`DIHEDRAL` applied."""
    x = x.transpose(-1, -2) if transpose else x
    return x.flip(dims) if dims else x


def unturn(x: torch.Tensor, transpose: bool, dims: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`turn` with the same arguments: flipped back, then transposed back."""
    x = x.flip(dims) if dims else x
    return x.transpose(-1, -2) if transpose else x
