"""PSNR, SSIM and masked PSNR on whole images, matching scikit-image's definitions.

SSIM follows Wang et al. (2004) as ``skimage.metrics.structural_similarity(a, b,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``
computes it: an 11-tap Gaussian window, statistics only where the window fits inside the image
(skimage filters with reflection and then crops those borders away, which is the same thing),
the mean over pixels, then over channels. Computed in float64 on the images' device.

    psnr(out, target)                       # (3, H, W) tensors in [0, 1]
    ssim(out, target)
    psnr(out, target, mask=changed(before, target))
"""

from __future__ import annotations

import math

import torch

K1, K2 = 0.01, 0.03
TRUNCATE = 3.5  # scipy.ndimage.gaussian_filter's cut-off, in sigmas, as skimage uses it


def psnr(output: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, mask: torch.Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB over all pixels, or over ``mask`` (H, W) only (nan if empty)."""
    err = (output.double() - target.double()) ** 2  # (3, H, W)
    if mask is not None:
        if not mask.any():
            return math.nan
        err = err[:, mask]
    mse = float(err.mean())
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def changed(before: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(H, W) mask of the pixels the retoucher changed in any channel."""
    return (before != target).any(dim=0)


def _gaussian_window(sigma: float, device: torch.device) -> torch.Tensor:
    radius = int(TRUNCATE * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()  # (2r + 1,)


def ssim(output: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean structural similarity of two (C, H, W) images."""
    g = _gaussian_window(sigma, output.device)
    if min(output.shape[-2:]) < len(g):
        raise ValueError(f"SSIM needs images of at least {len(g)}x{len(g)} pixels")
    x, y = output.double(), target.double()  # (C, H, W)

    def blur(z: torch.Tensor) -> torch.Tensor:
        # Separable Gaussian over the 'valid' region as a sum of shifted slices: exact in
        # float64 and faster on the CPU than a float64 convolution.
        n = len(g)
        h, w = z.shape[-2] - n + 1, z.shape[-1] - n + 1
        rows = sum(g[k] * z[..., k : k + h, :] for k in range(n))
        return sum(g[k] * rows[..., :, k : k + w] for k in range(n))

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s.mean(dim=(1, 2)).mean())
