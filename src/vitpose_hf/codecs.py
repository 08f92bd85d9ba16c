"""Keypoint <-> heatmap codecs shared by training (``encode``) and inference (``decode``), in vectorised torch.

Letters used in shapes: ``N`` instances (crops), ``K`` keypoints, ``(H, W)`` the model input (crop) size and
``(h, w)`` the heatmap size. Keypoints are ``(x, y)`` in input-crop pixels on both sides of a codec, so the
caller maps between crop and image with :mod:`.geometry` only.

- :class:`UDPHeatmap`: the setting of the official ViTPose COCO / MPII configs. Targets are Gaussians centred on
  the exact sub-pixel position; decoding is arg-max + DARK refinement (``post_dark_udp``) and the unbiased scale
  ``(input - 1) / (heatmap - 1)``.
- :class:`AssociativeEmbedding`: bottom-up (whole image, many people): the UDP Gaussians of every person in one
  map per keypoint plus associative-embedding tags; decoding is top-k peaks, grouping by tag, filling missing
  keypoints from the tag maps, DARK refinement and per-person scores.
- :class:`MSRAHeatmap`: the classic setting (non-UDP configs: AIC, AP-10K, APT-36K, COCO-WholeBody, ...). Targets
  are Gaussians on the rounded position; decoding is arg-max + a quarter-pixel shift, scale ``input / heatmap``.

Heatmaps may be any float dtype on any device; work is done in float32 (float64 stays float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .devices import to_device

__all__ = [
    "AssociativeEmbedding",
    "MSRAHeatmap",
    "UDPHeatmap",
    "flip_back",
    "gaussian_blur",
    "get_heatmap_maximum",
    "opencv_gaussian_kernel",
    "refine_keypoints_dark_udp",
    "refine_keypoints_quarter_offset",
]

# OpenCV's fixed kernels for sigma <= 0 and small odd sizes (getGaussianKernel's "small_gaussian_tab").
_OPENCV_SMALL_KERNELS = {
    1: [1.0],
    3: [0.25, 0.5, 0.25],
    5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
    7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125],
}
# The official DARK step clips the blurred heatmap to this range before the log.
_DARK_CLIP = (0.001, 50.0)
_FLOAT32_EPS = float(np.finfo(np.float32).eps)


def _check_size(value: Sequence[int], name: str, minimum: int = 1) -> tuple[int, int]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum for v in value)
    ):
        raise ValueError(f"{name} must be (height, width), two integers >= {minimum}, got {value!r}")
    return int(value[0]), int(value[1])


def _check_kernel_size(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer, got {value!r}")
    return value


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _check_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    if not isinstance(heatmaps, torch.Tensor):
        raise TypeError(f"heatmaps must be a torch.Tensor, got {type(heatmaps).__name__}")
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must have shape (N, K, h, w), got {tuple(heatmaps.shape)}")
    if not heatmaps.is_floating_point():
        raise TypeError(f"heatmaps must be floating point, got dtype {heatmaps.dtype}")
    return heatmaps


def opencv_gaussian_kernel(
    kernel_size: int, sigma: float = 0.0, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """1-D Gaussian kernel ``(kernel_size,)`` as ``cv2.getGaussianKernel``, including its rule for ``sigma <= 0``.

    With ``sigma <= 0`` OpenCV uses ``sigma = 0.3 * ((kernel_size - 1) / 2 - 1) + 0.8`` (2.0 for size 11), or a
    fixed binomial table for sizes 1, 3, 5 and 7.
    """
    _check_kernel_size(kernel_size, "kernel_size")
    if sigma <= 0 and kernel_size in _OPENCV_SMALL_KERNELS:
        return to_device(torch.tensor(_OPENCV_SMALL_KERNELS[kernel_size], dtype=dtype), device)
    if sigma <= 0:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    kernel = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return to_device(kernel / kernel.sum(), device, dtype)


# Rows: the 3x3 log-neighbourhood flattened as 3 * row + col (rows y-1, y, y+1; cols x-1, x, x+1).
# Columns: dx, dy, dxx, dyy, dxy, the official finite differences.
_DARK_DIFFERENCES = [
    [0.0, 0.0, 0.0, 0.0, 0.5],
    [0.0, -0.5, 0.0, 1.0, -0.5],
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [-0.5, 0.0, 1.0, 0.0, -0.5],
    [0.0, 0.0, -2.0, -2.0, 1.0],
    [0.5, 0.0, 1.0, 0.0, -0.5],
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.5, 0.0, 1.0, -0.5],
    [0.0, 0.0, 0.0, 0.0, 0.5],
]


def _dark_constants(blur_kernel_size: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(blur band, window offsets, neighbour steps, difference matrix, Hessian eps).

    Built on every call (a few hundred numbers): a cache would be global state, and one filled while tracing
    (torch.export / compile) would hold fake tensors.

    The band is the ``(k + 2, 3)`` matrix whose column j holds the blur kernel shifted by j: a window of
    ``k + 2`` pixels times the band gives the blurred values at the 3 neighbouring positions.
    """
    r = blur_kernel_size // 2
    kernel = opencv_gaussian_kernel(blur_kernel_size, 0.0, dtype=dtype, device=device)
    band = torch.zeros(blur_kernel_size + 2, 3, dtype=dtype, device=device)
    for j in range(3):
        band[j : j + blur_kernel_size, j] = kernel
    # The official code inverts the Hessian in float64 (H + float32 eps * I); MPS has no float64.
    solve = torch.float64 if device.type != "mps" else torch.float32
    return (
        band,
        torch.arange(-r - 1, r + 2, device=device),
        torch.arange(-1, 2, device=device),
        to_device(torch.tensor(_DARK_DIFFERENCES, dtype=solve), device),
        to_device(torch.tensor([0.0, 0.0, _FLOAT32_EPS, _FLOAT32_EPS, 0.0], dtype=solve), device),
    )


def _reflect101(index: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    """Map any integer index into ``[0, size)`` like OpenCV's BORDER_REFLECT_101 (``gfedcb|abcdefgh|gfedcba``).

    ``size`` may be a tensor broadcasting against ``index`` (one size per axis).
    """
    period = 2 * size - 2
    # A size-1 axis has period 0: every index maps to 0, which a period of 1 gives too.
    period = period.clamp_min(1) if isinstance(period, torch.Tensor) else max(period, 1)
    index = torch.remainder(index, period)
    return torch.where(index >= size, period - index, index)


def gaussian_blur(heatmaps: torch.Tensor, kernel_size: int = 11, sigma: float = 0.0) -> torch.Tensor:
    """Blur every ``(h, w)`` map of ``(N, K, h, w)`` heatmaps as ``cv2.GaussianBlur(m, (k, k), sigma)``.

    A separable depthwise convolution with BORDER_REFLECT_101 padding (any map size). Decoding does not call it:
    DARK reads the blurred map at 9 pixels only, and :func:`refine_keypoints_dark_udp` evaluates this same blur
    at those pixels (blurring 1,700 whole maps costs ~0.3 s on a CPU).
    """
    heatmaps = _check_heatmaps(heatmaps)
    n, k, h, w = heatmaps.shape
    x = heatmaps.to(_work_dtype(heatmaps)).reshape(n * k, 1, h, w)
    kernel = opencv_gaussian_kernel(kernel_size, sigma, dtype=x.dtype, device=x.device)
    r = kernel_size // 2
    rows = _reflect101(torch.arange(-r, h + r, device=x.device), h)
    cols = _reflect101(torch.arange(-r, w + r, device=x.device), w)
    x = x.index_select(2, rows).index_select(3, cols)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.reshape(n, k, h, w)


def get_heatmap_maximum(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Arg-max of each map of ``(N, K, h, w)`` heatmaps.

    Returns ``locations`` ``(N, K, 2)`` int64 ``(x, y)`` (the first maximum in row-major order, as numpy) and
    ``scores`` ``(N, K)``: the raw maximum value, which may be <= 0. The official code replaces the location of
    a score <= 0 by -1; here it is kept, so every keypoint has a real position and its score says how weak it is.
    """
    heatmaps = _check_heatmaps(heatmaps)
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        # On a CPU, numpy's row arg-max is ~6x faster than torch's (and returns the first maximum as well).
        index = torch.from_numpy(flat.detach().numpy().argmax(axis=-1))
    else:
        index = flat.argmax(dim=-1)
    scores = flat.gather(2, index.unsqueeze(-1)).squeeze(-1)
    return torch.stack([index % w, index // w], dim=-1), scores


def refine_keypoints_dark_udp(
    locations: torch.Tensor, heatmaps: torch.Tensor, blur_kernel_size: int = 11
) -> torch.Tensor:
    """DARK refinement of arg-max ``locations`` as the official ``post_dark_udp``; returns ``(N, K, 2)`` float.

    The official step blurs each map (``cv2.GaussianBlur``, kernel ``blur_kernel_size``, OpenCV's sigma rule,
    BORDER_REFLECT_101), clips to [0.001, 50], takes the log, edge-pads by one pixel, then takes one Newton step
    ``x -= H^-1 g`` (``H + eps I``) from finite differences at the arg-max. Only the 3x3 neighbourhood of the
    arg-max is ever read, so the blur is evaluated there alone: the same numbers, without blurring whole maps.

    Args:
        locations: ``(N, K, 2)`` integer arg-max positions ``(x, y)`` in heatmap pixels.
        heatmaps: ``(N, K, h, w)`` raw heatmaps (any float dtype).
        blur_kernel_size: odd Gaussian kernel size (11 in the ViTPose configs, sigma 2.0 by OpenCV's rule).
    """
    heatmaps = _check_heatmaps(heatmaps)
    n, k, h, w = heatmaps.shape
    device = heatmaps.device
    dtype = _work_dtype(heatmaps)
    band, offsets, steps, differences, eps = _dark_constants(blur_kernel_size, dtype, device)
    size = offsets.numel()
    extent = to_device(torch.tensor([[w], [h]]), device)  # per axis (x, y)
    origin = locations.unsqueeze(-1)  # (N, K, 2, 1)
    # Columns / rows of the pixels that the blur at x-1..x+1 / y-1..y+1 reads, reflected at the border.
    window = _reflect101(origin + offsets, extent)  # (N, K, 2, size)
    index = (window[:, :, 1, :, None] * w + window[:, :, 0, None, :]).reshape(n, k, size * size)
    patch = heatmaps.reshape(n, k, h * w).gather(2, index).to(dtype).reshape(n, k, size, size)
    blurred = band.T @ (patch @ band)  # (N, K, 3, 3): the blurred map at rows y-1..y+1, columns x-1..x+1
    # Edge padding after the blur: a neighbour outside the map takes the value of the nearest inside pixel.
    near = torch.minimum((origin + steps).clamp_min(0), extent - 1) - origin + 1  # (N, K, 2, 3) in {0, 1, 2}
    pick = (near[:, :, 1, :, None] * 3 + near[:, :, 0, None, :]).reshape(n, k, 9)
    logs = blurred.reshape(n, k, 9).gather(2, pick).clamp(*_DARK_CLIP).log()  # 3 * row + col order
    dx, dy, a, d, b = (logs.to(differences.dtype) @ differences + eps).unbind(-1)  # a, d: dxx, dyy (+ eps)
    det = a * d - b * b
    shift = torch.stack([d * dx - b * dy, a * dy - b * dx], dim=-1) / det.unsqueeze(-1)
    return (locations - shift).to(dtype)


def refine_keypoints_quarter_offset(locations: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    """The official 'default' non-UDP refinement: move the arg-max 0.25 px toward the higher neighbour.

    Applied only when ``1 < x < w - 1`` and ``1 < y < h - 1`` (as the official code). Returns ``(N, K, 2)`` float.
    """
    heatmaps = _check_heatmaps(heatmaps)
    n, k, h, w = heatmaps.shape
    x, y = locations[..., 0], locations[..., 1]
    flat = heatmaps.reshape(n, k, h * w)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).unsqueeze(-1)).squeeze(-1)

    dtype = _work_dtype(heatmaps)
    diff_x = at(y, x + 1).to(dtype) - at(y, x - 1).to(dtype)
    diff_y = at(y + 1, x).to(dtype) - at(y - 1, x).to(dtype)
    inside = ((x > 1) & (x < w - 1) & (y > 1) & (y < h - 1)).to(dtype)
    shift = torch.stack([diff_x.sign(), diff_y.sign()], dim=-1) * (0.25 * inside).unsqueeze(-1)
    return locations.to(dtype) + shift


def flip_back(
    heatmaps: torch.Tensor, flip_indices: Sequence[int] | torch.Tensor, shift: bool | torch.Tensor = False
) -> torch.Tensor:
    """Turn heatmaps of horizontally mirrored crops back into heatmaps of the original crops.

    Swaps left/right channels (``out[:, i] = heatmaps[:, flip_indices[i]]``), then mirrors the width axis. With
    ``shift`` the result is moved one pixel to the right (column 0 kept), as the official non-UDP configs do
    (``shift_heatmap=True``); UDP configs use no shift.

    Args:
        heatmaps: ``(N, K, h, w)`` heatmaps predicted on mirrored crops.
        flip_indices: ``(K,)`` mirror partner of each channel, or ``(N, K)`` one permutation per crop.
        shift: the one-pixel shift of non-UDP models: a bool, or an ``(N,)`` bool tensor (per crop, for a batch
            that mixes UDP and non-UDP datasets).

    Returns:
        ``(N, K, h, w)`` heatmaps, same dtype and device.
    """
    heatmaps = _check_heatmaps(heatmaps)
    n, k, h, w = heatmaps.shape
    index = torch.as_tensor(flip_indices, dtype=torch.long)  # a list is checked on the host, before it moves
    if index.shape not in ((k,), (n, k)):
        raise ValueError(
            f"flip_indices must have shape ({k},) or ({n}, {k}) for heatmaps {tuple(heatmaps.shape)}, "
            f"got {tuple(index.shape)}"
        )
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= k):
        raise ValueError(f"flip_indices must lie in [0, {k}), got values from {int(index.min())} to {int(index.max())}")
    index = to_device(index, heatmaps.device)
    if index.ndim == 1:
        out = heatmaps.index_select(1, index)
    else:
        out = heatmaps.gather(1, index[:, :, None, None].expand(n, k, h, w))
    out = out.flip(-1)
    if isinstance(shift, torch.Tensor):
        shift = shift.to(device=out.device, dtype=torch.bool).reshape(-1)
        if shift.numel() not in (1, n):
            raise ValueError(f"shift must be a bool or hold one flag per crop ({n}), got {shift.numel()} flags")
        shifted = torch.cat([out[..., :1], out[..., :-1]], dim=-1)
        return torch.where(shift.reshape(-1, 1, 1, 1), shifted, out)
    if shift:
        out = torch.cat([out[..., :1], out[..., :-1]], dim=-1)
    return out


class _GaussianHeatmapCodec:
    """Shared constructor, validation and Gaussian target rendering of the two heatmap codecs."""

    use_udp: bool = True

    def __init__(
        self,
        input_size: tuple[int, int] = (256, 192),
        heatmap_size: tuple[int, int] = (64, 48),
        sigma: float = 2.0,
        blur_kernel_size: int = 11,
    ) -> None:
        self.input_size = _check_size(input_size, "input_size")
        self.heatmap_size = _check_size(heatmap_size, "heatmap_size", minimum=2 if self.use_udp else 1)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not np.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        self.sigma = float(sigma)
        self.blur_kernel_size = _check_kernel_size(blur_kernel_size, "blur_kernel_size")

    @property
    def stride(self) -> tuple[float, float]:
        """Input pixels per heatmap pixel, ``(x, y)``: ``(W-1)/(w-1)`` with UDP, ``W/w`` without."""
        (H, W), (h, w) = self.input_size, self.heatmap_size
        if self.use_udp:
            return (W - 1) / (w - 1), (H - 1) / (h - 1)
        return W / w, H / h

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_size={self.input_size}, heatmap_size={self.heatmap_size}, "
            f"sigma={self.sigma}, blur_kernel_size={self.blur_kernel_size})"
        )

    def to_dict(self) -> dict:
        """Constructor arguments (JSON-serialisable)."""
        return {
            "input_size": list(self.input_size),
            "heatmap_size": list(self.heatmap_size),
            "sigma": self.sigma,
            "blur_kernel_size": self.blur_kernel_size,
        }

    def encode(self, keypoints: torch.Tensor, keypoints_visible: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Render Gaussian target heatmaps.

        Args:
            keypoints: ``(N, K, 2)`` keypoints ``(x, y)`` in input-crop pixels.
            keypoints_visible: ``(N, K)`` visibility / weight (> 0.5 draws a Gaussian); all ones if None.

        Returns:
            ``{"heatmaps": (N, K, h, w) float, "keypoint_weights": (N, K) float}``. A keypoint whose Gaussian
            window (radius 3 sigma around the rounded position) lies entirely outside the heatmap gets weight 0.
        """
        keypoints = torch.as_tensor(keypoints)
        if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
            raise ValueError(f"keypoints must have shape (N, K, 2), got {tuple(keypoints.shape)}")
        dtype = _work_dtype(keypoints) if keypoints.is_floating_point() else torch.float32
        keypoints = keypoints.to(dtype)
        n, k, _ = keypoints.shape
        if keypoints_visible is None:
            visible = keypoints.new_ones(n, k)
        else:
            visible = torch.as_tensor(keypoints_visible, device=keypoints.device).to(dtype)
            if visible.ndim == 3 and visible.shape[-1] == 1:
                visible = visible[..., 0]
            if visible.shape != (n, k):
                raise ValueError(f"keypoints_visible must have shape ({n}, {k}), got {tuple(visible.shape)}")
        used = visible > 0
        if not bool(torch.isfinite(keypoints[used]).all()):
            raise ValueError("keypoints contain NaN or infinity at visible positions")
        keypoints = torch.where(used.unsqueeze(-1), keypoints, torch.zeros_like(keypoints))

        (h, w), radius = self.heatmap_size, 3.0 * self.sigma
        stride = to_device(torch.tensor(self.stride, dtype=dtype), keypoints.device)
        exact = keypoints / stride
        # int(v + 0.5) of the official code: truncation toward zero, not floor.
        rounded = torch.trunc(exact + 0.5)
        lower = torch.trunc(rounded - radius)
        upper = torch.trunc(rounded + radius + 1)  # exclusive
        outside = (lower[..., 0] >= w) | (lower[..., 1] >= h) | (upper[..., 0] < 0) | (upper[..., 1] < 0)
        weights = visible * (~outside).to(dtype)
        # UDP centres the Gaussian on the exact position, MSRA on the rounded one.
        mu = exact if self.use_udp else rounded
        xs = torch.arange(w, dtype=dtype, device=keypoints.device)
        ys = torch.arange(h, dtype=dtype, device=keypoints.device)

        def profile(axis: torch.Tensor, i: int) -> torch.Tensor:
            lo, hi, m = lower[..., i, None], upper[..., i, None], mu[..., i, None]
            window = (axis >= lo) & (axis < hi)
            return torch.exp(-((axis - m) ** 2) / (2 * self.sigma**2)) * window

        drawn = ((weights > 0.5).to(dtype))[..., None, None]
        heatmaps = profile(ys, 1).unsqueeze(-1) * profile(xs, 0).unsqueeze(-2) * drawn
        return {"heatmaps": heatmaps, "keypoint_weights": weights}

    def _check_decode_input(self, heatmaps: torch.Tensor) -> torch.Tensor:
        heatmaps = _check_heatmaps(heatmaps)
        if tuple(heatmaps.shape[-2:]) != self.heatmap_size:
            raise ValueError(
                f"heatmaps are {tuple(heatmaps.shape[-2:])} but this codec was built for heatmap_size "
                f"{self.heatmap_size}"
            )
        return heatmaps.to(_work_dtype(heatmaps))  # bf16 / fp16 are decoded in float32

    def _to_input_space(self, coords: torch.Tensor) -> torch.Tensor:
        return coords * to_device(torch.tensor(self.stride, dtype=coords.dtype), coords.device)

    def decode(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class UDPHeatmap(_GaussianHeatmapCodec):
    """UDP Gaussian heatmaps with DARK decoding (the official ViTPose COCO test setting).

    Args:
        input_size: ``(H, W)`` of the model input.
        heatmap_size: ``(h, w)`` of the heatmaps (at least 2 x 2).
        sigma: Gaussian sigma of the targets, in heatmap pixels.
        blur_kernel_size: kernel of the DARK blur (its sigma follows OpenCV's rule: 2.0 for 11).
    """

    use_udp = True

    def decode(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``(N, K, h, w)`` heatmaps.

        Returns:
            keypoints: ``(N, K, 2)`` float32 ``(x, y)`` in input-crop pixels (float64 for float64 heatmaps).
            scores: ``(N, K)`` raw heatmap maxima (before the blur; may be <= 0).
        """
        heatmaps = self._check_decode_input(heatmaps)
        locations, scores = get_heatmap_maximum(heatmaps)
        coords = refine_keypoints_dark_udp(locations, heatmaps, self.blur_kernel_size)
        return self._to_input_space(coords), scores.to(_work_dtype(heatmaps))


class MSRAHeatmap(_GaussianHeatmapCodec):
    """Classic (non-UDP) Gaussian heatmaps with the 'default' quarter-pixel decoding.

    Arguments as :class:`UDPHeatmap`; ``blur_kernel_size`` is unused by this decoder.
    """

    use_udp = False

    def decode(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``(N, K, h, w)`` heatmaps into ``(N, K, 2)`` input-crop pixels and ``(N, K)`` raw maxima."""
        heatmaps = self._check_decode_input(heatmaps)
        locations, scores = get_heatmap_maximum(heatmaps)
        coords = refine_keypoints_quarter_offset(locations, heatmaps)
        return self._to_input_space(coords), scores.to(_work_dtype(heatmaps))


class AssociativeEmbedding(UDPHeatmap):
    """Bottom-up codec: multi-person UDP heatmaps and associative-embedding tags (Newell et al., NeurIPS 2017).

    Keypoints are ``(x, y)`` in model-input pixels on both sides, as the other codecs; the input is the whole
    (resized and padded) image. Training (:meth:`encode_people`) and inference (:meth:`decode_people`) share the
    geometry of :class:`UDPHeatmap`.

    Args:
        input_size, heatmap_size, sigma: as :class:`UDPHeatmap`.
        blur_kernel_size: DARK blur kernel; 3 here, not the top-down 11: in crowds an 11 x 11 blur mixes the
            neighbours' Gaussians into each peak and biases it (perfect-tag COCO AP on the crowded mini-COCO train
            images: 0.87 with 11, 0.99 with 3).
        max_people: peaks kept per keypoint (top-k), hence the most people per image.
        detection_threshold: a peak below this value is not used.
        tag_threshold: a peak joins the person whose mean tag is nearest when the distance is below this.
        nms_kernel: side of the max-pool window that keeps only local maxima.
        refine: fill each person's missing keypoints at the best heatmap value among pixels with a close tag.
    """

    def __init__(
        self,
        input_size: tuple[int, int] = (512, 512),
        heatmap_size: tuple[int, int] = (128, 128),
        sigma: float = 2.0,
        blur_kernel_size: int = 3,
        max_people: int = 30,
        detection_threshold: float = 0.1,
        tag_threshold: float = 1.0,
        nms_kernel: int = 5,
        refine: bool = True,
    ) -> None:
        super().__init__(input_size, heatmap_size, sigma, blur_kernel_size)
        if isinstance(max_people, bool) or not isinstance(max_people, int) or max_people < 1:
            raise ValueError(f"max_people must be a positive integer, got {max_people!r}")
        if not tag_threshold > 0:
            raise ValueError(f"tag_threshold must be positive, got {tag_threshold!r}")
        self.max_people = max_people
        self.detection_threshold = float(detection_threshold)
        self.tag_threshold = float(tag_threshold)
        self.nms_kernel = _check_kernel_size(nms_kernel, "nms_kernel")
        self.refine = bool(refine)

    def to_dict(self) -> dict:
        """Constructor arguments (JSON-serialisable)."""
        return {
            **super().to_dict(),
            "max_people": self.max_people,
            "detection_threshold": self.detection_threshold,
            "tag_threshold": self.tag_threshold,
            "nms_kernel": self.nms_kernel,
            "refine": self.refine,
        }

    # ---- training targets ---------------------------------------------------------------------------------------
    def encode_people(
        self,
        keypoints: torch.Tensor | np.ndarray,
        keypoints_visible: torch.Tensor | np.ndarray | None = None,
        ignore_mask: torch.Tensor | np.ndarray | None = None,
    ) -> dict[str, torch.Tensor]:
        """Targets of one image.

        Args:
            keypoints: ``(M, K, 2)`` keypoints of the M labelled people, input pixels (M may be 0).
            keypoints_visible: ``(M, K)``; > 0 marks a labelled keypoint. All ones if None.
            ignore_mask: ``(h, w)`` bool at heatmap resolution, True where the loss must not look (crowd regions
                and people without keypoint labels); None for none.

        Returns:
            ``heatmaps`` ``(K, h, w)``: per keypoint the maximum over people of their Gaussians.
            ``keypoint_indices`` ``(M, K, 2)`` int64: flat heatmap index ``y * w + x`` of each keypoint's rounded
            position and 1 where it is labelled and inside the heatmap (the pull/push loss reads tags there).
            ``tags`` ``(K, h, w)``: the ideal tag map, ``person + 1`` at each pixel where that person's Gaussian is
            the highest and 0 where no Gaussian reaches (for checking the decoder with perfect tags).
            ``mask`` ``(h, w)`` float: 0 where ignored, 1 elsewhere.
        """
        points = torch.as_tensor(keypoints)
        if points.ndim != 3 or points.shape[-1] != 2:
            raise ValueError(f"keypoints must have shape (M, K, 2), got {tuple(points.shape)}")
        points = points.to(torch.float64 if points.dtype == torch.float64 else torch.float32)
        m, k, _ = points.shape
        h, w = self.heatmap_size
        mask = torch.ones(h, w, dtype=torch.float32)
        if ignore_mask is not None:
            ignore = torch.as_tensor(ignore_mask)
            if tuple(ignore.shape) != (h, w):
                raise ValueError(f"ignore_mask must have the heatmap shape {(h, w)}, got {tuple(ignore.shape)}")
            mask = (~ignore.to(torch.bool)).to(torch.float32)
        if m == 0:
            return {
                "heatmaps": torch.zeros(k, h, w, dtype=points.dtype),
                "keypoint_indices": torch.zeros(0, k, 2, dtype=torch.long),
                "tags": torch.zeros(k, h, w, dtype=points.dtype),
                "mask": mask,
            }
        target = self.encode(points, keypoints_visible)
        per_person = target["heatmaps"]  # (M, K, h, w)
        heatmaps, owner = per_person.max(dim=0)
        tags = torch.where(heatmaps > 0, owner.to(points.dtype) + 1, torch.zeros_like(heatmaps))
        stride = torch.tensor(self.stride, dtype=points.dtype)
        rounded = torch.trunc(points / stride + 0.5).long()
        inside = (rounded[..., 0] >= 0) & (rounded[..., 0] < w) & (rounded[..., 1] >= 0) & (rounded[..., 1] < h)
        valid = inside & (target["keypoint_weights"] > 0)
        flat = torch.where(valid, rounded[..., 1] * w + rounded[..., 0], torch.zeros_like(rounded[..., 0]))
        indices = torch.stack([flat, valid.long()], dim=-1)
        return {"heatmaps": heatmaps, "keypoint_indices": indices, "tags": tags, "mask": mask}

    # ---- inference ----------------------------------------------------------------------------------------------
    def _check_tags(self, tags: torch.Tensor, k: int) -> torch.Tensor:
        tags = torch.as_tensor(tags)
        if tags.ndim == 3:
            tags = tags.unsqueeze(1)
        if tags.ndim != 4 or tags.shape[0] != k or tuple(tags.shape[-2:]) != self.heatmap_size:
            raise ValueError(
                f"tags must have shape ({k}, h, w) or ({k}, L, h, w) with (h, w) = {self.heatmap_size}, "
                f"got {tuple(tags.shape)}"
            )
        return tags.to(torch.float64 if tags.dtype == torch.float64 else torch.float32)

    def _group(self, values: np.ndarray, tags: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
        """Greedy tag matching over keypoints in order; returns per person a ``(K, 4 + L)`` array
        ``[x, y, value, used, tag...]`` (heatmap pixels)."""
        k, top = values.shape
        dim = tags.shape[-1]
        people: list[np.ndarray] = []
        for j in range(k):
            keep = np.flatnonzero(values[j] > self.detection_threshold)
            if keep.size == 0:
                continue
            free = list(keep)
            if people:
                means = np.stack([p[p[:, 3] > 0, 4:].mean(axis=0) for p in people])  # (P, L)
                distance = np.linalg.norm(tags[j, keep, None, :] - means[None], axis=-1)  # (C, P)
                # mmpose's ordering: round the distance, then prefer the stronger peak
                cost = np.round(distance) * 100 - values[j, keep, None]
                order = np.argsort(cost, axis=None, kind="stable")
                taken_c, taken_p = set(), set()
                for flat in order:
                    c, p = divmod(int(flat), len(people))
                    if c in taken_c or p in taken_p or distance[c, p] >= self.tag_threshold:
                        continue
                    taken_c.add(c)
                    taken_p.add(p)
                    i = keep[c]
                    people[p][j] = [*positions[j, i], values[j, i], 1.0, *tags[j, i]]
                free = [keep[c] for c in range(len(keep)) if c not in taken_c]
            for i in free:
                if len(people) >= self.max_people:
                    break
                person = np.zeros((k, 4 + dim))
                person[j] = [*positions[j, i], values[j, i], 1.0, *tags[j, i]]
                people.append(person)
        return people

    def decode_people(
        self, heatmaps: torch.Tensor, tags: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Group the peaks of one image into people.

        Args:
            heatmaps: ``(K, h, w)`` heatmaps (flip / multi-scale already averaged).
            tags: ``(K, h, w)`` or ``(K, L, h, w)`` tag maps (L > 1 after a flip or multi-scale test, which stack
                the tags of each view).

        Returns:
            keypoints ``(P, K, 2)`` float32 input pixels, scores ``(P, K)`` (heatmap value at each keypoint) and
            person scores ``(P,)`` (mean of the keypoint scores), people sorted by score. P = 0 when no peak passes
            ``detection_threshold``.
        """
        heatmaps = self._check_decode_input(heatmaps.unsqueeze(0) if heatmaps.ndim == 3 else heatmaps)
        if heatmaps.shape[0] != 1:
            raise ValueError(f"decode_people takes one image's heatmaps (K, h, w), got {tuple(heatmaps.shape)}")
        heatmaps = heatmaps[0]
        k, h, w = heatmaps.shape
        tags = self._check_tags(tags, k).to(heatmaps.device)
        if not bool(torch.isfinite(heatmaps).all()) or not bool(torch.isfinite(tags).all()):
            raise ValueError("heatmaps or tags contain NaN or infinity")
        pooled = F.max_pool2d(heatmaps[None], self.nms_kernel, stride=1, padding=self.nms_kernel // 2)[0]
        peaks = torch.where(pooled == heatmaps, heatmaps, torch.zeros_like(heatmaps)).reshape(k, h * w)
        top = min(self.max_people, h * w)
        values, index = peaks.topk(top, dim=1)  # (K, top)
        flat_tags = tags.reshape(k, tags.shape[1], h * w)
        peak_tags = flat_tags.gather(2, index[:, None, :].expand(-1, tags.shape[1], -1)).permute(0, 2, 1)
        positions = torch.stack([index % w, index // w], dim=-1)
        people = self._group(values.cpu().double().numpy(), peak_tags.cpu().double().numpy(), positions.cpu().numpy())
        dtype = heatmaps.dtype
        if not people:
            empty = torch.zeros(0, k, dtype=dtype, device=heatmaps.device)
            return torch.zeros(0, k, 2, dtype=dtype, device=heatmaps.device), empty, empty[:, 0]
        grouped = torch.from_numpy(np.stack(people)).to(device=heatmaps.device, dtype=dtype)  # (P, K, 4 + L)
        locations = grouped[..., :2].round().long()
        used = grouped[..., 3] > 0
        if self.refine:
            # Missing keypoints: best heatmap value minus the rounded tag distance to the person's mean tag.
            mean_tag = (grouped[..., 4:] * used[..., None]).sum(1) / used.sum(1, keepdim=True).clamp_min(1)  # (P, L)
            distance = (flat_tags[None] - mean_tag[:, None, :, None]).norm(dim=2)  # (P, K, h*w)
            score = heatmaps.reshape(1, k, h * w) - distance.round()
            best = score.argmax(dim=-1)
            filled = torch.stack([best % w, best // w], dim=-1)
            locations = torch.where(used[..., None], locations, filled)
        p = locations.shape[0]
        maps = heatmaps[None].expand(p, k, h, w)
        scores = maps.reshape(p, k, h * w).gather(2, (locations[..., 1] * w + locations[..., 0])[..., None])[..., 0]
        coords = refine_keypoints_dark_udp(locations, maps, self.blur_kernel_size)
        person_scores = scores.mean(dim=1)
        order = person_scores.argsort(descending=True)
        return self._to_input_space(coords)[order], scores[order], person_scores[order]
