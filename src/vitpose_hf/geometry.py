"""Box and affine-warp geometry of top-down pose estimation, vectorised over N boxes (pure torch).

Conventions used by every function here:

- sizes are ``(height, width)``; points are ``(x, y)`` in pixels with pixel centres on integer coordinates
  (the OpenCV / mmpose convention: pixel ``(0, 0)`` covers ``[-0.5, 0.5)``);
- boxes are ``"xywh"`` (COCO: top-left corner, width, height) or ``"xyxy"`` (two corners, width = x2 - x1), as
  defined and checked in :mod:`.boxes`;
- a box is turned into a ``center`` (x, y) and a ``scale`` (w, h) measured in units of :data:`PIXEL_STD` pixels,
  the unit of the official code (inherited from the MPII annotation format);
- ``N`` is the number of boxes / crops, ``K`` the number of points per crop.

The crop ("input") of size ``(H, W)`` is cut out of the image by an affine warp. Two flavours exist, selected by
``use_udp``: the unbiased one of UDP (Huang et al., CVPR 2020), which maps the region of ``scale * 200`` pixels
onto ``W - 1`` pixel steps, and the classic one, which maps it onto ``W`` steps. ``use_udp`` is one bool for all
crops or an ``(N,)`` bool tensor, one flag per crop (a ViTPose++ batch mixes UDP and classic datasets).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .boxes import (  # the box formats live in boxes.py; re-exported here for geometry users
    BOX_FORMATS,
    TensorLike,
    as_float_tensor,
    check_box_format,
    short_repr,
    to_xywh,
    validate_boxes,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from .devices import to_device

__all__ = [
    "BOX_FORMATS",
    "BOX_PADDING",
    "PIXEL_STD",
    "apply_affine",
    "box_to_center_scale",
    "check_box_format",
    "crop_to_image",
    "image_to_crop",
    "inverse_warp_matrix",
    "udp_flags",
    "validate_boxes",
    "warp_matrix",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]

# The official code measures box sizes in units of 200 px ("pixel_std"): scale = size / 200.
PIXEL_STD = 200.0
# The official inference and test code enlarge every box by 25 % before cropping.
BOX_PADDING = 1.25


def box_to_center_scale(
    boxes: TensorLike,
    box_format: str = "xywh",
    input_size: tuple[int, int] = (256, 192),
    padding: float = BOX_PADDING,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and scale of each box, at the aspect ratio of the model input, as the official ``_xywh2cs``.

    The box is grown (never shrunk) along one side to the aspect ratio ``W / H`` of ``input_size``, then both
    sides are multiplied by ``padding`` and divided by :data:`PIXEL_STD`.

    Args:
        boxes: ``(N, 4)`` boxes in ``box_format``.
        box_format: ``"xywh"`` or ``"xyxy"``.
        input_size: ``(H, W)`` of the model input (the crop).
        padding: box enlargement factor (1.25 in the official code).

    Returns:
        center: ``(N, 2)`` box centres ``(x, y)`` in image pixels.
        scale: ``(N, 2)`` padded region size ``(w, h)`` in units of 200 px.
    """
    return _center_scale(to_xywh(validate_boxes(boxes, box_format), box_format), input_size, padding)


def _center_scale(xywh: torch.Tensor, input_size: tuple[int, int], padding: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`box_to_center_scale` of already validated ``(N, 4)`` xywh boxes."""
    aspect = input_size[1] / input_size[0]
    center = xywh[:, :2] + 0.5 * xywh[:, 2:]
    w, h = xywh[:, 2], xywh[:, 3]
    # Grow the short side: (w, w / aspect) if the box is too wide, (h * aspect, h) if too tall.
    size = torch.stack([torch.maximum(w, h * aspect), torch.maximum(h, w / aspect)], dim=1)
    return center, size * (padding / PIXEL_STD)


def _per_crop(value: float | TensorLike | None, n: int, like: torch.Tensor, name: str) -> torch.Tensor | None:
    """``None`` or an ``(N,)`` tensor from a scalar or N values."""
    if value is None:
        return None
    # Checked where the values are: host input (numbers, CPU tensors) is checked before it moves to the device,
    # so a GPU pipeline does not wait for the device here.
    tensor = as_float_tensor(value, name).reshape(-1)
    if tensor.numel() not in (1, n):
        raise ValueError(f"{name} must be a number or hold one value per crop ({n}), got {tensor.numel()} values")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinity: {short_repr(tensor)}")
    return to_device(tensor, like.device, like.dtype).expand(n)


def udp_flags(use_udp: bool | TensorLike, n: int, device: torch.device | str | None = None) -> bool | torch.Tensor:
    """``use_udp`` as one bool, or as an ``(N,)`` bool tensor on ``device`` when it holds one flag per crop."""
    if isinstance(use_udp, (bool, np.bool_)):
        return bool(use_udp)
    tensor = torch.as_tensor(use_udp).reshape(-1)
    if tensor.dtype != torch.bool:
        raise TypeError(f"use_udp must be a bool or hold one bool per crop, got dtype {tensor.dtype}")
    if tensor.numel() not in (1, n):
        raise ValueError(f"use_udp must be a bool or hold one flag per crop ({n}), got {tensor.numel()} flags")
    return to_device(tensor, device).expand(n) if device is not None else tensor.expand(n)


def _warp_terms(
    center: torch.Tensor,
    scale: torch.Tensor,
    output_size: tuple[int, int],
    rotation: float | TensorLike | None,
    use_udp: bool | TensorLike,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(image px per crop px (N, 2), crop centre (2,) or (N, 2), cos (N,), sin (N,)) of the image->crop warp."""
    h, w = output_size
    udp = udp_flags(use_udp, center.shape[0], center.device)
    steps = to_device(torch.tensor([float(w), float(h)], dtype=center.dtype), center.device)
    if isinstance(udp, bool):
        steps = steps - 1.0 if udp else steps
    else:
        steps = steps - udp.to(center.dtype).unsqueeze(-1)  # (N, 2)
    step = scale * PIXEL_STD / steps  # image pixels per crop pixel, (N, 2)
    # UDP puts the region centre on the crop's middle pixel ((W-1)/2); the classic warp on W/2.
    crop_center = steps / 2
    theta = _per_crop(rotation, center.shape[0], center, "rotation")
    if theta is None:
        cos = sin = None
    else:
        radians = theta * (math.pi / 180.0)
        # Quirk of the official code: the UDP matrix rotates by +theta, the classic 3-point one by -theta.
        cos, sin = torch.cos(radians), torch.sin(radians)
        sin = (sin if udp else -sin) if isinstance(udp, bool) else torch.where(udp, sin, -sin)
    return step, crop_center, cos, sin


def warp_matrix(
    center: torch.Tensor,
    scale: torch.Tensor,
    output_size: tuple[int, int] = (256, 192),
    rotation: float | TensorLike | None = None,
    use_udp: bool | TensorLike = True,
) -> torch.Tensor:
    """Affine matrices image -> crop, shape ``(N, 2, 3)``, as passed to ``cv2.warpAffine``.

    With ``use_udp`` this is the official ``get_warp_matrix(rotation, 2 * center, (W-1, H-1), scale * 200)``;
    otherwise the classic ``get_affine_transform(center, scale, rotation, (W, H))``.

    Args:
        center: ``(N, 2)`` region centres ``(x, y)`` in image pixels.
        scale: ``(N, 2)`` region sizes ``(w, h)`` in units of 200 px (a zero scale has no forward matrix: inf).
        output_size: ``(H, W)`` of the crop.
        rotation: degrees, a number or ``(N,)`` (training augmentation); None for no rotation.
        use_udp: the unbiased (UDP) warp or the classic one; a bool or an ``(N,)`` bool tensor (per crop).
    """
    step, crop_center, cos, sin = _warp_terms(center, scale, output_size, rotation, use_udp)
    k = 1.0 / step  # crop pixels per image pixel
    n = center.shape[0]
    m = center.new_zeros(n, 2, 3)
    if cos is None:
        m[:, 0, 0] = k[:, 0]
        m[:, 1, 1] = k[:, 1]
    else:
        # Scale after rotation: q = diag(k) R (p - c) + crop_center, with R = [[cos, -sin], [sin, cos]].
        m[:, 0, 0] = k[:, 0] * cos
        m[:, 0, 1] = -k[:, 0] * sin
        m[:, 1, 0] = k[:, 1] * sin
        m[:, 1, 1] = k[:, 1] * cos
    m[:, :, 2] = crop_center - (m[:, :, :2] @ center.unsqueeze(-1)).squeeze(-1)
    return m


def inverse_warp_matrix(
    center: torch.Tensor,
    scale: torch.Tensor,
    output_size: tuple[int, int] = (256, 192),
    rotation: float | TensorLike | None = None,
    use_udp: bool | TensorLike = True,
) -> torch.Tensor:
    """Affine matrices crop -> image, shape ``(N, 2, 3)``: the exact inverse of :func:`warp_matrix`.

    Computed in closed form, so it stays finite for a zero scale (every crop pixel maps to the centre).
    Arguments as in :func:`warp_matrix`.
    """
    step, crop_center, cos, sin = _warp_terms(center, scale, output_size, rotation, use_udp)
    n = center.shape[0]
    m = center.new_zeros(n, 2, 3)
    if cos is None:
        m[:, 0, 0] = step[:, 0]
        m[:, 1, 1] = step[:, 1]
    else:
        # p = c + R^T diag(step) (q - crop_center)
        m[:, 0, 0] = cos * step[:, 0]
        m[:, 0, 1] = sin * step[:, 1]
        m[:, 1, 0] = -sin * step[:, 0]
        m[:, 1, 1] = cos * step[:, 1]
    m[:, :, 2] = center - (m[:, :, :2] @ crop_center.unsqueeze(-1)).squeeze(-1)
    return m


def apply_affine(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply ``(N, 2, 3)`` affine matrices to ``(N, K, 2)`` points (x, y); returns ``(N, K, 2)``."""
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]


def image_to_crop(
    points: torch.Tensor,
    center: torch.Tensor,
    scale: torch.Tensor,
    output_size: tuple[int, int] = (256, 192),
    rotation: float | TensorLike | None = None,
    use_udp: bool | TensorLike = True,
) -> torch.Tensor:
    """Map ``(N, K, 2)`` image points into crop (model input) pixels, with the warp of :func:`warp_matrix`."""
    matrix = warp_matrix(center, scale, output_size, rotation, use_udp)
    return apply_affine(points.to(matrix.dtype), matrix)


def crop_to_image(
    points: torch.Tensor,
    center: torch.Tensor,
    scale: torch.Tensor,
    output_size: tuple[int, int] = (256, 192),
    rotation: float | TensorLike | None = None,
    use_udp: bool | TensorLike = True,
) -> torch.Tensor:
    """Map ``(N, K, 2)`` crop (model input) points back to image pixels.

    Without rotation this is the official ``transform_preds`` applied to points already scaled from heatmap to
    input pixels: ``x = c - s*200/2 + x_crop * s*200 / (W - 1)`` with UDP (``/ W`` without).
    """
    if rotation is None:  # the common case, in three element-wise ops
        step, crop_center, _, _ = _warp_terms(center, scale, output_size, None, use_udp)
        return center.unsqueeze(1) + (points.to(center.dtype) - crop_center.unsqueeze(-2)) * step.unsqueeze(1)
    matrix = inverse_warp_matrix(center, scale, output_size, rotation, use_udp)
    return apply_affine(points.to(matrix.dtype), matrix)
