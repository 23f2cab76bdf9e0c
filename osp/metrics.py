"""Reconstruction metrics for videos: PSNR, SSIM and flicker.

Both take two tensors of the same shape, either uint8 (data range 255) or float in [-1, 1] (data
range 2, the model's range); ``data_range`` overrides the guess. Arithmetic is float64 so results
agree with NumPy / scikit-image references to ~1e-6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from osp.errors import ShapeError

# Wang et al. 2004, "Image quality assessment: from error visibility to structural similarity", Sec. III-C.
SSIM_WIN = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Planes filtered per conv call: bounds the float64 working set for long or large videos.
_SSIM_CHUNK = 64


def luma(frames: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB -> (..., 1, H, W) BT.601 luma, what the SR literature's PSNR and SSIM are
    measured on. Affine in RGB with weights summing to 1, so it keeps the input's range ([0, 255],
    [-1, 1], ...); integer frames come out as float32."""
    x = frames if frames.is_floating_point() else frames.float()
    weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x * weights).sum(dim=-3, keepdim=True)


def flicker(video: torch.Tensor, truth: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean |Δt video - Δt truth| over ``dim``, the time axis: how much more (or less) a video changes
    from frame to frame than the truth does, in the inputs' units. 0 for a video that differs from the
    truth by the same amount in every frame; what an upscaler adds by redrawing detail or noise
    differently in each frame. Differentiable (a training loss) and in the inputs' float dtype."""
    _same_shape(video, truth)
    if video.shape[dim] < 2:
        raise ShapeError(f"metrics: flicker needs 2 or more frames on axis {dim}, got {video.shape[dim]}")
    x = video if video.is_floating_point() else video.float()
    y = truth if truth.is_floating_point() else truth.float()
    return (x.diff(dim=dim) - y.diff(dim=dim)).abs().mean()


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ShapeError(f"metrics: inputs differ in shape, {tuple(a.shape)} vs {tuple(b.shape)}")


def _check_pair(a: torch.Tensor, b: torch.Tensor, data_range: float | None) -> float:
    _same_shape(a, b)
    if a.numel() == 0:
        raise ShapeError(f"metrics: inputs are empty, shape {tuple(a.shape)}")
    if data_range is not None:
        if data_range <= 0:
            raise ValueError(f"data_range must be > 0, got {data_range}")
        return float(data_range)
    if a.dtype == torch.uint8 and b.dtype == torch.uint8:
        return 255.0
    if a.is_floating_point() and b.is_floating_point():
        return 2.0
    raise ValueError(f"metrics: cannot guess data_range for dtypes {a.dtype} and {b.dtype}; pass data_range")


def _psnr_from_mse(mse: torch.Tensor, data_range: float) -> torch.Tensor:
    # mse == 0 gives 10 * log10(r² / 0) = +inf, the convention for identical inputs.
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float | None = None) -> float:
    """PSNR in dB over all elements: ``10 log10(data_range² / MSE)``; ``inf`` when ``a == b``.

    ``data_range`` defaults to 255 for uint8 inputs and 2 for float inputs in [-1, 1].
    """
    r = _check_pair(a, b, data_range)
    mse = (a.double() - b.double()).pow(2).mean()
    return float(_psnr_from_mse(mse, r))


def psnr_per_frame(
    a: torch.Tensor, b: torch.Tensor, data_range: float | None = None, *, time_dim: int = 0
) -> torch.Tensor:
    """PSNR of each frame, float64 of shape ``(T,)``; ``time_dim`` is 0 for ``(T, C, H, W)``, 1 for ``(C, T, H, W)``."""
    r = _check_pair(a, b, data_range)
    diff = (a.double() - b.double()).pow(2).movedim(time_dim, 0)
    mse = diff.reshape(diff.shape[0], -1).mean(dim=1)
    return _psnr_from_mse(mse, r)


def _gaussian_1d(device: torch.device) -> torch.Tensor:
    # Same taps as scipy.ndimage.gaussian_filter(sigma=1.5, truncate=3.5): radius 5, normalized.
    x = torch.arange(SSIM_WIN, dtype=torch.float64, device=device) - SSIM_WIN // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _ssim_planes(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """Mean SSIM of each 2D plane; ``a`` and ``b`` are ``(N, H, W)``, the result is ``(N,)`` float64."""
    g = _gaussian_1d(a.device)
    gh, gw = g.view(1, 1, SSIM_WIN, 1), g.view(1, 1, 1, SSIM_WIN)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    out = []
    for x, y in zip(a.split(_SSIM_CHUNK), b.split(_SSIM_CHUNK), strict=True):
        x, y = x.double().unsqueeze(1), y.double().unsqueeze(1)  # (n, 1, H, W)
        # One batched separable blur of [x, y, x², y², xy]; "valid" convolution = no padding, so only
        # windows that lie fully inside the image count (scikit-image crops its border the same way).
        stack = torch.cat([x, y, x * x, y * y, x * y])  # (5n, 1, H, W)
        blurred = F.conv2d(F.conv2d(stack, gh), gw)
        mu_x, mu_y, xx, yy, xy = blurred.chunk(5)
        # Population (biased) covariances, i.e. use_sample_covariance=False in scikit-image.
        var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
        s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        out.append(s.flatten(1).mean(dim=1))
    return torch.cat(out)


def _as_planes(
    a: torch.Tensor, b: torch.Tensor, data_range: float | None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    r = _check_pair(a, b, data_range)
    if a.ndim < 2 or min(a.shape[-2:]) < SSIM_WIN:
        raise ShapeError(
            f"ssim: frames must be at least {SSIM_WIN}×{SSIM_WIN} in (H, W), got shape {tuple(a.shape)}"
        )
    return a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), r


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float | None = None) -> float:
    """Mean SSIM (Wang et al. 2004) over every 2D plane (each channel of each frame) of ``a`` and ``b``.

    Convention: an 11-tap Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, population covariances,
    averaged over the valid region only (no padding), then averaged over planes. This equals
    ``skimage.metrics.structural_similarity(x, y, channel_axis=..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)`` per frame, averaged over frames. Since every plane
    has the same size, the layout of the leading dims does not matter: ``(T, C, H, W)``,
    ``(C, T, H, W)`` and ``(B, C, T, H, W)`` all work. Identical inputs give 1.0.
    """
    x, y, r = _as_planes(a, b, data_range)
    return float(_ssim_planes(x, y, r).mean())


def ssim_per_frame(
    a: torch.Tensor, b: torch.Tensor, data_range: float | None = None, *, time_dim: int = 0
) -> torch.Tensor:
    """SSIM of each frame (mean over its channels), float64 ``(T,)``; ``time_dim`` as in :func:`psnr_per_frame`."""
    if a.ndim < 3 or time_dim % a.ndim >= a.ndim - 2:
        raise ShapeError(
            f"ssim_per_frame: time_dim {time_dim} must be a leading dim of shape {tuple(a.shape)}"
        )
    a, b = a.movedim(time_dim, 0), b.movedim(time_dim, 0)
    x, y, r = _as_planes(a, b, data_range)
    return _ssim_planes(x, y, r).view(a.shape[0], -1).mean(dim=1)
