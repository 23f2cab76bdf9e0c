"""Run osp's Triton kernels in Triton's CPU interpreter and print their errors against plain torch as JSON.

Started by test_kernel_triton.py in a fresh process with TRITON_INTERPRET=1: Triton reads the variable
when a kernel is decorated, so it must be set before osp.kernels is imported, and must not leak into the
rest of the test session.
"""

import json
import math
import sys

import torch
import torch.nn.functional as F

from osp.kernels import triton_attention, triton_modulate_norm

# name: (batch, heads, Lq, Lk, head dim, mask kind[, memory layout])
ATTENTION_CASES = {
    "spatial-d64": (1, 2, 128, 128, 64, None),
    "spatial-d72-mask": (1, 2, 96, 96, 72, "random"),
    "spatial-d32-mask": (2, 1, 64, 64, 32, "random"),
    "temporal-5-d32": (6, 2, 5, 5, 32, None),
    "temporal-17-d72-one-key": (4, 2, 17, 17, 72, "one-key"),
    "temporal-17-d64": (8, 1, 17, 17, 64, None),
    "cross-40x70-d32-mask": (2, 2, 40, 70, 32, "random"),
    # head dims split into two power-of-two parts (40 = 32 + 16, 80 = 64 + 16, 96 = 64 + 32), with ragged
    # and even tile edges; 72 without a mask takes the unmasked full-tile paths
    "spatial-d40-ragged": (1, 2, 50, 50, 40, None),
    "spatial-d72": (1, 2, 64, 64, 72, None),
    "cross-33x64-d80-mask": (2, 1, 33, 64, 80, "random"),
    "temporal-9-d96": (3, 2, 9, 9, 96, None),
    # inputs and output gradient strided as (B, L, H, D) memory, the layout the models pass
    "strided-d72-mask": (2, 3, 40, 40, 72, "random", "blhd"),
}
# name: (x shape, shift/scale shape, x transposed): a transposed x is a strided view (dims 1 and 2 swapped),
# as a block's (B, N, T, C) activations are; widths split into two power-of-two parts (72 = 64 + 8,
# 80 = 64 + 16, 33 = 32 + 1); tiles of 32 rows that end mid-sample, share one sample, or run past the end
MODNORM_CASES = {
    "per-sample-4d": ((2, 3, 16, 72), (2, 1, 1, 72), False),
    "per-row": ((2, 17, 48), (2, 17, 48), False),
    "per-sample-odd-width": ((3, 5, 33), (3, 1, 33), False),
    "per-sample-transposed": ((2, 16, 3, 80), (2, 1, 1, 80), True),
    "per-row-transposed": ((2, 6, 3, 40), (2, 6, 3, 40), True),
    "per-sample-whole-tiles": ((2, 64, 64), (2, 1, 64), False),
    "shared-by-the-batch": ((2, 5, 24), (24,), False),
}


def reference_attention(q, k, v, mask, scale):
    s = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], -math.inf)
    return torch.softmax(s, -1) @ v


def make_mask(kind, batch, lk, gen):
    if kind is None:
        return None
    mask = torch.rand(batch, lk, generator=gen) > 0.3
    mask[:, 0] = True
    if kind == "one-key":
        mask[0] = False  # the first sample attends to exactly one key
        mask[0, lk // 2] = True
    return mask


def max_err(a, b):
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


def blhd(batch, heads, n, d, gen):
    """A (B, H, L, D) view of (B, L, H, D) memory, as the models' projections hand attention its inputs."""
    return torch.randn(batch, n, heads, d, generator=gen).transpose(1, 2)


def attention_case(batch, heads, lq, lk, d, kind, gen, layout="bhld"):
    if layout == "blhd":
        q, k, v = (blhd(batch, heads, n, d, gen).requires_grad_() for n in (lq, lk, lk))
        grad = blhd(batch, heads, lq, d, gen)
    else:
        q, k, v = (torch.randn(batch, heads, n, d, generator=gen, requires_grad=True) for n in (lq, lk, lk))
        grad = torch.randn(batch, heads, lq, d, generator=gen)
    mask = make_mask(kind, batch, lk, gen)
    out = triton_attention(q, k, v, mask)
    got = [out, *torch.autograd.grad(out, (q, k, v), grad)]
    ref = reference_attention(q, k, v, mask, d**-0.5)
    want = [ref, *torch.autograd.grad(ref, (q, k, v), grad)]
    return {name: max_err(a, b) for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True)}


def fully_masked_case(gen):
    q, k, v = (torch.randn(2, 1, 16, 32, generator=gen, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1] = False
    out = triton_attention(q, k, v, mask)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    return {
        "masked_out_abs": out[1].abs().max().item(),
        "grads_finite": all(bool(g.isfinite().all()) for g in grads),
        "masked_grad_abs": max(g[1].abs().max().item() for g in grads),
        "other_out_err": max_err(out[0], reference_attention(q, k, v, mask, 32**-0.5)[0]),
    }


def modnorm_case(x_shape, mod_shape, transposed, gen):
    if transposed:
        x = torch.randn(x_shape[0], x_shape[2], x_shape[1], *x_shape[3:], generator=gen).transpose(1, 2)
        x.requires_grad_()
    else:
        x = torch.randn(*x_shape, generator=gen, requires_grad=True)
    shift, scale = (torch.randn(*mod_shape, generator=gen, requires_grad=True) for _ in range(2))
    grad = torch.randn(*x_shape, generator=gen)
    out = triton_modulate_norm(x, shift, scale, 1e-6)
    got = [out, *torch.autograd.grad(out, (x, shift, scale), grad)]
    ref = F.layer_norm(x, (x_shape[-1],), eps=1e-6) * (1 + scale) + shift
    want = [ref, *torch.autograd.grad(ref, (x, shift, scale), grad)]
    return {
        name: max_err(a, b) for name, a, b in zip(("out", "dx", "dshift", "dscale"), got, want, strict=True)
    }


def main():
    gen = torch.Generator().manual_seed(0)
    results = {
        f"attention/{name}": attention_case(*case[:6], gen, *case[6:])
        for name, case in ATTENTION_CASES.items()
    }
    results["attention/fully-masked"] = fully_masked_case(gen)
    results |= {f"modulate_norm/{name}": modnorm_case(*case, gen) for name, case in MODNORM_CASES.items()}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
